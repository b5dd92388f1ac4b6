//! The ring-0 replay programs on a real vCPU: a page-table entry the VMM rewrites in guest
//! RAM reaches the guest through the replay folded into the return (on this host KVM's
//! shadow MMU never sees the VMM's own write), and a kick that stops the vCPU inside the
//! program hands back the guest's state with the replay done.

mod kvm_support;

use kvm_support::{Asm, TestGuest, DATA_PFN, L1_PFN, RO_PFN, RO_VA};
use kxen::memory::PAGE_SIZE;
use kxen::vcpu::{GuestCs, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

/// What the read-only page and the data page hold.
const OLD: u64 = 0x01d0_0000_0000_0001;
const NEW: u64 = 0x0e30_0000_0000_0002;
/// RO_VA's entry in the test guest's L1 (index 0x12).
const ENTRY_GPA: u64 = L1_PFN * PAGE_SIZE + 0x12 * 8;
/// The entry the VMM writes: RO_VA now maps the data page (P, US, NX).
const NEW_ENTRY: u64 = (DATA_PFN * PAGE_SIZE) | 1 | 4 | (1 << 63);

/// A guest that reads RO_VA, "hypercalls" with the value in rax, and does it again.
fn guest() -> TestGuest {
    let mut a = Asm::new();
    a.load_rax(RO_VA).syscall();
    a.load_rax(RO_VA).syscall();
    a.ud2();
    let g = TestGuest::new(&a.code);
    let mem = g.vm.ram().mem();
    mem.write_obj(OLD, GuestAddress(RO_PFN * PAGE_SIZE))
        .unwrap();
    mem.write_obj(NEW, GuestAddress(DATA_PFN * PAGE_SIZE))
        .unwrap();
    g
}

/// The first read (through the original mapping), with the guest's registers.
fn first_read(g: &mut TestGuest) -> kxen::vcpu::GuestRegs {
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Syscall { regs, .. } = exit else {
        panic!("expected the first syscall, got {exit:?}");
    };
    assert_eq!(regs.rax, OLD, "the original mapping");
    regs
}

/// Rewrite RO_VA's entry from the VMM and ask for the replay and a flush, as a hypercall
/// handler does.
fn remap(g: &mut TestGuest) {
    g.vm.ram()
        .mem()
        .write_obj(NEW_ENTRY, GuestAddress(ENTRY_GPA))
        .unwrap();
    g.vcpu.sync_pte_writes([ENTRY_GPA]);
    let cr3 = g.vcpu.cr3();
    g.vcpu.flush_tlb(cr3);
}

fn second_read(g: &mut TestGuest) -> u64 {
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Syscall { regs, .. } = exit else {
        panic!("expected the second syscall, got {exit:?}");
    };
    regs.rax
}

#[test]
fn a_pte_the_vmm_rewrites_reaches_the_guest_through_the_folded_replay() {
    require_kvm!();
    let mut g = guest();
    let regs = first_read(&mut g);
    remap(&mut g);
    g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
    assert_eq!(
        second_read(&mut g),
        NEW,
        "the guest still saw the old mapping"
    );
}

#[test]
fn a_kick_inside_the_replay_program_hands_back_the_guest_state_with_the_replay_done() {
    require_kvm!();
    let mut g = guest();
    let regs = first_read(&mut g);
    remap(&mut g);
    g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
    // KVM_RUN returns at once: the vCPU stops at the first instruction of the program.
    g.vcpu.set_immediate_exit(true);
    let exit = g.vcpu.run().unwrap();
    assert!(matches!(exit, VcpuExit::Interrupted), "{exit:?}");
    let (back, cs) = g
        .vcpu
        .interrupted_guest_state()
        .unwrap()
        .expect("the guest's own state, not kxen's ring 0");
    assert_eq!(cs, GuestCs::Long64);
    assert_eq!(back.rip, regs.rip, "resumes where the hypercall returned");
    assert_eq!(back.rsp, regs.rsp);
    assert_eq!(back.rdi, regs.rdi, "rdi restored from the frame");
    // The run loop may now redirect the guest (an upcall); here it simply resumes it.
    g.vcpu.return_to_guest(&back, cs).unwrap();
    assert_eq!(second_read(&mut g), NEW, "the replay was lost");
}
