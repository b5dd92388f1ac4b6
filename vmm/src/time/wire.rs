//! The domain's time, wired: [`DomainShared::attach_time`] creates the [`DomainTime`] at
//! domain creation (wallclock and every `vcpu_info.time` written, host timer thread started),
//! and the run loop / handlers reach it through [`DomainShared::time`].
//!
//! The timer thread's callback expires the vCPU's timers and raises `VIRQ_TIMER`
//! ([`DomainShared::raise_virq`] wakes a blocked vCPU and kicks a running one out of
//! `KVM_RUN`); it also marks the vCPU's time record stale, so the run loop republishes it
//! before the guest runs again ([`DomainShared::time_before_resume`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use xen_abi::event_channel::VIRQ_TIMER;

use super::clock::{monotonic_ns, DomainClock};
use super::{DomainTime, TimeError};
use crate::domain::DomainShared;
use crate::memory::{GuestRam, GuestVirt};

/// How often the run loop republishes a vCPU's `vcpu_time_info` even without a timer
/// (Xen refreshes it at least once a second, on its calibration timer).
pub const REFRESH_NS: u64 = 1_000_000_000;

/// [`DomainTime`] with the per-vCPU republishing state the run loop needs.
#[derive(Debug)]
pub struct TimeWiring {
    /// The domain's time.
    pub time: DomainTime,
    /// Per vCPU: the time record must be republished before the next return to the guest.
    stale: Box<[AtomicBool]>,
    /// Per vCPU: host monotonic ns of the last publication.
    published: Box<[AtomicU64]>,
}

impl DomainShared {
    /// Start the domain's time: a clock at `tsc_khz` with guest TSC = host TSC +
    /// `tsc_offset`, the wallclock and every vCPU's time record written into shared_info
    /// in `ram`, and the timer thread (which holds only a weak reference to `self`).
    /// Fails if already attached.
    pub fn attach_time(
        self: &Arc<Self>,
        ram: &GuestRam,
        nr_vcpus: u32,
        tsc_khz: u32,
        tsc_offset: u64,
    ) -> Result<(), TimeError> {
        let clock = DomainClock::start(tsc_khz, tsc_offset)?;
        let gpa = self
            .shared_info_mfn
            .checked_mul(crate::memory::PAGE_SIZE)
            .ok_or(TimeError::BadGpa(u64::MAX))?;
        let time = DomainTime::new(clock, nr_vcpus as usize, gpa);
        time.init_shared_info(ram)?;
        let now = monotonic_ns();
        let wiring = TimeWiring {
            time,
            stale: (0..nr_vcpus).map(|_| AtomicBool::new(false)).collect(),
            published: (0..nr_vcpus).map(|_| AtomicU64::new(now)).collect(),
        };
        if self.time.set(wiring).is_err() {
            return Err(TimeError::Calibration);
        }
        let weak: Weak<DomainShared> = Arc::downgrade(self);
        let wiring = self.time.get().ok_or(TimeError::Calibration)?;
        wiring.time.start_timer_thread(move |v| {
            if let Some(d) = weak.upgrade() {
                d.timer_fired(v as u32);
            }
        })
    }

    /// The domain's time, once attached.
    pub fn time(&self) -> Option<&DomainTime> {
        self.time.get().map(|w| &w.time)
    }

    /// Timer thread callback: expire `vcpu`'s timers; if one fired, raise `VIRQ_TIMER`
    /// (waking or kicking the vCPU) and mark its time record stale.
    fn timer_fired(&self, vcpu: u32) {
        let Some(w) = self.time.get() else { return };
        if w.time.service_timers(vcpu) {
            self.mark_time_stale(vcpu);
            self.raise_virq(vcpu, VIRQ_TIMER, None);
        }
    }

    /// Ask for `vcpu`'s time record to be republished before it next enters the guest.
    pub fn mark_time_stale(&self, vcpu: u32) {
        if let Some(s) = self.time.get().and_then(|w| w.stale.get(vcpu as usize)) {
            s.store(true, Ordering::Release);
        }
    }

    /// Republish `vcpu`'s `vcpu_time_info` now (in its current `vcpu_info`, and the area
    /// registered with `VCPUOP_register_vcpu_time_memory_area` through `virt`).
    pub fn publish_vcpu_time(&self, ram: &GuestRam, virt: Option<GuestVirt<'_>>, vcpu: u32) {
        let Some(w) = self.time.get() else { return };
        let Some(base) = self.vcpu_info_base(vcpu) else {
            return;
        };
        if let Err(e) = w.time.update_vcpu_time_at(ram, virt, vcpu, base) {
            tracing::debug!(vcpu, error = %e, "vcpu_time_info update failed");
        }
        if let Some(s) = w.stale.get(vcpu as usize) {
            s.store(false, Ordering::Release);
        }
        if let Some(p) = w.published.get(vcpu as usize) {
            p.store(monotonic_ns(), Ordering::Relaxed);
        }
    }

    /// Run loop, before every return to the guest: republish `vcpu`'s time record if a
    /// timer fired or a block ended since, or if the last one is over a second old.
    /// `cr3` is the vCPU's current page-table base (for the secondary time area).
    pub fn time_before_resume(&self, ram: &GuestRam, cr3: u64, vcpu: u32) {
        let Some(w) = self.time.get() else { return };
        let i = vcpu as usize;
        let stale = w.stale.get(i).is_some_and(|s| s.load(Ordering::Acquire));
        let old = w.published.get(i).is_some_and(|p| {
            monotonic_ns().saturating_sub(p.load(Ordering::Relaxed)) >= REFRESH_NS
        });
        if stale || old {
            self.publish_vcpu_time(ram, Some(GuestVirt::new(ram, cr3)), vcpu);
        }
    }

    /// Stop the timer thread (the run ended); idempotent.
    pub fn stop_time(&self) {
        if let Some(w) = self.time.get() {
            w.time.stop_timer_thread();
        }
    }
}
