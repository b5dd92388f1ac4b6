//! `memory_op` sub-ops and layouts (xen: public/memory.h) and the e820 entry format the
//! `XENMEM_memory_map` buffer holds (xen: asm-x86/e820.h).

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

/// Grow the reservation by extents; arg = `XenMemoryReservation`.
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// Give extents back; arg = `XenMemoryReservation`.
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// Highest machine frame number in the system.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// Current reservation (pages) of a domain; arg = `domid_t`.
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// Maximum reservation (pages) of a domain; arg = `domid_t`.
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// MFNs backing the M2P table; arg = `XenMachphysMfnList`.
pub const XENMEM_MACHPHYS_MFN_LIST: u32 = 5;
/// Populate pseudo-physical frames; arg = `XenMemoryReservation`.
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// Map a special page into the physmap; arg = `XenAddToPhysmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// The domain's pseudo-physical e820 map; arg = `XenMemoryMap`.
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// The host e820 map (privileged); arg = `XenMemoryMap`.
pub const XENMEM_MACHINE_MEMORY_MAP: u32 = 10;
/// Exchange extents; arg = `XenMemoryExchange`.
pub const XENMEM_EXCHANGE: u32 = 11;
/// Where the M2P is mapped; arg = `XenMachphysMapping`.
pub const XENMEM_MACHPHYS_MAPPING: u32 = 12;
/// Set a domain's e820 map (toolstack).
pub const XENMEM_SET_MEMORY_MAP: u32 = 13;
/// Highest GPFN of a domain; arg = `domid_t`.
pub const XENMEM_MAXIMUM_GPFN: u32 = 14;
/// Remove a page from the physmap.
pub const XENMEM_REMOVE_FROM_PHYSMAP: u32 = 15;
/// Set the populate-on-demand target.
pub const XENMEM_SET_POD_TARGET: u32 = 16;
/// Get the populate-on-demand target.
pub const XENMEM_GET_POD_TARGET: u32 = 17;
/// Memory sharing: freed pages.
pub const XENMEM_GET_SHARING_FREED_PAGES: u32 = 18;
/// Memory sharing: shared pages.
pub const XENMEM_GET_SHARING_SHARED_PAGES: u32 = 19;
/// Paging operations.
pub const XENMEM_PAGING_OP: u32 = 20;
/// Memory access operations.
pub const XENMEM_ACCESS_OP: u32 = 21;
/// Sharing operations.
pub const XENMEM_SHARING_OP: u32 = 22;
/// Batched add_to_physmap.
pub const XENMEM_ADD_TO_PHYSMAP_BATCH: u32 = 23;
/// Claim pages for a domain.
pub const XENMEM_CLAIM_PAGES: u32 = 24;
/// Compat M2P frames.
pub const XENMEM_MACHPHYS_COMPAT_MFN_LIST: u32 = 25;
/// vNUMA information.
pub const XENMEM_GET_VNUMAINFO: u32 = 26;
/// Reserved device memory map.
pub const XENMEM_RESERVED_DEVICE_MEMORY_MAP: u32 = 27;
/// Acquire a resource's frames.
pub const XENMEM_ACQUIRE_RESOURCE: u32 = 28;

/// Bits of the `memory_op` command that select the sub-op; the rest carry the
/// continuation's start extent.
pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;
/// Shift of the start extent in the `memory_op` command word.
pub const MEMOP_EXTENT_SHIFT: u32 = 6;

/// Split a `memory_op` command word into (sub-op, start extent).
pub const fn split_memop_cmd(cmd: u64) -> (u32, u64) {
    ((cmd & MEMOP_CMD_MASK) as u32, cmd >> MEMOP_EXTENT_SHIFT)
}

/// Name of a `XENMEM_*` sub-op.
pub const fn name(op: u32) -> Option<&'static str> {
    Some(match op {
        XENMEM_INCREASE_RESERVATION => "increase_reservation",
        XENMEM_DECREASE_RESERVATION => "decrease_reservation",
        XENMEM_MAXIMUM_RAM_PAGE => "maximum_ram_page",
        XENMEM_CURRENT_RESERVATION => "current_reservation",
        XENMEM_MAXIMUM_RESERVATION => "maximum_reservation",
        XENMEM_MACHPHYS_MFN_LIST => "machphys_mfn_list",
        XENMEM_POPULATE_PHYSMAP => "populate_physmap",
        XENMEM_ADD_TO_PHYSMAP => "add_to_physmap",
        XENMEM_MEMORY_MAP => "memory_map",
        XENMEM_MACHINE_MEMORY_MAP => "machine_memory_map",
        XENMEM_EXCHANGE => "exchange",
        XENMEM_MACHPHYS_MAPPING => "machphys_mapping",
        XENMEM_SET_MEMORY_MAP => "set_memory_map",
        XENMEM_MAXIMUM_GPFN => "maximum_gpfn",
        XENMEM_REMOVE_FROM_PHYSMAP => "remove_from_physmap",
        XENMEM_SET_POD_TARGET => "set_pod_target",
        XENMEM_GET_POD_TARGET => "get_pod_target",
        XENMEM_GET_SHARING_FREED_PAGES => "get_sharing_freed_pages",
        XENMEM_GET_SHARING_SHARED_PAGES => "get_sharing_shared_pages",
        XENMEM_PAGING_OP => "paging_op",
        XENMEM_ACCESS_OP => "access_op",
        XENMEM_SHARING_OP => "sharing_op",
        XENMEM_ADD_TO_PHYSMAP_BATCH => "add_to_physmap_batch",
        XENMEM_CLAIM_PAGES => "claim_pages",
        XENMEM_MACHPHYS_COMPAT_MFN_LIST => "machphys_compat_mfn_list",
        XENMEM_GET_VNUMAINFO => "get_vnumainfo",
        XENMEM_RESERVED_DEVICE_MEMORY_MAP => "reserved_device_memory_map",
        XENMEM_ACQUIRE_RESOURCE => "acquire_resource",
        _ => return None,
    })
}

/// `mem_flags`: address-bits restriction in bits 0-7 (0 = none).
pub const fn xenmemf_address_bits(flags: u32) -> u32 {
    flags & 0xff
}
/// `mem_flags`: NUMA node request in bits 8-15 (stored as node + 1).
pub const fn xenmemf_node(flags: u32) -> Option<u32> {
    match (flags >> 8) & 0xff {
        0 => None,
        n => Some(n - 1),
    }
}
/// `mem_flags`: populate on demand.
pub const XENMEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
/// `mem_flags`: the node request is exact.
pub const XENMEMF_EXACT_NODE_REQUEST: u32 = 1 << 17;
/// `mem_flags`: the node is a virtual node.
pub const XENMEMF_VNODE: u32 = 1 << 18;

/// `struct xen_memory_reservation` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryReservation {
    /// Guest handle of an array of `xen_pfn_t` (may be NULL for decrease).
    pub extent_start: u64,
    /// Number of extents.
    pub nr_extents: u64,
    /// log2 of pages per extent.
    pub extent_order: u32,
    /// `XENMEMF_*` (formerly `address_bits`).
    pub mem_flags: u32,
    /// Target domain (`DOMID_SELF` for unprivileged callers).
    pub domid: u16,
    /// Tail padding (explicit).
    pub _pad: [u16; 3],
}
impl_pod!(XenMemoryReservation { u64, u64, u32, u32, u16, [u16; 3] });
const _: () = assert!(size_of::<XenMemoryReservation>() == 32);
const _: () = assert!(offset_of!(XenMemoryReservation, extent_order) == 16);
const _: () = assert!(offset_of!(XenMemoryReservation, domid) == 24);

/// `struct xen_memory_exchange` (72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryExchange {
    /// Extents to give up.
    pub input: XenMemoryReservation,
    /// Extents to receive.
    pub output: XenMemoryReservation,
    /// OUT: extents exchanged so far.
    pub nr_exchanged: u64,
}
impl_pod!(XenMemoryExchange {
    XenMemoryReservation,
    XenMemoryReservation,
    u64
});
const _: () = assert!(size_of::<XenMemoryExchange>() == 72);

/// `struct xen_machphys_mfn_list` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMachphysMfnList {
    /// IN: capacity of `extent_start`.
    pub max_extents: u32,
    /// Padding (explicit).
    pub _pad0: u32,
    /// Guest handle of an array of `xen_pfn_t`.
    pub extent_start: u64,
    /// OUT: entries written.
    pub nr_extents: u32,
    /// Tail padding (explicit).
    pub _pad1: u32,
}
impl_pod!(XenMachphysMfnList {
    u32,
    u32,
    u64,
    u32,
    u32
});
const _: () = assert!(size_of::<XenMachphysMfnList>() == 24);
const _: () = assert!(offset_of!(XenMachphysMfnList, nr_extents) == 16);

/// `struct xen_machphys_mapping` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMachphysMapping {
    /// Start virtual address of the M2P.
    pub v_start: u64,
    /// End (exclusive) virtual address.
    pub v_end: u64,
    /// Largest MFN that can be looked up.
    pub max_mfn: u64,
}
impl_pod!(XenMachphysMapping { u64, u64, u64 });
const _: () = assert!(size_of::<XenMachphysMapping>() == 24);

/// `struct xen_add_to_physmap` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    /// Domain.
    pub domid: u16,
    /// Number of pages (gmfn_range only).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: u64,
    /// GPFN where the page appears.
    pub gpfn: u64,
}
impl_pod!(XenAddToPhysmap {
    u16,
    u16,
    u32,
    u64,
    u64
});
const _: () = assert!(size_of::<XenAddToPhysmap>() == 24);

/// Map space: the shared info page.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// Map space: a grant table frame.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// Map space: a GMFN.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// Map space: a GMFN range.
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// Map space: a foreign GMFN.
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// Map space: device MMIO.
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;

/// `struct xen_memory_map` (16 bytes): IN capacity / OUT count, and a handle to an array of
/// e820 entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryMap {
    /// IN: entries the buffer can hold; OUT: entries written.
    pub nr_entries: u32,
    /// Padding (explicit).
    pub _pad: u32,
    /// Guest handle of an array of `E820Entry`.
    pub buffer: u64,
}
impl_pod!(XenMemoryMap { u32, u32, u64 });
const _: () = assert!(size_of::<XenMemoryMap>() == 16);
const _: () = assert!(offset_of!(XenMemoryMap, buffer) == 8);

/// An e820 entry, packed (20 bytes) as in the BIOS/Xen format.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_*` type.
    pub ty: u32,
}
impl_pod!(E820Entry { u64, u64, u32 });
const _: () = assert!(size_of::<E820Entry>() == 20);

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved.
pub const E820_RESERVED: u32 = 2;
/// ACPI reclaimable.
pub const E820_ACPI: u32 = 3;
/// ACPI NVS.
pub const E820_NVS: u32 = 4;
/// Unusable.
pub const E820_UNUSABLE: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn numbers_match_memory_h() {
        assert_eq!(XENMEM_INCREASE_RESERVATION, 0);
        assert_eq!(XENMEM_MAXIMUM_RAM_PAGE, 2);
        assert_eq!(XENMEM_POPULATE_PHYSMAP, 6);
        assert_eq!(XENMEM_MEMORY_MAP, 9);
        assert_eq!(XENMEM_MACHINE_MEMORY_MAP, 10);
        assert_eq!(XENMEM_EXCHANGE, 11);
        assert_eq!(XENMEM_MACHPHYS_MAPPING, 12);
        assert_eq!(name(12), Some("machphys_mapping"));
        assert_eq!(name(8), None);
        assert_eq!(name(29), None);
    }

    #[test]
    fn memop_cmd_carries_start_extent() {
        assert_eq!(split_memop_cmd(6), (6, 0));
        assert_eq!(split_memop_cmd((5 << 6) | 1), (1, 5));
        assert_eq!(xenmemf_address_bits(32 | (3 << 8)), 32);
        assert_eq!(xenmemf_node(3 << 8), Some(2));
        assert_eq!(xenmemf_node(0), None);
    }

    #[test]
    fn reservation_layout() {
        let r = XenMemoryReservation {
            extent_start: 0x1000,
            nr_extents: 3,
            extent_order: 9,
            mem_flags: 0,
            domid: crate::mmu::DOMID_SELF,
            _pad: [0; 3],
        };
        let b = r.as_bytes();
        assert_eq!(b[16], 9);
        assert_eq!(&b[24..26], &0x7ff0u16.to_le_bytes());
        assert_eq!(XenMemoryReservation::from_bytes(b), Some(r));
        assert_eq!(offset_of!(XenMemoryExchange, output), 32);
        assert_eq!(offset_of!(XenMemoryExchange, nr_exchanged), 64);
    }

    #[test]
    fn e820_entry_is_packed_20_bytes() {
        let e = E820Entry {
            addr: 0x10_0000,
            size: 0x4000_0000,
            ty: E820_RAM,
        };
        let b = e.as_bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(&b[16..], &1u32.to_le_bytes());
        let two: [u8; 40] = {
            let mut t = [0u8; 40];
            t[..20].copy_from_slice(b);
            t[20..].copy_from_slice(b);
            t
        };
        assert_eq!(E820Entry::from_bytes(&two[20..]), Some(e));
        assert_eq!(size_of::<XenMachphysMapping>(), 24);
    }
}
