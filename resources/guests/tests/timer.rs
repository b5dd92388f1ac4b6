//! timer: Xen's PV time end to end — the pvclock in vcpu_info (monotonic over many reads),
//! VCPUOP_set_singleshot_timer + SCHEDOP_block (VIRQ_TIMER upcall; lateness printed as a
//! VALUE), VCPU_SSHOTTMR_future in the past (-ETIME), set_timer_op(0) cancelling, SCHEDOP_poll
//! with an absolute timeout, the wallclock.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::sync::atomic::{AtomicU64, Ordering};
use kit::abi::*;
use kit::events::*;
use kit::hypercall::{hypercall1, hypercall3};
use kit::time::{pvclock, set_singleshot_timer};

xen_notes!(features = "writable_page_tables");

/// vCPU 0's runstate area (struct vcpu_runstate_info: state, state_entry_time, time[4]).
static RUNSTATE: [AtomicU64; 6] = [const { AtomicU64::new(u64::MAX) }; 6];
const MS: u64 = 1_000_000;

/// System time (ns) from the registered vcpu_info's pvclock, and the version read.
fn system_time() -> (u64, u32) {
    pvclock(&VCPU_INFO.0)
}

fn now() -> u64 {
    system_time().0
}

fn singleshot(timeout: u64, flags: u32) -> i64 {
    set_singleshot_timer(0, timeout, flags)
}

fn set_timer_op(timeout: u64) -> i64 {
    // SAFETY: set_timer_op takes a plain value.
    unsafe { hypercall1(HYPERVISOR_SET_TIMER_OP, timeout) }
}

/// Block until an upcall arrived after `before` or `limit` blocks returned.
fn block_until_upcall(before: u32, limit: u32) -> bool {
    for _ in 0..limit {
        if UPCALLS.get() > before {
            return true;
        }
        block();
    }
    UPCALLS.get() > before
}

/// A fresh VIRQ_TIMER port: without shared_info mapped the kit's upcall cannot clear the
/// port's pending bit, so the old port is closed (which clears it) and the VIRQ bound again.
fn rebind(port: u32) -> u32 {
    close(port);
    match bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(e) => {
            check!("rebind_virq_timer", false, "rc {}", e);
            0
        }
    }
}

fn kmain(si: &'static StartInfo) {
    check_eq!("register_vcpu_info", register_vcpu_info(), 0);
    check_eq!("register_event_callback", register_event_callback(), 0);
    set_upcall_mask(false);
    force_callback();

    let (t0, v0) = system_time();
    check!("pvclock_published", v0 != 0 && v0 % 2 == 0, "version {}", v0);
    check!("pvclock_mul_nonzero", VCPU_INFO.0[7].load(Ordering::Relaxed) as u32 != 0);
    value!("system_time_at_start_ns", "{}", t0);

    // Monotonic over many reads (and across hypercalls, which may republish it).
    let mut prev = now();
    let mut backwards = 0u32;
    for i in 0..200_000u32 {
        if i % 10_000 == 0 {
            force_callback();
        }
        let t = now();
        if t < prev {
            backwards += 1;
        }
        prev = t;
    }
    check_eq!("pvclock_monotonic", backwards, 0u32);

    let port = match bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(e) => {
            check!("bind_virq_timer", false, "rc {}", e);
            0
        }
    };
    value!("timer_port", "{}", port);

    // Our own runstate area: it must account the time blocked below.
    let area = (&raw const RUNSTATE) as u64;
    // SAFETY: the argument is a readable pointer to the area's address; the area is ours.
    let rc = unsafe {
        hypercall3(
            HYPERVISOR_VCPU_OP,
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA,
            0,
            (&raw const area) as u64,
        )
    };
    check_eq!("register_runstate_area", rc, 0);
    let blocked_before = RUNSTATE[2 + RUNSTATE_BLOCKED as usize].load(Ordering::SeqCst);

    // A single-shot timer 10 ms ahead, then block: the VIRQ_TIMER upcall arrives.
    let before = UPCALLS.get();
    let start = now();
    let deadline = start + 10 * MS;
    check_eq!("singleshot_10ms", singleshot(deadline, 0), 0);
    let arrived = block_until_upcall(before, 1000);
    let end = now();
    check!("singleshot_upcall_arrived", arrived);
    check!(
        "singleshot_not_early",
        end >= deadline,
        "woke {} ns after arming",
        end - start
    );
    value!(
        "singleshot_lateness_us",
        "{}",
        end.saturating_sub(deadline) / 1000
    );
    // The area was rewritten when the vCPU blocked and when it woke: running now, with the
    // ~10 ms spent blocked added to time[blocked].
    let state = RUNSTATE[0].load(Ordering::SeqCst);
    check_eq!("runstate_running_after_block", state, RUNSTATE_RUNNING);
    let blocked = RUNSTATE[2 + RUNSTATE_BLOCKED as usize]
        .load(Ordering::SeqCst)
        .wrapping_sub(blocked_before);
    check!(
        "runstate_blocked_time_accounted",
        (5 * MS..10_000 * MS).contains(&blocked),
        "time[blocked] grew by {} ns",
        blocked
    );
    value!("runstate_blocked_ns", "{}", blocked);

    // In the past with VCPU_SSHOTTMR_future: -ETIME; without the flag it fires at once.
    check_eq!("singleshot_past_future_flag", singleshot(1, VCPU_SSHOTTMR_FUTURE), -ETIME);
    let port = rebind(port);
    let before = UPCALLS.get();
    check_eq!("singleshot_past_no_flag", singleshot(1, 0), 0);
    check!("singleshot_past_fires", block_until_upcall(before, 1000));

    // set_timer_op(0) cancels; poll's timeout is absolute system time.
    // First let system time pass 500 ms, so a timeout taken as relative would show.
    let port = rebind(port);
    let before = UPCALLS.get();
    if now() < 500 * MS {
        check_eq!("set_timer_op_500ms", set_timer_op(500 * MS), 0);
        check!("set_timer_op_fires", block_until_upcall(before, 1000));
    }
    // A timer cancelled before its deadline never fires. If this vCPU was descheduled (a
    // loaded host) from arming until after the deadline, the timer fired legitimately (Xen
    // would have fired it too): such a round is not evidence either way and is retried.
    let mut port = port;
    let mut tries = 0;
    loop {
        tries += 1;
        port = rebind(port);
        let before = UPCALLS.get();
        let armed = now();
        check_eq!("set_timer_op_arm", set_timer_op(armed + 5 * MS), 0);
        check_eq!("set_timer_op_cancel", set_timer_op(0), 0);
        let p0 = now();
        if p0 >= armed + 4 * MS && tries < 10 {
            continue;
        }
        let rc = poll(&[port], p0 + 30 * MS);
        let p1 = now();
        check_eq!("poll_rc", rc, 0);
        check!(
            "poll_absolute_timeout",
            p1 >= p0 + 30 * MS && p1 < p0 + 300 * MS,
            "poll took {} us",
            (p1 - p0) / 1000
        );
        value!("poll_took_us", "{}", (p1 - p0) / 1000);
        check_eq!("cancelled_timer_silent", UPCALLS.get(), before);
        break;
    }

    // VCPUOP_stop_singleshot_timer cancels too (same retry rule).
    let mut tries = 0;
    loop {
        tries += 1;
        port = rebind(port);
        let before = UPCALLS.get();
        let armed = now();
        check_eq!("singleshot_again", singleshot(armed + 5 * MS, 0), 0);
        // SAFETY: stop_singleshot_timer takes no argument.
        let rc = unsafe { hypercall3(HYPERVISOR_VCPU_OP, VCPUOP_STOP_SINGLESHOT_TIMER, 0, 0) };
        check_eq!("stop_singleshot", rc, 0);
        let p0 = now();
        if p0 >= armed + 4 * MS && tries < 10 {
            continue;
        }
        poll(&[port], p0 + 20 * MS);
        check_eq!("stopped_timer_silent", UPCALLS.get(), before);
        break;
    }

    // The time record stays fresh: after a block, its version moved on.
    let (_, v1) = system_time();
    check!("pvclock_republished", v1 > v0, "version {} -> {}", v0, v1);

    // The wallclock, when the guest can map shared_info.
    if map_shared_info(si) == 0 {
        let w = SHINFO.0[SHINFO_WC_WORD].load(Ordering::Acquire);
        let (ver, sec) = (w as u32, (w >> 32) as u32);
        check!("wallclock_set", ver != 0 && ver % 2 == 0 && sec != 0, "wc {:#x}", w);
        value!("wallclock_sec", "{}", sec);
    } else {
        value!("wallclock", "checked by the host (no update_va_mapping)");
    }
}
