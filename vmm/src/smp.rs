//! Secondary vCPUs: `VCPUOP_initialise`, `VCPUOP_up`, `VCPUOP_down`, `VCPUOP_is_up`.
//!
//! Every vCPU of the VM exists from creation and has its own host thread (see
//! [`crate::launch`]); a secondary thread parks in [`Smp::wait_runnable`] until the guest
//! initialised and brought it up, applies the context the guest gave
//! ([`apply_context`]) and enters the common run loop. `VCPUOP_down` parks a vCPU again
//! (its state is kept; `up` resumes it where it stopped), as Xen's `vcpu_down`.
//!
//! TLB-flush operations naming other vCPUs go through [`Smp::flush`] ([`crate::tlbflush`]).
// xen: common/domain.c, do_vcpu_op (VCPUOP_initialise/up/down/is_up);
// arch/x86/domain.c, arch_set_info_guest; public/arch-x86/xen.h, vcpu_guest_context.

use std::sync::{Condvar, Mutex, MutexGuard};

use thiserror::Error;
use xen_abi::arch::is_canonical;
use xen_abi::cpu::{MAX_GDT_FRAMES, MAX_GUEST_GDT_ENTRIES};
use xen_abi::errno::Errno;
use xen_abi::pv_vcpu::{
    callback_index, TrapEntry, CALLBACK_FLAG_MASK_EVENTS, NR_TRAPS, PENDING_GDT,
};

use crate::vcpu::{GuestCs, GuestRegs, Vcpu, VcpuError};

// xen: public/vcpu.h
/// `VCPUOP_initialise`; arg = `vcpu_guest_context` (guest virtual).
pub const VCPUOP_INITIALISE: u32 = 0;
/// `VCPUOP_up`.
pub const VCPUOP_UP: u32 = 1;
/// `VCPUOP_down`.
pub const VCPUOP_DOWN: u32 = 2;
/// `VCPUOP_is_up`.
pub const VCPUOP_IS_UP: u32 = 3;

/// `sizeof(struct vcpu_guest_context)` on x86_64.
pub const VCPU_GUEST_CONTEXT_SIZE: usize = 5168;

// xen: public/arch-x86/xen.h, VGCF_*
/// The failsafe callback runs with events masked.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// The syscall callback runs with events masked.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// The vCPU starts in guest kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;

// Offsets in vcpu_guest_context (x86_64): fpu_ctxt[512], flags, user_regs (cpu_user_regs,
// 200 bytes), trap_ctxt[256] (16 bytes each), ldt_base, ldt_ents, gdt_frames[16], gdt_ents,
// kernel_ss, kernel_sp, ctrlreg[8], debugreg[8], event/failsafe/syscall callback eips,
// vm_assist, fs_base, gs_base_kernel, gs_base_user.
const OFF_FLAGS: usize = 512;
const OFF_REGS: usize = 520;
const OFF_TRAPS: usize = 720;
const OFF_LDT_BASE: usize = 4816;
const OFF_LDT_ENTS: usize = 4824;
const OFF_GDT_FRAMES: usize = 4832;
const OFF_GDT_ENTS: usize = 4960;
const OFF_KERNEL_SS: usize = 4968;
const OFF_KERNEL_SP: usize = 4976;
const OFF_CTRLREG: usize = 4984;
const OFF_EVENT_CB: usize = 5112;
const OFF_FAILSAFE_CB: usize = 5120;
const OFF_SYSCALL_CB: usize = 5128;
const OFF_VM_ASSIST: usize = 5136;
const OFF_FS_BASE: usize = 5144;
const OFF_GS_BASE_KERNEL: usize = 5152;
const OFF_GS_BASE_USER: usize = 5160;

/// Errors of the SMP module (host side).
#[derive(Debug, Error)]
pub enum SmpError {
    /// Setting a vCPU's state failed.
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    /// The PV CPU model could not be applied.
    #[error("{0}")]
    PvMode(#[from] crate::pvmode::PvModeError),
}

/// A vCPU's start state from `VCPUOP_initialise`.
#[derive(Clone, Debug)]
pub struct InitContext {
    /// `VGCF_*` flags.
    pub flags: u64,
    /// General registers, `rip` and `rflags` (from `user_regs`).
    pub regs: GuestRegs,
    /// The virtual IDT.
    pub traps: Box<[TrapEntry; NR_TRAPS]>,
    /// GDT frames and entries.
    pub gdt_frames: [u64; MAX_GDT_FRAMES],
    /// Number of GDT entries.
    pub gdt_ents: u64,
    /// LDT linear address (page aligned) and entries (0 = none).
    pub ldt_base: u64,
    /// Number of LDT entries (at most 8192).
    pub ldt_ents: u32,
    /// Kernel stack segment (virtual TSS).
    pub kernel_ss: u64,
    /// Kernel stack pointer (virtual TSS).
    pub kernel_sp: u64,
    /// Kernel page table (`ctrlreg[3]`, a machine address).
    pub cr3: u64,
    /// User page table (`ctrlreg[1]`), 0 for none.
    pub user_cr3: u64,
    /// Event callback.
    pub event_callback: u64,
    /// Failsafe callback.
    pub failsafe_callback: u64,
    /// Syscall callback.
    pub syscall_callback: u64,
    /// `vm_assist` bits.
    pub vm_assist: u64,
    /// Virtual I/O privilege level (0..=3), from `user_regs.eflags`'s IOPL bits (Linux
    /// passes IOPL 1 this way for its secondary CPUs).
    pub iopl: u32,
    /// FS base.
    pub fs_base: u64,
    /// Kernel GS base.
    pub gs_base_kernel: u64,
    /// User GS base.
    pub gs_base_user: u64,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn fixup_rpl(cs: u16) -> u16 {
    // xen: fixup_guest_code_selector, a kernel selector with RPL 0 gets RPL 3 (the 64-bit
    // PV kernel runs in ring 3).
    if cs & 3 == 0 {
        cs | 3
    } else {
        cs
    }
}

/// Decode and check a `vcpu_guest_context` (x86_64): `-EINVAL` for non-canonical entry
/// points, callbacks or bases, a GDT of more than 14 frames' worth of entries, an LDT, a
/// page table outside guest RAM (`nr_pages`), as Xen's `arch_set_info_guest`.
pub fn parse_context(
    b: &[u8; VCPU_GUEST_CONTEXT_SIZE],
    nr_pages: u64,
) -> Result<InitContext, Errno> {
    let r = |i: usize| u64_at(b, OFF_REGS + 8 * i);
    // cpu_user_regs (x86_64): r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi,
    // error_code/entry_vector, rip, cs, rflags, rsp, ss, es, ds, fs, gs.
    let regs = GuestRegs {
        r15: r(0),
        r14: r(1),
        r13: r(2),
        r12: r(3),
        rbp: r(4),
        rbx: r(5),
        r11: r(6),
        r10: r(7),
        r9: r(8),
        r8: r(9),
        rax: r(10),
        rcx: r(11),
        rdx: r(12),
        rsi: r(13),
        rdi: r(14),
        rip: r(16),
        rflags: crate::vcpu::sanitize_rflags(r(18)),
        rsp: r(19),
    };
    let mut traps = Box::new([TrapEntry::default(); NR_TRAPS]);
    for (i, t) in traps.iter_mut().enumerate() {
        let off = OFF_TRAPS + 16 * i;
        let address = u64_at(b, off + 8);
        if address == 0 {
            continue;
        }
        if !is_canonical(address) {
            return Err(Errno::EINVAL);
        }
        let cs = u16::from_le_bytes([b[off + 2], b[off + 3]]);
        *t = TrapEntry {
            address,
            cs: fixup_rpl(cs),
            flags: b[off + 1],
            pad: [0; 5],
        };
    }
    let gdt_ents = u64_at(b, OFF_GDT_ENTS);
    if gdt_ents > u64::from(MAX_GUEST_GDT_ENTRIES) {
        return Err(Errno::EINVAL);
    }
    // xen: arch_set_info_guest, LDT safety checks: page aligned, at most 8192 entries, a
    // canonical address (kxen also keeps it out of Xen's range, as for MMUEXT_SET_LDT).
    let ldt_ents = u64_at(b, OFF_LDT_ENTS);
    let ldt_base = if ldt_ents != 0 {
        u64_at(b, OFF_LDT_BASE)
    } else {
        0
    };
    if ldt_base & 0xfff != 0 || ldt_ents > 8192 || !crate::hypercall::mmu::addr_ok(ldt_base) {
        return Err(Errno::EINVAL);
    }
    let mut gdt_frames = [0u64; MAX_GDT_FRAMES];
    for (i, f) in gdt_frames.iter_mut().enumerate() {
        *f = u64_at(b, OFF_GDT_FRAMES + 8 * i);
    }
    let cr3 = u64_at(b, OFF_CTRLREG + 3 * 8);
    let user_cr3 = u64_at(b, OFF_CTRLREG + 8);
    let in_ram = |cr3: u64| (cr3 >> 12) < nr_pages;
    if !in_ram(cr3) || (user_cr3 != 0 && !in_ram(user_cr3)) {
        return Err(Errno::EINVAL);
    }
    let c = InitContext {
        flags: u64_at(b, OFF_FLAGS),
        regs,
        traps,
        gdt_frames,
        gdt_ents,
        ldt_base,
        ldt_ents: ldt_ents as u32,
        kernel_ss: u64_at(b, OFF_KERNEL_SS),
        kernel_sp: u64_at(b, OFF_KERNEL_SP),
        cr3: cr3 & !0xfff,
        user_cr3: user_cr3 & !0xfff,
        event_callback: u64_at(b, OFF_EVENT_CB),
        failsafe_callback: u64_at(b, OFF_FAILSAFE_CB),
        syscall_callback: u64_at(b, OFF_SYSCALL_CB),
        vm_assist: u64_at(b, OFF_VM_ASSIST),
        // xen: arch_set_info_guest, the virtual IOPL comes from the context's eflags.
        iopl: ((r(18) >> 12) & 3) as u32,
        fs_base: u64_at(b, OFF_FS_BASE),
        gs_base_kernel: u64_at(b, OFF_GS_BASE_KERNEL),
        gs_base_user: u64_at(b, OFF_GS_BASE_USER),
    };
    let addrs = [
        c.regs.rip,
        c.regs.rsp,
        c.kernel_sp,
        c.event_callback,
        c.failsafe_callback,
        c.syscall_callback,
        c.fs_base,
        c.gs_base_kernel,
        c.gs_base_user,
    ];
    if addrs.iter().any(|&a| !is_canonical(a)) {
        return Err(Errno::EINVAL);
    }
    Ok(c)
}

/// Put `c` into `vcpu` (on the vCPU's own thread, before it first runs): the PV state
/// (trap table, callbacks, kernel stack, page tables, segment bases, GDT), then the
/// registers.
pub fn apply_context(vcpu: &mut Vcpu, c: &InitContext) -> Result<(), SmpError> {
    let pv = vcpu.pv_mut();
    pv.traps = *c.traps;
    let cb = |address: u64, masked: bool| xen_abi::pv_vcpu::CallbackEntry {
        address,
        flags: if masked { CALLBACK_FLAG_MASK_EVENTS } else { 0 },
        pad: [0; 6],
    };
    pv.callbacks[callback_index::EVENT] = cb(c.event_callback, false);
    pv.callbacks[callback_index::FAILSAFE] = cb(
        c.failsafe_callback,
        c.flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0,
    );
    pv.callbacks[callback_index::SYSCALL] = cb(
        c.syscall_callback,
        c.flags & VGCF_SYSCALL_DISABLES_EVENTS != 0,
    );
    pv.kernel_ss = c.kernel_ss;
    pv.kernel_sp = c.kernel_sp;
    pv.kernel_cr3 = c.cr3;
    pv.user_cr3 = c.user_cr3;
    pv.fs_base = c.fs_base;
    pv.gs_base_kernel = c.gs_base_kernel;
    pv.gs_base_user = c.gs_base_user;
    pv.vm_assist = c.vm_assist;
    pv.iopl = c.iopl;
    pv.set_guest_mode(if c.flags & VGCF_IN_KERNEL != 0 {
        xen_abi::pv_vcpu::GuestMode::Kernel
    } else {
        xen_abi::pv_vcpu::GuestMode::User
    });
    if c.gdt_ents != 0 {
        pv.gdt_frames = c.gdt_frames;
        pv.gdt_ents = c.gdt_ents;
        pv.pending |= PENDING_GDT;
    }
    if c.ldt_ents != 0 {
        // The caller copied the LDT (`DomainMm::set_ldt`); load it with the rest.
        pv.pending |= xen_abi::pv_vcpu::PENDING_LDT;
    }
    vcpu.set_cr3(c.cr3);
    crate::pvmode::apply(vcpu)?;
    vcpu.return_to_guest(&c.regs, GuestCs::Long64)?;
    Ok(())
}

#[derive(Debug, Default)]
struct Slot {
    initialised: bool,
    up: bool,
    /// A context not yet applied (set by `initialise`, taken by the vCPU's thread).
    context: Option<Box<InitContext>>,
}

/// Up/down state of every vCPU of a domain.
#[derive(Debug)]
pub struct Smp {
    slots: Box<[Mutex<Slot>]>,
    cv: Condvar,
    gate: Mutex<()>,
    /// Cross-vCPU TLB flush requests ([`crate::tlbflush`]).
    pub flush: crate::tlbflush::TlbFlush,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a parked vCPU thread is told.
#[derive(Debug)]
pub enum Wake {
    /// Run, first applying this context if one is given.
    Run(Option<Box<InitContext>>),
    /// The domain is shutting down: end the thread.
    Stop,
}

impl Smp {
    /// `nr` vCPUs; vCPU 0 is initialised and up (the builder set it up), the others down.
    pub fn new(nr: u32) -> Self {
        Self {
            slots: (0..nr)
                .map(|i| {
                    Mutex::new(Slot {
                        initialised: i == 0,
                        up: i == 0,
                        context: None,
                    })
                })
                .collect(),
            cv: Condvar::new(),
            gate: Mutex::new(()),
            flush: crate::tlbflush::TlbFlush::new(nr),
        }
    }

    fn slot(&self, vcpu: u32) -> Result<MutexGuard<'_, Slot>, Errno> {
        self.slots.get(vcpu as usize).map(lock).ok_or(Errno::ENOENT)
    }

    fn notify(&self) {
        let _g = lock(&self.gate);
        self.cv.notify_all();
    }

    /// `VCPUOP_initialise`: `-EEXIST` once initialised (xen: the context of a running or
    /// previously started vCPU cannot be replaced this way).
    pub fn initialise(&self, vcpu: u32, c: InitContext) -> Result<(), Errno> {
        let mut s = self.slot(vcpu)?;
        if s.initialised {
            return Err(Errno::EEXIST);
        }
        s.initialised = true;
        s.context = Some(Box::new(c));
        Ok(())
    }

    /// `VCPUOP_up`: `-EINVAL` if never initialised; 0 (and nothing) if already up.
    pub fn up(&self, vcpu: u32) -> Result<(), Errno> {
        let mut s = self.slot(vcpu)?;
        if !s.initialised {
            return Err(Errno::EINVAL);
        }
        if !s.up {
            s.up = true;
            drop(s);
            self.notify();
        }
        Ok(())
    }

    /// `VCPUOP_down`: the vCPU parks at its next exit (the caller kicks it).
    pub fn down(&self, vcpu: u32) -> Result<(), Errno> {
        self.slot(vcpu)?.up = false;
        Ok(())
    }

    /// `VCPUOP_is_up`.
    pub fn is_up(&self, vcpu: u32) -> Result<bool, Errno> {
        Ok(self.slot(vcpu)?.up)
    }

    /// Park `vcpu`'s thread until it is up (or `stopping()` says the domain ends).
    pub fn wait_runnable(&self, vcpu: u32, stopping: impl Fn() -> bool) -> Wake {
        let mut g = lock(&self.gate);
        loop {
            if stopping() {
                return Wake::Stop;
            }
            match self.slot(vcpu) {
                Ok(mut s) if s.up => return Wake::Run(s.context.take()),
                Ok(_) => {}
                Err(_) => return Wake::Stop,
            }
            g = self
                .cv
                .wait_timeout(g, std::time::Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wake every parked vCPU thread (shutdown).
    pub fn wake_all(&self) {
        self.notify();
    }
}

impl crate::domain::DomainShared {
    /// `vcpu` went down (`RunState::Offline`) or runs again (`RunState::Running`): account
    /// the change and rewrite its registered runstate area through page tables `cr3` (xen:
    /// the area is updated at the context switch, in the vCPU's own address space).
    pub fn set_vcpu_runstate(
        &self,
        ram: &crate::memory::GuestRam,
        cr3: u64,
        vcpu: u32,
        state: crate::time::RunState,
        runstate_update_flag: bool,
    ) {
        if let Some(t) = self.time() {
            let virt = crate::memory::GuestVirt::new(ram, cr3);
            t.set_runstate(ram, Some(virt), vcpu, state, runstate_update_flag);
        }
    }

    /// The domain is ending (its shutdown reason is set): wake every vCPU thread, blocked
    /// in the guest's `SCHEDOP_block`, parked down, or in `KVM_RUN`, so each sees it.
    pub fn end_all_vcpus(&self) {
        if let Some(ev) = self.events() {
            ev.wake_all();
        }
        if let Some(s) = self.smp() {
            s.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_bytes() -> Box<[u8; VCPU_GUEST_CONTEXT_SIZE]> {
        let mut b = Box::new([0u8; VCPU_GUEST_CONTEXT_SIZE]);
        let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(OFF_REGS + 16 * 8, 0xffff_8000_0010_0000); // rip
        put(OFF_REGS + 19 * 8, 0xffff_8000_0020_0000); // rsp
        put(OFF_REGS + 14 * 8, 7); // rdi
        put(OFF_REGS + 18 * 8, 0x1202); // rflags, IOPL 1
        put(OFF_CTRLREG + 24, 0x5000);
        put(OFF_EVENT_CB, 0xffff_8000_0030_0000);
        put(OFF_KERNEL_SP, 0xffff_8000_0040_0000);
        put(OFF_FS_BASE, 0x1234);
        put(OFF_GS_BASE_USER, 0x5678);
        // trap 14 → handler
        put(OFF_TRAPS + 16 * 14 + 8, 0xffff_8000_0050_0000);
        b[OFF_TRAPS + 16 * 14 + 2] = 0x30;
        b
    }

    #[test]
    fn context_fields_come_from_xens_x86_64_offsets() {
        let b = ctx_bytes();
        let c = parse_context(&b, 16).unwrap();
        assert_eq!(c.regs.rip, 0xffff_8000_0010_0000);
        assert_eq!(c.regs.rsp, 0xffff_8000_0020_0000);
        assert_eq!(c.regs.rdi, 7);
        assert_eq!(c.iopl, 1, "virtual IOPL from eflags");
        assert_eq!(c.regs.rflags & (3 << 12), 0, "real IOPL stays 0");
        assert_eq!(c.cr3, 0x5000);
        assert_eq!(c.event_callback, 0xffff_8000_0030_0000);
        assert_eq!(c.kernel_sp, 0xffff_8000_0040_0000);
        assert_eq!((c.fs_base, c.gs_base_user), (0x1234, 0x5678));
        assert_eq!(c.traps[14].address, 0xffff_8000_0050_0000);
        assert_eq!(c.traps[14].cs, 0x33, "RPL 0 becomes 3");
        assert_eq!(c.traps[13].address, 0);
    }

    #[test]
    fn bad_contexts_are_einval() {
        let mut b = ctx_bytes();
        b[OFF_CTRLREG + 24..OFF_CTRLREG + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(parse_context(&b, 16).unwrap_err(), Errno::EINVAL);
        let mut b = ctx_bytes();
        b[OFF_REGS + 128..OFF_REGS + 136].copy_from_slice(&0x0001_0000_0000_0000u64.to_le_bytes());
        assert_eq!(parse_context(&b, 16).unwrap_err(), Errno::EINVAL);
        let mut b = ctx_bytes();
        b[OFF_GDT_ENTS..OFF_GDT_ENTS + 8].copy_from_slice(&100_000u64.to_le_bytes());
        assert_eq!(parse_context(&b, 16).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn context_ldt_follows_xens_checks() {
        let with_ldt = |base: u64, ents: u64| {
            let mut b = ctx_bytes();
            b[OFF_LDT_BASE..OFF_LDT_BASE + 8].copy_from_slice(&base.to_le_bytes());
            b[OFF_LDT_ENTS..OFF_LDT_ENTS + 8].copy_from_slice(&ents.to_le_bytes());
            parse_context(&b, 16)
        };
        let c = with_ldt(0xffff_8800_0010_0000, 16).unwrap();
        assert_eq!((c.ldt_base, c.ldt_ents), (0xffff_8800_0010_0000, 16));
        assert_eq!(with_ldt(0x4000, 8192).unwrap().ldt_ents, 8192);
        // No entries: the base is ignored.
        assert_eq!(with_ldt(0x1234, 0).unwrap().ldt_base, 0);
        for (base, ents) in [
            (0x4008, 1),                // not page aligned
            (0x4000, 8193),             // too many entries
            (0x0000_8000_0000_0000, 1), // non-canonical
            (0xffff_8000_0000_0000, 1), // Xen's range
        ] {
            assert_eq!(
                with_ldt(base, ents).unwrap_err(),
                Errno::EINVAL,
                "{base:#x}/{ents}"
            );
        }
    }

    #[test]
    fn initialise_up_down_follow_xens_errnos() {
        let s = Smp::new(2);
        assert_eq!(s.up(1), Err(Errno::EINVAL), "not initialised");
        assert_eq!(s.is_up(1), Ok(false));
        let c = parse_context(&ctx_bytes(), 16).unwrap();
        s.initialise(1, c.clone()).unwrap();
        assert_eq!(s.initialise(1, c.clone()), Err(Errno::EEXIST));
        assert_eq!(s.initialise(0, c), Err(Errno::EEXIST), "vCPU 0 started");
        s.up(1).unwrap();
        s.up(1).unwrap();
        assert_eq!(s.is_up(1), Ok(true));
        match s.wait_runnable(1, || false) {
            Wake::Run(Some(c)) => assert_eq!(c.cr3, 0x5000),
            w => panic!("{w:?}"),
        }
        assert!(matches!(s.wait_runnable(1, || false), Wake::Run(None)));
        s.down(1).unwrap();
        assert!(matches!(s.wait_runnable(1, || true), Wake::Stop));
        assert_eq!(s.up(5), Err(Errno::ENOENT));
    }
}
