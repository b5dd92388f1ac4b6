//! Cross-vCPU TLB flushes (`UVMF_ALL`/vcpumask, `MMUEXT_TLB_FLUSH_MULTI/ALL`,
//! `MMUEXT_INVLPG_MULTI/ALL`): as Xen, the named vCPUs have flushed before the hypercall
//! returns.
//!
//! Protocol: each vCPU has a `requested` and an `acked` generation. A caller bumps the
//! targets' `requested`, kicks them out of `KVM_RUN` and, after its hypercall, waits until
//! every target that is running guest code has `acked` the generation it asked for. A
//! target's run loop, on any exit, sees `requested > acked`, schedules the ring-0 flush
//! for its next return to the guest (no guest instruction runs before it) and publishes
//! the generation. An idle vCPU (not started, blocked, down, ended) needs no flush now:
//! it checks before it next runs guest code. While waiting, a caller acks requests aimed
//! at itself (it flushes on its own return anyway), so two vCPUs flushing each other
//! cannot deadlock. The wait is bounded and logs a target that never acked.
// xen: arch/x86/mm.c, do_mmuext_op / __do_update_va_mapping (flush_tlb_mask before return).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a caller waits for a target's acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Slot {
    requested: AtomicU64,
    acked: AtomicU64,
    /// Not running guest code (not started, blocked, down or ended).
    idle: AtomicBool,
    /// Generations this vCPU (as a caller) still has to see acknowledged: (target, gen).
    waits: Mutex<Vec<(u32, u64)>>,
}

/// Per-vCPU flush generations of one domain.
#[derive(Debug)]
pub struct TlbFlush {
    slots: Box<[Slot]>,
    /// Waits that ended with a target that never acknowledged.
    timeouts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TlbFlush {
    /// `nr` vCPUs, all idle until their run loop starts.
    pub fn new(nr: u32) -> Self {
        Self {
            slots: (0..nr)
                .map(|_| Slot {
                    requested: AtomicU64::new(0),
                    acked: AtomicU64::new(0),
                    idle: AtomicBool::new(true),
                    waits: Mutex::new(Vec::new()),
                })
                .collect(),
            timeouts: AtomicU64::new(0),
        }
    }

    /// The flush generation `vcpu` last acknowledged (how many remote requests it served).
    pub fn acked(&self, vcpu: u32) -> u64 {
        self.slots
            .get(vcpu as usize)
            .map_or(0, |s| s.acked.load(Ordering::SeqCst))
    }

    /// How many waits gave up on a target that never acknowledged.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::SeqCst)
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Mark `vcpu` idle (blocked, down, ended) or running guest code again. A vCPU leaving
    /// idle must check [`TlbFlush::pending`] before it next runs guest code.
    pub fn set_idle(&self, vcpu: u32, idle: bool) {
        if let Some(s) = self.slots.get(vcpu as usize) {
            s.idle.store(idle, Ordering::SeqCst);
        }
    }

    /// `from` asks `targets` (itself and unknown ids skipped) to flush; `kick` is called
    /// for each target that is running guest code. The caller then waits with
    /// [`TlbFlush::wait`].
    pub fn request(&self, from: u32, targets: impl IntoIterator<Item = u32>, kick: impl Fn(u32)) {
        let Some(me) = self.slots.get(from as usize) else {
            return;
        };
        let mut waits = lock(&me.waits);
        for t in targets {
            if t == from {
                continue;
            }
            let Some(s) = self.slots.get(t as usize) else {
                continue;
            };
            let gen = s.requested.fetch_add(1, Ordering::SeqCst) + 1;
            waits.push((t, gen));
            if !s.idle.load(Ordering::SeqCst) {
                kick(t);
            }
        }
    }

    /// Whether `vcpu` has a flush request it has not acknowledged.
    pub fn pending(&self, vcpu: u32) -> bool {
        self.slots
            .get(vcpu as usize)
            .is_some_and(|s| s.requested.load(Ordering::SeqCst) > s.acked.load(Ordering::SeqCst))
    }

    /// Acknowledge `vcpu`'s requests: the caller has scheduled a flush that runs before its
    /// next guest instruction. True if there was anything to acknowledge.
    pub fn ack(&self, vcpu: u32) -> bool {
        let Some(s) = self.slots.get(vcpu as usize) else {
            return false;
        };
        let req = s.requested.load(Ordering::SeqCst);
        s.acked.fetch_max(req, Ordering::SeqCst) < req
    }

    /// Wait (at most `timeout`) until every target `vcpu` asked to flush has acknowledged or
    /// gone idle, acknowledging requests aimed at `vcpu` meanwhile. Returns whether `vcpu`
    /// must flush itself (it acknowledged a request) and the targets that never answered.
    pub fn wait(&self, vcpu: u32, timeout: Duration) -> (bool, Vec<u32>) {
        let Some(me) = self.slots.get(vcpu as usize) else {
            return (false, Vec::new());
        };
        let mut waits = std::mem::take(&mut *lock(&me.waits));
        let mut own = false;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            own |= self.ack(vcpu);
            waits.retain(|&(t, gen)| {
                self.slots.get(t as usize).is_some_and(|s| {
                    !s.idle.load(Ordering::SeqCst) && s.acked.load(Ordering::SeqCst) < gen
                })
            });
            if waits.is_empty() {
                return (own, Vec::new());
            }
            if start.elapsed() >= timeout {
                let late = waits.iter().map(|&(t, _)| t).collect();
                self.timeouts.fetch_add(1, Ordering::SeqCst);
                return (own, late);
            }
            spins = spins.saturating_add(1);
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn idle_targets_are_not_kicked_or_waited_for() {
        let f = TlbFlush::new(2);
        let kicked = std::cell::Cell::new(0);
        f.request(0, [1], |_| kicked.set(kicked.get() + 1));
        assert_eq!(kicked.get(), 0);
        assert_eq!(f.wait(0, Duration::from_millis(10)), (false, vec![]));
        // The idle target still flushes when it next runs.
        assert!(f.pending(1));
        assert!(f.ack(1));
        assert!(!f.pending(1));
    }

    #[test]
    fn running_target_that_never_acks_times_out_and_is_reported() {
        let f = TlbFlush::new(3);
        f.set_idle(2, false);
        let kicked = std::cell::Cell::new(Vec::new());
        f.request(0, [0, 1, 2, 7], |t| {
            let mut v = kicked.take();
            v.push(t);
            kicked.set(v);
        });
        assert_eq!(kicked.take(), vec![2]);
        assert_eq!(f.timeouts(), 0);
        assert_eq!(f.wait(0, Duration::from_millis(20)), (false, vec![2]));
        assert_eq!(f.timeouts(), 1);
        assert!(!f.pending(0));
    }

    #[test]
    fn two_vcpus_flushing_each_other_both_finish() {
        let f = Arc::new(TlbFlush::new(2));
        f.set_idle(0, false);
        f.set_idle(1, false);
        let finished = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let hs: Vec<_> = (0..2u32)
            .map(|me| {
                let f = Arc::clone(&f);
                let finished = Arc::clone(&finished);
                std::thread::spawn(move || {
                    f.request(me, [1 - me], |_| {});
                    let r = f.wait(me, Duration::from_secs(5));
                    // A running vCPU keeps exiting (the kick) and acknowledging after its own
                    // wait; model that until the other one is done too, whichever ran first.
                    finished.fetch_add(1, Ordering::SeqCst);
                    while finished.load(Ordering::SeqCst) < 2 {
                        f.ack(me);
                        std::thread::yield_now();
                    }
                    r
                })
            })
            .collect();
        for h in hs {
            let (_, late) = h.join().unwrap();
            assert!(late.is_empty());
        }
        assert!(!f.pending(0) && !f.pending(1));
    }

    #[test]
    fn target_ack_releases_waiter() {
        let f = Arc::new(TlbFlush::new(2));
        f.set_idle(1, false);
        f.request(0, [1], |_| {});
        let g = Arc::clone(&f);
        let t = std::thread::spawn(move || {
            while !g.pending(1) {}
            std::thread::sleep(Duration::from_millis(5));
            assert!(g.ack(1));
        });
        assert_eq!(f.wait(0, Duration::from_secs(5)), (false, vec![]));
        t.join().unwrap();
        assert_eq!(f.acked(1), 1);
        assert_eq!(f.timeouts(), 0);
    }
}
