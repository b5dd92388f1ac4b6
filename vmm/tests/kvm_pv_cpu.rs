//! Host behaviours the PV CPU model relies on (crate::pvmode): CR0.TS set from the VMM makes
//! the guest's SSE instruction raise #NM at CPL3; debug registers set with KVM_SET_DEBUGREGS
//! make a guest store raise #DB through the IDT; TF single-steps.
//!
//! On nested KVM on PVM (these machines) KVM keeps CR0.TS and the debug registers (they read
//! back) but the guest never sees them: no #NM, no breakpoint #DB (KVM_SET_GUEST_DEBUG hardware
//! breakpoints do not fire either). Those two tests then skip with a one-line reason; on hosts
//! that honour them they assert the behaviour.

mod kvm_support;

use kvm_support::{Asm, TestGuest, DATA_VA, R};
use kvm_support::{CODE_VA, STACK_TOP};
use kxen::vcpu::{GuestCs, GuestRegs, VcpuExit};

fn entry() -> GuestRegs {
    GuestRegs {
        rip: CODE_VA,
        rsp: STACK_TOP,
        rflags: 0x202,
        ..Default::default()
    }
}

#[test]
fn cr0_ts_makes_sse_raise_nm_at_cpl3() {
    require_kvm!();
    let mut a = Asm::new();
    a.mov_imm(R::Rax, 21)
        .bytes(&[0x66, 0x48, 0x0f, 0x6e, 0xc8]) // movq %rax, %xmm1
        .mov_imm(R::Rax, 1)
        .syscall()
        .ud2();
    let mut g = TestGuest::new(&a.code);
    g.vcpu.sregs_mut().cr0 |= 1 << 3;
    g.vcpu.return_to_guest(&entry(), GuestCs::Long64).unwrap();
    let exit = g.vcpu.run().unwrap();
    assert_ne!(g.vcpu.sregs().cr0 & (1 << 3), 0, "KVM keeps CR0.TS");
    if matches!(exit, VcpuExit::Syscall { .. }) {
        eprintln!("skipped: this host (KVM on PVM) ignores the guest's CR0.TS");
        return;
    }
    let VcpuExit::Exception { vector, regs, .. } = exit else {
        panic!("expected #NM, got {exit:?}");
    };
    assert_eq!(vector, 7, "#NM");
    assert_ne!(g.vcpu.sregs().cr0 & (1 << 3), 0, "TS still set at the exit");
    g.vcpu.sregs_mut().cr0 &= !(1 << 3);
    g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
    let exit = g.vcpu.run().unwrap();
    assert!(matches!(exit, VcpuExit::Syscall { .. }), "{exit:?}");
}

#[test]
fn debug_registers_make_a_guest_store_raise_db() {
    require_kvm!();
    let mut a = Asm::new();
    a.mov_imm(R::Rbx, DATA_VA)
        .bytes(&[0x48, 0x89, 0x03]) // mov %rax, (%rbx)
        .mov_imm(R::Rax, 1)
        .syscall()
        .ud2();
    let mut g = TestGuest::new(&a.code);
    let dr7 = 0x400 | 1 | (0b01 << 16) | (0b11 << 18);
    g.vcpu
        .set_debugregs([DATA_VA, 0, 0, 0], 0xffff_0ff0, dr7)
        .unwrap();
    g.vcpu.return_to_guest(&entry(), GuestCs::Long64).unwrap();
    let (db, _, got7) = g.vcpu.debugregs().unwrap();
    assert_eq!((db[0], got7), (DATA_VA, dr7), "read back");
    let exit = g.vcpu.run().unwrap();
    if matches!(exit, VcpuExit::Syscall { .. }) {
        eprintln!("skipped: this host (KVM on PVM) does not apply guest debug registers");
        return;
    }
    let VcpuExit::Exception { vector, .. } = exit else {
        panic!("expected #DB, got {exit:?}");
    };
    assert_eq!(vector, 1, "#DB");
    let (_, dr6, _) = g.vcpu.debugregs().unwrap();
    assert_eq!(dr6 & 1, 1, "DR6.B0: {dr6:#x}");
}

#[test]
fn tf_single_steps_with_db_at_cpl3() {
    require_kvm!();
    let mut a = Asm::new();
    a.bytes(&[0x90]) // nop
        .mov_imm(R::Rax, 1)
        .syscall()
        .ud2();
    let mut g = TestGuest::new(&a.code);
    let mut r = entry();
    r.rflags |= 1 << 8;
    g.vcpu.return_to_guest(&r, GuestCs::Long64).unwrap();
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Exception { vector, regs, .. } = exit else {
        panic!("expected #DB, got {exit:?}");
    };
    assert_eq!(vector, 1);
    assert_eq!(regs.rip, CODE_VA + 1, "after the nop");
}
