//! `sched_op` sub-ops, shutdown reasons and argument layouts (xen: public/sched.h).

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

/// Give up the CPU voluntarily.
pub const SCHEDOP_YIELD: u32 = 0;
/// Block until an event is pending (clears the upcall mask).
pub const SCHEDOP_BLOCK: u32 = 1;
/// Shut the domain down; arg = `SchedShutdown`.
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// Block until one of a set of ports is pending or a timeout; arg = `SchedPoll`.
pub const SCHEDOP_POLL: u32 = 3;
/// Shut another domain down (privileged); arg = `SchedRemoteShutdown`.
pub const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
/// Record a shutdown code without shutting down; arg = `SchedShutdown`.
pub const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
/// Set up/poke/kill a domain watchdog; arg = `SchedWatchdog`.
pub const SCHEDOP_WATCHDOG: u32 = 6;
/// Pin the vCPU to a physical CPU (hardware domain only); arg = `SchedPinOverride`.
pub const SCHEDOP_PIN_OVERRIDE: u32 = 7;

/// Name of a `SCHEDOP_*` sub-op.
pub const fn name(op: u32) -> Option<&'static str> {
    Some(match op {
        SCHEDOP_YIELD => "yield",
        SCHEDOP_BLOCK => "block",
        SCHEDOP_SHUTDOWN => "shutdown",
        SCHEDOP_POLL => "poll",
        SCHEDOP_REMOTE_SHUTDOWN => "remote_shutdown",
        SCHEDOP_SHUTDOWN_CODE => "shutdown_code",
        SCHEDOP_WATCHDOG => "watchdog",
        SCHEDOP_PIN_OVERRIDE => "pin_override",
        _ => return None,
    })
}

/// Domain exited normally; clean up and kill.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// Clean up, kill and restart.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// Clean up, save suspend info, kill.
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// Tell controller we have crashed.
pub const SHUTDOWN_CRASH: u32 = 3;
/// Restart because the watchdog fired.
pub const SHUTDOWN_WATCHDOG: u32 = 4;
/// Soft reset: keep the domain, reset its state.
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
/// Largest defined reason.
pub const SHUTDOWN_MAX: u32 = 5;

/// A shutdown reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`
    Poweroff = SHUTDOWN_POWEROFF,
    /// `SHUTDOWN_reboot`
    Reboot = SHUTDOWN_REBOOT,
    /// `SHUTDOWN_suspend`
    Suspend = SHUTDOWN_SUSPEND,
    /// `SHUTDOWN_crash`
    Crash = SHUTDOWN_CRASH,
    /// `SHUTDOWN_watchdog`
    Watchdog = SHUTDOWN_WATCHDOG,
    /// `SHUTDOWN_soft_reset`
    SoftReset = SHUTDOWN_SOFT_RESET,
}

impl ShutdownReason {
    /// Decode a guest-supplied reason; `None` for an unknown value.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            SHUTDOWN_POWEROFF => Self::Poweroff,
            SHUTDOWN_REBOOT => Self::Reboot,
            SHUTDOWN_SUSPEND => Self::Suspend,
            SHUTDOWN_CRASH => Self::Crash,
            SHUTDOWN_WATCHDOG => Self::Watchdog,
            SHUTDOWN_SOFT_RESET => Self::SoftReset,
            _ => return None,
        })
    }

    /// Xen's name ("poweroff", "crash", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
            Self::Watchdog => "watchdog",
            Self::SoftReset => "soft_reset",
        }
    }

    /// The raw value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}
impl_pod!(SchedShutdown { u32 });
const _: () = assert!(size_of::<SchedShutdown>() == 4);

/// `struct sched_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPoll {
    /// Guest handle (virtual address) of an array of `evtchn_port_t`.
    pub ports: u64,
    /// Number of ports.
    pub nr_ports: u32,
    /// Padding (explicit).
    pub _pad: u32,
    /// Absolute system time (ns) to give up at; 0 = no timeout.
    pub timeout: u64,
}
impl_pod!(SchedPoll { u64, u32, u32, u64 });
const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(offset_of!(SchedPoll, timeout) == 16);

/// `struct sched_remote_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedRemoteShutdown {
    /// Target domain.
    pub domain_id: u16,
    /// Padding (explicit).
    pub _pad: u16,
    /// `SHUTDOWN_*`.
    pub reason: u32,
}
impl_pod!(SchedRemoteShutdown { u16, u16, u32 });
const _: () = assert!(size_of::<SchedRemoteShutdown>() == 8);
const _: () = assert!(offset_of!(SchedRemoteShutdown, reason) == 4);

/// `struct sched_watchdog`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedWatchdog {
    /// 0 = allocate a new watchdog (id returned), else the watchdog to poke/kill.
    pub id: u32,
    /// Seconds; 0 kills the watchdog.
    pub timeout: u32,
}
impl_pod!(SchedWatchdog { u32, u32 });
const _: () = assert!(size_of::<SchedWatchdog>() == 8);

/// `struct sched_pin_override`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPinOverride {
    /// Physical CPU; negative undoes the override.
    pub pcpu: i32,
}
impl_pod!(SchedPinOverride { i32 });
const _: () = assert!(size_of::<SchedPinOverride>() == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn numbers_match_sched_h() {
        assert_eq!(
            [SCHEDOP_YIELD, SCHEDOP_BLOCK, SCHEDOP_SHUTDOWN, SCHEDOP_POLL],
            [0, 1, 2, 3]
        );
        assert_eq!(SCHEDOP_PIN_OVERRIDE, 7);
        assert_eq!(name(2), Some("shutdown"));
        assert_eq!(name(8), None);
    }

    #[test]
    fn shutdown_reason_round_trip() {
        for v in 0..=SHUTDOWN_MAX {
            let r = ShutdownReason::from_u32(v).unwrap();
            assert_eq!(r.as_u32(), v);
        }
        assert_eq!(ShutdownReason::from_u32(6), None);
        assert_eq!(ShutdownReason::from_u32(u32::MAX), None);
        assert_eq!(ShutdownReason::Crash.name(), "crash");
        assert_eq!(
            ShutdownReason::from_u32(5).map(ShutdownReason::name),
            Some("soft_reset")
        );
    }

    #[test]
    fn sched_poll_layout() {
        assert_eq!(size_of::<SchedPoll>(), 24);
        let p = SchedPoll {
            ports: 0xffff_8800_0000_1000,
            nr_ports: 2,
            _pad: 0,
            timeout: 9,
        };
        let b = p.as_bytes();
        assert_eq!(b[8], 2);
        assert_eq!(b[16], 9);
        assert_eq!(SchedPoll::from_bytes(b), Some(p));
    }
}
