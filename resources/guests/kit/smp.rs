//! Secondary vCPUs for kit guests: their stacks, their `vcpu_guest_context` and
//! VCPUOP_initialise / VCPUOP_up.
//!
//! A secondary vCPU starts in `main(arg)` (an `extern "C" fn(u64) -> !`) on its own stack,
//! with the current page tables, in kernel mode with events masked, as vCPU 0 does at boot.

#![allow(dead_code)]

use core::cell::UnsafeCell;

use super::abi::*;
use super::hypercall::hypercall3;

// xen: public/arch-x86/xen.h `struct vcpu_guest_context` (x86_64): its size and the byte
// offsets of flags, user_regs (cpu_user_regs, 8-byte words r15, r14, r13, r12, rbp, rbx,
// r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, error_code|entry_vector, rip, cs, rflags, rsp,
// ss), kernel_ss, kernel_sp and ctrlreg[8].
pub const CTX_SIZE: usize = 5168;
const OFF_FLAGS: usize = 512;
const OFF_REGS: usize = 520;
const OFF_KERNEL_SS: usize = 4968;
const OFF_KERNEL_SP: usize = 4976;
const OFF_CTRLREG: usize = 4984;
// Word indices in cpu_user_regs.
const REG_RDI: usize = 14;
const REG_RIP: usize = 16;
const REG_CS: usize = 17;
const REG_RFLAGS: usize = 18;
const REG_RSP: usize = 19;
const REG_SS: usize = 20;

/// Bytes of each secondary vCPU's stack.
pub const STACK_SIZE: usize = 16384;

/// `N` vCPU stacks of [`STACK_SIZE`] bytes, each 16-byte aligned (the ABI's alignment).
#[repr(C, align(16))]
pub struct Stacks<const N: usize>(UnsafeCell<[[u8; STACK_SIZE]; N]>);

// SAFETY: the kit never reads or writes the stacks; it only hands out their addresses,
// each used by one vCPU.
unsafe impl<const N: usize> Sync for Stacks<N> {}

impl<const N: usize> Stacks<N> {
    pub const fn new() -> Self {
        Self(UnsafeCell::new([[0; STACK_SIZE]; N]))
    }
    /// The first byte above stack `i` (16-byte aligned); `i` is taken modulo `N`.
    pub fn top(&self, i: usize) -> u64 {
        self.0.get() as u64 + ((i % N + 1) * STACK_SIZE) as u64
    }
    /// Whether `rsp` lies inside stack `i`.
    pub fn contains(&self, i: usize, rsp: u64) -> bool {
        let top = self.top(i);
        (top - STACK_SIZE as u64..top).contains(&rsp)
    }
}

#[repr(C, align(64))]
struct Context(UnsafeCell<[u8; CTX_SIZE]>);
// SAFETY: only vCPU 0 builds contexts, one at a time (see `context`).
unsafe impl Sync for Context {}
static CTX: Context = Context(UnsafeCell::new([0; CTX_SIZE]));

/// `vcpu_op(cmd, vcpu, arg)`.
pub fn vcpu_op(cmd: u64, vcpu: u64, arg: u64) -> i64 {
    // SAFETY: the callers pass null or a buffer of the op's size (or a bad pointer the
    // hypervisor must refuse).
    unsafe { hypercall3(HYPERVISOR_VCPU_OP, cmd, vcpu, arg) }
}

/// Build, in the kit's one context buffer, the context of a vCPU that starts in
/// `main(arg)` on the stack below `stack_top` (16-byte aligned), with the page tables of
/// start_info (`pt_base`), kernel mode, flat selectors and rflags 0x202; the buffer's
/// address for VCPUOP_initialise. Call from one vCPU only, and initialise the target before
/// building the next context.
pub fn context(si: &StartInfo, main: extern "C" fn(u64) -> !, arg: u64, stack_top: u64) -> u64 {
    // SAFETY: only the calling vCPU touches the buffer (see above); the hypervisor copies
    // it during VCPUOP_initialise.
    let b = unsafe { &mut *CTX.0.get() };
    b.fill(0);
    let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let reg = |i: usize| OFF_REGS + i * 8;
    put(OFF_FLAGS, VGCF_IN_KERNEL);
    put(reg(REG_RDI), arg);
    put(reg(REG_RIP), main as *const () as usize as u64);
    put(reg(REG_CS), u64::from(FLAT_KERNEL_CS));
    put(reg(REG_RFLAGS), 0x202);
    // `main` is entered as if called: rsp % 16 == 8, the (never used) return address slot
    // at [rsp] inside the stack.
    put(reg(REG_RSP), stack_top - 8);
    put(reg(REG_SS), u64::from(FLAT_KERNEL_SS));
    put(OFF_KERNEL_SS, u64::from(FLAT_KERNEL_SS));
    put(OFF_KERNEL_SP, stack_top);
    put(OFF_CTRLREG + 3 * 8, si.pt_base.wrapping_sub(VIRT_BASE) & !(PAGE_SIZE - 1));
    CTX.0.get() as u64
}

/// VCPUOP_initialise of vCPU `id` with the context at `ctx` (from [`context`]).
pub fn initialise(id: u32, ctx: u64) -> i64 {
    vcpu_op(VCPUOP_INITIALISE, u64::from(id), ctx)
}

/// VCPUOP_up of vCPU `id`.
pub fn up(id: u32) -> i64 {
    vcpu_op(VCPUOP_UP, u64::from(id), 0)
}

/// VCPUOP_is_up of vCPU `id`: 1 up, 0 down, or the errno.
pub fn is_up(id: u32) -> i64 {
    vcpu_op(VCPUOP_IS_UP, u64::from(id), 0)
}

/// VCPUOP_down of vCPU `id` (the caller's own id: it stops here until brought up again).
pub fn down(id: u32) -> i64 {
    vcpu_op(VCPUOP_DOWN, u64::from(id), 0)
}

/// Bring vCPU `id` up to start in `main(arg)` on `stack_top`: [`context`], [`initialise`],
/// [`up`]; on failure, which call failed and its result.
pub fn start(
    si: &StartInfo,
    id: u32,
    main: extern "C" fn(u64) -> !,
    arg: u64,
    stack_top: u64,
) -> Result<(), (&'static str, i64)> {
    let ctx = context(si, main, arg, stack_top);
    match initialise(id, ctx) {
        0 => {}
        rc => return Err(("VCPUOP_initialise", rc)),
    }
    match up(id) {
        0 => Ok(()),
        rc => Err(("VCPUOP_up", rc)),
    }
}
