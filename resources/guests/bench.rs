//! kxen bench guest: times N round trips of each PV operation with `rdtsc` around the loop
//! and reports the cycle counts as `KXEN-TEST: VALUE` lines for `kxen bench`
//! (vmm/src/bench.rs), then powers off. Embedded in the kxen binary.
//!
//! Command line: `iterations=<N>` (default 10000).
//!
//! Lines printed:
//! ```text
//! KXEN-TEST: VALUE iterations=<N>
//! KXEN-TEST: VALUE hypercall_cycles=<TSC cycles for N xen_version(XENVER_version)>
//! KXEN-TEST: VALUE exception_cycles=<TSC cycles for N int3 bounced + iret>
//! ```

#![no_std]
#![no_main]

#[macro_use]
#[path = "kit/mod.rs"]
mod kit;

use core::arch::asm;
use kit::abi::*;
use kit::hypercall as hc;
use kit::pure;

xen_notes!(features = "writable_page_tables");

const DEFAULT_ITERATIONS: u64 = 10_000;

// The smallest #BP handler a PV kernel can have: Xen's bounce frame is rcx, r11, rip, cs,
// rflags, rsp, ss (no error code for #BP); pop rcx/r11 back, push `flags = 0` and return
// through hypercall-page entry 23 (iret), which pushes rcx, r11, rax itself.
core::arch::global_asm!(
    ".pushsection .text.bench_int3, \"ax\"",
    ".globl bench_int3",
    "bench_int3:",
    "pop %rcx",
    "pop %r11",
    "push $0",
    "jmp hypercall_page + 23 * 32",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    fn bench_int3();
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `iterations=<N>` from the command line.
fn iterations(si: &StartInfo) -> u64 {
    let cmdline = pure::c_str(&si.cmd_line).unwrap_or(&si.cmd_line);
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(v) = word.strip_prefix(b"iterations=") {
            let mut n: u64 = 0;
            for &d in v {
                if !d.is_ascii_digit() {
                    return DEFAULT_ITERATIONS;
                }
                n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
            }
            if n > 0 {
                return n;
            }
        }
    }
    DEFAULT_ITERATIONS
}

fn kmain(si: &'static StartInfo) {
    let n = iterations(si);
    value!("iterations", "{}", n);

    // (a) xen_version(XENVER_version): the cheapest hypercall, through the hypercall page.
    let expected = hc::xen_version_number();
    let mut wrong = 0u64;
    let t0 = rdtsc();
    for _ in 0..n {
        if hc::xen_version_number() != expected {
            wrong += 1;
        }
    }
    let t1 = rdtsc();
    check_eq!("hypercall_results_consistent", wrong, 0u64);
    value!("hypercall_cycles", "{}", t1.wrapping_sub(t0));

    // (b) int3 -> kxen -> bench_int3 -> iret hypercall. Only vector 3 is (re)registered.
    let table = [
        TrapInfo {
            vector: 3,
            flags: 3, // DPL 3: `int3` allowed from the guest kernel (ring 3)
            cs: FLAT_KERNEL_CS,
            address: bench_int3 as *const () as u64,
        },
        TrapInfo {
            vector: 0,
            flags: 0,
            cs: 0,
            address: 0,
        },
    ];
    // SAFETY: terminated table; bench_int3 takes Xen's #BP bounce frame.
    let rc = unsafe { hc::set_trap_table(table.as_ptr()) };
    if !check_eq!("set_trap_table", rc, 0) {
        return;
    }
    let mut done = 0u64;
    let t0 = rdtsc();
    for _ in 0..n {
        // SAFETY: int3 is bounced to bench_int3, which returns right after it with every
        // register but rcx/r11 (restored from the frame by iret) untouched.
        unsafe { asm!("int3", out("rcx") _, out("r11") _, options(att_syntax)) };
        done += 1;
    }
    let t1 = rdtsc();
    check_eq!("exception_round_trips", done, n);
    value!("exception_cycles", "{}", t1.wrapping_sub(t0));
    // Back to the kit's handlers for whatever follows.
    kit::traps::install();
}
