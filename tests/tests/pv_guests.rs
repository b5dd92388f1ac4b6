//! End-to-end: boot the kit test guests under kxen (KVM) and judge their KXEN-TEST reports.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kxen::launch::{Domain, LaunchSpec};
use kxen_tests::{guest, Report};
use xen_abi::sched::ShutdownReason;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Boot `name`; `None` (test skipped) without /dev/kvm.
fn boot(name: &str, privileged: bool) -> Option<(Report, ShutdownReason, String)> {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipping: /dev/kvm not available");
        return None;
    }
    let out = Capture::default();
    let spec = LaunchSpec {
        name: name.into(),
        kernel: guest(name).expect("guest built").to_vec(),
        memory_mib: 64,
        vcpus: 1,
        privileged,
        ..Default::default()
    };
    let mut d = Domain::create(&spec, Box::new(out.clone())).expect("create");
    let outcome = d.run().expect("run");
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    Some((Report::parse(&console), outcome.reason, console))
}

fn assert_clean(name: &str, privileged: bool) -> Option<Report> {
    let (r, reason, console) = boot(name, privileged)?;
    assert!(r.all_passed(), "{name}: {:?}\n{console}", r.failed);
    assert!(r.panic.is_none(), "{name}: {console}");
    assert_eq!(reason, ShutdownReason::Poweroff, "{name}: {console}");
    assert!(
        r.done.is_some_and(|(p, f)| p > 0 && f == 0),
        "{name}: {console}"
    );
    Some(r)
}

#[test]
fn traps_guest_gets_xen_bounce_frames_and_irets_back() {
    if let Some(r) = assert_clean("traps", false) {
        assert!(r.passed.iter().any(|p| p == "ud_cs_saved_upcall_mask"));
        assert_eq!(r.value("pf_error_code"), Some("0x0"));
    }
}

#[test]
fn hostile_guest_gets_xen_errnos_and_keeps_running() {
    if let Some(r) = assert_clean("hostile", false) {
        assert!(r
            .passed
            .iter()
            .any(|p| p == "multicall_huge_count_runs_into_unmapped"));
        assert!(r.passed.iter().any(|p| p == "still_running"));
    }
}

#[test]
fn startinfo_guest_sees_xen_start_of_day_and_the_m2p() {
    if let Some(r) = assert_clean("startinfo", false) {
        assert!(r.passed.iter().any(|p| p == "m2p_inverts_p2m"));
    }
}

#[test]
fn features_guests_run_in_both_modes() {
    assert_clean("features_none", false);
    assert_clean("features_dom0", true);
}

#[test]
fn shutdown_guests_end_with_their_reason() {
    for (name, want) in [
        ("shutdown_poweroff", ShutdownReason::Poweroff),
        ("shutdown_reboot", ShutdownReason::Reboot),
        ("shutdown_crash", ShutdownReason::Crash),
        ("shutdown_suspend", ShutdownReason::Suspend),
    ] {
        let Some((r, reason, console)) = boot(name, false) else {
            return;
        };
        assert_eq!(reason, want, "{name}: {console}");
        assert!(r.failed.is_empty(), "{name}: {console}");
    }
}
