//! Host behaviour the guest LDT (`MMUEXT_SET_LDT`, crate::pvmode) relies on: an LDT register
//! set from the VMM (`kvm_sregs.ldt`, base on a supervisor-only page) is used by the CPU for
//! CPL3 segment loads with TI=1 selectors: the descriptor's base becomes the FS base, a
//! not-present entry raises #NP(sel), an empty entry or a selector past the limit #GP(sel).

mod kvm_support;

use kvm_bindings::kvm_segment;
use kvm_support::{Asm, TestGuest, CODE_VA, DATA_VA, R, STACK_TOP, SUPER_PFN, SUPER_VA};
use kxen::memory::PAGE_SIZE;
use kxen::vcpu::{GuestCs, GuestRegs, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

fn entry() -> GuestRegs {
    GuestRegs {
        rip: CODE_VA,
        rsp: STACK_TOP,
        rflags: 0x202,
        ..Default::default()
    }
}

/// A DPL-3 flat data descriptor with a 32-bit `base`.
fn data_desc(base: u32) -> u64 {
    let b = u64::from(base);
    0x00cf_f200_0000_ffff | ((b & 0xff_ffff) << 16) | ((b >> 24) << 56)
}

fn ldt_seg(base: u64, ents: u32) -> kvm_segment {
    kvm_segment {
        base,
        limit: ents * 8 - 1,
        selector: 0xe050,
        type_: 2, // LDT
        present: 1,
        ..kvm_segment::default()
    }
}

/// `mov %eax, %fs` with eax = `sel`, read 8 bytes at %fs:`off` into rdx, then `syscall`
/// (the exit).
fn load_fs_code(sel: u64, off: u64) -> Asm {
    let mut a = Asm::new();
    a.mov_imm(R::Rax, sel)
        .bytes(&[0x8e, 0xe0]) // mov %eax, %fs
        .mov_imm(R::Rbx, off)
        .bytes(&[0x64, 0x48, 0x8b, 0x13]) // mov %fs:(%rbx), %rdx
        .mov_imm(R::Rax, 1)
        .syscall()
        .ud2();
    a
}

#[test]
fn ldt_from_sregs_is_used_for_cpl3_selector_loads() {
    require_kvm!();
    let base: u32 = 0x1000;
    let a = load_fs_code(0x0f, DATA_VA.wrapping_sub(u64::from(base)));
    let mut g = TestGuest::new(&a.code);
    let mem = g.vm.ram().mem();
    mem.write_obj(data_desc(base), GuestAddress(SUPER_PFN * PAGE_SIZE + 8))
        .unwrap();
    mem.write_obj(
        0x5a5a_1234u64,
        GuestAddress(kvm_support::DATA_PFN * PAGE_SIZE),
    )
    .unwrap();
    g.vcpu.sregs_mut().ldt = ldt_seg(SUPER_VA, 16);
    g.vcpu.return_to_guest(&entry(), GuestCs::Long64).unwrap();
    let exit = g.vcpu.run().unwrap();
    let VcpuExit::Syscall { regs, .. } = exit else {
        panic!("expected the syscall exit after the LDT load, got {exit:?}");
    };
    let fs = g.vcpu.sregs().fs;
    assert_eq!(fs.selector, 0x0f, "FS holds the LDT selector");
    assert_eq!(fs.base, u64::from(base), "FS base from the LDT descriptor");
    assert_eq!(regs.rdx, 0x5a5a_1234, "read through the LDT segment");
    let ldt = g.vcpu.sregs().ldt;
    assert_eq!(
        (ldt.base, ldt.limit),
        (SUPER_VA, 127),
        "LDTR kept across the exit"
    );
}

#[test]
fn ldt_not_present_entry_is_np_and_empty_or_past_limit_is_gp() {
    require_kvm!();
    // Entry 2: a data descriptor marked not present; entry 3: all zero (a system type).
    for (sel, vector, ents) in [(0x17u64, 11u8, 16u32), (0x1f, 13, 16), (0x8f, 13, 16)] {
        let a = load_fs_code(sel, 0);
        let mut g = TestGuest::new(&a.code);
        let np = data_desc(0) & !(1 << 47);
        g.vm.ram()
            .mem()
            .write_obj(np, GuestAddress(SUPER_PFN * PAGE_SIZE + 16))
            .unwrap();
        g.vcpu.sregs_mut().ldt = ldt_seg(SUPER_VA, ents);
        g.vcpu.return_to_guest(&entry(), GuestCs::Long64).unwrap();
        let exit = g.vcpu.run().unwrap();
        let VcpuExit::Exception {
            vector: v,
            error_code,
            ..
        } = exit
        else {
            panic!("selector {sel:#x}: expected a fault, got {exit:?}");
        };
        assert_eq!(v, vector, "selector {sel:#x}");
        assert_eq!(error_code, Some(sel & !3), "selector {sel:#x}");
    }
}
