//! vCPU runstate accounting and the guest's runstate area
//! (xen: public/vcpu.h `struct vcpu_runstate_info`, `RUNSTATE_*`,
//! `VCPUOP_register_runstate_memory_area`; common/sched/core.c `vcpu_runstate_change`,
//! `vcpu_runstate_get`; x86 `update_runstate_area` for the `XEN_RUNSTATE_UPDATE` protocol).

use super::sink::TimeInfoSink;
use super::TimeError;
use core::mem::{offset_of, size_of};
use std::sync::atomic::{fence, Ordering};

/// `XEN_RUNSTATE_UPDATE`: set in `state_entry_time` while Xen rewrites the area (only with
/// `vm_assist(VMASST_TYPE_runstate_update_flag)`) (xen: public/vcpu.h).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `RUNSTATE_*`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// `RUNSTATE_running`: on a physical CPU.
    Running = 0,
    /// `RUNSTATE_runnable`: runnable, not scheduled.
    Runnable = 1,
    /// `RUNSTATE_blocked`: blocked (idle).
    Blocked = 2,
    /// `RUNSTATE_offline`: not runnable, not blocked (down, paused).
    Offline = 3,
}

impl RunState {
    const fn index(self) -> usize {
        self as usize
    }
}

/// `struct vcpu_runstate_info` on x86_64 (48 bytes; `state` is an `int`, padded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunstateInfo {
    /// `RUNSTATE_*`.
    pub state: u32,
    /// Padding after the `int`.
    pub pad: u32,
    /// System time (ns) the current state was entered; bit 63 = `XEN_RUNSTATE_UPDATE`.
    pub state_entry_time: u64,
    /// ns spent in each state.
    pub time: [u64; 4],
}
const _: () = assert!(size_of::<RunstateInfo>() == 48);
const _: () = assert!(offset_of!(RunstateInfo, state_entry_time) == 8);
const _: () = assert!(offset_of!(RunstateInfo, time) == 16);

/// Offset of `state_entry_time`.
pub const STATE_ENTRY_TIME_OFFSET: usize = offset_of!(RunstateInfo, state_entry_time);

impl RunstateInfo {
    /// The little-endian bytes the guest sees.
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..4].copy_from_slice(&self.state.to_le_bytes());
        b[4..8].copy_from_slice(&self.pad.to_le_bytes());
        b[8..16].copy_from_slice(&self.state_entry_time.to_le_bytes());
        for (i, t) in self.time.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    /// Parse the guest's bytes (`None` unless 48 bytes).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 48 {
            return None;
        }
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[0..4]);
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[4..8]);
        Some(Self {
            state: u32::from_le_bytes(s),
            pad: u32::from_le_bytes(p),
            state_entry_time: u64_at(8),
            time: [u64_at(16), u64_at(24), u64_at(32), u64_at(40)],
        })
    }
}

/// One vCPU's runstate accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runstate {
    state: RunState,
    entry: u64,
    time: [u64; 4],
}

impl Runstate {
    /// Start in `state` at system time `now`.
    pub fn new(state: RunState, now: u64) -> Self {
        Self {
            state,
            entry: now,
            time: [0; 4],
        }
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Enter `new` at `now`: the time since the last change is charged to the old state
    /// (nothing if `now` is not later, as Xen's `delta > 0` test) (xen:
    /// `vcpu_runstate_change`).
    pub fn change(&mut self, new: RunState, now: u64) {
        if now > self.entry {
            let d = now - self.entry;
            let slot = &mut self.time[self.state.index()];
            *slot = slot.saturating_add(d);
            self.entry = now;
        }
        self.state = new;
    }

    /// The record as stored (the current state's time up to its entry only).
    pub fn info(&self) -> RunstateInfo {
        RunstateInfo {
            state: self.state as u32,
            pad: 0,
            state_entry_time: self.entry,
            time: self.time,
        }
    }

    /// `VCPUOP_get_runstate_info`: the record with the current state's time counted up to
    /// `now` (xen: `vcpu_runstate_get`).
    pub fn snapshot(&self, now: u64) -> RunstateInfo {
        let mut r = self.info();
        let slot = &mut r.time[self.state.index()];
        *slot = slot.saturating_add(now.saturating_sub(self.entry));
        r
    }

    /// Write the record to the guest's registered area. With `update_flag`
    /// (`vm_assist(runstate_update_flag)` on): store `state_entry_time | XEN_RUNSTATE_UPDATE`,
    /// fence, the whole record (flag still set), fence, `state_entry_time` without the flag.
    pub fn write_to(&self, sink: &impl TimeInfoSink, update_flag: bool) -> Result<(), TimeError> {
        write_info(self.info(), sink, update_flag)
    }
}

/// Write `r` to a runstate area with the `XEN_RUNSTATE_UPDATE` protocol when `update_flag`
/// (see [`Runstate::write_to`]).
pub fn write_info(
    mut r: RunstateInfo,
    sink: &impl TimeInfoSink,
    update_flag: bool,
) -> Result<(), TimeError> {
    {
        if update_flag {
            r.state_entry_time |= XEN_RUNSTATE_UPDATE;
            sink.store_u64(STATE_ENTRY_TIME_OFFSET, r.state_entry_time)?;
            fence(Ordering::SeqCst);
        }
        sink.write(0, &r.to_bytes())?;
        if update_flag {
            fence(Ordering::SeqCst);
            r.state_entry_time &= !XEN_RUNSTATE_UPDATE;
            sink.store_u64(STATE_ENTRY_TIME_OFFSET, r.state_entry_time)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sink::{AtomicArea, TimeInfoSink};
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn layout_matches_vcpu_h() {
        let r = RunstateInfo {
            state: 2,
            pad: 0,
            state_entry_time: 0x1122,
            time: [1, 2, 3, 4],
        };
        let b = r.to_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(b[8], 0x22);
        assert_eq!(b[16], 1);
        assert_eq!(b[40], 4);
        assert_eq!(RunstateInfo::from_bytes(&b), Some(r));
        assert_eq!(RunstateInfo::from_bytes(&b[..47]), None);
    }

    #[test]
    fn state_times_accumulate_and_sum_to_elapsed() {
        let mut r = Runstate::new(RunState::Offline, 0);
        r.change(RunState::Running, 10);
        r.change(RunState::Blocked, 25);
        r.change(RunState::Runnable, 100);
        r.change(RunState::Running, 101);
        let i = r.info();
        assert_eq!(i.time, [15, 1, 75, 10]);
        assert_eq!(i.state, RunState::Running as u32);
        assert_eq!(i.state_entry_time, 101);
        let s = r.snapshot(150);
        assert_eq!(s.time, [64, 1, 75, 10]);
        assert_eq!(s.time.iter().sum::<u64>(), 150, "sum equals system time");
        assert_eq!(r.info().time[0], 15, "snapshot does not mutate");
    }

    #[test]
    fn time_going_backwards_charges_nothing() {
        let mut r = Runstate::new(RunState::Running, 100);
        r.change(RunState::Blocked, 50);
        assert_eq!(r.info().time, [0; 4]);
        assert_eq!(r.info().state_entry_time, 100);
        assert_eq!(r.snapshot(0).time, [0; 4]);
        let mut r = Runstate::new(RunState::Running, 0);
        r.change(RunState::Running, u64::MAX);
        r.change(RunState::Running, u64::MAX);
        assert_eq!(r.snapshot(u64::MAX).time[0], u64::MAX);
    }

    /// Records every operation in order.
    #[derive(Default)]
    struct Log(RefCell<Vec<(usize, Vec<u8>)>>);
    impl TimeInfoSink for Log {
        fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
            self.0.borrow_mut().push((offset, bytes.to_vec()));
            Ok(())
        }
        fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError> {
            self.write(offset, &v.to_le_bytes())
        }
        fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError> {
            self.write(offset, &v.to_le_bytes())
        }
    }

    #[test]
    fn update_flag_protocol_sets_flag_before_and_clears_after() {
        let r = Runstate::new(RunState::Running, 77);
        let log = Log::default();
        r.write_to(&log, true).unwrap();
        let ops = log.0.into_inner();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[0],
            (8, (77 | XEN_RUNSTATE_UPDATE).to_le_bytes().to_vec())
        );
        let whole = RunstateInfo::from_bytes(&ops[1].1).unwrap();
        assert_eq!(ops[1].0, 0);
        assert_eq!(whole.state_entry_time, 77 | XEN_RUNSTATE_UPDATE);
        assert_eq!(ops[2], (8, 77u64.to_le_bytes().to_vec()));

        let log = Log::default();
        r.write_to(&log, false).unwrap();
        let ops = log.0.into_inner();
        assert_eq!(ops.len(), 1, "without the assist: one plain copy");
        assert_eq!(RunstateInfo::from_bytes(&ops[0].1).unwrap(), r.info());
    }

    #[test]
    fn final_area_content_has_no_update_flag() {
        let mut r = Runstate::new(RunState::Runnable, 5);
        r.change(RunState::Running, 9);
        let area = AtomicArea::new(48);
        r.write_to(&area, true).unwrap();
        let got = RunstateInfo::from_bytes(&area.snapshot()).unwrap();
        assert_eq!(got, r.info());
        assert!(r.write_to(&AtomicArea::new(40), true).is_err());
    }
}
