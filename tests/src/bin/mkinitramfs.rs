//! `cargo run -p kxen-tests --bin mkinitramfs [OUT]`: write the busybox initramfs used to boot
//! the Debian kernel (default OUT: $KXEN_ASSETS/initrd.img, KXEN_ASSETS defaulting to
//! target/assets; run scripts/fetch-assets first).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let assets = std::env::var_os("KXEN_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/assets")));
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| assets.join("initrd.img"));
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
    let image =
        kxen_tests::initramfs::busybox_initramfs(&busybox, kxen_tests::initramfs::SHELL_INIT);
    if let Err(e) = std::fs::write(&out, image) {
        eprintln!("mkinitramfs: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    println!("{}", out.display());
    ExitCode::SUCCESS
}
