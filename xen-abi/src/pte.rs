//! The PV page-table fixup engine: validation and adjustment of one guest page-table
//! entry, as Xen does it for a 64-bit PV guest (xen: arch/x86/mm.c `mod_l1_entry` ..
//! `mod_l4_entry`, `get_page_from_l1e` .. `get_page_from_l4e`, the linear-page-table
//! rules; arch/x86/pv/mm.h `adjust_guest_l1e` .. `adjust_guest_l4e`).
//!
//! Pure logic, no allocation: the caller describes frames through [`FrameInfo`] and keeps
//! kxen's per-entry bookkeeping through [`SideTable`]. The result ([`PteUpdate`]) says
//! what to install and which references to take and drop; reference counting itself is
//! the caller's (see `docs/pte-abi.md`).
//!
//! # The PTE ABI
//!
//! Xen stores its own bookkeeping in software-available PTE bits: bit 52
//! (`_PAGE_GUEST_KERNEL`, "this mapping belongs to guest kernel mode") in every build,
//! bit 62 (`_PAGE_GNTTAB`, "grant mapping") in debug builds. Under [`PteAbi::Kxen`] (the
//! default) kxen keeps both facts in a [`SideTable`] indexed by (page-table frame, slot),
//! so bits 9-11 and 52-62 are the guest's in every build: the installed entry is the
//! guest's value plus the adjust bits (USER, GLOBAL, ACCESSED; GLOBAL removed from kernel
//! mappings). [`PteAbi::Xen`] and [`PteAbi::XenDebug`] reproduce Xen release and debug
//! builds for guests that depend on them.
//!
//! Assumptions: the host has NX (`cpu_has_nx`), so bit 63 is always allowed; Xen's
//! `pv-linear-pt` is on unless [`PteConfig::linear_pt`] says otherwise; L1TF shadowing of
//! non-present entries (`pv_l1tf_check_*`) does not apply to kxen, so non-present entries
//! are always accepted (outside Xen's L4 slots).

use core::fmt;

use crate::errno::Errno;
use crate::mmu::{
    pte_mfn, _PAGE_ACCESSED, _PAGE_AVAIL, _PAGE_AVAIL_HIGH, _PAGE_DIRTY, _PAGE_GLOBAL,
    _PAGE_GNTTAB, _PAGE_GUEST_KERNEL, _PAGE_NX, _PAGE_PAT, _PAGE_PCD, _PAGE_PRESENT, _PAGE_PWT,
    _PAGE_RW, _PAGE_USER, PTE_ADDR_MASK,
};

/// Entries per page table.
pub const ENTRIES_PER_TABLE: usize = 512;
/// First L4 slot Xen reserves (xen: `ROOT_PAGETABLE_FIRST_XEN_SLOT`).
pub const L4_XEN_FIRST_SLOT: usize = 256;
/// Last L4 slot Xen reserves (xen: `ROOT_PAGETABLE_LAST_XEN_SLOT`).
pub const L4_XEN_LAST_SLOT: usize = 271;
/// The MFN Xen treats as `INVALID_MFN` in a PTE (`PADDR_MASK >> PAGE_SHIFT`): mapping it
/// is `-EINVAL`, not `-EPERM`.
pub const PTE_INVALID_MFN: u64 = PTE_ADDR_MASK >> 12;

/// Flag bits of an entry: everything outside the address field (bits 0-11, 52-63).
pub const PTE_FLAG_MASK: u64 = !PTE_ADDR_MASK;
/// Cache-attribute bits of an L1 entry (xen: `PAGE_CACHE_ATTRS`).
pub const PAGE_CACHE_ATTRS: u64 = _PAGE_PWT | _PAGE_PCD | _PAGE_PAT;
/// Flags a guest may use at every level (xen: arch_init_memory, `base_disallow_mask` is
/// the complement): P, RW, USER, A, D, AVAIL (9-11), AVAIL_HIGH (52-62), NX.
pub const BASE_ALLOWED: u64 = _PAGE_PRESENT
    | _PAGE_RW
    | _PAGE_USER
    | _PAGE_ACCESSED
    | _PAGE_DIRTY
    | _PAGE_AVAIL
    | _PAGE_AVAIL_HIGH
    | _PAGE_NX;
/// Flags refused at every level (PWT, PCD, PAT/PSE, GLOBAL); L1 relaxes GLOBAL and, with
/// cache-flush permission, the cache attributes (xen: `L1_DISALLOW_MASK`,
/// `l1_disallow_mask`).
pub const BASE_DISALLOW: u64 = PTE_FLAG_MASK & !BASE_ALLOWED;
/// Flags a guest may change without the entry being re-validated (xen:
/// `FASTPATH_FLAG_WHITELIST`; with linear page tables on, the PDE list is the same).
pub const FASTPATH_WHITELIST: u64 = _PAGE_NX
    | _PAGE_AVAIL_HIGH
    | _PAGE_AVAIL
    | _PAGE_GLOBAL
    | _PAGE_DIRTY
    | _PAGE_ACCESSED
    | _PAGE_USER;

// ----- levels, frames ----------------------------------------------------------------------

/// A page-table level (4 = root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Page table (4 KiB mappings).
    L1 = 1,
    /// Page directory.
    L2 = 2,
    /// Page-directory-pointer table.
    L3 = 3,
    /// Root (PML4).
    L4 = 4,
}

impl Level {
    /// All levels, L1 first.
    pub const ALL: [Level; 4] = [Level::L1, Level::L2, Level::L3, Level::L4];

    /// 1..=4.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The level numbered `n` (1..=4).
    pub const fn from_number(n: u8) -> Option<Level> {
        match n {
            1 => Some(Level::L1),
            2 => Some(Level::L2),
            3 => Some(Level::L3),
            4 => Some(Level::L4),
            _ => None,
        }
    }

    /// The frame type of a table at this level.
    pub const fn table_type(self) -> FrameType {
        match self {
            Level::L1 => FrameType::L1,
            Level::L2 => FrameType::L2,
            Level::L3 => FrameType::L3,
            Level::L4 => FrameType::L4,
        }
    }

    /// The frame type an entry at this level points at (`None` for L1: data frames).
    pub const fn child_type(self) -> Option<FrameType> {
        match self {
            Level::L1 => None,
            Level::L2 => Some(FrameType::L1),
            Level::L3 => Some(FrameType::L2),
            Level::L4 => Some(FrameType::L3),
        }
    }

    /// Flags refused in a present entry at this level.
    pub const fn disallow_mask(self, cfg: PteConfig) -> u64 {
        match self {
            Level::L1 => {
                // xen: L1_DISALLOW_MASK = (base | _PAGE_GNTTAB) & ~_PAGE_GLOBAL; _PAGE_GNTTAB
                // is 0 in release builds. Cache attributes with iomem/ioport/pdev caps.
                let mut m = BASE_DISALLOW & !_PAGE_GLOBAL;
                if matches!(cfg.abi, PteAbi::XenDebug) {
                    m |= _PAGE_GNTTAB;
                }
                if cfg.cache_attrs {
                    m &= !PAGE_CACHE_ATTRS;
                }
                m
            }
            // xen: L2_DISALLOW_MASK, l3_disallow_mask (64-bit), L4_DISALLOW_MASK = base.
            _ => BASE_DISALLOW,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.number())
    }
}

/// The type a guest frame currently has (xen: `PGT_*`), counted: a frame whose type
/// count dropped to zero is [`FrameType::None`] and may take any type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FrameType {
    /// No type reference held.
    #[default]
    None,
    /// Mapped writable somewhere (xen: `PGT_writable_page`).
    Writable,
    /// Validated L1 page table.
    L1,
    /// Validated L2 page table.
    L2,
    /// Validated L3 page table.
    L3,
    /// Validated L4 page table.
    L4,
    /// GDT/LDT frame (xen: `PGT_seg_desc_page`).
    SegDesc,
}

impl FrameType {
    /// L1..L4.
    pub const fn is_page_table(self) -> bool {
        matches!(
            self,
            FrameType::L1 | FrameType::L2 | FrameType::L3 | FrameType::L4
        )
    }

    /// The level of a page-table type.
    pub const fn level(self) -> Option<Level> {
        match self {
            FrameType::L1 => Some(Level::L1),
            FrameType::L2 => Some(Level::L2),
            FrameType::L3 => Some(Level::L3),
            FrameType::L4 => Some(Level::L4),
            _ => None,
        }
    }
}

/// What a machine frame is, from the domain's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameClass {
    /// Not the domain's: beyond its RAM, kxen-private, or nonexistent. Xen treats such a
    /// frame in an L1 entry as an MMIO attempt (`-EPERM`) and above L1 as `-EINVAL`.
    NotGuest,
    /// The domain's RAM, with its current (counted) type.
    Ram {
        /// Current type (`None` when the type count is zero).
        type_: FrameType,
        /// Pinned by `MMUEXT_PIN_L*_TABLE`.
        pinned: bool,
    },
    /// A Xen/kxen page shared with the domain (shared_info, ...), mappable in an L1
    /// (xen: `share_xen_page_with_guest`): never a page table, no cache attributes.
    SharedXen {
        /// Shared read-write (`SHARE_rw`); read-only pages refuse RW mappings.
        writable: bool,
    },
}

/// The caller's view of the domain's frames.
pub trait FrameInfo {
    /// Classify machine frame `mfn` (any 40-bit value: must not panic).
    fn frame_class(&self, mfn: u64) -> FrameClass;
}

// ----- configuration -------------------------------------------------------------------------

/// Which PTE bit conventions the guest sees (`pte_abi` in the domain config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PteAbi {
    /// kxen: no hypervisor-owned bits in guest entries; bookkeeping in the side table.
    #[default]
    Kxen,
    /// Xen release build: bit 52 set on kernel mappings; bit 62 the guest's.
    Xen,
    /// Xen debug build: as `Xen`, and bit 62 refused in guest-written L1 entries and set
    /// on grant mappings.
    XenDebug,
}

impl PteAbi {
    /// Config name: "kxen", "xen", "xen-debug".
    pub const fn name(self) -> &'static str {
        match self {
            PteAbi::Kxen => "kxen",
            PteAbi::Xen => "xen",
            PteAbi::XenDebug => "xen-debug",
        }
    }

    /// Parse a config name (see [`PteAbi::name`]).
    pub fn from_name(s: &str) -> Option<PteAbi> {
        [PteAbi::Kxen, PteAbi::Xen, PteAbi::XenDebug]
            .into_iter()
            .find(|a| a.name() == s)
    }

    /// Whether bit 52 marks kernel mappings in installed entries.
    pub const fn uses_bit52(self) -> bool {
        !matches!(self, PteAbi::Kxen)
    }
}

/// Per-domain settings of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PteConfig {
    /// The PTE ABI.
    pub abi: PteAbi,
    /// PWT/PCD/PAT allowed in L1 entries (xen: the domain has iomem/ioport caps or
    /// passed-through devices, `l1_disallow_mask`). Default false.
    pub cache_attrs: bool,
    /// Read-only linear (self-referencing) page tables allowed (xen: `pv-linear-pt`,
    /// default on).
    pub linear_pt: bool,
}

impl Default for PteConfig {
    fn default() -> Self {
        PteConfig {
            abi: PteAbi::Kxen,
            cache_attrs: false,
            linear_pt: true,
        }
    }
}

impl From<PteAbi> for PteConfig {
    fn from(abi: PteAbi) -> Self {
        PteConfig {
            abi,
            ..PteConfig::default()
        }
    }
}

// ----- side table ----------------------------------------------------------------------------

/// kxen's bookkeeping for one installed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SideEntry {
    /// A present L1 entry the guest made as a kernel mapping.
    pub kernel: bool,
    /// A present L1 entry installed by a grant mapping.
    pub grant: bool,
}

/// The side table is full: the entry could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideTableFull;

/// Per-(page-table frame, slot) bookkeeping, kept by the caller.
pub trait SideTable {
    /// The record for `slot` of `table_mfn` (default if none).
    fn get(&self, table_mfn: u64, slot: usize) -> SideEntry;
    /// Replace the record. Setting the default value must not fail.
    fn set(&mut self, table_mfn: u64, slot: usize, entry: SideEntry) -> Result<(), SideTableFull>;
}

/// The side-table bits of one page table: 2 bits per slot, 128 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TableBits {
    kernel: [u64; ENTRIES_PER_TABLE / 64],
    grant: [u64; ENTRIES_PER_TABLE / 64],
}

impl TableBits {
    /// All clear.
    pub const fn new() -> Self {
        TableBits {
            kernel: [0; ENTRIES_PER_TABLE / 64],
            grant: [0; ENTRIES_PER_TABLE / 64],
        }
    }

    /// The record of `slot` (slots >= 512 read as default).
    pub fn get(&self, slot: usize) -> SideEntry {
        let (w, b) = (slot / 64, slot % 64);
        SideEntry {
            kernel: self.kernel.get(w).is_some_and(|x| x >> b & 1 != 0),
            grant: self.grant.get(w).is_some_and(|x| x >> b & 1 != 0),
        }
    }

    /// Set the record of `slot` (slots >= 512 ignored).
    pub fn set(&mut self, slot: usize, e: SideEntry) {
        let (w, b) = (slot / 64, slot % 64);
        if let (Some(k), Some(g)) = (self.kernel.get_mut(w), self.grant.get_mut(w)) {
            *k = (*k & !(1 << b)) | (u64::from(e.kernel) << b);
            *g = (*g & !(1 << b)) | (u64::from(e.grant) << b);
        }
    }

    /// No slot has a record.
    pub fn is_empty(&self) -> bool {
        self.kernel.iter().chain(self.grant.iter()).all(|&w| w == 0)
    }
}

/// A fixed-capacity [`SideTable`] for up to `N` page tables (no allocation; linear
/// search, meant for tests and small domains).
#[derive(Clone, Debug)]
pub struct FixedSideTable<const N: usize> {
    mfns: [Option<u64>; N],
    bits: [TableBits; N],
}

impl<const N: usize> Default for FixedSideTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FixedSideTable<N> {
    /// Empty table.
    pub const fn new() -> Self {
        FixedSideTable {
            mfns: [None; N],
            bits: [TableBits::new(); N],
        }
    }

    /// How many page tables have records.
    pub fn tables_in_use(&self) -> usize {
        self.mfns.iter().filter(|m| m.is_some()).count()
    }

    fn find(&self, mfn: u64) -> Option<usize> {
        self.mfns.iter().position(|&m| m == Some(mfn))
    }
}

impl<const N: usize> SideTable for FixedSideTable<N> {
    fn get(&self, table_mfn: u64, slot: usize) -> SideEntry {
        match self.find(table_mfn) {
            Some(i) => self.bits[i].get(slot),
            None => SideEntry::default(),
        }
    }

    fn set(&mut self, table_mfn: u64, slot: usize, entry: SideEntry) -> Result<(), SideTableFull> {
        let i = match self.find(table_mfn) {
            Some(i) => i,
            None if entry == SideEntry::default() => return Ok(()),
            None => {
                let i = self
                    .mfns
                    .iter()
                    .position(Option::is_none)
                    .ok_or(SideTableFull)?;
                self.mfns[i] = Some(table_mfn);
                self.bits[i] = TableBits::new();
                i
            }
        };
        self.bits[i].set(slot, entry);
        if self.bits[i].is_empty() {
            self.mfns[i] = None;
        }
        Ok(())
    }
}

// ----- errors --------------------------------------------------------------------------------

/// Why an entry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteErrorKind {
    /// Slot index >= 512.
    BadSlot,
    /// L4 slot 256-271 (xen: "L4 update in Xen-private area").
    XenSlot,
    /// Flags refused at this level (the offending bits).
    BadFlags {
        /// The refused bits.
        bits: u64,
    },
    /// The frame is `INVALID_MFN`.
    InvalidMfn,
    /// The frame is not the domain's (L1: an MMIO attempt).
    NotGuestFrame,
    /// A writable L1 mapping of a frame that cannot be writable (page table, descriptor
    /// table, read-only shared page).
    WritableConflict {
        /// What the frame is.
        have: FrameClass,
    },
    /// An upper-level entry at a frame of the wrong type (and not a valid linear map).
    TypeConflict {
        /// The type the entry needs.
        want: FrameType,
        /// The frame.
        have: FrameClass,
    },
    /// A linear page-table entry with RW set.
    LinearWritable,
    /// Linear page tables are disabled.
    LinearDisabled,
    /// Non-WB cache attributes on a Xen-shared page.
    CacheAttrsOnXenPage,
    /// The side table could not record the entry.
    SideTableFull,
}

/// A refused page-table update: which entry, which value, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteError {
    /// Level of the table written.
    pub level: Level,
    /// Slot written.
    pub slot: usize,
    /// Value the guest wrote.
    pub value: u64,
    /// Why.
    pub kind: PteErrorKind,
}

impl PteError {
    /// The errno Xen returns for this refusal.
    pub fn errno(&self) -> Errno {
        match self.kind {
            // xen: get_page_from_l1e, MMIO without iomem permission.
            PteErrorKind::NotGuestFrame if self.level == Level::L1 => Errno::EPERM,
            // xen: get_page_from_l1e "could_not_pin".
            PteErrorKind::WritableConflict { .. } => Errno::EBUSY,
            PteErrorKind::CacheAttrsOnXenPage => Errno::EACCES,
            PteErrorKind::SideTableFull => Errno::ENOMEM,
            // Bad flags, Xen slot, type conflicts, failed linear maps, frames not ours
            // above L1 (get_page_and_type_from_mfn): all -EINVAL.
            _ => Errno::EINVAL,
        }
    }
}

impl fmt::Display for PteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} slot {} value {:#018x}: ",
            self.level, self.slot, self.value
        )?;
        match self.kind {
            PteErrorKind::BadSlot => f.write_str("slot out of range"),
            PteErrorKind::XenSlot => f.write_str("L4 update in Xen-private area"),
            PteErrorKind::BadFlags { bits } => write!(f, "bad {} flags {bits:#x}", self.level),
            PteErrorKind::InvalidMfn => f.write_str("INVALID_MFN"),
            PteErrorKind::NotGuestFrame => {
                write!(f, "frame {:#x} is not the domain's", pte_mfn(self.value))
            }
            PteErrorKind::WritableConflict { have } => write!(
                f,
                "writable mapping of frame {:#x} ({have:?})",
                pte_mfn(self.value)
            ),
            PteErrorKind::TypeConflict { want, have } => write!(
                f,
                "frame {:#x} is {have:?}, not {want:?}",
                pte_mfn(self.value)
            ),
            PteErrorKind::LinearWritable => f.write_str("linear page table with write permission"),
            PteErrorKind::LinearDisabled => f.write_str("linear page tables disabled"),
            PteErrorKind::CacheAttrsOnXenPage => {
                f.write_str("cache attributes on a Xen-shared page")
            }
            PteErrorKind::SideTableFull => f.write_str("side table full"),
        }
    }
}

impl core::error::Error for PteError {}

// ----- the engine ----------------------------------------------------------------------------

/// The entry being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryAt {
    /// Frame of the page table holding the entry.
    pub table_mfn: u64,
    /// Level of that table.
    pub level: Level,
    /// Slot (0..512).
    pub slot: usize,
}

impl EntryAt {
    /// Shorthand constructor.
    pub const fn new(table_mfn: u64, level: Level, slot: usize) -> Self {
        EntryAt {
            table_mfn,
            level,
            slot,
        }
    }
}

/// Whose mapping a present L1 entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MappingKind {
    /// Guest kernel mapping: USER set by kxen, never GLOBAL (Kxen ABI) / bit 52 (Xen ABI).
    Kernel,
    /// Guest user mapping: USER|GLOBAL.
    User,
}

/// A reference an entry holds on the frame it points at (xen: general page reference
/// plus, optionally, a type reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ref {
    /// Nothing: non-present, self-map, or a frame outside the domain.
    None,
    /// A general reference (read-only L1 mapping).
    Page(u64),
    /// A general and a type reference of this type.
    Typed(u64, FrameType),
}

/// What to do for an accepted update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PteUpdate {
    /// The value to install.
    pub value: u64,
    /// The new entry differs from the old only in fast-path flags: no reference changes
    /// (`new_ref` and `old_ref` are `Ref::None`).
    pub fast_path: bool,
    /// Reference to take for the new entry.
    pub new_ref: Ref,
    /// The frame in `new_ref` has no type yet: the caller must validate its contents
    /// as that page-table type (xen: `_get_page_type` -> `validate_page`).
    pub promote: bool,
    /// Reference the old entry held, to drop after installing (xen: `put_page_from_lNe`).
    pub old_ref: Ref,
    /// The guest overwrote a grant mapping with a normal update (a Xen debug build
    /// injects #GP: "Attempt to implicitly unmap ... grant PTE").
    pub implicit_grant_unmap: bool,
    /// The guest wrote a kernel mapping with GLOBAL (xen warns; Kxen ABI drops GLOBAL).
    pub global_kernel_warning: bool,
}

/// Adjust a present entry after validation (xen: adjust_guest_l1e .. l4e, 64-bit guest).
/// `kind` only matters for L1. Idempotent: `adjust(adjust(v)) == adjust(v)` for the same
/// level, kind and ABI. Non-present entries are returned unchanged.
pub const fn adjust(level: Level, value: u64, kind: MappingKind, abi: PteAbi) -> u64 {
    if value & _PAGE_PRESENT == 0 {
        return value;
    }
    match level {
        Level::L1 => match (kind, abi.uses_bit52()) {
            // Xen: kernel mappings get USER|GUEST_KERNEL (GLOBAL kept if the guest set it,
            // with a warning), user mappings USER|GLOBAL.
            (MappingKind::Kernel, true) => value | _PAGE_USER | _PAGE_GUEST_KERNEL,
            (MappingKind::User, true) => value | _PAGE_USER | _PAGE_GLOBAL,
            // kxen: no marker bit; kernel mappings are never GLOBAL.
            (MappingKind::Kernel, false) => (value | _PAGE_USER) & !_PAGE_GLOBAL,
            (MappingKind::User, false) => value | _PAGE_USER | _PAGE_GLOBAL,
        },
        Level::L2 | Level::L3 => value | _PAGE_USER,
        // xen: ACCESSED always set on L4 entries (per-pCPU L4 shadows can't sync A back).
        Level::L4 => value | _PAGE_ACCESSED | _PAGE_USER,
    }
}

/// Classify a present L1 entry the guest wrote.
///
/// - Xen ABIs: kernel iff USER is clear or bit 52 is set (xen: adjust_guest_l1e adds
///   GUEST_KERNEL without USER, then GLOBAL without GUEST_KERNEL).
/// - Kxen ABI: kernel iff USER is clear, or the write is a read-modify-write of a kernel
///   mapping: USER set, GLOBAL clear, and the slot currently holds a kernel mapping of the
///   same frame (`old` present, `old_side.kernel`). A kernel mapping reads back with USER
///   set and GLOBAL clear, so writing it back keeps it a kernel mapping; a user mapping
///   reads back with GLOBAL set. Misclassifying in this direction is safe (non-global).
pub const fn classify_l1(new: u64, old: u64, old_side: SideEntry, abi: PteAbi) -> MappingKind {
    if new & _PAGE_USER == 0 {
        return MappingKind::Kernel;
    }
    let kernel = if abi.uses_bit52() {
        new & _PAGE_GUEST_KERNEL != 0
    } else {
        new & _PAGE_GLOBAL == 0
            && old_side.kernel
            && old & _PAGE_PRESENT != 0
            && (old & PTE_ADDR_MASK) == (new & PTE_ADDR_MASK)
    };
    if kernel {
        MappingKind::Kernel
    } else {
        MappingKind::User
    }
}

/// `old | (current & (A|D))` for `MMU_PT_UPDATE_PRESERVE_AD` (xen: update_intpte): apply
/// to the installed value at write time.
pub const fn preserve_ad(install: u64, current: u64) -> u64 {
    install | (current & (_PAGE_ACCESSED | _PAGE_DIRTY))
}

/// The reference an installed entry at `at` holds (for dropping it).
pub fn held_ref(at: EntryAt, installed: u64, frames: &impl FrameInfo) -> Ref {
    if installed & _PAGE_PRESENT == 0 {
        return Ref::None;
    }
    let mfn = pte_mfn(installed);
    match (at.level, frames.frame_class(mfn)) {
        (_, FrameClass::NotGuest) => Ref::None,
        // xen: put_page_from_l2e..l4e skip self-maps.
        (Level::L2 | Level::L3 | Level::L4, _) if mfn == at.table_mfn => Ref::None,
        (Level::L1, _) if installed & _PAGE_RW != 0 => Ref::Typed(mfn, FrameType::Writable),
        (Level::L1, _) => Ref::Page(mfn),
        (_, FrameClass::Ram { type_, .. }) => Ref::Typed(mfn, type_),
        (_, FrameClass::SharedXen { .. }) => Ref::Page(mfn),
    }
}

/// Validate `new` for the entry at `at` (currently `old`, as installed) and return the
/// value to install; records the side-table entry. See [`update_entry`] for the
/// references to take and drop.
pub fn validate_and_adjust(
    at: EntryAt,
    new: u64,
    old: u64,
    cfg: PteConfig,
    frames: &impl FrameInfo,
    side: &mut impl SideTable,
) -> Result<u64, PteError> {
    update_entry(at, new, old, cfg, frames, side).map(|u| u.value)
}

/// Validate and adjust one entry, as Xen's `mod_lN_entry` (xen: arch/x86/mm.c). On
/// success the side table holds the new entry's record; on error nothing changed.
pub fn update_entry(
    at: EntryAt,
    new: u64,
    old: u64,
    cfg: PteConfig,
    frames: &impl FrameInfo,
    side: &mut impl SideTable,
) -> Result<PteUpdate, PteError> {
    let err = |kind| PteError {
        level: at.level,
        slot: at.slot,
        value: new,
        kind,
    };
    if at.slot >= ENTRIES_PER_TABLE {
        return Err(err(PteErrorKind::BadSlot));
    }
    // xen: mod_l4_entry, is_guest_l4_slot: refused even for non-present values.
    if at.level == Level::L4 && (L4_XEN_FIRST_SLOT..=L4_XEN_LAST_SLOT).contains(&at.slot) {
        return Err(err(PteErrorKind::XenSlot));
    }
    let old_side = side.get(at.table_mfn, at.slot);
    let implicit_grant_unmap = old_side.grant && old & _PAGE_PRESENT != 0;

    if new & _PAGE_PRESENT == 0 {
        // Non-present: installed as written, nothing validated.
        side.set(at.table_mfn, at.slot, SideEntry::default())
            .map_err(|_| err(PteErrorKind::SideTableFull))?;
        return Ok(PteUpdate {
            value: new,
            fast_path: false,
            new_ref: Ref::None,
            promote: false,
            old_ref: held_ref(at, old, frames),
            implicit_grant_unmap,
            global_kernel_warning: false,
        });
    }

    let bad = new & at.level.disallow_mask(cfg);
    if bad != 0 {
        return Err(err(PteErrorKind::BadFlags { bits: bad }));
    }

    let kind = match at.level {
        Level::L1 => classify_l1(new, old, old_side, cfg.abi),
        _ => MappingKind::User,
    };
    let global_kernel_warning =
        at.level == Level::L1 && kind == MappingKind::Kernel && new & _PAGE_GLOBAL != 0;
    let value = adjust(at.level, new, kind, cfg.abi);
    let record = SideEntry {
        kernel: at.level == Level::L1 && kind == MappingKind::Kernel,
        grant: false,
    };

    // xen: fast path for sufficiently-similar mappings: no re-validation, no references.
    // The mapping (frame, permissions) is unchanged, so a grant mapping stays one.
    if old & _PAGE_PRESENT != 0 && (old ^ value) & !FASTPATH_WHITELIST == 0 {
        let record = SideEntry {
            grant: old_side.grant,
            ..record
        };
        side.set(at.table_mfn, at.slot, record)
            .map_err(|_| err(PteErrorKind::SideTableFull))?;
        return Ok(PteUpdate {
            value,
            fast_path: true,
            new_ref: Ref::None,
            promote: false,
            old_ref: Ref::None,
            implicit_grant_unmap: false,
            global_kernel_warning,
        });
    }

    let (new_ref, promote) = match at.level {
        Level::L1 => (check_l1(value, frames).map_err(err)?, false),
        _ => check_upper(at, value, cfg, frames).map_err(err)?,
    };
    side.set(at.table_mfn, at.slot, record)
        .map_err(|_| err(PteErrorKind::SideTableFull))?;
    Ok(PteUpdate {
        value,
        fast_path: false,
        new_ref,
        promote,
        old_ref: held_ref(at, old, frames),
        implicit_grant_unmap,
        global_kernel_warning,
    })
}

/// Frame checks for a present L1 entry (xen: get_page_from_l1e).
fn check_l1(value: u64, frames: &impl FrameInfo) -> Result<Ref, PteErrorKind> {
    let mfn = pte_mfn(value);
    let rw = value & _PAGE_RW != 0;
    match frames.frame_class(mfn) {
        // xen: not the domain's and no iomem permission: -EPERM, except INVALID_MFN.
        FrameClass::NotGuest if mfn == PTE_INVALID_MFN => Err(PteErrorKind::InvalidMfn),
        FrameClass::NotGuest => Err(PteErrorKind::NotGuestFrame),
        have @ FrameClass::SharedXen { writable } => {
            if rw && !writable {
                return Err(PteErrorKind::WritableConflict { have });
            }
            // xen: non-WB cache attributes on a special (Xen heap) page: -EACCES.
            if value & PAGE_CACHE_ATTRS != 0 {
                return Err(PteErrorKind::CacheAttrsOnXenPage);
            }
            Ok(if rw {
                Ref::Typed(mfn, FrameType::Writable)
            } else {
                Ref::Page(mfn)
            })
        }
        have @ FrameClass::Ram { type_, .. } => {
            if !rw {
                return Ok(Ref::Page(mfn));
            }
            // xen: get_page_type(PGT_writable_page) fails for typed tables: -EBUSY.
            match type_ {
                FrameType::None | FrameType::Writable => Ok(Ref::Typed(mfn, FrameType::Writable)),
                _ => Err(PteErrorKind::WritableConflict { have }),
            }
        }
    }
}

/// Frame checks for a present L2..L4 entry (xen: get_page_from_l2e..l4e and the
/// `get_lN_linear_pagetable` fallback on -EINVAL).
fn check_upper(
    at: EntryAt,
    value: u64,
    cfg: PteConfig,
    frames: &impl FrameInfo,
) -> Result<(Ref, bool), PteErrorKind> {
    let mfn = pte_mfn(value);
    let want = match at.level.child_type() {
        Some(t) => t,
        None => return Err(PteErrorKind::BadSlot), // not reached: L1 handled by caller
    };
    let have = frames.frame_class(mfn);
    match have {
        FrameClass::NotGuest if mfn == PTE_INVALID_MFN => return Err(PteErrorKind::InvalidMfn),
        // xen: get_page_from_mfn fails -> -EINVAL (before any linear check).
        FrameClass::NotGuest => return Err(PteErrorKind::NotGuestFrame),
        FrameClass::Ram {
            type_: FrameType::None,
            ..
        } if mfn != at.table_mfn => return Ok((Ref::Typed(mfn, want), true)),
        FrameClass::Ram { type_, .. } if type_ == want && mfn != at.table_mfn => {
            return Ok((Ref::Typed(mfn, want), false));
        }
        _ => {}
    }
    // Type conflict: only a read-only linear map may still succeed (xen:
    // get_lN_linear_pagetable).
    if !cfg.linear_pt {
        return Err(PteErrorKind::LinearDisabled);
    }
    if value & _PAGE_RW != 0 {
        return Err(PteErrorKind::LinearWritable);
    }
    if mfn == at.table_mfn {
        // Self-map: no reference (the table can't hold a reference on itself).
        return Ok((Ref::None, false));
    }
    match have {
        FrameClass::Ram { type_, .. } if type_ == at.level.table_type() => {
            Ok((Ref::Typed(mfn, type_), false))
        }
        _ => Err(PteErrorKind::TypeConflict { want, have }),
    }
}

/// The value a guest read of the installed entry returns. kxen maps page tables
/// read-only and never traps reads, so this is the installed value as is under every
/// ABI: under [`PteAbi::Kxen`] that is what the guest wrote plus the adjust bits; under
/// the Xen ABIs it includes bit 52 (and bit 62 on grant mappings, debug).
pub fn guest_view(_at: EntryAt, installed: u64, _cfg: PteConfig, _side: &impl SideTable) -> u64 {
    installed
}

/// Record a grant mapping installed at `at` (by the grant-table code, which validates the
/// frame itself) and return the value to install: `value` adjusted as a mapping of
/// `kind`, with bit 62 under [`PteAbi::XenDebug`] (xen debug: `_PAGE_GNTTAB`).
pub fn install_grant_l1e(
    at: EntryAt,
    value: u64,
    kind: MappingKind,
    cfg: PteConfig,
    side: &mut impl SideTable,
) -> Result<u64, PteError> {
    let err = |kind| PteError {
        level: at.level,
        slot: at.slot,
        value,
        kind,
    };
    if at.level != Level::L1 || at.slot >= ENTRIES_PER_TABLE {
        return Err(err(PteErrorKind::BadSlot));
    }
    let mut v = adjust(Level::L1, value, kind, cfg.abi);
    if matches!(cfg.abi, PteAbi::XenDebug) && v & _PAGE_PRESENT != 0 {
        v |= _PAGE_GNTTAB;
    }
    let rec = SideEntry {
        kernel: kind == MappingKind::Kernel && v & _PAGE_PRESENT != 0,
        grant: v & _PAGE_PRESENT != 0,
    };
    side.set(at.table_mfn, at.slot, rec)
        .map_err(|_| err(PteErrorKind::SideTableFull))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::{make_pte, _PAGE_AVAIL0, _PAGE_PSE};
    use std::format;
    use std::string::ToString;
    use std::vec::Vec;

    const ALL_ABIS: [PteAbi; 3] = [PteAbi::Kxen, PteAbi::Xen, PteAbi::XenDebug];

    // Frames of the test domain.
    const T1: u64 = 0x100; // L1 table
    const T2: u64 = 0x200; // L2 table
    const T3: u64 = 0x300; // L3 table
    const T4: u64 = 0x400; // L4 table
    const T4B: u64 = 0x401; // another L4
    const T3B: u64 = 0x301; // another L3
    const T2B: u64 = 0x201; // another L2
    const DATA: u64 = 0x1000; // untyped RAM
    const WRITABLE: u64 = 0x1001; // RAM mapped writable somewhere
    const GDT: u64 = 0x1002; // descriptor table
    const SHARED: u64 = 0x1003; // shared_info-like, writable
    const SHARED_RO: u64 = 0x1004; // read-only shared page
    const OUTSIDE: u64 = 0x9_0000; // not the domain's
    const FREE: u64 = 0x8_0000; // untyped RAM far from the others

    struct Frames {
        over: [(u64, FrameClass); 13],
        default: FrameClass,
    }

    const fn ram(type_: FrameType) -> FrameClass {
        FrameClass::Ram {
            type_,
            pinned: false,
        }
    }

    impl Frames {
        fn domain() -> Self {
            Frames {
                over: [
                    (T1, ram(FrameType::L1)),
                    (T2, ram(FrameType::L2)),
                    (T3, ram(FrameType::L3)),
                    (T4, ram(FrameType::L4)),
                    (T4B, ram(FrameType::L4)),
                    (T3B, ram(FrameType::L3)),
                    (T2B, ram(FrameType::L2)),
                    (DATA, ram(FrameType::None)),
                    (WRITABLE, ram(FrameType::Writable)),
                    (GDT, ram(FrameType::SegDesc)),
                    (SHARED, FrameClass::SharedXen { writable: true }),
                    (SHARED_RO, FrameClass::SharedXen { writable: false }),
                    (OUTSIDE, FrameClass::NotGuest),
                ],
                // Everything below 16 GiB is untyped RAM, above is not the domain's.
                default: ram(FrameType::None),
            }
        }
    }

    impl FrameInfo for Frames {
        fn frame_class(&self, mfn: u64) -> FrameClass {
            if let Some((_, c)) = self.over.iter().find(|(m, _)| *m == mfn) {
                return *c;
            }
            if mfn < (1 << 22) {
                self.default
            } else {
                FrameClass::NotGuest
            }
        }
    }

    type Side = FixedSideTable<8>;

    fn table_of(level: Level) -> u64 {
        match level {
            Level::L1 => T1,
            Level::L2 => T2,
            Level::L3 => T3,
            Level::L4 => T4,
        }
    }

    fn upd(
        level: Level,
        slot: usize,
        new: u64,
        old: u64,
        cfg: PteConfig,
    ) -> Result<PteUpdate, PteError> {
        let mut side = Side::new();
        update_entry(
            EntryAt::new(table_of(level), level, slot),
            new,
            old,
            cfg,
            &Frames::domain(),
            &mut side,
        )
    }

    fn errno_of(level: Level, slot: usize, new: u64, cfg: PteConfig) -> Option<Errno> {
        upd(level, slot, new, 0, cfg).err().map(|e| e.errno())
    }

    const P: u64 = _PAGE_PRESENT;
    const RW: u64 = _PAGE_RW;
    const U: u64 = _PAGE_USER;
    const G: u64 = _PAGE_GLOBAL;
    const A: u64 = _PAGE_ACCESSED;
    const GK: u64 = _PAGE_GUEST_KERNEL;

    // ----- flags, table-driven over every bit ------------------------------------------------

    /// Bits a guest may set in a present entry, written out by hand from Xen's masks
    /// (not derived from this module's constants).
    fn allowed_bits(level: Level, cfg: PteConfig) -> Vec<u32> {
        let mut v: Vec<u32> = std::vec![0, 1, 2, 5, 6, 9, 10, 11];
        v.extend(12..=51); // address bits
        v.extend(52..=61);
        if !(level == Level::L1 && cfg.abi == PteAbi::XenDebug) {
            v.push(62);
        }
        v.push(63);
        if level == Level::L1 {
            v.push(8); // GLOBAL is allowed in L1 only
            if cfg.cache_attrs {
                v.extend([3, 4, 7]);
            }
        }
        v
    }

    /// Every frame is untyped RAM: address bits never change the verdict.
    struct AllRam;

    impl FrameInfo for AllRam {
        fn frame_class(&self, _mfn: u64) -> FrameClass {
            ram(FrameType::None)
        }
    }

    #[test]
    fn every_bit_at_every_level_is_allowed_or_refused_with_einval() {
        for abi in ALL_ABIS {
            for cache_attrs in [false, true] {
                let cfg = PteConfig {
                    abi,
                    cache_attrs,
                    linear_pt: true,
                };
                for level in Level::ALL {
                    let allowed = allowed_bits(level, cfg);
                    for bit in 0..64u32 {
                        let new = make_pte(FREE, P) | (1u64 << bit);
                        let mut side = Side::new();
                        let at = EntryAt::new(table_of(level), level, 5);
                        let r = update_entry(at, new, 0, cfg, &AllRam, &mut side);
                        if allowed.contains(&bit) {
                            let u = r.unwrap_or_else(|e| {
                                panic!("{abi:?} cache={cache_attrs} {level} bit {bit}: {e}")
                            });
                            // Only the documented adjust bits are added.
                            let added = u.value & !new;
                            let expect_added = match level {
                                Level::L1 if abi == PteAbi::Kxen => U | G,
                                Level::L1 => U | G | GK,
                                Level::L2 | Level::L3 => U,
                                Level::L4 => U | A,
                            };
                            assert_eq!(added & !expect_added, 0, "{level} bit {bit}");
                        } else {
                            let e = r.expect_err(&format!("{abi:?} {level} bit {bit} accepted"));
                            assert_eq!(e.errno(), Errno::EINVAL);
                            assert_eq!(e.kind, PteErrorKind::BadFlags { bits: 1 << bit });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn superpages_global_and_cache_bits_refused_above_l1() {
        for level in [Level::L2, Level::L3, Level::L4] {
            for bits in [_PAGE_PSE, G, _PAGE_PWT, _PAGE_PCD] {
                let cfg = PteConfig {
                    cache_attrs: true,
                    ..PteConfig::default()
                };
                assert_eq!(
                    errno_of(level, 1, make_pte(FREE, P | RW | bits), cfg),
                    Some(Errno::EINVAL),
                    "{level} {bits:#x}"
                );
            }
        }
    }

    #[test]
    fn cache_attrs_in_l1_need_permission() {
        for bits in [_PAGE_PWT, _PAGE_PCD, _PAGE_PAT] {
            let new = make_pte(DATA, P | RW | bits);
            assert_eq!(
                errno_of(Level::L1, 0, new, PteConfig::default()),
                Some(Errno::EINVAL)
            );
            let cfg = PteConfig {
                cache_attrs: true,
                ..PteConfig::default()
            };
            assert_eq!(errno_of(Level::L1, 0, new, cfg), None);
            // ... but never on a Xen-shared page (xen: -EACCES).
            let e = upd(Level::L1, 0, make_pte(SHARED, P | bits), 0, cfg).unwrap_err();
            assert_eq!(
                (e.errno(), e.kind),
                (Errno::EACCES, PteErrorKind::CacheAttrsOnXenPage)
            );
        }
    }

    #[test]
    fn gnttab_bit_refused_in_l1_only_under_xen_debug() {
        let new = make_pte(DATA, P | _PAGE_GNTTAB);
        let dbg = PteConfig::from(PteAbi::XenDebug);
        let e = upd(Level::L1, 3, new, 0, dbg).unwrap_err();
        assert_eq!(e.errno(), Errno::EINVAL);
        assert_eq!(e.kind, PteErrorKind::BadFlags { bits: _PAGE_GNTTAB });
        for abi in [PteAbi::Kxen, PteAbi::Xen] {
            let v = upd(Level::L1, 3, new, 0, abi.into()).unwrap().value;
            assert_ne!(v & _PAGE_GNTTAB, 0, "{abi:?}");
        }
        // Bit 62 is fine in upper levels even for a debug build.
        assert!(upd(Level::L2, 3, make_pte(T1, P | _PAGE_GNTTAB), 0, dbg).is_ok());
    }

    // ----- frames ------------------------------------------------------------------------------

    #[test]
    fn writable_l1_mapping_of_tables_and_descriptor_pages_is_ebusy() {
        for frame in [T1, T2, T3, T4, GDT, SHARED_RO] {
            for abi in ALL_ABIS {
                let e = upd(Level::L1, 7, make_pte(frame, P | RW), 0, abi.into()).unwrap_err();
                assert_eq!(e.errno(), Errno::EBUSY, "frame {frame:#x}");
                assert!(matches!(e.kind, PteErrorKind::WritableConflict { .. }));
                // Read-only is fine: guests map their own page tables read-only.
                let u = upd(Level::L1, 7, make_pte(frame, P), 0, abi.into()).unwrap();
                assert_eq!(u.new_ref, Ref::Page(frame));
            }
        }
        for frame in [DATA, WRITABLE, SHARED] {
            let u = upd(
                Level::L1,
                7,
                make_pte(frame, P | RW),
                0,
                PteConfig::default(),
            )
            .unwrap();
            assert_eq!(u.new_ref, Ref::Typed(frame, FrameType::Writable));
        }
    }

    #[test]
    fn frames_outside_the_domain_are_eperm_in_l1_and_einval_above() {
        let cfg = PteConfig::default();
        let e = upd(Level::L1, 0, make_pte(OUTSIDE, P), 0, cfg).unwrap_err();
        assert_eq!(
            (e.errno(), e.kind),
            (Errno::EPERM, PteErrorKind::NotGuestFrame)
        );
        let e = upd(Level::L1, 0, make_pte(PTE_INVALID_MFN, P), 0, cfg).unwrap_err();
        assert_eq!(
            (e.errno(), e.kind),
            (Errno::EINVAL, PteErrorKind::InvalidMfn)
        );
        for level in [Level::L2, Level::L3, Level::L4] {
            let e = upd(level, 0, make_pte(OUTSIDE, P), 0, cfg).unwrap_err();
            assert_eq!(
                (e.errno(), e.kind),
                (Errno::EINVAL, PteErrorKind::NotGuestFrame)
            );
        }
    }

    #[test]
    fn upper_levels_need_the_child_table_type_or_einval() {
        let cfg = PteConfig::default();
        let ok = [(Level::L2, T1), (Level::L3, T2), (Level::L4, T3)];
        for (level, child) in ok {
            let u = upd(level, 9, make_pte(child, P | RW | U), 0, cfg).unwrap();
            let t = level.child_type().unwrap();
            assert_eq!((u.new_ref, u.promote), (Ref::Typed(child, t), false));
        }
        let bad = [
            (Level::L2, WRITABLE),
            (Level::L2, GDT),
            (Level::L2, T3),
            (Level::L3, T1),
            (Level::L3, SHARED),
            (Level::L4, T2),
            (Level::L4, T1),
        ];
        for (level, frame) in bad {
            for rw in [0, RW] {
                let e = upd(level, 9, make_pte(frame, P | rw), 0, cfg).unwrap_err();
                assert_eq!(e.errno(), Errno::EINVAL, "{level} -> {frame:#x}");
            }
        }
    }

    #[test]
    fn untyped_frame_under_upper_entry_must_be_promoted() {
        for level in [Level::L2, Level::L3, Level::L4] {
            let u = upd(level, 2, make_pte(DATA, P | RW), 0, PteConfig::default()).unwrap();
            assert!(u.promote);
            assert_eq!(u.new_ref, Ref::Typed(DATA, level.child_type().unwrap()));
        }
        let u = upd(
            Level::L1,
            2,
            make_pte(DATA, P | RW),
            0,
            PteConfig::default(),
        )
        .unwrap();
        assert!(!u.promote);
    }

    // ----- linear (self) maps ------------------------------------------------------------------

    #[test]
    fn read_only_self_map_allowed_writable_refused() {
        for level in [Level::L2, Level::L3, Level::L4] {
            let t = table_of(level);
            let u = upd(level, 0x1ed, make_pte(t, P | A), 0, PteConfig::default()).unwrap();
            assert_eq!((u.new_ref, u.promote), (Ref::None, false), "{level}");
            let e = upd(level, 0x1ed, make_pte(t, P | RW), 0, PteConfig::default()).unwrap_err();
            assert_eq!(
                (e.errno(), e.kind),
                (Errno::EINVAL, PteErrorKind::LinearWritable)
            );
        }
    }

    #[test]
    fn read_only_linear_map_of_same_level_table_allowed() {
        for (level, other) in [(Level::L2, T2B), (Level::L3, T3B), (Level::L4, T4B)] {
            let u = upd(level, 3, make_pte(other, P), 0, PteConfig::default()).unwrap();
            assert_eq!(u.new_ref, Ref::Typed(other, level.table_type()));
            let e = upd(level, 3, make_pte(other, P | RW), 0, PteConfig::default()).unwrap_err();
            assert_eq!(e.kind, PteErrorKind::LinearWritable);
        }
        // A linear map must be the same level: L4 -> L2 is neither child nor linear.
        let e = upd(Level::L4, 3, make_pte(T2, P), 0, PteConfig::default()).unwrap_err();
        assert!(matches!(e.kind, PteErrorKind::TypeConflict { .. }));
        // With pv-linear-pt off even a read-only self-map is refused.
        let cfg = PteConfig {
            linear_pt: false,
            ..PteConfig::default()
        };
        let e = upd(Level::L4, 3, make_pte(T4, P), 0, cfg).unwrap_err();
        assert_eq!(
            (e.errno(), e.kind),
            (Errno::EINVAL, PteErrorKind::LinearDisabled)
        );
    }

    // ----- slots -------------------------------------------------------------------------------

    #[test]
    fn xen_l4_slots_refused_even_when_not_present() {
        for slot in 0..ENTRIES_PER_TABLE {
            for new in [0, make_pte(T3, P | RW)] {
                let r = upd(Level::L4, slot, new, 0, PteConfig::default());
                if (256..=271).contains(&slot) {
                    let e = r.unwrap_err();
                    assert_eq!((e.errno(), e.kind), (Errno::EINVAL, PteErrorKind::XenSlot));
                    assert!(e.to_string().contains("L4 update in Xen-private area"));
                } else {
                    assert!(r.is_ok(), "slot {slot}");
                }
            }
        }
        // Only L4 has Xen slots.
        assert!(upd(Level::L3, 256, make_pte(T2, P), 0, PteConfig::default()).is_ok());
    }

    #[test]
    fn slot_out_of_range_is_einval() {
        let e = upd(Level::L1, 512, 0, 0, PteConfig::default()).unwrap_err();
        assert_eq!((e.errno(), e.kind), (Errno::EINVAL, PteErrorKind::BadSlot));
    }

    #[test]
    fn non_present_entries_are_installed_verbatim() {
        for level in Level::ALL {
            for new in [
                0,
                !P,
                0x7fff_ffff_ffff_fffe,
                make_pte(OUTSIDE, RW | _PAGE_PSE),
            ] {
                let u = upd(level, 1, new, 0, PteAbi::XenDebug.into()).unwrap();
                assert_eq!((u.value, u.new_ref), (new, Ref::None));
            }
        }
    }

    // ----- adjust ------------------------------------------------------------------------------

    #[test]
    fn adjust_sets_xen_bits_per_level() {
        let v = make_pte(DATA, P | RW);
        let x = PteAbi::Xen;
        assert_eq!(adjust(Level::L1, v, MappingKind::Kernel, x), v | U | GK);
        assert_eq!(adjust(Level::L1, v | U, MappingKind::User, x), v | U | G);
        assert_eq!(
            adjust(Level::L1, v, MappingKind::Kernel, PteAbi::Kxen),
            v | U
        );
        assert_eq!(
            adjust(Level::L1, v | G, MappingKind::Kernel, PteAbi::Kxen),
            v | U
        );
        assert_eq!(
            adjust(Level::L1, v | U, MappingKind::User, PteAbi::Kxen),
            v | U | G
        );
        for abi in ALL_ABIS {
            assert_eq!(adjust(Level::L2, v, MappingKind::User, abi), v | U);
            assert_eq!(adjust(Level::L3, v, MappingKind::User, abi), v | U);
            assert_eq!(adjust(Level::L4, v, MappingKind::User, abi), v | U | A);
            assert_eq!(adjust(Level::L4, v & !P, MappingKind::User, abi), v & !P);
        }
    }

    #[test]
    fn adjust_is_idempotent_for_every_flag_pair() {
        for abi in ALL_ABIS {
            for level in Level::ALL {
                for kind in [MappingKind::Kernel, MappingKind::User] {
                    for a in 0..64 {
                        for b in [0, 1, 2, 5, 8, 52, 62, 63] {
                            let v = make_pte(DATA, P) | 1u64 << a | 1u64 << b;
                            let once = adjust(level, v, kind, abi);
                            assert_eq!(adjust(level, once, kind, abi), once);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn update_is_a_fixpoint_on_its_own_result() {
        // Writing back what was installed changes nothing, in every ABI and level.
        for abi in ALL_ABIS {
            for level in Level::ALL {
                let target = match level {
                    Level::L1 => DATA,
                    l => table_of(Level::from_number(l.number() - 1).unwrap()),
                };
                for flags in [
                    P,
                    P | RW,
                    P | U,
                    P | RW | U | A,
                    P | G,
                    P | _PAGE_NX | 0xe00,
                ] {
                    if level != Level::L1 && flags & G != 0 {
                        continue;
                    }
                    let at = EntryAt::new(table_of(level), level, 4);
                    let mut side = Side::new();
                    let f = Frames::domain();
                    let new = make_pte(target, flags);
                    let v1 = validate_and_adjust(at, new, 0, abi.into(), &f, &mut side).unwrap();
                    let v2 = validate_and_adjust(at, v1, v1, abi.into(), &f, &mut side).unwrap();
                    assert_eq!(v1, v2, "{abi:?} {level} {flags:#x}");
                }
            }
        }
    }

    // ----- the PTE ABI ---------------------------------------------------------------------

    const SOFT_BITS: [u32; 14] = [9, 10, 11, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62];

    #[test]
    fn kxen_abi_software_bits_round_trip_unchanged() {
        let f = Frames::domain();
        for level in Level::ALL {
            let target = if level == Level::L1 { DATA } else { FREE };
            for bit in SOFT_BITS {
                for user in [0, U] {
                    let at = EntryAt::new(table_of(level), level, 11);
                    let mut side = Side::new();
                    let cfg = PteConfig::default();
                    let new = make_pte(target, P | user) | 1u64 << bit;
                    let v = validate_and_adjust(at, new, 0, cfg, &f, &mut side).unwrap();
                    let read = guest_view(at, v, cfg, &side);
                    assert_eq!(read, v, "kxen returns the installed value as is");
                    let soft = _PAGE_AVAIL | _PAGE_AVAIL_HIGH;
                    assert_eq!(read & soft, new & soft, "{level} bit {bit}");
                    // Nothing but the adjust bits differs.
                    assert_eq!((read ^ new) & !(U | G | A), 0, "{level} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn kxen_abi_keeps_kernel_flag_in_side_table_not_bit_52() {
        let f = Frames::domain();
        let at = EntryAt::new(T1, Level::L1, 20);
        let mut side = Side::new();
        let cfg = PteConfig::default();
        let v = validate_and_adjust(at, make_pte(DATA, P | RW), 0, cfg, &f, &mut side).unwrap();
        assert_eq!(v, make_pte(DATA, P | RW | U));
        assert_eq!(
            side.get(T1, 20),
            SideEntry {
                kernel: true,
                grant: false
            }
        );
        // A user mapping: GLOBAL, no side record.
        let at2 = EntryAt::new(T1, Level::L1, 21);
        let v2 = validate_and_adjust(at2, make_pte(DATA, P | U), 0, cfg, &f, &mut side).unwrap();
        assert_eq!(v2, make_pte(DATA, P | U | G));
        assert_eq!(side.get(T1, 21), SideEntry::default());
        // The guest's own bit 52 on a user mapping is just a guest bit.
        let v3 =
            validate_and_adjust(at2, make_pte(DATA, P | U | GK), 0, cfg, &f, &mut side).unwrap();
        assert_eq!(v3, make_pte(DATA, P | U | G | GK));
        // Clearing the entry clears the record.
        validate_and_adjust(at, 0, v, cfg, &f, &mut side).unwrap();
        assert_eq!(side.get(T1, 20), SideEntry::default());
        assert_eq!(side.tables_in_use(), 0);
    }

    #[test]
    fn xen_abi_sets_bit_52_on_kernel_mappings_and_honours_guest_bit_52() {
        let f = Frames::domain();
        for abi in [PteAbi::Xen, PteAbi::XenDebug] {
            let cfg = PteConfig::from(abi);
            let at = EntryAt::new(T1, Level::L1, 30);
            let mut side = Side::new();
            let k = validate_and_adjust(at, make_pte(DATA, P), 0, cfg, &f, &mut side).unwrap();
            assert_eq!(k, make_pte(DATA, P | U | GK));
            assert!(side.get(T1, 30).kernel);
            // The guest writing USER|bit 52 itself: a kernel mapping, not GLOBAL (xen).
            let k2 =
                validate_and_adjust(at, make_pte(DATA, P | U | GK), 0, cfg, &f, &mut side).unwrap();
            assert_eq!(k2, make_pte(DATA, P | U | GK));
            assert!(side.get(T1, 30).kernel);
            // User mapping: GLOBAL, no bit 52.
            let u = validate_and_adjust(at, make_pte(DATA, P | U), 0, cfg, &f, &mut side).unwrap();
            assert_eq!(u, make_pte(DATA, P | U | G));
            assert!(!side.get(T1, 30).kernel);
            // Kernel mapping with GLOBAL: Xen keeps it and warns.
            let r = update_entry(at, make_pte(DATA, P | G), 0, cfg, &f, &mut side).unwrap();
            assert_eq!(r.value, make_pte(DATA, P | U | G | GK));
            assert!(r.global_kernel_warning);
        }
        // Kxen drops GLOBAL from kernel mappings instead.
        let mut side = Side::new();
        let at = EntryAt::new(T1, Level::L1, 30);
        let r = update_entry(
            at,
            make_pte(DATA, P | G),
            0,
            PteConfig::default(),
            &f,
            &mut side,
        )
        .unwrap();
        assert_eq!(r.value, make_pte(DATA, P | U));
        assert!(r.global_kernel_warning);
    }

    #[test]
    fn kxen_read_modify_write_keeps_a_kernel_mapping_kernel() {
        let f = Frames::domain();
        let cfg = PteConfig::default();
        let at = EntryAt::new(T1, Level::L1, 40);
        let mut side = Side::new();
        let v = validate_and_adjust(at, make_pte(DATA, P | RW), 0, cfg, &f, &mut side).unwrap();
        // The guest reads it back (USER set, no GLOBAL), clears RW and sets a soft bit.
        let read = guest_view(at, v, cfg, &side);
        let rmw = (read & !RW) | _PAGE_AVAIL0;
        let v2 = validate_and_adjust(at, rmw, v, cfg, &f, &mut side).unwrap();
        assert_eq!(v2, rmw);
        assert_eq!(v2 & G, 0);
        assert!(side.get(T1, 40).kernel);
        // Writing USER|GLOBAL, or USER for another frame, makes a user mapping.
        let v3 = validate_and_adjust(at, v2 | G, v2, cfg, &f, &mut side).unwrap();
        assert!(!side.get(T1, 40).kernel);
        assert_ne!(v3 & G, 0);
        let mut side = Side::new();
        let v = validate_and_adjust(at, make_pte(DATA, P), 0, cfg, &f, &mut side).unwrap();
        let other = make_pte(WRITABLE, P | U);
        let v4 = validate_and_adjust(at, other, v, cfg, &f, &mut side).unwrap();
        assert_eq!(v4, other | G);
        assert!(!side.get(T1, 40).kernel);
    }

    // ----- references, fast path, grants -----------------------------------------------------

    #[test]
    fn fast_path_skips_revalidation_and_reference_changes() {
        let f = Frames::domain();
        let cfg = PteConfig::default();
        let at = EntryAt::new(T1, Level::L1, 50);
        let mut side = Side::new();
        let v = validate_and_adjust(at, make_pte(DATA, P | RW | U), 0, cfg, &f, &mut side).unwrap();
        let r = update_entry(at, v | _PAGE_DIRTY | _PAGE_NX, v, cfg, &f, &mut side).unwrap();
        assert!(r.fast_path);
        assert_eq!((r.new_ref, r.old_ref), (Ref::None, Ref::None));
        // Dropping RW is a real change: new read-only ref, old writable ref dropped.
        let r = update_entry(at, v & !RW, v, cfg, &f, &mut side).unwrap();
        assert!(!r.fast_path);
        assert_eq!(r.new_ref, Ref::Page(DATA));
        assert_eq!(r.old_ref, Ref::Typed(DATA, FrameType::Writable));
        // Clearing drops the old reference.
        let r = update_entry(at, 0, v & !RW, cfg, &f, &mut side).unwrap();
        assert_eq!((r.value, r.old_ref), (0, Ref::Page(DATA)));
        // An upper-level self-map holds nothing.
        let at4 = EntryAt::new(T4, Level::L4, 0x1ed);
        assert_eq!(held_ref(at4, make_pte(T4, P), &f), Ref::None);
        assert_eq!(
            held_ref(at4, make_pte(T3, P | RW), &f),
            Ref::Typed(T3, FrameType::L3)
        );
    }

    #[test]
    fn grant_mappings_are_tracked_in_the_side_table() {
        let f = Frames::domain();
        let at = EntryAt::new(T1, Level::L1, 60);
        for abi in ALL_ABIS {
            let cfg = PteConfig::from(abi);
            let mut side = Side::new();
            let g = install_grant_l1e(
                at,
                make_pte(DATA, P | RW | U),
                MappingKind::User,
                cfg,
                &mut side,
            )
            .unwrap();
            assert_eq!(g & _PAGE_GNTTAB != 0, abi == PteAbi::XenDebug, "{abi:?}");
            assert!(side.get(T1, 60).grant);
            // An A/D-only rewrite keeps the grant record. (A debug Xen refuses bit 62 from
            // the guest, so there the guest writes it back without.)
            let back = if abi == PteAbi::XenDebug {
                g & !_PAGE_GNTTAB
            } else {
                g
            };
            let r = update_entry(at, back | A, g, cfg, &f, &mut side).unwrap();
            assert!(r.fast_path && !r.implicit_grant_unmap);
            assert!(side.get(T1, 60).grant);
            // Overwriting it with an ordinary mapping is an implicit grant unmap.
            let r =
                update_entry(at, make_pte(WRITABLE, P | U), r.value, cfg, &f, &mut side).unwrap();
            assert!(r.implicit_grant_unmap);
            assert!(!side.get(T1, 60).grant);
        }
        let mut side = Side::new();
        let e = install_grant_l1e(
            EntryAt::new(T2, Level::L2, 0),
            1,
            MappingKind::User,
            PteConfig::default(),
            &mut side,
        );
        assert!(e.is_err());
    }

    #[test]
    fn full_side_table_refuses_with_enomem_and_changes_nothing() {
        let f = Frames::domain();
        let cfg = PteConfig::default();
        let mut side = FixedSideTable::<1>::new();
        let a = EntryAt::new(T1, Level::L1, 0);
        validate_and_adjust(a, make_pte(DATA, P), 0, cfg, &f, &mut side).unwrap();
        // A second table needs a second record: full.
        let b = EntryAt::new(0x101, Level::L1, 0);
        let e = validate_and_adjust(b, make_pte(DATA, P), 0, cfg, &f, &mut side).unwrap_err();
        assert_eq!(
            (e.errno(), e.kind),
            (Errno::ENOMEM, PteErrorKind::SideTableFull)
        );
        // User mappings and clears need no record.
        assert!(validate_and_adjust(b, make_pte(DATA, P | U), 0, cfg, &f, &mut side).is_ok());
        assert!(validate_and_adjust(b, 0, 0, cfg, &f, &mut side).is_ok());
        assert!(side.get(T1, 0).kernel);
    }

    #[test]
    fn table_bits_store_two_bits_per_slot() {
        let mut t = TableBits::new();
        t.set(
            511,
            SideEntry {
                kernel: true,
                grant: true,
            },
        );
        t.set(
            0,
            SideEntry {
                kernel: false,
                grant: true,
            },
        );
        assert_eq!(
            t.get(511),
            SideEntry {
                kernel: true,
                grant: true
            }
        );
        assert_eq!(
            t.get(0),
            SideEntry {
                kernel: false,
                grant: true
            }
        );
        assert_eq!(t.get(1), SideEntry::default());
        t.set(
            512,
            SideEntry {
                kernel: true,
                grant: true,
            },
        ); // ignored
        assert_eq!(t.get(512), SideEntry::default());
        t.set(511, SideEntry::default());
        t.set(0, SideEntry::default());
        assert!(t.is_empty());
        assert_eq!(core::mem::size_of::<TableBits>(), 128);
    }

    #[test]
    fn errors_name_level_slot_and_value() {
        let e = upd(
            Level::L2,
            17,
            make_pte(DATA, P | G),
            0,
            PteConfig::default(),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("L2 slot 17 value 0x0000000001000101: "),
            "{s}"
        );
        assert!(s.contains("bad L2 flags 0x100"), "{s}");
        let e = upd(Level::L1, 3, make_pte(T2, P | RW), 0, PteConfig::default()).unwrap_err();
        assert!(e.to_string().contains("writable mapping of frame 0x200"));
    }

    #[test]
    fn pte_abi_config_names() {
        for abi in ALL_ABIS {
            assert_eq!(PteAbi::from_name(abi.name()), Some(abi));
        }
        assert_eq!(PteAbi::from_name("xen"), Some(PteAbi::Xen));
        assert_eq!(PteAbi::from_name("Xen"), None);
        assert_eq!(PteAbi::default(), PteAbi::Kxen);
        assert_eq!(PteConfig::default().abi, PteAbi::Kxen);
        assert!(PteConfig::default().linear_pt && !PteConfig::default().cache_attrs);
    }

    #[test]
    fn level_helpers_and_preserve_ad() {
        for (n, l) in (1u8..=4).zip(Level::ALL) {
            assert_eq!(Level::from_number(n), Some(l));
            assert_eq!(l.number(), n);
            assert_eq!(l.table_type().level(), Some(l));
        }
        assert_eq!(Level::from_number(0), None);
        assert_eq!(Level::from_number(5), None);
        assert_eq!(Level::L1.child_type(), None);
        assert_eq!(Level::L4.child_type(), Some(FrameType::L3));
        assert!(!FrameType::SegDesc.is_page_table() && FrameType::L2.is_page_table());
        let cur = make_pte(DATA, P | A | _PAGE_DIRTY | RW);
        assert_eq!(
            preserve_ad(make_pte(DATA, P), cur),
            make_pte(DATA, P | A | _PAGE_DIRTY)
        );
        assert_eq!(
            held_ref(
                EntryAt::new(T1, Level::L1, 0),
                make_pte(OUTSIDE, P),
                &Frames::domain()
            ),
            Ref::None
        );
    }

    #[test]
    fn masks_match_xen() {
        // base_disallow_mask over the flag bits: PWT, PCD, PAT/PSE, GLOBAL.
        assert_eq!(BASE_DISALLOW, 0x198);
        assert_eq!(Level::L1.disallow_mask(PteConfig::default()), 0x98);
        assert_eq!(
            Level::L1.disallow_mask(PteAbi::XenDebug.into()),
            0x98 | 1 << 62
        );
        assert_eq!(PTE_INVALID_MFN, 0xff_ffff_ffff);
    }

    // ----- properties ----------------------------------------------------------------------

    /// Frames classified by a hash of the MFN, so random entries hit every class.
    struct HashFrames(u64);

    impl FrameInfo for HashFrames {
        fn frame_class(&self, mfn: u64) -> FrameClass {
            let h = (mfn ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
            match h {
                0 => FrameClass::NotGuest,
                1 => FrameClass::SharedXen {
                    writable: h & 1 == 0,
                },
                2 => ram(FrameType::Writable),
                3 => ram(FrameType::L1),
                4 => ram(FrameType::L2),
                5 => ram(FrameType::L3),
                6 => ram(FrameType::L4),
                7 => ram(FrameType::SegDesc),
                8 => FrameClass::SharedXen { writable: false },
                _ => ram(FrameType::None),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_accepted_values_revalidate(
            level in 1u8..=4,
            slot in 0usize..600,
            flags in proptest::prelude::any::<u64>(),
            flag_mask in proptest::prelude::any::<u64>(),
            mfn in 0u64..64,
            table in 0u64..64,
            old in proptest::prelude::any::<u64>(),
            abi in 0usize..3,
            cache_attrs in proptest::prelude::any::<bool>(),
            linear_pt in proptest::prelude::any::<bool>(),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let level = Level::from_number(level).unwrap();
            let cfg = PteConfig { abi: ALL_ABIS[abi], cache_attrs, linear_pt };
            let frames = HashFrames(seed);
            // Mostly small frames with sparse flags, sometimes raw garbage.
            let new = if flag_mask & 7 == 0 { flags } else {
                make_pte(mfn, flags & flag_mask & PTE_FLAG_MASK)
            };
            let at = EntryAt::new(table, level, slot);
            let mut side = Side::new();
            let _ = update_entry(at, new, old, cfg, &frames, &mut side);
            let mut side = Side::new();
            if let Ok(u) = update_entry(at, new, 0, cfg, &frames, &mut side) {
                let v = u.value;
                // Writing back the installed value is a fixpoint (fast path).
                let again = validate_and_adjust(at, v, v, cfg, &frames, &mut side);
                proptest::prop_assert_eq!(again, Ok(v));
                // Full re-validation from an empty slot accepts it too; only a Kxen kernel
                // mapping (no marker bit, no history) turns into a user mapping.
                let mut fresh = Side::new();
                let w = validate_and_adjust(at, v, 0, cfg, &frames, &mut fresh);
                let kxen_kernel = cfg.abi == PteAbi::Kxen && level == Level::L1
                    && v & P != 0 && new & U == 0;
                let expect = if kxen_kernel { v | G } else { v };
                proptest::prop_assert_eq!(w, Ok(expect));
            }
        }
    }
}
