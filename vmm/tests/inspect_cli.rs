//! `kxen inspect` end to end: the binary's output, JSON interface and exit status, on
//! synthetic kernels, non-kernels and (when present) the real Debian kernel and PV-GRUB.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn kxen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kxen"))
        .args(args)
        .output()
        .expect("run kxen")
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2, nothing on stdout, exactly one `kxen: ...` line on stderr containing `needle`.
fn assert_one_line_refusal(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("kxen: "), "{err}");
    assert!(lines[0].contains(needle), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).expect("stdout is JSON")
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn json_report_of_a_tiny_kernel_has_the_stable_fields_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_temp(
        &dir,
        "k.xz",
        &bzimage(&size_append(xz_bcj(&tiny_kernel()), 0), 1),
    );
    let o = kxen(&["inspect", &k, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json_of(&o);
    let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&j),
        set(&["image", "guest", "features", "notes", "launch", "layout"])
    );
    assert_eq!(
        keys(&j["image"]),
        set(&["format", "codec", "file_size", "elf_size", "note_source"])
    );
    assert_eq!(
        keys(&j["guest"]),
        set(&[
            "guest_os",
            "guest_version",
            "loader",
            "xen_version",
            "entry",
            "virt_base",
            "paddr_offset",
            "virt_kstart",
            "virt_kend",
            "hypercall_page",
            "hv_start_low",
            "init_p2m",
            "pae_mode",
            "mod_start_pfn",
            "suspend_cancel",
            "bsd_symtab"
        ])
    );
    assert_eq!(
        keys(&j["features"]),
        set(&[
            "features_note",
            "supported",
            "required",
            "unknown_required",
            "supported_features"
        ])
    );
    assert_eq!(
        keys(&j["notes"][0]),
        set(&[
            "owner",
            "type",
            "type_name",
            "desc_size",
            "desc_hex",
            "value"
        ])
    );
    assert_eq!(
        keys(&j["launch"]),
        set(&["requested", "unprivileged", "privileged"])
    );
    assert_eq!(
        keys(&j["launch"]["privileged"]),
        set(&[
            "allowed",
            "refusal",
            "features_submap0",
            "features_submap0_names"
        ])
    );
    assert_eq!(
        keys(&j["layout"]),
        set(&["memory_mib", "nr_pages", "start_of_day", "error"])
    );
    assert_eq!(
        keys(&j["layout"]["start_of_day"]),
        set(&[
            "kernel",
            "p2m",
            "start_info",
            "xenstore",
            "console",
            "page_tables",
            "boot_stack",
            "virt_pgtab_end",
            "mappings",
            "pfn_alloc_end"
        ])
    );

    assert_eq!(j["image"]["format"], "bzimage");
    assert_eq!(j["image"]["codec"], "xz");
    assert_eq!(j["guest"]["guest_os"], "linux");
    assert_eq!(j["guest"]["entry"], format!("{ENTRY:#x}"));
    assert_eq!(j["guest"]["virt_base"], format!("{VIRT_BASE:#x}"));
    assert_eq!(j["guest"]["hypercall_page"], format!("{HYPERCALL_PAGE:#x}"));
    assert_eq!(j["guest"]["virt_kstart"], format!("{LOAD_VADDR:#x}"));
    assert_eq!(j["guest"]["init_p2m"], "0x8000000000");
    assert_eq!(j["guest"]["pae_mode"], "yes");
    assert_eq!(j["features"]["supported_features"], "0x8801");
    assert_eq!(
        j["features"]["required"],
        serde_json::json!(["writable_page_tables"])
    );
    assert!(j["features"]["supported"]
        .as_array()
        .unwrap()
        .contains(&Value::from("dom0")));
    assert_eq!(j["launch"]["requested"], "unprivileged");
    assert_eq!(j["launch"]["unprivileged"]["allowed"], true);
    assert_eq!(j["launch"]["privileged"]["allowed"], true);
    // Privileged domains see XENFEAT_dom0 (bit 11) in submap 0; unprivileged ones do not.
    let sub = |m: &str| {
        u64::from_str_radix(
            j["launch"][m]["features_submap0"]
                .as_str()
                .unwrap()
                .trim_start_matches("0x"),
            16,
        )
        .unwrap()
    };
    assert_ne!(sub("privileged") & (1 << 11), 0);
    assert_eq!(sub("unprivileged") & (1 << 11), 0);
    assert_eq!(j["layout"]["memory_mib"], 512);
    assert_eq!(j["layout"]["nr_pages"], 512 * 256);
    let notes = j["notes"].as_array().unwrap();
    assert_eq!(notes.len(), linux_like_notes("").len());
    let os = notes.iter().find(|n| n["type"] == 6).unwrap();
    assert_eq!(os["desc_hex"], "6c 69 6e 75 78 00");
    assert_eq!(os["value"], "linux");
    assert_eq!(os["type_name"], "GUEST_OS");
}

#[test]
fn human_report_has_sections_and_aligned_keys() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_temp(&dir, "vmlinux", &tiny_kernel());
    let o = kxen(&["inspect", &k]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    for section in [
        "Image",
        "Xen guest",
        "Features",
        "Launch",
        "Start-of-day layout",
        "Notes",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(section)),
            "missing section {section}:\n{out}"
        );
    }
    let entry = out
        .lines()
        .find(|l| l.trim_start().starts_with("entry"))
        .unwrap();
    assert_eq!(entry, format!("  {:<20} {ENTRY:#x}", "entry"));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn kernel_requiring_dom0_is_refused_unprivileged_with_report_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_temp(
        &dir,
        "dom0only",
        &tiny_elf(&linux_like_notes("!writable_page_tables|!dom0")),
    );
    let o = kxen(&["inspect", &k, "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let j = json_of(&o);
    assert_eq!(j["launch"]["unprivileged"]["allowed"], false);
    assert!(j["launch"]["unprivileged"]["refusal"]
        .as_str()
        .unwrap()
        .contains("dom0"));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("kxen: ") && err.contains("refused for unprivileged launch"));
    let o = kxen(&["inspect", &k, "--privileged"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn kernel_without_dom0_support_is_refused_privileged() {
    let dir = tempfile::tempdir().unwrap();
    let mut notes = linux_like_notes("!writable_page_tables");
    for (t, d) in &mut notes {
        if *t == XEN_ELFNOTE_SUPPORTED_FEATURES {
            *d = 1u32.to_le_bytes().to_vec();
        }
    }
    let k = write_temp(&dir, "domu", &tiny_elf(&notes));
    assert_eq!(kxen(&["inspect", &k]).status.code(), Some(0));
    let o = kxen(&["inspect", &k, "--privileged"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!o.stdout.is_empty(), "the report is still printed");
    assert!(stderr(&o).contains("refused for privileged launch"));
}

#[test]
fn non_kernels_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_temp(&dir, "empty", b"");
    assert_one_line_refusal(&kxen(&["inspect", &empty]), "the file is empty");
    assert_one_line_refusal(&kxen(&["inspect", "/bin/ls"]), "not a Xen PV kernel");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let r = write_temp(&dir, "random", &random);
    assert_one_line_refusal(&kxen(&["inspect", &r, "--json"]), "not a Xen PV kernel");
    let missing = dir.path().join("missing");
    assert_one_line_refusal(
        &kxen(&["inspect", missing.to_str().unwrap()]),
        "cannot read",
    );
    // A truncated lz4 bzImage.
    let full = bzimage(&size_append(lz4_legacy(&tiny_kernel()), 0), 1);
    let mut cut = full.clone();
    cut.truncate(full.len() - 200);
    let t = write_temp(&dir, "truncated", &cut);
    assert_one_line_refusal(&kxen(&["inspect", &t]), "lies outside");
    // A 32-bit ELF.
    let mut elf32 = tiny_kernel();
    elf32[4] = 1;
    let e = write_temp(&dir, "elf32", &elf32);
    assert_one_line_refusal(&kxen(&["inspect", &e]), "32-bit");
}

#[test]
fn memory_too_small_for_the_layout_exits_2_after_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_temp(&dir, "vmlinux", &tiny_kernel());
    let o = kxen(&["inspect", &k, "--memory", "1", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let j = json_of(&o);
    assert!(j["layout"]["start_of_day"].is_null());
    assert!(j["layout"]["error"].is_string());
    assert!(stderr(&o).contains("cannot build the start-of-day layout"));
}

#[test]
fn log_level_debug_logs_to_stderr_and_bad_level_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_temp(&dir, "k.gz", &bzimage(&gzip(&tiny_kernel()), 1));
    let o = kxen(&["--log-level", "debug", "inspect", &k, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("payload decompressed"),
        "{}",
        stderr(&o)
    );
    json_of(&o);
    let o = kxen(&["inspect", &k]);
    assert!(o.stderr.is_empty(), "default level is warn: {}", stderr(&o));
    let o = kxen(&["--log-level", "loud", "inspect", &k]);
    assert_eq!(o.status.code(), Some(2));
}

/// The notes `readelf -n` lists for owner "Xen": (type, descriptor bytes), in file order.
fn readelf_xen_notes(path: &Path) -> Option<Vec<(u32, Vec<u8>)>> {
    let out = Command::new("readelf")
        .args(["-n", "--wide"])
        .arg(path)
        .output()
        .ok()?;
    assert!(out.status.success(), "readelf failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut notes = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("Xen") {
            continue;
        }
        let size = u64::from_str_radix(words.next().unwrap().trim_start_matches("0x"), 16).unwrap();
        // readelf names types 1, 2 and 4 generically for unknown owners; others are
        // "Unknown note type: (0x0000000N)".
        let ty = if let Some(i) = line.find("Unknown note type: (0x") {
            let hex = &line[i + 22..];
            u32::from_str_radix(&hex[..hex.find(')').unwrap()], 16).unwrap()
        } else if line.contains("NT_VERSION") {
            1
        } else if line.contains("NT_ARCH") {
            2
        } else if line.contains("GO BUILDID") {
            4 // readelf's generic name for type 4
        } else {
            panic!("unparsed readelf line: {line}");
        };
        let data = line
            .split("description data:")
            .nth(1)
            .unwrap_or_else(|| panic!("no description data: {line}"));
        let bytes: Vec<u8> = data
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(bytes.len() as u64, size, "{line}");
        notes.push((ty, bytes));
    }
    Some(notes)
}

fn json_xen_notes(j: &Value) -> Vec<(u32, Vec<u8>)> {
    j["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["owner"] == "Xen")
        .map(|n| {
            let bytes = n["desc_hex"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            (n["type"].as_u64().unwrap() as u32, bytes)
        })
        .collect()
}

/// Inspect a real asset; both modes must accept it and its Xen notes must equal readelf's.
/// Returns the JSON report, `None` when the asset is absent (skipped).
fn check_real_kernel(asset_name: &str) -> Option<Value> {
    let path = asset(asset_name)?;
    let bytes = std::fs::read(&path).unwrap();
    let img = kxen::image::load_kernel_image(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let elf = write_temp(&dir, "vmlinux", &img.elf);
    let p = path.to_str().unwrap();
    let o = kxen(&["inspect", p, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json_of(&o);
    assert_eq!(j["launch"]["unprivileged"]["allowed"], true);
    assert_eq!(j["launch"]["privileged"]["allowed"], true);
    assert!(j["layout"]["start_of_day"].is_object());
    let o = kxen(&["inspect", p, "--privileged"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let Some(readelf) = readelf_xen_notes(Path::new(&elf)) else {
        println!("skipped readelf comparison: readelf not installed");
        return Some(j);
    };
    assert!(!readelf.is_empty());
    // readelf lists by section, kxen by PT_NOTE segment: same notes, order may differ.
    let mut ours = json_xen_notes(&j);
    let mut theirs = readelf;
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    Some(j)
}

#[test]
fn real_debian_kernel_notes_match_readelf_and_both_modes_accept() {
    if let Some(j) = check_real_kernel("vmlinuz-cloud") {
        assert_eq!(j["image"]["codec"], "lz4");
        assert_eq!(
            j["features"]["features_note"],
            "!writable_page_tables|pae_pgdir_above_4gb"
        );
        assert_eq!(j["features"]["supported_features"], "0x8801");
    }
}

#[test]
fn real_pvgrub_notes_match_readelf_and_both_modes_accept() {
    check_real_kernel("pvgrub-x86_64.elf");
}
