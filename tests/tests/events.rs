//! Event channels under KVM: the `events` kit guest (upcalls, IPIs, loopback channels, the
//! console and xenstore backends, SCHEDOP_block/poll, hostile ops, a polite shutdown through
//! xenstore) and `events_masked` (a guest that never unmasks events must not stall kxen).
//! Without /dev/kvm every test here skips with one line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen::launch::{Domain, LaunchSpec, Outcome};
use kxen_tests::harness::{kvm, run_with_watchdog, Capture, GUEST_TIMEOUT};
use kxen_tests::Report;
use xen_abi::sched::ShutdownReason;

fn spec(name: &str) -> LaunchSpec {
    LaunchSpec {
        name: name.into(),
        kernel: kxen_tests::guest(name)
            .unwrap_or_else(|| panic!("no test guest {name}"))
            .to_vec(),
        initrd: Vec::new(),
        cmdline: format!("kxen-test {name}"),
        memory_mib: 64,
        vcpus: 1,
        privileged: false,
        ..Default::default()
    }
}

struct Run {
    outcome: Outcome,
    console: String,
    report: Report,
    xenstore: String,
    elapsed: Duration,
}

/// Boot `name`; `host` runs on another thread with the domain's stop handle, shared state
/// and console capture (to play the host side of a test).
fn boot(
    name: &str,
    host: impl FnOnce(kxen::launch::StopHandle, Arc<kxen::domain::DomainShared>, Capture)
        + Send
        + 'static,
) -> Run {
    let out = Capture::default();
    let mut domain = Domain::create(&spec(name), Box::new(out.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let stop = domain.stop_handle();
    let shared = domain.shared().clone();
    let helper = {
        let out = out.clone();
        std::thread::spawn(move || host(stop, shared, out))
    };
    let t0 = Instant::now();
    let outcome = run_with_watchdog(&mut domain, GUEST_TIMEOUT, "test timeout")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let elapsed = t0.elapsed();
    let _ = helper.join();
    let console = out.text();
    eprintln!(
        "--- {name} console ---\n{console}--- {} ---",
        outcome.describe()
    );
    let xenstore = domain.shared().xenstore_dump().unwrap_or_default();
    Run {
        outcome,
        report: Report::parse(&console),
        console,
        xenstore,
        elapsed,
    }
}

/// Wait (up to the guest timeout) until the console shows `marker`.
fn wait_for(out: &Capture, marker: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < GUEST_TIMEOUT {
        if out.text().contains(marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn events_guest_upcalls_backends_block_and_polite_shutdown_all_pass() {
    if !kvm() {
        return;
    }
    let run = boot("events", |stop, shared, out| {
        if !wait_for(&out, "VALUE events_waiting_for_input") {
            return;
        }
        // Let the guest block first, then type.
        std::thread::sleep(Duration::from_millis(200));
        shared.push_console_input(b"pong\n");
        if !wait_for(&out, "VALUE events_waiting_for_shutdown") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.request_shutdown("poweroff").expect("request_shutdown");
    });
    assert!(
        run.report.all_passed(),
        "guest reported failures or did not finish:\n{}",
        run.console
    );
    assert_eq!(
        run.outcome.reason,
        ShutdownReason::Poweroff,
        "{}",
        run.console
    );
    // Output written through the console ring reached the host.
    assert!(
        run.console
            .contains("events: ring-ping via the console ring"),
        "{}",
        run.console
    );
    // The host's request is in the store, as `xl shutdown` leaves it.
    assert!(
        run.xenstore
            .contains("/local/domain/1/control/shutdown = \"poweroff\""),
        "{}",
        run.xenstore
    );
    assert!(run.xenstore.contains("/local/domain/1/name = \"events\""));
}

#[test]
fn guest_that_never_unmasks_events_does_not_stall_the_vmm() {
    if !kvm() {
        return;
    }
    let run = boot("events_masked", |_, _, _| {});
    assert!(
        run.report.all_passed(),
        "guest reported failures or did not finish:\n{}",
        run.console
    );
    assert_eq!(run.outcome.reason, ShutdownReason::Poweroff);
    let lines = run
        .console
        .matches("events_masked: console ring line")
        .count();
    assert!(lines >= 1000, "only {lines} ring lines reached the host");
    assert!(
        run.elapsed < Duration::from_secs(30),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn stop_handle_wakes_a_vcpu_blocked_forever() {
    if !kvm() {
        return;
    }
    // The events guest blocks waiting for console input that never comes; a hard stop must
    // end the run promptly (the blocked vCPU is woken).
    let run = boot("events", |stop, _, out| {
        if wait_for(&out, "VALUE events_waiting_for_input") {
            std::thread::sleep(Duration::from_millis(300));
            stop.stop("test: hard stop");
        }
    });
    assert_eq!(run.outcome.reason, ShutdownReason::Crash, "{}", run.console);
    assert_eq!(
        run.outcome.crash_message.as_deref(),
        Some("test: hard stop")
    );
    assert!(
        run.elapsed < Duration::from_secs(20),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn events_reach_a_guest_spinning_without_hypercalls() {
    if !kvm() {
        return;
    }
    let run = boot("events_spin", |_, shared, out| {
        if !wait_for(&out, "VALUE spin_console") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        shared.push_console_input(b"x");
        if !wait_for(&out, "VALUE spin_virq") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        shared.raise_virq(0, xen_abi::event_channel::VIRQ_DEBUG, None);
    });
    assert!(
        run.report.all_passed(),
        "guest reported failures or did not finish:\n{}",
        run.console
    );
    assert_eq!(run.outcome.reason, ShutdownReason::Poweroff);
}
