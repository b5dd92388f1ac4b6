//! Page-table updates: `mmu_update`, `mmuext_op`, `update_va_mapping` flags, `vm_assist`,
//! domain ids and x86_64 PTE bits (xen: public/xen.h, arch/x86/include/asm/x86_64/page.h,
//! arch/x86/pv/mm.h).

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

// ----- mmu_update ---------------------------------------------------------------------------

/// `struct mmu_update`: `ptr` = machine address of the PTE | command in bits 0-2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// PTE machine address with the `MMU_*` command in the low bits.
    pub ptr: u64,
    /// New PTE value (or M2P value for `MMU_MACHPHYS_UPDATE`).
    pub val: u64,
}
impl_pod!(MmuUpdate { u64, u64 });
const _: () = assert!(size_of::<MmuUpdate>() == 16);

/// Checked `*ptr = val`.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `ptr` = machine address in the frame whose M2P entry becomes `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// As NORMAL, keeping the A/D bits currently in the PTE.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// As NORMAL, `ptr` not translated (only meaningful for translated guests).
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;
/// Command bits of `MmuUpdate::ptr` (Xen masks with `sizeof(l1_pgentry_t) - 1`).
pub const MMU_UPDATE_CMD_MASK: u64 = 7;

impl MmuUpdate {
    /// The `MMU_*` command.
    pub const fn cmd(&self) -> u64 {
        self.ptr & MMU_UPDATE_CMD_MASK
    }
    /// The PTE's machine address (command bits cleared).
    pub const fn addr(&self) -> u64 {
        self.ptr & !MMU_UPDATE_CMD_MASK
    }
}

/// Split `mmu_update`'s `foreigndom` argument into (FD, PFD): FD = bits 0-15; bits 16-31
/// encode the page-table owner as `x == 0 => DOMID_SELF`, else `x - 1`.
pub const fn split_foreigndom(foreigndom: u32) -> (u16, u16) {
    let fd = foreigndom as u16;
    let x = (foreigndom >> 16) as u16;
    let pfd = if x == 0 { DOMID_SELF } else { x - 1 };
    (fd, pfd)
}

// ----- mmuext_op ----------------------------------------------------------------------------

/// Pin an L1 table.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// Pin an L2 table.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// Pin an L3 table.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// Pin an L4 table.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// Unpin a table.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// Install a new (kernel) base page table.
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// Flush the local TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// Invalidate one address locally.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// Flush the TLBs of a vCPU set.
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// Invalidate one address on a vCPU set.
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
/// Flush all vCPUs' TLBs.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// Invalidate one address on all vCPUs.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// Write back and flush caches.
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
/// Set the LDT (linear_addr, nr_ents).
pub const MMUEXT_SET_LDT: u32 = 13;
/// Install the user-mode base page table (x86_64).
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
/// Zero a page.
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// Copy a page (src_mfn to mfn).
pub const MMUEXT_COPY_PAGE: u32 = 17;
/// Flush caches on all CPUs.
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
/// Mark a superpage (removed from modern Xen).
pub const MMUEXT_MARK_SUPER: u32 = 19;
/// Unmark a superpage (removed from modern Xen).
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// Name of an `MMUEXT_*` command.
pub const fn mmuext_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        MMUEXT_PIN_L1_TABLE => "pin_l1_table",
        MMUEXT_PIN_L2_TABLE => "pin_l2_table",
        MMUEXT_PIN_L3_TABLE => "pin_l3_table",
        MMUEXT_PIN_L4_TABLE => "pin_l4_table",
        MMUEXT_UNPIN_TABLE => "unpin_table",
        MMUEXT_NEW_BASEPTR => "new_baseptr",
        MMUEXT_TLB_FLUSH_LOCAL => "tlb_flush_local",
        MMUEXT_INVLPG_LOCAL => "invlpg_local",
        MMUEXT_TLB_FLUSH_MULTI => "tlb_flush_multi",
        MMUEXT_INVLPG_MULTI => "invlpg_multi",
        MMUEXT_TLB_FLUSH_ALL => "tlb_flush_all",
        MMUEXT_INVLPG_ALL => "invlpg_all",
        MMUEXT_FLUSH_CACHE => "flush_cache",
        MMUEXT_SET_LDT => "set_ldt",
        MMUEXT_NEW_USER_BASEPTR => "new_user_baseptr",
        MMUEXT_CLEAR_PAGE => "clear_page",
        MMUEXT_COPY_PAGE => "copy_page",
        MMUEXT_FLUSH_CACHE_GLOBAL => "flush_cache_global",
        MMUEXT_MARK_SUPER => "mark_super",
        MMUEXT_UNMARK_SUPER => "unmark_super",
        _ => return None,
    })
}

/// `struct mmuext_op` (24 bytes). The C unions are kept as raw words; use the accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// Padding (explicit).
    pub _pad: u32,
    /// Union `arg1`: `mfn` or `linear_addr`.
    pub arg1: u64,
    /// Union `arg2`: `nr_ents` (u32), `vcpumask` (guest handle) or `src_mfn`.
    pub arg2: u64,
}
impl_pod!(MmuextOp { u32, u32, u64, u64 });
const _: () = assert!(size_of::<MmuextOp>() == 24);
const _: () = assert!(offset_of!(MmuextOp, arg1) == 8);
const _: () = assert!(offset_of!(MmuextOp, arg2) == 16);

impl MmuextOp {
    /// `arg1.mfn`.
    pub const fn mfn(&self) -> u64 {
        self.arg1
    }
    /// `arg1.linear_addr`.
    pub const fn linear_addr(&self) -> u64 {
        self.arg1
    }
    /// `arg2.nr_ents` (the low 32 bits).
    pub const fn nr_ents(&self) -> u32 {
        self.arg2 as u32
    }
    /// `arg2.vcpumask` (guest virtual address of a bitmap).
    pub const fn vcpumask(&self) -> u64 {
        self.arg2
    }
    /// `arg2.src_mfn`.
    pub const fn src_mfn(&self) -> u64 {
        self.arg2
    }
}

// ----- update_va_mapping flags ----------------------------------------------------------------

/// No flush.
pub const UVMF_NONE: u64 = 0;
/// Flush the entire TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// Flush one entry.
pub const UVMF_INVLPG: u64 = 2;
/// Mask of the flush type.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Flush a subset of TLBs: OR in a pointer to a vCPU bitmap.
pub const UVMF_MULTI: u64 = 0;
/// Flush the local TLB (`UVMF_MULTI` with a NULL bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// Flush all TLBs.
pub const UVMF_ALL: u64 = 1 << 2;
/// Bits of `flags` that hold the vCPU bitmap pointer for `UVMF_MULTI`.
pub const UVMF_VCPUMASK_MASK: u64 = !7;

// ----- vm_assist ----------------------------------------------------------------------------

/// Enable an assist.
pub const VMASST_CMD_ENABLE: u32 = 0;
/// Disable an assist.
pub const VMASST_CMD_DISABLE: u32 = 1;
/// x86/32: simulate 4GB segment limits.
pub const VMASST_TYPE_4GB_SEGMENTS: u32 = 0;
/// x86/32: trap when the above is used.
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u32 = 1;
/// Writable (emulated) L1 page tables.
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = 2;
/// x86/PAE: PDPTs above 4GB.
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u32 = 3;
/// Architectural IOPL semantics.
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = 4;
/// Runstate area update flag.
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
/// x86/64: strictly hide the M2P from user mode.
pub const VMASST_TYPE_M2P_STRICT: u32 = 32;
/// Largest of the low assist types.
pub const MAX_VMASST_TYPE: u32 = 5;

/// Name of a `VMASST_TYPE_*`.
pub const fn vmassist_name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        VMASST_TYPE_4GB_SEGMENTS => "4gb_segments",
        VMASST_TYPE_4GB_SEGMENTS_NOTIFY => "4gb_segments_notify",
        VMASST_TYPE_WRITABLE_PAGETABLES => "writable_pagetables",
        VMASST_TYPE_PAE_EXTENDED_CR3 => "pae_extended_cr3",
        VMASST_TYPE_ARCHITECTURAL_IOPL => "architectural_iopl",
        VMASST_TYPE_RUNSTATE_UPDATE_FLAG => "runstate_update_flag",
        VMASST_TYPE_M2P_STRICT => "m2p_strict",
        _ => return None,
    })
}

// ----- domain ids ---------------------------------------------------------------------------

/// `domid_t`.
pub type DomId = u16;
/// Ids at or above this are reserved.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;
/// The calling domain.
pub const DOMID_SELF: DomId = 0x7ff0;
/// I/O memory owner.
pub const DOMID_IO: DomId = 0x7ff1;
/// Xen's own heap.
pub const DOMID_XEN: DomId = 0x7ff2;
/// Owner of shared (copy-on-write) pages.
pub const DOMID_COW: DomId = 0x7ff3;
/// Unknown owner.
pub const DOMID_INVALID: DomId = 0x7ff4;
/// The idle domain.
pub const DOMID_IDLE: DomId = 0x7fff;

// ----- PTE bits (x86_64) --------------------------------------------------------------------

/// Present.
pub const _PAGE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const _PAGE_RW: u64 = 1 << 1;
/// User accessible.
pub const _PAGE_USER: u64 = 1 << 2;
/// Write-through.
pub const _PAGE_PWT: u64 = 1 << 3;
/// Cache disable.
pub const _PAGE_PCD: u64 = 1 << 4;
/// Accessed.
pub const _PAGE_ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const _PAGE_DIRTY: u64 = 1 << 6;
/// PAT (in an L1) / page size (in L2/L3).
pub const _PAGE_PAT: u64 = 1 << 7;
/// Page size (L2/L3): same bit as `_PAGE_PAT`.
pub const _PAGE_PSE: u64 = 1 << 7;
/// Global.
pub const _PAGE_GLOBAL: u64 = 1 << 8;
/// Software-available bit 9.
pub const _PAGE_AVAIL0: u64 = 1 << 9;
/// Software-available bit 10.
pub const _PAGE_AVAIL1: u64 = 1 << 10;
/// Software-available bit 11.
pub const _PAGE_AVAIL2: u64 = 1 << 11;
/// Software-available bits 9-11.
pub const _PAGE_AVAIL: u64 = 7 << 9;
/// PAT bit of a large (2M/1G) mapping.
pub const _PAGE_PSE_PAT: u64 = 1 << 12;
/// Xen-private: the mapping belongs to guest kernel mode (set by Xen on L1 entries
/// the guest made without USER).
pub const _PAGE_GUEST_KERNEL: u64 = 1 << 52;
/// Xen-private (debug builds): the mapping is a grant mapping.
pub const _PAGE_GNTTAB: u64 = 1 << 62;
/// No execute.
pub const _PAGE_NX: u64 = 1 << 63;
/// Software-available high bits 52-62.
pub const _PAGE_AVAIL_HIGH: u64 = 0x7ff << 52;
/// Protection-key bits 59-62 (meaningful with CR4.PKE).
pub const _PAGE_PKEY_MASK: u64 = 0xf << 59;
/// Physical-address bits 12-51 of a PTE.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Frame number a PTE points at.
pub const fn pte_mfn(pte: u64) -> u64 {
    (pte & PTE_ADDR_MASK) >> crate::arch::PAGE_SHIFT
}
/// Flag bits of a PTE (everything but the address).
pub const fn pte_flags(pte: u64) -> u64 {
    pte & !PTE_ADDR_MASK
}
/// Build a PTE from a frame number and flags (frame bits beyond bit 51 are dropped).
pub const fn make_pte(mfn: u64, flags: u64) -> u64 {
    ((mfn << crate::arch::PAGE_SHIFT) & PTE_ADDR_MASK) | (flags & !PTE_ADDR_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn mmu_update_command_split() {
        let u = MmuUpdate {
            ptr: 0x1234_5000 | MMU_PT_UPDATE_PRESERVE_AD,
            val: 7,
        };
        assert_eq!(u.cmd(), 2);
        assert_eq!(u.addr(), 0x1234_5000);
        assert_eq!(MmuUpdate::from_bytes(u.as_bytes()), Some(u));
        assert_eq!(MMU_PT_UPDATE_NO_TRANSLATE, 3);
        assert_eq!(
            split_foreigndom(DOMID_SELF as u32),
            (DOMID_SELF, DOMID_SELF)
        );
        assert_eq!(split_foreigndom(0x0001_0005), (5, 0));
    }

    #[test]
    fn mmuext_op_layout_and_unions() {
        let mut b = [0u8; 24];
        b[0] = MMUEXT_SET_LDT as u8;
        b[4] = 0xee; // padding: ignored by accessors
        b[8..16].copy_from_slice(&0xffff_8800_0000_0000u64.to_le_bytes());
        b[16..20].copy_from_slice(&13u32.to_le_bytes());
        let op = MmuextOp::from_bytes(&b).unwrap();
        assert_eq!(op.cmd, 13);
        assert_eq!(op.linear_addr(), 0xffff_8800_0000_0000);
        assert_eq!(op.nr_ents(), 13);
        assert_eq!(
            mmuext_name(MMUEXT_NEW_USER_BASEPTR),
            Some("new_user_baseptr")
        );
        assert_eq!(mmuext_name(14), None);
        assert_eq!(MMUEXT_PIN_L4_TABLE, 3);
        assert_eq!(MMUEXT_COPY_PAGE, 17);
    }

    #[test]
    fn pte_bits_match_xen() {
        assert_eq!(_PAGE_GUEST_KERNEL, 0x0010_0000_0000_0000);
        assert_eq!(_PAGE_GNTTAB, 0x4000_0000_0000_0000);
        assert_eq!(_PAGE_NX, 0x8000_0000_0000_0000);
        assert_eq!(_PAGE_AVAIL_HIGH & _PAGE_GUEST_KERNEL, _PAGE_GUEST_KERNEL);
        assert_eq!(_PAGE_AVAIL_HIGH & _PAGE_NX, 0);
        let pte = make_pte(0x12345, _PAGE_PRESENT | _PAGE_RW | _PAGE_NX);
        assert_eq!(pte, 0x8000_0000_1234_5003);
        assert_eq!(pte_mfn(pte), 0x12345);
        assert_eq!(pte_flags(pte), _PAGE_PRESENT | _PAGE_RW | _PAGE_NX);
    }

    #[test]
    fn vmassist_and_domids() {
        assert_eq!(vmassist_name(32), Some("m2p_strict"));
        assert_eq!(vmassist_name(6), None);
        assert_eq!(VMASST_TYPE_WRITABLE_PAGETABLES, 2);
        assert_eq!(
            (DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_INVALID),
            (0x7ff0, 0x7ff1, 0x7ff2, 0x7ff4)
        );
        assert_eq!(UVMF_ALL | UVMF_INVLPG, 6);
    }
}
