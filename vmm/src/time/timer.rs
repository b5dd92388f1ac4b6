//! Per-vCPU guest timers: the single-shot timer (`set_timer_op`,
//! `VCPUOP_set/stop_singleshot_timer`) and the periodic timer
//! (`VCPUOP_set/stop_periodic_timer`). Pure state: the VMM calls [`TimerState::expire`] when
//! [`TimerState::next_deadline`] passes and raises `VIRQ_TIMER` when it says so.
//!
//! Times are system time in ns (see [`super::clock::DomainClock`]). Xen keeps timer expiries
//! as a signed `s_time_t`, so a raw guest value above `i64::MAX` is a time in the past.

use xen_abi::errno::Errno;

/// `VCPU_SSHOTTMR_future` (xen: public/vcpu.h).
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;
/// Xen's smallest periodic timer period: 1 ms (xen: common/domain.c, VCPUOP_set_periodic_timer).
pub const PERIODIC_MIN_NS: u64 = 1_000_000;
/// Xen's largest: `STIME_DELTA_MAX` = `u64::MAX >> 2` (xen: include/xen/time.h).
pub const STIME_DELTA_MAX: u64 = u64::MAX >> 2;
/// `set_timer_op` workaround delay for absurd timeouts: 100 ms (xen: common/sched/core.c).
pub const HUGE_TIMEOUT_DELAY_NS: u64 = 100_000_000;
/// Offsets at or beyond 2^50 ns (~13 days) count as absurd (xen: common/sched/core.c).
pub const HUGE_TIMEOUT_OFFSET_SHIFT: u32 = 50;

/// The guest-visible timer state of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerState {
    /// Single-shot expiry (signed system time; may be in the past = fire at once).
    singleshot: Option<i64>,
    /// Periodic period in ns (0 = off).
    period: u64,
    /// System time of the last periodic event (or of arming).
    periodic_last: u64,
    /// Honour `VCPU_SSHOTTMR_future` with `-ETIME` (Xen up to 4.17; Xen 4.18 ignores the
    /// flag and fires at once instead).
    pub honour_future_flag: bool,
}

impl Default for TimerState {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerState {
    /// No timer armed (Linux stops Xen's default periodic timer itself at boot; kxen starts
    /// without one).
    pub const fn new() -> Self {
        Self {
            singleshot: None,
            period: 0,
            periodic_last: 0,
            honour_future_flag: true,
        }
    }

    /// `set_timer_op(timeout)` at system time `now` (xen: common/sched/core.c
    /// `do_set_timer_op`): 0 cancels; a negative value or one 2^50 ns or more ahead arms
    /// `now + 100 ms` (Xen's workaround for wrapped Linux jiffies); otherwise arms
    /// `timeout`, which fires at once if already past. Always returns 0.
    pub fn set_timer_op(&mut self, timeout: u64, now: u64) -> i64 {
        let timeout = timeout as i64;
        let offset = timeout.wrapping_sub(now as i64);
        if timeout == 0 {
            self.singleshot = None;
        } else if timeout < 0 || (offset > 0 && (offset >> HUGE_TIMEOUT_OFFSET_SHIFT) != 0) {
            tracing::debug!(timeout, "set_timer_op: huge timeout, firing in 100 ms");
            self.singleshot = Some(now.saturating_add(HUGE_TIMEOUT_DELAY_NS) as i64);
        } else {
            self.singleshot = Some(timeout);
        }
        0
    }

    /// `VCPUOP_set_singleshot_timer` (xen: common/domain.c): with `VCPU_SSHOTTMR_future` and
    /// a timeout before `now` (unsigned comparison, as Xen) → `-ETIME`; otherwise arm it (a
    /// past or above-`i64::MAX` timeout fires at once).
    pub fn set_singleshot(
        &mut self,
        timeout_abs_ns: u64,
        flags: u32,
        now: u64,
    ) -> Result<(), Errno> {
        if self.honour_future_flag && flags & VCPU_SSHOTTMR_FUTURE != 0 && timeout_abs_ns < now {
            return Err(Errno::ETIME);
        }
        self.singleshot = Some(timeout_abs_ns as i64);
        Ok(())
    }

    /// `VCPUOP_stop_singleshot_timer`.
    pub fn stop_singleshot(&mut self) {
        self.singleshot = None;
    }

    /// `VCPUOP_set_periodic_timer` (xen: common/domain.c): period below 1 ms or above
    /// `STIME_DELTA_MAX` → `-EINVAL`; otherwise the first event is one period from `now`.
    pub fn set_periodic(&mut self, period_ns: u64, now: u64) -> Result<(), Errno> {
        if !(PERIODIC_MIN_NS..=STIME_DELTA_MAX).contains(&period_ns) {
            return Err(Errno::EINVAL);
        }
        // xen: vcpu_set_periodic_timer: unchanged period leaves the timer alone.
        if self.period != period_ns {
            self.period = period_ns;
            self.periodic_last = now;
        }
        Ok(())
    }

    /// `VCPUOP_stop_periodic_timer`.
    pub fn stop_periodic(&mut self) {
        self.period = 0;
    }

    /// The single-shot expiry, if armed (past values clamp to 0).
    pub fn singleshot(&self) -> Option<u64> {
        self.singleshot.map(|t| t.max(0) as u64)
    }

    /// The periodic period, if running.
    pub fn period(&self) -> Option<u64> {
        (self.period != 0).then_some(self.period)
    }

    /// Earliest system time at which [`Self::expire`] will report an event.
    pub fn next_deadline(&self) -> Option<u64> {
        let periodic = self.period().map(|p| self.periodic_last.saturating_add(p));
        match (self.singleshot(), periodic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long to sleep from `now` until the next deadline (`Some(ZERO)` if due).
    pub fn wait_from(&self, now: u64) -> Option<std::time::Duration> {
        self.next_deadline()
            .map(|d| std::time::Duration::from_nanos(d.saturating_sub(now)))
    }

    /// Run the timers at `now`: a due single-shot timer disarms and fires; a due periodic
    /// timer fires and re-arms one period from `now` (xen: `vcpu_periodic_timer_work`; no
    /// catch-up of missed periods). Returns whether `VIRQ_TIMER` must be raised.
    pub fn expire(&mut self, now: u64) -> bool {
        let mut fired = false;
        if let Some(t) = self.singleshot {
            if t <= now as i64 || (now as i64) < 0 {
                self.singleshot = None;
                fired = true;
            }
        }
        if self.period != 0 && now >= self.periodic_last.saturating_add(self.period) {
            self.periodic_last = now;
            fired = true;
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn set_timer_op_arms_cancels_and_fires_once() {
        let mut t = TimerState::new();
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.set_timer_op(10 * MS, MS), 0);
        assert_eq!(t.next_deadline(), Some(10 * MS));
        assert!(!t.expire(9 * MS));
        assert!(t.expire(10 * MS));
        assert!(!t.expire(11 * MS), "single-shot fires once");
        assert_eq!(t.next_deadline(), None);
        t.set_timer_op(20 * MS, MS);
        assert_eq!(t.set_timer_op(0, MS), 0);
        assert_eq!(t.next_deadline(), None, "0 cancels");
    }

    #[test]
    fn set_timer_op_in_the_past_fires_immediately() {
        let mut t = TimerState::new();
        t.set_timer_op(5, 100 * MS);
        assert_eq!(t.next_deadline(), Some(5));
        assert!(t.expire(100 * MS));
    }

    #[test]
    fn set_timer_op_huge_or_negative_timeouts_become_100ms() {
        for timeout in [u64::MAX, 1 << 63, (1 << 62) + 7, MS + (1 << 50)] {
            let mut t = TimerState::new();
            assert_eq!(t.set_timer_op(timeout, MS), 0);
            assert_eq!(t.next_deadline(), Some(101 * MS), "timeout {timeout:#x}");
        }
        // Just under 2^50 ahead is honoured as is.
        let mut t = TimerState::new();
        t.set_timer_op(MS + (1 << 50) - 1, MS);
        assert_eq!(t.next_deadline(), Some(MS + (1 << 50) - 1));
        // now near the end of time: the workaround saturates instead of overflowing.
        let mut t = TimerState::new();
        t.set_timer_op(u64::MAX, u64::MAX - 1);
        assert!(t.next_deadline().is_some());
    }

    #[test]
    fn singleshot_future_flag_gives_etime_only_when_past() {
        let mut t = TimerState::new();
        assert_eq!(
            t.set_singleshot(5 * MS, VCPU_SSHOTTMR_FUTURE, 6 * MS),
            Err(Errno::ETIME)
        );
        assert_eq!(t.next_deadline(), None, "-ETIME leaves the timer unarmed");
        assert_eq!(
            t.set_singleshot(6 * MS, VCPU_SSHOTTMR_FUTURE, 6 * MS),
            Ok(())
        );
        assert_eq!(t.next_deadline(), Some(6 * MS));
        // Without the flag a past time fires at once.
        assert_eq!(t.set_singleshot(MS, 0, 6 * MS), Ok(()));
        assert!(t.expire(6 * MS));
        // Unknown flag bits are ignored (Xen only looks at bit 0).
        assert_eq!(t.set_singleshot(7 * MS, 0xffff_fffe, 6 * MS), Ok(()));
        t.stop_singleshot();
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn singleshot_future_flag_ignored_like_xen_4_18_when_configured() {
        let mut t = TimerState {
            honour_future_flag: false,
            ..TimerState::new()
        };
        assert_eq!(t.set_singleshot(MS, VCPU_SSHOTTMR_FUTURE, 6 * MS), Ok(()));
        assert!(t.expire(6 * MS));
    }

    #[test]
    fn singleshot_u64_max_is_past_as_in_xen_signed_expiry() {
        let mut t = TimerState::new();
        // Unsigned compare: not "before now", so no -ETIME ...
        assert_eq!(
            t.set_singleshot(u64::MAX, VCPU_SSHOTTMR_FUTURE, 6 * MS),
            Ok(())
        );
        // ... but as s_time_t it is -1: due immediately.
        assert_eq!(t.next_deadline(), Some(0));
        assert!(t.expire(6 * MS));
    }

    #[test]
    fn periodic_rejects_out_of_range_periods_with_einval() {
        let mut t = TimerState::new();
        for p in [0, 1, PERIODIC_MIN_NS - 1, STIME_DELTA_MAX + 1, u64::MAX] {
            assert_eq!(t.set_periodic(p, 0), Err(Errno::EINVAL), "period {p}");
        }
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.set_periodic(PERIODIC_MIN_NS, 0), Ok(()));
        assert_eq!(t.set_periodic(STIME_DELTA_MAX, 0), Ok(()));
        assert_eq!(t.next_deadline(), Some(STIME_DELTA_MAX));
    }

    #[test]
    fn periodic_fires_each_period_and_rearms_from_now() {
        let mut t = TimerState::new();
        t.set_periodic(10 * MS, 100 * MS).unwrap();
        assert_eq!(t.next_deadline(), Some(110 * MS));
        assert!(!t.expire(109 * MS));
        assert!(t.expire(113 * MS));
        assert_eq!(
            t.next_deadline(),
            Some(123 * MS),
            "re-armed from the firing time"
        );
        // Same period again does not reset the phase.
        t.set_periodic(10 * MS, 120 * MS).unwrap();
        assert_eq!(t.next_deadline(), Some(123 * MS));
        // Late by many periods: one event, no burst.
        assert!(t.expire(500 * MS));
        assert!(!t.expire(500 * MS));
        t.stop_periodic();
        assert_eq!(t.next_deadline(), None);
        assert!(!t.expire(u64::MAX));
    }

    #[test]
    fn earliest_of_both_timers_is_the_deadline() {
        let mut t = TimerState::new();
        t.set_periodic(10 * MS, 0).unwrap();
        t.set_timer_op(3 * MS, 0);
        assert_eq!(t.next_deadline(), Some(3 * MS));
        assert_eq!(t.wait_from(MS), Some(std::time::Duration::from_millis(2)));
        assert_eq!(t.wait_from(50 * MS), Some(std::time::Duration::ZERO));
        assert!(t.expire(3 * MS));
        assert_eq!(t.next_deadline(), Some(10 * MS));
    }

    proptest! {
        #[test]
        fn hostile_timer_inputs_never_panic(
            ops in prop::collection::vec((0u8..6, any::<u64>(), any::<u32>(), any::<u64>()), 1..40)
        ) {
            let mut t = TimerState::new();
            for (op, a, flags, now) in ops {
                match op {
                    0 => { prop_assert_eq!(t.set_timer_op(a, now), 0); }
                    1 => {
                        let r = t.set_singleshot(a, flags, now);
                        prop_assert!(r.is_ok() || r == Err(Errno::ETIME));
                    }
                    2 => {
                        let r = t.set_periodic(a, now);
                        prop_assert_eq!(r.is_ok(), (PERIODIC_MIN_NS..=STIME_DELTA_MAX).contains(&a));
                    }
                    3 => t.stop_singleshot(),
                    4 => t.stop_periodic(),
                    _ => {
                        let due = t.next_deadline().is_some_and(|d| d <= now);
                        let fired = t.expire(now);
                        prop_assert_eq!(fired, due, "expire agrees with next_deadline");
                    }
                }
                let _ = t.wait_from(now);
            }
        }
    }
}
