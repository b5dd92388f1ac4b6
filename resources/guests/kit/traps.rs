//! Exceptions: a trap table of asm entry stubs taking Xen's bounce frame, a Rust handler,
//! and the return through the iret hypercall.
//!
//! Xen's bounce frame on the guest kernel stack, low to high: rcx, r11, [error code for
//! vectors 8, 10-14, 17], rip, cs, rflags, rsp, ss (public/arch-x86/xen-x86_64.h). Each stub
//! pops rcx and r11 back into their registers, pushes a 0 error code where the CPU has
//! none, pushes the vector and jumps to a common path that saves the GPRs (and the FPU/SSE
//! state) and calls `kit_trap_handler(&mut TrapFrame)`. The return path pushes `flags = 0`
//! on top of rip..ss and jumps to hypercall-page entry 23, which pushes rcx, r11 and rax
//! itself, giving Xen's iret frame: rax, r11, rcx, flags, rip, cs, rflags, rsp, ss.

#![allow(dead_code)]

use super::abi::{TrapInfo, FLAT_KERNEL_CS};
use super::rt::Global;

/// What the common trap path saved, low to high.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    /// Bits 32-39 hold the saved upcall mask (Xen).
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Vectors with a CPU error code.
pub const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17)
}

/// The vectors the kit installs (Linux's set, minus NMI/#MC which Xen delivers otherwise).
pub const VECTORS: [u8; 17] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19];

core::arch::global_asm!(
    ".pushsection .text.kit_traps, \"ax\"",
    ".irp v, 0,1,3,4,5,6,7,8,10,11,12,13,14,16,17,18,19",
    ".globl kit_trap_\\v",
    "kit_trap_\\v:",
    "pop %rcx",
    "pop %r11",
    ".if (\\v != 8) && (\\v != 10) && (\\v != 11) && (\\v != 12) && (\\v != 13) && (\\v != 14) && (\\v != 17)",
    "push $0",
    ".endif",
    "push $\\v",
    "jmp kit_trap_common",
    ".endr",
    ".globl kit_trap_common",
    "kit_trap_common:",
    "push %rax", "push %rbx", "push %rcx", "push %rdx", "push %rsi", "push %rdi",
    "push %rbp", "push %r8", "push %r9", "push %r10", "push %r11", "push %r12",
    "push %r13", "push %r14", "push %r15",
    "mov %rsp, %rdi",
    "mov %rsp, %rbx",
    "sub $512, %rsp",
    "and $-16, %rsp",
    "fxsave64 (%rsp)",
    "cld",
    "call kit_trap_handler",
    "fxrstor64 (%rsp)",
    "mov %rbx, %rsp",
    "pop %r15", "pop %r14", "pop %r13", "pop %r12", "pop %r11", "pop %r10",
    "pop %r9", "pop %r8", "pop %rbp", "pop %rdi", "pop %rsi", "pop %rdx",
    "pop %rcx", "pop %rbx", "pop %rax",
    "add $16, %rsp",
    "push $0",
    "jmp hypercall_page + 23 * 32",
    ".popsection",
    ".pushsection .rodata.kit_trap_stub_table, \"a\"",
    ".balign 8",
    ".globl kit_trap_stub_table",
    "kit_trap_stub_table:",
    ".irp v, 0,1,3,4,5,6,7,8,10,11,12,13,14,16,17,18,19",
    ".quad kit_trap_\\v",
    ".endr",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    static kit_trap_stub_table: [u64; VECTORS.len()];
}

/// Entry address of the kit's stub for `vector`, if the kit has one.
pub fn stub_address(vector: u8) -> Option<u64> {
    let i = VECTORS.iter().position(|&v| v == vector)?;
    // SAFETY: the table is immutable data emitted above with one entry per VECTORS element.
    Some(unsafe { (*(&raw const kit_trap_stub_table))[i] })
}

static TABLE: TableCell = TableCell(core::cell::UnsafeCell::new(
    [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        address: 0,
    }; VECTORS.len() + 1],
));
struct TableCell(core::cell::UnsafeCell<[TrapInfo; VECTORS.len() + 1]>);
// SAFETY: written only by `install` on the single vCPU before any trap can use it.
unsafe impl Sync for TableCell {}

/// Install the kit's trap table (set_trap_table); returns the hypercall's result.
pub fn install() -> i64 {
    let table = TABLE.0.get();
    for (i, &v) in VECTORS.iter().enumerate() {
        let entry = TrapInfo {
            vector: v,
            // DPL 3 for #BP and #OF so `int3`/`into` work from any ring, as Linux does.
            flags: if v == 3 || v == 4 { 3 } else { 0 },
            cs: FLAT_KERNEL_CS,
            address: stub_address(v).unwrap_or(0),
        };
        // SAFETY: `i` < VECTORS.len() < table length; no reference to TABLE is live.
        unsafe { (*table)[i] = entry };
    }
    // SAFETY: the table is terminated by its last (zero) entry; every address is a stub
    // above, which takes Xen's bounce frame.
    unsafe { super::hypercall::set_trap_table(table as *const TrapInfo) }
}

/// Any rip matches.
pub const ANY_RIP: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Expect {
    vector: u8,
    rip: u64,
    skip: u64,
    clear_rflags: u64,
}

static EXPECT: Global<Option<Expect>> = Global::new(None);
static LAST: Global<Option<TrapFrame>> = Global::new(None);
static HITS: Global<u32> = Global::new(0);

/// Expect one trap `vector` at `rip` (or [`ANY_RIP`]); on it, resume at `rip + skip`.
pub fn expect(vector: u8, rip: u64, skip: u64) {
    expect_clearing(vector, rip, skip, 0);
}

/// [`expect`], and clear `clear_rflags` in the rflags resumed with (e.g. TF after a
/// single-step #DB).
pub fn expect_clearing(vector: u8, rip: u64, skip: u64, clear_rflags: u64) {
    LAST.set(None);
    EXPECT.set(Some(Expect {
        vector,
        rip,
        skip,
        clear_rflags,
    }));
}

/// The frame of the last expected trap taken (and forget it), or None if it did not come.
pub fn take_last() -> Option<TrapFrame> {
    let f = LAST.get();
    LAST.set(None);
    EXPECT.set(None);
    f
}

/// Number of expected traps taken so far.
pub fn hits() -> u32 {
    HITS.get()
}

#[no_mangle]
extern "C" fn kit_trap_handler(frame: &mut TrapFrame) {
    if frame.vector == super::events::UPCALL_VECTOR {
        super::events::upcall(frame);
        return;
    }
    if let Some(e) = EXPECT.get() {
        if u64::from(e.vector) == frame.vector && (e.rip == ANY_RIP || e.rip == frame.rip) {
            EXPECT.set(None);
            LAST.set(Some(*frame));
            HITS.set(HITS.get() + 1);
            frame.rip = frame.rip.wrapping_add(e.skip);
            frame.rflags &= !e.clear_rflags;
            return;
        }
    }
    panic!(
        "unexpected trap vector {} at rip {:#x} error {:#x} rsp {:#x}",
        frame.vector, frame.rip, frame.error_code, frame.rsp
    );
}
