//! pvclock arithmetic: the TSC-to-nanoseconds scale Xen publishes in `vcpu_time_info`.
//!
//! xen: arch/x86/time.c `set_time_scale` (scale from a frequency) and `scale_delta`
//! (apply it); public/xen.h documents the formula the guest uses:
//! `ns = ((tsc_delta << tsc_shift) * tsc_to_system_mul) >> 32`, a negative shift shifting
//! right.

const NS_PER_SEC: u64 = 1_000_000_000;

/// A TSC-to-ns scale: `mul` is a 0.32 fixed-point fraction, `shift` a pre-shift of the delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeScale {
    /// `tsc_to_system_mul`.
    pub mul: u32,
    /// `tsc_shift`.
    pub shift: i8,
}

impl TimeScale {
    /// The scale Xen computes for a TSC running at `khz` kHz; `None` for 0.
    pub fn from_tsc_khz(khz: u32) -> Option<Self> {
        Self::from_hz(u64::from(khz) * 1000)
    }

    /// The scale for a counter ticking `hz` times a second; `None` for 0.
    ///
    /// xen: arch/x86/time.c `set_time_scale`: halve the rate (shift--) until it is at most
    /// 2e9, then double it (shift++) while it is at most 1e9, so that 1e9 < rate <= 2e9;
    /// `mul = (1e9 << 32) / rate`, which is in `[2^31, 2^32)`.
    pub fn from_hz(hz: u64) -> Option<Self> {
        if hz == 0 {
            return None;
        }
        let mut rate = hz;
        let mut shift: i8 = 0;
        while rate > 2 * NS_PER_SEC {
            rate >>= 1;
            shift -= 1;
        }
        // Now 1 <= rate <= 2e9 < 2^32; at most 30 doublings reach above 1e9.
        while rate <= NS_PER_SEC {
            rate <<= 1;
            shift += 1;
        }
        // xen: div_frac(1e9, rate): the fraction 1e9/rate in 0.32 fixed point (truncated).
        let mul = (NS_PER_SEC << 32) / rate;
        Some(Self {
            mul: u32::try_from(mul).ok()?,
            shift,
        })
    }

    /// Ticks per second this scale stands for (approximately; inverse of [`Self::from_hz`]).
    pub fn approx_hz(&self) -> u64 {
        if self.mul == 0 {
            return 0;
        }
        let rate = (u128::from(NS_PER_SEC) << 32) / u128::from(self.mul);
        let rate = rate as u64; // < 2^33 since mul >= 2^31 for scales from `from_hz`
        if self.shift >= 0 {
            rate >> self.shift.min(63)
        } else {
            rate.checked_shl(u32::from(self.shift.unsigned_abs()))
                .unwrap_or(u64::MAX)
        }
    }
}

/// Nanoseconds for `delta` ticks, exactly as Xen and the guest compute it: the pre-shift is
/// done in 64 bits (a left shift loses the top bits, as in C), the multiply in 128 bits.
pub fn scale_delta(delta: u64, scale: TimeScale) -> u64 {
    let d = if scale.shift < 0 {
        delta
            .checked_shr(u32::from(scale.shift.unsigned_abs()))
            .unwrap_or(0)
    } else {
        delta.checked_shl(scale.shift as u32).unwrap_or(0)
    };
    ((u128::from(d) * u128::from(scale.mul)) >> 32) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Exact ns for `delta` ticks at `hz`, rounded down, in 128 bits.
    fn reference_ns(delta: u64, hz: u64) -> u128 {
        u128::from(delta) * u128::from(NS_PER_SEC) / u128::from(hz)
    }

    /// Allowed error: 1 ns per elapsed second, plus 2 ns for the truncations.
    fn check(delta: u64, khz: u32) {
        let hz = u64::from(khz) * 1000;
        let s = TimeScale::from_tsc_khz(khz).unwrap();
        let got = u128::from(scale_delta(delta, s));
        let want = reference_ns(delta, hz);
        let tolerance = want / u128::from(NS_PER_SEC) + 2;
        let err = got.abs_diff(want);
        assert!(
            err <= tolerance,
            "khz {khz} delta {delta}: got {got} want {want} (err {err} > {tolerance})"
        );
    }

    #[test]
    fn scale_matches_xen_for_known_frequencies() {
        // 2 GHz: rate 2e9 fits as is (not > 2e9), shift 0, mul = 2^32 / 2.
        assert_eq!(
            TimeScale::from_tsc_khz(2_000_000),
            Some(TimeScale {
                mul: 0x8000_0000,
                shift: 0
            })
        );
        // 1 GHz: 1e9 is not > 1e9 after zero doublings? it is <= 1e9, so doubled once:
        // rate 2e9, shift 1, mul 2^31.
        assert_eq!(
            TimeScale::from_tsc_khz(1_000_000),
            Some(TimeScale {
                mul: 0x8000_0000,
                shift: 1
            })
        );
        // 3 GHz: halved once to 1.5e9, shift -1, mul = (1e9 << 32) / 1.5e9.
        let s = TimeScale::from_tsc_khz(3_000_000).unwrap();
        assert_eq!(s.shift, -1);
        assert_eq!(u64::from(s.mul), (NS_PER_SEC << 32) / 1_500_000_000);
        // 5 GHz: halved twice to 1.25e9.
        let s = TimeScale::from_tsc_khz(5_000_000).unwrap();
        assert_eq!(s.shift, -2);
        assert_eq!(u64::from(s.mul), (NS_PER_SEC << 32) / 1_250_000_000);
        assert_eq!(TimeScale::from_tsc_khz(0), None);
    }

    #[test]
    fn every_scale_is_normalised() {
        for khz in [
            1u32, 7, 999, 1_000, 32_768, 999_999, 1_000_000, 1_000_001, 2_000_001,
        ]
        .into_iter()
        .chain([2_893_437, 3_600_000, 4_999_999, 5_000_000, u32::MAX])
        {
            let s = TimeScale::from_tsc_khz(khz).unwrap();
            assert!(s.mul >= 0x8000_0000, "khz {khz}: mul {:#x}", s.mul);
            let back = s.approx_hz();
            let hz = u64::from(khz) * 1000;
            assert!(back.abs_diff(hz) <= hz / 1_000_000 + 2, "khz {khz}: {back}");
        }
    }

    #[test]
    fn one_second_of_ticks_is_one_second() {
        for khz in [
            1_000_000u32,
            1_234_567,
            2_000_000,
            2_893_437,
            3_000_000,
            4_999_999,
            5_000_000,
        ] {
            let ns = scale_delta(u64::from(khz) * 1000, TimeScale::from_tsc_khz(khz).unwrap());
            assert!(ns.abs_diff(NS_PER_SEC) <= 2, "khz {khz}: {ns}");
        }
    }

    #[test]
    fn zero_delta_is_zero_and_huge_deltas_do_not_panic() {
        let s = TimeScale::from_tsc_khz(2_500_000).unwrap();
        assert_eq!(scale_delta(0, s), 0);
        let _ = scale_delta(u64::MAX, s);
        let _ = scale_delta(u64::MAX, TimeScale::from_tsc_khz(1).unwrap());
        let _ = scale_delta(
            u64::MAX,
            TimeScale {
                mul: u32::MAX,
                shift: 127,
            },
        );
        let _ = scale_delta(
            u64::MAX,
            TimeScale {
                mul: u32::MAX,
                shift: -128,
            },
        );
        let _ = TimeScale {
            mul: 1,
            shift: -128,
        }
        .approx_hz();
        let _ = TimeScale { mul: 0, shift: 0 }.approx_hz();
    }

    proptest! {
        #[test]
        fn scale_delta_within_1ns_per_second_of_128bit_reference(
            khz in 1_000_000u32..=5_000_000,
            // up to ~1 hour at 5 GHz: left/right pre-shifts stay exact in 64 bits
            delta in 0u64..(1u64 << 44),
        ) {
            check(delta, khz);
        }

        #[test]
        fn scale_delta_small_deltas_odd_frequencies(
            khz in prop::sample::select(vec![1_000_003u32, 1_999_999, 2_000_001, 2_399_999,
                                             3_333_333, 4_194_304, 4_999_999]),
            delta in 0u64..10_000_000,
        ) {
            check(delta, khz);
        }
    }
}
