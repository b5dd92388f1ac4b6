//! The PV CPU model's hypercalls: `set_gdt` (2), `fpu_taskswitch` (5), `set_debugreg` (8),
//! `get_debugreg` (9), `update_descriptor` (10), `physdev_op_compat` (19),
//! `set_segment_base` (25), `physdev_op` (33, `PHYSDEVOP_set_iopl`).
//!
//! Handlers change only the vCPU's [`xen_abi::pv_vcpu::PvVcpuState`]; `crate::pvmode::apply`
//! puts it into the real vCPU before the guest runs again.

use xen_abi::arch::is_canonical;
use xen_abi::cpu::{
    check_descriptor, check_set_debugreg, get_debugreg_index, PhysdevOpCompat, PhysdevSetIopl,
    MAX_GDT_FRAMES, MAX_GUEST_GDT_ENTRIES, PHYSDEVOP_SET_IOPL, SEGBASE_FS, SEGBASE_GS_KERNEL,
    SEGBASE_GS_USER, SEGBASE_GS_USER_SEL,
};
use xen_abi::errno::EINVAL;
use xen_abi::pv_vcpu::{PENDING_DEBUGREGS, PENDING_GDT, PENDING_GS_USER_SEL};

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;
use crate::memory::PAGE_SIZE;

/// `HYPERVISOR_set_segment_base(which, base)`.
// xen: arch/x86/pv/misc-hypercalls.c, do_set_segment_base
pub fn set_segment_base(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (which, base) = (uint(a.a[0]), a.a[1]);
    match which {
        SEGBASE_FS | SEGBASE_GS_USER | SEGBASE_GS_KERNEL if !is_canonical(base) => err(EINVAL),
        SEGBASE_FS => {
            ctx.pv.fs_base = base;
            0
        }
        SEGBASE_GS_USER => {
            ctx.pv.gs_base_user = base;
            0
        }
        SEGBASE_GS_KERNEL => {
            ctx.pv.gs_base_kernel = base;
            0
        }
        SEGBASE_GS_USER_SEL => {
            // Never fails (a bad selector loads as null), as in Xen.
            ctx.pv.gs_user_sel = u32::from(base as u16);
            ctx.pv.pending |= PENDING_GS_USER_SEL;
            0
        }
        _ => err(EINVAL),
    }
}

/// `HYPERVISOR_fpu_taskswitch(set)`: set or clear the virtual CR0.TS.
// xen: arch/x86/pv/misc-hypercalls.c? (traps.c), do_fpu_taskswitch
pub fn fpu_taskswitch(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    ctx.pv.cr0_ts = u32::from(uint(a.a[0]) != 0);
    0
}

/// `HYPERVISOR_set_debugreg(reg, value)`.
// xen: arch/x86/pv/misc-hypercalls.c, do_set_debugreg / set_debugreg
pub fn set_debugreg(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match check_set_debugreg(uint(a.a[0]), a.a[1]) {
        Ok((i, v)) => {
            ctx.pv.debugreg[i] = v;
            ctx.pv.pending |= PENDING_DEBUGREGS;
            0
        }
        Err(e) => err(e.errno()),
    }
}

/// `HYPERVISOR_get_debugreg(reg)`: the value (DR6 with the status of past #DBs).
// xen: arch/x86/pv/misc-hypercalls.c, do_get_debugreg
pub fn get_debugreg(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match get_debugreg_index(uint(a.a[0])) {
        Some(i) => ctx.pv.debugreg[i] as i64,
        None => err(EINVAL),
    }
}

fn set_iopl(ctx: &mut HypercallCtx<'_, DomainShared>, arg: u64) -> i64 {
    let s: PhysdevSetIopl = match ctx.read_pod(arg) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if s.iopl > 3 {
        return err(EINVAL);
    }
    ctx.pv.iopl = s.iopl;
    0
}

/// `HYPERVISOR_physdev_op(cmd, arg)`: `PHYSDEVOP_set_iopl`; other commands are `-ENOSYS`.
// xen: arch/x86/physdev.c, do_physdev_op (PHYSDEVOP_set_iopl)
pub fn physdev_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match uint(a.a[0]) {
        PHYSDEVOP_SET_IOPL => set_iopl(ctx, a.a[1]),
        _ => -ENOSYS,
    }
}

/// The old `HYPERVISOR_physdev_op(op)` taking `struct physdev_op { cmd; union }`.
// xen: arch/x86/compat.c? (physdev.c), do_physdev_op_compat
pub fn physdev_op_compat(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let op: PhysdevOpCompat = match ctx.read_pod(a.a[0]) {
        Ok(op) => op,
        Err(e) => return e,
    };
    match op.cmd {
        PHYSDEVOP_SET_IOPL => set_iopl(ctx, a.a[0].wrapping_add(4)),
        _ => -ENOSYS,
    }
}

/// `HYPERVISOR_set_gdt(frame_list, entries)`: at most 14 pages; each frame must be guest
/// RAM that can take Xen's `PGT_seg_desc_page` type (not a page table, not mapped writable,
/// every descriptor passing Xen's validation; [`crate::mm::DomainMm::set_gdt`]).
// xen: arch/x86/pv/descriptor-tables.c, do_set_gdt / pv_set_gdt; mm.c alloc_segdesc_page
pub fn set_gdt(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let entries = uint(a.a[1]);
    if entries > MAX_GUEST_GDT_ENTRIES {
        return err(EINVAL);
    }
    let nr = entries.div_ceil(512) as usize;
    let mut frames = [0u64; MAX_GDT_FRAMES];
    for (i, f) in frames.iter_mut().enumerate().take(nr) {
        match ctx.read_obj::<u64>(a.a[0].wrapping_add(8 * i as u64)) {
            Ok(v) => *f = v,
            Err(e) => return e,
        }
    }
    let copied = match lock(ctx.domain).set_gdt(ctx.ram(), ctx.vcpu_id, &frames[..nr]) {
        Ok(c) => c,
        Err(e) => return e.ret(),
    };
    ctx.pv.gdt_frames = frames;
    ctx.pv.gdt_ents = u64::from(entries);
    if !copied {
        // No ring-0 layer attached to the frame table: pvmode copies at the next entry.
        ctx.pv.pending |= PENDING_GDT;
    }
    0
}

fn lock(d: &DomainShared) -> std::sync::MutexGuard<'_, crate::mm::DomainMm> {
    d.mm.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `HYPERVISOR_update_descriptor(ma, desc)`: write one validated (and fixed-up) descriptor
/// at machine address `ma` (8-byte aligned, guest RAM, a frame that is a descriptor page
/// or may be written: a page table is refused); every vCPU whose GDT or LDT uses the frame
/// sees the new descriptor once this returns ([`crate::mm::DomainMm::update_descriptor`]).
// xen: arch/x86/pv/descriptor-tables.c, do_update_descriptor
pub fn update_descriptor(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (ma, desc) = (a.a[0], a.a[1]);
    if ma % 8 != 0 || ma / PAGE_SIZE >= ctx.domain.nr_pages {
        return err(EINVAL);
    }
    let Some(d) = check_descriptor(desc) else {
        return err(EINVAL);
    };
    match lock(ctx.domain).update_descriptor(ctx.ram(), ma, d) {
        Ok(()) => 0,
        Err(e) => e.ret(),
    }
}

/// Whether port I/O at the current mode and virtual IOPL is allowed (for the emulation of
/// `in`/`out`; without it the guest gets #GP(0)).
pub fn io_permitted(pv: &xen_abi::pv_vcpu::PvVcpuState) -> bool {
    xen_abi::cpu::iopl_permits(
        pv.iopl,
        pv.guest_mode() == xen_abi::pv_vcpu::GuestMode::Kernel,
        pv.vm_assist(xen_abi::mmu::VMASST_TYPE_ARCHITECTURAL_IOPL),
    )
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
