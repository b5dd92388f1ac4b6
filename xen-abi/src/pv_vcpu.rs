//! kxen's per-vCPU PV state: what Xen keeps per vCPU for a PV guest (the virtual trap table,
//! the callbacks, the kernel stack used on guest user->kernel transitions, the two page-table
//! bases, the guest's mode and its `vm_assist` bits).
//!
//! The layout is `#[repr(C)]` with fixed-size fields and no padding holes left implicit, so that
//! code running inside the VM (the ring-0 layer) can read it later. Today the VMM keeps one
//! instance per vCPU in host memory (see `kxen::vcpu`).

/// `trap_info.flags` bits 0-1: the DPL a software `int` from the guest needs.
// xen: public/arch-x86/xen.h, struct trap_info ("0-3: privilege level")
pub const TRAP_FLAG_DPL_MASK: u8 = 0x3;
/// `trap_info.flags` bit 2: clear the event mask (virtual IF) when entering this handler.
// xen: public/arch-x86/xen.h, struct trap_info ("4: clear event enable?"), TI_SET_IF
pub const TRAP_FLAG_MASK_EVENTS: u8 = 0x4;

/// One entry of a vCPU's virtual trap table (`HYPERVISOR_set_trap_table`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapEntry {
    /// Guest-virtual address of the handler; 0 means "no handler".
    pub address: u64,
    /// Code selector the handler runs with (as the guest gave it).
    pub cs: u16,
    /// `TRAP_FLAG_*` bits.
    pub flags: u8,
    /// Explicit padding (always 0).
    pub pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<TrapEntry>() == 16);

impl TrapEntry {
    /// Whether a handler is installed.
    pub const fn is_set(&self) -> bool {
        self.address != 0
    }
    /// The DPL a software interrupt needs to reach this handler directly.
    pub const fn dpl(&self) -> u8 {
        self.flags & TRAP_FLAG_DPL_MASK
    }
    /// Whether entering the handler masks events.
    pub const fn masks_events(&self) -> bool {
        self.flags & TRAP_FLAG_MASK_EVENTS != 0
    }
}

/// `CALLBACKF_mask_events`: mask events while the callback runs.
// xen: public/callback.h, CALLBACKF_mask_events
pub const CALLBACK_FLAG_MASK_EVENTS: u16 = 1;

/// One registered callback (`HYPERVISOR_callback_op` / `set_callbacks`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackEntry {
    /// Guest-virtual address; 0 means "not registered".
    pub address: u64,
    /// `CALLBACK_FLAG_*` bits.
    pub flags: u16,
    /// Explicit padding (always 0).
    pub pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<CallbackEntry>() == 16);

/// Index of each callback in [`PvVcpuState::callbacks`]; equal to Xen's `CALLBACKTYPE_*`.
// xen: public/callback.h, CALLBACKTYPE_event..CALLBACKTYPE_syscall32
pub mod callback_index {
    /// Event upcall.
    pub const EVENT: usize = 0;
    /// Failsafe (bad segment on return to guest).
    pub const FAILSAFE: usize = 1;
    /// 64-bit `syscall` from guest user mode.
    pub const SYSCALL: usize = 2;
    /// `sysenter` from 32-bit guest user mode.
    pub const SYSENTER: usize = 3;
    /// NMI.
    pub const NMI: usize = 4;
    /// 32-bit `syscall` from guest user mode.
    pub const SYSCALL32: usize = 7;
    /// Number of slots.
    pub const COUNT: usize = 8;
}

/// The guest's current privilege mode. Both run at CPL3; Xen tracks which one the guest is in.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestMode {
    /// Guest kernel mode (page tables = `kernel_cr3`).
    #[default]
    Kernel = 0,
    /// Guest user mode (page tables = `user_cr3`).
    User = 1,
}

/// Number of vectors in the virtual trap table.
pub const NR_TRAPS: usize = 256;

/// Per-vCPU PV state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvVcpuState {
    /// Virtual trap table, indexed by vector.
    pub traps: [TrapEntry; NR_TRAPS],
    /// Callbacks indexed by [`callback_index`].
    pub callbacks: [CallbackEntry; callback_index::COUNT],
    /// Kernel stack selector for user->kernel transitions (`HYPERVISOR_stack_switch`).
    pub kernel_ss: u64,
    /// Kernel stack pointer for user->kernel transitions.
    pub kernel_sp: u64,
    /// Page-table base (machine address) used in kernel mode.
    pub kernel_cr3: u64,
    /// Page-table base used in user mode (0 = none set).
    pub user_cr3: u64,
    /// FS base (`HYPERVISOR_set_segment_base`).
    pub fs_base: u64,
    /// GS base in kernel mode.
    pub gs_base_kernel: u64,
    /// GS base in user mode.
    pub gs_base_user: u64,
    /// `vm_assist` bits (`VMASST_TYPE_*` as bit numbers).
    pub vm_assist: u64,
    /// Current mode, a [`GuestMode`] as `u32`.
    pub mode: u32,
    /// Nesting depth of event upcalls in progress.
    pub upcall_depth: u32,
    /// An upcall is due at the next return to the guest.
    pub upcall_pending: u32,
    /// Virtual I/O privilege level, 0..=3 (`PHYSDEVOP_set_iopl`, or `iret` with
    /// `VMASST_TYPE_architectural_iopl`).
    pub iopl: u32,
    /// Virtual CR0.TS (`fpu_taskswitch`): non-zero = set.
    pub cr0_ts: u32,
    /// `PENDING_*` bits: state the run loop must apply to the vCPU before the next entry.
    pub pending: u32,
    /// Selector for a pending `PENDING_GS_USER_SEL` load (`SEGBASE_GS_USER_SEL`).
    pub gs_user_sel: u32,
    /// Debug registers DR0-DR7 as the guest set them (`set_debugreg`; 4 and 5 unused).
    pub debugreg: [u64; 8],
    /// Entries of the guest GDT (`set_gdt`; 0 = none).
    pub gdt_ents: u64,
    /// Machine frames of the guest GDT.
    pub gdt_frames: [u64; 14],
}
const _: () =
    assert!(core::mem::size_of::<PvVcpuState>() == 4096 + 128 + 8 * 8 + 28 + 4 + 64 + 8 + 14 * 8);

/// `PvVcpuState::pending`: debug registers changed.
pub const PENDING_DEBUGREGS: u32 = 1 << 0;
/// `PvVcpuState::pending`: the GDT (frames or a descriptor in them) changed.
pub const PENDING_GDT: u32 = 1 << 1;
/// `PvVcpuState::pending`: load `gs_user_sel` into the user GS.
pub const PENDING_GS_USER_SEL: u32 = 1 << 2;
/// `PvVcpuState::pending`: the LDT (`MMUEXT_SET_LDT`) changed: reload LDTR.
pub const PENDING_LDT: u32 = 1 << 3;

impl Default for PvVcpuState {
    fn default() -> Self {
        Self {
            traps: [TrapEntry::default(); NR_TRAPS],
            callbacks: [CallbackEntry::default(); callback_index::COUNT],
            kernel_ss: 0,
            kernel_sp: 0,
            kernel_cr3: 0,
            user_cr3: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            vm_assist: 0,
            mode: GuestMode::Kernel as u32,
            upcall_depth: 0,
            upcall_pending: 0,
            iopl: 0,
            cr0_ts: 0,
            pending: 0,
            gs_user_sel: 0,
            debugreg: [0, 0, 0, 0, 0, 0, xen_abi_dr6_default(), 0x400],
            gdt_ents: 0,
            gdt_frames: [0; 14],
        }
    }
}

const fn xen_abi_dr6_default() -> u64 {
    crate::cpu::DR6_DEFAULT
}

impl PvVcpuState {
    /// The current mode; an out-of-range stored value reads as kernel mode.
    pub const fn guest_mode(&self) -> GuestMode {
        match self.mode {
            1 => GuestMode::User,
            _ => GuestMode::Kernel,
        }
    }
    /// Set the current mode.
    pub fn set_guest_mode(&mut self, mode: GuestMode) {
        self.mode = mode as u32;
    }
    /// The page-table base for the current mode (user mode without a user table uses the
    /// kernel one).
    pub const fn current_cr3(&self) -> u64 {
        match self.guest_mode() {
            GuestMode::User if self.user_cr3 != 0 => self.user_cr3,
            _ => self.kernel_cr3,
        }
    }
    /// Whether `vm_assist` bit `ty` is enabled (false for `ty >= 64`).
    pub const fn vm_assist(&self, ty: u32) -> bool {
        ty < 64 && self.vm_assist & (1u64 << ty) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_is_kernel_mode_with_empty_tables() {
        let s = PvVcpuState::default();
        assert_eq!(s.guest_mode(), GuestMode::Kernel);
        assert!(s.traps.iter().all(|t| !t.is_set()));
        assert!(s.callbacks.iter().all(|c| c.address == 0));
    }

    #[test]
    fn current_cr3_follows_mode_and_falls_back_to_kernel() {
        let mut s = PvVcpuState {
            kernel_cr3: 0x1000,
            ..Default::default()
        };
        s.set_guest_mode(GuestMode::User);
        assert_eq!(s.current_cr3(), 0x1000);
        s.user_cr3 = 0x2000;
        assert_eq!(s.current_cr3(), 0x2000);
        s.set_guest_mode(GuestMode::Kernel);
        assert_eq!(s.current_cr3(), 0x1000);
    }

    #[test]
    fn bad_mode_value_reads_as_kernel_and_vm_assist_is_bounded() {
        let s = PvVcpuState {
            mode: 77,
            vm_assist: 1 << 3,
            ..Default::default()
        };
        assert_eq!(s.guest_mode(), GuestMode::Kernel);
        assert!(s.vm_assist(3));
        assert!(!s.vm_assist(2));
        assert!(!s.vm_assist(64));
        assert!(!s.vm_assist(u32::MAX));
    }

    #[test]
    fn trap_entry_flags_decode() {
        let t = TrapEntry {
            address: 0x1234,
            cs: 0xe033,
            flags: 3 | TRAP_FLAG_MASK_EVENTS,
            pad: [0; 5],
        };
        assert!(t.is_set());
        assert_eq!(t.dpl(), 3);
        assert!(t.masks_events());
    }
}
