//! `XENFEAT_*` feature numbers, their names, and the [`FeatureSet`] bitmap.
//!
//! Source: xen public/features.h (numbers), common/libelf/libelf-dominfo.c (the names
//! accepted in the `FEATURES` ELF note).

use core::fmt;

/// Guest may write its page tables directly (Xen emulates the writes).
pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
/// Guest may write its descriptor tables directly.
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
/// The hypervisor translates pseudo-physical to machine addresses (not for PV here).
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
/// The guest kernel runs in supervisor mode (ring 0).
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
/// PAE page directories may live above 4 GiB.
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
/// `MMU_PT_UPDATE_PRESERVE_AD` is available.
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
/// `MMUEXT_CLEAR_PAGE`/`MMUEXT_COPY_PAGE` are available.
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
/// Grant mappings may use the available PTE bits.
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;
/// HVM: event delivery through a callback vector.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
/// HVM: safe PV clock.
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
/// HVM: PIRQs via event channels.
pub const XENFEAT_HVM_PIRQS: u32 = 10;
/// The kernel can run as dom0 (privileged). Same meaning as the 2011 proposal's
/// `XENFEAT_privileged`.
pub const XENFEAT_DOM0: u32 = 11;
/// Upstream: the deprecated `XENFEAT_grant_map_identity`.
pub const XENFEAT_GRANT_MAP_IDENTITY: u32 = 12;
/// kxen's meaning of bit 12: `XENFEAT_unprivileged` from the July 2011 xen-devel
/// proposal (privileged = 11, unprivileged = 12, "absence of both = both"). Upstream
/// never merged it (bit 12 became `grant_map_identity`, now deprecated); kxen honours it
/// only in the `SUPPORTED_FEATURES` note and only reports it back to kernels that
/// declared it (see `negotiate`).
pub const XENFEAT_UNPRIVILEGED: u32 = 12;
/// `XENMEM_get_vnumainfo` is supported.
pub const XENFEAT_MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
/// ARM: SMCCC is supported.
pub const XENFEAT_ARM_SMCCC_SUPPORTED: u32 = 14;
/// Linux may use the RSDP without restriction.
pub const XENFEAT_LINUX_RSDP_UNRESTRICTED: u32 = 15;
/// The domain is not direct-mapped.
pub const XENFEAT_NOT_DIRECT_MAPPED: u32 = 16;
/// The domain is direct-mapped.
pub const XENFEAT_DIRECT_MAPPED: u32 = 17;
/// `VCPUOP_register_runstate_phys_area` is supported.
pub const XENFEAT_RUNSTATE_PHYS_AREA: u32 = 18;
/// `VCPUOP_register_vcpu_time_phys_area` is supported.
pub const XENFEAT_VCPU_TIME_PHYS_AREA: u32 = 19;
/// Device models see all MSI-X writes.
pub const XENFEAT_DM_MSIX_ALL_WRITES: u32 = 20;

/// Number of 32-bit submaps Xen defines (`XENVER_get_features` submap_idx 0 only).
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// Names of every `XENFEAT_*` bit kxen knows, indexed by bit (for display).
/// Bit 12 is shown with kxen's meaning, "unprivileged".
pub const XENFEAT_NAMES: [&str; 21] = [
    "writable_page_tables",
    "writable_descriptor_tables",
    "auto_translated_physmap",
    "supervisor_mode_kernel",
    "pae_pgdir_above_4gb",
    "mmu_pt_update_preserve_ad",
    "highmem_assist",
    "gnttab_map_avail_bits",
    "hvm_callback_vector",
    "hvm_safe_pvclock",
    "hvm_pirqs",
    "dom0",
    "unprivileged",
    "memory_op_vnode_supported",
    "ARM_SMCCC_supported",
    "linux_rsdp_unrestricted",
    "not_direct_mapped",
    "direct_mapped",
    "runstate_phys_area",
    "vcpu_time_phys_area",
    "dm_msix_all_writes",
];

/// The names a kernel may use in its `FEATURES` string note, with their bits.
// xen: libelf-dominfo.c elf_xen_feature_names (exactly these seven).
pub const ELFNOTE_FEATURE_NAMES: [(&str, u32); 7] = [
    ("writable_page_tables", XENFEAT_WRITABLE_PAGE_TABLES),
    (
        "writable_descriptor_tables",
        XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
    ),
    ("auto_translated_physmap", XENFEAT_AUTO_TRANSLATED_PHYSMAP),
    ("supervisor_mode_kernel", XENFEAT_SUPERVISOR_MODE_KERNEL),
    ("pae_pgdir_above_4gb", XENFEAT_PAE_PGDIR_ABOVE_4GB),
    ("hvm_callback_vector", XENFEAT_HVM_CALLBACK_VECTOR),
    ("dom0", XENFEAT_DOM0),
];

/// The display name of a feature bit, if kxen knows it.
pub fn feature_name(bit: u32) -> Option<&'static str> {
    XENFEAT_NAMES.get(usize::try_from(bit).ok()?).copied()
}

/// The bit of a name accepted in the `FEATURES` note (exact match).
pub fn elfnote_feature_bit(name: &str) -> Option<u32> {
    ELFNOTE_FEATURE_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, b)| b)
}

/// Number of 32-bit words in a [`FeatureSet`].
pub const FEATURE_WORDS: usize = 4;

/// A bitmap of `XENFEAT_*` bits: `FEATURE_WORDS` 32-bit submaps (128 bits), word `i`
/// being `XENVER_get_features` submap `i`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeatureSet {
    words: [u32; FEATURE_WORDS],
}

impl FeatureSet {
    /// Number of bits a set can hold.
    pub const CAPACITY: u32 = (FEATURE_WORDS as u32) * 32;
    /// The empty set.
    pub const EMPTY: FeatureSet = FeatureSet {
        words: [0; FEATURE_WORDS],
    };

    /// The empty set.
    pub const fn new() -> Self {
        Self::EMPTY
    }

    /// A set from its 32-bit submaps.
    pub const fn from_words(words: [u32; FEATURE_WORDS]) -> Self {
        FeatureSet { words }
    }

    /// The 32-bit submaps.
    pub const fn words(&self) -> [u32; FEATURE_WORDS] {
        self.words
    }

    /// This set plus `bit` (bits beyond [`Self::CAPACITY`] are ignored). Usable in consts.
    pub const fn with(self, bit: u32) -> Self {
        let mut s = self;
        if bit < Self::CAPACITY {
            s.words[(bit / 32) as usize] |= 1 << (bit % 32);
        }
        s
    }

    /// Adds `bit`; returns false (and changes nothing) if it is beyond the capacity.
    pub fn set(&mut self, bit: u32) -> bool {
        if bit >= Self::CAPACITY {
            return false;
        }
        *self = self.with(bit);
        true
    }

    /// Removes `bit` (no-op beyond the capacity).
    pub fn clear(&mut self, bit: u32) {
        if bit < Self::CAPACITY {
            self.words[(bit / 32) as usize] &= !(1 << (bit % 32));
        }
    }

    /// Whether `bit` is set (false beyond the capacity).
    pub const fn contains(&self, bit: u32) -> bool {
        bit < Self::CAPACITY && self.words[(bit / 32) as usize] & (1 << (bit % 32)) != 0
    }

    /// Submap `idx` (0 beyond the capacity).
    pub fn submap(&self, idx: usize) -> u32 {
        self.words.get(idx).copied().unwrap_or(0)
    }

    /// ORs `value` into submap `idx`; returns false if `idx` is beyond the capacity.
    pub fn or_submap(&mut self, idx: usize, value: u32) -> bool {
        match self.words.get_mut(idx) {
            Some(w) => {
                *w |= value;
                true
            }
            None => false,
        }
    }

    /// Whether no bit is set.
    pub const fn is_empty(&self) -> bool {
        let mut i = 0;
        while i < FEATURE_WORDS {
            if self.words[i] != 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Bits in either set.
    pub const fn union(self, other: FeatureSet) -> FeatureSet {
        let mut s = self;
        let mut i = 0;
        while i < FEATURE_WORDS {
            s.words[i] |= other.words[i];
            i += 1;
        }
        s
    }

    /// Bits in both sets.
    pub const fn intersection(self, other: FeatureSet) -> FeatureSet {
        let mut s = self;
        let mut i = 0;
        while i < FEATURE_WORDS {
            s.words[i] &= other.words[i];
            i += 1;
        }
        s
    }

    /// Bits in `self` but not in `other`.
    pub const fn difference(self, other: FeatureSet) -> FeatureSet {
        let mut s = self;
        let mut i = 0;
        while i < FEATURE_WORDS {
            s.words[i] &= !other.words[i];
            i += 1;
        }
        s
    }

    /// Whether every bit of `self` is in `other`.
    pub const fn is_subset(&self, other: &FeatureSet) -> bool {
        self.difference(*other).is_empty()
    }

    /// The set bits, ascending.
    pub fn iter(&self) -> FeatureIter {
        FeatureIter {
            set: *self,
            next: 0,
        }
    }

    /// The names of the set bits that have one ([`feature_name`]), ascending.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        self.iter().filter_map(feature_name)
    }
}

impl fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FeatureSet{")?;
        for (i, bit) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match feature_name(bit) {
                Some(n) => f.write_str(n)?,
                None => write!(f, "bit{bit}")?,
            }
        }
        f.write_str("}")
    }
}

/// Iterator over the bits of a [`FeatureSet`].
#[derive(Debug, Clone)]
pub struct FeatureIter {
    set: FeatureSet,
    next: u32,
}

impl Iterator for FeatureIter {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        while self.next < FeatureSet::CAPACITY {
            let bit = self.next;
            self.next += 1;
            if self.set.contains(bit) {
                return Some(bit);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    #[test]
    fn feature_numbers_match_xen_public_features_h() {
        assert_eq!(XENFEAT_WRITABLE_PAGE_TABLES, 0);
        assert_eq!(XENFEAT_PAE_PGDIR_ABOVE_4GB, 4);
        assert_eq!(XENFEAT_HVM_CALLBACK_VECTOR, 8);
        assert_eq!(XENFEAT_DOM0, 11);
        assert_eq!(XENFEAT_UNPRIVILEGED, 12);
        assert_eq!(XENFEAT_LINUX_RSDP_UNRESTRICTED, 15);
        assert_eq!(XENFEAT_DM_MSIX_ALL_WRITES, 20);
        assert_eq!(XENFEAT_NR_SUBMAPS, 1);
        assert_eq!(feature_name(11), Some("dom0"));
        assert_eq!(feature_name(21), None);
    }

    #[test]
    fn elfnote_names_are_exactly_xens_seven() {
        assert_eq!(elfnote_feature_bit("dom0"), Some(11));
        assert_eq!(elfnote_feature_bit("hvm_callback_vector"), Some(8));
        assert_eq!(elfnote_feature_bit("pae_pgdir_above_4gb"), Some(4));
        // Known XENFEAT names that Xen's FEATURES table does not accept.
        assert_eq!(elfnote_feature_bit("highmem_assist"), None);
        assert_eq!(elfnote_feature_bit("Dom0"), None);
        for (name, bit) in ELFNOTE_FEATURE_NAMES {
            assert_eq!(feature_name(bit), Some(name));
        }
    }

    #[test]
    fn set_contains_iter_and_capacity_bounds() {
        let mut s = FeatureSet::new();
        assert!(s.is_empty());
        assert!(s.set(0));
        assert!(s.set(11));
        assert!(s.set(127));
        assert!(!s.set(128));
        assert!(!s.contains(128) && !s.contains(u32::MAX));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 11, 127]);
        assert_eq!(s.submap(0), 0x801);
        assert_eq!(s.submap(3), 0x8000_0000);
        assert_eq!(s.submap(9), 0);
        s.clear(11);
        assert!(!s.contains(11));
        assert_eq!(s.names().collect::<Vec<_>>(), ["writable_page_tables"]);
    }

    #[test]
    fn set_algebra() {
        let a = FeatureSet::EMPTY.with(0).with(11);
        let b = FeatureSet::EMPTY.with(11).with(15);
        assert_eq!(a.union(b).submap(0), 0x8801);
        assert_eq!(a.intersection(b).submap(0), 0x800);
        assert_eq!(a.difference(b).submap(0), 0x1);
        assert!(a.intersection(b).is_subset(&a));
        assert!(!a.is_subset(&b));
    }

    #[test]
    fn debug_prints_names_and_unnamed_bits() {
        let s = FeatureSet::from_words([0x8801, 0, 1, 0]);
        assert_eq!(
            format!("{s:?}"),
            "FeatureSet{writable_page_tables, dom0, linux_rsdp_unrestricted, bit64}"
        );
    }
}
