//! The `kxen demo`, `kxen run` and `kxen create` commands, run as a user would.

use std::process::Command;

fn kxen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kxen"))
}

fn kvm() -> bool {
    if kxen::vcpu::kvm_available() {
        return true;
    }
    eprintln!("skipped: /dev/kvm is not available");
    false
}

#[test]
fn demo_prints_its_banner_and_checks_and_exits_zero() {
    if !kvm() {
        return;
    }
    let out = kxen().args(["demo", "--stats"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("kxen demo guest"), "{stdout}");
    assert!(stdout.contains("features submap 0: 0x000000e0"), "{stdout}");
    assert!(stdout.contains("demo: all checks passed"), "{stdout}");
    // --stats: exits by kind and hypercalls by number on stderr
    assert!(stderr.contains("exit.syscall"), "{stderr}");
    assert!(stderr.contains("hypercall.17"), "{stderr}");
}

#[test]
fn privileged_demo_sees_the_dom0_feature_bit() {
    if !kvm() {
        return;
    }
    let out = kxen().args(["demo", "--privileged"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("features submap 0: 0x000008e0"), "{stdout}");
}

#[test]
fn create_boots_the_demo_from_the_shipped_xl_cfg() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("demo.cfg");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/demo.cfg"),
        &cfg,
    )
    .unwrap();
    let save = kxen()
        .args(["demo", "--save-kernel"])
        .arg(dir.path().join("demo.elf"))
        .status()
        .unwrap();
    assert!(save.success());
    let out = kxen().arg("create").arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The config's `extra` reaches the guest's command line.
    assert!(
        stdout.contains("command line: \"console=hvc0\""),
        "{stdout}"
    );
}

#[test]
fn run_takes_kernel_cmdline_and_memory() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("demo.elf");
    std::fs::write(&k, kxen::demo_image::DEMO_GUEST).unwrap();
    let out = kxen()
        .args([
            "run",
            "--memory",
            "32",
            "--cmdline",
            "hello from the host",
            "--kernel",
        ])
        .arg(&k)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("nr_pages 8192"), "{stdout}");
    assert!(
        stdout.contains("command line: \"hello from the host\""),
        "{stdout}"
    );
}

#[test]
fn refused_and_missing_inputs_exit_2_with_one_line() {
    // No KVM needed: these fail before any VM exists.
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("demo.elf");
    std::fs::write(&k, kxen::demo_image::DEMO_GUEST).unwrap();
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["run".into(), "--kernel".into(), "/bin/ls".into()],
        vec![
            "run".into(),
            "--kernel".into(),
            dir.path().join("missing").into(),
        ],
        vec![
            "run".into(),
            "--memory".into(),
            "1".into(),
            "--kernel".into(),
            k.clone().into(),
        ],
        vec!["create".into(), dir.path().join("missing.cfg").into()],
    ];
    for args in cases {
        let out = kxen().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("kxen: "), "{stderr}");
    }
}

#[test]
fn xenstore_dump_prints_the_domains_store_to_stderr() {
    if !kvm() {
        return;
    }
    let out = kxen().args(["demo", "--xenstore-dump"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "/local/domain/1/name = \"kxen-demo\"",
        "/local/domain/1/domid = \"1\"",
        "/local/domain/1/store/port = \"1\"",
        "/local/domain/1/console/port = \"2\"",
    ] {
        assert!(stderr.contains(line), "missing {line}:\n{stderr}");
    }
    // Without the flag, nothing of the store is printed.
    let out = kxen().args(["demo"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("/local/domain"));
}
