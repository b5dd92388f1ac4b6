//! Host side of the guest timers: one thread that sleeps until the earliest armed deadline
//! (host `CLOCK_MONOTONIC`) and calls back with the vCPU index; the callback kicks that vCPU,
//! whose run loop then calls [`super::timer::TimerState::expire`] and raises `VIRQ_TIMER`.
//!
//! Deadlines are one-shot: after the callback the slot is empty until re-armed (the vCPU
//! re-arms with the next `next_deadline()` after expiring).

use super::clock::monotonic_ns;
use super::TimeError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug)]
struct Inner {
    deadlines: Vec<Option<u64>>,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking callback cannot leave `Inner` half-updated: recover the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The timer thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct TimerThread {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl TimerThread {
    /// Start the thread for `nr_vcpus` slots; `fire(vcpu)` runs on the timer thread when a
    /// slot's deadline passes.
    pub fn spawn<F>(nr_vcpus: usize, fire: F) -> Result<Self, TimeError>
    where
        F: Fn(usize) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                deadlines: vec![None; nr_vcpus],
                stop: false,
            }),
            cond: Condvar::new(),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("kxen-timers".into())
            .spawn(move || run(&s, fire))
            .map_err(TimeError::Thread)?;
        Ok(Self {
            shared,
            handle: Some(handle),
        })
    }

    /// Arm (or with `None`, disarm) `vcpu`'s deadline, in host `CLOCK_MONOTONIC` ns
    /// (see `DomainClock::host_monotonic_at`). Unknown vCPUs are ignored.
    pub fn arm(&self, vcpu: usize, deadline_mono_ns: Option<u64>) {
        let mut g = self.shared.lock();
        if let Some(slot) = g.deadlines.get_mut(vcpu) {
            *slot = deadline_mono_ns;
            drop(g);
            self.shared.cond.notify_one();
        }
    }

    /// The armed deadline of `vcpu`.
    pub fn armed(&self, vcpu: usize) -> Option<u64> {
        self.shared.lock().deadlines.get(vcpu).copied().flatten()
    }

    /// Stop the thread and wait for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cond.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run<F: Fn(usize)>(shared: &Shared, fire: F) {
    let mut due = Vec::new();
    let mut g = shared.lock();
    loop {
        if g.stop {
            return;
        }
        let now = monotonic_ns();
        due.clear();
        for (i, slot) in g.deadlines.iter_mut().enumerate() {
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
                due.push(i);
            }
        }
        if !due.is_empty() {
            drop(g);
            for &i in &due {
                fire(i);
            }
            g = shared.lock();
            continue;
        }
        let next = g.deadlines.iter().flatten().min().copied();
        g = match next {
            None => shared.cond.wait(g).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let wait = Duration::from_nanos(d.saturating_sub(now));
                shared
                    .cond
                    .wait_timeout(g, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn timer_set_5ms_ahead_fires_once_near_its_deadline() {
        let (tx, rx) = mpsc::channel();
        let t = TimerThread::spawn(2, move |v| {
            let _ = tx.send((v, monotonic_ns()));
        })
        .unwrap();
        let deadline = monotonic_ns() + 5_000_000;
        t.arm(1, Some(deadline));
        let (v, at) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("timer fired");
        assert_eq!(v, 1);
        assert!(at >= deadline, "fired {} ns early", deadline - at);
        println!("5 ms timer fired {} us late", (at - deadline) / 1000);
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "one-shot: no second callback"
        );
        assert_eq!(t.armed(1), None);
        t.stop();
    }

    #[test]
    fn rearming_earlier_wakes_the_thread_and_disarm_cancels() {
        let (tx, rx) = mpsc::channel();
        let t = TimerThread::spawn(3, move |v| {
            let _ = tx.send(v);
        })
        .unwrap();
        let now = monotonic_ns();
        t.arm(0, Some(now + 60_000_000_000)); // a minute: must not fire in this test
        t.arm(2, Some(now + 3_000_000_000));
        t.arm(2, None);
        t.arm(1, Some(now + 2_000_000));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(t.armed(0).is_some());
        t.arm(99, Some(0)); // unknown vCPU: ignored
        t.arm(0, Some(0)); // past: fires at once
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        drop(t); // Drop joins the thread
    }
}
