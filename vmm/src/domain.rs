//! A running PV domain: the state shared by its vCPUs and hypercall handlers.
//!
//! [`DomainShared`] is the `D` of [`crate::hypercall::HypercallCtx`]: everything a handler may
//! need beyond the calling vCPU. It is shared between vCPU threads, so mutable parts sit behind
//! locks or atomics.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use xen_abi::negotiate::LaunchMode;
use xen_abi::sched::ShutdownReason;

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
    shutdown: AtomicU32,
}

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
            shutdown: AtomicU32::new(NO_SHUTDOWN),
        }
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
