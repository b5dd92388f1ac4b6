//! Stress, concurrency and property tests of the event channel state machine.

use super::*;
use proptest::prelude::*;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Deterministic xorshift64* generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The 2-level "no stranded event" invariant: every pending, unmasked port has its selector
/// bit set, with the upcall pending, on some vCPU — so some vCPU will find it.
fn no_stranded_event(mem: &SharedInfoMem, nr_vcpus: u32) -> Result<(), String> {
    let v = mem.view();
    for w in 0..64 {
        if v.pending_word(w) & !v.mask_word(w) == 0 {
            continue;
        }
        let found = (0..nr_vcpus).any(|c| v.pending_sel(c) & (1 << w) != 0 && v.upcall_pending(c));
        if !found {
            return Err(format!(
                "word {w}: pending {:#x} mask {:#x} but no vCPU selects it",
                v.pending_word(w),
                v.mask_word(w)
            ));
        }
    }
    Ok(())
}

/// How an event reaches a guest port in the stress tests.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// `EVTCHNOP_send` on this port (IPI: itself; loopback: its peer).
    Send(EvtchnPort),
    /// A per-vCPU timer VIRQ.
    Timer(u32),
    /// The backend notifies.
    Backend(BackendPort),
}

fn fire(ec: &EventChannels, src: Source, mem: &SharedInfoMem) -> Effects {
    match src {
        Source::Send(p) => ec.send(p, mem).unwrap(),
        Source::Timer(v) => ec.raise_virq(v, VIRQ_TIMER, mem),
        Source::Backend(bp) => ec.notify_guest(bp, mem).unwrap(),
    }
}

/// Ports spread over several bitmap words and vCPUs: per vCPU a few IPIs, a timer VIRQ, a
/// loopback pair whose receiving end is moved to the vCPU, and a backend channel. Returns
/// (source, receiving port) pairs.
fn stress_setup(ec: &mut EventChannels, mem: &SharedInfoMem) -> Vec<(Source, EvtchnPort)> {
    let mut out = Vec::new();
    for v in 0..ec.nr_vcpus() {
        for _ in 0..3 {
            let p = ec.bind_ipi(v).unwrap();
            out.push((Source::Send(p), p));
        }
        // Padding so ports land in several bitmap words.
        for _ in 0..40 {
            ec.alloc_unbound(DOMID_SELF, 300).unwrap();
        }
        let t = ec.bind_virq(VIRQ_TIMER, v).unwrap();
        out.push((Source::Timer(v), t));
        let a = ec.alloc_unbound(DOMID_SELF, DOMID_SELF).unwrap();
        let (b, _) = ec.bind_interdomain(DOMID_SELF, a, mem).unwrap();
        ec.bind_vcpu(b, v).unwrap();
        out.push((Source::Send(a), b));
        let (g, bp) = ec.connect_backend().unwrap();
        ec.bind_vcpu(g, v).unwrap();
        out.push((Source::Backend(bp), g));
    }
    // Start from a quiet page: forget the raises done while binding.
    for p in 0..NR_EVENT_CHANNELS {
        mem.view().test_and_clear_pending(p);
    }
    for c in 0..ec.nr_vcpus() {
        mem.view().take_pending_sel(c);
        mem.view().set_upcall_pending(c, false);
    }
    assert!(out.iter().map(|&(_, p)| p / 64).max().unwrap() >= 2);
    out
}

#[test]
fn million_sends_over_four_vcpus_are_each_consumed_and_counts_match() {
    const VCPUS: u32 = 4;
    const SENDS: u64 = 1_000_000;
    let mut ec = chans(VCPUS);
    let mem = SharedInfoMem::zeroed();
    let v = mem.view();
    let sources = stress_setup(&mut ec, &mem);
    let owner = |ec: &EventChannels, p: EvtchnPort| ec.port(p).unwrap().vcpu;
    let n = NR_EVENT_CHANNELS as usize;
    let (mut raised, mut handled, mut owed) = (vec![0u64; n], vec![0u64; n], vec![false; n]);
    let (mut sends, mut kicks_seen) = (0u64, 0u64);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while sends < SENDS {
        match rng.below(20) {
            0..=15 => {
                let (src, target) = sources[rng.below(sources.len())];
                let vcpu = owner(&ec, target);
                let was_pending = v.is_pending(target);
                let upcall_before = v.upcall_pending(vcpu);
                let fx = fire(&ec, src, &mem);
                sends += 1;
                raised[target as usize] += u64::from(!was_pending);
                owed[target as usize] = true;
                kicks_seen += fx.kicks().count() as u64;
                // No lost wakeup: an unmasked raise leaves the upcall pending, and reports a
                // kick exactly when it made it pending.
                if v.is_masked(target) {
                    assert!(fx.is_empty());
                } else {
                    assert!(v.upcall_pending(vcpu));
                    assert_eq!(fx.contains(Effect::Kick(vcpu)), !upcall_before);
                }
            }
            16 | 17 => {
                let c = rng.below(VCPUS as usize) as u32;
                v.guest_upcall(
                    c,
                    |p| owner(&ec, p) == c,
                    |p| {
                        handled[p as usize] += 1;
                        owed[p as usize] = false;
                    },
                );
            }
            18 => v.mask(sources[rng.below(sources.len())].1),
            _ => {
                let p = sources[rng.below(sources.len())].1;
                let c = owner(&ec, p);
                let before = v.upcall_pending(c);
                let fx = ec.unmask(p, &mem).unwrap();
                assert_eq!(fx.contains(Effect::Kick(c)), !before && v.upcall_pending(c));
            }
        }
    }
    // Drain: unmask everything through the hypercall, then let every vCPU consume.
    for &(_, p) in &sources {
        ec.unmask(p, &mem).unwrap();
    }
    for c in 0..VCPUS {
        v.guest_upcall(
            c,
            |p| owner(&ec, p) == c,
            |p| {
                handled[p as usize] += 1;
                owed[p as usize] = false;
            },
        );
    }
    assert_eq!(sends, SENDS);
    assert!(kicks_seen > 0);
    for &(_, p) in &sources {
        let p = p as usize;
        assert!(!owed[p], "port {p}: a raise was never consumed");
        assert_eq!(handled[p], raised[p], "port {p}: handled vs raised");
    }
    assert!((0..64).all(|w| v.pending_word(w) == 0));
    assert_eq!(handled.iter().sum::<u64>(), raised.iter().sum::<u64>());
}

#[test]
fn concurrent_senders_and_consumers_lose_no_wakeup() {
    const VCPUS: u32 = 4;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 50_000;
    let mut ec = chans(VCPUS);
    let mem = Arc::new(SharedInfoMem::zeroed());
    let sources = Arc::new(stress_setup(&mut ec, &mem));
    let n = NR_EVENT_CHANNELS as usize;
    let owner: Arc<Vec<u32>> = Arc::new((0..n).map(|p| ec.port(p as u32).unwrap().vcpu).collect());
    let ec = Arc::new(RwLock::new(ec));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));

    // Simulated vCPUs: consume, then block (park) while no upcall is pending, like a guest
    // in SCHEDOP_block; only a Kick (unpark) wakes them.
    let consumers: Vec<_> = (0..VCPUS)
        .map(|c| {
            let (mem, owner, sent, seen, stop) = (
                mem.clone(),
                owner.clone(),
                sent.clone(),
                seen.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let v = mem.view();
                loop {
                    v.guest_upcall(
                        c,
                        |p| owner[p as usize] == c,
                        |p| {
                            let s = sent[p as usize].load(Ordering::SeqCst);
                            seen[p as usize].fetch_max(s, Ordering::SeqCst);
                        },
                    );
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if !v.upcall_pending(c) {
                        std::thread::park();
                    }
                }
            })
        })
        .collect();
    let threads: Arc<Vec<std::thread::Thread>> =
        Arc::new(consumers.iter().map(|h| h.thread().clone()).collect());

    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (ec, mem, sources, sent, threads) = (
                ec.clone(),
                mem.clone(),
                sources.clone(),
                sent.clone(),
                threads.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678_9abc_def1 ^ ((s as u64 + 1) * 0x9e37_79b9));
                for _ in 0..PER_SENDER {
                    let (src, target) = sources[rng.below(sources.len())];
                    sent[target as usize].fetch_add(1, Ordering::SeqCst);
                    let fx = fire(&ec.read().unwrap(), src, &mem);
                    for k in fx.kicks() {
                        threads[k as usize].unpark();
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Every port's last raise must be consumed without any wakeup other than the kicks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lagging = || {
        sources
            .iter()
            .map(|&(_, p)| p as usize)
            .filter(|&p| seen[p].load(Ordering::SeqCst) != sent[p].load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    while !lagging().is_empty() {
        assert!(
            Instant::now() < deadline,
            "lost wakeup: ports {:?} never consumed",
            lagging()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads.iter() {
        t.unpark();
    }
    for c in consumers {
        c.join().unwrap();
    }
    let total: u64 = sent.iter().map(|s| s.load(Ordering::SeqCst)).sum();
    assert_eq!(total, (SENDERS * PER_SENDER) as u64);
}

#[test]
fn concurrent_poll_and_raise_never_lose_the_wakeup() {
    const WAKES: u64 = 20_000;
    let mut ec = chans(2);
    let mem = Arc::new(SharedInfoMem::zeroed());
    let p = ec.bind_ipi(1).unwrap();
    mem.view().mask(p); // as Linux's PV spinlock kicker: polled while masked
    let ec = Arc::new(RwLock::new(ec));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (ec, mem, done) = (ec.clone(), mem.clone(), done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..WAKES {
                mem.view().test_and_clear_pending(p);
                let outcome = ec.read().unwrap().poll_start(1, &[p], &*mem).unwrap();
                if outcome == PollOutcome::Blocked {
                    while ec.read().unwrap().is_polling(1) {
                        assert!(Instant::now() < deadline, "lost poll wakeup");
                        std::thread::park_timeout(Duration::from_millis(200));
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let thread = poller.thread().clone();
    while !done.load(Ordering::SeqCst) && !poller.is_finished() {
        let fx = ec.read().unwrap().send(p, &*mem).unwrap();
        if fx.contains(Effect::Kick(1)) {
            thread.unpark();
        }
        std::thread::yield_now();
    }
    poller.join().unwrap();
    ec.read().unwrap().check_invariants().unwrap();
}

// ----- random operation sequences -----

#[derive(Clone, Debug)]
enum Op {
    AllocUnbound(u8, u8),
    BindInterdomain(u8, u32),
    BindVirq(u32, u32),
    BindIpi(u32),
    BindPirq(u32),
    Close(u32),
    Send(u32),
    Status(u8, u32),
    BindVcpu(u32, u32),
    Unmask(u32),
    Reset(u8),
    GuestMask(u32),
    GuestConsume(u32),
    BackendAlloc,
    BackendBind(u32),
    BackendClose(u32),
    Notify(u32),
    RaiseVirq(u32, u32),
    Raw(u32, Vec<u8>),
    PollStart(u32, Vec<u32>),
    PollStop(u32),
}

fn dom_of(sel: u8) -> DomId {
    match sel % 5 {
        0 => DOMID_SELF,
        1 => GUEST,
        2 => BACKEND,
        3 => 7,
        _ => DOMID_FIRST_RESERVED + 3,
    }
}

fn port_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 0u32..12,
        1 => Just(NR_EVENT_CHANNELS - 1),
        1 => Just(NR_EVENT_CHANNELS),
        1 => any::<u32>(),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let vcpu = 0u32..5;
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(d, r)| Op::AllocUnbound(d, r)),
        (any::<u8>(), port_strategy()).prop_map(|(d, p)| Op::BindInterdomain(d, p)),
        (0u32..26, vcpu.clone()).prop_map(|(q, v)| Op::BindVirq(q, v)),
        vcpu.clone().prop_map(Op::BindIpi),
        any::<u32>().prop_map(Op::BindPirq),
        port_strategy().prop_map(Op::Close),
        port_strategy().prop_map(Op::Send),
        (any::<u8>(), port_strategy()).prop_map(|(d, p)| Op::Status(d, p)),
        (port_strategy(), vcpu.clone()).prop_map(|(p, v)| Op::BindVcpu(p, v)),
        port_strategy().prop_map(Op::Unmask),
        any::<u8>().prop_map(Op::Reset),
        port_strategy().prop_map(Op::GuestMask),
        vcpu.clone().prop_map(Op::GuestConsume),
        Just(Op::BackendAlloc),
        port_strategy().prop_map(Op::BackendBind),
        (0u32..6).prop_map(Op::BackendClose),
        (0u32..6).prop_map(Op::Notify),
        (vcpu, 0u32..26).prop_map(|(v, q)| Op::RaiseVirq(v, q)),
        (0u32..16, proptest::collection::vec(any::<u8>(), 0..32)).prop_map(|(c, b)| Op::Raw(c, b)),
        (0u32..4, proptest::collection::vec(port_strategy(), 0..3))
            .prop_map(|(v, p)| Op::PollStart(v, p)),
        (0u32..4).prop_map(Op::PollStop),
    ]
}

/// Everything observable about the table, to check that failed operations change nothing.
fn observe(ec: &EventChannels) -> (Vec<PortInfo>, Vec<Option<EvtchnPort>>, Vec<Option<u32>>) {
    let ports = (0..NR_EVENT_CHANNELS)
        .map(|p| ec.port(p).unwrap())
        .collect();
    let virqs = (0..ec.nr_vcpus())
        .flat_map(|c| (0..NR_VIRQS).map(move |q| (c, q)))
        .map(|(c, q)| ec.virq_port(c, q))
        .collect();
    let backend = (0..8).map(|b| ec.backend_peer(BackendPort(b))).collect();
    (ports, virqs, backend)
}

/// Run one op; `Err` for an operation that failed, `Ok(None)` for guest-side memory ops.
fn apply(ec: &mut EventChannels, mem: &SharedInfoMem, op: &Op) -> Result<Option<Effects>, Errno> {
    let none = || Ok(Some(Effects::new()));
    match *op {
        Op::AllocUnbound(d, r) => ec.alloc_unbound(dom_of(d), dom_of(r)).and_then(|_| none()),
        Op::BindInterdomain(d, p) => ec.bind_interdomain(dom_of(d), p, mem).map(|(_, f)| Some(f)),
        Op::BindVirq(q, v) => ec.bind_virq(q, v).and_then(|_| none()),
        Op::BindIpi(v) => ec.bind_ipi(v).and_then(|_| none()),
        Op::BindPirq(q) => ec.bind_pirq(q, 0).and_then(|_| none()),
        Op::Close(p) => ec.close(p, mem).map(Some),
        Op::Send(p) => ec.send(p, mem).map(Some),
        Op::Status(d, p) => {
            let mut st = EvtchnStatus {
                dom: dom_of(d),
                port: p,
                ..Default::default()
            };
            ec.status(&mut st).and_then(|_| none())
        }
        Op::BindVcpu(p, v) => ec.bind_vcpu(p, v).and_then(|_| none()),
        Op::Unmask(p) => ec.unmask(p, mem).map(Some),
        Op::Reset(d) => ec.reset(dom_of(d), mem).map(Some),
        Op::GuestMask(p) => {
            mem.view().mask(p);
            Ok(None)
        }
        Op::GuestConsume(v) => {
            mem.view().guest_upcall(v, |_| true, |_| ());
            Ok(None)
        }
        Op::BackendAlloc => ec.backend_alloc_unbound().and_then(|_| none()),
        Op::BackendBind(p) => ec.backend_bind_interdomain(p).and_then(|_| none()),
        Op::BackendClose(b) => ec.backend_close(BackendPort(b)).and_then(|_| none()),
        Op::Notify(b) => ec.notify_guest(BackendPort(b), mem).map(Some),
        Op::RaiseVirq(v, q) => Ok(Some(ec.raise_virq(v, q, mem))),
        Op::PollStart(v, ref ports) => {
            let _ = ec.poll_start(v, ports, mem);
            Ok(None)
        }
        Op::PollStop(v) => {
            ec.poll_stop(v);
            Ok(None)
        }
        Op::Raw(cmd, ref bytes) => {
            let mut b = bytes.clone();
            ec.do_event_channel_op(cmd, &mut b, 0, mem).map(Some)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random operation sequences never panic, keep the table consistent, never strand an
    /// event, report a kick exactly when an upcall became pending, and failed operations
    /// have no side effects.
    #[test]
    fn random_op_sequences_keep_invariants(ops in proptest::collection::vec(op_strategy(), 1..100)) {
        const VCPUS: u32 = 3;
        let mut ec = chans(VCPUS);
        let mem = SharedInfoMem::zeroed();
        for op in &ops {
            let before_tbl = observe(&ec);
            let before_mem = mem.snapshot();
            let up_before: Vec<bool> = (0..VCPUS).map(|c| mem.view().upcall_pending(c)).collect();
            let polling_before: Vec<bool> = (0..VCPUS).map(|c| ec.is_polling(c)).collect();
            let res = apply(&mut ec, &mem, op);
            if let Err(e) = res {
                prop_assert!(Errno::ALL.contains(&e), "{op:?}: unknown errno {e:?}");
                prop_assert!(observe(&ec) == before_tbl, "{op:?} failed with {e:?} but changed the table");
                prop_assert!(mem.snapshot() == before_mem, "{op:?} failed with {e:?} but changed memory");
            }
            if let Ok(Some(fx)) = &res {
                for c in 0..VCPUS {
                    let became = !up_before[c as usize] && mem.view().upcall_pending(c);
                    let woken = polling_before[c as usize] && !ec.is_polling(c);
                    prop_assert_eq!(fx.contains(Effect::Kick(c)), became || woken, "{:?}: vcpu {}", op, c);
                }
                prop_assert!(fx.kicks().all(|k| k < VCPUS));
            }
            if let Err(msg) = ec.check_invariants() {
                return Err(TestCaseError::fail(format!("after {op:?}: {msg}")));
            }
            if let Err(msg) = no_stranded_event(&mem, VCPUS) {
                return Err(TestCaseError::fail(format!("after {op:?}: {msg}")));
            }
        }
    }
}
