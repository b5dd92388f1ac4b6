//! Minimal runtime: memory functions (no libc), the panic handler, a global cell.

#![allow(dead_code)]

use core::cell::UnsafeCell;

/// A global for the kit's single vCPU with events masked: no concurrent access exists, but
/// a trap handler may run between two accesses, so values are read and written whole.
pub struct Global<T: Copy>(UnsafeCell<T>);

// SAFETY: kit guests run on one vCPU and never unmask events; the only reentrancy is a
// synchronous trap, and Global never hands out references, only copies.
unsafe impl<T: Copy> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }
    pub fn get(&self) -> T {
        // SAFETY: see the Sync impl; the read is of a whole Copy value.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }
    pub fn set(&self, v: T) {
        // SAFETY: see the Sync impl; the write is of a whole Copy value.
        unsafe { core::ptr::write_volatile(self.0.get(), v) }
    }
}

// memcpy/memmove/memset/memcmp/bcmp: rustc's x86_64-unknown-linux-gnu target expects libc
// to provide them. Written in assembly so the optimizer cannot turn them into calls to
// themselves.
core::arch::global_asm!(
    ".pushsection .text.kit_mem, \"ax\"",
    ".globl memcpy",
    ".type memcpy, @function",
    "memcpy:",
    "mov %rdi, %rax",
    "mov %rdx, %rcx",
    "rep movsb",
    "ret",
    ".globl memset",
    ".type memset, @function",
    "memset:",
    "mov %rdi, %r9",
    "mov %esi, %eax",
    "mov %rdx, %rcx",
    "rep stosb",
    "mov %r9, %rax",
    "ret",
    ".globl memmove",
    ".type memmove, @function",
    "memmove:",
    "mov %rdi, %rax",
    "mov %rdx, %rcx",
    "cmp %rsi, %rdi",
    "jbe 1f",
    "lea -1(%rsi,%rdx), %rsi",
    "lea -1(%rdi,%rdx), %rdi",
    "std",
    "rep movsb",
    "cld",
    "ret",
    "1:",
    "rep movsb",
    "ret",
    ".globl memcmp",
    ".type memcmp, @function",
    ".globl bcmp",
    ".type bcmp, @function",
    "memcmp:",
    "bcmp:",
    "xor %eax, %eax",
    "test %rdx, %rdx",
    "jz 3f",
    "2:",
    "movzbl (%rdi), %eax",
    "movzbl (%rsi), %ecx",
    "sub %ecx, %eax",
    "jnz 3f",
    "inc %rdi",
    "inc %rsi",
    "dec %rdx",
    "jnz 2b",
    "3:",
    "ret",
    ".popsection",
    options(att_syntax),
);

/// Referenced by the precompiled `core` (built with unwinding); never called with
/// panic=abort.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

static PANICKING: Global<bool> = Global::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if !PANICKING.get() {
        PANICKING.set(true);
        super::console::flush();
        match info.location() {
            Some(l) => println!(
                "KXEN-TEST: PANIC {} at {}:{}",
                info.message(),
                l.file(),
                l.line()
            ),
            None => println!("KXEN-TEST: PANIC {}", info.message()),
        }
    }
    super::hypercall::shutdown(super::abi::SHUTDOWN_CRASH);
    halt_forever()
}

/// Spin forever (the hypervisor refused to stop us).
pub fn halt_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
