//! `kxen bench` end to end: one run prints the four measurements (hypercall, bounced
//! exception, the bare-exit floor, in-VM syscall) with numeric ns/op and ratio values, and
//! under the PV memory heading the PTE-update rates (mmu_update batches of 1, 32 and 512,
//! writable-page-table stores) with numeric ns/update, updates/s and ratio values, and
//! under the events heading the event-channel send-to-upcall latencies (same vCPU, and to
//! another vCPU blocked in SCHEDOP_block) with numeric ns/op and ratio values and the timer
//! wakeup lateness (mean, median, max in ns over a count of wakeups).
//! Only the shape is checked, never the size of the numbers (no timing assertions).

use std::process::{Command, Output};

use serde_json::Value;

const FOUR: [&str; 4] = ["hypercall", "exception", "exit", "syscall"];
const PTE: [&str; 4] = [
    "mmu_update_x1",
    "mmu_update_x32",
    "mmu_update_x512",
    "ptwr_store",
];
const PTE_HEADING: &str = "PV memory: PTE updates";
const EVENTS: [&str; 2] = ["evtchn_self", "evtchn_ipi"];
const EVENTS_HEADING: &str = "events and time";

fn kxen_bench(extra: &[&str]) -> Option<Output> {
    if !kxen::vcpu::kvm_available() {
        eprintln!("skipped: /dev/kvm not available");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kxen"))
        .args(["bench", "--iterations", "100"])
        .args(extra)
        .output()
        .expect("run kxen");
    assert!(
        out.status.success(),
        "kxen bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Some(out)
}

/// The number right before `unit` on `line` (`... 1234.5 ns/op ...`).
fn number_before(line: &str, unit: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == unit)?;
    words
        .get(i.checked_sub(1)?)?
        .trim_end_matches('x')
        .parse()
        .ok()
}

#[test]
fn bench_prints_the_four_measurements_with_numeric_values() {
    let Some(out) = kxen_bench(&[]) else { return };
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    for name in FOUR {
        let prefix = format!("{name}:");
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(prefix.as_str()))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"));
        let ns =
            number_before(line, "ns/op").unwrap_or_else(|| panic!("no numeric ns/op on `{line}`"));
        let ratio =
            number_before(line, "floor").unwrap_or_else(|| panic!("no numeric ratio on `{line}`"));
        assert!(ns.is_finite() && ratio.is_finite(), "{line}");
    }
}

#[test]
fn bench_prints_pte_update_rates_under_their_heading_with_numeric_values() {
    let Some(out) = kxen_bench(&[]) else { return };
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let heading = text
        .lines()
        .position(|l| l.starts_with(PTE_HEADING))
        .unwrap_or_else(|| panic!("no `{PTE_HEADING}` heading in:\n{text}"));
    let lines: Vec<&str> = text.lines().collect();
    for name in PTE {
        let prefix = format!("{name}:");
        let at = lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(prefix.as_str()))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"));
        assert!(at > heading, "`{prefix}` is not under the heading:\n{text}");
        let line = lines[at];
        assert!(!line.contains("not measured"), "{line}");
        for unit in ["ns/update", "updates/s", "floor"] {
            let v = number_before(line, unit)
                .unwrap_or_else(|| panic!("no numeric `{unit}` value on `{line}`"));
            assert!(v.is_finite(), "{line}");
        }
    }
}

/// The line whose first word is `name:`, and its index.
fn line_of<'a>(lines: &[&'a str], name: &str) -> Option<(usize, &'a str)> {
    let prefix = format!("{name}:");
    lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some(prefix.as_str()))
        .map(|i| (i, lines[i]))
}

#[test]
fn bench_prints_event_latencies_and_timer_lateness_under_their_heading() {
    let Some(out) = kxen_bench(&[]) else { return };
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = text.lines().collect();
    let heading = lines
        .iter()
        .position(|l| l.starts_with(EVENTS_HEADING))
        .unwrap_or_else(|| panic!("no `{EVENTS_HEADING}` heading in:\n{text}"));
    for name in EVENTS {
        let (at, line) =
            line_of(&lines, name).unwrap_or_else(|| panic!("no `{name}:` line in:\n{text}"));
        assert!(at > heading, "`{name}` is not under the heading:\n{text}");
        assert!(!line.contains("not measured"), "{line}");
        for unit in ["ns/op", "floor"] {
            let v = number_before(line, unit)
                .unwrap_or_else(|| panic!("no numeric `{unit}` value on `{line}`"));
            assert!(v.is_finite() && v > 0.0, "{line}");
        }
    }
    let (at, line) = line_of(&lines, "timer_wakeup")
        .unwrap_or_else(|| panic!("no `timer_wakeup:` line in:\n{text}"));
    assert!(
        at > heading,
        "`timer_wakeup` is not under the heading:\n{text}"
    );
    assert!(!line.contains("not measured"), "{line}");
    // `late by mean M ns, median D ns, min A ns, max B ns  [N wakeups]`
    let after = |word: &str| -> i64 {
        let w: Vec<&str> = line.split_whitespace().collect();
        let i = w
            .iter()
            .position(|x| *x == word)
            .unwrap_or_else(|| panic!("no `{word}` on `{line}`"));
        w[i + 1]
            .parse()
            .unwrap_or_else(|_| panic!("`{word}` not followed by a number on `{line}`"))
    };
    let (mean, median, max) = (after("mean"), after("median"), after("max"));
    assert!(max >= median && max >= mean, "{line}");
    let count = line
        .split('[')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no `[N wakeups]` on `{line}`"));
    assert!(count > 0, "{line}");
}

#[test]
fn bench_json_has_the_four_results_as_numbers() {
    let Some(out) = kxen_bench(&["--json"]) else {
        return;
    };
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["iterations"], 100);
    assert!(v["tsc_khz"].as_u64().is_some_and(|k| k > 0), "{v}");
    let results = v["results"].as_array().expect("results array");
    for name in FOUR {
        let r = results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` result in {v}"));
        for field in ["ns_per_op", "ratio_to_floor", "cycles_per_op"] {
            assert!(r[field].is_f64(), "{name}.{field} not a number: {r}");
        }
    }
    let floor = results.iter().find(|r| r["name"] == "exit").unwrap();
    assert_eq!(floor["ratio_to_floor"].as_f64(), Some(1.0));
    for name in PTE {
        let r = results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` result in {v}"));
        assert_eq!(r["section"], "pv_memory", "{r}");
        for field in ["ns_per_op", "per_second", "ratio_to_floor", "cycles_per_op"] {
            assert!(r[field].is_f64(), "{name}.{field} not a number: {r}");
        }
        assert!(r["iterations"].as_u64().is_some_and(|n| n >= 100), "{r}");
    }
    for name in EVENTS {
        let r = results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` result in {v}"));
        assert_eq!(r["section"], "events", "{r}");
        for field in ["ns_per_op", "ratio_to_floor", "cycles_per_op"] {
            assert!(r[field].is_f64(), "{name}.{field} not a number: {r}");
        }
    }
    let t = &v["timer_wakeup"];
    for field in [
        "count",
        "ahead_ns",
        "mean_ns",
        "median_ns",
        "min_ns",
        "max_ns",
    ] {
        assert!(
            t[field].is_i64() || t[field].is_u64(),
            "timer_wakeup.{field}: {t}"
        );
    }
}
