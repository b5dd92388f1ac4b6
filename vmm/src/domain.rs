//! A running PV domain: the state shared by its vCPUs and hypercall handlers.
//!
//! [`DomainShared`] is the `D` of [`crate::hypercall::HypercallCtx`]: everything a handler may
//! need beyond the calling vCPU. It is shared between vCPU threads, so mutable parts sit behind
//! locks or atomics.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use kxen_devices::grant::GrantTable;
use tracing::{error, info, warn};
use vm_memory::{Bytes, GuestAddress};
use xen_abi::negotiate::LaunchMode;
use xen_abi::sched::ShutdownReason;
use xen_abi::shared_info::{vcpu_info_offset, CR2_OFFSET, UPCALL_MASK_OFFSET};

use crate::memory::{GuestRam, PAGE_SIZE};

/// No shutdown requested yet.
const NO_SHUTDOWN: u32 = u32::MAX;

/// Domain-wide state seen by hypercall handlers.
pub struct DomainShared {
    /// Domain name.
    pub name: String,
    /// Privileged (dom0-like) or not.
    pub mode: LaunchMode,
    /// `XENVER_get_features` submap 0, computed once at creation from the launch mode, the
    /// kernel's declaration and what kxen implements (`xen_abi::negotiate::features_submap`).
    pub features_submap0: u32,
    /// The guest's command line (`XENVER_commandline`, privileged domains only).
    pub cmdline: String,
    /// Pages of guest RAM.
    pub nr_pages: u64,
    /// Machine frame of shared_info.
    pub shared_info_mfn: u64,
    /// Console: where guest output goes, and keyboard input waiting for the guest.
    pub console: Mutex<ConsoleIo>,
    /// The domain's handle (UUID), for `XENVER_guest_handle`.
    pub handle: [u8; 16],
    /// The domain's grant table (v1), in the frames after shared_info; kxen's backends reach
    /// granted pages through it (`kxen_devices::grant`, with [`crate::hypercall::grant::GuestGrantMem`]).
    pub grant_table: GrantTable,
    shutdown: AtomicU32,
    /// `SCHEDOP_shutdown_code`: the code a later shutdown reports instead of its own.
    shutdown_code: AtomicU32,
    /// Watchdog slots in use (bit i = watchdog id i + 1).
    watchdogs: Mutex<u32>,
    /// Why kxen crashed the domain, if it did.
    crash_message: Mutex<Option<String>>,
    /// Frame table, side table, pins: the PV memory-management state (`crate::mm`).
    pub mm: Mutex<crate::mm::DomainMm>,
    /// Per vCPU, the guest-physical address of its `vcpu_info` once moved by
    /// `VCPUOP_register_vcpu_info` (0 = the legacy slot in shared_info).
    pub(crate) vcpu_info_at: Box<[AtomicU64]>,
    /// Event channels, backends and vCPU wake-ups, once attached ([`crate::events`]).
    pub(crate) events: OnceLock<crate::events::DomainEvents>,
    /// The domain's time (clock, timers, runstate), once attached ([`crate::time::wire`]).
    pub(crate) time: OnceLock<crate::time::wire::TimeWiring>,
    /// Up/down state of the vCPUs ([`crate::smp`]), once attached.
    pub(crate) smp: OnceLock<crate::smp::Smp>,
    /// Machine frames of the M2P's 2 MiB extents ([`crate::ring0::Ring0Layer::m2p_extent_mfns`]),
    /// once set at launch; `XENMEM_machphys_mfn_list` reports them.
    pub m2p_extent_mfns: OnceLock<Vec<u64>>,
}

/// vCPUs whose `vcpu_info` may be moved with `VCPUOP_register_vcpu_info`.
pub const MAX_VCPU_INFO_SLOTS: usize = 128;

/// Number of per-domain watchdogs (xen: common/sched/core.c, NR_DOMAIN_WATCHDOG_TIMERS).
pub const NR_WATCHDOGS: u32 = 2;

/// The host side of the console.
pub struct ConsoleIo {
    /// Guest output (console_io write and the console ring).
    pub out: Box<dyn Write + Send>,
    /// Input not yet taken by the guest (console_io read or the ring).
    pub input: VecDeque<u8>,
}

impl DomainShared {
    /// New shared state; `out` receives the guest's console output.
    pub fn new(
        name: String,
        mode: LaunchMode,
        features_submap0: u32,
        cmdline: String,
        nr_pages: u64,
        shared_info_mfn: u64,
        out: Box<dyn Write + Send>,
    ) -> Self {
        DomainShared {
            name,
            mode,
            features_submap0,
            cmdline,
            nr_pages,
            shared_info_mfn,
            console: Mutex::new(ConsoleIo {
                out,
                input: VecDeque::new(),
            }),
            handle: [0; 16],
            grant_table: GrantTable::new(
                crate::builder::grant_table_mfn(nr_pages),
                crate::builder::MAX_GRANT_FRAMES,
            ),
            shutdown: AtomicU32::new(NO_SHUTDOWN),
            shutdown_code: AtomicU32::new(NO_SHUTDOWN),
            watchdogs: Mutex::new(0),
            crash_message: Mutex::new(None),
            mm: Mutex::new(crate::mm::DomainMm::default()),
            vcpu_info_at: (0..MAX_VCPU_INFO_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            events: OnceLock::new(),
            time: OnceLock::new(),
            smp: OnceLock::new(),
            m2p_extent_mfns: OnceLock::new(),
        }
    }

    /// The vCPUs' up/down state, once attached.
    pub fn smp(&self) -> Option<&crate::smp::Smp> {
        self.smp.get()
    }

    /// Whether this is a privileged domain.
    pub fn privileged(&self) -> bool {
        self.mode == LaunchMode::Privileged
    }

    /// Record a shutdown request (SCHEDOP_shutdown). The first reason wins, as in Xen where
    /// a domain that is shutting down ignores later requests.
    pub fn request_shutdown(&self, reason: ShutdownReason) {
        let _ = self.shutdown.compare_exchange(
            NO_SHUTDOWN,
            reason.as_u32(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The shutdown reason, once requested.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        ShutdownReason::from_u32(self.shutdown.load(Ordering::Acquire))
    }

    /// `domain_shutdown(d, code)` as Xen does it: an earlier `SCHEDOP_shutdown_code` wins
    /// over `code`; the first shutdown wins over later ones. Codes Xen's public header does
    /// not define (Xen accepts any `u8`) are reported as a crash.
    // xen: common/domain.c, domain_shutdown
    pub fn shutdown_with_code(&self, code: u8) {
        let _ = self.shutdown_code.compare_exchange(
            NO_SHUTDOWN,
            u32::from(code),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let code = self.shutdown_code.load(Ordering::Acquire);
        let reason = ShutdownReason::from_u32(code).unwrap_or_else(|| {
            warn!(domain = %self.name, code, "shutdown with an unknown code: reported as crash");
            ShutdownReason::Crash
        });
        info!(domain = %self.name, reason = reason.name(), "domain shutdown requested");
        self.request_shutdown(reason);
    }

    /// `SCHEDOP_shutdown_code`: remember `code` for a later shutdown (first one wins).
    // xen: common/sched/core.c, SCHEDOP_shutdown_code
    pub fn set_shutdown_code(&self, code: u8) {
        let _ = self.shutdown_code.compare_exchange(
            NO_SHUTDOWN,
            u32::from(code),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Crash the domain (Xen's `domain_crash`): log why and request a crash shutdown.
    pub fn crash(&self, why: &str) {
        error!(domain = %self.name, "domain crash: {why}");
        if self.shutdown_reason().is_none() {
            let mut m = match self.crash_message.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            m.get_or_insert_with(|| why.to_string());
        }
        self.request_shutdown(ShutdownReason::Crash);
    }

    /// Why kxen crashed the domain ([`DomainShared::crash`]), if it did.
    pub fn crash_message(&self) -> Option<String> {
        match self.crash_message.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// `SCHEDOP_watchdog` bookkeeping: id 0 allocates a slot (returns its id), id 1..=2
    /// with timeout 0 frees it, otherwise pokes it. kxen never fires watchdogs.
    // xen: common/sched/core.c, domain_watchdog
    pub fn watchdog(&self, id: u32, timeout: u32) -> Result<u32, u32> {
        use xen_abi::errno::{EINVAL, ENOSPC};
        if id > NR_WATCHDOGS {
            return Err(EINVAL);
        }
        let mut used = match self.watchdogs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if id == 0 {
            let free = (0..NR_WATCHDOGS).find(|i| *used & (1 << i) == 0);
            return match free {
                Some(i) => {
                    *used |= 1 << i;
                    Ok(i + 1)
                }
                None => Err(ENOSPC),
            };
        }
        let bit = 1 << (id - 1);
        if *used & bit == 0 {
            return Err(EINVAL);
        }
        if timeout == 0 {
            *used &= !bit;
        }
        Ok(0)
    }

    /// Guest-physical address of `vcpu_info[vcpu]`: where `VCPUOP_register_vcpu_info` put
    /// it, else its legacy slot in shared_info (`None` for a vCPU without one).
    pub fn vcpu_info_base(&self, vcpu: u32) -> Option<u64> {
        let moved = self
            .vcpu_info_at
            .get(usize::try_from(vcpu).ok()?)
            .map_or(0, |a| a.load(Ordering::Acquire));
        if moved != 0 {
            return Some(moved);
        }
        let off = vcpu_info_offset(usize::try_from(vcpu).ok()?)?;
        self.shared_info_mfn
            .checked_mul(PAGE_SIZE)?
            .checked_add(off as u64)
    }

    fn vcpu_info_gpa(&self, vcpu: u32, field: usize) -> Option<GuestAddress> {
        let base = self.vcpu_info_base(vcpu)?;
        Some(GuestAddress(base.checked_add(field as u64)?))
    }

    /// `vcpu_info[vcpu].evtchn_upcall_mask`; `None` if the vCPU has no slot in shared_info
    /// or shared_info is not in guest RAM.
    pub fn upcall_mask(&self, ram: &GuestRam, vcpu: u32) -> Option<u8> {
        let gpa = self.vcpu_info_gpa(vcpu, UPCALL_MASK_OFFSET)?;
        ram.mem().read_obj(gpa).ok()
    }

    /// Set `vcpu_info[vcpu].evtchn_upcall_mask`; false if there is no such slot.
    pub fn set_upcall_mask(&self, ram: &GuestRam, vcpu: u32, mask: u8) -> bool {
        self.vcpu_info_gpa(vcpu, UPCALL_MASK_OFFSET)
            .is_some_and(|gpa| ram.mem().write_obj(mask, gpa).is_ok())
    }

    /// Set `vcpu_info[vcpu].arch.cr2` (Xen writes it when bouncing a #PF).
    pub fn set_cr2(&self, ram: &GuestRam, vcpu: u32, cr2: u64) -> bool {
        self.vcpu_info_gpa(vcpu, CR2_OFFSET)
            .is_some_and(|gpa| ram.mem().write_obj(cr2, gpa).is_ok())
    }

    /// Write guest console output to the host.
    pub fn console_write(&self, data: &[u8]) {
        let mut c = match self.console.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        // Host output failures must not stall or crash the guest.
        let _ = c.out.write_all(data);
        let _ = c.out.flush();
    }
}
