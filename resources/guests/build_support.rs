// Shared by vmm/build.rs and tests/build.rs through `include!`: builds kxen kit guests by
// invoking rustc directly (no nested cargo), one process per guest, in parallel.
//
// Guests are always x86_64 Xen PV kernels, whatever the crate's own target: they are built
// for x86_64-unknown-linux-gnu with a freestanding link (no libc, our linker script) and
// with nothing taken from the environment that could change the bytes (RUSTFLAGS, paths).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One guest binary: its name (output `<name>.elf`, also the crate name), its source file
/// relative to resources/guests/, and the value of `--cfg kxen_guest="..."` it is built with.
pub struct GuestSpec {
    pub name: &'static str,
    pub source: &'static str,
}

/// resources/guests/ of this workspace, from the including crate's manifest directory.
pub fn guests_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    Path::new(&manifest)
        .join("..")
        .join("resources")
        .join("guests")
}

/// Tell cargo to rerun when anything a guest is built from changes.
fn rerun_if_changed(dir: &Path, specs: &[GuestSpec]) {
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("build_support.rs").display()
    );
    let kit = dir.join("kit");
    println!("cargo:rerun-if-changed={}", kit.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&kit)
        .expect("resources/guests/kit is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for s in specs {
        println!("cargo:rerun-if-changed={}", dir.join(s.source).display());
    }
}

/// Build every guest in `specs` into `out_dir/<name>.elf`; returns the paths in order.
/// Panics (failing the build) with rustc's output if a guest does not build.
pub fn build_guests(out_dir: &Path, specs: &[GuestSpec]) -> Vec<PathBuf> {
    let dir = guests_dir()
        .canonicalize()
        .expect("resources/guests exists");
    rerun_if_changed(&dir, specs);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let script = dir.join("kit").join("guest.ld");

    let mut children = Vec::new();
    for s in specs {
        let out = out_dir.join(format!("{}.elf", s.name));
        let mut cmd = Command::new(&rustc);
        cmd.env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .arg("--edition=2021")
            .arg("--target=x86_64-unknown-linux-gnu")
            .arg("--crate-type=bin")
            .arg(format!("--crate-name={}", s.name))
            .arg(format!("--cfg=kxen_guest=\"{}\"", s.name))
            .args(["-C", "panic=abort"])
            .args(["-C", "opt-level=2"])
            .args(["-C", "codegen-units=1"])
            .args(["-C", "code-model=kernel"])
            .args(["-C", "relocation-model=static"])
            .args(["-C", "target-cpu=x86-64"])
            // Xen writes bounce frames right below the interrupted rsp: no red zone.
            .args(["-C", "no-redzone=yes"])
            .args(["-C", "debuginfo=0"])
            .args(["-C", "strip=debuginfo"])
            .args(["-C", "link-arg=-nostdlib"])
            .args(["-C", "link-arg=-static"])
            .args(["-C", "link-arg=-nostartfiles"])
            .arg("-C")
            .arg(format!("link-arg=-Wl,-T,{}", script.display()))
            .args(["-C", "link-arg=-Wl,--build-id=none"])
            .args(["-C", "link-arg=-Wl,-z,norelro"])
            .args(["-C", "link-arg=-Wl,-z,noexecstack"])
            // Panic locations name sources relative to resources/guests, whatever the
            // checkout path, so the images are reproducible.
            .arg(format!("--remap-path-prefix={}=guests", dir.display()))
            .arg("-o")
            .arg(&out)
            .arg(dir.join(s.source))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?} for guest {}: {e}", rustc, s.name));
        children.push((s, out, child));
    }

    let mut outputs = Vec::new();
    let mut failures = String::new();
    for (s, out, child) in children {
        let res = child.wait_with_output().expect("waiting for rustc");
        let stderr = String::from_utf8_lossy(&res.stderr);
        if !res.status.success() {
            failures.push_str(&format!("guest {} ({}):\n{stderr}\n", s.name, s.source));
        } else if stderr.contains("warning") {
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                println!("cargo:warning=guest {}: {line}", s.name);
            }
        }
        outputs.push(out);
    }
    if !failures.is_empty() {
        panic!("building kxen kit guests failed:\n{failures}");
    }
    outputs
}
