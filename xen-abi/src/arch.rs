//! x86_64 architecture facts of the Xen PV ABI (public/arch-x86/xen.h,
//! public/arch-x86/xen-x86_64.h), kxen's own layout choices, and the [`Pod`] trait used for
//! byte-level copy-in/copy-out of every guest-visible structure in this crate.

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Plain-old-data
// ---------------------------------------------------------------------------------------------

/// A plain-old-data type that may be viewed as bytes and rebuilt from arbitrary bytes.
///
/// Used for copy-in/copy-out of guest structures: read the guest bytes with
/// [`Pod::from_bytes`] (works on any alignment), write them back with [`Pod::as_bytes`].
///
/// # Safety
///
/// Implement only for types that are `#[repr(C)]`, `#[repr(transparent)]` or
/// `#[repr(C, packed)]` and
/// - contain **no padding bytes** (make every hole an explicit `_pad` field), so that
///   [`Pod::as_bytes`] never exposes uninitialised memory;
/// - accept **every bit pattern** (integers and arrays of integers only: no `bool`, `char`,
///   enums, references, pointers or `NonZero*`), so that [`Pod::from_bytes`] and
///   [`Pod::zeroed`] always produce a valid value.
///
/// Inside this crate use the `impl_pod!` macro, which also asserts at compile time that the
/// type has no interior padding in the cases it can check (size equals the sum of the
/// listed field sizes).
pub unsafe trait Pod: Copy + 'static {
    /// The value's bytes, in memory order (little-endian on x86_64).
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `self` is a valid reference to `size_of::<Self>()` bytes; the trait
        // contract guarantees there is no padding, so every byte is initialised.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// The value's bytes, mutable. Any write leaves a valid value (every bit pattern is).
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: exclusive borrow of `size_of::<Self>()` initialised bytes (no padding);
        // the contract guarantees any bytes written form a valid `Self`.
        unsafe {
            core::slice::from_raw_parts_mut((self as *mut Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// Rebuild a value from exactly `size_of::<Self>()` bytes; `None` on any other length.
    /// The slice may have any alignment.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        Self::read_from_prefix(bytes)
    }

    /// Rebuild a value from the first `size_of::<Self>()` bytes; `None` if `bytes` is shorter.
    fn read_from_prefix(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the slice holds at least `size_of::<Self>()` readable bytes,
        // `read_unaligned` has no alignment requirement, and the trait contract makes every
        // bit pattern a valid `Self`.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// Copy the value into the start of `out`; `None` (nothing written) if `out` is shorter.
    fn write_to_prefix(&self, out: &mut [u8]) -> Option<()> {
        let src = self.as_bytes();
        out.get_mut(..src.len())?.copy_from_slice(src);
        Some(())
    }

    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: the trait contract makes every bit pattern, including all zeroes, valid.
        unsafe { core::mem::zeroed() }
    }
}

macro_rules! impl_pod_prim {
    ($($t:ty),*) => {$(
        // SAFETY: primitive integers have no padding and accept every bit pattern.
        unsafe impl Pod for $t {}
    )*};
}
impl_pod_prim!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array of `Pod` has no padding between elements (size is a multiple of the
// alignment) and accepts every bit pattern because each element does.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Implement [`Pod`] for `#[repr(C)]` structs of this crate, asserting at compile time that
/// `size_of` equals the sum of the given field types' sizes (i.e. there is no hidden padding).
///
/// ```text
/// impl_pod!(MmuUpdate { u64, u64 });
/// ```
macro_rules! impl_pod {
    ($($t:ty { $($f:ty),* $(,)? }),* $(,)?) => {$(
        const _: () = assert!(
            ::core::mem::size_of::<$t>() == 0 $(+ ::core::mem::size_of::<$f>())*,
            "Pod type has hidden padding"
        );
        // SAFETY: the assertion above proves there is no padding; the listed field types are
        // integers or arrays of integers (checked by requiring `Pod` below), so every bit
        // pattern is valid.
        unsafe impl $crate::arch::Pod for $t where $($f: $crate::arch::Pod,)* {}
    )*};
}
pub(crate) use impl_pod;

/// `impl Default` as the all-zero value, for `Pod` structs with arrays longer than 32.
macro_rules! impl_zeroed_default {
    ($($t:ty),* $(,)?) => {$(
        impl Default for $t {
            fn default() -> Self {
                <$t as $crate::arch::Pod>::zeroed()
            }
        }
    )*};
}
pub(crate) use impl_zeroed_default;

/// Copy `s` into a NUL-padded fixed C char array, truncated so that at least one NUL byte
/// always terminates it (as Xen's `safe_strcpy` does).
pub const fn c_string<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i + 1 < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The bytes of a NUL-terminated fixed C char array up to (not including) the first NUL.
pub fn c_str_bytes(buf: &[u8]) -> &[u8] {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..end]
}

// ---------------------------------------------------------------------------------------------
// Pages and virtual addresses
// ---------------------------------------------------------------------------------------------

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the in-page offset bits.
pub const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;
/// Entries in one page-table page (any level).
pub const PT_ENTRIES: u64 = 512;
/// Shift of the L4 index in a virtual address.
pub const L4_SHIFT: u32 = 39;
/// Shift of the L3 index.
pub const L3_SHIFT: u32 = 30;
/// Shift of the L2 index.
pub const L2_SHIFT: u32 = 21;
/// Shift of the L1 index.
pub const L1_SHIFT: u32 = 12;
/// Bytes covered by one L4 slot (512 GiB).
pub const L4_SLOT_SIZE: u64 = 1 << L4_SHIFT;

/// L4 slot (0..512) of a virtual address.
pub const fn l4_slot(va: u64) -> usize {
    ((va >> L4_SHIFT) & (PT_ENTRIES - 1)) as usize
}
/// L3 index of a virtual address.
pub const fn l3_index(va: u64) -> usize {
    ((va >> L3_SHIFT) & (PT_ENTRIES - 1)) as usize
}
/// L2 index of a virtual address.
pub const fn l2_index(va: u64) -> usize {
    ((va >> L2_SHIFT) & (PT_ENTRIES - 1)) as usize
}
/// L1 index of a virtual address.
pub const fn l1_index(va: u64) -> usize {
    ((va >> L1_SHIFT) & (PT_ENTRIES - 1)) as usize
}

/// First (canonical) virtual address of L4 slot `slot` (taken modulo 512); slots 256..512
/// are sign-extended into the upper half.
pub const fn l4_slot_base(slot: usize) -> u64 {
    canonicalize(((slot as u64) & (PT_ENTRIES - 1)) << L4_SHIFT)
}

/// Sign-extend bit 47 into bits 48..63.
pub const fn canonicalize(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

/// Whether `va` is canonical for 4-level paging (bits 48..63 copy bit 47).
pub const fn is_canonical(va: u64) -> bool {
    canonicalize(va) == va
}

/// Page frame number of an address.
pub const fn pfn_of(addr: u64) -> u64 {
    addr >> PAGE_SHIFT
}
/// Address of a page frame number (wrapping on absurd inputs; check the pfn first).
pub const fn pfn_to_addr(pfn: u64) -> u64 {
    pfn.wrapping_shl(PAGE_SHIFT)
}
/// Whether an address is page aligned.
pub const fn is_page_aligned(addr: u64) -> bool {
    addr & PAGE_OFFSET_MASK == 0
}

// ---------------------------------------------------------------------------------------------
// Xen's reserved virtual area (xen: public/arch-x86/xen-x86_64.h)
// ---------------------------------------------------------------------------------------------

/// Start of the area Xen reserves in every 64-bit PV address space (L4 slot 256).
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of Xen's reserved area (L4 slot 272).
pub const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
/// First L4 slot reserved for Xen (xen: ROOT_PAGETABLE_FIRST_XEN_SLOT).
pub const XEN_FIRST_L4_SLOT: usize = 256;
/// Last L4 slot reserved for Xen, inclusive (xen: ROOT_PAGETABLE_LAST_XEN_SLOT).
pub const XEN_LAST_L4_SLOT: usize = 271;
/// Where Xen itself maps the read-only M2P table.
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of Xen's M2P area (256 GiB).
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;
/// Entries (8 bytes each) Xen's M2P area can hold.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;

/// Whether `va` lies in Xen's reserved area `[HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END)`.
pub const fn in_hypervisor_range(va: u64) -> bool {
    va >= HYPERVISOR_VIRT_START && va < HYPERVISOR_VIRT_END
}
/// Whether L4 slot `slot` belongs to Xen (256..=271), i.e. is not guest-writable.
pub const fn is_xen_l4_slot(slot: usize) -> bool {
    slot >= XEN_FIRST_L4_SLOT && slot <= XEN_LAST_L4_SLOT
}

// ---------------------------------------------------------------------------------------------
// GDT and selectors (xen: public/arch-x86/xen.h, xen-x86_64.h)
// ---------------------------------------------------------------------------------------------

/// First GDT page Xen reserves for itself.
pub const FIRST_RESERVED_GDT_PAGE: u64 = 14;
/// First reserved GDT byte.
pub const FIRST_RESERVED_GDT_BYTE: u64 = FIRST_RESERVED_GDT_PAGE * 4096;
/// First reserved GDT entry (8-byte descriptors): 7168.
pub const FIRST_RESERVED_GDT_ENTRY: u64 = FIRST_RESERVED_GDT_BYTE / 8;

/// Flat 32-bit ring-3 code selector.
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// Flat 64-bit ring-3 code selector.
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// Flat 32-bit ring-3 data selector.
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// 64-bit data selector: the null selector.
pub const FLAT_RING3_DS64: u16 = 0x0000;
/// Flat 32-bit ring-3 stack selector.
pub const FLAT_RING3_SS32: u16 = 0xe02b;
/// Flat 64-bit ring-3 stack selector.
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// The 64-bit PV kernel runs in ring 3, so its selectors alias the ring-3 ones.
pub const FLAT_KERNEL_DS64: u16 = FLAT_RING3_DS64;
/// Kernel 32-bit data selector.
pub const FLAT_KERNEL_DS32: u16 = FLAT_RING3_DS32;
/// Kernel data selector.
pub const FLAT_KERNEL_DS: u16 = FLAT_KERNEL_DS64;
/// Kernel 64-bit code selector.
pub const FLAT_KERNEL_CS64: u16 = FLAT_RING3_CS64;
/// Kernel 32-bit code selector.
pub const FLAT_KERNEL_CS32: u16 = FLAT_RING3_CS32;
/// Kernel code selector.
pub const FLAT_KERNEL_CS: u16 = FLAT_KERNEL_CS64;
/// Kernel 64-bit stack selector.
pub const FLAT_KERNEL_SS64: u16 = FLAT_RING3_SS64;
/// Kernel 32-bit stack selector.
pub const FLAT_KERNEL_SS32: u16 = FLAT_RING3_SS32;
/// Kernel stack selector.
pub const FLAT_KERNEL_SS: u16 = FLAT_KERNEL_SS64;
/// User 64-bit data selector.
pub const FLAT_USER_DS64: u16 = FLAT_RING3_DS64;
/// User 32-bit data selector.
pub const FLAT_USER_DS32: u16 = FLAT_RING3_DS32;
/// User data selector.
pub const FLAT_USER_DS: u16 = FLAT_USER_DS64;
/// User 64-bit code selector.
pub const FLAT_USER_CS64: u16 = FLAT_RING3_CS64;
/// User 32-bit code selector.
pub const FLAT_USER_CS32: u16 = FLAT_RING3_CS32;
/// User code selector.
pub const FLAT_USER_CS: u16 = FLAT_USER_CS64;
/// User 64-bit stack selector.
pub const FLAT_USER_SS64: u16 = FLAT_RING3_SS64;
/// User 32-bit stack selector.
pub const FLAT_USER_SS32: u16 = FLAT_RING3_SS32;
/// User stack selector.
pub const FLAT_USER_SS: u16 = FLAT_USER_SS64;

/// Xen's (ring-0) 64-bit code selector; kxen's ring-0 layer uses the same value.
// xen: asm-x86/desc.h __HYPERVISOR_CS (Xen-internal, not in the public headers)
pub const HYPERVISOR_CS: u16 = 0xe008;
/// Xen's (ring-0) flat data selector (Xen's __HYPERVISOR_DS32).
pub const HYPERVISOR_DS: u16 = 0xe010;

/// GDT index of a selector.
pub const fn selector_index(sel: u16) -> u16 {
    sel >> 3
}
/// Requested privilege level of a selector.
pub const fn selector_rpl(sel: u16) -> u8 {
    (sel & 3) as u8
}
/// Whether a selector names a descriptor in Xen's reserved GDT area.
pub const fn selector_is_reserved(sel: u16) -> bool {
    (sel as u64 >> 3) >= FIRST_RESERVED_GDT_ENTRY
}

// ---------------------------------------------------------------------------------------------
// kxen's own choices
// ---------------------------------------------------------------------------------------------

/// L4 slot holding kxen's ring-0 area (slot 256 is unusable on our hosts).
pub const KXEN_RING0_L4_SLOT: usize = 257;
/// First virtual address of kxen's ring-0 area (0xffff808000000000).
pub const KXEN_RING0_VIRT_START: u64 = l4_slot_base(KXEN_RING0_L4_SLOT);
/// L4 slot holding kxen's read-only M2P table.
pub const KXEN_M2P_L4_SLOT: usize = 258;
/// Virtual start of kxen's M2P table (0xffff810000000000), returned by
/// `XENMEM_machphys_mapping`.
pub const KXEN_M2P_VIRT_START: u64 = l4_slot_base(KXEN_M2P_L4_SLOT);
/// Guest-physical base of the kxen-private memslot, above any guest frame.
pub const PRIVATE_BASE_GPA: u64 = 1 << 39;

const _: () = assert!(is_xen_l4_slot(KXEN_RING0_L4_SLOT) && is_xen_l4_slot(KXEN_M2P_L4_SLOT));
const _: () = assert!(KXEN_RING0_VIRT_START == 0xffff_8080_0000_0000);
const _: () = assert!(KXEN_M2P_VIRT_START == 0xffff_8100_0000_0000);
const _: () = assert!(FIRST_RESERVED_GDT_ENTRY == 7168);

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    struct Sample {
        a: u32,
        b: u16,
        c: [u8; 2],
        d: u64,
    }
    impl_pod!(Sample { u32, u16, [u8; 2], u64 });

    #[test]
    fn pod_round_trip_preserves_value_and_layout() {
        let s = Sample {
            a: 0x1122_3344,
            b: 0x5566,
            c: [7, 8],
            d: u64::MAX - 1,
        };
        let bytes = s.as_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[..4], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(Sample::from_bytes(bytes), Some(s));
    }

    #[test]
    fn pod_from_bytes_rejects_wrong_length_and_reads_unaligned() {
        let s = Sample {
            a: 1,
            b: 2,
            c: [3, 4],
            d: 5,
        };
        let mut buf = [0u8; 17];
        buf[1..].copy_from_slice(s.as_bytes());
        assert_eq!(Sample::from_bytes(&buf), None);
        assert_eq!(Sample::from_bytes(&buf[1..16]), None);
        assert_eq!(Sample::from_bytes(&buf[1..]), Some(s));
        assert_eq!(Sample::read_from_prefix(&buf[1..]), Some(s));
        assert_eq!(Sample::read_from_prefix(&buf[..15]), None);
    }

    #[test]
    fn pod_write_to_prefix_and_mutation() {
        let mut s = Sample::zeroed();
        s.as_bytes_mut()[8] = 0xaa;
        assert_eq!(s.d, 0xaa);
        let mut out = [0xffu8; 20];
        assert_eq!(s.write_to_prefix(&mut out), Some(()));
        assert_eq!(out[8], 0xaa);
        assert_eq!(out[16], 0xff);
        assert_eq!(s.write_to_prefix(&mut [0u8; 15]), None);
        assert_eq!(
            <[u32; 3]>::from_bytes(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]),
            Some([1, 2, 3])
        );
    }

    #[test]
    fn c_string_truncates_and_terminates() {
        let a: [u8; 4] = c_string("abcdef");
        assert_eq!(a, *b"abc\0");
        let b: [u8; 8] = c_string("xy");
        assert_eq!(c_str_bytes(&b), b"xy");
        assert_eq!(c_str_bytes(b"full"), b"full");
    }

    #[test]
    fn canonical_edges() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xffff_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(is_canonical(u64::MAX));
        assert!(!is_canonical(0x0001_0000_0000_0000));
    }

    #[test]
    fn hypervisor_range_edges() {
        assert!(!in_hypervisor_range(HYPERVISOR_VIRT_START - 1));
        assert!(in_hypervisor_range(HYPERVISOR_VIRT_START));
        assert!(in_hypervisor_range(HYPERVISOR_VIRT_END - 1));
        assert!(!in_hypervisor_range(HYPERVISOR_VIRT_END));
        assert!(!in_hypervisor_range(0x0000_7fff_ffff_f000));
        assert_eq!(l4_slot(HYPERVISOR_VIRT_START), XEN_FIRST_L4_SLOT);
        assert_eq!(l4_slot(HYPERVISOR_VIRT_END - 1), XEN_LAST_L4_SLOT);
        assert!(!is_xen_l4_slot(255) && is_xen_l4_slot(256) && is_xen_l4_slot(271));
        assert!(!is_xen_l4_slot(272));
    }

    #[test]
    fn slot_helpers_and_kxen_layout() {
        assert_eq!(l4_slot_base(0), 0);
        assert_eq!(l4_slot_base(255), 0x0000_7f80_0000_0000);
        assert_eq!(l4_slot_base(256), HYPERVISOR_VIRT_START);
        assert_eq!(l4_slot_base(511), 0xffff_ff80_0000_0000);
        assert_eq!(l4_slot(KXEN_RING0_VIRT_START), 257);
        assert_eq!(l4_slot(KXEN_M2P_VIRT_START), 258);
        assert!(in_hypervisor_range(KXEN_M2P_VIRT_START));
        let va = 0xffff_8080_1234_5678;
        assert_eq!(
            (l4_slot(va), l3_index(va), l2_index(va), l1_index(va)),
            (257, 0, 145, 325)
        );
        assert_eq!(PRIVATE_BASE_GPA, 0x80_0000_0000);
        assert_eq!(MACH2PHYS_NR_ENTRIES, 1 << 35);
    }

    #[test]
    fn selectors_match_xen() {
        assert_eq!(selector_index(FLAT_RING3_CS64), 7174);
        assert_eq!(selector_rpl(FLAT_KERNEL_CS), 3);
        assert!(selector_is_reserved(FLAT_RING3_SS64));
        assert!(!selector_is_reserved(0x10));
        assert_eq!(FLAT_KERNEL_DS, 0);
        assert_eq!(selector_rpl(HYPERVISOR_CS), 0);
    }

    proptest::proptest! {
        #[test]
        fn canonical_iff_top_bits_copy_bit_47(va in proptest::prelude::any::<u64>()) {
            let top = va >> 47;
            proptest::prop_assert_eq!(is_canonical(va), top == 0 || top == 0x1_ffff);
            proptest::prop_assert!(is_canonical(canonicalize(va)));
        }

        #[test]
        fn slot_base_inverts_l4_slot(slot in 0usize..512, off in 0u64..L4_SLOT_SIZE) {
            let va = l4_slot_base(slot) + off;
            proptest::prop_assert!(is_canonical(va));
            proptest::prop_assert_eq!(l4_slot(va), slot);
            proptest::prop_assert_eq!(in_hypervisor_range(va), is_xen_l4_slot(slot));
        }

        #[test]
        fn pod_round_trips_arbitrary_bytes(bytes in proptest::prelude::any::<[u8; 16]>()) {
            let s = Sample::from_bytes(&bytes).unwrap();
            proptest::prop_assert_eq!(s.as_bytes(), &bytes[..]);
        }
    }
}
