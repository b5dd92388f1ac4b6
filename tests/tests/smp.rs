//! SMP under KVM: the `smp_2` / `smp_4` kit guests bring their secondary vCPUs up with
//! VCPUOP_initialise + VCPUOP_up, exchange IPIs over event channels, take vCPUs down (vCPU
//! 1's runstate area then says offline, and running again after VCPUOP_up), and
//! power off while one vCPU still spins (every vCPU thread must stop and be joined).
//! Without /dev/kvm every test here skips with one line.

use std::time::Duration;

use kxen::launch::{Domain, LaunchSpec, Outcome};
use kxen_tests::harness::{kvm, run_with_watchdog, Capture};
use kxen_tests::Report;
use xen_abi::sched::ShutdownReason;

/// Remote TLB flushes vCPU 1 acknowledged, and flush waits that timed out.
#[derive(Debug, Default)]
struct FlushCounts {
    acked_by_vcpu1: u64,
    timeouts: u64,
}

/// Watchdog for the short SMP guests.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Watchdog for evstress (10^6 events: ~30 s with a debug-build VMM on an idle 2-core host).
const STRESS_TIMEOUT: Duration = Duration::from_secs(180);

fn boot(name: &str, vcpus: u32, timeout: Duration) -> (Outcome, String) {
    let (o, c, _) = boot_counting(name, vcpus, timeout);
    (o, c)
}

fn boot_counting(name: &str, vcpus: u32, timeout: Duration) -> (Outcome, String, FlushCounts) {
    let spec = LaunchSpec {
        name: name.into(),
        kernel: kxen_tests::guest(name)
            .unwrap_or_else(|| panic!("no test guest {name}"))
            .to_vec(),
        initrd: Vec::new(),
        cmdline: format!("kxen-test {name}"),
        memory_mib: 64,
        vcpus,
        privileged: false,
        ..Default::default()
    };
    let out = Capture::default();
    let mut domain = Domain::create(&spec, Box::new(out.clone())).expect("create");
    let outcome = run_with_watchdog(&mut domain, timeout, "test timeout").expect("run");
    let counts = domain
        .shared()
        .smp()
        .map(|s| FlushCounts {
            acked_by_vcpu1: s.flush.acked(1),
            timeouts: s.flush.timeouts(),
        })
        .unwrap_or_default();
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    eprintln!(
        "--- {name} console ---\n{console}--- {} ---",
        outcome.describe()
    );
    (outcome, console, counts)
}

fn assert_all_passed(name: &str, vcpus: u32, want_pongs: &str) {
    let (outcome, console, counts) = boot_counting(name, vcpus, TIMEOUT);
    let report = Report::parse(&console);
    // vCPU 1 spins in guest code through both remote flushes (UVMF_ALL, TLB_FLUSH_MULTI):
    // its run loop must have been kicked and acknowledged each, none timed out.
    assert!(counts.acked_by_vcpu1 >= 2, "{counts:?}\n{console}");
    assert_eq!(counts.timeouts, 0, "{counts:?}");
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");
    assert!(report.all_passed(), "{console}");
    for check in [
        "all_arrived",
        "all_pongs",
        "ipi_upcall_on_vcpu0",
        "went_down",
        "uvm_all_flushes_other_vcpu",
        "tlb_flush_multi_flushes_other_vcpu",
        "runstate_vcpu1_offline_before_up",
        "runstate_vcpu1_offline",
        "runstate_vcpu1_running_time_accounted",
        "runstate_vcpu1_running_again",
        "runstate_vcpu1_offline_time_accounted",
    ] {
        assert!(
            console.contains(&format!("KXEN-TEST: PASS {check}\n")),
            "{check} missing:\n{console}"
        );
    }
    assert_eq!(report.value("pongs"), Some(want_pongs), "{console}");
}

#[test]
fn two_vcpus_come_up_exchange_ipis_and_go_down() {
    if !kvm() {
        return;
    }
    assert_all_passed("smp_2", 2, "1");
}

#[test]
fn four_vcpus_come_up_and_poweroff_stops_a_spinning_vcpu() {
    if !kvm() {
        return;
    }
    assert_all_passed("smp_4", 4, "3");
}

#[test]
fn secondary_vcpus_never_brought_up_do_not_keep_the_domain_alive() {
    if !kvm() {
        return;
    }
    // The timer guest knows nothing of vCPU 1: it must still power off promptly.
    let (outcome, console) = boot("timer", 2, TIMEOUT);
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");
    assert!(outcome.run_time < Duration::from_secs(30));
}

#[test]
fn four_vcpus_exchange_a_million_ipi_events_without_loss_or_deadlock() {
    if !kvm() {
        return;
    }
    let (outcome, console) = boot("evstress", 4, STRESS_TIMEOUT);
    let report = Report::parse(&console);
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");
    assert!(report.all_passed(), "{console}");
    for check in [
        "evstress_ports_bound",
        "evstress_no_deadlock",
        "evstress_no_spurious_delivery",
        "evstress_no_event_lost",
        "pvclock_nonzero",
        "pvclock_advances",
        "pvclock_monotonic_across_vcpus",
    ] {
        assert!(
            console.contains(&format!("KXEN-TEST: PASS {check}\n")),
            "{check} missing:\n{console}"
        );
    }
    // 12 ordered pairs of vCPUs, 8 lanes each, PER_LANE events per lane (the guest's
    // constants): at least 10^6 events, every one sent by its own EVTCHNOP_send.
    let total: u64 = report
        .value("evstress_events")
        .and_then(|v| v.parse().ok())
        .expect("evstress_events value");
    assert_eq!(total, 12 * 8 * 10_417, "{console}");
    assert!(total >= 1_000_000);
    // No pvclock read was earlier than a value another vCPU had already published.
    assert_eq!(
        report.value("pvclock_backwards_reads"),
        Some("0"),
        "{console}"
    );
}
