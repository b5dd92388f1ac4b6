//! Unit tests of the PV CPU model's handlers and mode switches over the fake guest of
//! `handler_tests` (no KVM needed).

use vm_memory::{Bytes, GuestAddress};
use xen_abi::errno::{EFAULT, EINVAL, EPERM};
use xen_abi::hypercall as nr;
use xen_abi::mmu::VMASST_TYPE_ARCHITECTURAL_IOPL;
use xen_abi::negotiate::LaunchMode;
use xen_abi::pte::FrameType;
use xen_abi::pv_vcpu::{
    GuestMode, TrapEntry, PENDING_DEBUGREGS, PENDING_GDT, PENDING_GS_USER_SEL, PENDING_LDT,
};
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

/// A guest whose frame table has started the day: VA pages (frames 16..48) are mapped
/// writable, frame 48 read-only, frames 1..=4 are its page tables, 49.. are unmapped.
fn typed_guest() -> Guest {
    let g = guest();
    let mut mm = crate::mm::DomainMm::new(PAGES, &[], Default::default(), &[]);
    mm.start_of_day(&g.ram, 1).unwrap();
    *g.dom.mm.lock().unwrap() = mm;
    g
}

fn frame(g: &Guest, mfn: u64) -> xen_abi::frame::FrameState {
    g.dom.mm.lock().unwrap().frame(mfn).unwrap()
}

fn put_phys<T: vm_memory::ByteValued>(g: &Guest, gpa: u64, v: T) {
    g.ram.mem().write_obj(v, GuestAddress(gpa)).unwrap();
}

const TSS: u64 = 0x0000_8900_0000_0067;

#[test]
fn set_gdt_types_frames_seg_desc_and_fixes_descriptors_in_place() {
    let mut g = typed_guest();
    put_phys(&g, 50 * PAGE_SIZE + 8, 0x00cf_9a00_0000_ffffu64); // ring-0 code
    g.put(VA, &50u64);
    assert_eq!(g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]), 0);
    assert_eq!(g.pv.gdt_ents, 16);
    assert_eq!(g.pv.gdt_frames[0], 50);
    assert_ne!(
        g.pv.pending & PENDING_GDT,
        0,
        "no ring-0 layer here: copied at entry"
    );
    let d: u64 = g
        .ram
        .mem()
        .read_obj(GuestAddress(50 * PAGE_SIZE + 8))
        .unwrap();
    assert_eq!((d >> 45) & 3, 3, "DPL raised to 3 in the frame");
    let s = frame(&g, 50);
    assert_eq!((s.type_, s.type_count), (FrameType::SegDesc, 1));
    // While it is a GDT frame it cannot be mapped writable (L1 slot 49 of frame 4).
    let pte = (50 * PAGE_SIZE) | 7;
    let e = g
        .dom
        .mm
        .lock()
        .unwrap()
        .normal_update(&g.ram, 4 * PAGE_SIZE + 49 * 8, pte, false);
    assert_eq!(e.unwrap_err().errno(), xen_abi::errno::Errno::EBUSY);
    // A TSS descriptor anywhere in the page refuses the frame; the old GDT stays.
    g.pv.pending = 0;
    put_phys(&g, 51 * PAGE_SIZE + 8 * 300, TSS);
    g.put(VA, &51u64);
    assert_eq!(g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.pv.pending, 0);
    assert_eq!(frame(&g, 50).type_count, 1);
    assert_eq!(frame(&g, 51).type_count, 0, "a refused frame keeps no type");
    // A page-table frame, a frame mapped writable, frames outside the guest's RAM: refused.
    for mfn in [
        4u64,
        1,
        Guest::va_to_gpa(VA + 4 * PAGE_SIZE) / PAGE_SIZE,
        PAGES,
    ] {
        g.put(VA, &mfn);
        assert_eq!(
            g.call(nr::SET_GDT, [VA, 16, 0, 0, 0]),
            err(EINVAL),
            "mfn {mfn}"
        );
    }
    assert_eq!(frame(&g, 4).type_, FrameType::L1, "the L1 keeps its type");
    // Too many entries, a bad list.
    assert_eq!(
        g.call(nr::SET_GDT, [VA, 14 * 512 + 1, 0, 0, 0]),
        err(EINVAL)
    );
    assert_eq!(g.call(nr::SET_GDT, [0x4000_0000, 16, 0, 0, 0]), err(EFAULT));
    // A new GDT releases the old frames; two frames, the second partly used.
    g.put(VA, &[52u64, 53]);
    assert_eq!(g.call(nr::SET_GDT, [VA, 600, 0, 0, 0]), 0);
    assert_eq!(frame(&g, 50).type_count, 0);
    assert_eq!(frame(&g, 53).type_, FrameType::SegDesc);
    assert_eq!(g.dom.mm.lock().unwrap().desc_tables(0).gdt, vec![52, 53]);
}

#[test]
fn update_descriptor_checks_descriptor_and_frame_type() {
    let mut g = typed_guest();
    let ma = Guest::va_to_gpa(VA + 4 * PAGE_SIZE) + 16;
    assert_eq!(
        g.call(nr::UPDATE_DESCRIPTOR, [ma, 0x00cf_9200_0000_ffff, 0, 0, 0]),
        0,
        "a writable data frame"
    );
    let d: u64 = g.ram.mem().read_obj(GuestAddress(ma)).unwrap();
    assert_eq!(d, 0x00cf_f200_0000_ffff, "stored with DPL 3");
    // Into a GDT frame: it stays a descriptor page.
    g.put(VA, &50u64);
    assert_eq!(g.call(nr::SET_GDT, [VA, 512, 0, 0, 0]), 0);
    assert_eq!(
        g.call(
            nr::UPDATE_DESCRIPTOR,
            [50 * PAGE_SIZE + 8, 0x00cf_9200_0000_ffff, 0, 0, 0]
        ),
        0
    );
    let s = frame(&g, 50);
    assert_eq!((s.type_, s.type_count), (FrameType::SegDesc, 1));
    // Into page tables (the L1 and the L4): -EINVAL, nothing written.
    for mfn in [4u64, 1] {
        let before: u64 = g
            .ram
            .mem()
            .read_obj(GuestAddress(mfn * PAGE_SIZE + 8))
            .unwrap();
        assert_eq!(
            g.call(nr::UPDATE_DESCRIPTOR, [mfn * PAGE_SIZE + 8, 0, 0, 0, 0]),
            err(EINVAL)
        );
        let after: u64 = g
            .ram
            .mem()
            .read_obj(GuestAddress(mfn * PAGE_SIZE + 8))
            .unwrap();
        assert_eq!(before, after, "mfn {mfn}");
    }
    for (ma, d) in [
        (ma + 4, 0),
        (ma, TSS),
        (ma, 0x0000_ec00_e008_1234), // call gate to Xen's ring-0 CS
        (PAGES * PAGE_SIZE, 0),
        (u64::MAX - 7, 0),
    ] {
        assert_eq!(g.call(nr::UPDATE_DESCRIPTOR, [ma, d, 0, 0, 0]), err(EINVAL));
    }
    assert_eq!(g.dom.shutdown_reason(), None::<ShutdownReason>);
}

fn set_ldt(g: &mut Guest, base: u64, ents: u64) -> i64 {
    let op = xen_abi::mmu::MmuextOp {
        cmd: xen_abi::mmu::MMUEXT_SET_LDT,
        _pad: 0,
        arg1: base,
        arg2: ents,
    };
    g.put(VA + 0x800, &op);
    g.call(nr::MMUEXT_OP, [VA + 0x800, 1, 0, 0x7ff0, 0])
}

#[test]
fn set_ldt_checks_arguments_and_types_each_usable_page() {
    let mut g = typed_guest();
    let ro = VA + 32 * PAGE_SIZE; // frame 48, mapped read-only
    put_phys(&g, 48 * PAGE_SIZE + 8, 0x00cf_9200_0000_ffffu64);
    assert_eq!(set_ldt(&mut g, ro, 512), 0);
    assert_ne!(g.pv.pending & PENDING_LDT, 0);
    let t = g.dom.mm.lock().unwrap().desc_tables(0);
    assert_eq!(
        (t.ldt_base, t.ldt_ents, t.ldt.clone()),
        (ro, 512, vec![Some(48)])
    );
    assert_eq!(frame(&g, 48).type_, FrameType::SegDesc);
    let d: u64 = g
        .ram
        .mem()
        .read_obj(GuestAddress(48 * PAGE_SIZE + 8))
        .unwrap();
    assert_eq!((d >> 45) & 3, 3, "fixed up in place");
    // update_descriptor into the LDT page keeps its type.
    assert_eq!(
        g.call(
            nr::UPDATE_DESCRIPTOR,
            [48 * PAGE_SIZE + 16, 0x00cf_f200_0000_ffff, 0, 0, 0]
        ),
        0
    );
    assert_eq!(frame(&g, 48).type_count, 1);
    // A page mapped writable, and one past the mapped range: unusable, nothing typed.
    assert_eq!(set_ldt(&mut g, VA, 1024), 0);
    assert_eq!(
        frame(&g, 48).type_count,
        0,
        "the old LDT's reference is gone"
    );
    let t = g.dom.mm.lock().unwrap().desc_tables(0);
    assert_eq!(t.ldt, vec![None, None]);
    // A page holding a TSS descriptor (not mapped writable: frame 48 again, written with a
    // plain mmu_update, which types it writable meanwhile) is refused.
    let w = g
        .dom
        .mm
        .lock()
        .unwrap()
        .normal_update(&g.ram, 48 * PAGE_SIZE + 24, TSS, false);
    assert!(w.is_ok());
    assert_eq!(set_ldt(&mut g, ro, 16), 0);
    assert_eq!(g.dom.mm.lock().unwrap().desc_tables(0).ldt, vec![None]);
    assert_eq!(frame(&g, 48).type_count, 0);
    // Xen's argument checks.
    for (base, ents) in [
        (ro + 8, 1),                 // not page aligned
        (ro, 8193),                  // too many entries
        (0x0000_8000_0000_0000, 1),  // non-canonical
        (0xffff_8000_0000_0000, 1),  // Xen's reserved range
        (0xffff_8400_0000_0000, 16), // ... kxen's slots inside it
    ] {
        assert_eq!(set_ldt(&mut g, base, ents), err(EINVAL), "{base:#x} {ents}");
    }
    // No LDT: everything released.
    assert_eq!(set_ldt(&mut g, 0, 0), 0);
    assert_eq!(
        g.dom.mm.lock().unwrap().desc_tables(0).ldt,
        Vec::<Option<u64>>::new()
    );
}
