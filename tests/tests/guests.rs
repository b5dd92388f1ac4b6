//! Boot the project's PV test guests under kxen (KVM) and judge what they print.
//!
//! Each guest reports `KXEN-TEST:` lines on its console (resources/guests/README.md); these
//! tests read them back. Without /dev/kvm every test here skips with one line.

use kxen::launch::Domain;
use kxen_tests::harness::{boot, boot_with_input, guest_spec as spec, kvm, Run};
use xen_abi::sched::ShutdownReason;

#[test]
fn demo_guest_runs_its_self_check_and_powers_off() {
    if !kvm() {
        return;
    }
    let run = boot("demo", false);
    assert!(run.console.contains("kxen demo guest"), "{}", run.console);
    assert!(
        run.console.contains("demo: all checks passed"),
        "{}",
        run.console
    );
    assert_eq!(run.outcome.reason, ShutdownReason::Poweroff);
}

#[test]
fn start_of_day_state_matches_xens_contract() {
    if !kvm() {
        return;
    }
    boot("startinfo", false).assert_all_passed();
}

#[test]
fn hostile_hypercalls_get_xens_errno_and_the_guest_keeps_running() {
    if !kvm() {
        return;
    }
    boot("hostile", false).assert_all_passed();
}

#[test]
fn exceptions_are_bounced_with_xens_frame() {
    if !kvm() {
        return;
    }
    boot("traps", false).assert_all_passed();
}

fn submap(run: &Run) -> u32 {
    let v = run
        .report
        .value("submap0")
        .unwrap_or_else(|| panic!("no submap0 value:\n{}", run.console));
    u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn features_submap_follows_launch_mode_and_kernel_declaration() {
    if !kvm() {
        return;
    }
    // (guest, privileged, bit 11 expected, bit 12 expected)
    let cases = [
        ("features_dom0", true, true, false),
        ("features_dom0", false, false, false),
        ("features_none", true, true, false),
        ("features_none", false, false, false),
        ("features_unpriv12", false, false, true),
        ("features_domu_only", false, false, false),
    ];
    for (guest, privileged, b11, b12) in cases {
        let run = boot(guest, privileged);
        run.assert_all_passed();
        let m = submap(&run);
        assert_eq!(
            m & (1 << 11) != 0,
            b11,
            "{guest} privileged={privileged}: {m:#x}"
        );
        assert_eq!(
            m & (1 << 12) != 0,
            b12,
            "{guest} privileged={privileged}: {m:#x}"
        );
    }
}

#[test]
fn refused_launches_fail_before_any_vcpu_runs() {
    // Refusals come from Domain::create before KVM is opened, so no /dev/kvm is needed.
    let cases = [
        ("features_domu_only", true, "does not support privileged"),
        ("features_unpriv12", true, "does not support privileged"),
        ("features_requires_dom0", false, "requires privileged"),
    ];
    for (guest, privileged, want) in cases {
        let err = Domain::create(&spec(guest, privileged), Box::new(std::io::sink())).unwrap_err();
        assert!(err.is_refusal(), "{guest}: {err}");
        assert!(err.to_string().contains(want), "{guest}: {err}");
    }
    let mut s = spec("startinfo", false);
    s.memory_mib = 1;
    let err = Domain::create(&s, Box::new(std::io::sink())).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let mut s = spec("startinfo", false);
    s.kernel = b"not a kernel".to_vec();
    let err = Domain::create(&s, Box::new(std::io::sink())).unwrap_err();
    assert!(err.is_refusal(), "{err}");
}

#[test]
fn shutdown_reasons_map_to_exit_statuses() {
    if !kvm() {
        return;
    }
    for (guest, reason, status) in [
        ("shutdown_poweroff", ShutdownReason::Poweroff, 0),
        ("shutdown_reboot", ShutdownReason::Reboot, 4),
        ("shutdown_crash", ShutdownReason::Crash, 3),
        ("shutdown_suspend", ShutdownReason::Suspend, 5),
    ] {
        let run = boot(guest, false);
        assert_eq!(run.outcome.reason, reason, "{guest}:\n{}", run.console);
        assert_eq!(run.outcome.exit_status(), status, "{guest}");
    }
}

#[test]
fn keyboard_input_reaches_the_guest_through_ring_and_console_io() {
    if !kvm() {
        return;
    }
    // domU: console ring; privileged: CONSOLEIO_read.
    for privileged in [false, true] {
        let run = boot_with_input(&spec("echo", privileged), b"hello kxen\n").unwrap();
        run.assert_all_passed();
        assert_eq!(
            run.report.value("echo"),
            Some("hello kxen"),
            "privileged={privileged}"
        );
    }
}

#[test]
fn privileged_operations_are_emulated_as_xen_does() {
    if !kvm() {
        return;
    }
    boot("privop", false).assert_all_passed();
}

/// The L1 entry mapping `va` in the domain's initial page tables (as installed by kxen).
fn initial_l1_entry(domain: &Domain, va: u64) -> u64 {
    use vm_memory::{Bytes, GuestAddress};
    let mem = domain.ram().mem();
    let mut table = domain.boot_state().cr3 & !0xfff;
    let mut entry = 0;
    for level in (0..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 511;
        entry = mem.read_obj::<u64>(GuestAddress(table + idx * 8)).unwrap();
        assert_ne!(entry & 1, 0, "level {level} not present");
        table = entry & 0x000f_ffff_ffff_f000;
    }
    entry
}

#[test]
fn pte_abi_selects_whether_kernel_mappings_carry_xens_bit_52() {
    if !kvm() {
        return;
    }
    for (abi, bit52) in [
        (xen_abi::pte::PteAbi::Kxen, false),
        (xen_abi::pte::PteAbi::Xen, true),
    ] {
        let mut s = spec("startinfo", false);
        s.pte_abi = abi;
        let domain = Domain::create(&s, Box::new(std::io::sink())).unwrap();
        let va = domain.boot_state().rsi; // start_info: a kernel mapping
        let e = initial_l1_entry(&domain, va);
        assert_ne!(
            e & 4,
            0,
            "kernel mappings get _PAGE_USER in both ABIs: {e:#x}"
        );
        assert_eq!(e & (1 << 52) != 0, bit52, "{abi:?}: {e:#x}");
    }
    // And a guest runs the same under both.
    let mut s = spec("startinfo", false);
    s.pte_abi = xen_abi::pte::PteAbi::Xen;
    boot_with_input(&s, b"").unwrap().assert_all_passed();
}
