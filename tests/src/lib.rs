//! kxen integration-test support. Integration tests live in tests/tests/.
//!
//! - [`GUESTS`]: every kit test guest, built from resources/guests/tests/ by build.rs.
//! - [`Report`]: parses the `KXEN-TEST:` protocol the guests print on the console.
//! - [`kit_pure`]: the guest kit's pure helpers, unit-tested here on the host.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

#[path = "../../resources/guests/kit/pure.rs"]
pub mod kit_pure;

pub mod initramfs;

/// The ELF image of test guest `name` (see [`GUESTS`] for the names).
pub fn guest(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|(n, _)| *n == name).map(|(_, img)| *img)
}

/// What a kit guest reported on its console.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Names of `KXEN-TEST: PASS <name>` lines, in order.
    pub passed: Vec<String>,
    /// `(name, reason)` of `KXEN-TEST: FAIL <name>: <reason>` lines.
    pub failed: Vec<(String, String)>,
    /// `(name, value)` of `KXEN-TEST: VALUE <name>=<value>` lines.
    pub values: Vec<(String, String)>,
    /// `(pass, fail)` of the `KXEN-TEST: DONE pass=<n> fail=<m>` line.
    pub done: Option<(u32, u32)>,
    /// Message of a `KXEN-TEST: PANIC <msg>` line.
    pub panic: Option<String>,
}

impl Report {
    /// Parse console output; lines without the `KXEN-TEST: ` prefix are ignored.
    pub fn parse(console: &str) -> Report {
        let mut r = Report::default();
        for line in console.lines() {
            let Some(rest) = line.trim_end_matches('\r').split_once("KXEN-TEST: ") else {
                continue;
            };
            let rest = rest.1;
            if let Some(name) = rest.strip_prefix("PASS ") {
                r.passed.push(name.to_string());
            } else if let Some(f) = rest.strip_prefix("FAIL ") {
                let (name, reason) = f.split_once(": ").unwrap_or((f, ""));
                r.failed.push((name.to_string(), reason.to_string()));
            } else if let Some(v) = rest.strip_prefix("VALUE ") {
                let (name, value) = v.split_once('=').unwrap_or((v, ""));
                r.values.push((name.to_string(), value.to_string()));
            } else if let Some(d) = rest.strip_prefix("DONE ") {
                r.done = parse_done(d);
            } else if let Some(p) = rest.strip_prefix("PANIC ") {
                r.panic = Some(p.to_string());
            }
        }
        r
    }

    /// The guest finished (DONE seen, no panic) with no failure.
    pub fn all_passed(&self) -> bool {
        self.panic.is_none()
            && self.failed.is_empty()
            && self.done == Some((self.passed.len() as u32, 0))
    }

    /// The value printed as `KXEN-TEST: VALUE <name>=...` (the last one).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_done(s: &str) -> Option<(u32, u32)> {
    let (p, f) = s.trim().split_once(' ')?;
    let p = p.strip_prefix("pass=")?.parse().ok()?;
    let f = f.strip_prefix("fail=")?.parse().ok()?;
    Some((p, f))
}

/// Xen ELF notes of an ELF64 image, `(type, desc)` in file order, read from its PT_NOTE
/// program headers. `None` if the image is not a well-formed little-endian ELF64.
pub fn xen_notes(elf: &[u8]) -> Option<Vec<(u32, Vec<u8>)>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let mut notes = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let size = usize::try_from(u64_at(ph + 32)?).ok()?;
        let seg = elf.get(off..off.checked_add(size)?)?;
        let mut at = 0usize;
        while at + 12 <= seg.len() {
            let namesz = u32::from_le_bytes(seg[at..at + 4].try_into().ok()?) as usize;
            let descsz = u32::from_le_bytes(seg[at + 4..at + 8].try_into().ok()?) as usize;
            let ty = u32::from_le_bytes(seg[at + 8..at + 12].try_into().ok()?);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let name = seg.get(name_at..name_at + namesz)?;
            let desc = seg.get(desc_at..desc_at + descsz)?;
            if name == b"Xen\0" {
                notes.push((ty, desc.to_vec()));
            }
            at = desc_at + descsz.div_ceil(4) * 4;
        }
    }
    Some(notes)
}

#[cfg(test)]
mod tests {
    use super::kit_pure::*;
    use super::*;

    fn note(img: &[u8], ty: u32) -> Option<Vec<u8>> {
        xen_notes(img)
            .expect("well-formed ELF")
            .into_iter()
            .rev()
            .find(|(t, _)| *t == ty)
            .map(|(_, d)| d)
    }

    fn le64(d: &[u8]) -> u64 {
        u64::from_le_bytes(d.try_into().expect("8-byte note"))
    }

    #[test]
    fn every_test_guest_is_built_once_under_a_unique_name() {
        let mut names: Vec<_> = GUESTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), GUESTS.len());
        for n in [
            "startinfo",
            "features_dom0",
            "features_none",
            "hostile",
            "traps",
            "shutdown_poweroff",
            "shutdown_reboot",
            "shutdown_crash",
            "shutdown_suspend",
        ] {
            assert!(guest(n).is_some(), "guest {n} missing");
        }
        assert!(guest("no-such-guest").is_none());
    }

    #[test]
    fn every_guest_carries_the_kit_notes_with_linux_like_layout() {
        for (name, img) in GUESTS {
            assert_eq!(
                note(img, 6).as_deref(),
                Some(&b"kxen-kit\0"[..]),
                "{name} GUEST_OS"
            );
            assert_eq!(
                note(img, 5).as_deref(),
                Some(&b"xen-3.0\0"[..]),
                "{name} XEN_VERSION"
            );
            assert_eq!(
                note(img, 8).as_deref(),
                Some(&b"generic\0"[..]),
                "{name} LOADER"
            );
            assert_eq!(
                le64(&note(img, 3).unwrap()),
                0xffff_ffff_8000_0000,
                "{name} VIRT_BASE"
            );
            assert_eq!(le64(&note(img, 4).unwrap()), 0, "{name} PADDR_OFFSET");
            let entry = le64(&note(img, 1).unwrap());
            let e_entry = u64::from_le_bytes(img[24..32].try_into().unwrap());
            assert_eq!(entry, e_entry, "{name} ENTRY note == e_entry");
            assert_eq!(
                entry, 0xffff_ffff_8020_0000,
                "{name} entry at the image start"
            );
            let hc = le64(&note(img, 2).unwrap());
            assert_eq!(hc % 4096, 0, "{name} hypercall page aligned");
            assert!(
                hc > entry && hc < entry + (1 << 20),
                "{name} hypercall page in the image"
            );
        }
    }

    #[test]
    fn load_segments_are_page_aligned_and_physically_at_vaddr_minus_virt_base() {
        for (name, img) in GUESTS {
            let phoff = u64::from_le_bytes(img[32..40].try_into().unwrap()) as usize;
            let phnum = u16::from_le_bytes(img[56..58].try_into().unwrap()) as usize;
            let mut loads = 0;
            for i in 0..phnum {
                let ph = &img[phoff + i * 56..phoff + (i + 1) * 56];
                if u32::from_le_bytes(ph[0..4].try_into().unwrap()) != 1 {
                    continue;
                }
                loads += 1;
                let vaddr = u64::from_le_bytes(ph[16..24].try_into().unwrap());
                let paddr = u64::from_le_bytes(ph[24..32].try_into().unwrap());
                assert_eq!(vaddr % 4096, 0, "{name} segment vaddr aligned");
                assert_eq!(paddr, vaddr - 0xffff_ffff_8000_0000, "{name} p_paddr");
            }
            assert_eq!(loads, 3, "{name}: text, rodata, data");
        }
    }

    #[test]
    fn hypercall_page_in_the_image_is_int3_filled() {
        for (name, img) in GUESTS {
            let hc = le64(&note(img, 2).unwrap());
            // The text segment is the first PT_LOAD: file offset 0x1000 at 0xffffffff80200000.
            let off = (hc - 0xffff_ffff_8020_0000 + 0x1000) as usize;
            assert!(img[off..off + 4096].iter().all(|&b| b == 0xcc), "{name}");
        }
    }

    #[test]
    fn feature_notes_differ_between_the_two_feature_guests() {
        let dom0 = guest("features_dom0").unwrap();
        assert_eq!(
            note(dom0, 10).as_deref(),
            Some(&b"writable_page_tables|dom0\0"[..])
        );
        assert_eq!(note(dom0, 17).as_deref(), Some(&0x801u32.to_le_bytes()[..]));
        let none = guest("features_none").unwrap();
        assert_eq!(note(none, 10), None);
        assert_eq!(note(none, 17), None);
    }

    #[test]
    fn xen_notes_rejects_non_elf_and_truncated_images() {
        assert_eq!(xen_notes(b"not an elf"), None);
        let img = guest("startinfo").unwrap();
        assert_eq!(xen_notes(&img[..40]), None);
    }

    #[test]
    fn expected_hypercall_entries_match_xens_encoding() {
        let e = expected_hypercall_entry(18);
        assert_eq!(
            &e[..14],
            &[0x51, 0x41, 0x53, 0xb8, 18, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3]
        );
        assert!(e[14..].iter().all(|&b| b == 0xcc));
        let iret = expected_hypercall_entry(23);
        assert_eq!(
            &iret[..11],
            &[0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0x0f, 0x05]
        );
        assert!(iret[11..].iter().all(|&b| b == 0xcc));
        assert_eq!(&expected_hypercall_entry(0x7f)[4..8], &[0x7f, 0, 0, 0]);
    }

    #[test]
    fn hypercall_entry_check_accepts_xens_and_kxens_forms_only() {
        let exit_va = 0xffff_8080_001f_f000u64;
        let page = kxen::builder::hypercall_page(exit_va);
        for i in [0u32, 17, 23, 40, 127] {
            let at = i as usize * HYPERCALL_ENTRY_SIZE;
            let kx = &page[at..at + HYPERCALL_ENTRY_SIZE];
            assert!(hypercall_entry_keeps_xens_contract(i, kx), "kxen entry {i}");
            assert!(hypercall_entry_keeps_xens_contract(
                i,
                &expected_hypercall_entry(i)
            ));
            // Wrong number, store outside kxen's area, missing restore: refused.
            assert!(!hypercall_entry_keeps_xens_contract(i + 1, kx));
            let mut bad = [0u8; HYPERCALL_ENTRY_SIZE];
            bad.copy_from_slice(kx);
            let store = if i == 23 { 20 } else { 19 };
            bad[store + 7] = 0x12; // address byte 7: 0xff -> 0x12
            assert!(!hypercall_entry_keeps_xens_contract(i, &bad), "entry {i}");
            if i != 23 {
                bad.copy_from_slice(kx);
                bad[27] = 0x90; // pop %r11 gone
                assert!(!hypercall_entry_keeps_xens_contract(i, &bad));
            }
        }
    }

    #[test]
    fn feature_names_follow_public_features_h() {
        assert_eq!(feature_name(0), Some("writable_page_tables"));
        assert_eq!(feature_name(11), Some("dom0"));
        assert_eq!(feature_name(15), Some("linux_rsdp_unrestricted"));
        assert_eq!(feature_name(21), None);
    }

    #[test]
    fn version_splits_into_major_minor() {
        assert_eq!(split_version((4 << 16) | 19), (4, 19));
        assert_eq!(split_version(-38), (0xffff, 0xffda));
    }

    #[test]
    fn c_str_needs_a_nul() {
        assert_eq!(c_str(b"xen\0junk"), Some(&b"xen"[..]));
        assert_eq!(c_str(b"xen"), None);
        assert_eq!(c_str(b"\0"), Some(&b""[..]));
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000_0000));
    }

    /// The layout Xen's builder produces for a 64 KiB-ish kernel in 128 MiB.
    fn xen_like_layout() -> Layout {
        let vb = 0xffff_ffff_8000_0000u64;
        let image_end = vb + 0x21_7000;
        let nr_pages = 32768;
        let mfn_list = image_end;
        let si = round_up(mfn_list + nr_pages * 8, 4096);
        let pt_base = si + 3 * 4096;
        Layout {
            virt_base: vb,
            image_end,
            nr_pages,
            mfn_list,
            start_info: si,
            store_mfn: (si - vb) / 4096 + 1,
            console_mfn: (si - vb) / 4096 + 2,
            pt_base,
            nr_pt_frames: 5,
            mod_start: 0,
            mod_len: 0,
            mapping_end: vb + (4 << 20),
        }
    }

    #[test]
    fn layout_rules_hold_for_a_xen_built_layout() {
        let l = xen_like_layout();
        for (rule, ok) in l.rules() {
            assert!(ok, "{rule} fails for {l:#x?}");
        }
    }

    #[test]
    fn layout_rules_catch_each_misplacement() {
        let broken = |f: &dyn Fn(&mut Layout), rule: &str| {
            let mut l = xen_like_layout();
            f(&mut l);
            let failed: Vec<_> = l.rules().iter().filter(|r| !r.1).map(|r| r.0).collect();
            assert!(
                failed.contains(&rule),
                "{rule} not caught, failed: {failed:?}"
            );
        };
        broken(&|l| l.start_info += 4096, "start_info_after_p2m");
        broken(&|l| l.store_mfn += 1, "store_page_after_start_info");
        broken(&|l| l.console_mfn = l.store_mfn, "console_page_after_store");
        broken(&|l| l.pt_base += 4096, "page_tables_after_console");
        broken(&|l| l.nr_pt_frames = 3, "nr_pt_frames_at_least_4");
        broken(&|l| l.mapping_end -= 4096, "mapping_end_4mib_aligned");
        broken(&|l| l.nr_pt_frames = 900, "spare_512k_after_boot_stack");
        broken(
            &|l| l.mod_start = l.image_end,
            "p2m_after_image_and_modules",
        );
        broken(&|l| l.mfn_list += 8, "p2m_after_image_and_modules");
        broken(&|l| l.nr_pages = 512, "mapping_within_ram");
    }

    #[test]
    fn line_buffer_flushes_per_line_and_when_full() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut b = LineBuf::<8>::new();
        b.push(b"ab\ncd", &mut |l| lines.push(l.to_vec()));
        assert_eq!(lines, vec![b"ab\n".to_vec()]);
        b.push(b"efghijk", &mut |l| lines.push(l.to_vec()));
        assert_eq!(lines[1], b"cdefghij".to_vec());
        b.flush(&mut |l| lines.push(l.to_vec()));
        assert_eq!(lines[2], b"k".to_vec());
        b.flush(&mut |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 3, "empty flush writes nothing");
    }

    #[test]
    fn report_parses_the_protocol() {
        let out = "banner\nKXEN-TEST: PASS a\r\nKXEN-TEST: VALUE submap0=0x801\n\
                   KXEN-TEST: FAIL b: got 1, expected 2\nKXEN-TEST: DONE pass=1 fail=1\n";
        let r = Report::parse(out);
        assert_eq!(r.passed, vec!["a"]);
        assert_eq!(r.failed, vec![("b".into(), "got 1, expected 2".into())]);
        assert_eq!(r.value("submap0"), Some("0x801"));
        assert_eq!(r.done, Some((1, 1)));
        assert!(!r.all_passed());
        let ok = Report::parse("KXEN-TEST: PASS a\nKXEN-TEST: DONE pass=1 fail=0\n");
        assert!(ok.all_passed());
        let panicked = Report::parse("KXEN-TEST: PANIC boom at x.rs:1\n");
        assert_eq!(panicked.panic.as_deref(), Some("boom at x.rs:1"));
        assert!(!panicked.all_passed());
        assert!(
            !Report::parse("KXEN-TEST: PASS a\n").all_passed(),
            "no DONE"
        );
    }
}

/// Shared pieces of the integration tests that boot guests.
pub mod harness {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use kxen::launch::{Domain, LaunchError, LaunchSpec, Outcome};
    use xen_abi::sched::ShutdownReason;

    use crate::Report;

    /// How long a kit guest may run before the test stops it (it then fails).
    pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

    /// Run `domain` to its end; if it is still running after `timeout`, stop it with
    /// `reason` (the outcome then says so).
    pub fn run_with_watchdog(
        domain: &mut Domain,
        timeout: Duration,
        reason: &'static str,
    ) -> Result<Outcome, LaunchError> {
        let stop = domain.stop_handle();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                stop.stop(reason);
            }
        });
        let outcome = domain.run();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        outcome
    }

    /// The launch of kit guest `name` (or the demo guest): 64 MiB, one vCPU, command line
    /// `kxen-test NAME`.
    pub fn guest_spec(name: &str, privileged: bool) -> LaunchSpec {
        let image = match name {
            "demo" => kxen::demo_image::DEMO_GUEST,
            _ => crate::guest(name).unwrap_or_else(|| panic!("no test guest {name}")),
        };
        LaunchSpec {
            name: name.into(),
            kernel: image.to_vec(),
            initrd: Vec::new(),
            cmdline: format!("kxen-test {name}"),
            memory_mib: 64,
            vcpus: 1,
            privileged,
            ..Default::default()
        }
    }

    /// A finished guest run: how it ended, its console and the `KXEN-TEST:` report in it.
    pub struct Run {
        /// How the domain ended.
        pub outcome: Outcome,
        /// Everything it printed.
        pub console: String,
        /// Its `KXEN-TEST:` lines.
        pub report: Report,
    }

    impl Run {
        /// Every check passed, the guest finished and powered off (exit status 0).
        pub fn assert_all_passed(&self) {
            assert!(
                self.report.all_passed(),
                "guest reported failures or did not finish:\n{}",
                self.console
            );
            assert_eq!(
                self.outcome.reason,
                ShutdownReason::Poweroff,
                "{}",
                self.console
            );
            assert_eq!(self.outcome.exit_status(), 0);
        }
    }

    /// Boot `spec` with `input` waiting as keyboard input, under [`GUEST_TIMEOUT`]; the
    /// console is printed for the test log.
    pub fn boot_with_input(spec: &LaunchSpec, input: &[u8]) -> Result<Run, LaunchError> {
        let out = Capture::default();
        let mut domain = Domain::create(spec, Box::new(out.clone()))?;
        domain.shared().console.lock().unwrap().input.extend(input);
        let outcome = run_with_watchdog(&mut domain, GUEST_TIMEOUT, "test timeout")?;
        let console = out.text();
        eprintln!(
            "--- {} console ---\n{console}--- {} ---",
            spec.name,
            outcome.describe()
        );
        let report = Report::parse(&console);
        Ok(Run {
            outcome,
            console,
            report,
        })
    }

    /// Boot kit guest `name`; panics if the domain cannot be created.
    pub fn boot(name: &str, privileged: bool) -> Run {
        boot_with_input(&guest_spec(name, privileged), b"")
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A console sink the test can read while the guest runs.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

    impl Capture {
        /// Everything written so far, as text.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Whether /dev/kvm works; prints the one-line skip reason when it does not.
    pub fn kvm() -> bool {
        if kxen::vcpu::kvm_available() {
            return true;
        }
        eprintln!("skipped: /dev/kvm is not available");
        false
    }
}
