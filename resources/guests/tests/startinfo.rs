//! startinfo: the start-of-day state a 64-bit PV domU gets from Xen's domain builder —
//! registers at entry, start_info fields, the virtual layout, the hypercall page bytes,
//! the identity p2m and the M2P.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::console::Escaped;
use kit::hypercall as hc;
use kit::pure;

xen_notes!(features = "writable_page_tables");

fn kmain(si: &'static StartInfo) {
    let si_va = si as *const StartInfo as u64;
    let r = kit::entry_regs();
    let nr_pages = si.nr_pages;

    // ---- registers at entry (rsp/rsi/rflags; cs is not readable at CPL3 on these hosts).
    let boot_stack_top = si.pt_base + (si.nr_pt_frames + 1) * PAGE_SIZE;
    value!("entry_rsp", "{:#x}", r.rsp);
    check_eq!("entry_rsp_is_boot_stack_top", r.rsp, boot_stack_top);
    check_eq!("entry_rsi_is_start_info", r.rsi, si_va);
    check_eq!("entry_rflags", r.rflags, 0x202u64);
    let others = [
        ("rax", r.rax),
        ("rbx", r.rbx),
        ("rcx", r.rcx),
        ("rdx", r.rdx),
        ("rdi", r.rdi),
        ("rbp", r.rbp),
        ("r8", r.r8),
        ("r9", r.r9),
        ("r10", r.r10),
        ("r11", r.r11),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
    ];
    let nonzero = others.iter().find(|(_, v)| *v != 0);
    check!(
        "entry_other_gprs_zero",
        nonzero.is_none(),
        "{} = {:#x}",
        nonzero.map_or("", |n| n.0),
        nonzero.map_or(0, |n| n.1)
    );

    // ---- start_info fields.
    let magic = pure::c_str(&si.magic);
    check!(
        "magic",
        magic == Some(b"xen-3.0-x86_64".as_slice()),
        "magic is \"{}\"",
        Escaped(&si.magic)
    );
    value!("nr_pages", "{}", nr_pages);
    check!("nr_pages_nonzero", nr_pages > 0);
    value!("shared_info", "{:#x}", si.shared_info);
    check!(
        "shared_info_set",
        si.shared_info != 0 && si.shared_info % PAGE_SIZE == 0,
        "shared_info {:#x}",
        si.shared_info
    );
    value!("flags", "{:#x}", si.flags);
    check_eq!(
        "flags_domu",
        si.flags & (SIF_PRIVILEGED | SIF_INITDOMAIN),
        0u32
    );
    check!(
        "store_mfn_in_ram",
        si.store_mfn < nr_pages,
        "store_mfn {:#x}",
        si.store_mfn
    );
    check!(
        "console_mfn_in_ram",
        si.console_mfn < nr_pages,
        "console_mfn {:#x}",
        si.console_mfn
    );
    value!("store_evtchn", "{}", si.store_evtchn);
    value!("console_evtchn", "{}", si.console_evtchn);
    // Port 0 is never allocated; 4096 is the 2-level ABI's limit for 64-bit guests.
    check!(
        "evtchns_valid",
        si.store_evtchn != 0
            && si.console_evtchn != 0
            && si.store_evtchn != si.console_evtchn
            && si.store_evtchn < 4096
            && si.console_evtchn < 4096,
        "store {} console {}",
        si.store_evtchn,
        si.console_evtchn
    );
    value!("pt_base", "{:#x}", si.pt_base);
    value!("nr_pt_frames", "{}", si.nr_pt_frames);
    let pt_base_ok = check!(
        "pt_base_is_virtual_and_aligned",
        si.pt_base > VIRT_BASE && si.pt_base % PAGE_SIZE == 0,
        "pt_base {:#x}",
        si.pt_base
    );
    value!("mfn_list", "{:#x}", si.mfn_list);
    let mfn_list_ok = check!(
        "mfn_list_is_virtual",
        si.mfn_list >= kit::image_end() && si.mfn_list % PAGE_SIZE == 0,
        "mfn_list {:#x}",
        si.mfn_list
    );
    check!(
        "mod_start_zero_without_module",
        si.mod_len != 0 || si.mod_start == 0,
        "mod_start {:#x} with mod_len 0",
        si.mod_start
    );
    value!("mod_len", "{}", si.mod_len);
    let cmdline = pure::c_str(&si.cmd_line);
    check!("cmd_line_nul_terminated", cmdline.is_some());
    value!("cmd_line", "{}", Escaped(cmdline.unwrap_or(b"")));
    check_eq!("first_p2m_pfn", si.first_p2m_pfn, 0u64);
    check_eq!("nr_p2m_frames", si.nr_p2m_frames, 0u64);

    // ---- hypercall page: Xen's bytes, or kxen's equivalent that leaves without `syscall`.
    let page = hc::page();
    let mut first_bad = None;
    for i in 0..HYPERCALL_PAGE_ENTRIES {
        let at = i as usize * pure::HYPERCALL_ENTRY_SIZE;
        if !pure::hypercall_entry_keeps_xens_contract(i, &page[at..at + pure::HYPERCALL_ENTRY_SIZE]) {
            first_bad = Some(i);
            break;
        }
    }
    check!(
        "hypercall_page_entries_keep_xens_contract",
        first_bad.is_none(),
        "entry {} is {:02x?}",
        first_bad.unwrap_or(0),
        &page[first_bad.unwrap_or(0) as usize * 32..][..32]
    );

    // The rest reads the p2m list and the page tables: only where start_info says they are
    // plausible (a wild pointer would end the test with a fault instead of FAIL lines).
    if !(mfn_list_ok && pt_base_ok) {
        check!(
            "layout_readable",
            false,
            "mfn_list or pt_base unusable; skipping the rest"
        );
        return;
    }

    // ---- identity p2m.
    // SAFETY: Xen maps the p2m list (nr_pages u64 entries) at mfn_list in the initial
    // mapping; checked to be inside the image's virtual range above.
    let p2m = unsafe { core::slice::from_raw_parts(si.mfn_list as *const u64, nr_pages as usize) };
    let bad = p2m.iter().enumerate().find(|(i, &m)| m != *i as u64);
    check!(
        "p2m_identity",
        bad.is_none(),
        "p2m[{}] = {:#x}",
        bad.map_or(0, |b| b.0),
        bad.map_or(0, |b| *b.1)
    );

    // ---- layout.
    let end = kit::layout::initial_mapping_end(si);
    value!("mapping_end", "{:#x}", end);
    let layout = pure::Layout {
        virt_base: VIRT_BASE,
        image_end: kit::image_end(),
        nr_pages,
        mfn_list: si.mfn_list,
        start_info: si_va,
        store_mfn: si.store_mfn,
        console_mfn: si.console_mfn,
        pt_base: si.pt_base,
        nr_pt_frames: si.nr_pt_frames,
        mod_start: si.mod_start,
        mod_len: si.mod_len,
        mapping_end: end,
    };
    for (rule, ok) in layout.rules() {
        check!(rule, ok, "{:#x?}", layout);
    }
    let (ident, pt_ro, rw) = kit::layout::check_initial_mapping(si, end);
    check!("initial_mapping_identity", ident);
    check!("page_tables_mapped_read_only", pt_ro);
    check!("other_pages_mapped_writable", rw);

    // ---- M2P.
    match hc::machphys_mapping() {
        Ok(m) => {
            value!(
                "m2p",
                "{:#x}-{:#x} max_mfn {:#x}",
                m.v_start,
                m.v_end,
                m.max_mfn
            );
            let fits = m.v_start < m.v_end
                && (m.v_end - m.v_start) / 8 >= nr_pages
                && m.max_mfn >= nr_pages - 1;
            check!(
                "machphys_mapping_sane",
                fits,
                "{:#x?}",
                (m.v_start, m.v_end, m.max_mfn)
            );
            // XENMEM_machphys_mfn_list: one frame per 2 MiB extent of v_start..v_end, and
            // they are not guest RAM (the M2P is hypervisor memory).
            let mut mfns = [0u64; 8];
            match hc::machphys_mfn_list(&mut mfns) {
                Ok(n) => {
                    let size = m.v_end.saturating_sub(m.v_start);
                    let want = size.div_ceil(2 << 20) as usize;
                    value!("m2p_extents", "{} first {:#x}", n, mfns[0]);
                    check!(
                        "machphys_mfn_list_matches_mapping",
                        n >= 1 && n == want.min(mfns.len()) && mfns[0] > m.max_mfn,
                        "n {} want {} first {:#x}",
                        n,
                        want,
                        mfns[0]
                    );
                }
                Err(e) => {
                    check!(
                        "machphys_mfn_list_matches_mapping",
                        false,
                        "XENMEM_machphys_mfn_list returned {}",
                        e
                    );
                }
            }
            if fits {
                let mut bad = None;
                for (pfn, &mfn) in p2m.iter().enumerate() {
                    if mfn > m.max_mfn {
                        bad = Some((pfn, mfn, u64::MAX));
                        break;
                    }
                    // SAFETY: XENMEM_machphys_mapping says the M2P is readable from
                    // v_start up to max_mfn; mfn <= max_mfn was checked.
                    let back = unsafe {
                        core::ptr::read_volatile((m.v_start as *const u64).add(mfn as usize))
                    };
                    if back != pfn as u64 {
                        bad = Some((pfn, mfn, back));
                        break;
                    }
                }
                check!(
                    "m2p_inverts_p2m",
                    bad.is_none(),
                    "pfn {} -> mfn {:#x} -> m2p {:#x}",
                    bad.map_or(0, |b| b.0),
                    bad.map_or(0, |b| b.1),
                    bad.map_or(0, |b| b.2)
                );
                // shared_info is a hypervisor page shared with the guest: no M2P entry.
                let si_mfn = si.shared_info >> 12;
                let back = if si_mfn <= m.max_mfn {
                    // SAFETY: as above, si_mfn <= max_mfn.
                    unsafe { core::ptr::read_volatile((m.v_start as *const u64).add(si_mfn as usize)) }
                } else {
                    u64::MAX
                };
                check!(
                    "m2p_shared_info_invalid",
                    back == u64::MAX,
                    "m2p[{:#x}] = {:#x}",
                    si_mfn,
                    back
                );
            }
        }
        Err(e) => {
            check!(
                "machphys_mapping_sane",
                false,
                "XENMEM_machphys_mapping returned {}",
                e
            );
        }
    }
}
