//! The PV CPU model's pure rules: segment-base commands, debug-register validation,
//! descriptor validation for guest GDT/LDT entries, `physdev_op` I/O privilege.
//!
//! Everything here is Xen's behaviour restated (sources named per item); the VMM applies
//! the results to the vCPU.

use crate::arch::{is_canonical, FIRST_RESERVED_GDT_BYTE, HYPERVISOR_VIRT_END};

/// `set_segment_base`: FS base.
// xen: public/arch-x86/xen-x86_64.h, SEGBASE_FS
pub const SEGBASE_FS: u32 = 0;
/// `set_segment_base`: GS base used in guest user mode.
pub const SEGBASE_GS_USER: u32 = 1;
/// `set_segment_base`: GS base used in guest kernel mode.
pub const SEGBASE_GS_KERNEL: u32 = 2;
/// `set_segment_base`: load a selector into the user GS (base from the descriptor).
pub const SEGBASE_GS_USER_SEL: u32 = 3;

/// `PHYSDEVOP_set_iopl`.
// xen: public/physdev.h
pub const PHYSDEVOP_SET_IOPL: u32 = 6;

/// `struct physdev_set_iopl { uint32_t iopl; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysdevSetIopl {
    /// The new I/O privilege level (0..=3).
    pub iopl: u32,
}
crate::arch::impl_pod!(PhysdevSetIopl { u32 });

/// `struct physdev_op` of the compat `physdev_op` hypercall (19): `cmd` then a 16-byte union.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysdevOpCompat {
    /// `PHYSDEVOP_*`.
    pub cmd: u32,
    /// The argument union (its first word is `iopl` for set_iopl).
    pub u: [u32; 4],
}
crate::arch::impl_pod!(PhysdevOpCompat { u32, [u32; 4] });

/// Whether guest port I/O is permitted with virtual IOPL `iopl` (0..=3) in the given mode:
/// the guest kernel counts as ring 1 (ring 0 with `VMASST_TYPE_architectural_iopl`), guest
/// user as ring 3.
// xen: arch/x86/pv/emul-priv-op.c, iopl_ok
pub const fn iopl_permits(iopl: u32, kernel_mode: bool, architectural_iopl: bool) -> bool {
    let cpl = match (kernel_mode, architectural_iopl) {
        (false, _) => 3,
        (true, true) => 0,
        (true, false) => 1,
    };
    iopl >= cpl
}

/// DR6 bits that always read as 1 (reserved) on a CPU without RTM/bus-lock detection.
// xen: arch/x86/include/asm/debugreg.h, X86_DR6_DEFAULT
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
/// DR6 bits that always read as 0 (bit 12 and the upper half).
pub const DR6_ZEROS: u64 = 0xffff_ffff_0000_1000;
/// DR7 bit that always reads as 1 (bit 10).
pub const DR7_DEFAULT: u64 = 0x400;
/// DR7 bits that always read as 0 (11, 12, 14, 15 and the upper half).
pub const DR7_ZEROS: u64 = 0xffff_ffff_0000_d800;
/// DR7.GD: general detect, privileged.
pub const DR7_GD: u64 = 1 << 13;
/// DR7 local/global enable bits of the four breakpoints.
pub const DR7_ACTIVE_MASK: u64 = 0xff;
/// DR6 single-step bit (BS).
pub const DR6_BS: u64 = 1 << 14;

/// Why `set_debugreg` refuses a value (Xen's errno is given by [`DebugRegError::errno`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugRegError {
    /// Address not guest-accessible / non-canonical, GD set, or an I/O breakpoint without
    /// CR4.DE: `-EPERM`.
    NotPermitted,
    /// Register number other than 0..=7: `-EINVAL`.
    BadRegister,
}

impl DebugRegError {
    /// Xen's errno value.
    pub const fn errno(self) -> u32 {
        match self {
            DebugRegError::NotPermitted => crate::errno::EPERM,
            DebugRegError::BadRegister => crate::errno::EINVAL,
        }
    }
}

/// Whether a breakpoint address is one a PV guest may watch: canonical and outside the
/// hypervisor's reserved range.
// xen: arch/x86/include/asm/uaccess.h, access_ok / __addr_ok
pub const fn guest_address_ok(va: u64) -> bool {
    is_canonical(va) && (va < (1 << 47) || va >= HYPERVISOR_VIRT_END)
}

/// Validate `value` for debug register `reg` as Xen's `set_debugreg` does (guest CR4.DE is
/// always clear for kxen's PV guests, so DR4/DR5 alias DR6/DR7). Returns the register actually
/// written (0..=3, 6 or 7) and the adjusted value.
// xen: arch/x86/pv/misc-hypercalls.c, set_debugreg; x86_adj_dr6_rsvd / x86_adj_dr7_rsvd
pub fn check_set_debugreg(reg: u32, value: u64) -> Result<(usize, u64), DebugRegError> {
    match reg {
        0..=3 => {
            // access_ok(value, sizeof(long)): the whole 8-byte word must be accessible.
            let last = value.wrapping_add(7);
            if !guest_address_ok(value) || !guest_address_ok(last) || last < value {
                return Err(DebugRegError::NotPermitted);
            }
            Ok((reg as usize, value))
        }
        4 | 6 => Ok((6, (value | DR6_DEFAULT) & !DR6_ZEROS)),
        5 | 7 => {
            let v = (value | DR7_DEFAULT) & !DR7_ZEROS;
            if v & DR7_GD != 0 {
                return Err(DebugRegError::NotPermitted);
            }
            if v & DR7_ACTIVE_MASK != 0 {
                // R/W field value 2 (I/O breakpoint) needs CR4.DE, which PV guests lack here.
                for i in 0..4 {
                    if (v >> (16 + 4 * i)) & 3 == 2 {
                        return Err(DebugRegError::NotPermitted);
                    }
                }
            }
            Ok((7, v))
        }
        _ => Err(DebugRegError::BadRegister),
    }
}

/// The register `get_debugreg(reg)` reads (DR4/DR5 alias DR6/DR7), or `None` (`-EINVAL`).
// xen: arch/x86/pv/misc-hypercalls.c, do_get_debugreg
pub const fn get_debugreg_index(reg: u32) -> Option<usize> {
    match reg {
        0..=3 => Some(reg as usize),
        4 | 6 => Some(6),
        5 | 7 => Some(7),
        _ => None,
    }
}

const SEG_P: u32 = 1 << 15;
const SEG_S: u32 = 1 << 12;
const SEG_DPL: u32 = 3 << 13;
const SEG_TYPE: u32 = 0xf << 8;
const TYPE_CALL_GATE: u32 = 0xc << 8;

/// Whether a call gate's target code selector is acceptable for a 64-bit PV guest.
// xen: arch/x86/include/asm/desc.h, guest_gate_selector_okay
pub const fn gate_selector_ok(sel: u16) -> bool {
    if sel & !3 == crate::arch::FLAT_RING3_CS64 & !3 {
        return true; // Xen's default kernel code segment
    }
    if sel & 4 == 0 && sel as u64 >= FIRST_RESERVED_GDT_BYTE {
        return false; // Xen's private GDT entries
    }
    sel & 0xfffc != 0
}

/// Validate and fix up one guest GDT/LDT descriptor (8 bytes, as a little-endian `u64`), as
/// Xen's `check_descriptor` does for a 64-bit PV guest: not-present entries and type-0 system
/// entries are harmless; code/data segments get their DPL raised to 3 (the guest kernel's
/// privilege), so nothing grants ring 0; of the system types only call gates are allowed,
/// with an acceptable target selector and no reserved bits, and they are stored with DPL 0
/// (the original DPL moved into the target selector's RPL) so using one faults for
/// emulation. `None` means refused.
// xen: arch/x86/pv/descriptor-tables.c, pv_check_descriptor
pub fn check_descriptor(desc: u64) -> Option<u64> {
    let mut a = desc as u32;
    let mut b = (desc >> 32) as u32;
    if b & SEG_P == 0 {
        return Some(desc);
    }
    let mut dpl = (b >> 13) & 3;
    if dpl < 3 {
        dpl = 3; // __fixup_guest_selector: GUEST_KERNEL_RPL is 3 for 64-bit PV
    }
    b = (b & !SEG_DPL) | (dpl << 13);
    if b & SEG_S != 0 {
        return Some(u64::from(a) | (u64::from(b) << 32));
    }
    if b & SEG_TYPE == 0 {
        return Some(desc);
    }
    if b & SEG_TYPE != TYPE_CALL_GATE {
        return None;
    }
    let cs = (a >> 16) as u16;
    if !gate_selector_ok(cs) {
        return None;
    }
    b &= !SEG_DPL;
    let cs = (cs & !3) | dpl as u16;
    a = (a & 0xffff) | (u32::from(cs) << 16);
    if b & 0xff != 0 {
        return None;
    }
    Some(u64::from(a) | (u64::from(b) << 32))
}

/// The 32-bit base address a code/data descriptor encodes.
pub const fn descriptor_base(desc: u64) -> u64 {
    ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24)
}

/// The limit of a code/data descriptor in bytes minus one (granularity applied).
pub const fn descriptor_limit(desc: u64) -> u32 {
    let raw = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    if desc & (1 << 55) != 0 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// Entries of a guest GDT at most (14 pages; the rest is Xen's).
// xen: arch/x86/include/asm/desc.h, FIRST_RESERVED_GDT_ENTRY
pub const MAX_GUEST_GDT_ENTRIES: u32 = (FIRST_RESERVED_GDT_BYTE / 8) as u32;
/// Frames of a guest GDT at most.
pub const MAX_GDT_FRAMES: usize = 14;

#[cfg(test)]
mod tests {
    use super::*;

    fn code(dpl: u64, l: bool) -> u64 {
        // base 0, limit 0xfffff, present, S, type 0xa (code, readable), G
        0x00cf_9a00_0000_ffff & !(3 << 45) | (dpl << 45) | if l { 1 << 53 } else { 0 }
    }

    #[test]
    fn ring0_code_and_data_descriptors_get_dpl3() {
        for dpl in 0..4 {
            let d = code(dpl, true);
            assert_eq!(check_descriptor(d), Some(code(3, true)), "dpl {dpl}");
        }
        let data0 = 0x00cf_9200_0000_ffffu64;
        assert_eq!(check_descriptor(data0), Some(data0 | (3 << 45)));
    }

    #[test]
    fn not_present_and_type0_are_harmless() {
        assert_eq!(check_descriptor(0), Some(0));
        let np = 0x00cf_1a00_0000_ffffu64; // not present, DPL 0, code
        assert_eq!(check_descriptor(np), Some(np));
        let t0 = 0x0000_8000_0000_0000u64; // present system type 0
        assert_eq!(check_descriptor(t0), Some(t0));
    }

    #[test]
    fn system_descriptors_other_than_call_gates_are_refused() {
        for ty in [1u64, 2, 3, 5, 9, 0xb, 0xe, 0xf] {
            let d = (1 << 47) | (ty << 40) | (3 << 45);
            assert_eq!(check_descriptor(d), None, "type {ty:#x}");
        }
    }

    #[test]
    fn call_gates_need_a_good_selector_and_get_dpl0() {
        // gate to 0xe033, DPL 3, offset 0x1234
        let gate = |sel: u64, dpl: u64, rsvd: u64| {
            0x1234 | (sel << 16) | (1 << 47) | (0xc << 40) | (dpl << 45) | (rsvd << 32)
        };
        let ok = check_descriptor(gate(0xe033, 3, 0)).unwrap();
        assert_eq!((ok >> 45) & 3, 0, "stored with DPL 0");
        assert_eq!((ok >> 16) & 0xffff, 0xe033, "original DPL in the RPL");
        assert_eq!(
            check_descriptor(gate(0xe008, 3, 0)),
            None,
            "Xen's ring-0 CS"
        );
        assert_eq!(check_descriptor(gate(0, 3, 0)), None, "null");
        assert_eq!(check_descriptor(gate(0x10, 3, 1)), None, "reserved bits");
        assert!(
            check_descriptor(gate(0x10, 0, 0)).is_some(),
            "guest GDT seg"
        );
        assert!(check_descriptor(gate(0xe00c, 3, 0)).is_some(), "LDT seg");
    }

    #[test]
    fn descriptor_base_and_limit_decode() {
        let d = 0x12cf_9a34_5678_ffffu64;
        assert_eq!(descriptor_base(d), 0x1234_5678);
        assert_eq!(descriptor_limit(d), 0xffff_ffff);
        assert_eq!(descriptor_limit(0x0040_9200_0000_0fff), 0xfff);
    }

    #[test]
    fn debugreg_addresses_must_be_guest_accessible() {
        assert_eq!(check_set_debugreg(0, 0x1000), Ok((0, 0x1000)));
        assert_eq!(
            check_set_debugreg(3, 0xffff_ffff_8000_0000),
            Ok((3, 0xffff_ffff_8000_0000))
        );
        for bad in [
            0x0000_8000_0000_0000,
            0xffff_8000_0000_0000,
            0xffff_87ff_ffff_fff8,
            0x0000_7fff_ffff_fffc,
            u64::MAX - 3,
        ] {
            assert_eq!(
                check_set_debugreg(1, bad),
                Err(DebugRegError::NotPermitted),
                "{bad:#x}"
            );
        }
        assert_eq!(check_set_debugreg(8, 0), Err(DebugRegError::BadRegister));
        assert_eq!(get_debugreg_index(8), None);
        assert_eq!(get_debugreg_index(4), Some(6));
        assert_eq!(get_debugreg_index(5), Some(7));
    }

    #[test]
    fn dr6_dr7_reserved_bits_and_privileged_bits() {
        assert_eq!(check_set_debugreg(6, 0), Ok((6, 0xffff_0ff0)));
        assert_eq!(check_set_debugreg(4, u64::MAX), Ok((6, 0xffff_efff)));
        assert_eq!(check_set_debugreg(7, 0), Ok((7, 0x400)));
        assert_eq!(check_set_debugreg(5, 0x1), Ok((7, 0x401)));
        assert_eq!(
            check_set_debugreg(7, !DR7_GD & !0x2_0000).unwrap().1 & DR7_ZEROS,
            0
        );
        assert_eq!(
            check_set_debugreg(7, DR7_GD),
            Err(DebugRegError::NotPermitted)
        );
        // I/O breakpoint (R/W0 = 2) enabled: refused without CR4.DE.
        assert_eq!(
            check_set_debugreg(7, 1 | (2 << 16)),
            Err(DebugRegError::NotPermitted)
        );
        // ...but fine while no breakpoint is enabled.
        assert!(check_set_debugreg(7, 2 << 16).is_ok());
        assert_eq!(DebugRegError::NotPermitted.errno(), crate::errno::EPERM);
    }

    #[test]
    fn iopl_levels() {
        assert!(!iopl_permits(0, true, false));
        assert!(iopl_permits(0, true, true));
        assert!(iopl_permits(1, true, false));
        assert!(!iopl_permits(2, false, true));
        assert!(iopl_permits(3, false, false));
    }
}
