//! `Outcome::boot_to_user` (printed by `--stats` as "boot to first userspace"): `None` for a
//! guest that never leaves guest kernel mode (the demo), `Some` — and no longer than the run
//! — for the kit's `cpu` guest, which irets into guest user mode.

use std::time::Duration;

use kxen::launch::{Domain, LaunchSpec, Outcome};
use kxen_tests::harness::{run_with_watchdog, GUEST_TIMEOUT};
use xen_abi::sched::ShutdownReason;

fn boot(name: &str, kernel: &[u8]) -> Option<Outcome> {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm is not available");
        return None;
    }
    let spec = LaunchSpec {
        name: name.into(),
        kernel: kernel.to_vec(),
        initrd: Vec::new(),
        cmdline: format!("kxen-test {name}"),
        memory_mib: 64,
        vcpus: 1,
        privileged: false,
        ..Default::default()
    };
    let mut domain = Domain::create(&spec, Box::new(std::io::sink())).expect("create");
    let outcome = run_with_watchdog(&mut domain, GUEST_TIMEOUT, "test timeout").expect("run");
    Some(outcome)
}

#[test]
fn boot_to_user_is_none_for_a_guest_that_never_enters_user_mode() {
    let Some(outcome) = boot("demo", kxen::demo_image::DEMO_GUEST) else {
        return;
    };
    assert_eq!(
        outcome.reason,
        ShutdownReason::Poweroff,
        "{}",
        outcome.describe()
    );
    assert_eq!(outcome.boot_to_user, None);
}

#[test]
fn boot_to_user_is_recorded_when_the_cpu_guest_irets_to_user_mode() {
    let image = kxen_tests::guest("cpu").expect("cpu guest built");
    let Some(outcome) = boot("cpu", image) else {
        return;
    };
    assert_eq!(
        outcome.reason,
        ShutdownReason::Poweroff,
        "{}",
        outcome.describe()
    );
    let t = outcome
        .boot_to_user
        .expect("the cpu guest enters user mode, boot_to_user must be set");
    assert!(
        t > Duration::ZERO && t <= outcome.run_time,
        "{t:?} vs {:?}",
        outcome.run_time
    );
}
