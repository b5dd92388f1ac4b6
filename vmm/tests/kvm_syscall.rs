//! The guest's `syscall` reaches the VMM with its registers untouched, the VMM returns a value
//! in rax, and the guest resumes at CPL3 after the `syscall`.

mod kvm_support;

use kvm_support::{Asm, TestGuest, DATA_VA, R, STACK_TOP};
use kxen::vcpu::{ExitKind, GuestCs, VcpuExit};

#[test]
fn syscall_round_trip_carries_registers_and_return_value() {
    require_kvm!();
    let mut a = Asm::new();
    a.mov_imm(R::Rax, 0x1234)
        .mov_imm(R::Rdi, 11)
        .mov_imm(R::Rsi, 22)
        .mov_imm(R::Rdx, 33)
        .mov_imm(R::R10, 44)
        .mov_imm(R::R8, 55)
        .mov_imm(R::R9, 66)
        .mov_imm(R::Rbx, 0xb0b0)
        .mov_imm(R::R15, 0xf1f1)
        .syscall();
    let after_first = a.here();
    a.store_rax(DATA_VA)
        .load_rax(DATA_VA)
        .mov_rr(R::Rdi, R::Rax)
        .mov_imm(R::Rax, 0x5678)
        .syscall();
    let after_second = a.here();
    a.ud2();
    let mut g = TestGuest::new(&a.code);

    let exit = g.vcpu.run().expect("run");
    let VcpuExit::Syscall { regs, compat } = exit else {
        panic!("expected syscall, got {exit:?}");
    };
    assert!(!compat);
    assert_eq!(regs.rax, 0x1234);
    assert_eq!(
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9),
        (11, 22, 33, 44, 55, 66)
    );
    assert_eq!((regs.rbx, regs.r15), (0xb0b0, 0xf1f1));
    assert_eq!(regs.rip, after_first);
    assert_eq!(regs.rcx, after_first);
    assert_eq!(regs.rsp, STACK_TOP);
    assert_ne!(regs.rflags & 0x200, 0, "guest runs with IF=1");
    assert_eq!(regs.rflags & 0x3000, 0, "guest runs with IOPL 0");
    assert_eq!(g.vcpu.cr3(), g.cr3);

    let mut ret = regs;
    ret.rax = 0xabcdef;
    g.vcpu.return_to_guest(&ret, GuestCs::Long64).unwrap();

    let exit = g.vcpu.run().expect("run");
    let VcpuExit::Syscall { regs, .. } = exit else {
        panic!("expected second syscall, got {exit:?}");
    };
    assert_eq!(regs.rax, 0x5678);
    assert_eq!(regs.rdi, 0xabcdef, "guest saw the returned value");
    assert_eq!(regs.rip, after_second);
    assert_eq!(g.read_data(0), 0xabcdef, "guest stored it in its memory");
    assert_eq!(regs.rbx, 0xb0b0);
    assert_eq!(g.vm.stats().exits(ExitKind::Syscall), 2);
}

#[test]
fn guest_writing_the_exit_page_is_a_syscall_and_reading_it_gives_ones() {
    require_kvm!();
    let probe = TestGuest::new(&[0x90]);
    let exit_va = probe.vm.ring0().syscall_exit_va();
    drop(probe);
    let mut a = Asm::new();
    a.load_rax(exit_va) // reads as all ones, handled inside run()
        .mov_rr(R::Rdi, R::Rax)
        .mov_imm(R::Rcx, 0x1111)
        .mov_imm(R::R11, 0x2222)
        .mov_imm(R::Rax, 77)
        .bytes(&[0xa3])
        .bytes(&exit_va.to_le_bytes()) // mov %eax, exit page
        .ud2();
    let mut g = TestGuest::new(&a.code);
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Syscall { regs, .. } = exit else {
        panic!("expected syscall, got {exit:?}");
    };
    assert_eq!(regs.rax, 77);
    assert_eq!(regs.rdi, u64::MAX, "exit page reads as ones");
    // Equivalent to `syscall` with the guest's own rcx/r11.
    assert_eq!((regs.rip, regs.rflags), (0x1111, 0x2222));
}

#[test]
fn port_stub_fallback_still_classifies_as_syscall() {
    require_kvm!();
    // Jump to the `out`-based syscall stub at CPL3: its `out` raises #GP, which run() turns
    // into a Syscall (the path a host with CPL3-landing `syscall` takes for CSTAR).
    let probe = TestGuest::new(&[0x90]);
    let stub = probe.vm.ring0().special_stub(kxen::ring0::PORT_SYSCALL);
    drop(probe);
    let mut a = Asm::new();
    a.mov_imm(R::Rax, 5)
        .mov_imm(R::Rcx, 0xffff_ffff_8000_0100)
        .mov_imm(R::R11, 0x202)
        .mov_imm(R::R12, stub)
        .bytes(&[0x41, 0xff, 0xe4]); // jmp *%r12
    let mut g = TestGuest::new(&a.code);
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Syscall { regs, compat } = exit else {
        panic!("expected syscall, got {exit:?}");
    };
    assert!(!compat);
    assert_eq!(regs.rax, 5);
    assert_eq!(regs.rip, 0xffff_ffff_8000_0100);
    assert_eq!(regs.rsp, STACK_TOP);
}
