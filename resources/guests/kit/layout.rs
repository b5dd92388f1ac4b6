//! Reading the initial page tables (mapped read-only in the initial mapping).

use super::abi::{StartInfo, PAGE_SIZE, VIRT_BASE};

const PRESENT: u64 = 1;
const RW: u64 = 2;
const PSE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Virtual address of machine frame `mfn` in the initial mapping (identity p2m, pfn 0 at
/// VIRT_BASE), if the frame is one of the guest's pages.
fn frame_va(si: &StartInfo, mfn: u64) -> Option<u64> {
    (mfn < si.nr_pages).then(|| VIRT_BASE + mfn * PAGE_SIZE)
}

fn read_entry(table_va: u64, idx: u64) -> u64 {
    // SAFETY: `table_va` is pt_base or a frame_va() of a page-table frame named by a
    // present entry; Xen maps every page-table frame read-only in the initial mapping.
    unsafe { core::ptr::read_volatile((table_va + idx * 8) as *const u64) }
}

/// The L1 entry mapping `va`, if every level is present (None also when a table frame
/// lies outside the guest's RAM, or a level uses a superpage).
pub fn l1_entry(si: &StartInfo, va: u64) -> Option<u64> {
    let mut table = si.pt_base;
    for level in (1..=4u32).rev() {
        let idx = (va >> (12 + 9 * (level - 1))) & 511;
        let e = read_entry(table, idx);
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 {
            return Some(e);
        }
        if e & PSE != 0 {
            return None;
        }
        table = frame_va(si, (e & ADDR_MASK) >> 12)?;
    }
    None
}

/// End of the contiguous initial mapping starting at VIRT_BASE (at most nr_pages pages).
pub fn initial_mapping_end(si: &StartInfo) -> u64 {
    let mut va = VIRT_BASE;
    let limit = VIRT_BASE + si.nr_pages * PAGE_SIZE;
    while va < limit && l1_entry(si, va).is_some() {
        va += PAGE_SIZE;
    }
    va
}

/// Check the initial mapping page by page: `(identity, pt_readonly, others_writable)`:
/// pfn i maps frame i; page-table frames are read-only; other pages writable.
pub fn check_initial_mapping(si: &StartInfo, end: u64) -> (bool, bool, bool) {
    let pt_first = (si.pt_base - VIRT_BASE) / PAGE_SIZE;
    let pt_last = pt_first + si.nr_pt_frames;
    let (mut ident, mut ro, mut rw) = (true, true, true);
    let mut va = VIRT_BASE;
    while va < end {
        let pfn = (va - VIRT_BASE) / PAGE_SIZE;
        let e = l1_entry(si, va).unwrap_or(0);
        ident &= (e & ADDR_MASK) >> 12 == pfn;
        if (pt_first..pt_last).contains(&pfn) {
            ro &= e & RW == 0;
        } else {
            rw &= e & RW != 0;
        }
        va += PAGE_SIZE;
    }
    (ident, ro, rw)
}
