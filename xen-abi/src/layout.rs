//! The PV start-of-day virtual memory layout.
//!
//! A 64-bit PV guest starts with an initial mapping that begins at `virt_base` and covers, in
//! this order: the kernel, the initrd (unless the kernel asked for it unmapped), the p2m list
//! (unless the kernel gave an `INIT_P2M` address), start_info, the xenstore page, the console
//! page, the initial page tables, one boot-stack page, and padding up to a 4 MiB boundary with
//! at least 512 KiB spare. Pseudo-physical frame numbers follow virtual addresses one for one
//! (`pfn = (va - virt_base) / 4096`).
//!
//! xen: tools/libs/guest/xg_dom_core.c (xc_dom_build_image, xc_dom_alloc_segment) and
//! xg_dom_x86.c (count_pgtables, alloc_pgtables_pv, alloc_p2m_list_x86_64,
//! alloc_magic_pages_pv, setup_pgtables_pv). This module reproduces those rules as pure
//! arithmetic; `compute` never allocates and never panics.

use core::fmt;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Padding the builder leaves after the boot stack inside the initial mapping.
// xen: xg_dom_x86.c alloc_pgtables_pv, "512kB padding"
pub const EXTRA_PADDING: u64 = 512 * 1024;
/// The initial mapping ends on a multiple of this.
// xen: xg_dom_x86.c alloc_pgtables_pv, 4MB alignment
pub const MAPPING_ALIGN: u64 = 4 * 1024 * 1024;
/// Bytes per p2m entry for a 64-bit guest.
pub const P2M_ENTRY_SIZE: u64 = 8;

const PT_LEVELS: usize = 4;
const LEVEL_SHIFT: u32 = 9;
/// 48-bit virtual addresses: the mask the builder applies to every mapping bound.
const VADDR_MASK: u64 = (1 << 48) - 1;

/// Page-table entry bits the builder uses.
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
/// L1 entries: present, writable, accessed (RW is dropped for page-table frames).
// xen: xg_dom_x86.c alloc_pgtables_x86_64, lvl_prot[0]
pub const L1_PROT: u64 = PTE_P | PTE_RW | PTE_A;
/// L2..L4 entries: present, writable, accessed, dirty, user.
// xen: xg_dom_x86.c alloc_pgtables_x86_64, lvl_prot[1..3]
pub const UPPER_PROT: u64 = PTE_P | PTE_RW | PTE_A | PTE_D | PTE_USER;

/// What the layout depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutInput {
    /// `XEN_ELFNOTE_VIRT_BASE` (after defaults).
    pub virt_base: u64,
    /// First virtual address of the kernel image.
    pub virt_kstart: u64,
    /// End (exclusive) of the kernel image.
    pub virt_kend: u64,
    /// Pages of guest RAM.
    pub nr_pages: u64,
    /// Length of the initrd in bytes, 0 for none.
    pub initrd_len: u64,
    /// The kernel declared `XEN_ELFNOTE_MOD_START_PFN`: the initrd goes outside the initial
    /// mapping and start_info names it by frame number.
    pub unmapped_initrd: bool,
    /// `XEN_ELFNOTE_INIT_P2M`: where the kernel wants the p2m list mapped, if anywhere.
    pub p2m_base: Option<u64>,
}

/// A run of pages allocated by the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Virtual address of the first page (where the guest sees it).
    pub vstart: u64,
    /// First pseudo-physical frame.
    pub pfn: u64,
    /// Number of pages.
    pub pages: u64,
}

impl Segment {
    /// Virtual end (exclusive).
    pub fn vend(&self) -> u64 {
        self.vstart + self.pages * PAGE_SIZE
    }
}

/// The page tables of one level of one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelTables {
    /// First virtual address the tables of this level cover.
    pub from: u64,
    /// Last virtual address (inclusive) they cover.
    pub to: u64,
    /// Frame of the first table page.
    pub pfn: u64,
    /// Number of table pages at this level (0: covered by another mapping's tables).
    pub tables: u64,
}

/// One virtually contiguous mapping and the page tables that map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mapping {
    /// First virtual address mapped.
    pub from: u64,
    /// Last virtual address mapped (inclusive).
    pub to: u64,
    /// Frame mapped at `from`.
    pub pfn: u64,
    /// Total table pages of this mapping.
    pub tables: u64,
    /// Tables per level, index 0 = L1 .. 3 = L4.
    pub levels: [LevelTables; PT_LEVELS],
}

/// The complete start-of-day layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The input it was computed from.
    pub input: LayoutInput,
    /// The kernel image (from `virt_base`'s frame of `virt_kstart`).
    pub kernel: Segment,
    /// The initrd, if any.
    pub initrd: Option<Segment>,
    /// The p2m list. With `INIT_P2M` its `vstart` is that address and its pages include the
    /// page tables of its own mapping.
    pub p2m: Segment,
    /// start_info page frame.
    pub start_info_pfn: u64,
    /// xenstore ring page frame.
    pub xenstore_pfn: u64,
    /// console ring page frame.
    pub console_pfn: u64,
    /// The initial page tables (the first page is the L4).
    pub page_tables: Segment,
    /// Boot stack page frame.
    pub bootstack_pfn: u64,
    /// End (exclusive) of the initial mapping.
    pub virt_pgtab_end: u64,
    /// Mappings: `[0]` is the initial mapping; `[1]` the separate p2m mapping, if any.
    pub mappings: [Mapping; 2],
    /// How many of `mappings` are used.
    pub n_mappings: usize,
    /// First frame not used by the builder.
    pub pfn_alloc_end: u64,
}

/// Why a layout cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// A segment would start below what is already allocated.
    SegmentTooLow {
        /// Segment name.
        what: &'static str,
        /// Its requested start.
        start: u64,
        /// The allocation end.
        alloc_end: u64,
    },
    /// A segment start is not page aligned.
    Unaligned {
        /// Segment name.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// Guest memory is too small.
    OutOfMemory {
        /// Segment name.
        what: &'static str,
        /// Pages it needs.
        pages: u64,
        /// Pages already allocated.
        used: u64,
        /// Guest pages in all.
        total: u64,
    },
    /// The page tables needed to map the initial mapping do not fit in memory.
    MappingTooLarge {
        /// Last frame the mapping would need.
        pfn_end: u64,
        /// Guest pages in all.
        total: u64,
    },
    /// Two mappings overlap.
    Overlap,
    /// Address arithmetic overflowed (hostile notes).
    Overflow,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::SegmentTooLow { what, start, alloc_end } => write!(
                f,
                "{what} at {start:#x} starts below the allocation end {alloc_end:#x}"
            ),
            LayoutError::Unaligned { what, addr } => {
                write!(f, "{what} at {addr:#x} is not page aligned")
            }
            LayoutError::OutOfMemory { what, pages, used, total } => write!(
                f,
                "not enough guest memory for {what}: {pages} pages needed, {used} of {total} already used"
            ),
            LayoutError::MappingTooLarge { pfn_end, total } => write!(
                f,
                "not enough memory for the initial mapping (frame {pfn_end:#x} needed, {total:#x} pages)"
            ),
            LayoutError::Overlap => write!(f, "the p2m mapping overlaps the initial mapping"),
            LayoutError::Overflow => write!(f, "virtual address arithmetic overflowed"),
        }
    }
}

impl core::error::Error for LayoutError {}

struct Alloc {
    virt_end: u64,
    pfn_end: u64,
    total: u64,
}

impl Alloc {
    fn take(&mut self, what: &'static str, pages: u64) -> Result<(), LayoutError> {
        // xen: xg_dom_core.c xc_dom_chk_alloc_pages
        if pages > self.total || self.pfn_end > self.total || pages > self.total - self.pfn_end {
            return Err(LayoutError::OutOfMemory {
                what,
                pages,
                used: self.pfn_end,
                total: self.total,
            });
        }
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or(LayoutError::Overflow)?;
        self.virt_end = self
            .virt_end
            .checked_add(bytes)
            .ok_or(LayoutError::Overflow)?;
        self.pfn_end += pages;
        Ok(())
    }

    fn pad_to(&mut self, what: &'static str, boundary: u64) -> Result<(), LayoutError> {
        if boundary & (PAGE_SIZE - 1) != 0 {
            return Err(LayoutError::Unaligned {
                what,
                addr: boundary,
            });
        }
        if boundary < self.virt_end {
            return Err(LayoutError::SegmentTooLow {
                what,
                start: boundary,
                alloc_end: self.virt_end,
            });
        }
        self.take(what, (boundary - self.virt_end) / PAGE_SIZE)
    }

    fn segment(
        &mut self,
        what: &'static str,
        start: Option<u64>,
        bytes: u64,
    ) -> Result<Segment, LayoutError> {
        // xen: xg_dom_core.c xc_dom_alloc_segment: pad up to an explicit start, then take
        // whole pages.
        if let Some(start) = start {
            self.pad_to(what, start)?;
        }
        let pages = bytes.div_ceil(PAGE_SIZE);
        let seg = Segment {
            vstart: self.virt_end,
            pfn: self.pfn_end,
            pages,
        };
        self.take(what, pages)?;
        Ok(seg)
    }

    fn page(&mut self, what: &'static str) -> Result<u64, LayoutError> {
        Ok(self.segment(what, None, PAGE_SIZE)?.pfn)
    }
}

fn level_bits(l: usize) -> u32 {
    PAGE_SHIFT + (l as u32 + 1) * LEVEL_SHIFT
}

/// Count the page tables needed to map `[from, to]` as mapping number `existing.len()`,
/// with its tables starting at frame `table_pfn`.
// xen: xg_dom_x86.c count_pgtables
fn count_tables(
    existing: &[Mapping],
    from: u64,
    to: u64,
    table_pfn: u64,
    total: u64,
    data_pfn: u64,
) -> Result<Mapping, LayoutError> {
    let pfn_end = data_pfn
        .checked_add((to.wrapping_sub(from)) >> PAGE_SHIFT)
        .ok_or(LayoutError::Overflow)?;
    if to < from {
        return Err(LayoutError::Overflow);
    }
    if pfn_end >= total {
        return Err(LayoutError::MappingTooLarge { pfn_end, total });
    }
    for m in existing {
        if from < m.to && to > m.from {
            return Err(LayoutError::Overlap);
        }
    }
    let mut map = Mapping {
        from: from & VADDR_MASK,
        to: to & VADDR_MASK,
        pfn: data_pfn,
        ..Mapping::default()
    };
    for l in (0..PT_LEVELS).rev() {
        map.levels[l].pfn = table_pfn + map.tables;
        if l == PT_LEVELS - 1 {
            // The single top-level table belongs to the first mapping.
            if existing.is_empty() {
                map.levels[l].from = 0;
                map.levels[l].to = VADDR_MASK;
                map.levels[l].tables = 1;
                map.tables += 1;
            }
            continue;
        }
        let bits = level_bits(l);
        let mask = (1u64 << bits) - 1;
        let mut lf = map.from & !mask;
        let mut lt = map.to | mask;
        let mut covered = false;
        for m in existing {
            let o = m.levels[l];
            if o.from == o.to {
                continue;
            }
            if lf >= o.from && lt <= o.to {
                covered = true;
                break;
            }
            if lf >= o.from && lf <= o.to {
                lf = o.to + 1;
            }
            if lt >= o.from && lt <= o.to {
                lt = o.from - 1;
            }
        }
        if covered {
            map.levels[l].from = 0;
            map.levels[l].to = 0;
            continue;
        }
        map.levels[l].from = lf;
        map.levels[l].to = lt;
        if lf < lt {
            map.levels[l].tables = ((lt - lf) >> bits) + 1;
        }
        map.tables += map.levels[l].tables;
    }
    Ok(map)
}

/// Compute the layout.
pub fn compute(input: &LayoutInput) -> Result<Layout, LayoutError> {
    let total = input.nr_pages;
    if input.virt_base & (PAGE_SIZE - 1) != 0 {
        return Err(LayoutError::Unaligned {
            what: "virt_base",
            addr: input.virt_base,
        });
    }
    if input.virt_kend < input.virt_kstart {
        return Err(LayoutError::Overflow);
    }
    let mut a = Alloc {
        virt_end: input.virt_base,
        pfn_end: 0,
        total,
    };
    let kstart = input.virt_kstart & !(PAGE_SIZE - 1);
    let kernel = a.segment("kernel", Some(kstart), input.virt_kend - kstart)?;

    let mut initrd = None;
    if input.initrd_len > 0 && !input.unmapped_initrd {
        initrd = Some(a.segment("initrd", None, input.initrd_len)?);
    }

    // xen: xg_dom_core.c xc_dom_build_image: INIT_P2M is honoured only below virt_base and
    // page aligned.
    let p2m_base = input
        .p2m_base
        .filter(|b| *b < input.virt_base && b & (PAGE_SIZE - 1) == 0);
    let p2m_bytes = total
        .checked_mul(P2M_ENTRY_SIZE)
        .ok_or(LayoutError::Overflow)?
        .div_ceil(PAGE_SIZE)
        * PAGE_SIZE;
    let mut p2m = Segment::default();
    if p2m_base.is_none() {
        p2m = a.segment("p2m list", None, p2m_bytes)?;
    }

    // xen: xg_dom_x86.c alloc_magic_pages_pv
    let start_info_pfn = a.page("start info")?;
    let xenstore_pfn = a.page("xenstore")?;
    let console_pfn = a.page("console")?;

    // xen: xg_dom_x86.c alloc_pgtables_pv: grow the guess until the tables, the boot stack
    // and the padding fit below a 4 MiB boundary.
    let extra = 1 + EXTRA_PADDING / PAGE_SIZE;
    let mut pages = extra;
    let mut fit = None;
    // The guess only grows and converges in a few rounds; the bound guards hostile input.
    for _ in 0..64 {
        let end_of = |pages: u64| {
            pages
                .checked_mul(PAGE_SIZE)
                .and_then(|b| a.virt_end.checked_add(b))
                .ok_or(LayoutError::Overflow)
        };
        let try_end = end_of(pages)? | (MAPPING_ALIGN - 1);
        let map = count_tables(&[], input.virt_base, try_end, a.pfn_end, total, 0)?;
        pages = map.tables + extra;
        if end_of(pages)? - 1 <= try_end {
            fit = Some((map, try_end));
            break;
        }
    }
    let (map0, try_end) = fit.ok_or(LayoutError::Overflow)?;
    let virt_pgtab_end = try_end.checked_add(1).ok_or(LayoutError::Overflow)?;
    let page_tables = a.segment("page tables", None, map0.tables * PAGE_SIZE)?;
    let bootstack_pfn = a.page("boot stack")?;
    a.pad_to("padding", virt_pgtab_end)?;

    if input.initrd_len > 0 && input.unmapped_initrd {
        initrd = Some(a.segment("initrd", None, input.initrd_len)?);
    }

    let mut mappings = [map0, Mapping::default()];
    let mut n_mappings = 1;
    if let Some(base) = p2m_base {
        // xen: xg_dom_x86.c alloc_p2m_list_x86_64: the p2m frames, then the tables that map
        // them, in one segment.
        let to = base
            .checked_add(p2m_bytes - 1)
            .ok_or(LayoutError::Overflow)?;
        let mut map = count_tables(&mappings[..1], base, to, a.pfn_end, total, a.pfn_end)?;
        for l in 0..PT_LEVELS {
            map.levels[l].pfn += p2m_bytes / PAGE_SIZE;
        }
        let seg = a.segment("p2m list", None, p2m_bytes + map.tables * PAGE_SIZE)?;
        p2m = Segment {
            vstart: base,
            pfn: seg.pfn,
            pages: seg.pages,
        };
        mappings[1] = map;
        n_mappings = 2;
    }

    Ok(Layout {
        input: *input,
        kernel,
        initrd,
        p2m,
        start_info_pfn,
        xenstore_pfn,
        console_pfn,
        page_tables,
        bootstack_pfn,
        virt_pgtab_end,
        mappings,
        n_mappings,
        pfn_alloc_end: a.pfn_end,
    })
}

impl Layout {
    /// Virtual address of a frame inside the initial mapping.
    pub fn pfn_to_virt(&self, pfn: u64) -> u64 {
        self.input.virt_base + pfn * PAGE_SIZE
    }

    /// Virtual address of start_info (the guest's `rsi` at entry).
    pub fn start_info_va(&self) -> u64 {
        self.pfn_to_virt(self.start_info_pfn)
    }

    /// The guest's `rsp` at entry: the top of the boot stack page.
    pub fn boot_stack_top(&self) -> u64 {
        self.pfn_to_virt(self.bootstack_pfn + 1)
    }

    /// Frame of the L4 (`cr3 >> 12` with identity p2m).
    pub fn l4_pfn(&self) -> u64 {
        self.page_tables.pfn
    }

    /// Whether `pfn` is one of the builder's page-table frames (mapped read-only).
    pub fn is_page_table_pfn(&self, pfn: u64) -> bool {
        self.mappings[..self.n_mappings].iter().any(|m| {
            let first = m.levels[PT_LEVELS - 1].pfn;
            pfn >= first && pfn < first + m.tables
        })
    }

    /// Every entry of the initial page tables as Xen's builder writes them, before any PV
    /// adjustment: `f(byte offset of the entry from frame 0, entry value)`. With an identity
    /// p2m the offset is the entry's machine address. Entries are produced top level first.
    // xen: xg_dom_x86.c setup_pgtables_pv
    pub fn for_each_pt_entry(&self, mut f: impl FnMut(u64, u64)) {
        let maps = &self.mappings[..self.n_mappings];
        for l in (0..PT_LEVELS).rev() {
            for m1 in maps {
                let from = m1.levels[l].from;
                let to = m1.levels[l].to;
                if m1.levels[l].tables == 0 {
                    continue;
                }
                let shift = PAGE_SHIFT + l as u32 * LEVEL_SHIFT;
                for m2 in maps {
                    let (cfrom, cto, cpfn) = if l > 0 {
                        let c = m2.levels[l - 1];
                        if c.tables == 0 {
                            continue;
                        }
                        (c.from, c.to, c.pfn)
                    } else {
                        (m2.from, m2.to, m2.pfn)
                    };
                    if cfrom >= to || cto <= from {
                        continue;
                    }
                    let p_s = (cfrom.max(from) - from) >> shift;
                    let p_e = (cto.min(to) - from) >> shift;
                    let first = ((cfrom.max(from) - cfrom) >> shift) + cpfn;
                    for (p, pfn) in (p_s..=p_e).zip(first..) {
                        let prot = if l > 0 {
                            UPPER_PROT
                        } else if self.is_page_table_pfn(pfn) {
                            L1_PROT & !PTE_RW
                        } else {
                            L1_PROT
                        };
                        f(
                            m1.levels[l].pfn * PAGE_SIZE + p * 8,
                            (pfn << PAGE_SHIFT) | prot,
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const MIB: u64 = 1 << 20;

    fn linux_like(nr_pages: u64, initrd_len: u64) -> LayoutInput {
        LayoutInput {
            virt_base: 0xffff_ffff_8000_0000,
            virt_kstart: 0xffff_ffff_8100_0000,
            virt_kend: 0xffff_ffff_8100_0000 + 30 * MIB + 0x1234,
            nr_pages,
            initrd_len,
            unmapped_initrd: false,
            p2m_base: None,
        }
    }

    fn tables(l: &Layout) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        l.for_each_pt_entry(|off, v| {
            assert!(m.insert(off, v).is_none(), "entry {off:#x} written twice");
        });
        m
    }

    /// Walk the builder's tables like the MMU would.
    fn walk(t: &BTreeMap<u64, u64>, l4_pfn: u64, va: u64) -> Option<(u64, u64)> {
        let mut table = l4_pfn;
        let mut flags = u64::MAX;
        for level in (0..4).rev() {
            let idx = (va >> (12 + 9 * level)) & 511;
            let e = *t.get(&(table * PAGE_SIZE + idx * 8))?;
            if e & PTE_P == 0 {
                return None;
            }
            flags &= e & 0xfff;
            table = (e & 0x000f_ffff_ffff_f000) >> 12;
        }
        Some((table, flags))
    }

    #[test]
    fn segments_follow_xen_order_and_are_contiguous() {
        let l = compute(&linux_like(128 * MIB / PAGE_SIZE, 3 * MIB + 5)).unwrap();
        let k = l.kernel;
        assert_eq!(k.vstart, 0xffff_ffff_8100_0000);
        assert_eq!(
            k.pfn, 0x1000,
            "kernel frame follows its offset from virt_base"
        );
        let rd = l.initrd.unwrap();
        assert_eq!(rd.vstart, k.vend());
        assert_eq!(rd.pages, (3 * MIB + 5).div_ceil(PAGE_SIZE));
        assert_eq!(l.p2m.vstart, rd.vend());
        assert_eq!(l.p2m.pages, (128 * MIB / PAGE_SIZE * 8).div_ceil(PAGE_SIZE));
        assert_eq!(l.start_info_pfn, l.p2m.pfn + l.p2m.pages);
        assert_eq!(l.xenstore_pfn, l.start_info_pfn + 1);
        assert_eq!(l.console_pfn, l.xenstore_pfn + 1);
        assert_eq!(l.page_tables.pfn, l.console_pfn + 1);
        assert_eq!(l.bootstack_pfn, l.page_tables.pfn + l.page_tables.pages);
        assert_eq!(l.boot_stack_top(), l.pfn_to_virt(l.bootstack_pfn + 1));
    }

    #[test]
    fn mapping_ends_on_4mib_with_512k_spare() {
        for mem in [64u64, 96, 512, 2048] {
            let l = compute(&linux_like(mem * MIB / PAGE_SIZE, 0)).unwrap();
            assert_eq!(l.virt_pgtab_end % MAPPING_ALIGN, 0, "mem {mem}");
            assert!(
                l.virt_pgtab_end - l.boot_stack_top() >= EXTRA_PADDING,
                "mem {mem}"
            );
            assert_eq!(
                l.pfn_alloc_end,
                (l.virt_pgtab_end - l.input.virt_base) / PAGE_SIZE
            );
        }
    }

    #[test]
    fn page_tables_map_the_whole_initial_mapping_linearly() {
        let l = compute(&linux_like(64 * MIB / PAGE_SIZE, 1 << 20)).unwrap();
        let t = tables(&l);
        let base = l.input.virt_base;
        let mut va = base;
        while va < l.virt_pgtab_end {
            let (pfn, flags) = walk(&t, l.l4_pfn(), va).expect("mapped");
            assert_eq!(pfn, (va - base) / PAGE_SIZE);
            let ro = l.is_page_table_pfn(pfn);
            assert_eq!(flags & PTE_RW == 0, ro, "va {va:#x}");
            va += PAGE_SIZE;
        }
        assert!(walk(&t, l.l4_pfn(), l.virt_pgtab_end).is_none());
        assert!(walk(&t, l.l4_pfn(), base - PAGE_SIZE).is_none());
        // every table page is itself inside the mapping and read-only there
        assert_eq!(l.page_tables.pages, l.mappings[0].tables);
    }

    #[test]
    fn init_p2m_gets_its_own_mapping_after_the_initial_one() {
        let mut i = linux_like(256 * MIB / PAGE_SIZE, 2 * MIB);
        i.p2m_base = Some(0x80_0000_0000);
        i.unmapped_initrd = true;
        let l = compute(&i).unwrap();
        assert_eq!(l.n_mappings, 2);
        let rd = l.initrd.unwrap();
        assert_eq!(rd.pfn, l.pfn_alloc_end - l.p2m.pages - rd.pages);
        assert!(rd.pfn * PAGE_SIZE >= l.virt_pgtab_end - l.input.virt_base);
        assert_eq!(l.p2m.vstart, 0x80_0000_0000);
        let data_pages = (256 * MIB / PAGE_SIZE * 8) / PAGE_SIZE;
        assert_eq!(l.p2m.pages, data_pages + l.mappings[1].tables);
        let t = tables(&l);
        for i in 0..data_pages {
            let (pfn, _) = walk(&t, l.l4_pfn(), 0x80_0000_0000 + i * PAGE_SIZE).unwrap();
            assert_eq!(pfn, l.p2m.pfn + i);
        }
        // the L4 is shared: the second mapping has no top-level table of its own
        assert_eq!(l.mappings[1].levels[3].tables, 0);
    }

    #[test]
    fn init_p2m_above_virt_base_is_ignored_like_xen() {
        let mut i = linux_like(64 * MIB / PAGE_SIZE, 0);
        i.p2m_base = Some(0xffff_ffff_f000_0000);
        let l = compute(&i).unwrap();
        assert_eq!(l.n_mappings, 1);
        assert_eq!(l.p2m.vstart, l.kernel.vend());
    }

    #[test]
    fn too_little_memory_is_a_clear_error() {
        let e = compute(&linux_like(8 * MIB / PAGE_SIZE, 0)).unwrap_err();
        assert!(
            matches!(e, LayoutError::OutOfMemory { what: "kernel", .. }),
            "{e}"
        );
        let e = compute(&linux_like(48 * MIB / PAGE_SIZE, 40 * MIB)).unwrap_err();
        assert!(matches!(
            e,
            LayoutError::OutOfMemory { .. } | LayoutError::MappingTooLarge { .. }
        ));
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let cases = [
            LayoutInput {
                virt_base: !0xfff,
                virt_kstart: u64::MAX,
                virt_kend: u64::MAX,
                nr_pages: 1 << 20,
                initrd_len: 0,
                unmapped_initrd: false,
                p2m_base: None,
            },
            LayoutInput {
                virt_base: 0,
                virt_kstart: 0,
                virt_kend: 0,
                nr_pages: 0,
                initrd_len: u64::MAX,
                unmapped_initrd: false,
                p2m_base: Some(0),
            },
            LayoutInput {
                virt_base: 0x1000,
                virt_kstart: 0,
                virt_kend: 0x2000,
                nr_pages: 1 << 20,
                initrd_len: 0,
                unmapped_initrd: false,
                p2m_base: None,
            },
            LayoutInput {
                virt_base: 0,
                virt_kstart: 0x2000,
                virt_kend: 0x1000,
                nr_pages: 1 << 20,
                initrd_len: 0,
                unmapped_initrd: false,
                p2m_base: None,
            },
            LayoutInput {
                virt_base: 0xffff_ffff_ffc0_0000,
                virt_kstart: 0xffff_ffff_ffc0_0000,
                virt_kend: 0xffff_ffff_ffc0_1000,
                nr_pages: u64::MAX,
                initrd_len: 0,
                unmapped_initrd: false,
                p2m_base: None,
            },
            LayoutInput {
                virt_base: 0x123,
                virt_kstart: 0x1000,
                virt_kend: 0x2000,
                nr_pages: 4096,
                initrd_len: 0,
                unmapped_initrd: false,
                p2m_base: None,
            },
        ];
        for c in cases {
            let _ = compute(&c);
        }
    }

    #[test]
    fn pvgrub_like_layout_at_virt_base_zero() {
        let l = compute(&LayoutInput {
            virt_base: 0,
            virt_kstart: 0,
            virt_kend: 0x5a000,
            nr_pages: 32 * MIB / PAGE_SIZE,
            initrd_len: 0,
            unmapped_initrd: false,
            p2m_base: None,
        })
        .unwrap();
        assert_eq!(l.kernel.pfn, 0);
        assert_eq!(l.virt_pgtab_end, 4 * MIB);
        assert_eq!(l.start_info_va(), l.start_info_pfn * PAGE_SIZE);
    }
}
