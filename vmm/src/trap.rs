//! Exceptions: the exit side (which vector, the error code, the CPU-pushed frame).
//!
//! When the guest takes an exception, the CPU switches to the vCPU's ring-0 stack (RSP0, or an
//! IST stack for #DF/NMI/#MC), pushes `ss, rsp, rflags, cs, rip` and, for some vectors, an error
//! code, then enters the vector's stub, which exits to the VMM. This module reads that frame
//! back, and [`bounce`] / [`handle_exception`] deliver the exception to the guest's handler
//! with Xen's bounce frame.
//!
//! # Run-loop contract
//!
//! On `VcpuExit::Exception { vector, error_code, cr2, frame, mut regs }`:
//!
//! ```text
//! match trap::handle_exception(&mut vcpu, &shared, vector, error_code, cr2, &frame, &mut regs) {
//!     Ok(cs) => vcpu.return_to_guest(&regs, cs)?,
//!     Err(_) => { /* the domain was crashed (shared.shutdown_reason() is Some): stop */ }
//! }
//! ```

use thiserror::Error;
use tracing::debug;
use xen_abi::arch::{FLAT_RING3_CS32, FLAT_RING3_CS64};
use xen_abi::pv_vcpu::{GuestMode, PvVcpuState};
use xen_abi::trap::{bounce_cs_word, X86_EXC_GP, X86_EXC_PF, X86_EXC_UD};

use crate::domain::DomainShared;
use crate::memory::{GuestRam, GuestVirt};
use crate::ring0::{vector_has_error_code, Ring0Layer, VcpuRing0};
use crate::vcpu::{rflags, GuestCs, GuestRegs, Vcpu};

/// `#DE`.
pub const VEC_DE: u8 = 0;
/// `#DB`.
pub const VEC_DB: u8 = 1;
/// NMI.
pub const VEC_NMI: u8 = 2;
/// `#BP` (int3).
pub const VEC_BP: u8 = 3;
/// `#OF` (into).
pub const VEC_OF: u8 = 4;
/// `#UD`.
pub const VEC_UD: u8 = 6;
/// `#NM`.
pub const VEC_NM: u8 = 7;
/// `#DF`.
pub const VEC_DF: u8 = 8;
/// `#GP`.
pub const VEC_GP: u8 = 13;
/// `#PF`.
pub const VEC_PF: u8 = 14;

/// `#PF` error code bits.
pub mod pf_error {
    /// The fault was a protection violation (page present).
    pub const PRESENT: u64 = 1 << 0;
    /// Write access.
    pub const WRITE: u64 = 1 << 1;
    /// Access from CPL3.
    pub const USER: u64 = 1 << 2;
    /// Reserved bit set in a paging entry.
    pub const RSVD: u64 = 1 << 3;
    /// Instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// The interrupt frame the CPU pushed on the ring-0 stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFrame {
    /// Interrupted (faults) or next (traps) instruction.
    pub rip: u64,
    /// Code selector at the time of the exception (0xe033 for the guest).
    pub cs: u64,
    /// RFLAGS at the time of the exception.
    pub rflags: u64,
    /// Stack pointer at the time of the exception.
    pub rsp: u64,
    /// Stack selector at the time of the exception.
    pub ss: u64,
}

impl CpuFrame {
    /// Whether the exception interrupted CPL3 code (the guest) rather than ring 0 (kxen).
    pub fn from_guest(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// Errors reading an exception frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrapError {
    /// The ring-0 stack pointer at the stub is not on this vCPU's ring-0 stacks.
    #[error("ring-0 stack pointer {rsp:#x} outside the vCPU's ring-0 stacks (vector {vector})")]
    BadStack {
        /// The vector.
        vector: u8,
        /// The ring-0 rsp seen.
        rsp: u64,
    },
}

/// Read the error code (if the vector has one) and the CPU frame at ring-0 `rsp`.
pub fn read_exception_frame(
    ring0: &Ring0Layer,
    cpu: &VcpuRing0,
    vector: u8,
    rsp: u64,
) -> Result<(Option<u64>, CpuFrame), TrapError> {
    let has_err = vector_has_error_code(vector);
    let len = if has_err { 48 } else { 40 };
    let bad = TrapError::BadStack { vector, rsp };
    if !cpu.on_ring0_stack(rsp, len) {
        return Err(bad);
    }
    let mut at = rsp;
    let mut next = || {
        let v = ring0.read_u64(at);
        at = at.wrapping_add(8);
        v.ok_or(TrapError::BadStack { vector, rsp })
    };
    let error_code = if has_err { Some(next()?) } else { None };
    let frame = CpuFrame {
        rip: next()?,
        cs: next()?,
        rflags: next()?,
        rsp: next()?,
        ss: next()?,
    };
    Ok((error_code, frame))
}

/// If the instruction at `rip` (guest-virtual, read through the guest's page tables) is
/// `int $n` (`CD nn`), return `n`.
///
/// Needed because on nested KVM on PVM an `int $n` (n other than 3 and 4) from CPL3 raises #UD
/// at the instruction instead of #GP(`n << 3 | 2`) or delivering through a DPL-3 gate; the
/// trap layer uses this to recognise a software interrupt (e.g. `int $0x80`).
pub fn software_int_at(guest: &GuestVirt<'_>, rip: u64) -> Option<u8> {
    let mut insn = [0u8; 2];
    guest.copy_from_guest(rip, &mut insn).ok()?;
    (insn[0] == 0xcd).then_some(insn[1])
}

/// An event to deliver to the guest kernel through its trap table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestEvent {
    /// Vector (trap-table index).
    pub vector: u8,
    /// Error code pushed in the frame (hardware exceptions that have one).
    pub error_code: Option<u64>,
    /// Faulting address (#PF only).
    pub cr2: u64,
    /// Code selector of the interrupted context.
    pub cs: u16,
    /// Stack selector of the interrupted context.
    pub ss: u16,
    /// A software interrupt (`int $n`) rather than a hardware exception.
    pub software: bool,
}

/// Why an event could not be delivered; the domain is crashed for each of them.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BounceError {
    /// The guest has no handler for the vector (Xen: "Unhandled: vec N", then a crash).
    #[error("unhandled exception: vec {vector}, {name}[{error_code:04x}] at rip {rip:#x}")]
    NoHandler {
        /// Vector.
        vector: u8,
        /// Its name.
        name: &'static str,
        /// Error code (0 if none).
        error_code: u64,
        /// Interrupted rip.
        rip: u64,
    },
    /// Writing the bounce frame on the guest kernel stack faulted.
    #[error("fault writing the bounce frame for vec {vector} at {frame:#x} (rsp {rsp:#x})")]
    FrameFault {
        /// Vector.
        vector: u8,
        /// Where the frame was to go.
        frame: u64,
        /// The stack pointer it was built from.
        rsp: u64,
    },
    /// An exception in kxen's own ring 0.
    #[error("exception {vector} in kxen ring 0 at rip {rip:#x}")]
    InRing0 {
        /// Vector.
        vector: u8,
        /// rip.
        rip: u64,
    },
}

/// Deliver `ev` to the guest kernel's handler: Xen's `pv_inject_event` followed by
/// `create_bounce_frame`.
///
/// On success `regs` hold the handler's entry state (rip = handler, rsp = frame, rflags with
/// TF/NT/RF/VM/AC cleared) and the result says whether the vCPU switched from guest user to
/// kernel mode (then its CR3 must become the returned kernel page-table base). The frame is
/// written through `ram` with the page tables at `cr3` (or the kernel's after a switch).
// xen: arch/x86/pv/traps.c, pv_inject_event; arch/x86/x86_64/entry.S, create_bounce_frame
pub fn bounce(
    ram: &GuestRam,
    cr3: u64,
    pv: &mut PvVcpuState,
    domain: &DomainShared,
    vcpu_id: u32,
    ev: &GuestEvent,
    regs: &mut GuestRegs,
) -> Result<Option<u64>, BounceError> {
    let entry = pv.traps[usize::from(ev.vector)];
    if !entry.is_set() {
        return Err(BounceError::NoHandler {
            vector: ev.vector,
            name: vector_name(ev.vector),
            error_code: ev.error_code.filter(|_| !ev.software).unwrap_or(0),
            rip: regs.rip,
        });
    }
    bounce_to(
        ram,
        cr3,
        pv,
        domain,
        vcpu_id,
        ev,
        (entry.address, entry.masks_events()),
        regs,
    )
}

/// [`bounce`] to an explicit `(handler address, mask events)` instead of the trap table's
/// entry for `ev.vector` (the syscall callbacks use it with `ev.software` set, so no error
/// code is pushed).
#[allow(clippy::too_many_arguments)]
pub fn bounce_to(
    ram: &GuestRam,
    cr3: u64,
    pv: &mut PvVcpuState,
    domain: &DomainShared,
    vcpu_id: u32,
    ev: &GuestEvent,
    (handler, masks_events): (u64, bool),
    regs: &mut GuestRegs,
) -> Result<Option<u64>, BounceError> {
    let user = pv.guest_mode() == GuestMode::User;
    let mut error_code = ev.error_code.filter(|_| !ev.software);
    if ev.vector == X86_EXC_PF && !ev.software {
        // The guest kernel runs at CPL3, so the CPU always sets the user bit: Xen reports
        // it only for faults from guest user mode.
        error_code =
            error_code.map(|e| (e & !pf_error::USER) | if user { pf_error::USER } else { 0 });
    }
    let saved_mask = domain.upcall_mask(ram, vcpu_id).unwrap_or(0);
    // User mode: switch to kernel mode and its stack; kernel mode: the current stack, and
    // the RPL of cs cleared to tell the guest it interrupted its kernel.
    let (sp, cs, new_cr3) = if user {
        pv.set_guest_mode(GuestMode::Kernel);
        (pv.kernel_sp, ev.cs, Some(pv.kernel_cr3))
    } else {
        (regs.rsp, ev.cs & !3, None)
    };
    let sp = sp & !0xf;
    let mut rflags_word = regs.rflags & !(rflags::IF | rflags::IOPL);
    if saved_mask == 0 {
        rflags_word |= rflags::IF;
    }
    if pv.vm_assist(xen_abi::mmu::VMASST_TYPE_ARCHITECTURAL_IOPL) {
        // xen: create_bounce_frame folds the virtual IOPL into the frame's rflags.
        rflags_word |= u64::from(pv.iopl & 3) << 12;
    }
    let mut words = [0u64; 8];
    let mut n = 0;
    let mut push = |w: u64| {
        words[n] = w;
        n += 1;
    };
    push(regs.rcx);
    push(regs.r11);
    if let Some(e) = error_code {
        push(e);
    }
    push(regs.rip);
    push(bounce_cs_word(cs, saved_mask));
    push(rflags_word);
    push(regs.rsp);
    push(u64::from(ev.ss));
    let len = n as u64 * 8;
    let frame = sp.wrapping_sub(len);
    let fault = BounceError::FrameFault {
        vector: ev.vector,
        frame,
        rsp: sp,
    };
    if frame > sp {
        return Err(fault);
    }
    let mut bytes = [0u8; 64];
    for (i, w) in words[..n].iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let guest = GuestVirt::new(ram, new_cr3.unwrap_or(cr3));
    guest
        .copy_to_guest(frame, &bytes[..n * 8])
        .map_err(|_| fault)?;
    if masks_events {
        domain.set_upcall_mask(ram, vcpu_id, 1);
    }
    if ev.vector == X86_EXC_PF && !ev.software {
        domain.set_cr2(ram, vcpu_id, ev.cr2);
    }
    // xen: create_bounce_frame clears TF, VM, RF, NT and AC on entry to the handler.
    regs.rflags &= !(rflags::TF | rflags::VM | rflags::RF | rflags::NT | rflags::AC);
    regs.rsp = frame;
    regs.rip = handler;
    debug!(vector = ev.vector, handler, frame, "bounced to guest");
    Ok(new_cr3)
}

/// Pseudo-vector naming the event upcall in logs and [`BounceError`]s.
pub const UPCALL_VECTOR: u8 = 0xff;

/// Deliver an event upcall: Xen's exception bounce without an error code to the guest's
/// `CALLBACKTYPE_event` handler, events masked on entry (`upcall_mask = 1`, the frame keeping
/// the previous mask). `cs` is the interrupted code segment. Returns as [`bounce`] does;
/// [`BounceError::NoHandler`] with `regs` untouched if no event callback is registered (Xen
/// would jump to address 0; callers should check first and leave the event pending).
// xen: arch/x86/x86_64/entry.S, test_guest_events / process_guest_events (TBF_INTERRUPT)
pub fn bounce_event_callback(
    ram: &GuestRam,
    cr3: u64,
    pv: &mut PvVcpuState,
    domain: &DomainShared,
    vcpu_id: u32,
    cs: GuestCs,
    regs: &mut GuestRegs,
) -> Result<Option<u64>, BounceError> {
    let cb = pv.callbacks[xen_abi::pv_vcpu::callback_index::EVENT];
    if cb.address == 0 {
        return Err(BounceError::NoHandler {
            vector: UPCALL_VECTOR,
            name: "event callback",
            error_code: 0,
            rip: regs.rip,
        });
    }
    let ev = GuestEvent {
        vector: UPCALL_VECTOR,
        error_code: None,
        cr2: 0,
        cs: match cs {
            GuestCs::Long64 => FLAT_RING3_CS64,
            GuestCs::Compat32 => FLAT_RING3_CS32,
        },
        ss: xen_abi::arch::FLAT_RING3_SS64,
        // No error code is pushed.
        software: true,
    };
    bounce_to(ram, cr3, pv, domain, vcpu_id, &ev, (cb.address, true), regs)
}

/// Whether a software `int $n` may reach the guest handler directly (its trap-table DPL):
/// DPL >= 1 from guest kernel mode, DPL 3 from guest user mode.
// xen: arch/x86/traps.c, permit_softint
pub fn permit_softint(dpl: u8, mode: GuestMode) -> bool {
    dpl >= if mode == GuestMode::Kernel { 1 } else { 3 }
}

/// The event to deliver for an exception exit, applying the `int $n` host quirk: on these
/// hosts `int $n` at CPL3 (n other than 3, 4) raises #UD at the instruction. It becomes a
/// software interrupt `n` (rip moved past the 2-byte instruction) when the guest's trap
/// table DPL allows it, else #GP with error code `n << 3 | 2`, as Xen delivers it.
// xen: arch/x86/traps.c, do_general_protection ("Cunning trick to allow arbitrary INT n")
pub fn event_for_exit(
    guest: &GuestVirt<'_>,
    pv: &PvVcpuState,
    vector: u8,
    error_code: Option<u64>,
    cr2: u64,
    frame: &CpuFrame,
    regs: &mut GuestRegs,
) -> GuestEvent {
    let cs = match (frame.cs as u16) | 3 {
        c @ (FLAT_RING3_CS64 | FLAT_RING3_CS32) => c,
        _ => FLAT_RING3_CS64,
    };
    let ss = (frame.ss as u16) | 3;
    let mut ev = GuestEvent {
        vector,
        error_code,
        cr2,
        cs,
        ss,
        software: false,
    };
    if vector == X86_EXC_UD {
        if let Some(n) = software_int_at(guest, regs.rip) {
            let entry = pv.traps[usize::from(n)];
            if permit_softint(entry.dpl(), pv.guest_mode()) {
                regs.rip = regs.rip.wrapping_add(2);
                ev.vector = n;
                ev.error_code = None;
                ev.software = true;
            } else {
                ev.vector = X86_EXC_GP;
                ev.error_code = Some((u64::from(n) << 3) | 2);
            }
        }
    }
    ev
}

/// Handle an exception exit of `vcpu`: bounce it to the guest's handler (switching CR3 if
/// it came from guest user mode) and return the code segment to resume with. On error the
/// domain has been crashed (Xen's `domain_crash` for an unhandled PV exception or a fault
/// writing the frame) and the vCPU must not be resumed.
pub fn handle_exception(
    vcpu: &mut Vcpu,
    domain: &DomainShared,
    vector: u8,
    error_code: Option<u64>,
    cr2: u64,
    frame: &CpuFrame,
    regs: &mut GuestRegs,
) -> Result<GuestCs, BounceError> {
    if !frame.from_guest() {
        let e = BounceError::InRing0 {
            vector,
            rip: frame.rip,
        };
        domain.crash(&e.to_string());
        return Err(e);
    }
    // Writable page tables: a kernel write to a validated L1 is emulated, not bounced.
    if crate::ptwr::emulate(vcpu, domain, vector, error_code, cr2, regs) {
        return Ok(GuestCs::Long64);
    }
    let ram = vcpu.ram().clone();
    let cr3 = vcpu.cr3();
    let id = vcpu.id();
    let mut ev = {
        let guest = GuestVirt::new(&ram, cr3);
        event_for_exit(&guest, vcpu.pv(), vector, error_code, cr2, frame, regs)
    };
    // xen: a #GP(0) or #UD that is not a software interrupt may be a privileged operation
    // Xen emulates for PV guests (emul-priv-op.c, emul-inv-op.c).
    if !ev.software && ev.vector == vector {
        match crate::privop::try_emulate(vcpu, domain, vector, error_code, regs) {
            crate::privop::Next::Resume => return Ok(GuestCs::Long64),
            crate::privop::Next::Inject {
                vector,
                error_code,
                cr2,
            } => {
                ev.vector = vector;
                ev.error_code = error_code;
                ev.cr2 = cr2;
            }
            crate::privop::Next::Bounce => {}
        }
    }
    match bounce(&ram, cr3, vcpu.pv_mut(), domain, id, &ev, regs) {
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

/// A short name for a vector, for logs.
pub fn vector_name(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "rsvd15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "rsvd22", "rsvd23",
        "rsvd24", "rsvd25", "rsvd26", "rsvd27", "#HV", "#VC", "#SX", "rsvd31",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("int")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn reads_frame_with_and_without_error_code() {
        let l = Ring0Layer::new(1, 16).unwrap();
        let c = l.vcpu(0).unwrap();
        let base = c.rsp0_top - 48;
        let vals = [0x14u64, 0x1000, 0xe033, 0x202, 0x2000, 0xe02b];
        for (i, v) in vals.iter().enumerate() {
            let gpa = l.va_to_gpa(base + 8 * i as u64, 8).unwrap();
            l.private_mem()
                .mem()
                .write_obj(*v, GuestAddress(gpa))
                .unwrap();
        }
        let (err, f) = read_exception_frame(&l, &c, VEC_PF, base).unwrap();
        assert_eq!(err, Some(0x14));
        assert_eq!(
            f,
            CpuFrame {
                rip: 0x1000,
                cs: 0xe033,
                rflags: 0x202,
                rsp: 0x2000,
                ss: 0xe02b
            }
        );
        assert!(f.from_guest());
        let (err, f) = read_exception_frame(&l, &c, VEC_UD, base + 8).unwrap();
        assert_eq!(err, None);
        assert_eq!(f.rip, 0x1000);
    }

    #[test]
    fn refuses_stack_pointer_off_the_ring0_stacks() {
        let l = Ring0Layer::new(1, 16).unwrap();
        let c = l.vcpu(0).unwrap();
        for rsp in [0, c.rsp0_top - 40, c.gdt_base, u64::MAX - 7] {
            assert!(read_exception_frame(&l, &c, VEC_GP, rsp).is_err());
        }
        assert!(read_exception_frame(&l, &c, VEC_DF, c.ist_tops[0] - 48).is_ok());
    }

    #[test]
    fn software_int_is_decoded_through_guest_page_tables() {
        use crate::memory::GuestRam;
        let ram = GuestRam::new(8).unwrap();
        // VA 0.. -> L4 pfn 1 -> L3 2 -> L2 3 -> L1 4 -> pfn 5.
        for (pfn, next) in [(1u64, 2u64), (2, 3), (3, 4), (4, 5)] {
            ram.mem()
                .write_obj((next << 12) | 7, GuestAddress(pfn << 12))
                .unwrap();
        }
        ram.mem()
            .write_slice(&[0xcd, 0x80, 0x0f, 0x0b], GuestAddress(5 << 12))
            .unwrap();
        let g = GuestVirt::new(&ram, 1 << 12);
        assert_eq!(software_int_at(&g, 0), Some(0x80));
        assert_eq!(software_int_at(&g, 2), None);
        assert_eq!(software_int_at(&g, 0x1000), None, "unmapped");
        assert_eq!(software_int_at(&g, 0xfff), None, "crosses into unmapped");
    }

    #[test]
    fn vector_names() {
        assert_eq!(vector_name(14), "#PF");
        assert_eq!(vector_name(200), "int");
    }
}

#[cfg(test)]
mod bounce_tests {
    use super::*;
    use crate::hypercall::handler_tests::{Guest, RO, UNMAPPED, VA, VA_END};
    use crate::memory::PAGE_SIZE;
    use xen_abi::negotiate::LaunchMode;
    use xen_abi::pv_vcpu::{TrapEntry, TRAP_FLAG_MASK_EVENTS};
    use xen_abi::sched::ShutdownReason;

    const HANDLER: u64 = 0xffff_ffff_8000_4000;

    fn guest_with_handler(vector: u8, flags: u8) -> Guest {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.pv.traps[usize::from(vector)] = TrapEntry {
            address: HANDLER,
            cs: 0xe033,
            flags,
            pad: [0; 5],
        };
        g.regs = GuestRegs {
            rip: 0xffff_ffff_8000_1234,
            rsp: VA + 0x808, // not 16-byte aligned
            rflags: 0x202 | rflags::TF | rflags::AC | rflags::NT | rflags::RF,
            rcx: 0xc,
            r11: 0xb,
            rax: 0xa,
            ..Default::default()
        };
        g
    }

    fn ev(vector: u8, error_code: Option<u64>, cr2: u64) -> GuestEvent {
        GuestEvent {
            vector,
            error_code,
            cr2,
            cs: 0xe033,
            ss: 0xe02b,
            software: false,
        }
    }

    fn run(g: &mut Guest, e: &GuestEvent) -> Result<Option<u64>, BounceError> {
        bounce(&g.ram, PAGE_SIZE, &mut g.pv, &g.dom, 0, e, &mut g.regs)
    }

    #[test]
    fn kernel_mode_frame_without_error_code_is_xen_layout() {
        let mut g = guest_with_handler(6, 0);
        assert_eq!(run(&mut g, &ev(6, None, 0)), Ok(None));
        let top = (VA + 0x808) & !0xf;
        assert_eq!(g.regs.rsp, top - 56);
        assert_eq!(g.regs.rip, HANDLER);
        assert_eq!(
            g.regs.rflags & (rflags::TF | rflags::AC | rflags::NT | rflags::RF),
            0
        );
        assert_eq!((g.regs.rax, g.regs.rcx, g.regs.r11), (0xa, 0xc, 0xb));
        let f: [u64; 7] = g.get(g.regs.rsp);
        // rcx, r11, rip, cs (RPL cleared, saved mask 1 in bits 32-39), rflags (IF = !mask),
        // rsp, ss
        assert_eq!(f[0], 0xc);
        assert_eq!(f[1], 0xb);
        assert_eq!(f[2], 0xffff_ffff_8000_1234);
        assert_eq!(f[3], 0x1_0000_e030);
        assert_eq!(f[4] & rflags::IF, 0);
        assert_ne!(
            f[4] & rflags::TF,
            0,
            "the frame keeps the interrupted flags"
        );
        assert_eq!(f[5], VA + 0x808);
        assert_eq!(f[6], 0xe02b);
        assert_eq!(g.mask(), 1);
    }

    #[test]
    fn error_code_frame_pf_cr2_user_bit_and_event_masking() {
        let mut g = guest_with_handler(14, TRAP_FLAG_MASK_EVENTS);
        g.set_mask(0);
        let e = ev(14, Some(pf_error::USER | pf_error::WRITE), 0xdead_b000);
        assert_eq!(run(&mut g, &e), Ok(None));
        let f: [u64; 8] = g.get(g.regs.rsp);
        assert_eq!(
            f[2],
            pf_error::WRITE,
            "user bit cleared for guest kernel mode"
        );
        assert_eq!(f[3], 0xffff_ffff_8000_1234);
        assert_eq!(f[4], 0xe030, "saved mask 0");
        assert_ne!(f[5] & rflags::IF, 0);
        assert_eq!(g.mask(), 1, "disable-events flag sets the mask");
        let gpa = vm_memory::GuestAddress(60 * PAGE_SIZE + 16);
        use vm_memory::Bytes;
        assert_eq!(g.ram.mem().read_obj::<u64>(gpa).unwrap(), 0xdead_b000);
    }

    #[test]
    fn user_mode_switches_to_the_kernel_stack_and_page_tables() {
        let mut g = guest_with_handler(13, 0);
        g.pv.set_guest_mode(GuestMode::User);
        g.pv.kernel_sp = VA + 0x1008;
        g.pv.kernel_cr3 = PAGE_SIZE;
        assert_eq!(run(&mut g, &ev(13, Some(0), 0)), Ok(Some(PAGE_SIZE)));
        assert_eq!(g.pv.guest_mode(), GuestMode::Kernel);
        assert_eq!(g.regs.rsp, VA + 0x1000 - 64);
        let f: [u64; 8] = g.get(g.regs.rsp);
        assert_eq!(f[4] & 3, 3, "RPL kept: interrupted user mode");
        assert_eq!(f[6], VA + 0x808);
    }

    #[test]
    fn unhandled_vector_or_bad_stack_is_an_error() {
        let mut g = guest_with_handler(6, 0);
        assert!(matches!(
            run(&mut g, &ev(14, Some(0), 0)),
            Err(BounceError::NoHandler { vector: 14, .. })
        ));
        for rsp in [
            UNMAPPED,
            RO + 64,
            0x8000_0000_0000_0000,
            0xffff_8080_0000_0100,
            16,
        ] {
            let mut g = guest_with_handler(6, 0);
            g.regs.rsp = rsp;
            assert!(
                matches!(
                    run(&mut g, &ev(6, None, 0)),
                    Err(BounceError::FrameFault { .. })
                ),
                "rsp {rsp:#x}"
            );
        }
        let _ = VA_END;
    }

    fn put_insn(g: &Guest, va: u64, b: [u8; 2]) {
        g.put(va, &b);
    }

    #[test]
    fn int_n_quirk_becomes_software_interrupt_or_gp() {
        let at = VA + 0x40;
        let frame = CpuFrame {
            rip: at,
            cs: 0xe033,
            rflags: 0x202,
            rsp: VA + 0x800,
            ss: 0xe02b,
        };
        // DPL 3 entry: delivered as vector 0x80, rip after the instruction, no error code.
        let mut g = guest_with_handler(0x80, 3);
        put_insn(&g, at, [0xcd, 0x80]);
        g.regs.rip = at;
        let guest = GuestVirt::new(&g.ram, PAGE_SIZE);
        let e = event_for_exit(&guest, &g.pv, 6, None, 0, &frame, &mut g.regs);
        assert_eq!((e.vector, e.error_code, e.software), (0x80, None, true));
        assert_eq!(g.regs.rip, at + 2);
        assert_eq!(run(&mut g, &e), Ok(None));
        let f: [u64; 7] = g.get(g.regs.rsp);
        assert_eq!(f[2], at + 2);
        // DPL 0 entry: #GP(n << 3 | 2) at the instruction.
        let mut g = guest_with_handler(0x80, 0);
        put_insn(&g, at, [0xcd, 0x80]);
        g.regs.rip = at;
        let guest = GuestVirt::new(&g.ram, PAGE_SIZE);
        let e = event_for_exit(&guest, &g.pv, 6, None, 0, &frame, &mut g.regs);
        assert_eq!((e.vector, e.error_code), (13, Some(0x402)));
        assert_eq!(g.regs.rip, at);
        // A real #UD stays #UD.
        let mut g = guest_with_handler(6, 0);
        put_insn(&g, at, [0x0f, 0x0b]);
        g.regs.rip = at;
        let guest = GuestVirt::new(&g.ram, PAGE_SIZE);
        let e = event_for_exit(&guest, &g.pv, 6, None, 0, &frame, &mut g.regs);
        assert_eq!((e.vector, e.error_code), (6, None));
        assert!(permit_softint(1, GuestMode::Kernel));
        assert!(!permit_softint(2, GuestMode::User));
        let _ = ShutdownReason::Crash;
    }
}
