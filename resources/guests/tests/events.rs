//! events: event channels end to end — vcpu_info moved into guest memory, the event callback
//! with Xen's frame and mask semantics, IPIs and loopback interdomain channels, the console
//! and xenstore rings with kxen's in-process backends, SCHEDOP_block/poll, hostile ops.
//!
//! Variant `events_spin`: upcalls reach a guest spinning without hypercalls.
//! Variant `events_masked`: a guest that never unmasks events yet raises many, and writes a
//! lot through the console ring; it must run to the end (the VMM never stalls on it).
//!
//! The `events` variant talks to its host test: after `VALUE events_waiting_for_input` the
//! host pushes `pong` as console input; after `VALUE events_waiting_for_shutdown` it asks for
//! a poweroff through xenstore (`control/shutdown`, what Ctrl-C does).

#![no_std]
#![no_main]
// The other variants use only a few of the helpers.
#![cfg_attr(not(kxen_guest = "events"), allow(dead_code))]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::events::{self as ev, *};

xen_notes!(features = "writable_page_tables");

#[cfg(kxen_guest = "events")]
fn kmain(si: &'static StartInfo) {
    vcpu_info_registration();
    check_eq!("register_event_callback", register_event_callback(), 0);

    // Xen marked everything pending when the vcpu_info moved; events are still masked (the
    // mask was copied from the start-of-day vcpu_info), so nothing was delivered yet.
    check_eq!("no_upcall_while_masked", UPCALLS.get(), 0u32);
    set_upcall_mask(false);
    force_callback();
    check_eq!("spurious_upcall_after_register", UPCALLS.get(), 1u32);
    check_eq!("spurious_upcall_sel_all_ones", SEL_SEEN.get(), u64::MAX);
    check_eq!("upcall_frame_saved_mask_0", LAST_SAVED_MASK.get(), 0u64);
    check!("upcall_runs_with_events_masked", LAST_MASK_IN_HANDLER.get());
    check!("iret_restores_unmasked", !upcall_mask());

    let shinfo = map_shared_info(si);
    value!("map_shared_info_rc", "{}", shinfo);

    // Ports 1 and 2 are the xenstore and console channels, connected to the backend (dom0).
    for (name, port) in [("store", si.store_evtchn), ("console", si.console_evtchn)] {
        match status(port) {
            Ok(s) => {
                check!(
                    name,
                    s.status == EVTCHNSTAT_INTERDOMAIN && s.u0 & 0xffff == 0,
                    "status {:?}",
                    s
                );
            }
            Err(e) => {
                check!(name, false, "status failed {}", e);
            }
        }
    }
    check_eq!(
        "start_info_ports",
        (si.store_evtchn, si.console_evtchn),
        (1u32, 2u32)
    );

    ipi_to_self();
    loopback_interdomain();
    masked_pending_then_unmask();
    if shared_info_mapped() {
        port_mask_and_unmask_reraise();
    } else {
        value!(
            "port_mask_tests",
            "skipped (update_va_mapping not available)"
        );
    }
    poll_tests();
    hostile_ops();
    compat_op();
    console_ring_ping(si);
    block_wakes_on_console_input(si);
    xenstore_reads(si);
    polite_shutdown(si);
}

fn vcpu_info_registration() {
    let va = &VCPU_INFO as *const VcpuInfoArea as u64;
    let (mfn, off) = (pfn_of(va), (va & 0xfff) as u32);
    check_eq!(
        "vcpu_info_crossing_page",
        register_vcpu_info_raw(0, mfn, 4064),
        -ENXIO
    );
    check_eq!(
        "vcpu_info_offset_past_page",
        register_vcpu_info_raw(0, mfn, 4096),
        -EINVAL
    );
    check_eq!(
        "vcpu_info_unaligned",
        register_vcpu_info_raw(0, mfn, off + 4),
        -ENXIO
    );
    check_eq!(
        "vcpu_info_outside_ram",
        register_vcpu_info_raw(0, 1 << 40, 0),
        -EINVAL
    );
    check_eq!(
        "vcpu_info_no_such_vcpu",
        register_vcpu_info_raw(5, mfn, off),
        -ENOENT
    );
    check_eq!("register_vcpu_info", register_vcpu_info(), 0);
    check_eq!("register_vcpu_info_twice", register_vcpu_info(), -EBUSY);
    check!("moved_vcpu_info_masked", upcall_mask());
    check!("moved_vcpu_info_pending", upcall_pending());
    check_eq!("moved_vcpu_info_sel", pending_sel(), u64::MAX);
}

fn expect_upcall(name: &str, before: u32, port: u32) {
    check_eq!(name, UPCALLS.get(), before + 1);
    let word = 1u64 << (port / 64);
    check!(
        "upcall_sel_word",
        SEL_SEEN.get() & word != 0,
        "sel {:#x}",
        SEL_SEEN.get()
    );
    if shared_info_mapped() && port < 64 {
        check!(
            "upcall_port_bit",
            PORTS_SEEN.get() & (1 << port) != 0,
            "ports {:#x}",
            PORTS_SEEN.get()
        );
    }
}

fn ipi_to_self() {
    let port = match bind_ipi(0) {
        Ok(p) => p,
        Err(e) => {
            check!("bind_ipi", false, "rc {}", e);
            return;
        }
    };
    value!("ipi_port", "{}", port);
    check_eq!("ipi_port_is_3", port, 3u32);
    if let Ok(s) = status(port) {
        check_eq!("ipi_status", (s.status, s.vcpu), (EVTCHNSTAT_IPI, 0u32));
    }
    reset_records();
    let n = UPCALLS.get();
    check_eq!("send_ipi", send(port), 0);
    expect_upcall("ipi_upcall", n, port);
    check_eq!("close_ipi", close(port), 0);
    check_eq!("send_closed_port", send(port), -EINVAL);
}

fn loopback_interdomain() {
    let Ok(u) = alloc_unbound(DOMID_SELF) else {
        check!("alloc_unbound", false);
        return;
    };
    reset_records();
    let n = UPCALLS.get();
    let l = match bind_interdomain(DOMID_SELF, u) {
        Ok(l) => l,
        Err(e) => {
            check!("bind_interdomain_self", false, "rc {}", e);
            return;
        }
    };
    value!("loopback_ports", "{}<->{}", u, l);
    // Xen raises the binder's new port at once.
    expect_upcall("bind_interdomain_raises_local", n, l);
    reset_records();
    let n = UPCALLS.get();
    check_eq!("send_loopback", send(l), 0);
    expect_upcall("loopback_upcall_on_peer", n, u);
    if let Ok(s) = status(l) {
        check_eq!(
            "loopback_status",
            (s.status, s.u0 & 0xffff, s.u1),
            (EVTCHNSTAT_INTERDOMAIN, 1u32, u)
        );
    }
    check_eq!("close_loopback_local", close(l), 0);
    check_eq!("close_loopback_remote", close(u), 0);
}

fn masked_pending_then_unmask() {
    let Ok(port) = bind_ipi(0) else {
        check!("bind_ipi_2", false);
        return;
    };
    set_upcall_mask(true);
    let n = UPCALLS.get();
    check_eq!("send_while_masked", send(port), 0);
    check_eq!("masked_no_upcall", UPCALLS.get(), n);
    check!("masked_upcall_pending_set", upcall_pending());
    set_upcall_mask(false);
    force_callback();
    check_eq!("unmask_then_hypercall_delivers", UPCALLS.get(), n + 1);
    check!("pending_consumed", !upcall_pending());
    close(port);
}

fn port_mask_and_unmask_reraise() {
    let Ok(port) = bind_ipi(0) else { return };
    mask_port(port, true);
    let n = UPCALLS.get();
    send(port);
    check_eq!("port_masked_no_upcall", UPCALLS.get(), n);
    check!("port_masked_stays_pending", port_pending(port));
    reset_records();
    check_eq!("evtchn_unmask", unmask(port), 0);
    expect_upcall("unmask_reraises", n, port);
    close(port);
}

fn poll_tests() {
    let Ok(port) = bind_ipi(0) else { return };
    // Masked: the port becomes pending without an upcall; poll sees it and returns at once.
    set_upcall_mask(true);
    send(port);
    check_eq!("poll_pending_port_returns", poll(&[port], 0), 0);
    check_eq!("poll_timeout_returns", poll(&[4000], 20_000_000), 0);
    let many = [port; 129];
    check_eq!("poll_too_many_ports", poll(&many, 0), -EINVAL);
    check_eq!("poll_port_out_of_range", poll(&[5000], 0), -EINVAL);
    set_upcall_mask(false);
    force_callback();
    close(port);
}

fn hostile_ops() {
    check_eq!("send_out_of_range", send(5000), -EINVAL);
    check_eq!("send_huge_port", send(u32::MAX), -EINVAL);
    check_eq!("close_port_0", close(0), -EINVAL);
    check_eq!("unmask_out_of_range", unmask(4096), -EINVAL);
    match bind_virq(VIRQ_DEBUG, 0) {
        Ok(p) => {
            check_eq!("bind_virq_twice", bind_virq(VIRQ_DEBUG, 0), Err(-EEXIST));
            close(p);
        }
        Err(e) => {
            check!("bind_virq", false, "rc {}", e);
        }
    }
    check_eq!("bind_virq_no_vcpu", bind_virq(VIRQ_TIMER, 7), Err(-ENOENT));
    check_eq!("bind_virq_out_of_range", bind_virq(99, 0), Err(-EINVAL));
    check_eq!("bind_ipi_no_vcpu", bind_ipi(3), Err(-ENOENT));
    check_eq!(
        "bind_interdomain_bad_port",
        bind_interdomain(DOMID_SELF, 4000),
        Err(-EINVAL)
    );
    check_eq!("unknown_op", evtchn_op_raw(99, 0), -ENOSYS);
    check_eq!(
        "fifo_refused",
        evtchn_op_raw(EVTCHNOP_INIT_CONTROL, 0),
        -ENOSYS
    );
    check_eq!("bad_pointer", evtchn_op_raw(EVTCHNOP_SEND, 0x1000), -EFAULT);
    check_eq!(
        "bad_pointer_noncanonical",
        evtchn_op_raw(EVTCHNOP_STATUS, 1 << 63),
        -EFAULT
    );
}

fn compat_op() {
    let mut op = CompatOp {
        cmd: EVTCHNOP_ALLOC_UNBOUND,
        u: [
            u32::from(DOMID_SELF) | (u32::from(DOMID_SELF) << 16),
            0,
            0,
            0,
            0,
            0,
        ],
    };
    check_eq!("compat_alloc_unbound", evtchn_op_compat(&mut op), 0);
    let port = op.u[1];
    check!(
        "compat_port_written_back",
        port > 2 && port < 4096,
        "port {}",
        port
    );
    check_eq!(
        "compat_close",
        evtchn_op_compat(&mut CompatOp {
            cmd: EVTCHNOP_CLOSE,
            u: [port, 0, 0, 0, 0, 0]
        }),
        0
    );
    check_eq!(
        "compat_unknown",
        evtchn_op_compat(&mut CompatOp { cmd: 77, u: [0; 6] }),
        -ENOSYS
    );
    // EVTCHNOP_reset (10) is not part of the compat union.
    check_eq!(
        "compat_reset_refused",
        evtchn_op_compat(&mut CompatOp {
            cmd: 10,
            u: [u32::from(DOMID_SELF), 0, 0, 0, 0, 0]
        }),
        -ENOSYS
    );
    check_eq!(
        "compat_bad_pointer",
        {
            // SAFETY: the hypervisor must refuse an unmapped pointer with -EFAULT.
            unsafe { kit::hypercall::hypercall1(HYPERVISOR_EVENT_CHANNEL_OP_COMPAT, 0x1000) }
        },
        -EFAULT
    );
}

fn console_ring_ping(si: &StartInfo) {
    reset_records();
    let n = UPCALLS.get();
    let msg = b"events: ring-ping via the console ring\n";
    check_eq!("console_ring_write", console_ring_write(si, msg), msg.len());
    check_eq!("console_send", send(si.console_evtchn), 0);
    // The backend consumed the output and notified port 2 before the send returned.
    expect_upcall("console_backend_notifies", n, si.console_evtchn);
}

fn block_wakes_on_console_input(si: &StartInfo) {
    value!("events_waiting_for_input", "1");
    kit::console::flush();
    let mut buf = [0u8; 16];
    let mut got = 0;
    let mut blocks = 0;
    let mut rc = 0;
    // SCHEDOP_block returns when the host's input arrives (kxen wakes vCPU 0 and the
    // console backend fills the ring); every return is for a reason, so few blocks suffice.
    while got < 5 && blocks < 200 {
        rc |= ev::block();
        blocks += 1;
        got += console_ring_read(si, &mut buf[got..]);
    }
    value!("blocks", "{}", blocks);
    check_eq!("block_rc", rc, 0);
    check_eq!("console_input", &buf[..got], &b"pong\n"[..]);
}

fn xenstore_reads(si: &StartInfo) {
    let mut out = [0u8; 128];
    match ev::xs_request(si, XS_READ, b"domid\0", &mut out) {
        Some((ty, n)) => {
            check_eq!("xs_read_domid", (ty, &out[..n]), (XS_READ, &b"1"[..]));
        }
        None => {
            check!("xs_read_domid", false, "no reply");
        }
    }
    match ev::xs_request(si, XS_READ, b"name\0", &mut out) {
        Some((ty, n)) => {
            check_eq!("xs_read_name", (ty, &out[..n]), (XS_READ, &b"events"[..]));
        }
        None => {
            check!("xs_read_name", false, "no reply");
        }
    }
    match ev::xs_request(si, XS_READ, b"/local/domain/0/nope\0", &mut out) {
        Some((ty, _)) => {
            check_eq!("xs_read_missing_is_error", ty, XS_ERROR);
        }
        None => {
            check!("xs_read_missing_is_error", false, "no reply");
        }
    }
}

fn polite_shutdown(si: &StartInfo) {
    let mut out = [0u8; 64];
    let w = ev::xs_request(si, XS_WATCH, b"control/shutdown\0kx\0", &mut out);
    check_eq!("xs_watch", w.map(|(t, _)| t), Some(XS_WATCH));
    value!("events_waiting_for_shutdown", "1");
    kit::console::flush();
    for _ in 0..1000 {
        if let Some((XS_READ, n)) = ev::xs_request(si, XS_READ, b"control/shutdown\0", &mut out) {
            if n > 0 {
                check_eq!("control_shutdown", &out[..n], &b"poweroff"[..]);
                check!(
                    "watch_fired",
                    XS_WATCH_EVENTS.get() >= 2,
                    "{}",
                    XS_WATCH_EVENTS.get()
                );
                return;
            }
        }
        // Sleep until the store notifies us or the host wakes us.
        ev::block();
        ev::xs_drain_watch_events(si);
    }
    check!("control_shutdown", false, "no shutdown request came");
}

/// Spin without hypercalls until an upcall arrives (or give up after a few seconds).
#[cfg(kxen_guest = "events_spin")]
fn spin_for_upcall(name: &str, before: u32) {
    let mut i = 0u64;
    while UPCALLS.get() == before && i < 3_000_000_000 {
        core::hint::spin_loop();
        i += 1;
    }
    check!(name, UPCALLS.get() > before, "no upcall after {} spins", i);
}

/// Variant `events_spin`: events reach a guest busy in a loop that makes no hypercall (the
/// raiser kicks the vCPU out of KVM_RUN). The host types into the console after
/// `VALUE spin_console`, and raises VIRQ_DEBUG after `VALUE spin_virq`.
#[cfg(kxen_guest = "events_spin")]
fn kmain(_si: &'static StartInfo) {
    check_eq!("register_vcpu_info", register_vcpu_info(), 0);
    check_eq!("register_event_callback", register_event_callback(), 0);
    set_upcall_mask(false);
    force_callback();
    let n = UPCALLS.get();
    check_eq!("spurious_upcall_consumed", n, 1u32);
    value!("spin_console", "1");
    kit::console::flush();
    spin_for_upcall("console_input_interrupts_a_spinning_guest", n);
    let port = bind_virq(VIRQ_DEBUG, 0);
    check!("bind_virq_debug", port.is_ok(), "{:?}", port);
    let n = UPCALLS.get();
    value!("spin_virq", "1");
    kit::console::flush();
    spin_for_upcall("virq_from_another_thread_interrupts_a_spinning_guest", n);
}

#[cfg(kxen_guest = "events_masked")]
fn kmain(si: &'static StartInfo) {
    // Never unmask: events stay masked in the legacy vcpu_info from start of day.
    let Ok(port) = bind_ipi(0) else {
        check!("bind_ipi", false);
        return;
    };
    let mut ok = true;
    for _ in 0..2000 {
        ok &= send(port) == 0;
    }
    check!("many_sends_while_masked", ok);
    check_eq!("poll_sees_pending_while_masked", poll(&[port], 0), 0);
    // 64 KiB through the console ring, notifying the backend each time the ring fills.
    let line = b"events_masked: console ring line, never unmasking events......\n";
    let mut sent = 0usize;
    let mut spins = 0u32;
    while sent < 64 * 1024 && spins < 100_000 {
        let off = sent % line.len();
        let n = console_ring_write(si, &line[off..]);
        sent += n;
        if n == 0 {
            spins += 1;
            send(si.console_evtchn);
        }
    }
    send(si.console_evtchn);
    check!("console_ring_64k", sent >= 64 * 1024, "sent {}", sent);
    check_eq!("block_returns_once_unmasked_pending", ev::block(), 0);
    check_eq!("close", close(port), 0);
}
