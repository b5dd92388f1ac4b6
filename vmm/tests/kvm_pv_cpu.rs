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

mod user_mode {
    use super::*;
    use kvm_support::DATA_PFN;
    use kxen::domain::DomainShared;
    use kxen::memory::GuestVirt;
    use kxen::pvmode;
    use vm_memory::{Bytes, GuestAddress};
    use xen_abi::negotiate::LaunchMode;
    use xen_abi::pv_vcpu::{callback_index, CallbackEntry, GuestMode, TrapEntry};

    const PAGE: u64 = 4096;
    const USER_L4: u64 = 40;
    const USER_DATA: u64 = 44;
    const KSTACK_TOP: u64 = kvm_support::STACK_TOP - 0x108;

    /// A user page table: the kernel's, except DATA_VA maps another frame (pfns 40-44).
    fn user_tables(g: &TestGuest) -> u64 {
        let mem = g.vm.ram().mem();
        let rd =
            |pfn: u64, i: u64| -> u64 { mem.read_obj(GuestAddress(pfn * PAGE + i * 8)).unwrap() };
        let wr =
            |pfn: u64, i: u64, v: u64| mem.write_obj(v, GuestAddress(pfn * PAGE + i * 8)).unwrap();
        // Kernel: L4 1 -> L3 2 -> L2 3 -> L1 4 (kvm_support).
        for (src, dst) in [(1u64, 40u64), (2, 41), (3, 42), (4, 43)] {
            for i in 0..512 {
                wr(dst, i, rd(src, i));
            }
        }
        let flags = |e: u64| e & !0x000f_ffff_ffff_f000;
        wr(40, 511, (41 * PAGE) | flags(rd(1, 511)));
        wr(41, 510, (42 * PAGE) | flags(rd(2, 510)));
        wr(42, 0, (43 * PAGE) | flags(rd(3, 0)));
        wr(43, 0x11, (USER_DATA * PAGE) | flags(rd(4, 0x11)));
        USER_L4 * PAGE
    }

    fn put(g: &TestGuest, pfn: u64, off: u64, v: u64) {
        g.vm.ram()
            .mem()
            .write_obj(v, GuestAddress(pfn * PAGE + off))
            .unwrap();
    }

    fn domain() -> DomainShared {
        DomainShared::new(
            "t".into(),
            LaunchMode::Unprivileged,
            0,
            String::new(),
            kvm_support::GUEST_PAGES,
            u64::MAX / PAGE, // no shared_info: saved mask reads as 0
            Box::new(std::io::sink()),
        )
    }

    // mov %gs:0, %<reg> for rdi (7) / rbp (5)
    fn gs_load(reg: u8) -> [u8; 9] {
        [0x65, 0x48, 0x8b, 0x04 | (reg << 3), 0x25, 0, 0, 0, 0]
    }

    fn setup(g: &mut TestGuest, callback: u64) -> u64 {
        let ucr3 = user_tables(g);
        put(g, DATA_PFN, 0, 0x4b4b); // kernel's DATA_VA
        put(g, USER_DATA, 0, 0x5555); // user's DATA_VA
        put(g, DATA_PFN, 0x200, 0x6b6b); // kernel GS target
        put(g, USER_DATA, 0x100, 0x7575); // user GS target
        let cr3 = g.cr3;
        let pv = g.vcpu.pv_mut();
        pv.kernel_cr3 = cr3;
        pv.user_cr3 = ucr3;
        pv.kernel_sp = KSTACK_TOP;
        pv.gs_base_kernel = DATA_VA + 0x200;
        pv.gs_base_user = DATA_VA + 0x100;
        pv.callbacks[callback_index::SYSCALL] = CallbackEntry {
            address: callback,
            flags: 0,
            pad: [0; 6],
        };
        pv.set_guest_mode(GuestMode::User);
        ucr3
    }

    fn enter(g: &mut TestGuest, rip: u64) {
        pvmode::apply(&mut g.vcpu).unwrap();
        let r = GuestRegs {
            rip,
            rsp: kvm_support::STACK_TOP - 0x800,
            rflags: 0x202,
            ..Default::default()
        };
        g.vcpu.return_to_guest(&r, GuestCs::Long64).unwrap();
    }

    #[test]
    fn user_syscall_enters_the_callback_on_the_kernel_stack_with_kernel_tables_and_gs() {
        require_kvm!();
        let mut a = Asm::new();
        // user: rsi = [DATA_VA], rdi = %gs:0, syscall
        a.load_rax(DATA_VA)
            .mov_rr(R::Rsi, R::Rax)
            .bytes(&gs_load(7))
            .mov_imm(R::Rax, 0x77);
        let user_syscall = a.here();
        a.syscall().ud2();
        // callback: rbx = [DATA_VA], rbp = %gs:0, hypercall 2
        let callback = a.here();
        a.load_rax(DATA_VA)
            .mov_rr(R::Rbx, R::Rax)
            .bytes(&gs_load(5))
            .mov_imm(R::Rax, 2)
            .syscall()
            .ud2();
        let mut g = TestGuest::new(&a.code);
        let ucr3 = setup(&mut g, callback);
        let dom = domain();
        enter(&mut g, CODE_VA);
        assert_eq!(g.vcpu.cr3(), ucr3, "user page table applied");
        let exit = g.vcpu.run().unwrap();
        pvmode::capture(&mut g.vcpu);
        let VcpuExit::Syscall { mut regs, compat } = exit else {
            panic!("expected the user syscall, got {exit:?}");
        };
        assert_eq!(
            (regs.rsi, regs.rdi),
            (0x5555, 0x7575),
            "user tables and user GS"
        );
        assert_eq!(regs.rip, user_syscall + 2);
        let cs = pvmode::syscall_from_user(&mut g.vcpu, &dom, &mut regs, compat).unwrap();
        assert_eq!(g.vcpu.pv().guest_mode(), GuestMode::Kernel);
        pvmode::apply(&mut g.vcpu).unwrap();
        g.vcpu.return_to_guest(&regs, cs).unwrap();
        let exit = g.vcpu.run().unwrap();
        let VcpuExit::Syscall { regs: k, .. } = exit else {
            panic!("expected the callback's hypercall, got {exit:?}");
        };
        assert_eq!(k.rax, 2);
        assert_eq!(
            (k.rbx, k.rbp),
            (0x4b4b, 0x6b6b),
            "kernel tables and kernel GS"
        );
        let frame_va = (KSTACK_TOP & !15) - 56;
        assert_eq!(k.rsp, frame_va);
        let mut b = [0u8; 56];
        GuestVirt::new(g.vm.ram(), g.vcpu.cr3())
            .copy_from_guest(frame_va, &mut b)
            .unwrap();
        let f: Vec<u64> = b
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(f[0], user_syscall + 2, "rcx");
        assert_eq!(f[2], user_syscall + 2, "rip");
        assert_eq!(f[3], 0xe033, "user cs, saved mask 0");
        assert_eq!(f[4] & 0x200, 0x200, "IF = !saved mask");
        assert_eq!(f[5], kvm_support::STACK_TOP - 0x800, "user rsp");
        assert_eq!(f[6], 0xe02b);
        assert_eq!(dom.shutdown_reason(), None);
    }

    #[test]
    fn user_syscall_without_callback_is_ud_and_exceptions_switch_to_kernel_mode() {
        require_kvm!();
        let mut a = Asm::new();
        let user_syscall = a.here();
        a.syscall().ud2();
        let handler = a.here();
        a.bytes(&gs_load(5)).mov_imm(R::Rax, 2).syscall().ud2();
        let mut g = TestGuest::new(&a.code);
        setup(&mut g, 0);
        g.vcpu.pv_mut().traps[6] = TrapEntry {
            address: handler,
            cs: 0xe033,
            flags: 0,
            pad: [0; 5],
        };
        let dom = domain();
        enter(&mut g, CODE_VA);
        let exit = g.vcpu.run().unwrap();
        pvmode::capture(&mut g.vcpu);
        let VcpuExit::Syscall { mut regs, compat } = exit else {
            panic!("{exit:?}");
        };
        let cs = pvmode::syscall_from_user(&mut g.vcpu, &dom, &mut regs, compat).unwrap();
        pvmode::apply(&mut g.vcpu).unwrap();
        g.vcpu.return_to_guest(&regs, cs).unwrap();
        let exit = g.vcpu.run().unwrap();
        let VcpuExit::Syscall { regs: k, .. } = exit else {
            panic!("{exit:?}");
        };
        assert_eq!(k.rbp, 0x6b6b, "kernel GS in the #UD handler");
        let mut b = [0u8; 24];
        GuestVirt::new(g.vm.ram(), g.vcpu.cr3())
            .copy_from_guest(k.rsp, &mut b)
            .unwrap();
        let rip = u64::from_le_bytes(b[16..24].try_into().unwrap());
        assert_eq!(rip, user_syscall, "#UD at the syscall instruction");

        // Back to user mode at the ud2 after it: a real exception from user mode.
        let mut g2 = TestGuest::new(&a.code);
        setup(&mut g2, 0);
        g2.vcpu.pv_mut().traps[6] = g.vcpu.pv().traps[6];
        enter(&mut g2, user_syscall + 2);
        let exit = g2.vcpu.run().unwrap();
        pvmode::capture(&mut g2.vcpu);
        let VcpuExit::Exception {
            vector,
            error_code,
            cr2,
            frame,
            mut regs,
        } = exit
        else {
            panic!("{exit:?}");
        };
        assert_eq!(vector, 6);
        let cs = kxen::trap::handle_exception(
            &mut g2.vcpu,
            &dom,
            vector,
            error_code,
            cr2,
            &frame,
            &mut regs,
        )
        .unwrap();
        assert_eq!(g2.vcpu.pv().guest_mode(), GuestMode::Kernel);
        pvmode::apply(&mut g2.vcpu).unwrap();
        assert_eq!(g2.vcpu.cr3(), g2.cr3, "kernel page table");
        g2.vcpu.return_to_guest(&regs, cs).unwrap();
        let exit = g2.vcpu.run().unwrap();
        let VcpuExit::Syscall { regs: k, .. } = exit else {
            panic!("{exit:?}");
        };
        assert_eq!(k.rbp, 0x6b6b);
        assert_eq!(k.rsp, (KSTACK_TOP & !15) - 56, "kernel stack");
    }
}

#[test]
fn gs_user_sel_loads_the_descriptor_or_null_and_keeps_the_kernel_base() {
    require_kvm!();
    use xen_abi::pv_vcpu::PENDING_GS_USER_SEL;
    let mut a = Asm::new();
    a.mov_imm(R::Rax, 1).syscall().ud2();
    let mut g = TestGuest::new(&a.code);
    // (selector, loads?) — Xen's flat ring-3 data, a ring-0 selector (DPL 0: refused),
    // an LDT selector (no LDT: null), the null selector.
    for (sel, loads) in [
        (0xe02bu16, true),
        (0xe010, false),
        (0xe02f, false),
        (0, false),
    ] {
        {
            let pv = g.vcpu.pv_mut();
            pv.gs_base_kernel = 0x1234_5000;
            pv.gs_base_user = 0x9999;
            pv.gs_user_sel = u32::from(sel);
            pv.pending |= PENDING_GS_USER_SEL;
        }
        kxen::pvmode::apply(&mut g.vcpu).unwrap();
        let gs = g.vcpu.sregs().gs;
        assert_eq!(gs.base, 0x1234_5000, "kernel base stays active ({sel:#x})");
        assert_eq!(
            g.vcpu.pv().gs_base_user,
            0,
            "user base from the descriptor ({sel:#x})"
        );
        if loads {
            assert_eq!((gs.selector, gs.dpl, gs.present), (sel, 3, 1));
        } else {
            assert_eq!(gs.unusable, 1, "{sel:#x} loads as null");
        }
        assert_eq!(g.vcpu.pv().pending, 0);
    }
    // The guest still runs with what apply produced.
    g.vcpu.return_to_guest(&entry(), GuestCs::Long64).unwrap();
    assert!(matches!(g.vcpu.run().unwrap(), VcpuExit::Syscall { .. }));
}
