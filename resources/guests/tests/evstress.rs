//! evstress: 4 vCPUs send each other 10^6 events over IPI event channels. Every vCPU `r`
//! binds `LANES` IPI ports per sender `s` (`PORT[r][s][k]`, notifying `r`). A sender sends
//! on a lane's port only after the receiver consumed its previous event there
//! (`SENT[s][r][k] == RECV[r][s][k]`), so Xen's 2-level coalescing of a still-pending event
//! cannot hide a loss: at the end every lane must have exactly `PER_LANE` sends and
//! `PER_LANE` deliveries, no delivery without a send, and no vCPU may have stalled
//! (deadlock bound). A sender batches the sends of every free lane into one
//! `HYPERVISOR_multicall` (as Linux batches hypercalls), so each event is still one
//! `EVTCHNOP_send` through kxen's event-channel code, racing with the other vCPUs' sends
//! and consumption, but a VMM exit carries up to 3 x `LANES` of them. Receivers consume by
//! testing and clearing the pending bit in the mapped shared_info (events stay masked, so no
//! upcall races them). The total is printed as `VALUE evstress_events`.
//!
//! pvclock across vCPUs: afterwards every vCPU reads its own system time (pvclock in its
//! vcpu_info in shared_info) many times; before each read it takes the latest value any vCPU
//! published, and its read must not be earlier; then it publishes its read (`fetch_max`).
//! The TSC is read with `lfence; rdtsc` (as Linux's rdtsc_ordered): without the fence the
//! rdtsc can run ahead of the load of the published value and reads go backwards by us.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kit::abi::*;
use kit::events::*;
use kit::hypercall::{multicall, sched_yield};
use kit::smp::{self, Stacks};
use kit::time::pvclock;

xen_notes!(features = "writable_page_tables");

const NR: usize = 4;
/// Ports per ordered (sender, receiver) pair.
const LANES: usize = 8;
/// Events per lane: 12 pairs x 8 lanes x 10 417 = 1 000 032 events.
const PER_LANE: u64 = 10_417;
/// Sends one multicall can carry (every lane to every other vCPU).
const BATCH: usize = (NR - 1) * LANES;
/// Idle rounds (each a SCHEDOP_yield) after which a vCPU declares itself stuck.
const IDLE_LIMIT: u32 = 2_000_000;

type Lanes<T> = [[[T; LANES]; NR]; NR];
/// `PORT[r][s][k]`: the IPI port vCPU `r` bound for lane `k` of sender `s` (0 = not bound).
static PORT: Lanes<AtomicU32> = [const { [const { [const { AtomicU32::new(0) }; LANES] }; NR] }; NR];
/// `SENT[s][r][k]`: events `s` sent to `r` on lane `k` (incremented before the send).
static SENT: Lanes<AtomicU64> = [const { [const { [const { AtomicU64::new(0) }; LANES] }; NR] }; NR];
/// `RECV[r][s][k]`: events `r` consumed from `s` on lane `k`.
static RECV: Lanes<AtomicU64> = [const { [const { [const { AtomicU64::new(0) }; LANES] }; NR] }; NR];
/// Multicalls issued (VMM exits that carried sends).
static MULTICALLS: AtomicU64 = AtomicU64::new(0);
/// Deliveries that found no matching send.
static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// Send hypercalls that failed.
static SEND_ERRORS: AtomicU64 = AtomicU64::new(0);
/// vCPUs that gave up (idle too long).
static STUCK: AtomicU32 = AtomicU32::new(0);
/// vCPUs whose ports are bound.
static READY: AtomicU32 = AtomicU32::new(0);
/// Set by vCPU 0 once every port is bound.
static START: AtomicU32 = AtomicU32::new(0);
/// vCPUs that finished the stress.
static DONE: AtomicU32 = AtomicU32::new(0);
/// Latest system time (ns) any vCPU published.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// Reads earlier than an already published value, and the worst such gap (ns).
static BACKWARDS: AtomicU64 = AtomicU64::new(0);
static WORST_GAP: AtomicU64 = AtomicU64::new(0);
/// Reads that returned 0 (no pvclock for that vCPU).
static ZERO_READS: AtomicU64 = AtomicU64::new(0);
/// pvclock reads per vCPU.
const CLOCK_ROUNDS: u32 = 100_000;

/// System time (ns) from vCPU `me`'s pvclock (its vcpu_info in the mapped shared_info).
fn system_time(me: usize) -> u64 {
    pvclock(shared_vcpu_info(me)).0
}

/// One vCPU's share of the cross-vCPU monotonicity check.
fn clock_rounds(me: usize) {
    for _ in 0..CLOCK_ROUNDS {
        let seen = PUBLISHED.load(Ordering::SeqCst);
        let t = system_time(me);
        if t == 0 {
            ZERO_READS.fetch_add(1, Ordering::SeqCst);
        }
        if t < seen {
            BACKWARDS.fetch_add(1, Ordering::SeqCst);
            WORST_GAP.fetch_max(seen - t, Ordering::SeqCst);
        }
        PUBLISHED.fetch_max(t, Ordering::SeqCst);
    }
}

static STACKS: Stacks<NR> = Stacks::new();

/// Test and clear `port`'s pending bit in the mapped shared_info.
fn take_pending(port: u32) -> bool {
    let (w, m) = ((port / 64) as usize, 1u64 << (port % 64));
    let Some(word) = SHINFO.0.get(SHINFO_PENDING_WORD0 + w) else {
        return false;
    };
    word.load(Ordering::SeqCst) & m != 0 && word.fetch_and(!m, Ordering::SeqCst) & m != 0
}

fn bind_ports(me: usize) {
    for s in 0..NR {
        if s != me {
            for k in 0..LANES {
                let p = bind_ipi(me as u32).unwrap_or(0);
                PORT[me][s][k].store(p, Ordering::SeqCst);
            }
        }
    }
    READY.fetch_add(1, Ordering::SeqCst);
}

/// Whether vCPU `me` sent and received everything.
fn finished(me: usize) -> bool {
    (0..NR).filter(|&o| o != me).all(|o| {
        (0..LANES).all(|k| {
            SENT[me][o][k].load(Ordering::SeqCst) == PER_LANE
                && RECV[me][o][k].load(Ordering::SeqCst) == PER_LANE
        })
    })
}

/// One vCPU's share: consume what arrived, then send (one multicall) on every lane whose
/// previous event was consumed.
fn stress(me: usize) {
    while START.load(Ordering::SeqCst) == 0 {
        sched_yield();
    }
    let mut idle = 0u32;
    let mut calls = [MulticallEntry::default(); BATCH];
    let mut ports = [[0u32; 1]; BATCH];
    loop {
        let mut progress = false;
        for s in (0..NR).filter(|&s| s != me) {
            for k in 0..LANES {
                if take_pending(PORT[me][s][k].load(Ordering::SeqCst)) {
                    let n = RECV[me][s][k].fetch_add(1, Ordering::SeqCst) + 1;
                    if n > SENT[s][me][k].load(Ordering::SeqCst) {
                        SPURIOUS.fetch_add(1, Ordering::SeqCst);
                    }
                    progress = true;
                }
            }
        }
        let mut n = 0;
        for r in (0..NR).filter(|&r| r != me) {
            for k in 0..LANES {
                let sent = SENT[me][r][k].load(Ordering::SeqCst);
                if sent < PER_LANE && sent == RECV[r][me][k].load(Ordering::SeqCst) {
                    SENT[me][r][k].store(sent + 1, Ordering::SeqCst);
                    ports[n][0] = PORT[r][me][k].load(Ordering::SeqCst);
                    calls[n] = MulticallEntry {
                        op: u64::from(HYPERVISOR_EVENT_CHANNEL_OP),
                        result: -1,
                        args: [u64::from(EVTCHNOP_SEND), ports[n].as_ptr() as u64, 0, 0, 0, 0],
                    };
                    n += 1;
                }
            }
        }
        if n > 0 {
            // SAFETY: `n` entries of `calls`, each naming a port in `ports`, both live.
            let rc = unsafe { multicall(calls.as_mut_ptr() as u64, n as u64) };
            MULTICALLS.fetch_add(1, Ordering::SeqCst);
            let failed = calls[..n].iter().filter(|c| c.result != 0).count() as u64;
            if rc != 0 || failed != 0 {
                SEND_ERRORS.fetch_add(failed.max(1), Ordering::SeqCst);
            }
            progress = true;
        }
        if finished(me) {
            break;
        }
        if progress {
            idle = 0;
        } else {
            idle += 1;
            if idle > IDLE_LIMIT {
                STUCK.fetch_add(1, Ordering::SeqCst);
                break;
            }
            sched_yield();
        }
    }
    clock_rounds(me);
    DONE.fetch_add(1, Ordering::SeqCst);
}

/// A secondary vCPU's entry (its argument is its id).
extern "C" fn ap_main(id: u64) -> ! {
    let me = (id as usize).min(NR - 1);
    bind_ports(me);
    stress(me);
    smp::down(id as u32);
    loop {
        sched_yield();
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) -> bool {
    kit::test::wait_until(what, 20_000_000, cond)
}

fn kmain(si: &'static StartInfo) {
    // Events stay masked on every vCPU: receivers consume pending bits themselves.
    check_eq!("map_shared_info", map_shared_info(si), 0);
    if !shared_info_mapped() {
        return;
    }
    bind_ports(0);
    for id in 1..NR {
        let c = smp::context(si, ap_main, id as u64, STACKS.top(id));
        check_eq!("initialise", smp::initialise(id as u32, c), 0);
        check_eq!("up", smp::up(id as u32), 0);
    }
    if !wait_until("evstress_ports_bound", || {
        READY.load(Ordering::SeqCst) == NR as u32
    }) {
        return;
    }
    let all_bound = (0..NR).all(|r| {
        (0..NR).all(|s| s == r || PORT[r][s].iter().all(|p| p.load(Ordering::SeqCst) != 0))
    });
    check!("evstress_ports_bound", all_bound);
    let t0 = system_time(0);
    START.store(1, Ordering::SeqCst);
    stress(0);
    if !wait_until("evstress_all_done", || {
        DONE.load(Ordering::SeqCst) == NR as u32
    }) {
        return;
    }
    value!("evstress_ms", "{}", (system_time(0) - t0) / 1_000_000);
    check_eq!("evstress_no_deadlock", STUCK.load(Ordering::SeqCst), 0u32);
    check_eq!(
        "evstress_send_errors",
        SEND_ERRORS.load(Ordering::SeqCst),
        0u64
    );
    check_eq!(
        "evstress_no_spurious_delivery",
        SPURIOUS.load(Ordering::SeqCst),
        0u64
    );
    let mut sends = 0u64;
    let mut deliveries = 0u64;
    let mut exact = true;
    for s in 0..NR {
        for r in (0..NR).filter(|&r| r != s) {
            for k in 0..LANES {
                let a = SENT[s][r][k].load(Ordering::SeqCst);
                let b = RECV[r][s][k].load(Ordering::SeqCst);
                sends += a;
                deliveries += b;
                if a != PER_LANE || b != PER_LANE {
                    exact = false;
                    check!(
                        "evstress_lane",
                        false,
                        "{} -> {} lane {}: sent {} delivered {}",
                        s,
                        r,
                        k,
                        a,
                        b
                    );
                }
            }
        }
    }
    check!(
        "evstress_no_event_lost",
        exact && sends == deliveries,
        "sends {} deliveries {}",
        sends,
        deliveries
    );
    value!("evstress_multicalls", "{}", MULTICALLS.load(Ordering::SeqCst));
    value!("evstress_events", "{}", deliveries);
    value!("pvclock_cross_vcpu_reads", "{}", CLOCK_ROUNDS as usize * NR);
    value!(
        "pvclock_worst_gap_ns",
        "{}",
        WORST_GAP.load(Ordering::SeqCst)
    );
    check_eq!("pvclock_nonzero", ZERO_READS.load(Ordering::SeqCst), 0u64);
    check!(
        "pvclock_advances",
        PUBLISHED.load(Ordering::SeqCst) > t0,
        "start {} latest {}",
        t0,
        PUBLISHED.load(Ordering::SeqCst)
    );
    value!(
        "pvclock_backwards_reads",
        "{}",
        BACKWARDS.load(Ordering::SeqCst)
    );
    check_eq!(
        "pvclock_monotonic_across_vcpus",
        BACKWARDS.load(Ordering::SeqCst),
        0u64
    );
}
