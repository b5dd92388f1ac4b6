//! The pass/fail protocol the integration tests read from the console:
//!
//! ```text
//! KXEN-TEST: PASS <name>
//! KXEN-TEST: FAIL <name>: <reason>
//! KXEN-TEST: VALUE <name>=<value>
//! KXEN-TEST: DONE pass=<n> fail=<m>        (then SCHEDOP_shutdown(poweroff))
//! KXEN-TEST: PANIC <message>               (kit panic; then SCHEDOP_shutdown(crash))
//! ```

use super::rt::Global;
use core::fmt;

static PASSED: Global<u32> = Global::new(0);
static FAILED: Global<u32> = Global::new(0);

/// Record one check; returns `ok`.
pub fn record(name: &str, ok: bool, reason: fmt::Arguments) -> bool {
    if ok {
        PASSED.set(PASSED.get() + 1);
        println!("KXEN-TEST: PASS {}", name);
    } else {
        FAILED.set(FAILED.get() + 1);
        println!("KXEN-TEST: FAIL {}: {}", name, reason);
    }
    ok
}

/// Print `KXEN-TEST: VALUE name=<value>` for the host test to judge.
pub fn value(name: &str, v: fmt::Arguments) {
    println!("KXEN-TEST: VALUE {}={}", name, v);
}

/// Wait for `cond`, giving the CPU away (SCHEDOP_yield) between tries, at most `tries`
/// times; on timeout records `FAIL what: timed out`. Whether `cond` came true.
pub fn wait_until(what: &str, tries: u32, cond: impl Fn() -> bool) -> bool {
    for _ in 0..tries {
        if cond() {
            return true;
        }
        super::hypercall::sched_yield();
    }
    record(what, false, format_args!("timed out"))
}

pub fn counts() -> (u32, u32) {
    (PASSED.get(), FAILED.get())
}

/// Print the DONE line (without shutting down).
pub fn done_line() {
    let (p, f) = counts();
    println!("KXEN-TEST: DONE pass={} fail={}", p, f);
    super::console::flush();
}

/// Print the DONE line and power off.
pub fn finish() -> ! {
    done_line();
    super::hypercall::shutdown(super::abi::SHUTDOWN_POWEROFF);
    panic!("SCHEDOP_shutdown(poweroff) returned")
}
