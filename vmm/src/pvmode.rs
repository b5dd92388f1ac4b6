//! The PV CPU model around each exit: guest kernel/user mode, segment bases, the guest GDT,
//! virtual CR0.TS and debug registers.
//!
//! The per-vCPU [`PvVcpuState`] is the model; hypercall handlers and the trap bounce change
//! only it. The run loop keeps the real vCPU in step:
//!
//! * [`capture`] right after every exit: the FS base and the current mode's GS base as the
//!   guest left them (a guest may load FS/GS selectors itself), into the PV state.
//! * [`apply`] right before every return: CR3 = the current mode's page table, FS base, the
//!   current mode's GS base (the other mode's waits in the PV state: Xen's `swapgs` on every
//!   mode switch), CR0.TS = virtual TS, and pending GDT / LDT / debug-register / user-GS
//!   changes.
//!
//! The LDT copy and its descriptor (`ring0::LDT_SEL` in the vCPU's GDT) are written by
//! `crate::mm::DomainMm::set_ldt`; a pending LDT change loads LDTR from that descriptor, as
//! `lldt` would (KVM on PVM honours an LDTR set through `KVM_SET_SREGS`:
//! vmm/tests/kvm_ldt.rs).
//!
//! A `syscall` from guest user mode is not a hypercall: [`syscall_from_user`] delivers it to
//! the guest kernel's syscall callback (Xen's `switch_to_kernel`).

use kvm_bindings::kvm_segment;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};
use xen_abi::arch::{FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_SS64};
use xen_abi::cpu::{check_descriptor, descriptor_base, descriptor_limit, DR6_DEFAULT, DR6_ZEROS};
use xen_abi::pv_vcpu::{
    callback_index, GuestMode, PvVcpuState, CALLBACK_FLAG_MASK_EVENTS, PENDING_DEBUGREGS,
    PENDING_GDT, PENDING_GS_USER_SEL, PENDING_LDT,
};

use crate::domain::DomainShared;
use crate::memory::PAGE_SIZE;
use crate::ring0::{GDT_XEN_FIRST, LDT_SEL};
use crate::trap::{bounce, bounce_to, BounceError, GuestEvent, VEC_DB, VEC_NM, VEC_UD};
use crate::vcpu::{rflags, GuestCs, GuestRegs, Vcpu, VcpuError};

/// Errors keeping the vCPU in step with the PV model.
#[derive(Debug, Error)]
pub enum PvModeError {
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Writing kxen's GDT copy failed (a layout bug).
    #[error("GDT page {0} not in the ring-0 area")]
    Gdt(u64),
}

const CR0_TS: u64 = 1 << 3;

/// Record the segment bases the guest left in the vCPU (call right after an exit).
pub fn capture(vcpu: &mut Vcpu) {
    let (fs, gs) = (vcpu.sregs().fs.base, vcpu.sregs().gs.base);
    let pv = vcpu.pv_mut();
    pv.fs_base = fs;
    match pv.guest_mode() {
        GuestMode::Kernel => pv.gs_base_kernel = gs,
        GuestMode::User => pv.gs_base_user = gs,
    }
}

/// Apply the PV model to the vCPU (call right before returning to the guest).
pub fn apply(vcpu: &mut Vcpu) -> Result<(), PvModeError> {
    let pending = vcpu.pv().pending;
    if pending & PENDING_GDT != 0 {
        copy_gdt(vcpu)?;
    }
    if pending & PENDING_LDT != 0 {
        let ldt = ldt_segment(vcpu);
        vcpu.sregs_mut().ldt = ldt;
    }
    if pending & PENDING_GS_USER_SEL != 0 {
        let sel = vcpu.pv().gs_user_sel as u16;
        let seg = load_data_segment(vcpu, sel);
        vcpu.pv_mut().gs_base_user = seg.base;
        vcpu.sregs_mut().gs = seg;
    }
    if pending & PENDING_DEBUGREGS != 0 {
        let d = vcpu.pv().debugreg;
        vcpu.set_debugregs([d[0], d[1], d[2], d[3]], DR6_DEFAULT, d[7])?;
    }
    let pv = *vcpu.pv();
    vcpu.pv_mut().pending = 0;
    let s = vcpu.sregs_mut();
    s.fs.base = pv.fs_base;
    s.gs.base = match pv.guest_mode() {
        GuestMode::Kernel => pv.gs_base_kernel,
        GuestMode::User => pv.gs_base_user,
    };
    let cr3 = pv.current_cr3();
    if cr3 != 0 {
        s.cr3 = cr3;
    }
    if pv.cr0_ts != 0 {
        s.cr0 |= CR0_TS;
    } else {
        s.cr0 &= !CR0_TS;
    }
    Ok(())
}

/// Work to do before an exception is bounced. Returns true when the exception was kxen's
/// business only and the guest should just resume:
///
/// * `#NM` with virtual CR0.TS set is the guest's (virtual TS is cleared, as Xen does before
///   delivering it); without it, it can only be a stale real TS: resume (apply clears it).
/// * `#DB`: the hardware DR6 is merged into the guest's virtual DR6 (read with
///   `get_debugreg(6)`) and reset.
// xen: arch/x86/traps.c, do_device_not_available / do_debug
pub fn before_exception(vcpu: &mut Vcpu, vector: u8) -> Result<bool, PvModeError> {
    match vector {
        VEC_NM => {
            let pv = vcpu.pv_mut();
            if pv.cr0_ts != 0 {
                pv.cr0_ts = 0;
                Ok(false)
            } else {
                Ok(true)
            }
        }
        VEC_DB => {
            let (db, dr6, dr7) = vcpu.debugregs()?;
            let pv = vcpu.pv_mut();
            pv.debugreg[6] = merge_dr6(pv.debugreg[6], dr6);
            vcpu.set_debugregs(db, DR6_DEFAULT, dr7)?;
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The guest's virtual DR6 after a #DB whose hardware DR6 is `hw`: the status bits
/// accumulate (the guest clears them by writing DR6), reserved bits keep their values.
// xen: arch/x86/include/asm/debugreg.h, x86_merge_dr6 (without RTM/bus-lock)
pub fn merge_dr6(old: u64, hw: u64) -> u64 {
    ((old | (hw & !DR6_DEFAULT)) | DR6_DEFAULT) & !DR6_ZEROS
}

/// A `syscall` from guest user mode (`compat`: through CSTAR from a 32-bit code segment):
/// switch to guest kernel mode and enter the registered syscall (syscall32) callback with
/// Xen's frame `rcx, r11, rip, cs, rflags, rsp, ss` on the kernel stack; events masked when
/// the callback was registered with `CALLBACKF_mask_events`; DF cleared. Without a callback
/// the guest gets #UD at the `syscall` instruction.
// xen: arch/x86/x86_64/entry.S, lstar_enter / cstar_enter / switch_to_kernel
pub fn syscall_from_user(
    vcpu: &mut Vcpu,
    domain: &DomainShared,
    regs: &mut GuestRegs,
    compat: bool,
) -> Result<GuestCs, BounceError> {
    let ram = vcpu.ram().clone();
    let cr3 = vcpu.cr3();
    let id = vcpu.id();
    let (idx, cs) = if compat {
        (callback_index::SYSCALL32, FLAT_RING3_CS32)
    } else {
        (callback_index::SYSCALL, FLAT_RING3_CS64)
    };
    let cb = vcpu.pv().callbacks[idx];
    let mut ev = GuestEvent {
        vector: VEC_UD,
        error_code: None,
        cr2: 0,
        cs,
        ss: FLAT_RING3_SS64,
        software: false,
    };
    let r = if cb.address == 0 {
        // TB_eip == 0: #UD at the syscall instruction itself.
        regs.rip = regs.rip.wrapping_sub(2);
        bounce(&ram, cr3, vcpu.pv_mut(), domain, id, &ev, regs)
    } else {
        ev.software = true;
        let mask = cb.flags & CALLBACK_FLAG_MASK_EVENTS != 0;
        let r = bounce_to(
            &ram,
            cr3,
            vcpu.pv_mut(),
            domain,
            id,
            &ev,
            (cb.address, mask),
            regs,
        );
        regs.rflags &= !rflags::DF;
        r
    };
    match r {
        Ok(new_cr3) => {
            if let Some(c) = new_cr3 {
                vcpu.set_cr3(c);
            }
            Ok(GuestCs::Long64)
        }
        Err(e) => {
            domain.crash(&e.to_string());
            Err(e)
        }
    }
}

/// The LDT register as `lldt` of the vCPU's LDT descriptor (`ring0::LDT_SEL` in its GDT,
/// written by `crate::mm::DomainMm::set_ldt`) loads it: the LDT copy with the guest's limit,
/// or the null (unusable) LDT when the guest has none.
pub fn ldt_segment(vcpu: &Vcpu) -> kvm_segment {
    let at = vcpu.ring0().gdt_base + u64::from(LDT_SEL);
    let layer = vcpu.ring0_layer();
    let (Some(lo), Some(hi)) = (layer.read_u64(at), layer.read_u64(at + 8)) else {
        return null_segment();
    };
    if lo & (1 << 47) == 0 {
        return null_segment();
    }
    kvm_segment {
        base: (descriptor_base(lo) & 0xffff_ffff) | (hi << 32),
        limit: descriptor_limit(lo),
        selector: LDT_SEL,
        type_: 2,
        present: 1,
        ..kvm_segment::default()
    }
}

fn null_segment() -> kvm_segment {
    kvm_segment {
        unusable: 1,
        ..kvm_segment::default()
    }
}

/// The descriptor selector `sel` names for the CPU (kxen's GDT copy, or the LDT copy for
/// TI=1 within the LDT's limit).
fn read_descriptor(vcpu: &Vcpu, sel: u16) -> Option<u64> {
    let off = u64::from(sel & !7);
    if sel & 4 == 0 {
        return vcpu.ring0_layer().read_u64(vcpu.ring0().gdt_base + off);
    }
    let ldt = vcpu.sregs().ldt;
    if ldt.unusable != 0 || ldt.present == 0 || off + 7 > u64::from(ldt.limit) {
        return None;
    }
    vcpu.ring0_layer().read_u64(ldt.base + off)
}

/// The `kvm_segment` a CPL3 load of data selector `sel` into GS gives, or a null segment when
/// the load would fault (Xen's fixup for `SEGBASE_GS_USER_SEL` loads the null selector).
/// Selectors with TI=1 are looked up in the vCPU's LDT.
// xen: arch/x86/pv/misc-hypercalls.c, do_set_segment_base (SEGBASE_GS_USER_SEL)
pub fn load_data_segment(vcpu: &Vcpu, sel: u16) -> kvm_segment {
    let null = kvm_segment {
        unusable: 1,
        ..kvm_segment::default()
    };
    if sel <= 3 {
        return null;
    }
    let sel = sel | 3;
    let Some(d) = read_descriptor(vcpu, sel) else {
        return null;
    };
    let b = (d >> 32) as u32;
    let present = b & (1 << 15) != 0;
    let s = b & (1 << 12) != 0;
    let ty = ((b >> 8) & 0xf) as u8;
    let dpl = ((b >> 13) & 3) as u8;
    let code = ty & 8 != 0;
    let readable = ty & 2 != 0;
    // A data segment, or a readable code segment, with DPL >= max(CPL, RPL) = 3.
    if !present || !s || (code && !readable) || dpl != 3 {
        return null;
    }
    kvm_segment {
        base: descriptor_base(d),
        limit: descriptor_limit(d),
        selector: sel,
        type_: ty | 1, // the CPU sets the accessed bit
        present: 1,
        dpl,
        db: ((b >> 22) & 1) as u8,
        s: 1,
        l: ((b >> 21) & 1) as u8,
        g: ((b >> 23) & 1) as u8,
        avl: ((b >> 20) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Copy the guest's GDT frames into kxen's per-vCPU GDT (entries below Xen's reserved area),
/// validating every descriptor again on the way (a refused one becomes a null descriptor), so
/// what the CPU uses is always what `check_descriptor` allows, whatever the guest wrote into
/// its frames meanwhile. Pages past the guest's frames are zeroed.
fn copy_gdt(vcpu: &mut Vcpu) -> Result<(), PvModeError> {
    let pv: PvVcpuState = *vcpu.pv();
    let nr_frames = (pv.gdt_ents as usize)
        .div_ceil(512)
        .min(pv.gdt_frames.len());
    let layer = vcpu.ring0_layer();
    let base = vcpu.ring0().gdt_base;
    let first_xen_page = (GDT_XEN_FIRST as u64) / PAGE_SIZE;
    for page in 0..first_xen_page {
        let mut buf = [0u8; PAGE_SIZE as usize];
        if let Some(&frame) = pv
            .gdt_frames
            .get(page as usize)
            .filter(|_| (page as usize) < nr_frames)
        {
            let gpa = frame.saturating_mul(PAGE_SIZE);
            if vcpu
                .ram()
                .mem()
                .read_slice(&mut buf, GuestAddress(gpa))
                .is_err()
            {
                buf = [0u8; PAGE_SIZE as usize];
            }
            for e in buf.chunks_exact_mut(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(e);
                let d = check_descriptor(u64::from_le_bytes(w)).unwrap_or(0);
                e.copy_from_slice(&d.to_le_bytes());
            }
        }
        let va = base + page * PAGE_SIZE;
        let gpa = layer
            .va_to_gpa(va, PAGE_SIZE)
            .ok_or(PvModeError::Gdt(page))?;
        layer
            .private_mem()
            .mem()
            .write_slice(&buf, GuestAddress(gpa))
            .map_err(|_| PvModeError::Gdt(page))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr6_status_bits_accumulate_and_reserved_bits_stay() {
        let d = merge_dr6(DR6_DEFAULT, DR6_DEFAULT | 1);
        assert_eq!(d, DR6_DEFAULT | 1);
        let d = merge_dr6(d, DR6_DEFAULT | xen_abi::cpu::DR6_BS);
        assert_eq!(d, DR6_DEFAULT | 1 | xen_abi::cpu::DR6_BS);
        assert_eq!(merge_dr6(0, u64::MAX) & DR6_ZEROS, 0);
    }
}
