//! Hypercalls through the hypercall page, and typed helpers.
//!
//! Xen's convention (x86_64 PV): `call hypercall_page + nr * 32`; the entry loads `rax = nr`
//! and executes `syscall`. Arguments in rdi, rsi, rdx, r10, r8; result in rax. The page
//! entry saves rcx/r11 around the `syscall`, but debug builds of Xen may clobber argument
//! registers, so the wrappers treat all argument registers (and rcx, r11) as clobbered.

#![allow(dead_code)]

use super::abi::*;
use core::arch::asm;

extern "C" {
    /// The page-aligned 4 KiB page in .text the VMM overwrites (ELF note HYPERCALL_PAGE).
    static hypercall_page: [u8; 4096];
}

/// Virtual address of the hypercall page.
pub fn page_addr() -> u64 {
    (&raw const hypercall_page) as u64
}

/// Bytes of the hypercall page as the VMM left them.
pub fn page() -> &'static [u8; 4096] {
    // SAFETY: the page is part of the loaded image, mapped for the guest's whole life;
    // nothing in the guest writes it (the VMM fills it before the first instruction).
    unsafe { &*(&raw const hypercall_page) }
}

/// Hypercall `nr` (< 128) through the hypercall page with five arguments.
///
/// # Safety
/// The arguments must be valid for hypercall `nr` (pointers the hypervisor may write must
/// point at memory the guest owns and may have overwritten).
pub unsafe fn hypercall5(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    assert!(
        nr < HYPERCALL_PAGE_ENTRIES,
        "hypercall number out of the page"
    );
    let target = page_addr() + u64::from(nr) * 32;
    let ret: i64;
    // SAFETY: `target` is an entry of the hypercall page, which behaves like a function
    // clobbering only rax (and, conservatively, the argument registers, rcx and r11); the
    // caller vouches for the arguments. The stack is usable (no red zone in kit guests).
    unsafe {
        asm!(
            "call *{t}",
            t = in(reg) target,
            lateout("rax") ret,
            inout("rdi") a1 => _,
            inout("rsi") a2 => _,
            inout("rdx") a3 => _,
            inout("r10") a4 => _,
            inout("r8") a5 => _,
            out("rcx") _,
            out("r11") _,
            options(att_syntax),
        );
    }
    ret
}

/// # Safety
/// See [`hypercall5`].
pub unsafe fn hypercall0(nr: u32) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, 0, 0, 0, 0, 0) }
}
/// # Safety
/// See [`hypercall5`].
pub unsafe fn hypercall1(nr: u32, a1: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, 0, 0, 0, 0) }
}
/// # Safety
/// See [`hypercall5`].
pub unsafe fn hypercall2(nr: u32, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}
/// # Safety
/// See [`hypercall5`].
pub unsafe fn hypercall3(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}
/// # Safety
/// See [`hypercall5`].
pub unsafe fn hypercall4(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, a4, 0) }
}

/// A hypercall made with a bare `syscall` and any 64-bit `rax` (numbers the page cannot
/// express, e.g. 200 or `u64::MAX`). A `syscall` from guest kernel mode is a hypercall.
///
/// # Safety
/// See [`hypercall5`].
pub unsafe fn raw_hypercall(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: as for the page entries, plus `syscall` itself clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            inout("rdi") a1 => _,
            inout("rsi") a2 => _,
            inout("rdx") a3 => _,
            inout("r10") a4 => _,
            inout("r8") a5 => _,
            out("rcx") _,
            out("r11") _,
            options(att_syntax),
        );
    }
    ret
}

// ---- typed helpers -------------------------------------------------------------------

/// `console_io(cmd, count, buffer)` with raw arguments (hostile tests pass bad ones).
pub fn console_io(cmd: u32, count: u32, buffer: u64) -> i64 {
    // SAFETY: console_io only reads `count` bytes at `buffer` (for write) or writes at most
    // `count` bytes (read); callers pass either a valid buffer or one the hypervisor must
    // reject with -EFAULT without touching guest state.
    unsafe {
        hypercall3(
            HYPERVISOR_CONSOLE_IO,
            u64::from(cmd),
            u64::from(count),
            buffer,
        )
    }
}

/// CONSOLEIO_write of `bytes`; Xen returns 0 on success (not the length).
pub fn console_write(bytes: &[u8]) -> i64 {
    console_io(CONSOLEIO_WRITE, bytes.len() as u32, bytes.as_ptr() as u64)
}

/// `xen_version(cmd, arg)` with a raw argument pointer.
///
/// # Safety
/// `arg` must be NULL, point at a buffer large enough for `cmd`'s output, or be an address
/// the hypervisor must refuse with -EFAULT.
pub unsafe fn xen_version_raw(cmd: u32, arg: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(HYPERVISOR_XEN_VERSION, u64::from(cmd), arg) }
}

/// `xen_version(cmd, buf)` for the ops that write at most `N` bytes into `buf`.
pub fn xen_version<const N: usize>(cmd: u32, buf: &mut [u8; N]) -> i64 {
    // SAFETY: `buf` is writable and sized by the caller for `cmd`.
    unsafe { xen_version_raw(cmd, buf.as_mut_ptr() as u64) }
}

/// XENVER_version: `major << 16 | minor`.
pub fn xen_version_number() -> i64 {
    // SAFETY: XENVER_version takes no argument.
    unsafe { xen_version_raw(XENVER_VERSION, 0) }
}

/// XENVER_get_features for `submap_idx`: the submap or the errno.
pub fn get_features(submap_idx: u32) -> Result<u32, i64> {
    let mut fi = FeatureInfo {
        submap_idx,
        submap: 0,
    };
    // SAFETY: `fi` is a writable xen_feature_info.
    let rc = unsafe { xen_version_raw(XENVER_GET_FEATURES, (&raw mut fi) as u64) };
    if rc == 0 {
        Ok(fi.submap)
    } else {
        Err(rc)
    }
}

/// `sched_op(cmd, arg)` with a raw argument.
///
/// # Safety
/// `arg` must be valid for `cmd`.
pub unsafe fn sched_op(cmd: u32, arg: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(HYPERVISOR_SCHED_OP, u64::from(cmd), arg) }
}

/// SCHEDOP_yield.
pub fn sched_yield() -> i64 {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { sched_op(SCHEDOP_YIELD, 0) }
}

/// SCHEDOP_shutdown with `reason`; returns only if the hypervisor refuses (or resumes a
/// suspended guest).
pub fn shutdown(reason: u32) -> i64 {
    let arg = SchedShutdown { reason };
    // SAFETY: `arg` is a valid sched_shutdown.
    unsafe { sched_op(SCHEDOP_SHUTDOWN, (&raw const arg) as u64) }
}

/// SCHEDOP_shutdown(SHUTDOWN_suspend): the third argument carries the start_info MFN for
/// the toolstack, as Linux's HYPERVISOR_suspend does. Returns 1 if the suspend was
/// cancelled, 0 when resumed in a new domain.
pub fn suspend(start_info_mfn: u64) -> i64 {
    let arg = SchedShutdown {
        reason: SHUTDOWN_SUSPEND,
    };
    // SAFETY: `arg` is a valid sched_shutdown; the third argument is a plain number.
    unsafe {
        hypercall3(
            HYPERVISOR_SCHED_OP,
            u64::from(SCHEDOP_SHUTDOWN),
            (&raw const arg) as u64,
            start_info_mfn,
        )
    }
}

/// `set_trap_table(table)`; the table ends with an entry whose address is 0.
///
/// # Safety
/// `table` must point at a terminated table (or be an address the hypervisor must refuse);
/// every handler address installed must be a kit trap entry able to take Xen's frame.
pub unsafe fn set_trap_table(table: *const TrapInfo) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall1(HYPERVISOR_SET_TRAP_TABLE, table as u64) }
}

/// `set_callbacks(event, failsafe, syscall)` (x86_64 form: three addresses).
///
/// # Safety
/// The addresses must be entry points able to take Xen's bounce frame.
pub unsafe fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall3(HYPERVISOR_SET_CALLBACKS, event, failsafe, syscall) }
}

/// `vm_assist(cmd, type)`.
pub fn vm_assist(cmd: u32, ty: u32) -> i64 {
    // SAFETY: vm_assist takes two numbers and touches no guest memory.
    unsafe { hypercall2(HYPERVISOR_VM_ASSIST, u64::from(cmd), u64::from(ty)) }
}

/// `stack_switch(ss, esp)`: the kernel stack Xen switches to on a user->kernel bounce.
pub fn stack_switch(ss: u64, esp: u64) -> i64 {
    // SAFETY: stack_switch records two numbers; nothing is accessed until a bounce.
    unsafe { hypercall2(HYPERVISOR_STACK_SWITCH, ss, esp) }
}

/// `multicall(list, count)` with raw arguments.
///
/// # Safety
/// Every entry Xen may read must describe a hypercall that is safe to make.
pub unsafe fn multicall(list: u64, count: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(HYPERVISOR_MULTICALL, list, count) }
}

/// `memory_op(cmd, arg)` with raw arguments.
///
/// # Safety
/// `arg` must be valid for `cmd`.
pub unsafe fn memory_op(cmd: u64, arg: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(HYPERVISOR_MEMORY_OP, cmd, arg) }
}

/// XENMEM_machphys_mfn_list: the machine frames of the M2P's 2 MiB extents, into `out`;
/// returns how many were written.
pub fn machphys_mfn_list(out: &mut [u64]) -> Result<usize, i64> {
    let mut l = MachphysMfnList {
        max_extents: u32::try_from(out.len()).unwrap_or(u32::MAX),
        extent_start: out.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `l` is a writable xen_machphys_mfn_list naming `out`, writable for max_extents.
    let rc = unsafe { memory_op(XENMEM_MACHPHYS_MFN_LIST, (&raw mut l) as u64) };
    if rc == 0 {
        Ok(l.nr_extents as usize)
    } else {
        Err(rc)
    }
}

/// XENMEM_machphys_mapping: where the read-only M2P table is mapped.
pub fn machphys_mapping() -> Result<MachphysMapping, i64> {
    let mut m = MachphysMapping::default();
    // SAFETY: `m` is a writable xen_machphys_mapping.
    let rc = unsafe { memory_op(XENMEM_MACHPHYS_MAPPING, (&raw mut m) as u64) };
    if rc == 0 {
        Ok(m)
    } else {
        Err(rc)
    }
}
