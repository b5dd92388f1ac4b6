//! Unit tests of the PV CPU model's handlers and mode switches over the fake guest of
//! `handler_tests` (no KVM needed).

use vm_memory::{Bytes, GuestAddress};
use xen_abi::errno::{EFAULT, EINVAL, EPERM};
use xen_abi::hypercall as nr;
use xen_abi::mmu::VMASST_TYPE_ARCHITECTURAL_IOPL;
use xen_abi::negotiate::LaunchMode;
use xen_abi::pv_vcpu::{GuestMode, TrapEntry, PENDING_DEBUGREGS, PENDING_GDT, PENDING_GS_USER_SEL};
use xen_abi::sched::ShutdownReason;
use xen_abi::trap::IretContext;

use crate::hypercall::err;
use crate::hypercall::handler_tests::{Guest, PAGES, VA};
use crate::memory::PAGE_SIZE;
use crate::trap::{bounce, GuestEvent};
use crate::vcpu::{rflags, GuestCs};

fn iret_frame(cs: u64, rflags: u64, rip: u64) -> IretContext {
    IretContext {
        rax: 0xaa,
        r11: 0x11,
        rcx: 0xcc,
        flags: 0,
        rip,
        cs,
        rflags,
        rsp: VA + 0x800,
        ss: 0xe02b,
    }
}

fn guest() -> Guest {
    let mut g = Guest::new(LaunchMode::Unprivileged);
    g.pv.kernel_cr3 = PAGE_SIZE;
    g
}

#[test]
fn iret_with_rpl3_cs_switches_to_user_mode_and_its_page_table() {
    let mut g = guest();
    g.pv.user_cr3 = 7 * PAGE_SIZE;
    g.regs.rsp = VA + 0x100;
    g.put(VA + 0x100, &iret_frame(0xe033, 0x202, 0x40_0000));
    let (_, replaced) = g.call_full(nr::IRET, [0; 5]);
    assert!(replaced);
    assert_eq!(g.dom.shutdown_reason(), None);
    assert_eq!(g.pv.guest_mode(), GuestMode::User);
    assert_eq!(g.pv.current_cr3(), 7 * PAGE_SIZE);
    assert_eq!((g.regs.rip, g.regs.rsp), (0x40_0000, VA + 0x800));
    assert_eq!(g.mask(), 0, "IF in the frame unmasks events");
    // Compat user code segment.
    let mut g = guest();
    g.pv.user_cr3 = 7 * PAGE_SIZE;
    g.regs.rsp = VA + 0x100;
    g.put(VA + 0x100, &iret_frame(0xe023, 0x2, 0x1000));
    let mut ctx =
        crate::hypercall::HypercallCtx::new(0, &g.ram, PAGE_SIZE, &mut g.regs, &mut g.pv, &g.dom);
    crate::hypercall::pv::iret(&mut ctx, &Default::default());
    assert_eq!(ctx.return_cs, GuestCs::Compat32);
    assert_eq!(g.mask(), 1, "IF clear in the frame masks events");
}

#[test]
fn iret_with_ring0_cs_stays_in_guest_kernel_mode() {
    // Hostile: a kernel-RPL selector (even Xen's ring-0 CS) only returns to guest kernel
    // mode at CPL3; nothing reaches ring 0.
    for cs in [0xe008u64, 0xe030, 0x10] {
        let mut g = guest();
        g.pv.user_cr3 = 7 * PAGE_SIZE;
        g.regs.rsp = VA + 0x100;
        g.put(VA + 0x100, &iret_frame(cs, 0x202, 0x4000));
        g.call_full(nr::IRET, [0; 5]);
        assert_eq!(g.pv.guest_mode(), GuestMode::Kernel, "cs {cs:#x}");
        assert_eq!(g.dom.shutdown_reason(), None);
    }
}

#[test]
fn iret_takes_virtual_iopl_only_with_architectural_iopl() {
    let mut g = guest();
    g.regs.rsp = VA + 0x100;
    g.put(VA + 0x100, &iret_frame(0xe030, 0x3202, 0x4000));
    g.call_full(nr::IRET, [0; 5]);
    assert_eq!(g.pv.iopl, 0);
    assert_eq!(g.regs.rflags & rflags::IOPL, 0, "real IOPL stays 0");
    g.pv.vm_assist |= 1 << VMASST_TYPE_ARCHITECTURAL_IOPL;
    g.regs.rsp = VA + 0x100;
    g.call_full(nr::IRET, [0; 5]);
    assert_eq!(g.pv.iopl, 3);
    assert_eq!(g.regs.rflags & rflags::IOPL, 0, "real IOPL stays 0");
}

fn user_guest_with_handler(vector: u8, flags: u8) -> Guest {
    let mut g = guest();
    g.pv.traps[usize::from(vector)] = TrapEntry {
        address: 0xffff_ffff_8000_5000,
        cs: 0xe033,
        flags,
        pad: [0; 5],
    };
    g.pv.set_guest_mode(GuestMode::User);
    g.pv.user_cr3 = PAGE_SIZE;
    g.pv.kernel_sp = VA + 0x1000;
    g.regs.rsp = 0x7fff_0000;
    g
}

fn ev(vector: u8) -> GuestEvent {
    GuestEvent {
        vector,
        error_code: None,
        cr2: 0,
        cs: 0xe033,
        ss: 0xe02b,
        software: false,
    }
}

#[test]
fn upcall_mask_is_saved_in_the_frame_and_restored_by_iret() {
    // User mode with events enabled, handler that masks them.
    let mut g = user_guest_with_handler(6, 4);
    g.set_mask(0);
    assert_eq!(
        bounce(
            &g.ram,
            7 * PAGE_SIZE,
            &mut g.pv,
            &g.dom,
            0,
            &ev(6),
            &mut g.regs
        ),
        Ok(Some(PAGE_SIZE))
    );
    assert_eq!(g.pv.guest_mode(), GuestMode::Kernel);
    assert_eq!(g.mask(), 1, "masked on entry");
    let f: [u64; 7] = g.get(g.regs.rsp);
    assert_eq!(f[3], 0xe033, "user RPL, saved mask 0");
    assert_ne!(f[4] & rflags::IF, 0, "IF = !saved mask");
    assert_eq!(f[5], 0x7fff_0000);
    // The guest returns with iret on that frame (as the kit does: rax r11 rcx flags first).
    let frame_at = g.regs.rsp + 16 - 32; // rcx and r11 popped first
    let words: [u64; 4] = [1, f[1], f[0], 0];
    g.put(frame_at, &words);
    g.regs.rsp = frame_at;
    g.call_full(nr::IRET, [0; 5]);
    assert_eq!(g.pv.guest_mode(), GuestMode::User);
    assert_eq!(g.mask(), 0, "restored from the frame's IF");
    assert_eq!(g.regs.rsp, 0x7fff_0000);
}

#[test]
fn bounce_from_user_mode_refuses_kernel_stacks_in_xens_range() {
    for sp in [
        0xffff_8000_0000_1000u64,
        0xffff_8080_0000_1000,
        0x8000_0000_0000_0000,
        0,
    ] {
        let mut g = user_guest_with_handler(6, 0);
        g.pv.kernel_sp = sp;
        let r = bounce(&g.ram, PAGE_SIZE, &mut g.pv, &g.dom, 0, &ev(6), &mut g.regs);
        assert!(r.is_err(), "kernel_sp {sp:#x}");
    }
}

#[test]
fn bounce_frame_carries_virtual_iopl_with_architectural_iopl() {
    let mut g = user_guest_with_handler(6, 0);
    g.pv.iopl = 1;
    g.regs.rflags = 0x3202;
    bounce(&g.ram, PAGE_SIZE, &mut g.pv, &g.dom, 0, &ev(6), &mut g.regs).unwrap();
    let f: [u64; 7] = g.get(g.regs.rsp);
    assert_eq!(f[4] & rflags::IOPL, 0, "no architectural_iopl: IOPL 0");
    let mut g = user_guest_with_handler(6, 0);
    g.pv.iopl = 1;
    g.pv.vm_assist |= 1 << VMASST_TYPE_ARCHITECTURAL_IOPL;
    bounce(&g.ram, PAGE_SIZE, &mut g.pv, &g.dom, 0, &ev(6), &mut g.regs).unwrap();
    let f: [u64; 7] = g.get(g.regs.rsp);
    assert_eq!(f[4] & rflags::IOPL, 1 << 12);
}

#[test]
fn set_segment_base_sets_bases_and_refuses_bad_input() {
    let mut g = guest();
    assert_eq!(g.call(nr::SET_SEGMENT_BASE, [0, 0x1000, 0, 0, 0]), 0);
    assert_eq!(g.call(nr::SET_SEGMENT_BASE, [1, 0x2000, 0, 0, 0]), 0);
    assert_eq!(g.call(nr::SET_SEGMENT_BASE, [2, 0x3000, 0, 0, 0]), 0);
    assert_eq!(
        (g.pv.fs_base, g.pv.gs_base_user, g.pv.gs_base_kernel),
        (0x1000, 0x2000, 0x3000)
    );
    for which in [0, 1, 2] {
        assert_eq!(
            g.call(
                nr::SET_SEGMENT_BASE,
                [which, 0x0000_8000_0000_0000, 0, 0, 0]
            ),
            err(EINVAL)
        );
    }
    assert_eq!(g.call(nr::SET_SEGMENT_BASE, [4, 0, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.pv.pending, 0);
    assert_eq!(g.call(nr::SET_SEGMENT_BASE, [3, 0x1_002b, 0, 0, 0]), 0);
    assert_eq!(g.pv.gs_user_sel, 0x2b, "selector truncated to 16 bits");
    assert_ne!(g.pv.pending & PENDING_GS_USER_SEL, 0);
}

#[test]
fn fpu_taskswitch_sets_and_clears_virtual_ts() {
    let mut g = guest();
    assert_eq!(g.call(nr::FPU_TASKSWITCH, [1, 0, 0, 0, 0]), 0);
    assert_eq!(g.pv.cr0_ts, 1);
    assert_eq!(g.call(nr::FPU_TASKSWITCH, [1 << 32, 0, 0, 0, 0]), 0);
    assert_eq!(g.pv.cr0_ts, 0, "int argument: upper half ignored");
}

#[test]
fn debugregs_validated_stored_and_read_back() {
    let mut g = guest();
    assert_eq!(g.call(nr::SET_DEBUGREG, [0, VA, 0, 0, 0]), 0);
    assert_eq!(g.call(nr::SET_DEBUGREG, [7, 0x1 | (1 << 16), 0, 0, 0]), 0);
    assert_ne!(g.pv.pending & PENDING_DEBUGREGS, 0);
    assert_eq!(g.call(nr::GET_DEBUGREG, [0, 0, 0, 0, 0]), VA as i64);
    assert_eq!(g.call(nr::GET_DEBUGREG, [7, 0, 0, 0, 0]), 0x10401);
    assert_eq!(g.call(nr::GET_DEBUGREG, [6, 0, 0, 0, 0]), 0xffff_0ff0);
    assert_eq!(
        g.call(nr::SET_DEBUGREG, [1, 0xffff_8000_0000_0000, 0, 0, 0]),
        err(EPERM)
    );
    assert_eq!(g.call(nr::SET_DEBUGREG, [7, 1 << 13, 0, 0, 0]), err(EPERM));
    assert_eq!(g.call(nr::SET_DEBUGREG, [9, 0, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.call(nr::GET_DEBUGREG, [9, 0, 0, 0, 0]), err(EINVAL));
}

#[test]
fn physdev_set_iopl_native_and_compat() {
    let mut g = guest();
    g.put(VA, &2u32);
    assert_eq!(g.call(nr::PHYSDEV_OP, [6, VA, 0, 0, 0]), 0);
    assert_eq!(g.pv.iopl, 2);
    g.put(VA, &4u32);
    assert_eq!(g.call(nr::PHYSDEV_OP, [6, VA, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.pv.iopl, 2);
    assert_eq!(
        g.call(nr::PHYSDEV_OP, [6, 0x4000_0000, 0, 0, 0]),
        err(EFAULT)
    );
    assert_eq!(
        g.call(nr::PHYSDEV_OP, [5, VA, 0, 0, 0]),
        -crate::hypercall::ENOSYS
    );
    g.put(VA, &[6u32, 1, 0, 0, 0]);
    assert_eq!(g.call(nr::PHYSDEV_OP_COMPAT, [VA, 0, 0, 0, 0]), 0);
    assert_eq!(g.pv.iopl, 1);
    assert!(super::io_permitted(&g.pv), "kernel mode, IOPL 1");
    g.pv.set_guest_mode(GuestMode::User);
    assert!(!super::io_permitted(&g.pv), "user mode needs IOPL 3");
}

fn gpa_of(va: u64) -> u64 {
    Guest::va_to_gpa(va)
}

#[test]
fn set_gdt_validates_frames_and_fixes_descriptors_in_place() {
    let mut g = guest();
    let page = VA + 4 * PAGE_SIZE;
    let mfn = gpa_of(page) / PAGE_SIZE;
    g.put(page + 8, &0x00cf_9a00_0000_ffffu64); // ring-0 code
    g.put(VA, &mfn);
    assert_eq!(g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]), 0);
    assert_eq!(g.pv.gdt_ents, 16);
    assert_eq!(g.pv.gdt_frames[0], mfn);
    assert_ne!(g.pv.pending & PENDING_GDT, 0);
    let d: u64 = g.get(page + 8);
    assert_eq!((d >> 45) & 3, 3, "DPL raised to 3 in the frame");
    // A TSS descriptor anywhere in the page refuses the frame.
    g.pv.pending = 0;
    g.put(page + 8 * 300, &0x0000_8900_0000_0067u64);
    assert_eq!(g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.pv.pending, 0);
    // Frames outside the guest's RAM, too many entries, a bad list.
    g.put(VA, &PAGES);
    assert_eq!(g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]), err(EINVAL));
    assert_eq!(
        g.call(nr::SET_GDT, [VA, 14 * 512 + 1, 0, 0, 0]),
        err(EINVAL)
    );
    assert_eq!(g.call(nr::SET_GDT, [0x4000_0000, 16, 0, 0, 0]), err(EFAULT));
}

#[test]
fn update_descriptor_writes_checked_descriptors() {
    let mut g = guest();
    let page = VA + 4 * PAGE_SIZE;
    let ma = gpa_of(page) + 16;
    assert_eq!(
        g.call(nr::UPDATE_DESCRIPTOR, [ma, 0x00cf_9200_0000_ffff, 0, 0, 0]),
        0
    );
    let d: u64 = g.ram.mem().read_obj(GuestAddress(ma)).unwrap();
    assert_eq!(d, 0x00cf_f200_0000_ffff, "stored with DPL 3");
    assert_eq!(g.pv.pending & PENDING_GDT, 0, "not a GDT frame");
    g.pv.gdt_frames[0] = ma / PAGE_SIZE;
    g.pv.gdt_ents = 512;
    assert_eq!(g.call(nr::UPDATE_DESCRIPTOR, [ma, 0, 0, 0, 0]), 0);
    assert_ne!(g.pv.pending & PENDING_GDT, 0, "GDT frame: copy refreshed");
    for (ma, d) in [
        (ma + 4, 0),
        (ma, 0x0000_8900_0000_0067),
        (PAGES * PAGE_SIZE, 0),
        (u64::MAX - 7, 0),
    ] {
        assert_eq!(g.call(nr::UPDATE_DESCRIPTOR, [ma, d, 0, 0, 0]), err(EINVAL));
    }
    assert_eq!(g.dom.shutdown_reason(), None::<ShutdownReason>);
}
