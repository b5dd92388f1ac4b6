//! [`DomainTime`]: the domain-wide time state hypercall handlers and the run loop call into.
//! Each method is one hypercall (or run-loop event) and returns what the guest gets in `rax`.

use super::sink::{GpaSink, VirtSink};
use super::thread::TimerThread;
use super::*;
use crate::memory::{GuestRam, GuestVirt};
use std::sync::{Mutex, MutexGuard};
use xen_abi::shared_info::{vcpu_info_offset, SharedInfo, TIME_OFFSET};

/// One `vcpu_op(cmd, target, arg)` call as the handler decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuOpCall {
    /// The calling vCPU.
    pub caller: u32,
    /// `VCPUOP_*`.
    pub cmd: u32,
    /// The vCPU operated on (`vcpuid`, already checked to fit `u32`).
    pub target: u32,
    /// Guest-virtual argument pointer.
    pub arg: u64,
    /// The domain's `vm_assist(VMASST_TYPE_runstate_update_flag)`.
    pub runstate_update_flag: bool,
}

/// Time state of a whole domain.
#[derive(Debug)]
pub struct DomainTime {
    clock: Mutex<DomainClock>,
    vcpus: Vec<Mutex<VcpuTime>>,
    shared_info_gpa: u64,
    timers: Mutex<Option<TimerThread>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DomainTime {
    /// Time for `nr_vcpus` vCPUs (vCPU 0 running, the others offline), shared_info at
    /// guest-physical `shared_info_gpa`.
    pub fn new(clock: DomainClock, nr_vcpus: usize, shared_info_gpa: u64) -> Self {
        let now = clock.now();
        let vcpus = (0..nr_vcpus)
            .map(|i| {
                let state = if i == 0 {
                    RunState::Running
                } else {
                    RunState::Offline
                };
                Mutex::new(VcpuTime::new(state, now))
            })
            .collect();
        Self {
            clock: Mutex::new(clock),
            vcpus,
            shared_info_gpa,
            timers: Mutex::new(None),
        }
    }

    /// Start the host timer thread; `kick(vcpu)` must make that vCPU's run loop call
    /// [`Self::service_timers`] soon (e.g. `Vcpu` kick / immediate exit).
    pub fn start_timer_thread(
        &self,
        kick: impl Fn(usize) + Send + 'static,
    ) -> Result<(), TimeError> {
        *lock(&self.timers) = Some(TimerThread::spawn(self.vcpus.len(), kick)?);
        Ok(())
    }

    /// Stop the host timer thread and wait for it (no callback runs after this returns).
    /// Must not be called from the timer callback itself.
    pub fn stop_timer_thread(&self) {
        let t = lock(&self.timers).take();
        if let Some(t) = t {
            t.stop();
        }
    }

    /// The earliest armed deadline of `vcpu` (system time, ns), if any.
    pub fn next_deadline(&self, vcpu: u32) -> Option<u64> {
        self.vcpu(vcpu)?.timers.next_deadline()
    }

    /// System time now.
    pub fn now(&self) -> u64 {
        lock(&self.clock).now()
    }

    /// The domain clock.
    pub fn clock(&self) -> DomainClock {
        *lock(&self.clock)
    }

    fn vcpu(&self, id: u32) -> Option<MutexGuard<'_, VcpuTime>> {
        self.vcpus.get(id as usize).map(lock)
    }

    fn time_sink<'a>(&self, ram: &'a GuestRam, vcpu: u32) -> Result<GpaSink<'a>, TimeError> {
        let off = vcpu_info_offset(vcpu as usize).ok_or(TimeError::BadGpa(u64::MAX))?;
        let gpa = self
            .shared_info_gpa
            .checked_add((off + TIME_OFFSET) as u64)
            .ok_or(TimeError::BadGpa(self.shared_info_gpa))?;
        GpaSink::new(ram, gpa, TIME_INFO_SIZE)
    }

    /// Start of day: wallclock into shared_info and every vCPU's `vcpu_info.time`
    /// (the builder or `Domain::create` calls this once the shared_info frame exists).
    pub fn init_shared_info(&self, ram: &GuestRam) -> Result<(), TimeError> {
        let si = GpaSink::new(
            ram,
            self.shared_info_gpa,
            core::mem::size_of::<SharedInfo>(),
        )?;
        lock(&self.clock).write_wallclock(&si)?;
        for id in 0..self.vcpus.len().min(32) {
            self.update_vcpu_time(ram, None, id as u32)?;
        }
        Ok(())
    }

    /// Refresh and publish `vcpu`'s time record (`vcpu_info.time`, and the registered
    /// secondary area when `virt` — the vCPU's current page tables — is given). Call before
    /// entering the guest after a block, after timer events, and at least every second or so.
    pub fn update_vcpu_time(
        &self,
        ram: &GuestRam,
        virt: Option<GuestVirt<'_>>,
        vcpu: u32,
    ) -> Result<(), TimeError> {
        let sink = self.time_sink(ram, vcpu)?;
        self.publish_to(ram, virt, vcpu, sink)
    }

    /// [`Self::update_vcpu_time`] with `vcpu_info` at guest-physical `vcpu_info_gpa` (where
    /// `VCPUOP_register_vcpu_info` moved it).
    pub fn update_vcpu_time_at(
        &self,
        ram: &GuestRam,
        virt: Option<GuestVirt<'_>>,
        vcpu: u32,
        vcpu_info_gpa: u64,
    ) -> Result<(), TimeError> {
        let gpa = vcpu_info_gpa
            .checked_add(TIME_OFFSET as u64)
            .ok_or(TimeError::BadGpa(vcpu_info_gpa))?;
        let sink = GpaSink::new(ram, gpa, TIME_INFO_SIZE)?;
        self.publish_to(ram, virt, vcpu, sink)
    }

    fn publish_to(
        &self,
        ram: &GuestRam,
        virt: Option<GuestVirt<'_>>,
        vcpu: u32,
        sink: GpaSink<'_>,
    ) -> Result<(), TimeError> {
        let clock = self.clock();
        let Some(mut v) = self.vcpu(vcpu) else {
            return Err(TimeError::BadGpa(u64::MAX));
        };
        let area = v.time_area;
        match (area, virt) {
            (Some(va), Some(virt)) => {
                let s = VirtSink::new(ram, virt, va, TIME_INFO_SIZE);
                v.publish(&clock, &sink, Some(&s))
            }
            _ => v.publish(&clock, &sink, None),
        }
    }

    fn rearm(&self, vcpu: u32, v: &VcpuTime) {
        if let Some(t) = lock(&self.timers).as_ref() {
            let clock = self.clock();
            t.arm(
                vcpu as usize,
                v.timers.next_deadline().map(|d| clock.host_monotonic_at(d)),
            );
        }
    }

    /// `set_timer_op(timeout)` from `vcpu`.
    pub fn set_timer_op(&self, vcpu: u32, timeout: u64) -> i64 {
        let now = self.now();
        match self.vcpu(vcpu) {
            Some(mut v) => {
                let r = v.set_timer_op(timeout, now);
                self.rearm(vcpu, &v);
                r
            }
            None => Errno::EINVAL.as_i64(),
        }
    }

    /// The time-related `vcpu_op(cmd, target, arg)` sub-ops called by `caller` through page
    /// tables `virt`; `None` if `cmd` is not one of them (the handler deals with it).
    /// `runstate_update_flag` is the caller's `vm_assist(VMASST_TYPE_runstate_update_flag)`.
    pub fn vcpu_op(&self, ram: &GuestRam, virt: GuestVirt<'_>, op: VcpuOpCall) -> Option<i64> {
        let VcpuOpCall {
            caller,
            cmd,
            target,
            arg,
            runstate_update_flag,
        } = op;
        let fault = Errno::EFAULT.as_i64();
        let ok = |r: Result<(), Errno>| r.map_or_else(|e| e.as_i64(), |()| 0);
        let is_time_op = matches!(
            cmd,
            VCPUOP_GET_RUNSTATE_INFO
                | VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA
                | VCPUOP_SET_PERIODIC_TIMER
                | VCPUOP_STOP_PERIODIC_TIMER
                | VCPUOP_SET_SINGLESHOT_TIMER
                | VCPUOP_STOP_SINGLESHOT_TIMER
                | VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA
        );
        if !is_time_op {
            return None;
        }
        // xen: common/domain.c do_vcpu_op: unknown vCPU → -ENOENT.
        if target as usize >= self.vcpus.len() {
            return Some(Errno::ENOENT.as_i64());
        }
        let now = self.now();
        let read_u64 = |va: u64| -> Result<u64, i64> {
            let mut b = [0u8; 8];
            virt.copy_from_guest(va, &mut b).map_err(|_| fault)?;
            Ok(u64::from_le_bytes(b))
        };
        let r = match cmd {
            VCPUOP_SET_SINGLESHOT_TIMER => {
                // xen: only on the calling vCPU.
                if target != caller {
                    return Some(Errno::EINVAL.as_i64());
                }
                let mut b = [0u8; SINGLESHOT_ARG_SIZE];
                if virt.copy_from_guest(arg, &mut b).is_err() {
                    return Some(fault);
                }
                let mut v = self.vcpu(target)?;
                let r = ok(v.set_singleshot(&b, now));
                self.rearm(target, &v);
                r
            }
            VCPUOP_STOP_SINGLESHOT_TIMER => {
                if target != caller {
                    return Some(Errno::EINVAL.as_i64());
                }
                let mut v = self.vcpu(target)?;
                v.timers.stop_singleshot();
                self.rearm(target, &v);
                0
            }
            VCPUOP_SET_PERIODIC_TIMER => match read_u64(arg) {
                Ok(p) => {
                    let mut v = self.vcpu(target)?;
                    let r = ok(v.set_periodic(p, now));
                    self.rearm(target, &v);
                    r
                }
                Err(e) => e,
            },
            VCPUOP_STOP_PERIODIC_TIMER => {
                let mut v = self.vcpu(target)?;
                v.timers.stop_periodic();
                self.rearm(target, &v);
                0
            }
            VCPUOP_GET_RUNSTATE_INFO => {
                let r = self.vcpu(target)?.runstate.snapshot(now);
                match virt.copy_to_guest(arg, &r.to_bytes()) {
                    Ok(()) => 0,
                    Err(_) => fault,
                }
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => match read_u64(arg) {
                Ok(va) => {
                    let mut v = self.vcpu(target)?;
                    v.register_runstate_area(va);
                    if va != 0 {
                        // xen: the area is filled at once (the caller's own record is its
                        // live state; another vCPU's is a snapshot); failures are ignored.
                        let info = if target == caller {
                            v.runstate.info()
                        } else {
                            v.runstate.snapshot(now)
                        };
                        let sink = VirtSink::new(ram, virt, va, RUNSTATE_INFO_SIZE);
                        let _ = super::runstate::write_info(info, &sink, runstate_update_flag);
                    }
                    0
                }
                Err(e) => e,
            },
            VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA => match read_u64(arg) {
                Ok(va) => {
                    self.vcpu(target)?.register_time_area(va);
                    // xen: force_update_vcpu_system_time; the secondary copy goes through the
                    // caller's page tables.
                    let _ = self.update_vcpu_time(ram, Some(virt), target);
                    0
                }
                Err(e) => e,
            },
            _ => return None,
        };
        Some(r)
    }

    /// `SCHEDOP_block` on `vcpu`: mark it blocked and return how long the run loop may wait
    /// for an event (`None`: no timer, wait for an event only). The handler unmasks events
    /// first (as today), waits (event, kick or this timeout), then calls [`Self::wake`].
    pub fn block(&self, vcpu: u32) -> Option<std::time::Duration> {
        let now = self.now();
        let mut v = self.vcpu(vcpu)?;
        v.block(now);
        v.timers.wait_from(now)
    }

    /// `vcpu` runs again: back to running, timers expired; `true` = raise `VIRQ_TIMER`.
    pub fn wake(&self, vcpu: u32) -> bool {
        let now = self.now();
        let Some(mut v) = self.vcpu(vcpu) else {
            return false;
        };
        let fired = v.wake(now);
        self.rearm(vcpu, &v);
        fired
    }

    /// Run loop, after a timer kick (or on any exit): expire `vcpu`'s timers and re-arm the
    /// host thread; `true` = raise `VIRQ_TIMER` (then refresh the time record).
    pub fn service_timers(&self, vcpu: u32) -> bool {
        let now = self.now();
        let Some(mut v) = self.vcpu(vcpu) else {
            return false;
        };
        let fired = v.timers.expire(now);
        self.rearm(vcpu, &v);
        fired
    }

    /// Rewrite `vcpu`'s registered runstate area (if any) with its current record, through
    /// `virt` (xen: update_runstate_area at every context switch, so a blocked vCPU's area
    /// says blocked and a woken one's counts the time it spent blocked).
    pub fn write_runstate_area(&self, ram: &GuestRam, virt: GuestVirt<'_>, vcpu: u32) {
        if let Some(v) = self.vcpu(vcpu) {
            write_area(&v, ram, virt, false);
        }
    }

    /// Record a runstate change of `vcpu` (e.g. `VCPUOP_up` → running, `VCPUOP_down` →
    /// offline) and rewrite its registered area through `virt`.
    pub fn set_runstate(
        &self,
        ram: &GuestRam,
        virt: Option<GuestVirt<'_>>,
        vcpu: u32,
        state: RunState,
        runstate_update_flag: bool,
    ) {
        let now = self.now();
        if let Some(mut v) = self.vcpu(vcpu) {
            v.runstate.change(state, now);
            if let Some(virt) = virt {
                write_area(&v, ram, virt, runstate_update_flag);
            }
        }
    }
}

/// Write `v`'s runstate record into its registered area (if any) through `virt`; a guest
/// that unmapped its area simply gets no update.
fn write_area(v: &VcpuTime, ram: &GuestRam, virt: GuestVirt<'_>, runstate_update_flag: bool) {
    if let Some(va) = v.runstate_area {
        let sink = VirtSink::new(ram, virt, va, RUNSTATE_INFO_SIZE);
        let _ = v.runstate.write_to(&sink, runstate_update_flag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use xen_abi::arch::Pod;
    use xen_abi::shared_info::VcpuTimeInfo;

    const VA: u64 = 0x40_0000;
    const DATA_PFN: u64 = 5;

    /// 8 pages of RAM; page tables at pfn 1..=4 map VA → pfn 5 (P|RW|US), cr3 = pfn 1.
    fn ram_with_mapping() -> GuestRam {
        let ram = GuestRam::new(8).unwrap();
        let m = ram.mem();
        let e = |pfn: u64| (pfn << 12) | 0x7;
        m.write_obj(e(2), GuestAddress(0x1000)).unwrap(); // L4[0] → L3
        m.write_obj(e(3), GuestAddress(0x2000)).unwrap(); // L3[0] → L2
        m.write_obj(e(4), GuestAddress(0x3000 + 2 * 8)).unwrap(); // L2[2] → L1 (VA 4 MiB)
        m.write_obj(e(DATA_PFN), GuestAddress(0x4000)).unwrap(); // L1[0] → data
        ram
    }

    fn call(caller: u32, cmd: u32, target: u32, arg: u64, flag: bool) -> VcpuOpCall {
        VcpuOpCall {
            caller,
            cmd,
            target,
            arg,
            runstate_update_flag: flag,
        }
    }

    fn dt() -> DomainTime {
        DomainTime::new(DomainClock::start(2_500_000, 0).unwrap(), 2, 6 * 4096)
    }

    #[test]
    fn init_shared_info_writes_wallclock_and_time_records() {
        let ram = ram_with_mapping();
        let d = dt();
        d.init_shared_info(&ram).unwrap();
        let mut b = vec![0u8; core::mem::size_of::<SharedInfo>()];
        ram.mem()
            .read_slice(&mut b, GuestAddress(6 * 4096))
            .unwrap();
        let si = SharedInfo::from_bytes(&b).unwrap();
        assert_eq!(si.wc_version, 2);
        assert_eq!(
            u64::from(si.wc_sec),
            d.clock().wallclock().sec & 0xffff_ffff
        );
        for v in 0..2 {
            let t = si.vcpu_info[v].time;
            assert_eq!(t.version, 2, "vcpu {v}");
            assert_eq!(t.tsc_to_system_mul, d.clock().scale().mul);
        }
        assert_eq!(si.vcpu_info[2].time, VcpuTimeInfo::default());
    }

    #[test]
    fn vcpu_op_timers_through_guest_memory() {
        let ram = ram_with_mapping();
        let virt = GuestVirt::new(&ram, 0x1000);
        let d = dt();
        let now = d.now();
        // singleshot in the past with the future flag → -ETIME
        let mut arg = [0u8; 16];
        arg[8] = 1;
        virt.copy_to_guest(VA, &arg).unwrap();
        let r = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_SET_SINGLESHOT_TIMER, 0, VA, false),
        );
        if now > 0 {
            assert_eq!(r, Some(Errno::ETIME.as_i64()));
        }
        // on another vCPU → -EINVAL; unknown vCPU → -ENOENT; bad pointer → -EFAULT
        let other = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_SET_SINGLESHOT_TIMER, 1, VA, false),
        );
        assert_eq!(other, Some(Errno::EINVAL.as_i64()));
        let missing = d.vcpu_op(&ram, virt, call(0, VCPUOP_STOP_PERIODIC_TIMER, 7, 0, false));
        assert_eq!(missing, Some(Errno::ENOENT.as_i64()));
        let bad = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_SET_PERIODIC_TIMER, 0, 0xdead_0000, false),
        );
        assert_eq!(bad, Some(Errno::EFAULT.as_i64()));
        // period 1 ns → -EINVAL; 10 ms → armed
        virt.copy_to_guest(VA, &1u64.to_le_bytes()).unwrap();
        let r = d.vcpu_op(&ram, virt, call(0, VCPUOP_SET_PERIODIC_TIMER, 0, VA, false));
        assert_eq!(r, Some(Errno::EINVAL.as_i64()));
        virt.copy_to_guest(VA, &10_000_000u64.to_le_bytes())
            .unwrap();
        let r = d.vcpu_op(&ram, virt, call(0, VCPUOP_SET_PERIODIC_TIMER, 0, VA, false));
        assert_eq!(r, Some(0));
        let wait = d.block(0).unwrap();
        assert!(wait <= std::time::Duration::from_millis(10));
        // not a time op
        assert_eq!(d.vcpu_op(&ram, virt, call(0, 1, 0, 0, false)), None);
        assert_eq!(d.set_timer_op(0, 0), 0);
        assert_eq!(d.set_timer_op(9, 0), Errno::EINVAL.as_i64());
    }

    #[test]
    fn register_areas_fill_them_at_once() {
        let ram = ram_with_mapping();
        let virt = GuestVirt::new(&ram, 0x1000);
        let d = dt();
        // arg at VA, areas at VA+0x100 (time) and VA+0x200 (runstate)
        virt.copy_to_guest(VA, &(VA + 0x100).to_le_bytes()).unwrap();
        let r = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA, 0, VA, false),
        );
        assert_eq!(r, Some(0));
        let t: [u8; 32] = {
            let mut b = [0u8; 32];
            virt.copy_from_guest(VA + 0x100, &mut b).unwrap();
            b
        };
        let t = VcpuTimeInfo::from_bytes(&t).unwrap();
        assert_eq!(t.version, 2);
        assert_eq!(t.tsc_to_system_mul, d.clock().scale().mul);

        virt.copy_to_guest(VA, &(VA + 0x200).to_le_bytes()).unwrap();
        let r = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, VA, true),
        );
        assert_eq!(r, Some(0));
        let mut b = [0u8; 48];
        virt.copy_from_guest(VA + 0x200, &mut b).unwrap();
        let rs = RunstateInfo::from_bytes(&b).unwrap();
        assert_eq!(rs.state, RunState::Running as u32);
        assert_eq!(rs.state_entry_time & XEN_RUNSTATE_UPDATE, 0);

        // get_runstate_info of the offline vCPU 1
        let r = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_GET_RUNSTATE_INFO, 1, VA + 0x300, false),
        );
        assert_eq!(r, Some(0));
        virt.copy_from_guest(VA + 0x300, &mut b).unwrap();
        assert_eq!(
            RunstateInfo::from_bytes(&b).unwrap().state,
            RunState::Offline as u32
        );

        // an unmapped area: registration succeeds, writes are dropped (as Xen)
        virt.copy_to_guest(VA, &0x7000_0000u64.to_le_bytes())
            .unwrap();
        let r = d.vcpu_op(
            &ram,
            virt,
            call(0, VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 0, VA, true),
        );
        assert_eq!(r, Some(0));
        d.set_runstate(&ram, Some(virt), 0, RunState::Blocked, true);
    }

    #[test]
    fn timer_thread_kicks_the_vcpu_and_service_reports_virq() {
        let (tx, rx) = std::sync::mpsc::channel();
        // The real TSC rate, so host deadlines and system time agree.
        let khz =
            super::super::clock::calibrate_tsc_khz(std::time::Duration::from_millis(30)).unwrap();
        let d = DomainTime::new(DomainClock::start(khz, 0).unwrap(), 2, 6 * 4096);
        d.start_timer_thread(move |v| {
            let _ = tx.send(v);
        })
        .unwrap();
        let t = d.now() + 3_000_000;
        assert_eq!(d.set_timer_op(1, t), 0);
        let v = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("kick");
        assert_eq!(v, 1);
        // The host clock and the TSC-derived clock may differ by the kHz error: poll.
        let mut fired = false;
        for _ in 0..100 {
            if d.service_timers(1) {
                fired = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        assert!(fired);
        assert!(!d.service_timers(1));
        assert!(!d.wake(1));
    }
}
