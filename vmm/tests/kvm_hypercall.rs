//! Hypercalls from a real guest: dispatch through the table, and checked guest-memory access
//! with hostile pointers returning -EFAULT without touching anything else.

mod kvm_support;

use kvm_support::{Asm, TestGuest, DATA_PFN, DATA_VA, R, RO_VA, SUPER_VA, UNMAPPED_VA};
use kxen::hypercall::{HypercallArgs, HypercallCtx, HypercallTable, EFAULT, ENOSYS};
use kxen::memory::PAGE_SIZE;
use kxen::vcpu::{GuestCs, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

const HC_COPY: u64 = 7;
const HC_DONE: u64 = 40;

/// Copies a0[0..a2] to a1[0..a2] through the guest's page tables.
fn copy(ctx: &mut HypercallCtx<'_>, a: &HypercallArgs) -> i64 {
    let mut buf = vec![0u8; a.a[2].min(64) as usize];
    if let Err(e) = ctx.copy_from_guest(a.a[0], &mut buf) {
        return e;
    }
    match ctx.copy_to_guest(a.a[1], &buf) {
        Ok(()) => buf.len() as i64,
        Err(e) => e,
    }
}

#[test]
fn guest_pointers_are_checked_and_hostile_ones_get_efault() {
    require_kvm!();
    let ring0_va = 0xffff_8080_0000_1000; // kxen's stub page: user-readable, but Xen range
                                          // (src, dst, len, expected result)
    let cases: Vec<(u64, u64, u64, i64)> = vec![
        (DATA_VA, DATA_VA + 0x800, 16, 16),                   // fine
        (DATA_VA + 0xff8, DATA_VA + 0x900, 16, 16),           // read across into the RO page: fine
        (RO_VA + 0xff8, DATA_VA + 0x900, 16, -EFAULT),        // read across into a supervisor page
        (UNMAPPED_VA, DATA_VA + 0xa00, 8, -EFAULT),           // unmapped
        (0x0000_8000_0000_0000, DATA_VA, 8, -EFAULT),         // non-canonical
        (ring0_va, DATA_VA + 0xa00, 8, -EFAULT),              // Xen range, though mapped U=1
        (0xffff_8000_0000_0000, DATA_VA + 0xa00, 8, -EFAULT), // Xen range start
        (SUPER_VA, DATA_VA + 0xa00, 8, -EFAULT),              // supervisor-only page
        (DATA_VA, RO_VA, 8, -EFAULT),                         // write to read-only
        (DATA_VA, ring0_va, 8, -EFAULT),                      // write into kxen's area
        (DATA_VA, u64::MAX - 3, 8, -EFAULT),                  // wrapping
    ];
    let mut a = Asm::new();
    a.mov_imm(R::Rax, 0x1111_2222_3333_4444).store_rax(DATA_VA);
    a.mov_imm(R::Rax, 0x5555_6666_7777_8888)
        .store_rax(DATA_VA + 8);
    for (i, &(src, dst, len, _)) in cases.iter().enumerate() {
        a.mov_imm(R::Rax, HC_COPY)
            .mov_imm(R::Rdi, src)
            .mov_imm(R::Rsi, dst)
            .mov_imm(R::Rdx, len)
            .syscall()
            .store_rax(DATA_VA + 0x100 + 8 * i as u64);
    }
    a.mov_imm(R::Rax, 55).syscall().store_rax(DATA_VA + 0x200); // unknown: -ENOSYS
    a.mov_imm(R::Rax, HC_DONE).syscall().ud2();

    let mut g = TestGuest::new(&a.code);
    let mut table = HypercallTable::new().with_stats(g.vm.stats().clone());
    table.register(HC_COPY, "test_copy", copy).unwrap();
    let ram = g.vm.ram().clone();
    // Snapshot everything but the data page: nothing else may change.
    let mut before = vec![0u8; (ram.size()) as usize];
    ram.mem().read_slice(&mut before, GuestAddress(0)).unwrap();
    let mut n = 0;
    loop {
        let exit = g.vcpu.run().unwrap();
        let VcpuExit::Syscall { mut regs, .. } = exit else {
            panic!("expected syscall, got {exit:?}");
        };
        if regs.rax == HC_DONE {
            break;
        }
        let args = HypercallArgs::from_regs(&regs);
        let mut r = regs;
        let ret = {
            let mut ctx = g.vcpu.hypercall_ctx(&mut r, &());
            table.dispatch(&mut ctx, &args)
        };
        regs.rax = ret as u64;
        g.vcpu.return_to_guest(&regs, GuestCs::Long64).unwrap();
        n += 1;
    }
    assert_eq!(n, cases.len() + 1);
    for (i, &(src, dst, _, want)) in cases.iter().enumerate() {
        let got = g.read_data(0x100 + 8 * i as u64) as i64;
        assert_eq!(got, want, "case {i}: {src:#x} -> {dst:#x}");
    }
    assert_eq!(g.read_data(0x200) as i64, -ENOSYS);
    assert_eq!(g.read_data(0x800), 0x1111_2222_3333_4444);
    assert_eq!(g.read_data(0x808), 0x5555_6666_7777_8888);
    // Only the data page changed (and accessed/dirty bits in the page tables, pfns 1..=4,
    // which the CPU sets).
    let mut after = vec![0u8; (ram.size()) as usize];
    ram.mem().read_slice(&mut after, GuestAddress(0)).unwrap();
    let data = (DATA_PFN * PAGE_SIZE) as usize..((DATA_PFN + 1) * PAGE_SIZE) as usize;
    for (i, (x, y)) in before.iter().zip(&after).enumerate() {
        let page_tables = 0x1000..0x5000;
        if !data.contains(&i) && !page_tables.contains(&i) {
            assert_eq!(x, y, "byte {i:#x} outside the data page changed");
        }
    }
    assert_eq!(g.vm.stats().hypercalls(HC_COPY), cases.len() as u64);
}
