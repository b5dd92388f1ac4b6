//! mmu: PV page-table management as Xen does it: update_va_mapping, mmu_update (with a
//! 10^6-request batch that needs continuations), mmuext_op (pins, base pointers, flushes,
//! pages), writable page tables (direct PTE writes, emulated), hardware A/D bits, software
//! bits, and hostile requests refused with Xen's errno while the guest keeps running.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::arch::asm;
use kit::abi::*;
use kit::hypercall as hc;
use kit::time::rdtsc;
use kit::traps::{self, ANY_RIP};

xen_notes!(features = "writable_page_tables");

const P: u64 = 1;
const RW: u64 = 2;
const USER: u64 = 4;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

const PIN_L4: u32 = 3;
const UNPIN: u32 = 4;
const NEW_BASEPTR: u32 = 5;
const TLB_FLUSH_LOCAL: u32 = 6;
const INVLPG_LOCAL: u32 = 7;
const TLB_FLUSH_MULTI: u32 = 8;
const INVLPG_MULTI: u32 = 9;
const TLB_FLUSH_ALL: u32 = 10;
const INVLPG_ALL: u32 = 11;
const FLUSH_CACHE: u32 = 12;
const SET_LDT: u32 = 13;
const NEW_USER_BASEPTR: u32 = 15;
const CLEAR_PAGE: u32 = 16;
const COPY_PAGE: u32 = 17;
const FLUSH_CACHE_GLOBAL: u32 = 18;

/// Where the new address space maps its extra region (L4 slot 2, absent from the boot
/// tables), and how many pages it maps there.
const NEW_VA: u64 = 0x0000_0100_0000_0000;
const BATCH: u32 = 1_000_000;
/// 16 MB of requests: 3907 pages, all mapping the same request page.
const REQ_PAGES: u64 = (BATCH as u64 * 16).div_ceil(PAGE_SIZE);
const NEW_L1S: u64 = REQ_PAGES.div_ceil(512);

fn mmu_update(reqs: &[MmuUpdate], done: Option<&mut u32>) -> i64 {
    let pdone = done.map_or(0, |d| d as *mut u32 as u64);
    // SAFETY: the requests are read by the hypervisor; pdone is ours or NULL.
    unsafe {
        hc::hypercall4(
            HYPERVISOR_MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            pdone,
            u64::from(DOMID_SELF),
        )
    }
}

fn mmu_update_raw(reqs: u64, count: u64, pdone: u64, dom: u64) -> i64 {
    // SAFETY: the hypervisor must validate every pointer itself.
    unsafe { hc::hypercall4(HYPERVISOR_MMU_UPDATE, reqs, count, pdone, dom) }
}

fn one(ptr: u64, val: u64) -> i64 {
    mmu_update(&[MmuUpdate { ptr, val }], None)
}

fn ext(cmd: u32, arg1: u64, arg2: u64) -> i64 {
    let op = MmuextOp {
        cmd,
        pad: 0,
        arg1,
        arg2,
    };
    // SAFETY: one op on our stack.
    unsafe {
        hc::hypercall4(
            HYPERVISOR_MMUEXT_OP,
            &op as *const MmuextOp as u64,
            1,
            0,
            u64::from(DOMID_SELF),
        )
    }
}

fn uvm(va: u64, val: u64, flags: u64) -> i64 {
    // SAFETY: the hypervisor validates the entry.
    unsafe { hc::hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, val, flags) }
}

fn pte(mfn: u64, flags: u64) -> u64 {
    (mfn << 12) | flags
}

fn va_of(mfn: u64) -> u64 {
    VIRT_BASE + mfn * PAGE_SIZE
}

fn mfn_of(va: u64) -> u64 {
    (va - VIRT_BASE) / PAGE_SIZE
}

fn rd(va: u64) -> u64 {
    // SAFETY: callers pass mapped addresses.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

fn wr(va: u64, v: u64) {
    // SAFETY: callers pass addresses mapped writable.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

/// Machine address of the L1 entry mapping `va` in the boot tables (all read-only mapped
/// in the initial mapping).
fn l1_slot_ma(si: &StartInfo, va: u64) -> u64 {
    let mut table = si.pt_base;
    for level in (2..=4u32).rev() {
        let idx = (va >> (12 + 9 * (level - 1))) & 511;
        let e = rd(table + idx * 8);
        table = va_of((e & ADDR) >> 12);
    }
    mfn_of(table) * PAGE_SIZE + ((va >> 12) & 511) * 8
}

/// Virtual address (in the initial mapping) of a machine address.
fn ma_va(ma: u64) -> u64 {
    VIRT_BASE + ma
}

fn current_l4_mfn(si: &StartInfo) -> u64 {
    mfn_of(si.pt_base)
}

/// Make an initial-mapping page read-only (so its frame can become a table) or writable.
fn set_rw(va: u64, writable: bool) -> i64 {
    uvm(
        va,
        pte(mfn_of(va), P | if writable { RW } else { 0 }),
        UVMF_INVLPG,
    )
}

fn kmain(si: &'static StartInfo) {
    if !check_eq!("set_trap_table", traps::install(), 0) {
        return;
    }
    let end = kit::layout::initial_mapping_end(si);
    // Spare frames: the padding at the end of the initial mapping (>= 512 KiB).
    let spare = |i: u64| end - (i + 1) * PAGE_SIZE;
    let (a, b) = (spare(0), spare(1));
    let (fa, fb) = (mfn_of(a), mfn_of(b));
    wr(a, 0xaaaa_0000_0000_0001);
    wr(b, 0xbbbb_0000_0000_0002);

    basic_mappings(si, a, b, fa, fb);
    bits(si, a, fa);
    writable_page_tables(si, a, fa, fb);
    new_address_space(si, &spare);
    pages(a, b, fa, fb);
    hostile(si, a, fa);
    balloon(si, spare(20));
    check!("still_running", true);
}

fn basic_mappings(si: &StartInfo, a: u64, _b: u64, fa: u64, fb: u64) {
    // update_va_mapping with INVLPG: the old translation is gone right after.
    check_eq!("read_a_before", rd(a), 0xaaaa_0000_0000_0001);
    check_eq!("uvm_remap_invlpg", uvm(a, pte(fb, P | RW), UVMF_INVLPG), 0);
    check_eq!("uvm_remap_sees_new_frame", rd(a), 0xbbbb_0000_0000_0002);
    check_eq!(
        "uvm_remap_tlb_flush_all",
        uvm(a, pte(fa, P | RW), UVMF_TLB_FLUSH | UVMF_ALL),
        0
    );
    check_eq!("uvm_back_sees_old_frame", rd(a), 0xaaaa_0000_0000_0001);
    // A vCPU mask naming vCPU 0.
    let mask: u64 = 1;
    check_eq!(
        "uvm_invlpg_vcpumask",
        uvm(a, pte(fb, P | RW), UVMF_INVLPG | (&mask as *const u64 as u64)),
        0
    );
    check_eq!("uvm_vcpumask_sees_new_frame", rd(a), 0xbbbb_0000_0000_0002);

    // mmu_update on the L1 entry, then INVLPG_LOCAL.
    let slot = l1_slot_ma(si, a);
    let mut done = 0u32;
    let rc = mmu_update(
        &[MmuUpdate {
            ptr: slot | MMU_NORMAL_PT_UPDATE,
            val: pte(fa, P | RW),
        }],
        Some(&mut done),
    );
    check_eq!("mmu_update_l1", rc, 0);
    check_eq!("mmu_update_done", done, 1u32);
    check_eq!("invlpg_local", ext(INVLPG_LOCAL, a, 0), 0);
    check_eq!("mmu_update_sees_old_frame", rd(a), 0xaaaa_0000_0000_0001);
    // Unmap, flush: the page faults.
    check_eq!("uvm_unmap", uvm(a, 0, UVMF_INVLPG), 0);
    traps::expect(14, ANY_RIP, 3);
    // SAFETY: the read faults (#PF, bounced to the kit), which skips the 3-byte
    // `mov rax, [rdi]`.
    unsafe {
        asm!("mov rax, [rdi]", in("rdi") a, out("rax") _, options(nostack));
    }
    let f = traps::take_last();
    check!("unmapped_read_faults", f.is_some());
    if let Some(f) = f {
        check_eq!("unmapped_fault_cr2_va", f.error_code & 2, 0u64);
    }
    check_eq!("uvm_map_again", uvm(a, pte(fa, P | RW), UVMF_INVLPG), 0);
    check_eq!("mapped_again", rd(a), 0xaaaa_0000_0000_0001);
    // Every flush flavour is accepted.
    for (name, cmd, arg2) in [
        ("tlb_flush_local", TLB_FLUSH_LOCAL, 0),
        ("tlb_flush_all", TLB_FLUSH_ALL, 0),
        ("invlpg_all", INVLPG_ALL, 0),
        ("tlb_flush_multi", TLB_FLUSH_MULTI, &mask as *const u64 as u64),
        ("invlpg_multi", INVLPG_MULTI, &mask as *const u64 as u64),
    ] {
        check_eq!(name, ext(cmd, a, arg2), 0);
    }
}

fn bits(si: &StartInfo, a: u64, fa: u64) {
    let slot_va = ma_va(l1_slot_ma(si, a));
    // Software bits 9-11 and 52-62 read back exactly as written (plus USER for a kernel
    // mapping).
    let soft = (7u64 << 9) | (0x7ff << 52);
    check_eq!("uvm_soft_bits", uvm(a, pte(fa, P | RW) | soft, UVMF_INVLPG), 0);
    check_eq!("soft_bits_read_back", rd(slot_va), pte(fa, P | RW | USER) | soft);
    // A/D set by hardware: start clear, read (A), write (D).
    check_eq!("uvm_clear_ad", uvm(a, pte(fa, P | RW), UVMF_INVLPG), 0);
    check_eq!("ad_clear", rd(slot_va) & (ACCESSED | DIRTY), 0);
    let _ = rd(a);
    check_eq!("accessed_by_hardware", rd(slot_va) & (ACCESSED | DIRTY), ACCESSED);
    wr(a, 0xaaaa_0000_0000_0001);
    check_eq!("dirty_by_hardware", rd(slot_va) & DIRTY, DIRTY);
    // PRESERVE_AD keeps them through an update.
    let rc = one(
        l1_slot_ma(si, a) | MMU_PT_UPDATE_PRESERVE_AD,
        pte(fa, P | RW),
    );
    check_eq!("preserve_ad_update", rc, 0);
    check_eq!(
        "preserve_ad_kept",
        rd(slot_va) & (ACCESSED | DIRTY),
        ACCESSED | DIRTY
    );
}

fn writable_page_tables(si: &StartInfo, a: u64, fa: u64, fb: u64) {
    check_eq!(
        "vm_assist_writable_pagetables",
        hc::vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_WRITABLE_PAGETABLES),
        0
    );
    let slot_va = ma_va(l1_slot_ma(si, a));
    // A plain 64-bit store into the (read-only mapped) L1: emulated.
    wr(slot_va, pte(fb, P | RW));
    check_eq!("ptwr_mov64_installed", rd(slot_va), pte(fb, P | RW | USER));
    check_eq!("ptwr_invlpg", ext(INVLPG_LOCAL, a, 0), 0);
    check_eq!("ptwr_sees_new_frame", rd(a), 0xbbbb_0000_0000_0002);
    // The 32-bit halves, as Linux writes them: low then high.
    let lo = pte(fa, P | RW) as u32;
    // SAFETY: emulated 32-bit store into our own L1 entry.
    unsafe { core::ptr::write_volatile(slot_va as *mut u32, lo) };
    check_eq!("ptwr_mov32_low", rd(slot_va), pte(fa, P | RW | USER));
    // xchg returns the old entry.
    let mut v = pte(fb, P | RW);
    // SAFETY: emulated xchg with our own L1 entry.
    unsafe { asm!("xchg [{p}], {v}", p = in(reg) slot_va, v = inout(reg) v, options(nostack)) };
    check_eq!("ptwr_xchg_old", v, pte(fa, P | RW | USER));
    check_eq!("ptwr_xchg_new", rd(slot_va), pte(fb, P | RW | USER));
    // cmpxchg: a failing compare loads the current value; a matching one stores.
    let (mut acc, new) = (0u64, pte(fa, P | RW));
    let zf: u8;
    // SAFETY: emulated lock cmpxchg with our own L1 entry.
    unsafe {
        asm!("lock cmpxchg [{p}], {n}", "sete {z}", p = in(reg) slot_va, n = in(reg) new,
             z = out(reg_byte) zf, inout("rax") acc, options(nostack));
    }
    check_eq!("ptwr_cmpxchg_fail_zf", zf, 0u8);
    check_eq!("ptwr_cmpxchg_fail_acc", acc, pte(fb, P | RW | USER));
    let zf: u8;
    // SAFETY: as above.
    unsafe {
        asm!("lock cmpxchg [{p}], {n}", "sete {z}", p = in(reg) slot_va, n = in(reg) new,
             z = out(reg_byte) zf, inout("rax") acc => _, options(nostack));
    }
    check_eq!("ptwr_cmpxchg_ok_zf", zf, 1u8);
    check_eq!("ptwr_cmpxchg_ok_value", rd(slot_va), new | USER);
    // Read-modify-write forms Linux uses on entries: lock bts/btr, lock or/and.
    let cf: u8;
    // SAFETY: emulated lock bts of the (clear) bit 9 of our own L1 entry.
    unsafe {
        asm!("lock bts qword ptr [{p}], 9", "setc {c}", p = in(reg) slot_va, c = out(reg_byte) cf,
             options(nostack));
    }
    check_eq!("ptwr_bts_cf", cf, 0u8);
    check_eq!("ptwr_bts_set", rd(slot_va) & (1 << 9), 1 << 9);
    let cf: u8;
    // SAFETY: emulated lock btr of bit 9.
    unsafe {
        asm!("lock btr qword ptr [{p}], 9", "setc {c}", p = in(reg) slot_va, c = out(reg_byte) cf,
             options(nostack));
    }
    check_eq!("ptwr_btr_cf", cf, 1u8);
    check_eq!("ptwr_btr_clear", rd(slot_va) & (1 << 9), 0);
    // SAFETY: emulated lock or / and of a software bit.
    unsafe {
        asm!("lock or qword ptr [{p}], {v}", p = in(reg) slot_va, v = in(reg) 1u64 << 10,
             options(nostack));
    }
    check_eq!("ptwr_or_set", rd(slot_va) & (1 << 10), 1 << 10);
    // SAFETY: as above.
    unsafe {
        asm!("lock and qword ptr [{p}], {v}", p = in(reg) slot_va, v = in(reg) !(1u64 << 10),
             options(nostack));
    }
    check_eq!("ptwr_and_clear", rd(slot_va) & (1 << 10), 0);
    check_eq!("ptwr_flush", ext(TLB_FLUSH_LOCAL, 0, 0), 0);
    check_eq!("ptwr_back_to_a", rd(a), 0xaaaa_0000_0000_0001);
    // Hostile direct write: the L1 maps itself writable. Refused: the #PF is bounced at
    // the instruction and the entry is unchanged.
    let l1_mfn = (slot_va - VIRT_BASE) / PAGE_SIZE;
    traps::expect(14, ANY_RIP, 3);
    // SAFETY: the store faults and the kit skips the 3-byte `mov [rdi], rsi`.
    unsafe {
        asm!("mov [rdi], rsi", in("rdi") slot_va, in("rsi") pte(l1_mfn, P | RW),
             options(nostack));
    }
    let f = traps::take_last();
    check!("ptwr_refused_bounces_pf", f.is_some());
    if let Some(f) = f {
        check_eq!("ptwr_refused_error_code", f.error_code & 3, 3u64);
    }
    check_eq!(
        "ptwr_refused_unchanged",
        rd(slot_va) & !(ACCESSED | DIRTY),
        new | USER
    );
}

fn new_address_space(si: &StartInfo, spare: &dyn Fn(u64) -> u64) {
    // Frames: request page R, L3, L2, the L1s, and the new L4.
    let r = spare(2);
    let (l3, l2) = (spare(3), spare(4));
    let l1 = |i: u64| spare(5 + i);
    let l4 = spare(5 + NEW_L1S);
    let data = spare(6 + NEW_L1S);
    wr(data, 0);
    // The request page: 256 plain writes of `i` into `data` (a writable page).
    for i in 0..256u64 {
        wr(r + i * 16, mfn_of(data) * PAGE_SIZE | MMU_NORMAL_PT_UPDATE);
        wr(r + i * 16 + 8, 0x5eed_0000 + i);
    }
    // Tables: L1s map R read-only REQ_PAGES times; L2 -> L1s; L3 -> L2; L4 = the boot
    // L4's guest slots plus slot 2 -> L3.
    for i in 0..NEW_L1S {
        for s in 0..512u64 {
            let n = i * 512 + s;
            wr(l1(i) + s * 8, if n < REQ_PAGES { pte(mfn_of(r), P) } else { 0 });
        }
    }
    for s in 0..512u64 {
        wr(l2 + s * 8, if s < NEW_L1S { pte(mfn_of(l1(s)), P | RW) } else { 0 });
        wr(l3 + s * 8, if s == 0 { pte(mfn_of(l2), P | RW) } else { 0 });
        let boot = rd(si.pt_base + s * 8);
        let v = match s {
            2 => pte(mfn_of(l3), P | RW),
            256..=271 => 0,
            _ => boot,
        };
        wr(l4 + s * 8, v);
    }
    // Page tables cannot be mapped writable: make them read-only first.
    let mut ro_ok = true;
    for va in [l3, l2, l4, r].into_iter().chain((0..NEW_L1S).map(l1)) {
        ro_ok &= set_rw(va, false) == 0;
    }
    check!("new_tables_made_read_only", ro_ok);
    // Pinning the L4 while one L1 is still writable would fail; pin now validates it all.
    let l4_mfn = mfn_of(l4);
    check_eq!("pin_new_l4", ext(PIN_L4, l4_mfn, 0), 0);
    check_eq!("pin_twice_einval", ext(PIN_L4, l4_mfn, 0), -EINVAL);
    check_eq!(
        "new_l1_cannot_be_writable",
        set_rw(l1(0), true),
        -EBUSY
    );
    let old = current_l4_mfn(si);
    check_eq!("new_baseptr", ext(NEW_BASEPTR, l4_mfn, 0), 0);
    check_eq!("new_space_maps_region", rd(NEW_VA + 8), 0x5eed_0000);
    check_eq!(
        "new_space_maps_region_end",
        rd(NEW_VA + (REQ_PAGES - 1) * PAGE_SIZE + 8),
        0x5eed_0000
    );
    // 10^6 requests through the new region: completes via continuations.
    let mut done = 0u32;
    let t0 = rdtsc();
    let rc = mmu_update_raw(NEW_VA, BATCH as u64, &mut done as *mut u32 as u64, u64::from(DOMID_SELF));
    let t1 = rdtsc();
    // Benchmark hook: TSC ticks per request of a 10^6 batch (plain writes, continuations
    // every 4096 requests included).
    value!("batch_1e6_tsc_per_request", "{}", (t1 - t0) / BATCH as u64);
    check_eq!("batch_1e6_rc", rc, 0);
    check_eq!("batch_1e6_done", done, BATCH);
    check_eq!("batch_1e6_last_write", rd(data), 0x5eed_0000 + ((BATCH as u64 - 1) % 256));
    check_eq!("user_baseptr_set", ext(NEW_USER_BASEPTR, l4_mfn, 0), 0);
    check_eq!("user_baseptr_clear", ext(NEW_USER_BASEPTR, 0, 0), 0);
    check_eq!("baseptr_back", ext(NEW_BASEPTR, old, 0), 0);
    check_eq!("unpin_new_l4", ext(UNPIN, l4_mfn, 0), 0);
    check_eq!("unpin_twice_einval", ext(UNPIN, l4_mfn, 0), -EINVAL);
    // Unpinned and unused: every table lost its type and can be written again.
    let mut rw_ok = true;
    for va in [l3, l2, l4].into_iter().chain((0..NEW_L1S).map(l1)) {
        rw_ok &= set_rw(va, true) == 0;
    }
    check!("tables_writable_after_unpin", rw_ok);
    wr(l4, 0);
    check!("new_l4_written_after_unpin", rd(l4) == 0);
}

fn pages(a: u64, b: u64, fa: u64, fb: u64) {
    wr(a, 0x1234);
    check_eq!("copy_page", ext(COPY_PAGE, fb, fa), 0);
    check_eq!("copy_page_copied", rd(b), 0x1234);
    check_eq!("clear_page", ext(CLEAR_PAGE, fb, 0), 0);
    check_eq!("clear_page_cleared", rd(b), 0);
}

fn hostile(si: &StartInfo, a: u64, fa: u64) {
    let l4 = current_l4_mfn(si);
    let l1_ma = l1_slot_ma(si, a);
    let l1 = l1_ma >> 12;
    let nr = si.nr_pages;
    let shared = si.shared_info >> 12;
    // Frames that are not the guest's.
    // (nr .. nr + 65 are shared_info and the grant-table frames, Xen's, shared RW.)
    check_eq!(
        "map_beyond_shared_frames_eperm",
        uvm(a, pte(nr + 1000, P | RW), UVMF_INVLPG),
        -EPERM
    );
    check_eq!("map_private_eperm", uvm(a, pte(1 << 27, P), UVMF_INVLPG), -EPERM);
    check_eq!(
        "map_invalid_mfn_einval",
        uvm(a, pte(0xff_ffff_ffff, P), UVMF_INVLPG),
        -EINVAL
    );
    check_eq!("map_shared_info_rw_ok", uvm(a, pte(shared, P | RW), UVMF_INVLPG), 0);
    check_eq!(
        "map_shared_info_cache_attr_einval",
        uvm(a, pte(shared, P | RW | 1 << 4), UVMF_INVLPG),
        -EINVAL
    );
    check_eq!("remap_a", uvm(a, pte(fa, P | RW), UVMF_INVLPG), 0);
    // Page tables writable.
    check_eq!("map_l1_writable_ebusy", uvm(a, pte(l1, P | RW), UVMF_INVLPG), -EBUSY);
    check_eq!("map_l4_writable_ebusy", uvm(a, pte(l4, P | RW), UVMF_INVLPG), -EBUSY);
    check_eq!("clear_page_of_table_einval", ext(CLEAR_PAGE, l1, 0), -EINVAL);
    check_eq!("copy_page_onto_table_einval", ext(COPY_PAGE, l4, fa), -EINVAL);
    // Self maps: read-only accepted, writable refused.
    let self_slot = l4 * PAGE_SIZE + 3 * 8;
    check_eq!("self_map_rw_einval", one(self_slot, pte(l4, P | RW)), -EINVAL);
    check_eq!("self_map_ro_ok", one(self_slot, pte(l4, P)), 0);
    check_eq!("self_map_clear", one(self_slot, 0), 0);
    // Xen's L4 slots.
    for (name, s) in [("xen_slot_256", 256u64), ("xen_slot_260", 260), ("xen_slot_271", 271)] {
        check_eq!(name, one(l4 * PAGE_SIZE + s * 8, 0), -EINVAL);
    }
    check_eq!("guest_slot_272_ok", one(l4 * PAGE_SIZE + 272 * 8, 0), 0);
    // Superpages, bad flags.
    check_eq!(
        "l4_pse_einval",
        one(l4 * PAGE_SIZE + 3 * 8, pte(fa, P | 1 << 7)),
        -EINVAL
    );
    // The shared page and frames outside are no page tables.
    check_eq!("update_in_shared_info_einval", one(shared * PAGE_SIZE, 0), -EINVAL);
    check_eq!("update_outside_ram_einval", one((nr + 5) * PAGE_SIZE, 0), -EINVAL);
    // M2P: identity only.
    check_eq!("machphys_identity_ok", one(fa * PAGE_SIZE | MMU_MACHPHYS_UPDATE, fa), 0);
    check_eq!(
        "machphys_other_einval",
        one(fa * PAGE_SIZE | MMU_MACHPHYS_UPDATE, fa + 1),
        -EINVAL
    );
    check_eq!("mmu_update_bad_cmd_enosys", one(fa * PAGE_SIZE | 7, 0), -ENOSYS);
    // Pointers.
    let req = [MmuUpdate {
        ptr: fa * PAGE_SIZE + 8,
        val: 0x77,
    }; 2];
    // An unaligned request array is fine for Xen: copy it to an odd address.
    let mut buf = [0u8; 48];
    let ua = buf.as_mut_ptr() as u64 + 1;
    // SAFETY: 32 bytes inside our 48-byte buffer, at an odd address.
    unsafe {
        core::ptr::copy_nonoverlapping(req.as_ptr() as *const u8, ua as *mut u8, 32);
    }
    let mut done = 0u32;
    check_eq!(
        "mmu_update_unaligned_list_ok",
        mmu_update_raw(ua, 2, &mut done as *mut u32 as u64, u64::from(DOMID_SELF)),
        0
    );
    check_eq!("mmu_update_unaligned_done", done, 2u32);
    check_eq!(
        "mmu_update_noncanonical_list_efault",
        mmu_update_raw(0x8000_0000_0000_0000, 1, 0, u64::from(DOMID_SELF)),
        -EFAULT
    );
    check_eq!(
        "mmu_update_xen_area_list_efault",
        mmu_update_raw(0xffff_8080_0000_0000, 1, 0, u64::from(DOMID_SELF)),
        -EFAULT
    );
    check_eq!(
        "mmu_update_foreign_esrch",
        mmu_update_raw(req.as_ptr() as u64, 1, 0, 5),
        -ESRCH
    );
    check_eq!(
        "uvm_noncanonical_einval",
        uvm(0x8000_0000_0000_0000, 0, UVMF_NONE),
        -EINVAL
    );
    check_eq!("uvm_xen_area_einval", uvm(0xffff_8080_0000_0000, 0, UVMF_NONE), -EINVAL);
    check_eq!("uvm_unmapped_l2_einval", uvm(0x0000_0040_0000_0000, 0, UVMF_NONE), -EINVAL);
    check_eq!(
        "uvm_bad_vcpumask_efault",
        uvm(a, pte(fa, P | RW), UVMF_INVLPG | 0x0000_0010_0000_0000),
        -EFAULT
    );
    // SAFETY: the hypervisor refuses the foreign domain without touching anything.
    let rc = unsafe {
        hc::hypercall4(HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN, a, pte(fa, P | RW), 0, 5)
    };
    check_eq!("uvm_otherdomain_esrch", rc, -ESRCH);
    check_eq!(
        "mmuext_bad_vcpumask_einval",
        ext(TLB_FLUSH_MULTI, 0, 0x0000_0010_0000_0000),
        -EINVAL
    );
    check_eq!("flush_cache_eacces", ext(FLUSH_CACHE, 0, 0), -EACCES);
    check_eq!("flush_cache_global_einval", ext(FLUSH_CACHE_GLOBAL, 0, 0), -EINVAL);
    check_eq!("set_ldt_unaligned_einval", ext(SET_LDT, a + 8, 1), -EINVAL);
    check_eq!("set_ldt_too_many_einval", ext(SET_LDT, a, 8193), -EINVAL);
    check_eq!("set_ldt_ok", ext(SET_LDT, a, 16), 0);
    check_eq!("set_ldt_clear", ext(SET_LDT, 0, 0), 0);
    check_eq!("mmuext_unknown_enosys", ext(99, 0, 0), -ENOSYS);
    check_eq!("pin_shared_info_einval", ext(PIN_L4, shared, 0), -EINVAL);
    check_eq!("pin_data_frame_as_l4_einval", ext(PIN_L4, fa, 0), -EINVAL);
    check_eq!("new_baseptr_data_einval", ext(NEW_BASEPTR, fa, 0), -EINVAL);
    // SAFETY: the hypervisor refuses an unreadable op list.
    let rc = unsafe {
        hc::hypercall4(HYPERVISOR_MMUEXT_OP, 0x8000_0000_0000_0000, 1, 0, u64::from(DOMID_SELF))
    };
    check_eq!("mmuext_noncanonical_list_efault", rc, -EFAULT);
    check_eq!("a_still_mapped", rd(a) != 0x5a5a_5a5a, true);
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Reservation {
    extent_start: u64,
    nr_extents: u64,
    extent_order: u32,
    mem_flags: u32,
    domid: u16,
    pad: [u16; 3],
}

const XENMEM_INCREASE_RESERVATION: u64 = 0;
const XENMEM_DECREASE_RESERVATION: u64 = 1;
const XENMEM_CURRENT_RESERVATION: u64 = 3;
const XENMEM_POPULATE_PHYSMAP: u64 = 6;
const XENMEM_EXCHANGE: u64 = 11;

fn reservation(cmd: u64, frames: &mut [u64], order: u32) -> i64 {
    let r = Reservation {
        extent_start: frames.as_mut_ptr() as u64,
        nr_extents: frames.len() as u64,
        extent_order: order,
        domid: DOMID_SELF,
        ..Default::default()
    };
    // SAFETY: the reservation and its extent list are ours.
    unsafe { hc::memory_op(cmd, &r as *const Reservation as u64) }
}

fn current_reservation() -> i64 {
    let d = DOMID_SELF;
    // SAFETY: reads our domid_t.
    unsafe { hc::memory_op(XENMEM_CURRENT_RESERVATION, &d as *const u16 as u64) }
}

/// Ballooning within the domain's maximum: give a frame back, get it back.
fn balloon(si: &StartInfo, c: u64) {
    let fc = mfn_of(c);
    wr(c, 0x0dd);
    let nr = si.nr_pages as i64;
    check_eq!("reservation_full", current_reservation(), nr);
    // Still mapped: not given back (0 extents done).
    check_eq!(
        "decrease_mapped_frame_refused",
        reservation(XENMEM_DECREASE_RESERVATION, &mut [fc], 0),
        0
    );
    check_eq!("balloon_unmap", uvm(c, 0, UVMF_INVLPG), 0);
    check_eq!(
        "decrease_reservation",
        reservation(XENMEM_DECREASE_RESERVATION, &mut [fc], 0),
        1
    );
    check_eq!("reservation_one_less", current_reservation(), nr - 1);
    check_eq!("map_ballooned_frame_eperm", uvm(c, pte(fc, P | RW), UVMF_INVLPG), -EPERM);
    check_eq!(
        "populate_present_frame_refused",
        reservation(XENMEM_POPULATE_PHYSMAP, &mut [fc - 1], 0),
        0
    );
    let mut got = [0u64];
    check_eq!(
        "increase_reservation",
        reservation(XENMEM_INCREASE_RESERVATION, &mut got, 0),
        1
    );
    check_eq!("increase_gives_the_frame_back", got[0], fc);
    check_eq!(
        "increase_beyond_max_refused",
        reservation(XENMEM_INCREASE_RESERVATION, &mut got, 0),
        0
    );
    check_eq!("balloon_again", reservation(XENMEM_DECREASE_RESERVATION, &mut [fc], 0), 1);
    check_eq!(
        "populate_physmap",
        reservation(XENMEM_POPULATE_PHYSMAP, &mut [fc], 0),
        1
    );
    check_eq!("reservation_full_again", current_reservation(), nr);
    check_eq!("balloon_remap", uvm(c, pte(fc, P | RW), UVMF_INVLPG), 0);
    check_eq!("populated_frame_zeroed", rd(c), 0);
    // SAFETY: the hypervisor must not read anything for an unimplemented op.
    let rc = unsafe { hc::memory_op(XENMEM_EXCHANGE, 0) };
    check_eq!("exchange_enosys", rc, -ENOSYS);
}
