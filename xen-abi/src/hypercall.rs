//! Hypercall numbers and names (xen: public/xen.h, public/arch-x86/xen.h) and the
//! hypercall-page geometry (xen: arch/x86/pv/hypercall.c).

use crate::arch::impl_pod;

macro_rules! hypercalls {
    ($($name:ident = $val:expr => $s:literal;)*) => {
        $( #[doc = concat!("`__HYPERVISOR_", $s, "`")] pub const $name: u64 = $val; )*

        /// Name of a hypercall number as Xen spells it (without `__HYPERVISOR_`), or `None`
        /// for a number Xen does not define.
        pub const fn name(nr: u64) -> Option<&'static str> {
            match nr {
                $( $val => Some($s), )*
                _ => None,
            }
        }

        /// Every defined hypercall number, ascending.
        pub const ALL: &[u64] = &[$($val),*];
    };
}

hypercalls! {
    SET_TRAP_TABLE = 0 => "set_trap_table";
    MMU_UPDATE = 1 => "mmu_update";
    SET_GDT = 2 => "set_gdt";
    STACK_SWITCH = 3 => "stack_switch";
    SET_CALLBACKS = 4 => "set_callbacks";
    FPU_TASKSWITCH = 5 => "fpu_taskswitch";
    SCHED_OP_COMPAT = 6 => "sched_op_compat";
    PLATFORM_OP = 7 => "platform_op";
    SET_DEBUGREG = 8 => "set_debugreg";
    GET_DEBUGREG = 9 => "get_debugreg";
    UPDATE_DESCRIPTOR = 10 => "update_descriptor";
    MEMORY_OP = 12 => "memory_op";
    MULTICALL = 13 => "multicall";
    UPDATE_VA_MAPPING = 14 => "update_va_mapping";
    SET_TIMER_OP = 15 => "set_timer_op";
    EVENT_CHANNEL_OP_COMPAT = 16 => "event_channel_op_compat";
    XEN_VERSION = 17 => "xen_version";
    CONSOLE_IO = 18 => "console_io";
    PHYSDEV_OP_COMPAT = 19 => "physdev_op_compat";
    GRANT_TABLE_OP = 20 => "grant_table_op";
    VM_ASSIST = 21 => "vm_assist";
    UPDATE_VA_MAPPING_OTHERDOMAIN = 22 => "update_va_mapping_otherdomain";
    IRET = 23 => "iret";
    VCPU_OP = 24 => "vcpu_op";
    SET_SEGMENT_BASE = 25 => "set_segment_base";
    MMUEXT_OP = 26 => "mmuext_op";
    XSM_OP = 27 => "xsm_op";
    NMI_OP = 28 => "nmi_op";
    SCHED_OP = 29 => "sched_op";
    CALLBACK_OP = 30 => "callback_op";
    XENOPROF_OP = 31 => "xenoprof_op";
    EVENT_CHANNEL_OP = 32 => "event_channel_op";
    PHYSDEV_OP = 33 => "physdev_op";
    HVM_OP = 34 => "hvm_op";
    SYSCTL = 35 => "sysctl";
    DOMCTL = 36 => "domctl";
    KEXEC_OP = 37 => "kexec_op";
    TMEM_OP = 38 => "tmem_op";
    ARGO_OP = 39 => "argo_op";
    XENPMU_OP = 40 => "xenpmu_op";
    DM_OP = 41 => "dm_op";
    HYPFS_OP = 42 => "hypfs_op";
    // x86 names for the architecture-specific slots (xen: arch-x86/xen.h)
    MCA = 48 => "mca";
    PAGING_DOMCTL_CONT = 49 => "paging_domctl_cont";
    ARCH_2 = 50 => "arch_2";
    ARCH_3 = 51 => "arch_3";
    ARCH_4 = 52 => "arch_4";
    ARCH_5 = 53 => "arch_5";
    ARCH_6 = 54 => "arch_6";
    ARCH_7 = 55 => "arch_7";
}

/// `__HYPERVISOR_arch_0`: first architecture-specific hypercall (x86: `mca`).
pub const ARCH_0: u64 = MCA;
/// `__HYPERVISOR_arch_1` (x86: `paging_domctl_cont`, toolstack only).
pub const ARCH_1: u64 = PAGING_DOMCTL_CONT;
/// Hypercall numbers are below this bound (Xen's table has 64 slots).
pub const NR_HYPERCALLS: u64 = 64;

/// Bytes per hypercall-page entry.
pub const HYPERCALL_ENTRY_SIZE: u64 = 32;
/// Entries in the hypercall page (4096 / 32).
pub const HYPERCALL_PAGE_ENTRIES: u64 = 128;
/// Filler byte of the unused parts of the hypercall page (`int3`).
pub const HYPERCALL_PAGE_FILL: u8 = 0xcc;
const _: () = assert!(HYPERCALL_ENTRY_SIZE * HYPERCALL_PAGE_ENTRIES == crate::arch::PAGE_SIZE);

/// Byte offset of hypercall `nr`'s entry in the hypercall page, `None` if out of the page.
pub const fn page_entry_offset(nr: u64) -> Option<u64> {
    if nr < HYPERCALL_PAGE_ENTRIES {
        Some(nr * HYPERCALL_ENTRY_SIZE)
    } else {
        None
    }
}

/// Argument registers of a 64-bit PV hypercall, in order.
pub const ARG_REGS: [&str; 5] = ["rdi", "rsi", "rdx", "r10", "r8"];

/// One entry of a `multicall` list (xen: public/xen.h `struct multicall_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Result, written back by the hypervisor.
    pub result: u64,
    /// Up to six arguments.
    pub args: [u64; 6],
}
impl_pod!(MulticallEntry { u64, u64, [u64; 6] });
const _: () = assert!(core::mem::size_of::<MulticallEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, result) == 8);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, args) == 16);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn numbers_match_xen_h() {
        assert_eq!(SET_TRAP_TABLE, 0);
        assert_eq!(MMU_UPDATE, 1);
        assert_eq!(MEMORY_OP, 12);
        assert_eq!(XEN_VERSION, 17);
        assert_eq!(IRET, 23);
        assert_eq!(MMUEXT_OP, 26);
        assert_eq!(SCHED_OP, 29);
        assert_eq!(CALLBACK_OP, 30);
        assert_eq!(EVENT_CHANNEL_OP, 32);
        assert_eq!(ARGO_OP, 39);
        assert_eq!(ARCH_0, 48);
        assert_eq!(ARCH_7, 55);
    }

    #[test]
    fn name_table_is_complete_and_bounded() {
        assert_eq!(name(0), Some("set_trap_table"));
        assert_eq!(name(23), Some("iret"));
        assert_eq!(name(48), Some("mca"));
        assert_eq!(name(11), None);
        assert_eq!(name(43), None);
        assert_eq!(name(56), None);
        assert_eq!(name(u64::MAX), None);
        for w in ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for &nr in ALL {
            assert!(nr < NR_HYPERCALLS);
            assert!(name(nr).is_some());
        }
        assert_eq!(ALL.len(), 50);
    }

    #[test]
    fn hypercall_page_geometry() {
        assert_eq!(page_entry_offset(0), Some(0));
        assert_eq!(page_entry_offset(23), Some(736));
        assert_eq!(page_entry_offset(127), Some(4064));
        assert_eq!(page_entry_offset(128), None);
    }

    #[test]
    fn multicall_entry_layout() {
        let e = MulticallEntry {
            op: 1,
            result: 2,
            args: [3, 4, 5, 6, 7, 8],
        };
        let b = e.as_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(b[16], 3);
        assert_eq!(MulticallEntry::from_bytes(b), Some(e));
    }
}
