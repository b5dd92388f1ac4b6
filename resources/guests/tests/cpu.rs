//! cpu: the PV CPU model. Segment bases (set_segment_base) surviving traps and hypercalls;
//! the guest GDT (set_gdt, update_descriptor) with Xen's descriptor and frame-type checks;
//! the guest LDT (MMUEXT_SET_LDT) used through TI=1 selectors, with Xen's checks; virtual CR0.TS
//! (fpu_taskswitch) and #NM; FPU/SSE/AVX state across hypercalls and traps; debug registers
//! (set/get_debugreg), data breakpoints and single-step #DB; virtual IOPL (physdev_op) and #GP
//! for port I/O; guest user mode (iret with RPL 3, syscall callback, #UD without one,
//! exceptions and `int $n` from user mode) when the user page table can be set
//! (MMUEXT_NEW_USER_BASEPTR).
//!
//! Variant `cpu_nouser`: iret to user mode with no user page table: Xen crashes the domain.

#![no_std]
#![no_main]
#![allow(dead_code)]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::arch::{asm, global_asm};
use kit::abi::*;
use kit::hypercall::*;
use kit::traps::{self, ANY_RIP};

xen_notes!(features = "writable_page_tables");

const SET_GDT: u32 = 2;
const FPU_TASKSWITCH: u32 = 5;
const SET_DEBUGREG: u32 = 8;
const GET_DEBUGREG: u32 = 9;
const UPDATE_DESCRIPTOR: u32 = 10;
const PHYSDEV_OP_COMPAT: u32 = 19;
const SET_SEGMENT_BASE: u32 = 25;
const PHYSDEV_OP: u32 = 33;
const PHYSDEVOP_SET_IOPL: u64 = 6;
const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = 4;
const TF: u64 = 1 << 8;

fn hc(nr: u32, a: u64, b: u64) -> i64 {
    // SAFETY: every call here passes either scalars or pointers to live guest memory of the
    // size the hypercall reads/writes, or deliberately bad values the hypervisor must refuse.
    unsafe { hypercall2(nr, a, b) }
}

#[repr(C, align(4096))]
struct Page([u64; 512]);

static mut GDT_PAGE: Page = Page([0; 512]);
static mut BAD_GDT_PAGE: Page = Page([0; 512]);
static mut LDT_PAGE: Page = Page([0; 512]);
static mut BAD_LDT_PAGE: Page = Page([0; 512]);
static mut WATCH: u64 = 0;
static FS_VAL: u64 = 0x1111_2222_3333_4444;
static GSK_VAL: u64 = 0x5555_6666_7777_8888;
static GSU_VAL: u64 = 0x9999_aaaa_bbbb_cccc;

fn read_fs0() -> u64 {
    let v: u64;
    // SAFETY: reads 8 bytes at FS base, which the test set to a live static.
    unsafe { asm!("mov %fs:0, {}", out(reg) v, options(att_syntax, nostack, readonly)) };
    v
}

fn read_gs0() -> u64 {
    let v: u64;
    // SAFETY: as read_fs0, for GS.
    unsafe { asm!("mov %gs:0, {}", out(reg) v, options(att_syntax, nostack, readonly)) };
    v
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: mov from %cr0 is emulated for the guest kernel (Xen's view of CR0).
    unsafe { asm!("mov %cr0, {}", out(reg) v, options(att_syntax, nostack)) };
    v
}

fn ud2_trap() {
    traps::expect(6, ANY_RIP, 2);
    // SAFETY: ud2 traps to the kit's #UD stub, which skips it.
    unsafe { asm!("ud2", options(att_syntax)) };
    check!("ud2_trap_taken", traps::take_last().is_some());
}

fn va_to_mfn(va: u64) -> u64 {
    (va - VIRT_BASE) / PAGE_SIZE
}

fn kmain(si: &'static StartInfo) {
    if !check_eq!("set_trap_table", traps::install(), 0) {
        return;
    }
    #[cfg(kxen_guest = "cpu_nouser")]
    {
        let _ = si;
        nouser();
    }
    #[cfg(not(kxen_guest = "cpu_nouser"))]
    {
        segments();
        gdt(si);
        ldt();
        fpu();
        debugregs();
        iopl();
        usermode(si);
    }
}

#[cfg(kxen_guest = "cpu_nouser")]
fn nouser() {
    println!("KXEN-TEST: VALUE iret_to_user=attempted");
    kit::console::flush();
    static mut USTACK: Page = Page([0; 512]);
    // SAFETY: the hypervisor must crash the domain (no user page table); if it returned to
    // "user mode" instead, the code after it reports the failure.
    unsafe {
        enter_user(
            user_syscall as *const () as u64,
            (&raw mut USTACK) as u64 + 4096,
            0x2,
        );
    }
    check!("iret_to_user_without_user_pt_crashes", false, "returned");
}

fn segments() {
    check_eq!("segbase_fs", hc(SET_SEGMENT_BASE, 0, (&raw const FS_VAL) as u64), 0);
    check_eq!("segbase_gs_kernel", hc(SET_SEGMENT_BASE, 2, (&raw const GSK_VAL) as u64), 0);
    check_eq!("segbase_gs_user", hc(SET_SEGMENT_BASE, 1, (&raw const GSU_VAL) as u64), 0);
    check_eq!("fs_base_applied", read_fs0(), FS_VAL);
    check_eq!("gs_kernel_base_applied", read_gs0(), GSK_VAL);
    ud2_trap();
    let _ = xen_version_number();
    check_eq!("fs_base_survives_trap_and_hypercall", read_fs0(), FS_VAL);
    check_eq!("gs_base_survives_trap_and_hypercall", read_gs0(), GSK_VAL);
    for which in [0u64, 1, 2] {
        check_eq!(
            "segbase_noncanonical_einval",
            hc(SET_SEGMENT_BASE, which, 0x8000_0000_0000_0000),
            -EINVAL
        );
    }
    check_eq!("segbase_bad_which_einval", hc(SET_SEGMENT_BASE, 4, 0), -EINVAL);
    check_eq!("segbase_gs_user_sel_null", hc(SET_SEGMENT_BASE, 3, 0), 0);
    check_eq!("gs_user_sel_keeps_kernel_base", read_gs0(), GSK_VAL);
    // Put the user base back (the null selector load zeroed it).
    hc(SET_SEGMENT_BASE, 1, (&raw const GSU_VAL) as u64);
}

const FLAT_DATA_DPL0: u64 = 0x00cf_9200_0000_ffff;

fn data_desc(base: u32) -> u64 {
    let b = u64::from(base);
    0x00cf_f200_0000_ffff | ((b & 0xff_ffff) << 16) | ((b >> 24) << 56)
}

fn load_fs_read(sel: u16, off: u64) -> u64 {
    let v: u64;
    // SAFETY: loads a selector the test installed in its GDT into FS and reads at FS:off,
    // which the caller makes a live address; FS is restored to the null selector after.
    unsafe {
        asm!("mov {s:x}, %fs", "mov %fs:({o}), {v}", "xor {s:e}, {s:e}", "mov {s:x}, %fs",
             s = inout(reg) u64::from(sel) => _, o = in(reg) off, v = out(reg) v,
             options(att_syntax, nostack));
    }
    v
}

/// Remap our own static page at `va` read-only (Xen needs descriptor pages unwritable).
fn map_ro(va: u64) -> i64 {
    let pte = (va_to_mfn(va) << 12) | 1 | 4 | (1 << 5) | (1 << 63); // P, U, A, NX
    // SAFETY: remaps one of this guest's own static pages; nothing writes it afterwards.
    unsafe { hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, pte, UVMF_INVLPG) }
}

/// Try to map our own static page at `va` writable again.
fn map_rw(va: u64) -> i64 {
    let pte = (va_to_mfn(va) << 12) | 1 | 2 | 4 | (1 << 5) | (1 << 6) | (1 << 63);
    // SAFETY: as map_ro; the hypervisor must refuse it while the page is a descriptor page.
    unsafe { hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, pte, UVMF_INVLPG) }
}

/// Load `sel` into %fs expecting a fault; the vector and error code of the fault.
fn load_fs_fault(sel: u16, vector: u8) -> Option<u64> {
    traps::expect(vector, ANY_RIP, 2);
    // SAFETY: `mov %eax, %fs` (2 bytes, skipped by the kit on the expected fault); FS is
    // reloaded with the null selector afterwards and its base restored by the caller.
    unsafe {
        asm!("mov %eax, %fs", "xor %eax, %eax", "mov %eax, %fs", inout("eax") u32::from(sel) => _,
             options(att_syntax, nostack));
    }
    traps::take_last().map(|f| f.error_code)
}

fn gdt(si: &StartInfo) {
    let page = (&raw mut GDT_PAGE) as u64;
    let mfn = va_to_mfn(page);
    // SAFETY: the page is this guest's own static; the hypervisor reads it (and fixes
    // descriptors up in place, as Xen's seg_desc validation does).
    unsafe {
        let g = &raw mut GDT_PAGE;
        (*g).0[1] = FLAT_DATA_DPL0;
        (*g).0[2] = data_desc(0x1000);
    }
    let frames = [mfn];
    check_eq!("set_gdt_writable_frame_refused", hc(SET_GDT, frames.as_ptr() as u64, 4), -EINVAL);
    check_eq!("gdt_page_read_only", map_ro(page), 0);
    check_eq!("set_gdt", hc(SET_GDT, frames.as_ptr() as u64, 4), 0);
    check!("gdt_frame_cannot_be_mapped_writable", map_rw(page) != 0);
    // SAFETY: reading back our own static.
    let e1 = unsafe { core::ptr::read_volatile(&raw const GDT_PAGE.0[1]) };
    check_eq!("set_gdt_ring0_data_fixed_to_dpl3", (e1 >> 45) & 3, 3u64);
    let target = (&raw const FS_VAL) as u64;
    check_eq!("gdt_selector_base_used", load_fs_read(0x13, target - 0x1000), FS_VAL);
    check_eq!("gdt_dpl0_descriptor_loadable_as_dpl3", load_fs_read(0x0b, target), FS_VAL);
    let ma = mfn * PAGE_SIZE + 3 * 8;
    check_eq!("update_descriptor", hc(UPDATE_DESCRIPTOR, ma, data_desc(0x2000)), 0);
    check_eq!("updated_descriptor_used", load_fs_read(0x1b, target - 0x2000), FS_VAL);
    // Hostile descriptors and tables.
    let tss = 0x0000_8900_0000_0067u64;
    let gate_to_xen = 0x0000_ec00_e008_1234u64;
    check_eq!("update_descriptor_tss_refused", hc(UPDATE_DESCRIPTOR, ma, tss), -EINVAL);
    check_eq!(
        "update_descriptor_gate_to_xen_cs_refused",
        hc(UPDATE_DESCRIPTOR, ma, gate_to_xen),
        -EINVAL
    );
    check_eq!("update_descriptor_misaligned", hc(UPDATE_DESCRIPTOR, ma + 4, 0), -EINVAL);
    check_eq!("update_descriptor_outside_ram", hc(UPDATE_DESCRIPTOR, 1 << 40, 0), -EINVAL);
    let l4 = va_to_mfn(si.pt_base);
    check_eq!(
        "update_descriptor_page_table_refused",
        hc(UPDATE_DESCRIPTOR, l4 * PAGE_SIZE + 8, 0),
        -EINVAL
    );
    let pt = [l4];
    check_eq!("set_gdt_page_table_frame_refused", hc(SET_GDT, pt.as_ptr() as u64, 8), -EINVAL);
    // SAFETY: our own static, still writable here.
    unsafe { (*(&raw mut BAD_GDT_PAGE)).0[5] = tss };
    check_eq!("bad_gdt_page_read_only", map_ro((&raw const BAD_GDT_PAGE) as u64), 0);
    let bad = [va_to_mfn((&raw const BAD_GDT_PAGE) as u64)];
    check_eq!("set_gdt_tss_page_refused", hc(SET_GDT, bad.as_ptr() as u64, 8), -EINVAL);
    let outside = [1u64 << 30];
    check_eq!("set_gdt_frame_outside_ram", hc(SET_GDT, outside.as_ptr() as u64, 8), -EINVAL);
    check_eq!("set_gdt_too_many_entries", hc(SET_GDT, frames.as_ptr() as u64, 14 * 512 + 1), -EINVAL);
    check_eq!("set_gdt_bad_list_efault", hc(SET_GDT, 0x1000, 8), -EFAULT);
    check_eq!("gdt_still_in_use_after_refusals", load_fs_read(0x13, target - 0x1000), FS_VAL);
    // Restore the FS base for later sections.
    hc(SET_SEGMENT_BASE, 0, (&raw const FS_VAL) as u64);
}

fn set_ldt(base: u64, ents: u64) -> i64 {
    let op = MmuextOp { cmd: MMUEXT_SET_LDT, pad: 0, arg1: base, arg2: ents };
    // SAFETY: one mmuext_op at a live address; no done-count pointer.
    unsafe { hypercall4(HYPERVISOR_MMUEXT_OP, (&raw const op) as u64, 1, 0, u64::from(DOMID_SELF)) }
}

fn ldt() {
    let page = (&raw mut LDT_PAGE) as u64;
    // SAFETY: our own static, written before it becomes a descriptor page.
    unsafe {
        let l = &raw mut LDT_PAGE;
        (*l).0[0] = data_desc(0x1000);
        (*l).0[1] = FLAT_DATA_DPL0 | (0x3000 << 16);
    }
    let target = (&raw const FS_VAL) as u64;
    check_eq!("ldt_page_read_only", map_ro(page), 0);
    check_eq!("set_ldt", set_ldt(page, 16), 0);
    check_eq!("ldt_selector_base_used", load_fs_read(0x07, target - 0x1000), FS_VAL);
    check_eq!("ldt_dpl0_descriptor_fixed_and_usable", load_fs_read(0x0f, target - 0x3000), FS_VAL);
    let ma = va_to_mfn(page) * PAGE_SIZE + 2 * 8;
    check_eq!("ldt_update_descriptor", hc(UPDATE_DESCRIPTOR, ma, data_desc(0x2000)), 0);
    check_eq!("ldt_updated_descriptor_used", load_fs_read(0x17, target - 0x2000), FS_VAL);
    check_eq!("ldt_past_limit_gp", load_fs_fault(0x87, 13), Some(0x84));
    check!("ldt_frame_cannot_be_mapped_writable", map_rw(page) != 0);
    check_eq!(
        "ldt_update_descriptor_gate_to_xen_cs_refused",
        hc(UPDATE_DESCRIPTOR, ma, 0x0000_ec00_e008_1234),
        -EINVAL
    );
    // An LDT page holding a call gate into ring 0 (Xen's CS): the page is refused as a
    // descriptor page, so no entry of it is usable (kxen: #GP(sel); Xen: #PF at first use).
    let bad = (&raw mut BAD_LDT_PAGE) as u64;
    // SAFETY: our own static, written before it is offered as an LDT.
    unsafe {
        let l = &raw mut BAD_LDT_PAGE;
        (*l).0[0] = 0x0000_ec00_e008_1234;
        (*l).0[1] = data_desc(0x1000);
    }
    check_eq!("bad_ldt_page_read_only", map_ro(bad), 0);
    check_eq!("set_ldt_ring0_gate_page_accepted_lazily", set_ldt(bad, 16), 0);
    check_eq!("ldt_ring0_gate_page_unusable", load_fs_fault(0x0f, 13), Some(0x0c));
    // An LDT where nothing is mapped: accepted, unusable.
    check_eq!("set_ldt_unmapped_accepted", set_ldt(0x4000_0000, 16), 0);
    check_eq!("ldt_unmapped_unusable", load_fs_fault(0x07, 13), Some(0x04));
    // Xen's argument checks.
    check_eq!("set_ldt_unaligned_einval", set_ldt(page + 8, 1), -EINVAL);
    check_eq!("set_ldt_too_many_einval", set_ldt(page, 8193), -EINVAL);
    check_eq!("set_ldt_noncanonical_einval", set_ldt(0x0000_8000_0000_0000, 1), -EINVAL);
    check_eq!("set_ldt_hypervisor_hole_einval", set_ldt(0xffff_8000_0000_0000, 1), -EINVAL);
    check_eq!("set_ldt_kxen_ring0_area_einval", set_ldt(0xffff_8080_0000_0000, 16), -EINVAL);
    // Back to the good LDT, then none.
    check_eq!("set_ldt_again", set_ldt(page, 16), 0);
    check_eq!("ldt_usable_again", load_fs_read(0x07, target - 0x1000), FS_VAL);
    check_eq!("set_ldt_none", set_ldt(0, 0), 0);
    check_eq!("no_ldt_selector_gp", load_fs_fault(0x07, 13), Some(0x04));
    check_eq!("ldt_page_writable_again_after_release", map_rw(page), 0);
    hc(SET_SEGMENT_BASE, 0, (&raw const FS_VAL) as u64);
}

fn has_avx() -> bool {
    let ecx: u32;
    // SAFETY: cpuid leaf 1 has no side effects.
    unsafe {
        asm!("push %rbx", "cpuid", "pop %rbx", inout("eax") 1u32 => _, out("ecx") ecx,
             out("edx") _, options(att_syntax));
    }
    ecx & (1 << 28) != 0 && ecx & (1 << 27) != 0
}

fn fpu() {
    let pat: [u64; 4] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, 0x1357, 0x2468];
    let mut out6 = [0u64; 2];
    let mut out15 = [0u64; 2];
    let target = page_addr() + 17 * 32;
    // SAFETY: loads xmm6/xmm15, calls xen_version(0) through the hypercall page (clobbers
    // as declared), then stores both registers; the buffers are live.
    unsafe {
        asm!("movdqu ({p}), %xmm6", "movdqu ({p}), %xmm15", "xor %edi, %edi", "xor %esi, %esi",
             "call *{t}", "movdqu %xmm6, ({o6})", "movdqu %xmm15, ({o15})",
             p = in(reg) pat.as_ptr(), t = in(reg) target, o6 = in(reg) out6.as_mut_ptr(),
             o15 = in(reg) out15.as_mut_ptr(),
             out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _, out("r10") _, out("r8") _,
             out("rcx") _, out("r11") _, out("xmm6") _, out("xmm15") _, options(att_syntax));
    }
    check!("xmm_preserved_across_hypercall", out6 == [pat[0], pat[1]] && out15 == out6);
    // MXCSR and the x87 control word across a hypercall and a trap.
    let (mx_in, cw_in): (u32, u16) = (0x7f80, 0x027f);
    let (mut mx_out, mut cw_out): (u32, u16) = (0, 0);
    traps::expect(6, ANY_RIP, 2);
    // SAFETY: loads MXCSR/FCW from locals, calls xen_version(0) through the hypercall page,
    // takes a ud2 trap (skipped by the kit), stores both back, then restores the defaults.
    unsafe {
        asm!("ldmxcsr ({mi})", "fldcw ({ci})", "xor %edi, %edi", "xor %esi, %esi",
             "call *{t}", "ud2", "stmxcsr ({mo})", "fnstcw ({co})",
             "movl $0x1f80, -8(%rsp)", "ldmxcsr -8(%rsp)", "fninit",
             mi = in(reg) &mx_in, ci = in(reg) &cw_in, mo = in(reg) &mut mx_out,
             co = in(reg) &mut cw_out, t = in(reg) target,
             out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _, out("r10") _, out("r8") _,
             out("rcx") _, out("r11") _, options(att_syntax));
    }
    let _ = traps::take_last();
    check_eq!("mxcsr_preserved_across_hypercall_and_trap", mx_out, mx_in);
    check_eq!("x87_control_word_preserved_across_hypercall_and_trap", cw_out, cw_in);
    if has_avx() {
        let mut outy = [0u64; 4];
        traps::expect(6, ANY_RIP, 2);
        // SAFETY: AVX is enabled (cpuid OSXSAVE+AVX); ud2 traps to the kit (fxsave does not
        // cover the upper halves, so they survive only if nothing else touches them).
        unsafe {
            asm!("vmovdqu ({p}), %ymm7", "call *{t}", "ud2", "vmovdqu %ymm7, ({o})",
                 p = in(reg) pat.as_ptr(), t = in(reg) target, o = in(reg) outy.as_mut_ptr(),
                 in("rdi") 0u64, in("rsi") 0u64,
                 out("rax") _, out("rdx") _, out("r10") _, out("r8") _,
                 out("rcx") _, out("r11") _, out("xmm7") _, options(att_syntax));
        }
        let _ = traps::take_last();
        check!("ymm_preserved_across_hypercall_and_trap", outy == pat, "{:#x?}", outy);
    } else {
        value!("avx", "absent");
    }

    // fpu_taskswitch(1): the next SSE instruction raises #NM, delivered to the guest, which
    // finds virtual TS cleared (as Xen does) and re-executes the instruction.
    check_eq!("fpu_taskswitch_set", hc(FPU_TASKSWITCH, 1, 0), 0);
    traps::expect(7, ANY_RIP, 0);
    let mut o = [0u64; 2];
    // SAFETY: SSE load/store of live buffers; the #NM is handled by the kit (skip 0).
    unsafe {
        asm!("movdqu ({p}), %xmm5", "movdqu %xmm5, ({o})", p = in(reg) pat.as_ptr(),
             o = in(reg) o.as_mut_ptr(), out("xmm5") _, options(att_syntax));
    }
    if traps::take_last().is_some() {
        check!("nm_after_fpu_taskswitch", true);
    } else {
        // Hosts that ignore CR0.TS (KVM on PVM) cannot raise #NM; the host test knows.
        value!("nm", "not raised");
    }
    check!("sse_result_after_ts", o == [pat[0], pat[1]]);
    let before = traps::hits();
    // SAFETY: as above; no trap expected now.
    unsafe {
        asm!("movdqu ({p}), %xmm5", p = in(reg) pat.as_ptr(), out("xmm5") _, options(att_syntax));
    }
    check_eq!("no_nm_once_ts_cleared", traps::hits(), before);
    check_eq!("fpu_taskswitch_set_again", hc(FPU_TASKSWITCH, 1, 0), 0);
    check_eq!("cr0_ts_visible_after_fpu_taskswitch", read_cr0() & 8, 8);
    // SAFETY: clts is emulated for the guest kernel (clears the virtual TS).
    unsafe { asm!("clts", options(nostack)) };
    check_eq!("clts_clears_virtual_ts", read_cr0() & 8, 0);
    check_eq!("fpu_taskswitch_set_third", hc(FPU_TASKSWITCH, 1, 0), 0);
    check_eq!("fpu_taskswitch_clear", hc(FPU_TASKSWITCH, 0, 0), 0);
    // SAFETY: as above.
    unsafe {
        asm!("movdqu ({p}), %xmm5", p = in(reg) pat.as_ptr(), out("xmm5") _, options(att_syntax));
    }
    check_eq!("no_nm_after_fpu_taskswitch_0", traps::hits(), before);
}

fn debugregs() {
    let w = (&raw mut WATCH) as u64;
    check_eq!("set_debugreg0", hc(SET_DEBUGREG, 0, w), 0);
    let dr7 = 1u64 | (0b01 << 16) | (0b11 << 18); // L0, write, 8 bytes
    check_eq!("set_debugreg7", hc(SET_DEBUGREG, 7, dr7), 0);
    check_eq!("get_debugreg0", hc(GET_DEBUGREG, 0, 0), w as i64);
    check_eq!("get_debugreg7_reserved_bit_set", hc(GET_DEBUGREG, 7, 0), (dr7 | 0x400) as i64);
    check_eq!("get_debugreg5_aliases_7", hc(GET_DEBUGREG, 5, 0), (dr7 | 0x400) as i64);
    check_eq!("set_debugreg6_clear", hc(SET_DEBUGREG, 6, 0), 0);
    traps::expect(1, ANY_RIP, 0);
    // SAFETY: a plain store to our own static (the watchpoint makes it trap after it).
    unsafe { core::ptr::write_volatile(&raw mut WATCH, 5) };
    let dr6 = hc(GET_DEBUGREG, 6, 0) as u64;
    if traps::take_last().is_some() {
        check!("data_breakpoint_db", true);
        check_eq!("dr6_b0_after_breakpoint", dr6 & 1, 1u64);
    } else {
        // Hosts that do not apply guest debug registers (KVM on PVM); the host test knows.
        value!("data_breakpoint", "not raised");
    }
    check_eq!("get_debugreg4_aliases_6", hc(GET_DEBUGREG, 4, 0) as u64, dr6);
    check_eq!("set_debugreg6_reset", hc(SET_DEBUGREG, 6, 0), 0);
    check_eq!("dr6_reset_value", hc(GET_DEBUGREG, 6, 0), 0xffff_0ff0);
    check_eq!("set_debugreg7_off", hc(SET_DEBUGREG, 7, 0), 0);
    let before = traps::hits();
    // SAFETY: as above; no breakpoint armed now.
    unsafe { core::ptr::write_volatile(&raw mut WATCH, 6) };
    check_eq!("no_db_when_disabled", traps::hits(), before);
    // Hostile values.
    check_eq!("debugreg_xen_range_eperm", hc(SET_DEBUGREG, 1, 0xffff_8000_0000_1000), -EPERM);
    check_eq!("debugreg_noncanonical_eperm", hc(SET_DEBUGREG, 2, 0x8000_0000_0000_0000), -EPERM);
    check_eq!("debugreg_gd_eperm", hc(SET_DEBUGREG, 7, 1 << 13), -EPERM);
    check_eq!("debugreg_io_bp_eperm", hc(SET_DEBUGREG, 7, 1 | (2 << 16)), -EPERM);
    check_eq!("set_debugreg8_einval", hc(SET_DEBUGREG, 8, 0), -EINVAL);
    check_eq!("get_debugreg8_einval", hc(GET_DEBUGREG, 8, 0), -EINVAL);
    // Single step: TF set by popf traps after the next instruction.
    traps::expect_clearing(1, ANY_RIP, 0, TF);
    let after: u64;
    // SAFETY: sets TF; the #DB after the nop is handled by the kit, which clears TF.
    unsafe {
        asm!("pushfq", "orq $0x100, (%rsp)", "popfq", "nop", "2:", "lea 2b(%rip), {a}",
             a = out(reg) after, options(att_syntax));
    }
    match traps::take_last() {
        Some(f) => {
            check_eq!("single_step_db_rip", f.rip, after);
        }
        None => {
            check!("single_step_db", false, "no #DB");
        }
    }
    check_eq!("dr6_bs_after_single_step", (hc(GET_DEBUGREG, 6, 0) as u64 >> 14) & 1, 1u64);
    hc(SET_DEBUGREG, 6, 0);
}

#[repr(C)]
struct PhysdevOpCompat {
    cmd: u32,
    iopl: u32,
    pad: [u32; 3],
}

fn iopl() {
    traps::expect(13, ANY_RIP, 2);
    // SAFETY: `in $0x80, %al` at virtual IOPL 0 raises #GP(0), skipped by the kit.
    unsafe { asm!("in $0x80, %al", out("al") _, options(att_syntax, nostack)) };
    match traps::take_last() {
        Some(f) => {
            check_eq!("port_io_without_iopl_gp0", f.error_code, 0u64);
        }
        None => {
            check!("port_io_without_iopl_gp", false, "no #GP");
        }
    }
    let iopl1: u32 = 1;
    check_eq!("set_iopl_1", hc(PHYSDEV_OP, PHYSDEVOP_SET_IOPL, (&raw const iopl1) as u64), 0);
    let before = traps::hits();
    // SAFETY: with virtual IOPL 1 the guest kernel may do port I/O: emulated, no trap.
    unsafe { asm!("in $0x80, %al", out("al") _, options(att_syntax, nostack)) };
    check_eq!("port_io_with_iopl1_in_kernel_mode", traps::hits(), before);
    let iopl4: u32 = 4;
    check_eq!("set_iopl_4_einval", hc(PHYSDEV_OP, PHYSDEVOP_SET_IOPL, (&raw const iopl4) as u64), -EINVAL);
    check_eq!("physdev_unknown_enosys", hc(PHYSDEV_OP, 99, 0), -ENOSYS);
    check_eq!("set_iopl_bad_pointer", hc(PHYSDEV_OP, PHYSDEVOP_SET_IOPL, 0x1000), -EFAULT);
    let op = PhysdevOpCompat { cmd: 6, iopl: 2, pad: [0; 3] };
    check_eq!("physdev_op_compat_set_iopl", hc(PHYSDEV_OP_COMPAT, (&raw const op) as u64, 0), 0);
    check_eq!("vm_assist_architectural_iopl", vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_ARCHITECTURAL_IOPL), 0);
    traps::expect(6, ANY_RIP, 2);
    // SAFETY: ud2 traps to the kit's stub, which skips it.
    unsafe { asm!("ud2", options(att_syntax)) };
    if let Some(f) = traps::take_last() {
        check_eq!("bounce_frame_shows_virtual_iopl", f.rflags & 0x3000, 0x2000u64);
    }
    let iopl0: u32 = 0;
    check_eq!("set_iopl_0", hc(PHYSDEV_OP, PHYSDEVOP_SET_IOPL, (&raw const iopl0) as u64), 0);
    vm_assist(VMASST_CMD_DISABLE, VMASST_TYPE_ARCHITECTURAL_IOPL);
}

// ---- user mode --------------------------------------------------------------------------

global_asm!(
    ".pushsection .text.cpu_user, \"ax\"",
    // enter_user(rip, rsp, rflags): iret to guest user mode; "returns" when anything brings
    // the vCPU back to guest kernel mode through cpu_back (syscall callback or trap entry).
    ".globl enter_user",
    "enter_user:",
    "push %rbx", "push %rbp", "push %r12", "push %r13", "push %r14", "push %r15",
    "mov %rsp, cpu_saved_ksp(%rip)",
    "push $0xe02b", "push %rsi", "push %rdx", "push $0xe033", "push %rdi", "push $0",
    "jmp hypercall_page + 23 * 32",
    // Entered in guest kernel mode on the kernel stack with a Xen frame at rsp.
    ".globl cpu_back",
    "cpu_back:",
    "mov %rsp, cpu_frame(%rip)",
    "mov %rax, cpu_rax(%rip)",
    "mov %r12, cpu_r12(%rip)",
    "mov %r13, cpu_r13(%rip)",
    "mov cpu_saved_ksp(%rip), %rsp",
    "pop %r15", "pop %r14", "pop %r13", "pop %r12", "pop %rbp", "pop %rbx",
    "ret",
    // User-mode code: read GS/FS, then syscall with rax = 0x1234.
    ".globl user_syscall",
    "user_syscall:",
    "mov %gs:0, %r12",
    "mov %fs:0, %r13",
    "mov $0x1234, %eax",
    ".globl user_syscall_insn",
    "user_syscall_insn:",
    "syscall",
    "ud2",
    ".globl user_ud2",
    "user_ud2:",
    "ud2",
    ".globl user_int80",
    "user_int80:",
    "int $0x80",
    ".globl user_int80_end",
    "user_int80_end:",
    "ud2",
    ".globl user_int3",
    "user_int3:",
    "int3",
    ".globl user_int3_end",
    "user_int3_end:",
    "ud2",
    ".popsection",
    ".pushsection .data.cpu_user, \"aw\"",
    ".balign 8",
    "cpu_saved_ksp: .quad 0",
    ".globl cpu_frame",
    "cpu_frame: .quad 0",
    ".globl cpu_rax",
    "cpu_rax: .quad 0",
    ".globl cpu_r12",
    "cpu_r12: .quad 0",
    ".globl cpu_r13",
    "cpu_r13: .quad 0",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    fn enter_user(rip: u64, rsp: u64, rflags: u64);
    fn cpu_back();
    fn user_syscall();
    fn user_syscall_insn();
    fn user_ud2();
    fn user_int80();
    fn user_int80_end();
    fn user_int3();
    fn user_int3_end();
    static cpu_frame: u64;
    static cpu_rax: u64;
    static cpu_r12: u64;
    static cpu_r13: u64;
}

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut KSTACK: Stack = Stack([0; 16384]);
static mut USTACK: Stack = Stack([0; 16384]);

fn register_syscall_cb(address: u64, flags: u16) -> i64 {
    kit::events::register_callback(CALLBACKTYPE_SYSCALL, flags, address)
}

fn set_trap(vector: u8, flags: u8, address: u64) -> i64 {
    let t = [
        TrapInfo { vector, flags, cs: FLAT_KERNEL_CS, address },
        TrapInfo::default(),
    ];
    // SAFETY: a terminated two-entry table in our stack frame.
    unsafe { set_trap_table(t.as_ptr()) }
}

/// Run user code at `rip`; returns the frame words the kernel got back (7 or 8).
fn run_user(rip: u64) -> [u64; 8] {
    let usp = (&raw mut USTACK) as u64 + 16384 - 64;
    // SAFETY: enter_user returns through cpu_back once user mode re-enters the kernel
    // (every path used here registers cpu_back); callee-saved registers are restored.
    unsafe { enter_user(rip, usp, 0x2) };
    // SAFETY: cpu_back stored the frame pointer; the frame is on KSTACK, still intact.
    unsafe {
        let f = core::ptr::read_volatile(&raw const cpu_frame) as *const [u64; 8];
        core::ptr::read_volatile(f)
    }
}

fn usermode(si: &StartInfo) {
    let l4_mfn = va_to_mfn(si.pt_base);
    let op = MmuextOp { cmd: MMUEXT_NEW_USER_BASEPTR, pad: 0, arg1: l4_mfn, arg2: 0 };
    // SAFETY: one mmuext_op at a live address; no done-count pointer.
    let rc = unsafe { hypercall4(HYPERVISOR_MMUEXT_OP, (&raw const op) as u64, 1, 0, u64::from(DOMID_SELF)) };
    if rc != 0 {
        value!("usermode", "skipped (MMUEXT_NEW_USER_BASEPTR returned {})", rc);
        return;
    }
    let ktop = (&raw mut KSTACK) as u64 + 16384;
    check_eq!("stack_switch", stack_switch(u64::from(FLAT_KERNEL_SS), ktop), 0);
    let back = cpu_back as *const () as u64;
    check_eq!("register_syscall_callback", register_syscall_cb(back, 1), 0);

    // syscall from user mode -> callback, Xen's frame on the kernel stack.
    let f = run_user(user_syscall as *const () as u64);
    let ret = user_syscall_insn as *const () as u64 + 2;
    // SAFETY: written by cpu_back.
    let (fp, rax, r12, r13) = unsafe {
        (
            core::ptr::read_volatile(&raw const cpu_frame),
            core::ptr::read_volatile(&raw const cpu_rax),
            core::ptr::read_volatile(&raw const cpu_r12),
            core::ptr::read_volatile(&raw const cpu_r13),
        )
    };
    check_eq!("syscall_frame_on_kernel_stack", fp, ktop - 56);
    check_eq!("syscall_frame_rcx", f[0], ret);
    value!("syscall_frame_r11", "{:#x}", f[1]);
    check_eq!("syscall_frame_rip", f[2], ret);
    check_eq!("syscall_frame_cs_user_rpl", f[3] & 0xffff, 0xe033u64);
    check_eq!("syscall_frame_saved_mask", (f[3] >> 32) & 0xff, 1u64);
    check_eq!("syscall_frame_rsp", f[5], (&raw mut USTACK) as u64 + 16384 - 64);
    check_eq!("syscall_frame_ss", f[6], 0xe02bu64);
    check_eq!("syscall_rax_reaches_callback", rax, 0x1234u64);
    check_eq!("user_mode_gs_base_is_user_base", r12, GSU_VAL);
    check_eq!("user_mode_fs_base", r13, FS_VAL);
    check_eq!("kernel_gs_base_back_in_kernel_mode", read_gs0(), GSK_VAL);
    check!("hypercalls_work_back_in_kernel_mode", xen_version_number() > 0);

    // No callback: #UD at the syscall instruction, delivered through the trap table.
    check_eq!("register_null_syscall_callback", register_syscall_cb(0, 0), 0);
    check_eq!("trap6_to_cpu_back", set_trap(6, 0, back), 0);
    let f = run_user(user_syscall as *const () as u64);
    check_eq!("syscall_without_callback_ud_rip", f[2], user_syscall_insn as *const () as u64);
    check_eq!("ud_from_user_cs_rpl3", f[3] & 0xffff, 0xe033u64);

    // An exception in user mode: kernel stack, user frame.
    let f = run_user(user_ud2 as *const () as u64);
    check_eq!("user_ud2_rip", f[2], user_ud2 as *const () as u64);
    // int $0x80 with DPL 3: delivered as the software interrupt.
    check_eq!("trap80_dpl3", set_trap(0x80, 3, back), 0);
    let f = run_user(user_int80 as *const () as u64);
    check_eq!("user_int80_dpl3_delivered", f[2], user_int80_end as *const () as u64);
    // DPL 0 (kernel only): #GP(0x80 << 3 | 2) at the instruction.
    check_eq!("trap80_dpl0", set_trap(0x80, 0, back), 0);
    check_eq!("trap13_to_cpu_back", set_trap(13, 0, back), 0);
    let f = run_user(user_int80 as *const () as u64);
    check_eq!("user_int80_dpl0_gp_error", f[2], 0x402u64);
    check_eq!("user_int80_dpl0_gp_rip", f[3], user_int80 as *const () as u64);
    // int3 (DPL 3): #BP after the instruction.
    check_eq!("trap3_to_cpu_back", set_trap(3, 3, back), 0);
    let f = run_user(user_int3 as *const () as u64);
    check_eq!("user_int3_rip", f[2], user_int3_end as *const () as u64);
    check_eq!("reinstall_kit_traps", traps::install(), 0);
}
