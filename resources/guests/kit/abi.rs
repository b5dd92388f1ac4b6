//! The few Xen ABI numbers and layouts the kit needs.
//!
//! These mirror `xen-abi` (which mirrors Xen's public headers); they are repeated here so that
//! a guest is a single `rustc` invocation with no dependencies.

#![allow(dead_code)]

/// Where the kit links its kernels (public/elfnote.h VIRT_BASE; Linux uses the same value).
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
pub const PAGE_SIZE: u64 = 4096;

// xen: public/xen.h, __HYPERVISOR_* numbers.
pub const HYPERVISOR_SET_TRAP_TABLE: u32 = 0;
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
pub const HYPERVISOR_STACK_SWITCH: u32 = 3;
pub const HYPERVISOR_SET_CALLBACKS: u32 = 4;
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
pub const HYPERVISOR_MULTICALL: u32 = 13;
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
pub const HYPERVISOR_VM_ASSIST: u32 = 21;
pub const HYPERVISOR_IRET: u32 = 23;
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// Entries in the hypercall page (4096 / 32).
pub const HYPERCALL_PAGE_ENTRIES: u32 = 128;

// xen: public/errno.h (returned negated).
pub const EPERM: i64 = 1;
pub const EFAULT: i64 = 14;
pub const EINVAL: i64 = 22;
pub const ENOSYS: i64 = 38;

// xen: public/version.h
pub const XENVER_VERSION: u32 = 0;
pub const XENVER_EXTRAVERSION: u32 = 1;
pub const XENVER_CAPABILITIES: u32 = 3;
pub const XENVER_GET_FEATURES: u32 = 6;
pub const XENVER_PAGESIZE: u32 = 7;

// xen: public/xen.h, console_io commands.
pub const CONSOLEIO_WRITE: u32 = 0;
pub const CONSOLEIO_READ: u32 = 1;

// xen: public/sched.h
pub const SCHEDOP_YIELD: u32 = 0;
pub const SCHEDOP_SHUTDOWN: u32 = 2;
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;

// xen: public/memory.h
pub const XENMEM_MACHPHYS_MAPPING: u64 = 12;
pub const XENMEM_MACHPHYS_MFN_LIST: u64 = 5;

// xen: public/xen.h, vm_assist
pub const VMASST_CMD_ENABLE: u32 = 0;
pub const VMASST_CMD_DISABLE: u32 = 1;
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = 2;

// xen: public/xen.h, start_info.flags
pub const SIF_PRIVILEGED: u32 = 1;
pub const SIF_INITDOMAIN: u32 = 2;

// xen: public/arch-x86/xen-x86_64.h, flat selectors.
pub const FLAT_KERNEL_CS: u16 = 0xe033;
pub const FLAT_KERNEL_SS: u16 = 0xe02b;

/// xen: public/xen.h `struct start_info` (64-bit layout, 1168 bytes).
#[repr(C)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    pub shared_info: u64,
    pub flags: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; 1024],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

const _: () = {
    assert!(core::mem::size_of::<StartInfo>() == 1168);
    assert!(core::mem::offset_of!(StartInfo, nr_pages) == 32);
    assert!(core::mem::offset_of!(StartInfo, flags) == 48);
    assert!(core::mem::offset_of!(StartInfo, store_mfn) == 56);
    assert!(core::mem::offset_of!(StartInfo, store_evtchn) == 64);
    assert!(core::mem::offset_of!(StartInfo, console_mfn) == 72);
    assert!(core::mem::offset_of!(StartInfo, console_evtchn) == 80);
    assert!(core::mem::offset_of!(StartInfo, pt_base) == 88);
    assert!(core::mem::offset_of!(StartInfo, mfn_list) == 104);
    assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);
    assert!(core::mem::offset_of!(StartInfo, first_p2m_pfn) == 1152);
};

/// xen: public/arch-x86/xen.h `struct trap_info` (16 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TrapInfo {
    pub vector: u8,
    /// Bits 0-1: privilege level allowed to `int` to it; bit 2: mask events on entry.
    pub flags: u8,
    pub cs: u16,
    pub address: u64,
}
const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);

/// xen: public/xen.h `struct multicall_entry` (64 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MulticallEntry {
    pub op: u64,
    pub result: i64,
    pub args: [u64; 6],
}
const _: () = assert!(core::mem::size_of::<MulticallEntry>() == 64);

/// xen: public/version.h `xen_feature_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FeatureInfo {
    pub submap_idx: u32,
    pub submap: u32,
}

/// xen: public/memory.h `xen_machphys_mapping`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MachphysMapping {
    pub v_start: u64,
    pub v_end: u64,
    pub max_mfn: u64,
}

/// xen: public/memory.h `xen_machphys_mfn_list`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MachphysMfnList {
    pub max_extents: u32,
    pub _pad0: u32,
    pub extent_start: u64,
    pub nr_extents: u32,
    pub _pad1: u32,
}

/// xen: public/sched.h `sched_shutdown`.
#[repr(C)]
pub struct SchedShutdown {
    pub reason: u32,
}
