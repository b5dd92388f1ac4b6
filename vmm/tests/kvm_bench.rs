//! Many syscall round trips work; prints their cost next to a bare ring-0 `out` exit
//! (printed only, not asserted: timings on these hosts are noisy).

mod kvm_support;

use std::time::Instant;

use kvm_support::{Asm, TestGuest, CODE_VA, R, STACK_TOP};
use kxen::vcpu::{ExitKind, GuestCs, VcpuExit};

const ROUNDS: u64 = 10_000;

#[test]
fn ten_thousand_syscall_round_trips_preserve_state() {
    require_kvm!();
    // rbx counts iterations; each syscall passes rbx in rdi and gets rdi*3 back in rax,
    // which the guest accumulates in r12.
    let mut a = Asm::new();
    a.mov_imm(R::Rbx, 0).mov_imm(R::R12, 0);
    let top = a.here();
    a.mov_imm(R::Rax, 1)
        .mov_rr(R::Rdi, R::Rbx)
        .syscall()
        .bytes(&[0x49, 0x01, 0xc4]) // add %rax, %r12
        .inc(R::Rbx)
        .cmp_imm(R::Rbx, ROUNDS as i32)
        .jne(top)
        .mov_imm(R::Rax, 2)
        .syscall()
        .ud2();
    let mut g = TestGuest::new(&a.code);
    let start = Instant::now();
    let mut calls = 0u64;
    let sum = loop {
        let exit = g.vcpu.run().unwrap();
        let VcpuExit::Syscall { mut regs, .. } = exit else {
            panic!("expected syscall, got {exit:?}");
        };
        if regs.rax == 2 {
            break regs.r12;
        }
        assert_eq!(regs.rdi, calls, "guest loop counter");
        regs.rax = regs.rdi * 3;
        g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
        calls += 1;
    };
    let el = start.elapsed();
    assert_eq!(calls, ROUNDS);
    assert_eq!(sum, 3 * ROUNDS * (ROUNDS - 1) / 2);
    assert_eq!(g.vm.stats().exits(ExitKind::Syscall), ROUNDS + 1);
    eprintln!(
        "syscall round trip (guest syscall -> VMM -> CPL3): {:.1} us average over {ROUNDS}",
        el.as_secs_f64() * 1e6 / ROUNDS as f64
    );
}

#[test]
fn ring0_out_exit_cost_vs_syscall_and_exception_round_trips() {
    require_kvm!();
    const N: u64 = 3000;

    // Bare `out` from ring 0: out %al, $0xf0 ; jmp back.
    let mut g = TestGuest::new(&[0xe6, 0xf0, 0xeb, 0xfc]);
    let cr3 = g.cr3;
    g.vcpu
        .enter_ring0_for_test(CODE_VA, STACK_TOP, cr3)
        .unwrap();
    let start = Instant::now();
    for _ in 0..N {
        match g.vcpu.run().unwrap() {
            VcpuExit::Io {
                port: 0xf0,
                size: 1,
                ..
            } => {}
            other => panic!("expected out exit, got {other:?}"),
        }
    }
    let bare = start.elapsed().as_secs_f64() * 1e6 / N as f64;

    // Syscall round trip: the guest loops on syscall.
    let mut a = Asm::new();
    let top = a.here();
    a.syscall().jmp(top);
    let mut g = TestGuest::new(&a.code);
    let start = Instant::now();
    for _ in 0..N {
        let VcpuExit::Syscall { regs, .. } = g.vcpu.run().unwrap() else {
            panic!("expected syscall");
        };
        g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
    }
    let sys = start.elapsed().as_secs_f64() * 1e6 / N as f64;

    // Exception round trip: the guest loops on int3.
    let mut a = Asm::new();
    let top = a.here();
    a.int3().jmp(top);
    let mut g = TestGuest::new(&a.code);
    let start = Instant::now();
    for _ in 0..N {
        let VcpuExit::Exception {
            regs, vector: 3, ..
        } = g.vcpu.run().unwrap()
        else {
            panic!("expected #BP");
        };
        g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
    }
    let exc = start.elapsed().as_secs_f64() * 1e6 / N as f64;
    let _ = R::Rax;
    eprintln!(
        "bare ring-0 out exit: {bare:.1} us; syscall round trip: {sys:.1} us ({:.2}x); \
         int3 round trip: {exc:.1} us ({:.2}x)",
        sys / bare,
        exc / bare
    );
}
