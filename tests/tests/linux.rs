//! The Debian cloud kernel (linux-image-cloud-amd64, unmodified, as shipped) boots under kxen as
//! a Xen PV domU with a busybox initramfs built here, a person types at its shell, and the
//! guest's own poweroff ends kxen with status 0; a guest panic ends it with the crash status.

use std::path::PathBuf;
use std::time::Duration;

use kxen::launch::{Domain, LaunchSpec, Outcome};
use kxen_tests::harness::{run_with_watchdog, Capture};
use xen_abi::sched::ShutdownReason;

fn assets() -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = std::env::var_os("KXEN_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/assets")));
    let read = |n: &str| std::fs::read(dir.join(n));
    match (read("vmlinuz-cloud"), read("busybox")) {
        (Ok(k), Ok(b)) => Some((k, b)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "Debian assets missing in CI"
            );
            eprintln!(
                "skipped: Debian kernel/busybox not in {} (run scripts/fetch-assets)",
                dir.display()
            );
            None
        }
    }
}

/// Boot the Debian kernel with `vcpus`, wait for the shell, type `script` line by line (each
/// after the previous prompt), and return the console and the outcome.
fn boot_and_type(vcpus: u32, script: &[&str]) -> Option<(String, Outcome)> {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm is not available");
        return None;
    }
    let (kernel, busybox) = assets()?;
    let initrd =
        kxen_tests::initramfs::busybox_initramfs(&busybox, kxen_tests::initramfs::SHELL_INIT);
    let spec = LaunchSpec {
        name: format!("debian-{vcpus}"),
        kernel,
        initrd,
        cmdline: "console=hvc0 quiet".into(),
        memory_mib: 512,
        vcpus,
        privileged: false,
        ..Default::default()
    };
    let out = Capture::default();
    let mut domain = Domain::create(&spec, Box::new(out.clone())).expect("create");
    let shared = domain.shared().clone();
    let stop = domain.stop_handle();
    let seen = out.clone();
    let lines: Vec<String> = script.iter().map(|s| format!("{s}\n")).collect();
    let typist = std::thread::spawn(move || {
        let wait_prompt = |count: usize| -> bool {
            for _ in 0..(240 * 20) {
                if seen.text().matches("/ # ").count() >= count {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        };
        for (i, line) in lines.iter().enumerate() {
            if !wait_prompt(i + 1) {
                stop.stop("no shell prompt within 240 s");
                return;
            }
            shared.push_console_input(line.as_bytes());
        }
    });
    let outcome = run_with_watchdog(
        &mut domain,
        Duration::from_secs(300),
        "Debian boot test timeout",
    )
    .expect("run");
    let _ = typist.join();
    let console = out.text();
    eprintln!("--- console ---\n{console}\n--- {} ---", outcome.describe());
    Some((console, outcome))
}

fn check_shell_session(vcpus: u32) {
    let Some((console, outcome)) = boot_and_type(
        vcpus,
        &[
            "uname -r",
            "cat /proc/cpuinfo | grep -c processor",
            "cat /sys/hypervisor/type 2>/dev/null",
            "dmesg | grep -i xen | head",
            "echo kernel-complaints: $(dmesg | grep -c -e 'unchecked MSR' -e 'WARNING:' -e 'BUG:')",
            "poweroff -f",
        ],
    ) else {
        return;
    };
    assert!(
        console.contains("KXEN-INITRAMFS: userspace reached"),
        "no userspace"
    );
    assert!(
        console.contains("\n6.1.0-") && console.contains("-cloud-amd64"),
        "uname -r"
    );
    assert!(
        console.contains(&format!("processor\r\n{vcpus}\r\n"))
            || console.contains(&format!("processor\n{vcpus}\n")),
        "vCPU count {vcpus} not reported"
    );
    assert!(
        console.contains("\nxen\r\n") || console.contains("\nxen\n"),
        "/sys/hypervisor/type"
    );
    assert!(
        console.contains("Booting kernel on Xen") || console.contains("Xen version"),
        "dmesg | grep xen"
    );
    // No MSR the kernel touches #GPs where Xen emulates it, no kernel WARN/BUG on the way.
    assert!(
        console.contains("kernel-complaints: 0"),
        "the kernel logged unchecked MSR accesses, WARNINGs or BUGs"
    );
    assert_eq!(
        outcome.reason,
        ShutdownReason::Poweroff,
        "{}",
        outcome.describe()
    );
    assert_eq!(outcome.exit_status(), 0);
}

#[test]
fn debian_kernel_boots_to_a_shell_and_powers_off_on_one_vcpu() {
    check_shell_session(1);
}

#[test]
fn debian_kernel_boots_to_a_shell_and_powers_off_on_two_vcpus() {
    check_shell_session(2);
}

#[test]
fn debian_kernel_panic_ends_kxen_with_the_crash_status() {
    let Some((console, outcome)) = boot_and_type(
        1,
        &[
            "echo 1 > /proc/sys/kernel/sysrq",
            "echo c > /proc/sysrq-trigger",
        ],
    ) else {
        return;
    };
    assert!(console.contains("sysrq"), "no sysrq crash on the console");
    assert_eq!(
        outcome.reason,
        ShutdownReason::Crash,
        "{}",
        outcome.describe()
    );
    assert_eq!(outcome.exit_status(), 3);
}
