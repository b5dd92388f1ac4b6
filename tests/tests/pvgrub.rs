//! PV-GRUB (built by scripts/fetch-assets with grub-mkimage -O x86_64-xen from Debian's
//! packages) boots under kxen to its prompt and runs commands typed at it.

use std::path::PathBuf;
use std::time::Duration;

use kxen::launch::{Domain, LaunchSpec};
use kxen_tests::harness::{run_with_watchdog, Capture};
use xen_abi::sched::ShutdownReason;

fn pvgrub() -> Option<Vec<u8>> {
    let dir = std::env::var_os("KXEN_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/assets")));
    match std::fs::read(dir.join("pvgrub-x86_64.elf")) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PV-GRUB asset missing in CI: {e}"
            );
            eprintln!(
                "skipped: PV-GRUB not in {} (run scripts/fetch-assets)",
                dir.display()
            );
            None
        }
    }
}

#[test]
fn pvgrub_reaches_its_prompt_answers_echo_and_halts() {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm is not available");
        return;
    }
    let Some(kernel) = pvgrub() else { return };
    let spec = LaunchSpec {
        name: "pvgrub".into(),
        kernel,
        initrd: Vec::new(),
        cmdline: String::new(),
        memory_mib: 128,
        vcpus: 1,
        privileged: false,
        ..Default::default()
    };
    let out = Capture::default();
    let mut domain = Domain::create(&spec, Box::new(out.clone())).unwrap();
    // Type once the prompt is up, as a person would.
    let shared = domain.shared().clone();
    let stop = domain.stop_handle();
    let seen = out.clone();
    let typist = std::thread::spawn(move || {
        let wait_for = |needle: &str, from: usize| -> Option<usize> {
            for _ in 0..600 {
                let text = String::from_utf8_lossy(&seen.0.lock().unwrap()).into_owned();
                if let Some(i) = text[from.min(text.len())..].find(needle) {
                    return Some(from + i + needle.len());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        };
        let Some(at) = wait_for("grub> ", 0) else {
            stop.stop("no GRUB prompt within 30 s");
            return;
        };
        shared.push_console_input(b"echo hello from kxen\r");
        let Some(at) = wait_for("grub> ", at) else {
            stop.stop("no second GRUB prompt within 30 s");
            return;
        };
        let _ = at;
        shared.push_console_input(b"halt\r");
    });
    let outcome =
        run_with_watchdog(&mut domain, Duration::from_secs(90), "PV-GRUB test timeout").unwrap();
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    let _ = typist.join();
    eprintln!(
        "--- pvgrub console ---\n{console}\n--- {} ---",
        outcome.describe()
    );
    assert!(console.contains("GNU GRUB"), "no GRUB banner");
    assert!(
        console.contains("\nhello from kxen") || console.contains("\rhello from kxen"),
        "echo not answered"
    );
    assert_eq!(
        outcome.reason,
        ShutdownReason::Poweroff,
        "{}",
        outcome.describe()
    );
}
