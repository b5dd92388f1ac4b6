//! Xen's PV time interface, testable without a guest: pvclock math ([`pvclock`]), the
//! published clocks ([`clock`]: `vcpu_time_info`, wallclock), per-vCPU timers ([`timer`]),
//! the host timer thread ([`thread`]), runstate accounting ([`runstate`]) and the memory
//! they are written to ([`sink`]).
//!
//! [`VcpuTime`] bundles one vCPU's state and exposes one method per hypercall the handlers
//! forward (`set_timer_op`, `VCPUOP_*` timer/area ops, `SCHEDOP_block`).

pub mod clock;
pub mod domain;
pub mod pvclock;
pub mod runstate;
pub mod sink;
pub mod thread;
pub mod timer;

pub use clock::{DomainClock, VcpuClock, Wallclock};
pub use domain::{DomainTime, VcpuOpCall};
pub use pvclock::{scale_delta, TimeScale};
pub use runstate::{RunState, Runstate, RunstateInfo, XEN_RUNSTATE_UPDATE};
pub use sink::{AtomicArea, GpaSink, TimeInfoSink, VirtSink};
pub use thread::TimerThread;
pub use timer::{TimerState, VCPU_SSHOTTMR_FUTURE};

use crate::memory::GuestAccessError;
use thiserror::Error;
use xen_abi::errno::Errno;

// xen: public/vcpu.h, VCPUOP_* numbers used here.
/// `VCPUOP_get_runstate_info`; arg = `vcpu_runstate_info` (out).
pub const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// `VCPUOP_register_runstate_memory_area`; arg = `{ u64 addr }` (guest virtual).
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// `VCPUOP_set_periodic_timer`; arg = `{ u64 period_ns }`.
pub const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// `VCPUOP_stop_periodic_timer`; no arg.
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `VCPUOP_set_singleshot_timer`; arg = `{ u64 timeout_abs_ns; u32 flags }` (16 bytes).
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer`; no arg.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// `VCPUOP_register_vcpu_time_memory_area`; arg = `{ u64 addr }` (guest virtual).
pub const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
/// Size of `struct vcpu_set_singleshot_timer` on x86_64.
pub const SINGLESHOT_ARG_SIZE: usize = 16;
/// Size of `struct vcpu_time_info`.
pub const TIME_INFO_SIZE: usize = 32;
/// Size of `struct vcpu_runstate_info`.
pub const RUNSTATE_INFO_SIZE: usize = 48;

/// Errors of the time module (host side and guest-memory writes).
#[derive(Debug, Error)]
pub enum TimeError {
    /// A write outside the area it was given.
    #[error("write of {len} bytes at offset {offset} outside a {area}-byte area")]
    OutOfArea {
        /// Offset asked.
        offset: usize,
        /// Length asked.
        len: usize,
        /// Area size.
        area: usize,
    },
    /// A guest-physical address outside guest RAM.
    #[error("guest-physical address {0:#x} outside guest RAM")]
    BadGpa(u64),
    /// A guest-virtual access failed (Xen's `-EFAULT`).
    #[error(transparent)]
    Guest(#[from] GuestAccessError),
    /// No usable TSC frequency.
    #[error("cannot determine the TSC frequency")]
    Calibration,
    /// The timer thread could not start.
    #[error("cannot start the timer thread: {0}")]
    Thread(std::io::Error),
}

impl TimeError {
    /// The errno a hypercall reports for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Self::OutOfArea { .. } | Self::BadGpa(_) | Self::Guest(_) => Errno::EFAULT,
            Self::Calibration | Self::Thread(_) => Errno::EIO,
        }
    }
}

/// Decode `struct vcpu_set_singleshot_timer` bytes: `(timeout_abs_ns, flags)`.
pub fn parse_singleshot_arg(b: &[u8; SINGLESHOT_ARG_SIZE]) -> (u64, u32) {
    let mut t = [0u8; 8];
    t.copy_from_slice(&b[0..8]);
    let mut f = [0u8; 4];
    f.copy_from_slice(&b[8..12]);
    (u64::from_le_bytes(t), u32::from_le_bytes(f))
}

/// All time state of one vCPU.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTime {
    /// `vcpu_info.time` publisher (and of the secondary area: same record).
    pub clock: VcpuClock,
    /// Guest timers.
    pub timers: TimerState,
    /// Runstate accounting.
    pub runstate: Runstate,
    /// `VCPUOP_register_vcpu_time_memory_area` address (guest virtual), if any.
    pub time_area: Option<u64>,
    /// `VCPUOP_register_runstate_memory_area` address (guest virtual), if any.
    pub runstate_area: Option<u64>,
}

impl VcpuTime {
    /// A vCPU created at system time `now` in `state` (vCPU 0 starts `Running`, others
    /// `Offline` until `VCPUOP_up`).
    pub fn new(state: RunState, now: u64) -> Self {
        Self {
            clock: VcpuClock::new(),
            timers: TimerState::new(),
            runstate: Runstate::new(state, now),
            time_area: None,
            runstate_area: None,
        }
    }

    /// `set_timer_op(timeout)` → always 0.
    pub fn set_timer_op(&mut self, timeout: u64, now: u64) -> i64 {
        self.timers.set_timer_op(timeout, now)
    }

    /// `VCPUOP_set_singleshot_timer` with the argument already copied from the guest.
    /// Xen also requires the target vCPU to be the caller (`-EINVAL` otherwise): the handler
    /// checks that before calling.
    pub fn set_singleshot(
        &mut self,
        arg: &[u8; SINGLESHOT_ARG_SIZE],
        now: u64,
    ) -> Result<(), Errno> {
        let (timeout, flags) = parse_singleshot_arg(arg);
        self.timers.set_singleshot(timeout, flags, now)
    }

    /// `VCPUOP_set_periodic_timer` with `period_ns` copied from the guest.
    pub fn set_periodic(&mut self, period_ns: u64, now: u64) -> Result<(), Errno> {
        self.timers.set_periodic(period_ns, now)
    }

    /// `VCPUOP_register_vcpu_time_memory_area`: remember `va` (0 unregisters, as a null
    /// handle in Xen). The handler then calls [`Self::publish`] to fill it at once (Xen forces
    /// an update).
    pub fn register_time_area(&mut self, va: u64) {
        self.time_area = (va != 0).then_some(va);
    }

    /// `VCPUOP_register_runstate_memory_area`: remember `va`; the handler then writes the
    /// current record with [`Runstate::write_to`] (Xen copies it at once).
    pub fn register_runstate_area(&mut self, va: u64) {
        self.runstate_area = (va != 0).then_some(va);
    }

    /// Refresh the clock from `domain` and write it to `vcpu_info.time` (`primary`) and, if
    /// given, the registered secondary area. A failed secondary write is ignored, as Xen.
    pub fn publish(
        &mut self,
        domain: &DomainClock,
        primary: &impl TimeInfoSink,
        secondary: Option<&dyn SinkDyn>,
    ) -> Result<(), TimeError> {
        self.clock.refresh(domain);
        self.clock.write_to(primary)?;
        if let Some(s) = secondary {
            if let Err(e) = self.clock.write_copy_to(&DynSink(s)) {
                tracing::debug!(error = %e, "secondary time area write failed");
            }
        }
        Ok(())
    }

    /// `SCHEDOP_block` bookkeeping: the vCPU becomes `Blocked` at `now`; the run loop then
    /// waits (up to `timers.wait_from(now)`) for an event, and calls [`Self::wake`].
    pub fn block(&mut self, now: u64) {
        self.runstate.change(RunState::Blocked, now);
    }

    /// The vCPU runs again at `now`; returns whether `VIRQ_TIMER` must be raised.
    pub fn wake(&mut self, now: u64) -> bool {
        self.runstate.change(RunState::Running, now);
        self.timers.expire(now)
    }
}

/// Object-safe view of a [`TimeInfoSink`] (for optional secondary areas).
pub trait SinkDyn {
    /// See [`TimeInfoSink::write`].
    fn write_dyn(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError>;
    /// See [`TimeInfoSink::store_u32`].
    fn store_u32_dyn(&self, offset: usize, v: u32) -> Result<(), TimeError>;
    /// See [`TimeInfoSink::store_u64`].
    fn store_u64_dyn(&self, offset: usize, v: u64) -> Result<(), TimeError>;
}

impl<T: TimeInfoSink> SinkDyn for T {
    fn write_dyn(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
        self.write(offset, bytes)
    }
    fn store_u32_dyn(&self, offset: usize, v: u32) -> Result<(), TimeError> {
        self.store_u32(offset, v)
    }
    fn store_u64_dyn(&self, offset: usize, v: u64) -> Result<(), TimeError> {
        self.store_u64(offset, v)
    }
}

struct DynSink<'a>(&'a dyn SinkDyn);

impl TimeInfoSink for DynSink<'_> {
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
        self.0.write_dyn(offset, bytes)
    }
    fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError> {
        self.0.store_u32_dyn(offset, v)
    }
    fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError> {
        self.0.store_u64_dyn(offset, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::arch::Pod;
    use xen_abi::shared_info::VcpuTimeInfo;

    fn domain() -> DomainClock {
        DomainClock::start(2_000_000, 0).unwrap()
    }

    #[test]
    fn singleshot_arg_decodes_timeout_and_flags() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&[0xff; 4]); // padding is ignored
        assert_eq!(parse_singleshot_arg(&b), (0x1122_3344_5566_7788, 1));
        let mut v = VcpuTime::new(RunState::Running, 0);
        b[0..8].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(v.set_singleshot(&b, 10), Err(Errno::ETIME));
        assert_eq!(v.set_periodic(0, 10), Err(Errno::EINVAL));
        assert_eq!(v.set_timer_op(u64::MAX, 10), 0);
    }

    #[test]
    fn publish_writes_primary_and_secondary_even_versions() {
        let d = domain();
        let mut v = VcpuTime::new(RunState::Running, 0);
        let p = AtomicArea::new(TIME_INFO_SIZE);
        let s = AtomicArea::new(TIME_INFO_SIZE);
        v.publish(&d, &p, Some(&s)).unwrap();
        let a = VcpuTimeInfo::from_bytes(&p.snapshot()).unwrap();
        let b = VcpuTimeInfo::from_bytes(&s.snapshot()).unwrap();
        assert_eq!(a, b);
        assert!(a.version.is_multiple_of(2));
        assert_eq!(a.tsc_to_system_mul, d.scale().mul);
        // A broken secondary area does not fail the primary update.
        v.publish(&d, &p, Some(&AtomicArea::new(8))).unwrap();
        assert!(v.publish(&d, &AtomicArea::new(8), None).is_err());
    }

    #[test]
    fn block_then_wake_accounts_blocked_time_and_reports_timer() {
        let mut v = VcpuTime::new(RunState::Running, 0);
        v.set_timer_op(50, 10);
        v.block(10);
        assert_eq!(
            v.timers.wait_from(10),
            Some(std::time::Duration::from_nanos(40))
        );
        assert!(v.wake(60));
        let r = v.runstate.info();
        assert_eq!(r.time[RunState::Running as usize], 10);
        assert_eq!(r.time[RunState::Blocked as usize], 50);
        assert!(!v.wake(70), "no timer armed any more");
    }

    #[test]
    fn registering_zero_unregisters() {
        let mut v = VcpuTime::new(RunState::Offline, 0);
        v.register_time_area(0x1000);
        v.register_runstate_area(0x2000);
        assert_eq!((v.time_area, v.runstate_area), (Some(0x1000), Some(0x2000)));
        v.register_time_area(0);
        v.register_runstate_area(0);
        assert_eq!((v.time_area, v.runstate_area), (None, None));
    }

    #[test]
    fn errors_map_to_efault() {
        assert_eq!(TimeError::BadGpa(1).errno(), Errno::EFAULT);
        assert_eq!(
            TimeError::Guest(GuestAccessError::NonCanonical(1)).errno(),
            Errno::EFAULT
        );
    }
}
