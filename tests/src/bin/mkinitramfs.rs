//! `cargo run -p kxen-tests --bin mkinitramfs [--init-script FILE | --poweroff] [OUT]`: write
//! the busybox initramfs used to boot the Debian kernel (default OUT: $KXEN_ASSETS/initrd.img,
//! KXEN_ASSETS defaulting to target/assets; run scripts/fetch-assets first).
//!
//! Its `/init` is the interactive shell of the tests (`SHELL_INIT`) unless `--init-script FILE`
//! gives another (run by `/bin/sh`, busybox applets reachable as `/bin/busybox APPLET`), or
//! `--poweroff` picks the boot benchmark's (print a marker, `poweroff -f`; scripts/bench-boot).

use std::path::PathBuf;
use std::process::ExitCode;

use kxen_tests::initramfs::{busybox_initramfs, POWEROFF_INIT, SHELL_INIT};

fn usage(msg: &str) -> ExitCode {
    eprintln!("mkinitramfs: {msg}");
    eprintln!("usage: mkinitramfs [--init-script FILE | --poweroff] [OUT]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let assets = std::env::var_os("KXEN_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/assets")));
    let mut init = SHELL_INIT.to_string();
    let mut out = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--init-script") => {
                let Some(f) = args.next() else {
                    return usage("--init-script needs a FILE");
                };
                match std::fs::read_to_string(&f) {
                    Ok(s) => init = s,
                    Err(e) => return usage(&format!("{}: {e}", PathBuf::from(f).display())),
                }
            }
            Some("--poweroff") => init = POWEROFF_INIT.to_string(),
            Some(s) if s.starts_with("--") => return usage(&format!("unknown option {s}")),
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => return usage("more than one OUT"),
        }
    }
    let out = out.unwrap_or_else(|| assets.join("initrd.img"));
    let busybox = match std::fs::read(assets.join("busybox")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "mkinitramfs: {}/busybox: {e} (run scripts/fetch-assets)",
                assets.display()
            );
            return ExitCode::from(2);
        }
    };
    // A script's own #! line is dropped: busybox_initramfs adds `#!/bin/sh`.
    let body = init
        .strip_prefix("#!")
        .and_then(|s| s.split_once('\n').map(|(_, rest)| rest))
        .unwrap_or(&init);
    let image = busybox_initramfs(&busybox, body);
    if let Err(e) = std::fs::write(&out, image) {
        eprintln!("mkinitramfs: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    println!("{}", out.display());
    ExitCode::SUCCESS
}
