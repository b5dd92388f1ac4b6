//! The guest's clocks: per-vCPU `vcpu_time_info` (pvclock) and the shared_info wallclock.
//!
//! kxen's system time is one linear function of the guest TSC for the whole domain:
//! `system_ns = scale_delta(guest_tsc - tsc0)`, where `tsc0` is the guest TSC at system time 0
//! (domain start). Every vCPU publishes the same function, so the guest's clock is monotonic
//! across vCPUs and updates, and `XEN_PVCLOCK_TSC_STABLE` is truthful (xen: arch/x86/time.c
//! sets it when the clocksource is the TSC). Host timers convert a system-time deadline to
//! `CLOCK_MONOTONIC` with the base sampled at the same instant as `tsc0`.

use super::pvclock::{scale_delta, TimeScale};
use super::sink::TimeInfoSink;
use super::TimeError;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;
use xen_abi::arch::Pod;
use xen_abi::shared_info::{
    VcpuTimeInfo, WC_NSEC_OFFSET, WC_SEC_HI_OFFSET, WC_SEC_OFFSET, WC_VERSION_OFFSET,
    XEN_PVCLOCK_TSC_STABLE,
};

/// Read the host TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter; it has no memory effects and every
    // x86_64 CPU implements it (CR4.TSD is clear for user space on Linux).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `clock_gettime(clock)` in ns (0 if the clock cannot be read, which Linux never does for
/// the clocks used here).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC` in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in ns since the epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Measure the host TSC frequency against `CLOCK_MONOTONIC` over `span` (use when KVM's
/// `KVM_GET_TSC_KHZ` is not available). Returns kHz.
pub fn calibrate_tsc_khz(span: Duration) -> Result<u32, TimeError> {
    let t0 = monotonic_ns();
    let c0 = rdtsc();
    std::thread::sleep(span);
    let t1 = monotonic_ns();
    let c1 = rdtsc();
    let ns = t1.saturating_sub(t0);
    let ticks = c1.wrapping_sub(c0);
    if ns == 0 || ticks == 0 || c1 < c0 {
        return Err(TimeError::Calibration);
    }
    let khz = u128::from(ticks) * 1_000_000 / u128::from(ns);
    u32::try_from(khz)
        .ok()
        .filter(|&k| k > 0)
        .ok_or(TimeError::Calibration)
}

/// Wallclock at system time 0 (xen: public/xen.h `shared_info.wc_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wallclock {
    /// Seconds since the epoch.
    pub sec: u64,
    /// Nanoseconds (< 1e9).
    pub nsec: u32,
}

impl Wallclock {
    /// From ns since the epoch.
    pub fn from_ns(ns: u64) -> Self {
        Self {
            sec: ns / 1_000_000_000,
            nsec: (ns % 1_000_000_000) as u32,
        }
    }
}

/// The domain's time base: how guest TSC maps to system time and host clocks.
#[derive(Clone, Copy, Debug)]
pub struct DomainClock {
    scale: TimeScale,
    tsc_khz: u32,
    /// Guest TSC at system time 0.
    tsc0: u64,
    /// guest TSC = host TSC + `tsc_offset` (wrapping), as KVM sets it up.
    tsc_offset: u64,
    /// Host `CLOCK_MONOTONIC` (ns) at system time 0.
    mono0: u64,
    /// Wallclock at system time 0.
    wall0: Wallclock,
    /// Last `wc_version` written.
    wc_version: u32,
}

impl DomainClock {
    /// A clock starting now: system time 0 is this instant. `tsc_khz` comes from KVM
    /// (`KVM_GET_TSC_KHZ` on a vCPU fd) or [`calibrate_tsc_khz`]; `tsc_offset` is guest TSC
    /// minus host TSC (0 until the VMM has measured it).
    pub fn start(tsc_khz: u32, tsc_offset: u64) -> Result<Self, TimeError> {
        let scale = TimeScale::from_tsc_khz(tsc_khz).ok_or(TimeError::Calibration)?;
        let wall = realtime_ns();
        let mono0 = monotonic_ns();
        let tsc0 = rdtsc().wrapping_add(tsc_offset);
        Ok(Self::from_parts(
            scale,
            tsc_khz,
            tsc0,
            tsc_offset,
            mono0,
            Wallclock::from_ns(wall),
        ))
    }

    /// A clock from explicit parts (tests, restore).
    pub fn from_parts(
        scale: TimeScale,
        tsc_khz: u32,
        tsc0: u64,
        tsc_offset: u64,
        mono0: u64,
        wall0: Wallclock,
    ) -> Self {
        Self {
            scale,
            tsc_khz,
            tsc0,
            tsc_offset,
            mono0,
            wall0,
            wc_version: 0,
        }
    }

    /// The published scale.
    pub fn scale(&self) -> TimeScale {
        self.scale
    }

    /// The TSC frequency in kHz.
    pub fn tsc_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// Guest TSC now (host TSC + offset).
    pub fn guest_tsc(&self) -> u64 {
        rdtsc().wrapping_add(self.tsc_offset)
    }

    /// System time (ns since domain start) at guest TSC `tsc`; 0 before `tsc0`.
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        match tsc.checked_sub(self.tsc0) {
            Some(d) => scale_delta(d, self.scale),
            None => 0,
        }
    }

    /// System time now, from the TSC (what the guest computes).
    pub fn now(&self) -> u64 {
        self.system_time_at(self.guest_tsc())
    }

    /// Host `CLOCK_MONOTONIC` (ns) at which system time reaches `system_ns` (saturating).
    pub fn host_monotonic_at(&self, system_ns: u64) -> u64 {
        self.mono0.saturating_add(system_ns)
    }

    /// Wallclock at system time 0.
    pub fn wallclock(&self) -> Wallclock {
        self.wall0
    }

    /// The `(tsc, system_time)` pair for a `vcpu_time_info` taken now.
    pub fn sample(&self) -> (u64, u64) {
        let tsc = self.guest_tsc();
        (tsc, self.system_time_at(tsc))
    }

    /// Write the wallclock into a sink placed at the start of `shared_info`:
    /// `wc_version` odd, `wc_sec`/`wc_nsec`/`wc_sec_hi`, `wc_version` even
    /// (xen: common/time.c `update_domain_wallclock_time`).
    pub fn write_wallclock(&mut self, shared_info: &impl TimeInfoSink) -> Result<(), TimeError> {
        let v = self.wc_version.wrapping_add(1) | 1;
        shared_info.store_u32(WC_VERSION_OFFSET, v)?;
        fence(Ordering::SeqCst);
        shared_info.store_u32(WC_SEC_OFFSET, self.wall0.sec as u32)?;
        shared_info.store_u32(WC_NSEC_OFFSET, self.wall0.nsec)?;
        shared_info.store_u32(WC_SEC_HI_OFFSET, (self.wall0.sec >> 32) as u32)?;
        fence(Ordering::SeqCst);
        self.wc_version = v.wrapping_add(1);
        shared_info.store_u32(WC_VERSION_OFFSET, self.wc_version)
    }
}

/// One vCPU's `vcpu_time_info` publisher; keeps the version counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuClock {
    info: VcpuTimeInfo,
}

impl VcpuClock {
    /// A clock that has published nothing yet (version 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Fill in the record for guest TSC `tsc` taken at system time `system_ns`
    /// (the version is left as last published).
    pub fn update(&mut self, scale: TimeScale, tsc: u64, system_ns: u64, stable: bool) {
        self.info = VcpuTimeInfo {
            version: self.info.version,
            pad0: 0,
            tsc_timestamp: tsc,
            system_time: system_ns,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            flags: if stable { XEN_PVCLOCK_TSC_STABLE } else { 0 },
            pad1: [0; 2],
        };
    }

    /// Take a fresh sample from the domain clock.
    pub fn refresh(&mut self, clock: &DomainClock) {
        let (tsc, ns) = clock.sample();
        self.update(clock.scale(), tsc, ns, true);
    }

    /// The record as last filled in.
    pub fn info(&self) -> VcpuTimeInfo {
        self.info
    }

    /// Publish: version odd, fence, the other fields, fence, version even
    /// (xen: arch/x86/time.c `__update_vcpu_system_time`, `version_update_begin/end`).
    /// A guest that retries while the version is odd or changed never sees a torn record.
    pub fn write_to(&mut self, sink: &impl TimeInfoSink) -> Result<(), TimeError> {
        let odd = self.info.version.wrapping_add(1) | 1;
        self.info.version = odd;
        sink.store_u32(0, odd)?;
        fence(Ordering::SeqCst);
        sink.write(4, &self.info.as_bytes()[4..])?;
        fence(Ordering::SeqCst);
        self.info.version = odd.wrapping_add(1);
        sink.store_u32(0, self.info.version)
    }

    /// Write the last published record to another area (the secondary, user-mapped copy of
    /// `VCPUOP_register_vcpu_time_memory_area`) with the same version protocol and the same
    /// version numbers (xen: arch/x86/time.c `write_time_guest_area`).
    pub fn write_copy_to(&self, sink: &impl TimeInfoSink) -> Result<(), TimeError> {
        let even = self.info.version & !1;
        sink.store_u32(0, even.wrapping_sub(1))?;
        fence(Ordering::SeqCst);
        sink.write(4, &self.info.as_bytes()[4..])?;
        fence(Ordering::SeqCst);
        sink.store_u32(0, even)
    }

    /// What a guest computes from `info` at TSC `tsc` (public/xen.h formula).
    pub fn guest_read(info: &VcpuTimeInfo, tsc: u64) -> u64 {
        let scale = TimeScale {
            mul: info.tsc_to_system_mul,
            shift: info.tsc_shift,
        };
        info.system_time
            .wrapping_add(scale_delta(tsc.wrapping_sub(info.tsc_timestamp), scale))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sink::AtomicArea;
    use super::*;
    use std::sync::Arc;
    use xen_abi::shared_info::SharedInfo;

    fn clock_3ghz() -> DomainClock {
        DomainClock::from_parts(
            TimeScale::from_tsc_khz(3_000_000).unwrap(),
            3_000_000,
            1_000_000,
            0,
            5_000,
            Wallclock {
                sec: 0x1_2345_6789,
                nsec: 999_999_999,
            },
        )
    }

    #[test]
    fn system_time_is_linear_in_tsc_from_tsc0() {
        let c = clock_3ghz();
        assert_eq!(c.system_time_at(1_000_000), 0);
        assert_eq!(c.system_time_at(0), 0, "before tsc0 clamps to 0");
        let ns = c.system_time_at(1_000_000 + 3_000_000_000);
        assert!(ns.abs_diff(1_000_000_000) <= 2, "{ns}");
        assert_eq!(c.host_monotonic_at(10), 5_010);
        assert_eq!(c.host_monotonic_at(u64::MAX), u64::MAX);
    }

    #[test]
    fn guest_read_of_published_record_matches_domain_clock() {
        let c = clock_3ghz();
        let mut v = VcpuClock::new();
        let tsc = 1_000_000 + 123_456_789;
        v.update(c.scale(), tsc, c.system_time_at(tsc), true);
        let info = v.info();
        assert_eq!(info.flags, XEN_PVCLOCK_TSC_STABLE);
        for later in [0u64, 1, 3_000, 3_000_000_000, 3_000_000_000 * 3600] {
            let g = VcpuClock::guest_read(&info, tsc + later);
            let d = c.system_time_at(tsc + later);
            assert!(g.abs_diff(d) <= 2, "+{later}: guest {g} domain {d}");
        }
    }

    #[test]
    fn write_to_leaves_even_version_and_exact_record() {
        let c = clock_3ghz();
        let mut v = VcpuClock::new();
        let area = AtomicArea::new(32);
        for round in 1..=3u32 {
            v.update(c.scale(), 42 * u64::from(round), u64::from(round), true);
            v.write_to(&area).unwrap();
            let got = VcpuTimeInfo::from_bytes(&area.snapshot()).unwrap();
            assert_eq!(got.version, 2 * round);
            assert_eq!(got, v.info());
            assert_eq!(got.tsc_timestamp, 42 * u64::from(round));
        }
    }

    #[test]
    fn sink_smaller_than_record_is_an_error_not_a_panic() {
        let mut v = VcpuClock::new();
        assert!(matches!(
            v.write_to(&AtomicArea::new(16)),
            Err(TimeError::OutOfArea { .. })
        ));
    }

    #[test]
    fn concurrent_reader_never_sees_a_torn_record() {
        // Writer publishes records whose fields are all derived from one counter; a reader
        // following the version protocol must only ever accept self-consistent records.
        let area = Arc::new(AtomicArea::new(32));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (area, done) = (area.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut accepted, mut retried) = (0u64, 0u64);
                // Keep reading until the writer is done *and* one record was accepted: a
                // loaded host may not schedule this thread before the writer finishes, and
                // the final record, no longer changing, must then be accepted.
                while !(done.load(Ordering::Acquire) && accepted > 0) {
                    let v0 = area.load_u32(0);
                    fence(Ordering::SeqCst);
                    let bytes = area.snapshot();
                    fence(Ordering::SeqCst);
                    let v1 = area.load_u32(0);
                    if !v0.is_multiple_of(2) || v0 != v1 {
                        retried += 1;
                        continue;
                    }
                    let r = VcpuTimeInfo::from_bytes(&bytes).unwrap();
                    let n = r.tsc_timestamp;
                    assert_eq!(r.system_time, n.wrapping_mul(3), "torn: {r:?}");
                    assert_eq!(
                        u64::from(r.tsc_to_system_mul),
                        n & 0xffff_ffff,
                        "torn: {r:?}"
                    );
                    accepted += 1;
                }
                (accepted, retried)
            })
        };
        let mut v = VcpuClock::new();
        for n in 0..200_000u64 {
            v.update(
                TimeScale {
                    mul: n as u32,
                    shift: 0,
                },
                n,
                n.wrapping_mul(3),
                false,
            );
            v.write_to(&*area).unwrap();
        }
        done.store(true, Ordering::Release);
        let (accepted, retried) = reader.join().unwrap();
        println!("reader accepted {accepted} records, retried {retried}");
        assert!(accepted > 0);
    }

    #[test]
    fn wallclock_lands_at_shared_info_offsets_with_even_version() {
        let mut c = clock_3ghz();
        let area = AtomicArea::new(core::mem::size_of::<SharedInfo>());
        c.write_wallclock(&area).unwrap();
        c.write_wallclock(&area).unwrap();
        let si = SharedInfo::from_bytes(&area.snapshot()).unwrap();
        assert_eq!(si.wc_version, 4);
        assert_eq!(si.wc_sec, 0x2345_6789);
        assert_eq!(si.wc_sec_hi, 1);
        assert_eq!(si.wc_nsec, 999_999_999);
    }

    #[test]
    fn host_clock_helpers_are_sane() {
        let wall = Wallclock::from_ns(1_700_000_000_123_456_789);
        assert_eq!(wall.sec, 1_700_000_000);
        assert_eq!(wall.nsec, 123_456_789);
        let a = rdtsc();
        let b = rdtsc();
        assert!(b >= a);
        assert!(realtime_ns() > 1_500_000_000 * 1_000_000_000);
        let c = DomainClock::start(2_000_000, 0).unwrap();
        let t0 = c.now();
        let t1 = c.now();
        assert!(t1 >= t0);
        assert!(DomainClock::start(0, 0).is_err());
    }

    #[test]
    fn calibration_agrees_with_itself_within_ten_percent() {
        let a = calibrate_tsc_khz(Duration::from_millis(50)).unwrap();
        let b = calibrate_tsc_khz(Duration::from_millis(50)).unwrap();
        println!("calibrated TSC: {a} kHz, {b} kHz");
        assert!(a.abs_diff(b) < a / 10 + 1, "{a} vs {b}");
    }
}
