//! PV time under KVM: the `timer` kit guest (pvclock, single-shot and set_timer_op timers
//! with VIRQ_TIMER upcalls, -ETIME, cancelling, SCHEDOP_poll's absolute timeout) and the
//! wallclock kxen writes into shared_info. Without /dev/kvm every test here skips with one line.

use std::time::{SystemTime, UNIX_EPOCH};

use kxen::launch::{Domain, LaunchSpec};
use kxen_tests::harness::{kvm, run_with_watchdog, Capture, GUEST_TIMEOUT};
use kxen_tests::Report;
use vm_memory::{Bytes, GuestAddress};
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

#[test]
fn timer_guest_pvclock_timers_virq_and_poll_timeout_all_pass() {
    if !kvm() {
        return;
    }
    let out = Capture::default();
    let mut domain = Domain::create(&spec("timer"), Box::new(out.clone())).expect("create");
    let outcome = run_with_watchdog(&mut domain, GUEST_TIMEOUT, "test timeout").expect("run");
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    eprintln!(
        "--- timer console ---\n{console}--- {} ---",
        outcome.describe()
    );
    let report = Report::parse(&console);
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");
    assert!(report.all_passed(), "{console}");
    for name in [
        "pvclock_monotonic",
        "singleshot_upcall_arrived",
        "singleshot_not_early",
        "singleshot_past_future_flag",
        "poll_absolute_timeout",
        "cancelled_timer_silent",
        "runstate_running_after_block",
        "runstate_blocked_time_accounted",
    ] {
        assert!(
            console.contains(&format!("KXEN-TEST: PASS {name}\n")),
            "{name} missing:\n{console}"
        );
    }
    assert!(report.value("singleshot_lateness_us").is_some());
}

#[test]
fn wallclock_in_shared_info_is_the_hosts_realtime_at_creation() {
    if !kvm() {
        return;
    }
    let domain = Domain::create(&spec("timer"), Box::new(Capture::default())).expect("create");
    let gpa = domain.boot_state().shared_info_mfn * 4096;
    let mut wc = [0u8; 12];
    domain
        .ram()
        .mem()
        .read_slice(&mut wc, GuestAddress(gpa + 3072))
        .expect("read shared_info");
    let version = u32::from_le_bytes(wc[0..4].try_into().unwrap());
    let sec = u32::from_le_bytes(wc[4..8].try_into().unwrap());
    let nsec = u32::from_le_bytes(wc[8..12].try_into().unwrap());
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(version != 0 && version % 2 == 0, "wc_version {version}");
    assert!(nsec < 1_000_000_000);
    assert!(
        (host as u32).abs_diff(sec) <= 5,
        "wc_sec {sec} vs host {host}"
    );
}
