use super::*;
use xen_abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_IPI, EVTCHNOP_BIND_PIRQ,
    EVTCHNOP_BIND_VCPU, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE, EVTCHNOP_EXPAND_ARRAY,
    EVTCHNOP_INIT_CONTROL, EVTCHNOP_RESET, EVTCHNOP_SEND, EVTCHNOP_SET_PRIORITY, EVTCHNOP_STATUS,
    EVTCHNOP_UNMASK, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_IPI, EVTCHNSTAT_UNBOUND,
    EVTCHNSTAT_VIRQ, VIRQ_CONSOLE, VIRQ_DEBUG, VIRQ_TIMER,
};

const GUEST: DomId = DEFAULT_GUEST_DOMID;
const BACKEND: DomId = DEFAULT_BACKEND_DOMID;

fn chans(nr_vcpus: u32) -> EventChannels {
    EventChannels::new(EvtchnConfig::new(nr_vcpus)).unwrap()
}

fn kicks(fx: &Effects) -> Vec<u32> {
    fx.kicks().collect()
}

fn state(ec: &EventChannels, port: EvtchnPort) -> PortState {
    ec.port(port).unwrap().state
}

/// A loopback pair: (unbound end, bound end).
fn loopback(ec: &mut EventChannels, mem: &SharedInfoMem) -> (EvtchnPort, EvtchnPort) {
    let a = ec.alloc_unbound(DOMID_SELF, DOMID_SELF).unwrap();
    let (b, _) = ec.bind_interdomain(DOMID_SELF, a, mem).unwrap();
    // Undo the conservative raise of the new port (as if the guest consumed it).
    mem.view().test_and_clear_pending(b);
    mem.view().take_pending_sel(0);
    mem.view().set_upcall_pending(0, false);
    (a, b)
}

// ----- construction -----

#[test]
fn new_table_reserves_port_zero_only() {
    let ec = chans(2);
    assert_eq!(state(&ec, 0), PortState::Reserved);
    assert!((1..NR_EVENT_CHANNELS).all(|p| state(&ec, p) == PortState::Free));
    assert_eq!(ec.port(NR_EVENT_CHANNELS), None);
    ec.check_invariants().unwrap();
}

#[test]
fn bad_configs_are_rejected() {
    let bad = |nr_vcpus, domid, backend_domid| {
        EventChannels::new(EvtchnConfig {
            nr_vcpus,
            domid,
            backend_domid,
        })
        .unwrap_err()
    };
    assert_eq!(bad(0, 1, 0), EvtchnError::VcpuCount(0));
    assert_eq!(
        bad(MAX_VCPUS + 1, 1, 0),
        EvtchnError::VcpuCount(MAX_VCPUS + 1)
    );
    assert_eq!(
        bad(1, DOMID_SELF, 0),
        EvtchnError::ReservedDomid(DOMID_SELF)
    );
    assert_eq!(bad(1, 3, 3), EvtchnError::SameDomid(3));
}

// ----- alloc_unbound -----

#[test]
fn alloc_unbound_takes_lowest_free_port_and_resolves_domid_self() {
    let mut ec = chans(1);
    assert_eq!(ec.alloc_unbound(DOMID_SELF, BACKEND), Ok(1));
    assert_eq!(ec.alloc_unbound(GUEST, DOMID_SELF), Ok(2));
    assert_eq!(
        state(&ec, 1),
        PortState::Unbound {
            remote_dom: BACKEND
        }
    );
    assert_eq!(state(&ec, 2), PortState::Unbound { remote_dom: GUEST });
    // Any remote domain id may be named, even one that does not exist.
    assert_eq!(ec.alloc_unbound(DOMID_SELF, 77), Ok(3));
    ec.check_invariants().unwrap();
}

#[test]
fn alloc_unbound_for_another_domain_is_refused() {
    let mut ec = chans(1);
    assert_eq!(ec.alloc_unbound(BACKEND, GUEST), Err(Errno::EPERM));
    assert_eq!(ec.alloc_unbound(9, GUEST), Err(Errno::ESRCH));
    assert_eq!(state(&ec, 1), PortState::Free);
}

#[test]
fn port_space_exhaustion_gives_enospc() {
    let mut ec = chans(1);
    for p in 1..NR_EVENT_CHANNELS {
        assert_eq!(ec.bind_ipi(0), Ok(p));
    }
    assert_eq!(ec.alloc_unbound(DOMID_SELF, 0), Err(Errno::ENOSPC));
    assert_eq!(ec.bind_ipi(0), Err(Errno::ENOSPC));
    assert_eq!(ec.bind_virq(VIRQ_TIMER, 0), Err(Errno::ENOSPC));
    let mem = SharedInfoMem::zeroed();
    assert_eq!(
        ec.bind_interdomain(DOMID_SELF, 5, &mem).unwrap_err(),
        Errno::ENOSPC
    );
    ec.close(100, &mem).unwrap();
    assert_eq!(ec.bind_ipi(0), Ok(100));
}

// ----- bind_interdomain -----

#[test]
fn loopback_interdomain_connects_both_ends_and_raises_the_new_port() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let a = ec.alloc_unbound(DOMID_SELF, DOMID_SELF).unwrap();
    let (b, fx) = ec.bind_interdomain(DOMID_SELF, a, &mem).unwrap();
    assert_eq!(b, 2);
    assert_eq!(
        state(&ec, a),
        PortState::Interdomain(RemoteEnd::Loopback(b))
    );
    assert_eq!(
        state(&ec, b),
        PortState::Interdomain(RemoteEnd::Loopback(a))
    );
    // xen: the binder's new port is raised to cover notifications lost while unbound.
    assert!(mem.view().is_pending(b));
    assert_eq!(kicks(&fx), vec![0]);
    // Each end notifies the other.
    let fx = ec.send(b, &mem).unwrap();
    assert!(mem.view().is_pending(a));
    assert!(kicks(&fx).is_empty(), "upcall already pending: no new kick");
    ec.check_invariants().unwrap();
}

#[test]
fn bind_interdomain_errors() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let for_backend = ec.alloc_unbound(DOMID_SELF, BACKEND).unwrap();
    let ipi = ec.bind_ipi(0).unwrap();
    // Unbound, but offered to another domain.
    assert_eq!(
        ec.bind_interdomain(DOMID_SELF, for_backend, &mem)
            .unwrap_err(),
        Errno::EINVAL
    );
    // Not unbound.
    assert_eq!(
        ec.bind_interdomain(DOMID_SELF, ipi, &mem).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        ec.bind_interdomain(DOMID_SELF, 0, &mem).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        ec.bind_interdomain(DOMID_SELF, NR_EVENT_CHANNELS, &mem)
            .unwrap_err(),
        Errno::EINVAL
    );
    // Unknown domain; unknown backend port.
    assert_eq!(ec.bind_interdomain(42, 1, &mem).unwrap_err(), Errno::ESRCH);
    assert_eq!(
        ec.bind_interdomain(BACKEND, 1, &mem).unwrap_err(),
        Errno::EINVAL
    );
    // Nothing was allocated by the failures.
    assert_eq!(state(&ec, 3), PortState::Free);
    assert_eq!(mem.view().pending_word(0), 0);
    ec.check_invariants().unwrap();
}

#[test]
fn guest_binds_backend_unbound_port_and_notifications_flow_both_ways() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let bp = ec.backend_alloc_unbound().unwrap();
    assert_eq!(bp, BackendPort(1));
    let (port, fx) = ec.bind_interdomain(BACKEND, bp.0, &mem).unwrap();
    assert!(fx.contains(Effect::BackendConnected {
        backend: bp,
        guest: port
    }));
    assert!(fx.contains(Effect::Kick(0)));
    assert_eq!(ec.backend_peer(bp), Some(port));
    // Guest -> backend.
    let fx = ec.send(port, &mem).unwrap();
    assert_eq!(fx.iter().collect::<Vec<_>>(), vec![Effect::Backend(bp)]);
    // Backend -> guest.
    mem.view().test_and_clear_pending(port);
    mem.view().set_upcall_pending(0, false);
    mem.view().take_pending_sel(0);
    let fx = ec.notify_guest(bp, &mem).unwrap();
    assert!(mem.view().is_pending(port));
    assert_eq!(kicks(&fx), vec![0]);
    // A second bind to the same backend port fails.
    assert_eq!(
        ec.bind_interdomain(BACKEND, bp.0, &mem).unwrap_err(),
        Errno::EINVAL
    );
    ec.check_invariants().unwrap();
}

// ----- toolstack / backend side -----

#[test]
fn connect_backend_gives_start_info_ports_one_and_two() {
    let mut ec = chans(1);
    let (store, store_bp) = ec.connect_backend().unwrap();
    let (cons, cons_bp) = ec.connect_backend().unwrap();
    assert_eq!((store, cons), (1, 2));
    assert_ne!(store_bp, cons_bp);
    assert_eq!(
        state(&ec, cons),
        PortState::Interdomain(RemoteEnd::Backend(cons_bp))
    );
    let mut st = EvtchnStatus {
        dom: DOMID_SELF,
        port: cons,
        ..Default::default()
    };
    ec.status(&mut st).unwrap();
    assert_eq!(st.status, EVTCHNSTAT_INTERDOMAIN);
    assert_eq!((st.u0, st.u1), (BACKEND as u32, cons_bp.0));
    ec.check_invariants().unwrap();
}

#[test]
fn backend_bind_requires_a_port_unbound_for_the_backend() {
    let mut ec = chans(1);
    let own = ec.alloc_unbound(DOMID_SELF, DOMID_SELF).unwrap();
    assert_eq!(ec.backend_bind_interdomain(own), Err(Errno::EINVAL));
    assert_eq!(ec.backend_bind_interdomain(0), Err(Errno::EINVAL));
    assert_eq!(ec.backend_bind_interdomain(9999), Err(Errno::EINVAL));
    let p = ec.alloc_unbound_for_backend().unwrap();
    let bp = ec.backend_bind_interdomain(p).unwrap();
    assert_eq!(ec.backend_bind_interdomain(p), Err(Errno::EINVAL));
    assert_eq!(ec.backend_peer(bp), Some(p));
}

#[test]
fn guest_closing_a_backend_channel_disconnects_and_may_rebind() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let (port, bp) = ec.connect_backend().unwrap();
    // Xen lets the guest close an interdomain port; the backend end becomes unbound.
    let fx = ec.close(port, &mem).unwrap();
    assert_eq!(
        fx.iter().collect::<Vec<_>>(),
        vec![Effect::BackendDisconnected(bp)]
    );
    assert_eq!(state(&ec, port), PortState::Free);
    assert_eq!(ec.backend_peer(bp), None);
    // Backend notifications are dropped while unbound.
    assert!(ec.notify_guest(bp, &mem).unwrap().is_empty());
    assert_eq!(mem.view().pending_word(0), 0);
    // The guest can reconnect to the same backend port.
    let (again, fx) = ec.bind_interdomain(BACKEND, bp.0, &mem).unwrap();
    assert!(fx.contains(Effect::BackendConnected {
        backend: bp,
        guest: again
    }));
    ec.check_invariants().unwrap();
}

#[test]
fn backend_close_leaves_guest_port_unbound() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let (port, bp) = ec.connect_backend().unwrap();
    ec.backend_close(bp).unwrap();
    assert_eq!(
        state(&ec, port),
        PortState::Unbound {
            remote_dom: BACKEND
        }
    );
    assert_eq!(ec.backend_close(bp), Err(Errno::EINVAL));
    assert_eq!(ec.notify_guest(bp, &mem), Err(Errno::EINVAL));
    // Guest sends on an unbound port are dropped silently.
    assert!(ec.send(port, &mem).unwrap().is_empty());
    // The backend can bind the same guest port again.
    let bp2 = ec.backend_bind_interdomain(port).unwrap();
    assert_eq!(ec.backend_peer(bp2), Some(port));
    ec.check_invariants().unwrap();
}

// ----- VIRQs -----

#[test]
fn bind_virq_per_vcpu_and_global() {
    let mut ec = chans(2);
    let t0 = ec.bind_virq(VIRQ_TIMER, 0).unwrap();
    let t1 = ec.bind_virq(VIRQ_TIMER, 1).unwrap();
    let con = ec.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    assert_ne!(t0, t1);
    assert_eq!(ec.virq_port(1, VIRQ_TIMER), Some(t1));
    assert_eq!(ec.virq_port(0, VIRQ_CONSOLE), Some(con));
    assert_eq!(
        ec.port(t1),
        Some(PortInfo {
            state: PortState::Virq(VIRQ_TIMER),
            vcpu: 1
        })
    );
    ec.check_invariants().unwrap();
}

#[test]
fn bind_virq_errors() {
    let mut ec = chans(2);
    ec.bind_virq(VIRQ_TIMER, 1).unwrap();
    assert_eq!(ec.bind_virq(VIRQ_TIMER, 1), Err(Errno::EEXIST));
    assert_eq!(ec.bind_virq(NR_VIRQS, 0), Err(Errno::EINVAL));
    assert_eq!(ec.bind_virq(u32::MAX, 0), Err(Errno::EINVAL));
    // Global VIRQs bind on vCPU 0 only (then bind_vcpu may move them).
    assert_eq!(ec.bind_virq(VIRQ_CONSOLE, 1), Err(Errno::EINVAL));
    assert_eq!(ec.bind_virq(VIRQ_DEBUG, 2), Err(Errno::ENOENT));
    assert_eq!(ec.bind_virq(VIRQ_DEBUG, u32::MAX), Err(Errno::ENOENT));
    ec.check_invariants().unwrap();
}

#[test]
fn raise_virq_targets_the_bound_vcpu() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let t1 = ec.bind_virq(VIRQ_TIMER, 1).unwrap();
    let fx = ec.raise_virq(1, VIRQ_TIMER, &mem);
    assert_eq!(kicks(&fx), vec![1]);
    assert!(mem.view().is_pending(t1));
    assert_eq!(mem.view().pending_sel(1), 1);
    assert_eq!(mem.view().pending_sel(0), 0);
    // Unbound VIRQs and bad numbers are dropped.
    assert!(ec.raise_virq(0, VIRQ_TIMER, &mem).is_empty());
    assert!(ec.raise_virq(7, VIRQ_TIMER, &mem).is_empty());
    assert!(ec.raise_virq(0, 999, &mem).is_empty());
    // A global VIRQ moved by bind_vcpu is delivered to its new vCPU.
    let con = ec.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    ec.bind_vcpu(con, 1).unwrap();
    assert_eq!(ec.virq_port(0, VIRQ_CONSOLE), Some(con));
    let m2 = SharedInfoMem::zeroed();
    assert_eq!(kicks(&ec.raise_virq(0, VIRQ_CONSOLE, &m2)), vec![1]);
    ec.check_invariants().unwrap();
}

#[test]
fn closing_a_virq_unbinds_it_so_it_can_be_bound_again() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_virq(VIRQ_TIMER, 1).unwrap();
    ec.close(p, &mem).unwrap();
    assert_eq!(ec.virq_port(1, VIRQ_TIMER), None);
    assert_eq!(
        ec.port(p).unwrap(),
        PortInfo {
            state: PortState::Free,
            vcpu: 0
        }
    );
    assert_eq!(ec.bind_virq(VIRQ_TIMER, 1), Ok(p));
    let g = ec.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    ec.bind_vcpu(g, 1).unwrap();
    ec.close(g, &mem).unwrap();
    assert_eq!(ec.virq_port(0, VIRQ_CONSOLE), None);
    ec.check_invariants().unwrap();
}

// ----- IPI, PIRQ -----

#[test]
fn ipi_send_raises_the_port_on_its_vcpu() {
    let mut ec = chans(3);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_ipi(2).unwrap();
    assert_eq!(ec.port(p).unwrap().vcpu, 2);
    let fx = ec.send(p, &mem).unwrap();
    assert_eq!(kicks(&fx), vec![2]);
    assert!(mem.view().upcall_pending(2));
    assert!(!mem.view().upcall_pending(0));
    assert_eq!(ec.bind_ipi(3), Err(Errno::ENOENT));
}

#[test]
fn bind_pirq_is_refused_for_a_domu() {
    let mut ec = chans(1);
    assert_eq!(ec.bind_pirq(1, 0), Err(Errno::EPERM));
    assert_eq!(state(&ec, 1), PortState::Free);
}

// ----- close / send -----

#[test]
fn close_errors() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    assert_eq!(ec.close(0, &mem), Err(Errno::EINVAL), "reserved");
    assert_eq!(ec.close(1, &mem), Err(Errno::EINVAL), "free");
    assert_eq!(ec.close(NR_EVENT_CHANNELS, &mem), Err(Errno::EINVAL));
    assert_eq!(ec.close(u32::MAX, &mem), Err(Errno::EINVAL));
}

#[test]
fn close_clears_pending_and_leaves_loopback_peer_unbound() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let (a, b) = loopback(&mut ec, &mem);
    ec.bind_vcpu(b, 1).unwrap();
    ec.send(a, &mem).unwrap();
    assert!(mem.view().is_pending(b));
    ec.close(b, &mem).unwrap();
    assert!(!mem.view().is_pending(b), "xen clears pending on free");
    assert_eq!(
        ec.port(b).unwrap(),
        PortInfo {
            state: PortState::Free,
            vcpu: 0
        }
    );
    assert_eq!(state(&ec, a), PortState::Unbound { remote_dom: GUEST });
    // The peer can be bound again.
    let (c, _) = ec.bind_interdomain(DOMID_SELF, a, &mem).unwrap();
    assert_eq!(c, b);
    ec.check_invariants().unwrap();
}

#[test]
fn send_errors_and_silent_drop() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let v = ec.bind_virq(VIRQ_TIMER, 0).unwrap();
    let u = ec.alloc_unbound(DOMID_SELF, BACKEND).unwrap();
    assert_eq!(ec.send(v, &mem), Err(Errno::EINVAL), "virq");
    assert_eq!(ec.send(0, &mem), Err(Errno::EINVAL), "reserved");
    assert_eq!(ec.send(100, &mem), Err(Errno::EINVAL), "free");
    assert_eq!(ec.send(NR_EVENT_CHANNELS, &mem), Err(Errno::EINVAL));
    assert_eq!(ec.send(u, &mem), Ok(Effects::new()), "unbound: dropped");
    assert_eq!(mem.view().pending_word(0), 0);
}

// ----- status -----

#[test]
fn status_reports_every_state() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let unbound = ec.alloc_unbound(DOMID_SELF, BACKEND).unwrap();
    let (a, b) = loopback(&mut ec, &mem);
    let virq = ec.bind_virq(VIRQ_DEBUG, 1).unwrap();
    let ipi = ec.bind_ipi(1).unwrap();
    let st = |ec: &EventChannels, port| {
        let mut s = EvtchnStatus {
            dom: DOMID_SELF,
            port,
            ..Default::default()
        };
        ec.status(&mut s).map(|_| s)
    };
    let s = st(&ec, unbound).unwrap();
    assert_eq!(
        (s.status, s.u0, s.vcpu),
        (EVTCHNSTAT_UNBOUND, BACKEND as u32, 0)
    );
    let s = st(&ec, b).unwrap();
    assert_eq!(
        (s.status, s.u0, s.u1),
        (EVTCHNSTAT_INTERDOMAIN, GUEST as u32, a)
    );
    let s = st(&ec, virq).unwrap();
    assert_eq!((s.status, s.u0, s.vcpu), (EVTCHNSTAT_VIRQ, VIRQ_DEBUG, 1));
    let s = st(&ec, ipi).unwrap();
    assert_eq!((s.status, s.vcpu), (EVTCHNSTAT_IPI, 1));
    assert_eq!(st(&ec, 0).unwrap().status, EVTCHNSTAT_CLOSED);
    assert_eq!(st(&ec, 4000).unwrap().status, EVTCHNSTAT_CLOSED);
    assert_eq!(st(&ec, NR_EVENT_CHANNELS), Err(Errno::EINVAL));
    let mut s = EvtchnStatus {
        dom: BACKEND,
        port: 1,
        ..Default::default()
    };
    assert_eq!(ec.status(&mut s), Err(Errno::EPERM));
    s.dom = 1234;
    assert_eq!(ec.status(&mut s), Err(Errno::ESRCH));
    s.dom = GUEST;
    assert_eq!(ec.status(&mut s), Ok(()));
}

// ----- bind_vcpu -----

#[test]
fn bind_vcpu_follows_xen_rules() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let unbound = ec.alloc_unbound(DOMID_SELF, BACKEND).unwrap();
    let (_a, b) = loopback(&mut ec, &mem);
    let global = ec.bind_virq(VIRQ_CONSOLE, 0).unwrap();
    let timer = ec.bind_virq(VIRQ_TIMER, 0).unwrap();
    let ipi = ec.bind_ipi(0).unwrap();
    for p in [unbound, b, global] {
        assert_eq!(ec.bind_vcpu(p, 1), Ok(()), "port {p}");
        assert_eq!(ec.port(p).unwrap().vcpu, 1);
    }
    // Per-vCPU VIRQs and IPIs keep the vCPU they were bound for.
    assert_eq!(ec.bind_vcpu(timer, 1), Err(Errno::EINVAL));
    assert_eq!(ec.bind_vcpu(ipi, 1), Err(Errno::EINVAL));
    assert_eq!(ec.bind_vcpu(0, 1), Err(Errno::EINVAL));
    assert_eq!(ec.bind_vcpu(500, 1), Err(Errno::EINVAL));
    assert_eq!(ec.bind_vcpu(NR_EVENT_CHANNELS, 1), Err(Errno::EINVAL));
    // The vCPU is checked first.
    assert_eq!(ec.bind_vcpu(NR_EVENT_CHANNELS, 2), Err(Errno::ENOENT));
    assert_eq!(ec.bind_vcpu(b, 2), Err(Errno::ENOENT));
    ec.check_invariants().unwrap();
}

#[test]
fn bind_vcpu_moves_delivery_to_the_new_vcpu() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let (a, b) = loopback(&mut ec, &mem);
    let fx = ec.send(a, &mem).unwrap();
    assert_eq!(kicks(&fx), vec![0]);
    mem.view().test_and_clear_pending(b);
    ec.bind_vcpu(b, 1).unwrap();
    let fx = ec.send(a, &mem).unwrap();
    assert_eq!(kicks(&fx), vec![1]);
    assert_eq!(mem.view().pending_sel(1), 1 << (b / 64));
}

// ----- 2-level bit semantics -----

#[test]
fn pending_while_masked_raises_no_upcall_and_unmask_reraises() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let v = mem.view();
    let p = ec.bind_ipi(0).unwrap();
    v.mask(p);
    let fx = ec.send(p, &mem).unwrap();
    assert!(fx.is_empty());
    assert!(v.is_pending(p));
    assert_eq!(v.pending_sel(0), 0);
    assert!(!v.upcall_pending(0));
    // EVTCHNOP_unmask clears the mask and re-raises the pending port.
    let fx = ec.unmask(p, &mem).unwrap();
    assert_eq!(kicks(&fx), vec![0]);
    assert!(!v.is_masked(p));
    assert!(v.upcall_pending(0));
    assert_eq!(v.pending_sel(0), 1);
    // Unmasking an unmasked port, or a masked one that is not pending, raises nothing.
    v.set_upcall_pending(0, false);
    v.take_pending_sel(0);
    assert!(ec.unmask(p, &mem).unwrap().is_empty());
    v.test_and_clear_pending(p);
    v.mask(p);
    assert!(ec.unmask(p, &mem).unwrap().is_empty());
    assert!(!v.upcall_pending(0));
    assert_eq!(ec.unmask(NR_EVENT_CHANNELS, &mem), Err(Errno::EINVAL));
}

#[test]
fn already_pending_port_does_not_kick_again() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_ipi(0).unwrap();
    assert_eq!(kicks(&ec.send(p, &mem).unwrap()), vec![0]);
    assert!(ec.send(p, &mem).unwrap().is_empty());
    // The guest consumed the upcall but not the port: still pending, nothing new.
    mem.view().set_upcall_pending(0, false);
    assert!(ec.send(p, &mem).unwrap().is_empty());
}

#[test]
fn selector_bit_already_set_means_no_new_upcall() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let p1 = ec.bind_ipi(0).unwrap();
    let p2 = ec.bind_ipi(0).unwrap();
    assert_eq!(p1 / 64, p2 / 64);
    ec.send(p1, &mem).unwrap();
    mem.view().set_upcall_pending(0, false);
    // Same word, selector still set: the guest will find p2 when it scans that word.
    assert!(ec.send(p2, &mem).unwrap().is_empty());
    assert!(!mem.view().upcall_pending(0));
}

#[test]
fn upcall_already_pending_sets_selector_without_kick() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    for _ in 1..64 {
        ec.bind_ipi(0).unwrap();
    }
    let far = ec.bind_ipi(0).unwrap();
    assert_eq!(far, 64);
    ec.send(1, &mem).unwrap();
    let fx = ec.send(far, &mem).unwrap();
    assert!(fx.is_empty());
    assert_eq!(mem.view().pending_sel(0), 0b11);
}

#[test]
fn selectors_are_per_vcpu() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let p0 = ec.bind_ipi(0).unwrap();
    let p1 = ec.bind_ipi(1).unwrap();
    assert_eq!(kicks(&ec.send(p0, &mem).unwrap()), vec![0]);
    // Same word, other vCPU: its own selector and upcall, so it is kicked too.
    assert_eq!(kicks(&ec.send(p1, &mem).unwrap()), vec![1]);
    assert_eq!(mem.view().pending_sel(0), 1);
    assert_eq!(mem.view().pending_sel(1), 1);
}

#[test]
fn kick_is_reported_even_when_upcalls_are_masked() {
    // The upcall mask only defers delivery; the VMM still needs to wake a blocked vCPU
    // (SCHEDOP_block unblocks on a pending event whatever the mask).
    let mut ec = chans(1);
    let mem = SharedInfoMem::start_of_day();
    assert!(SharedInfoAccess::upcall_mask(&mem, 0));
    let p = ec.bind_ipi(0).unwrap();
    assert_eq!(kicks(&ec.send(p, &mem).unwrap()), vec![0]);
    assert!(!mem.view().events_need_delivery(0));
    mem.view().set_upcall_mask(0, false);
    assert!(mem.view().events_need_delivery(0));
}

#[test]
fn vcpus_beyond_legacy_slots_always_get_kicks() {
    let mut ec = chans(40);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_ipi(35).unwrap();
    assert_eq!(kicks(&ec.send(p, &mem).unwrap()), vec![35]);
    mem.view().test_and_clear_pending(p);
    assert_eq!(kicks(&ec.send(p, &mem).unwrap()), vec![35]);
}

// ----- reset -----

#[test]
fn reset_closes_everything() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let (_, bp1) = ec.connect_backend().unwrap();
    let (_, bp2) = ec.connect_backend().unwrap();
    loopback(&mut ec, &mem);
    ec.bind_virq(VIRQ_TIMER, 1).unwrap();
    let ipi = ec.bind_ipi(0).unwrap();
    ec.send(ipi, &mem).unwrap();
    let fx = ec.reset(DOMID_SELF, &mem).unwrap();
    let mut disc: Vec<_> = fx.iter().collect();
    disc.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        disc,
        vec![
            Effect::BackendDisconnected(bp1),
            Effect::BackendDisconnected(bp2)
        ]
    );
    assert!((1..NR_EVENT_CHANNELS).all(|p| state(&ec, p) == PortState::Free));
    assert_eq!(state(&ec, 0), PortState::Reserved);
    assert_eq!(ec.virq_port(1, VIRQ_TIMER), None);
    assert_eq!(mem.view().pending_word(0), 0);
    ec.check_invariants().unwrap();
    assert_eq!(ec.reset(BACKEND, &mem).unwrap_err(), Errno::EPERM);
    assert_eq!(ec.reset(99, &mem).unwrap_err(), Errno::ESRCH);
    assert!(ec.reset(GUEST, &mem).unwrap().is_empty());
}

// ----- dispatch -----

fn op<T: Pod>(
    ec: &mut EventChannels,
    mem: &SharedInfoMem,
    cmd: u32,
    arg: T,
) -> Result<(T, Effects), Errno> {
    let mut bytes = arg.as_bytes().to_vec();
    let fx = ec.do_event_channel_op(cmd, &mut bytes, 0, mem)?;
    Ok((T::from_bytes(&bytes).unwrap(), fx))
}

#[test]
fn dispatch_decodes_and_writes_back_outputs() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let (a, _) = op(
        &mut ec,
        &mem,
        EVTCHNOP_ALLOC_UNBOUND,
        EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: DOMID_SELF,
            port: 0,
        },
    )
    .unwrap();
    assert_eq!((a.port, a.dom), (1, DOMID_SELF));
    let (b, fx) = op(
        &mut ec,
        &mem,
        EVTCHNOP_BIND_INTERDOMAIN,
        EvtchnBindInterdomain {
            remote_dom: DOMID_SELF,
            remote_port: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.local_port, 2);
    assert_eq!(kicks(&fx), vec![0]);
    let (v, _) = op(
        &mut ec,
        &mem,
        EVTCHNOP_BIND_VIRQ,
        EvtchnBindVirq {
            virq: VIRQ_TIMER,
            vcpu: 1,
            port: 0,
        },
    )
    .unwrap();
    assert_eq!(v.port, 3);
    let (i, _) = op(
        &mut ec,
        &mem,
        EVTCHNOP_BIND_IPI,
        EvtchnBindIpi { vcpu: 1, port: 0 },
    )
    .unwrap();
    assert_eq!(i.port, 4);
    let (_, fx) = op(&mut ec, &mem, EVTCHNOP_SEND, EvtchnSend { port: 4 }).unwrap();
    assert_eq!(kicks(&fx), vec![1]);
    let (s, _) = op(
        &mut ec,
        &mem,
        EVTCHNOP_STATUS,
        EvtchnStatus {
            dom: DOMID_SELF,
            port: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((s.status, s.vcpu, s.u0), (EVTCHNSTAT_VIRQ, 1, VIRQ_TIMER));
    op(
        &mut ec,
        &mem,
        EVTCHNOP_BIND_VCPU,
        EvtchnBindVcpu { port: 2, vcpu: 1 },
    )
    .unwrap();
    assert_eq!(ec.port(2).unwrap().vcpu, 1);
    mem.view().mask(4);
    op(&mut ec, &mem, EVTCHNOP_UNMASK, EvtchnUnmask { port: 4 }).unwrap();
    assert!(!mem.view().is_masked(4));
    op(&mut ec, &mem, EVTCHNOP_CLOSE, EvtchnClose { port: 4 }).unwrap();
    assert_eq!(state(&ec, 4), PortState::Free);
    assert_eq!(
        op(&mut ec, &mem, EVTCHNOP_BIND_PIRQ, EvtchnBindPirq::default()).unwrap_err(),
        Errno::EPERM
    );
    op(
        &mut ec,
        &mem,
        EVTCHNOP_RESET,
        EvtchnReset { dom: DOMID_SELF },
    )
    .unwrap();
    assert_eq!(state(&ec, 1), PortState::Free);
    ec.check_invariants().unwrap();
}

#[test]
fn dispatch_errors_leave_the_argument_untouched() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    ec.bind_virq(VIRQ_TIMER, 0).unwrap();
    let arg = EvtchnBindVirq {
        virq: VIRQ_TIMER,
        vcpu: 0,
        port: 0xdead,
    };
    let mut bytes = arg.as_bytes().to_vec();
    assert_eq!(
        ec.do_event_channel_op(EVTCHNOP_BIND_VIRQ, &mut bytes, 0, &mem),
        Err(Errno::EEXIST)
    );
    assert_eq!(bytes, arg.as_bytes());
}

#[test]
fn dispatch_refuses_fifo_unknown_ops_and_short_arguments() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let mut big = [0u8; 64];
    for cmd in [
        EVTCHNOP_INIT_CONTROL,
        EVTCHNOP_EXPAND_ARRAY,
        EVTCHNOP_SET_PRIORITY,
        14,
        99,
        u32::MAX,
    ] {
        assert_eq!(
            ec.do_event_channel_op(cmd, &mut big, 0, &mem),
            Err(Errno::ENOSYS),
            "cmd {cmd}"
        );
    }
    let mut short = [0u8; 11];
    assert_eq!(
        ec.do_event_channel_op(EVTCHNOP_BIND_VIRQ, &mut short, 0, &mem),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        ec.do_event_channel_op(EVTCHNOP_STATUS, &mut [0u8; 23], 0, &mem),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        ec.do_event_channel_op(EVTCHNOP_SEND, &mut [], 0, &mem),
        Err(Errno::EFAULT)
    );
    // A longer buffer is fine; only the struct's bytes are written.
    let mut long = [0xffu8; 16];
    long[..8].copy_from_slice(EvtchnBindIpi { vcpu: 0, port: 0 }.as_bytes());
    ec.do_event_channel_op(EVTCHNOP_BIND_IPI, &mut long, 0, &mem)
        .unwrap();
    assert_eq!(&long[4..8], &1u32.to_le_bytes());
    assert_eq!(&long[8..], &[0xff; 8]);
}

// ----- shared memory layout -----

#[test]
fn shared_info_words_use_xen_offsets() {
    let mem = SharedInfoMem::zeroed();
    let v = mem.view();
    mem.test_and_set_bit(Bitmap::Pending, 1, 2); // port 66
    mem.test_and_set_bit(Bitmap::Mask, 63, 63); // port 4095
    mem.pending_sel_test_and_set(3, 5);
    mem.upcall_pending_test_and_set(3);
    v.set_upcall_mask(31, true);
    let b = mem.snapshot();
    let word = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
    assert_eq!(word(si::EVTCHN_PENDING_OFFSET + 8), 1 << 2);
    assert_eq!(word(si::EVTCHN_MASK_OFFSET + 63 * 8), 1 << 63);
    let vi3 = si::vcpu_info_offset(3).unwrap();
    assert_eq!(word(vi3 + si::PENDING_SEL_OFFSET), 1 << 5);
    assert_eq!(b[vi3 + si::UPCALL_PENDING_OFFSET], 1);
    let vi31 = si::vcpu_info_offset(31).unwrap();
    assert_eq!(b[vi31 + si::UPCALL_MASK_OFFSET], 1);
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 5);
    assert!(v.is_pending(66) && v.is_masked(4095));
    // Out-of-range indices are ignored, never a panic.
    assert!(!mem.test_and_set_bit(Bitmap::Pending, 64, 0));
    assert!(!mem.test_and_set_bit(Bitmap::Pending, 0, 64));
    assert!(!mem.pending_sel_test_and_set(0, 64));
    assert!(!mem.upcall_pending_test_and_set(32));
    assert!(SharedInfoWords::new(&[]).is_none());
    let start = SharedInfoMem::start_of_day();
    let sb = start.snapshot();
    let bytes = si::SharedInfo::start_of_day();
    assert_eq!(&sb[..SHARED_INFO_WORDS * 8], bytes.as_bytes());
}

#[test]
fn guest_upcall_consumes_pending_unmasked_ports_once() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let ports: Vec<_> = (0..70).map(|_| ec.bind_ipi(0).unwrap()).collect();
    mem.view().mask(ports[5]);
    for &p in &ports {
        ec.send(p, &mem).unwrap();
    }
    let mut got = Vec::new();
    mem.view().guest_upcall(0, |_| true, |p| got.push(p));
    assert_eq!(got.len(), 69);
    assert!(!got.contains(&ports[5]));
    assert!(mem.view().is_pending(ports[5]));
    assert_eq!(mem.view().guest_upcall(0, |_| true, |_| ()), 0);
}

// ----- SCHEDOP_poll -----

#[test]
fn poll_on_a_masked_port_is_woken_by_its_raise_only() {
    let mut ec = chans(2);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_ipi(1).unwrap();
    let other = ec.bind_ipi(0).unwrap();
    mem.view().mask(p);
    mem.view().mask(other);
    assert_eq!(ec.poll_start(1, &[p], &mem), Ok(PollOutcome::Blocked));
    assert!(ec.is_polling(1));
    // Another port does not wake a single-port poller.
    assert!(ec.send(other, &mem).unwrap().is_empty());
    assert!(ec.is_polling(1));
    // The polled port wakes it although masked (no upcall involved).
    let fx = ec.send(p, &mem).unwrap();
    assert_eq!(kicks(&fx), vec![1]);
    assert!(!ec.is_polling(1));
    assert!(!mem.view().upcall_pending(1));
    assert!(!ec.poll_stop(1), "already woken");
    ec.check_invariants().unwrap();
}

#[test]
fn poll_on_several_or_no_ports_is_woken_by_any_raise() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let a = ec.bind_ipi(0).unwrap();
    let b = ec.bind_ipi(0).unwrap();
    let c = ec.bind_ipi(0).unwrap();
    for p in [a, b, c] {
        mem.view().mask(p);
    }
    assert_eq!(ec.poll_start(0, &[a, b], &mem), Ok(PollOutcome::Blocked));
    assert_eq!(kicks(&ec.send(c, &mem).unwrap()), vec![0]);
    assert!(!ec.is_polling(0));
    mem.view().test_and_clear_pending(c);
    assert_eq!(ec.poll_start(0, &[], &mem), Ok(PollOutcome::Blocked));
    assert_eq!(kicks(&ec.send(c, &mem).unwrap()), vec![0]);
    ec.check_invariants().unwrap();
}

#[test]
fn poll_returns_ready_without_blocking_when_something_is_pending() {
    let mut ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let p = ec.bind_ipi(0).unwrap();
    let q = ec.bind_ipi(0).unwrap();
    mem.view().mask(p);
    ec.send(p, &mem).unwrap();
    assert_eq!(ec.poll_start(0, &[q, p], &mem), Ok(PollOutcome::Ready));
    assert!(!ec.is_polling(0));
    // An upcall needing delivery also ends the poll at once...
    ec.send(q, &mem).unwrap();
    assert_eq!(ec.poll_start(0, &[], &mem), Ok(PollOutcome::Ready));
    // ...but not while upcalls are masked.
    mem.view().set_upcall_mask(0, true);
    mem.view().test_and_clear_pending(p);
    assert_eq!(ec.poll_start(0, &[p], &mem), Ok(PollOutcome::Blocked));
    assert!(ec.poll_stop(0));
    assert!(!ec.is_polling(0));
    ec.check_invariants().unwrap();
}

#[test]
fn poll_argument_errors() {
    let ec = chans(1);
    let mem = SharedInfoMem::zeroed();
    let many = vec![1; MAX_POLL_PORTS + 1];
    assert_eq!(ec.poll_start(0, &many, &mem), Err(Errno::EINVAL));
    assert_eq!(
        ec.poll_start(0, &vec![1; MAX_POLL_PORTS], &mem),
        Ok(PollOutcome::Blocked)
    );
    ec.poll_stop(0);
    assert_eq!(
        ec.poll_start(0, &[1, NR_EVENT_CHANNELS], &mem),
        Err(Errno::EINVAL)
    );
    assert!(!ec.is_polling(0));
    assert_eq!(ec.poll_start(1, &[1], &mem), Err(Errno::EINVAL));
    assert!(!ec.poll_stop(5));
    ec.check_invariants().unwrap();
}

mod stress;
