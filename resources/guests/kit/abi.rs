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
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
pub const HYPERVISOR_SET_TIMER_OP: u32 = 15;
pub const HYPERVISOR_EVENT_CHANNEL_OP_COMPAT: u32 = 16;
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
pub const HYPERVISOR_VM_ASSIST: u32 = 21;
pub const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: u32 = 22;
pub const HYPERVISOR_IRET: u32 = 23;
pub const HYPERVISOR_VCPU_OP: u32 = 24;
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;
pub const HYPERVISOR_SCHED_OP: u32 = 29;
pub const HYPERVISOR_CALLBACK_OP: u32 = 30;
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// Entries in the hypercall page (4096 / 32).
pub const HYPERCALL_PAGE_ENTRIES: u32 = 128;

// xen: public/errno.h (returned negated).
pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const ESRCH: i64 = 3;
pub const ENXIO: i64 = 6;
pub const EACCES: i64 = 13;
pub const EFAULT: i64 = 14;
pub const EBUSY: i64 = 16;
pub const EEXIST: i64 = 17;
pub const EINVAL: i64 = 22;
pub const ENOSYS: i64 = 38;
pub const ETIME: i64 = 62;

// xen: public/xen.h, DOMID_SELF.
pub const DOMID_SELF: u16 = 0x7ff0;

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
pub const SCHEDOP_BLOCK: u32 = 1;
pub const SCHEDOP_SHUTDOWN: u32 = 2;
pub const SCHEDOP_POLL: u32 = 3;
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

// xen: public/xen.h, mmu_update request types (low bits of `ptr`), update_va_mapping flags
// (UVMF_*; a vCPU-mask pointer may be or-ed in instead of UVMF_ALL) and mmuext_op commands.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
pub const UVMF_NONE: u64 = 0;
pub const UVMF_TLB_FLUSH: u64 = 1;
pub const UVMF_INVLPG: u64 = 2;
pub const UVMF_ALL: u64 = 4;
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
pub const MMUEXT_SET_LDT: u32 = 13;
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;

// xen: public/event_channel.h, EVTCHNOP_* commands, EVTCHNSTAT_* states; public/xen.h VIRQ_*.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
pub const EVTCHNOP_CLOSE: u32 = 3;
pub const EVTCHNOP_SEND: u32 = 4;
pub const EVTCHNOP_STATUS: u32 = 5;
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
pub const EVTCHNOP_BIND_IPI: u32 = 7;
pub const EVTCHNOP_UNMASK: u32 = 9;
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
pub const EVTCHNSTAT_IPI: u32 = 5;
pub const VIRQ_TIMER: u32 = 0;
pub const VIRQ_DEBUG: u32 = 1;

// xen: public/vcpu.h, VCPUOP_* commands, VCPU_SSHOTTMR_future, RUNSTATE_* states.
pub const VCPUOP_INITIALISE: u64 = 0;
pub const VCPUOP_UP: u64 = 1;
pub const VCPUOP_DOWN: u64 = 2;
pub const VCPUOP_IS_UP: u64 = 3;
pub const VCPUOP_GET_RUNSTATE_INFO: u64 = 4;
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;
pub const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1;
pub const RUNSTATE_RUNNING: u64 = 0;
pub const RUNSTATE_RUNNABLE: u64 = 1;
pub const RUNSTATE_BLOCKED: u64 = 2;
pub const RUNSTATE_OFFLINE: u64 = 3;

// xen: public/callback.h, CALLBACKOP_register and the callback types; CALLBACKF_mask_events.
pub const CALLBACKOP_REGISTER: u64 = 0;
pub const CALLBACKTYPE_EVENT: u16 = 0;
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
pub const CALLBACKF_MASK_EVENTS: u16 = 1;

// xen: public/arch-x86/xen.h, vcpu_guest_context.flags.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;

// xen: public/xen.h `struct shared_info` (x86_64), in u64 words: vcpu_info[32] of 8 words
// each (the pvclock `vcpu_time_info` is words 4..8 of one), then evtchn_pending[64] at byte
// 2048, evtchn_mask[64] at 2560, wc_version/wc_sec at 3072.
pub const SHINFO_VCPU_INFO_WORDS: usize = 8;
pub const SHINFO_PENDING_WORD0: usize = 2048 / 8;
pub const SHINFO_MASK_WORD0: usize = 2560 / 8;
pub const SHINFO_WC_WORD: usize = 3072 / 8;

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

/// xen: public/xen.h `struct mmu_update`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}

/// xen: public/xen.h `struct mmuext_op` (cmd, then the arg1 and arg2 unions).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmuextOp {
    pub cmd: u32,
    pub pad: u32,
    pub arg1: u64,
    pub arg2: u64,
}
const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);

/// xen: public/callback.h `struct callback_register`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CallbackRegister {
    pub ty: u16,
    pub flags: u16,
    pub pad: u32,
    pub address: u64,
}

/// xen: public/sched.h `sched_shutdown`.
#[repr(C)]
pub struct SchedShutdown {
    pub reason: u32,
}
