//! Boot the `mmu` kit guest under kxen and check every page-table check it reports passed:
//! update_va_mapping / mmu_update / mmuext_op, a 10^6-request batch completed through
//! continuations, writable page tables, A/D and software bits, hostile requests refused
//! with Xen's errno (resources/guests/tests/mmu.rs).

use std::time::Duration;

use kxen::launch::{Domain, LaunchSpec};
use kxen_tests::harness::{run_with_watchdog, Capture};
use kxen_tests::Report;
use xen_abi::sched::ShutdownReason;

#[test]
fn mmu_guest_page_table_hypercalls_ptwr_and_hostile_inputs_behave_as_xen() {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm is not available");
        return;
    }
    let spec = LaunchSpec {
        name: "mmu".into(),
        kernel: kxen_tests::guest("mmu").expect("mmu guest built").to_vec(),
        initrd: Vec::new(),
        cmdline: "kxen-test mmu".into(),
        memory_mib: 64,
        vcpus: 1,
        privileged: false,
        ..Default::default()
    };
    let out = Capture::default();
    let mut domain = Domain::create(&spec, Box::new(out.clone())).expect("create");
    let outcome =
        run_with_watchdog(&mut domain, Duration::from_secs(120), "test timeout").expect("run");
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    eprintln!(
        "--- mmu console ---\n{console}--- {} ---",
        outcome.describe()
    );
    eprintln!("stats: {}", domain.stats_line());
    let report = Report::parse(&console);
    assert!(report.all_passed(), "failures:\n{console}");
    if let Some(v) = report.value("batch_1e6_tsc_per_request") {
        eprintln!("mmu_update 10^6 batch: {v} TSC ticks per request");
    }
    for name in [
        "uvm_remap_sees_new_frame",
        "batch_1e6_done",
        "ptwr_sees_new_frame",
        "dirty_by_hardware",
        "soft_bits_read_back",
        "map_l1_writable_ebusy",
        "xen_slot_260",
        "tables_writable_after_unpin",
        "decrease_reservation",
        "populate_physmap",
        "still_running",
    ] {
        assert!(
            report.passed.iter().any(|p| p == name),
            "{name} not reported passed:\n{console}"
        );
    }
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");
}
