//! Grant tables under KVM: the `grant` kit guest exercises `grant_table_op` from a lone domU
//! (Xen's statuses and errnos) and grants two pages to domain 0; after it powers off, this
//! test plays kxen's backend and reaches those pages through the domain's grant table.

use kxen::hypercall::grant::{GuestGrantMem, BACKEND_DOMID};
use kxen::launch::{Domain, LaunchSpec};
use kxen_devices::grant::{
    GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY,
    GTF_WRITING,
};
use kxen_tests::harness::{run_with_watchdog, Capture, GUEST_TIMEOUT};
use kxen_tests::Report;
use xen_abi::sched::ShutdownReason;

fn number(report: &Report, name: &str, console: &str) -> u64 {
    let v = report
        .value(name)
        .unwrap_or_else(|| panic!("no {name} value:\n{console}"));
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

#[test]
fn guest_grant_table_ops_match_xen_and_backends_reach_granted_pages() {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm is not available");
        return;
    }
    let spec = LaunchSpec {
        name: "grant".into(),
        kernel: kxen_tests::guest("grant").expect("grant guest").to_vec(),
        initrd: Vec::new(),
        cmdline: "kxen-test grant".into(),
        memory_mib: 64,
        vcpus: 1,
        privileged: false,
        ..Default::default()
    };
    let out = Capture::default();
    let mut domain = Domain::create(&spec, Box::new(out.clone())).unwrap();
    let outcome = run_with_watchdog(&mut domain, GUEST_TIMEOUT, "test timeout").unwrap();
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    eprintln!(
        "--- grant console ---\n{console}--- {} ---",
        outcome.describe()
    );
    let report = Report::parse(&console);
    assert!(report.all_passed(), "guest checks failed:\n{console}");
    assert_eq!(outcome.reason, ShutdownReason::Poweroff, "{console}");

    // The backend's side, on the guest's memory after it stopped.
    let shared = domain.shared().clone();
    let gt = &shared.grant_table;
    let mem = GuestGrantMem(domain.ram());
    let rw = number(&report, "grant_ref_rw", &console) as u32;
    let ro = number(&report, "grant_ref_ro", &console) as u32;
    let f_rw = number(&report, "granted_frame_rw", &console);
    assert_eq!(gt.nr_frames(), 4);
    assert_eq!(
        gt.read_entry(&mem, rw).unwrap(),
        (GTF_PERMIT_ACCESS, BACKEND_DOMID, f_rw as u32)
    );

    let m = gt.access(&mem, rw, BACKEND_DOMID, true).unwrap();
    assert_eq!(m.frame, f_rw);
    assert_eq!(
        gt.read_entry(&mem, rw).unwrap().0,
        GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
    );
    let mut b = [0u8; 16];
    m.read(&mem, 0, &mut b).unwrap();
    assert_eq!(&b, b"kxen-grant-page!");
    m.write(&mem, 16, b"backend-reply").unwrap();
    gt.release(&mem, &m).unwrap();
    assert_eq!(gt.read_entry(&mem, rw).unwrap().0, GTF_PERMIT_ACCESS);
    let mut reply = [0u8; 13];
    gt.copy_from(&mem, rw, BACKEND_DOMID, 16, &mut reply)
        .unwrap();
    assert_eq!(&reply, b"backend-reply");

    // The read-only grant: reads work, writes are refused as Xen refuses them.
    let mut b = [0u8; 16];
    gt.copy_from(&mem, ro, BACKEND_DOMID, 0, &mut b).unwrap();
    assert_eq!(&b, b"kxen-grant-page!");
    let e = gt.access(&mem, ro, BACKEND_DOMID, true).unwrap_err();
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
    assert_eq!(
        gt.read_entry(&mem, ro).unwrap().0,
        GTF_PERMIT_ACCESS | GTF_READONLY
    );
    // Hostile: a ref beyond the 4 frames, an entry granted to nobody, another domain.
    assert_eq!(
        gt.access(&mem, 4 * 512, BACKEND_DOMID, false)
            .unwrap_err()
            .status(),
        GNTST_BAD_GNTREF
    );
    assert_eq!(
        gt.access(&mem, 100, BACKEND_DOMID, false)
            .unwrap_err()
            .status(),
        GNTST_GENERAL_ERROR
    );
    assert_eq!(
        gt.access(&mem, rw, 5, false).unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
}
