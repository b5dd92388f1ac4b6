//! Time for kit guests: the TSC and the pvclock (Xen's `vcpu_time_info`).

#![allow(dead_code)]

use core::sync::atomic::{fence, AtomicU64, Ordering};

use super::abi::*;
use super::hypercall::hypercall3;

/// The time-stamp counter, unordered (for timing loops).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The time-stamp counter after every earlier load (`lfence; rdtsc`, as Linux's
/// rdtsc_ordered): without the fence the rdtsc may run ahead of the loads before it.
pub fn rdtsc_ordered() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: lfence; rdtsc only orders and reads the time-stamp counter.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Xen system time (ns) from a vcpu_info's `vcpu_time_info` (its words 4..8: version,
/// tsc_timestamp, system_time, tsc_to_system_mul | tsc_shift << 32), and the version read.
/// The version protocol: an odd version is an update in progress, and a version that changed
/// across the reads means a torn record; both are read again. The TSC delta since
/// tsc_timestamp (0 if negative) is shifted by tsc_shift and scaled by mul / 2^32.
/// xen: public/xen.h, struct vcpu_time_info.
///
/// `vcpu_info` is the 8 words of a vcpu_info (the kit's registered one, or one of the
/// legacy slots in shared_info); shorter slices panic.
pub fn pvclock(vcpu_info: &[AtomicU64]) -> (u64, u32) {
    let w = &vcpu_info[4..8];
    loop {
        let v = w[0].load(Ordering::Acquire) as u32;
        if v & 1 != 0 {
            continue;
        }
        fence(Ordering::Acquire);
        let tsc_ts = w[1].load(Ordering::Acquire);
        let st = w[2].load(Ordering::Acquire);
        let scale = w[3].load(Ordering::Acquire);
        let tsc = rdtsc_ordered();
        fence(Ordering::Acquire);
        if w[0].load(Ordering::Acquire) as u32 != v {
            continue;
        }
        let mul = scale as u32;
        let shift = (scale >> 32) as u8 as i8;
        let mut delta = tsc.wrapping_sub(tsc_ts);
        if (delta as i64) < 0 {
            delta = 0;
        }
        if shift >= 0 {
            delta <<= shift;
        } else {
            delta >>= -shift;
        }
        let ns = ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
        return (st.wrapping_add(ns), v);
    }
}

/// VCPUOP_set_singleshot_timer for `vcpu`: fire at system time `timeout` (ns), `flags`
/// (VCPU_SSHOTTMR_future: -ETIME if already past).
pub fn set_singleshot_timer(vcpu: u32, timeout: u64, flags: u32) -> i64 {
    let arg: [u64; 2] = [timeout, u64::from(flags)];
    // SAFETY: `arg` is a readable struct vcpu_set_singleshot_timer.
    unsafe {
        hypercall3(
            HYPERVISOR_VCPU_OP,
            VCPUOP_SET_SINGLESHOT_TIMER,
            u64::from(vcpu),
            &arg as *const _ as u64,
        )
    }
}
