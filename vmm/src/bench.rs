//! `kxen bench`: the round-trip cost of kxen's guest-visible operations, next to floors
//! measured in the same run.
//!
//! | name | what one operation is | how |
//! |---|---|---|
//! | `hypercall` | `xen_version(XENVER_version)` from the bench guest through kxen's full hypercall path | bench guest, rdtsc around the loop |
//! | `exception` | `int3` in the bench guest, bounced by kxen to its trap handler, `iret` hypercall back | bench guest, rdtsc around the loop |
//! | `exit` (floor) | a bare KVM userspace exit: `out` to an unused port from ring-0 code, `KVM_RUN` again | ring-0 code, rdtsc around the loop |
//! | `syscall` | `syscall` from ring 0 to an LSTAR handler in the VM and back by `jmp *%rcx`, no exit to the VMM (a `sysretq` loop cannot run on PVM hosts: [`sysret_probe`]) | ring-0 code, rdtsc around the loop |
//!
//! Breakdown phases (same run, see docs/performance.md) time the pieces: `syscall` from
//! CPL3, kxen's syscall and `int3` round trips without a handler, MMIO exits from ring 0
//! and CPL3, with and without `return_to_guest`, in-kernel `cpuid` exits, and a bare
//! `mmuext_op(TLB_FLUSH_LOCAL)` from the bench guest (a hypercall plus kxen's ring-0 CR3
//! reload exit, the one its PTE replay uses) and `mmu_update` batches of 512 requests
//! that rewrite one entry (one replayed entry per batch instead of 512).
//!
//! PV memory ([`PV_MEMORY`], same run, in the bench guest): PTE updates per second through
//! `mmu_update` batches of 1, 32 and 512 requests and through writable-page-table stores
//! (a guest `mov` into one of its own L1 entries, emulated by kxen's ptwr path), each as ns
//! per PTE update, updates per second and the ratio to the floor.
//!
//! Events and time ([`EVENTS`], same run, in the bench guest, which brings up a second
//! vCPU for it): event-channel send-to-upcall latency on the sending vCPU itself
//! (`evtchn_self`) and to another vCPU blocked in `SCHEDOP_block` (`evtchn_ipi`), per
//! operation and as a ratio to the floor; and timer wakeup lateness ([`TimerWakeup`]:
//! singleshot timers 1 ms ahead, `SCHEDOP_block`, pvclock read in the `VIRQ_TIMER` upcall).
//!
//! Every loop is timed by the guest's own TSC (`rdtsc` before and after N operations);
//! cycles are converted to ns with KVM's TSC frequency (`KVM_GET_TSC_KHZ`). Ring-0 phases
//! run [`ROUNDS`] interleaved rounds (median kept, ratio = median of per-round ratios);
//! their host wall time is in the JSON as a cross-check. Ratios are to the `exit` floor.
//! Numbers are printed, never asserted.
//!
//! The ring-0 phases use a tiny VM of their own (hand-assembled code, page tables built
//! here); the guest phases boot the embedded bench guest ([`BENCH_GUEST`]) like any PV
//! kernel.

use std::fmt;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use serde::Serialize;
use thiserror::Error;
use tracing::debug;
use vm_memory::{Bytes, GuestAddress};
use xen_abi::sched::ShutdownReason;

use crate::launch::{Domain, LaunchSpec};
use crate::memory::PAGE_SIZE;
use crate::vcpu::{PvEntry, VcpuError, VcpuExit, Vm, VmError};

/// The bench guest's ELF image (resources/guests/bench.rs, built by vmm/build.rs).
pub static BENCH_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.elf"));

/// Errors running the benchmark.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Creating the VM failed.
    #[error("VM: {0}")]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error("vCPU: {0}")]
    Vcpu(#[from] VcpuError),
    /// Guest memory could not be written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// KVM's TSC frequency could not be read.
    #[error("KVM_GET_TSC_KHZ: {0}")]
    TscKhz(kvm_ioctls::Error),
    /// The benchmark code did not exit as expected.
    #[error("{phase}: unexpected exit {exit}")]
    UnexpectedExit {
        /// The phase.
        phase: &'static str,
        /// The exit, formatted.
        exit: String,
    },
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm is not available: kxen bench measures KVM exits")]
    NoKvm,
    /// Zero iterations asked for.
    #[error("iterations must be at least 1")]
    NoIterations,
}

/// One measured operation.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Short name (`hypercall`, `exception`, `exit`, `syscall`).
    pub name: &'static str,
    /// What one operation is.
    pub what: String,
    /// Operations timed.
    pub iterations: u64,
    /// Guest TSC cycles per operation.
    pub cycles_per_op: f64,
    /// Nanoseconds per operation (cycles / TSC kHz).
    pub ns_per_op: f64,
    /// `ns_per_op` divided by the floor's (the `exit` measurement).
    pub ratio_to_floor: f64,
    /// Host wall time of the whole phase divided by the iterations (includes setup);
    /// `None` for the guest phases, which share one boot.
    pub wall_ns_per_op: Option<f64>,
    /// VMM exits seen during the phase, when known.
    pub exits: Option<u64>,
    /// ns per operation of each round, in run order, when the phase ran several rounds
    /// (`ns_per_op` is the median).
    pub rounds_ns_per_op: Vec<f64>,
    /// Not one of the four headline figures (hypercall, exception, exit, syscall) but a
    /// part of the breakdown that explains them.
    pub breakdown: bool,
    /// Operations per second (1e9 / `ns_per_op`; PTE updates per second for
    /// [`Section::PvMemory`]).
    pub per_second: f64,
    /// Where the line is printed.
    pub section: Section,
}

/// The groups of lines `kxen bench` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// The four headline figures ([`HEADLINE`]).
    Headline,
    /// The pieces that explain them.
    Breakdown,
    /// PTE updates ([`PV_MEMORY`]): one operation is one PTE update.
    PvMemory,
    /// Event channels and timers ([`EVENTS`], [`TimerWakeup`]).
    Events,
}

impl Section {
    /// The section a measurement called `name` belongs to.
    pub fn of(name: &str) -> Self {
        if HEADLINE.contains(&name) {
            Self::Headline
        } else if PV_MEMORY.contains(&name) {
            Self::PvMemory
        } else if EVENTS.contains(&name) || name == TIMER_WAKEUP {
            Self::Events
        } else {
            Self::Breakdown
        }
    }
}

/// The headline measurements, in the order printed.
pub const HEADLINE: [&str; 4] = ["hypercall", "exception", "exit", "syscall"];

/// The PV-memory measurements (PTE updates), in the order printed.
pub const PV_MEMORY: [&str; 4] = [
    "mmu_update_x1",
    "mmu_update_x32",
    "mmu_update_x512",
    "ptwr_store",
];

/// The event-channel measurements, in the order printed.
pub const EVENTS: [&str; 2] = ["evtchn_self", "evtchn_ipi"];

/// Name of the timer-wakeup line ([`TimerWakeup`]).
pub const TIMER_WAKEUP: &str = "timer_wakeup";

/// What each guest-timed phase measures (bench guest key prefix, description).
const GUEST_MODES: [(&str, &str); 8] = [
    (
        "mmuext_flush",
        "mmuext_op(TLB_FLUSH_LOCAL) from the bench guest: a hypercall whose return runs kxen's ring-0 CR3 reload (folded into the return, no exit of its own), no PTE written",
    ),
    (
        "mmu_update_x1",
        "PTE update through mmu_update batches of 1 request (one hypercall per batch; the ring-0 replay runs on its return)",
    ),
    (
        "mmu_update_x32",
        "PTE update through mmu_update batches of 32 requests (one hypercall per batch; the ring-0 replay runs on its return)",
    ),
    (
        "mmu_update_x512",
        "PTE update through mmu_update batches of 512 requests (one hypercall per batch; the ring-0 replay runs on its return)",
    ),
    (
        "mmu_same_x512",
        "mmu_update batches of 512 requests all rewriting one entry (kxen replays one entry per batch, not 512)",
    ),
    (
        "ptwr_store",
        "PTE update by a guest 64-bit mov into its own L1 (writable page tables: #PF, kxen emulates, replay on the return)",
    ),
    (
        "evtchn_self",
        "EVTCHNOP_send on an IPI port of the sending vCPU: rdtsc before the send to rdtsc at its upcall entry (bounced as the send returns; the upcall's iret not counted)",
    ),
    (
        "evtchn_ipi",
        "EVTCHNOP_send from vCPU 0 to an IPI port of vCPU 1 blocked in SCHEDOP_block: vCPU 0's rdtsc before the send to vCPU 1's rdtsc at its upcall entry (wake, block returns, upcall bounce)",
    ),
];

/// Timer wakeup lateness measured by the bench guest: `count` times a singleshot timer
/// (`VCPUOP_set_singleshot_timer`) `ahead_ns` after pvclock now, then `SCHEDOP_block`; in
/// the `VIRQ_TIMER` upcall the guest reads pvclock system time. Lateness = that time minus
/// the deadline (negative = early).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimerWakeup {
    /// Wakeups measured.
    pub count: u64,
    /// How far ahead each timer was set (ns).
    pub ahead_ns: u64,
    /// Mean lateness (ns).
    pub mean_ns: i64,
    /// Median lateness (ns).
    pub median_ns: i64,
    /// Smallest lateness (ns).
    pub min_ns: i64,
    /// Largest lateness (ns).
    pub max_ns: i64,
}
/// An operation that could not be measured in this run.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    /// Short name.
    pub name: &'static str,
    /// Why.
    pub reason: String,
    /// Where the line is printed.
    pub section: Section,
}

impl Missing {
    fn new(name: &'static str, reason: String) -> Self {
        Self {
            name,
            reason,
            section: Section::of(name),
        }
    }
}

/// Everything one `kxen bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Iterations asked for (per operation).
    pub iterations: u64,
    /// KVM's TSC frequency for the vCPUs, kHz.
    pub tsc_khz: u32,
    /// Measurements, floor included.
    pub results: Vec<Measurement>,
    /// Operations that could not be measured.
    pub missing: Vec<Missing>,
    /// Timer wakeup lateness, when measured (else a [`Missing`] `timer_wakeup`).
    pub timer_wakeup: Option<TimerWakeup>,
    /// Observations about this host (e.g. the CPL after `syscall`).
    pub notes: Vec<String>,
}

impl BenchReport {
    /// The measurement called `name`.
    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.results.iter().find(|m| m.name == name)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kxen bench: {} iterations per operation, guest rdtsc around each loop, \
             TSC {} kHz (KVM_GET_TSC_KHZ); ring-0 phases: median of {ROUNDS} interleaved \
             rounds; ratio = ns / floor (exit)",
            self.iterations, self.tsc_khz
        )?;
        let line = |f: &mut fmt::Formatter<'_>, m: &Measurement| {
            writeln!(
                f,
                "{:<17} {:>10.1} ns/op {:>8.3}x floor  {:>7.0} cycles/op  [{}]  {}",
                format!("{}:", m.name),
                m.ns_per_op,
                m.ratio_to_floor,
                m.cycles_per_op,
                if m.rounds_ns_per_op.is_empty() {
                    "one run".to_string()
                } else {
                    let r: Vec<String> = m
                        .rounds_ns_per_op
                        .iter()
                        .map(|n| format!("{n:.0}"))
                        .collect();
                    format!("rounds {} ns", r.join("/"))
                },
                m.what
            )
        };
        let missing = |f: &mut fmt::Formatter<'_>, section: Section| {
            for m in self.missing.iter().filter(|m| m.section == section) {
                writeln!(
                    f,
                    "{:<17} not measured: {}",
                    format!("{}:", m.name),
                    m.reason
                )?;
            }
            Ok(())
        };
        for m in self
            .results
            .iter()
            .filter(|m| m.section == Section::Headline)
        {
            line(f, m)?;
        }
        missing(f, Section::Headline)?;
        writeln!(f, "breakdown (same run):")?;
        for m in self
            .results
            .iter()
            .filter(|m| m.section == Section::Breakdown)
        {
            line(f, m)?;
        }
        missing(f, Section::Breakdown)?;
        writeln!(
            f,
            "PV memory: PTE updates (same run, bench guest, rdtsc around all updates of a \
             mode; ratio = ns per update / floor (exit)):"
        )?;
        for m in self
            .results
            .iter()
            .filter(|m| m.section == Section::PvMemory)
        {
            writeln!(
                f,
                "{:<17} {:>10.1} ns/update {:>10.0} updates/s {:>8.3}x floor  {:>7.0} cycles/update  [{} updates]  {}",
                format!("{}:", m.name),
                m.ns_per_op,
                m.per_second,
                m.ratio_to_floor,
                m.cycles_per_op,
                m.iterations,
                m.what
            )?;
        }
        missing(f, Section::PvMemory)?;
        writeln!(
            f,
            "events and time (same run, bench guest, rdtsc / pvclock in the guest; ratio = ns / floor (exit)):"
        )?;
        for m in self.results.iter().filter(|m| m.section == Section::Events) {
            line(f, m)?;
        }
        if let Some(t) = &self.timer_wakeup {
            writeln!(
                f,
                "{:<17} late by mean {} ns, median {} ns, min {} ns, max {} ns  [{} wakeups]  \
                 singleshot timer {} ns ahead (VCPUOP_set_singleshot_timer), SCHEDOP_block, \
                 pvclock system time read in the VIRQ_TIMER upcall minus the deadline",
                format!("{TIMER_WAKEUP}:"),
                t.mean_ns,
                t.median_ns,
                t.min_ns,
                t.max_ns,
                t.count,
                t.ahead_ns
            )?;
        }
        missing(f, Section::Events)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// KVM's TSC frequency for a fresh vCPU (the rate the guests' `rdtsc` counts at).
pub fn tsc_khz() -> Result<u32, BenchError> {
    let kvm = Kvm::new().map_err(BenchError::TscKhz)?;
    let vm = kvm.create_vm().map_err(BenchError::TscKhz)?;
    let vcpu = vm.create_vcpu(0).map_err(BenchError::TscKhz)?;
    vcpu.get_tsc_khz().map_err(BenchError::TscKhz)
}

/// Run every phase with `iterations` operations each.
pub fn run(iterations: u64) -> Result<BenchReport, BenchError> {
    if iterations == 0 {
        return Err(BenchError::NoIterations);
    }
    if !crate::vcpu::kvm_available() {
        return Err(BenchError::NoKvm);
    }
    let khz = tsc_khz()?;
    let mut report = BenchReport {
        iterations,
        tsc_khz: khz,
        results: Vec::new(),
        missing: Vec::new(),
        timer_wakeup: None,
        notes: Vec::new(),
    };
    // Every ring-0 phase ROUNDS times, interleaved (load on a shared host changes over
    // seconds; interleaving spreads it over all phases), the median round kept. The guest
    // phases run once, last: a guest that kxen cannot serve spins until the timeout and
    // its thread stays behind, busy, which would disturb anything measured after it.
    let (sysret_works, sysret_note) = sysret_probe()?;
    report.notes.push(sysret_note);
    let mut ring_phases: Vec<fn(u64) -> Result<Phase, BenchError>> = vec![
        bare_exit,
        |n| in_vm_syscall(n, false),
        |n| in_vm_syscall(n, true),
        vmm_syscall,
        |n| mmio_exit(n, false),
        |n| mmio_exit(n, true),
        mmio_exit_resume,
        int3_exit,
        |n| kernel_exit(n, false),
        |n| kernel_exit(n, true),
    ];
    if sysret_works {
        ring_phases.push(in_vm_sysret);
    }
    let mut rounds: Vec<Vec<Phase>> = vec![Vec::new(); ring_phases.len()];
    for _ in 0..ROUNDS {
        for (f, runs) in ring_phases.iter().zip(rounds.iter_mut()) {
            runs.push(f(iterations)?);
        }
    }
    let mut ring: Vec<Phase> = rounds.into_iter().filter_map(median_round).collect();
    let floor_ns = ring.first().map_or(0.0, |p| p.ns(khz));
    let floor_rounds = ring
        .first()
        .map(|p| p.round_cycles.clone())
        .unwrap_or_default();
    for p in ring.drain(..) {
        report.results.push(p.finish(khz, floor_ns, &floor_rounds));
    }
    match guest_phases(iterations) {
        Ok((phases, missing, timer)) => {
            for p in phases {
                report.results.push(p.finish(khz, floor_ns, &[]));
            }
            report.missing.extend(missing);
            report.timer_wakeup = timer;
        }
        Err(reason) => {
            let names = ["hypercall", "exception"]
                .into_iter()
                .chain(GUEST_MODES.iter().map(|&(n, _)| n))
                .chain([TIMER_WAKEUP]);
            for name in names {
                report.missing.push(Missing::new(name, reason.clone()));
            }
        }
    }
    // Headline figures first, in the order; the breakdown as measured; then the
    // PTE updates in their order.
    report.results.sort_by_key(|m| {
        HEADLINE
            .iter()
            .position(|&h| h == m.name)
            .or_else(|| {
                PV_MEMORY
                    .iter()
                    .position(|&h| h == m.name)
                    .map(|i| HEADLINE.len() + 1 + i)
            })
            .or_else(|| {
                EVENTS
                    .iter()
                    .position(|&h| h == m.name)
                    .map(|i| HEADLINE.len() + 1 + PV_MEMORY.len() + i)
            })
            .unwrap_or(HEADLINE.len())
    });
    Ok(report)
}

/// Rounds of each ring-0 phase per run (the median is reported).
pub const ROUNDS: usize = 3;

/// A phase's raw result.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    what: String,
    iterations: u64,
    cycles: u64,
    wall_ns: Option<f64>,
    exits: Option<u64>,
    /// Cycles of every round, when the phase ran several.
    round_cycles: Vec<u64>,
}

/// The round with the median cycle count, carrying all rounds' counts.
fn median_round(mut runs: Vec<Phase>) -> Option<Phase> {
    let all: Vec<u64> = runs.iter().map(|p| p.cycles).collect();
    runs.sort_by_key(|p| p.cycles);
    let mid = runs.len() / 2;
    let mut p = runs.into_iter().nth(mid)?;
    p.round_cycles = all;
    Some(p)
}

impl Phase {
    fn ns(&self, khz: u32) -> f64 {
        cycles_to_ns(self.cycles, khz) / self.iterations as f64
    }
    /// The measurement, with its ratio to the floor: the median of the per-round ratios
    /// when both ran the same rounds (a load spike then hits both sides of a ratio), else
    /// `ns / floor_ns` (the floor's median).
    fn finish(self, khz: u32, floor_ns: f64, floor_rounds: &[u64]) -> Measurement {
        let ns = self.ns(khz);
        let ratio =
            if !self.round_cycles.is_empty() && self.round_cycles.len() == floor_rounds.len() {
                let mut r: Vec<f64> = self
                    .round_cycles
                    .iter()
                    .zip(floor_rounds)
                    .map(|(&c, &f)| if f > 0 { c as f64 / f as f64 } else { 0.0 })
                    .collect();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            } else if floor_ns > 0.0 {
                ns / floor_ns
            } else {
                0.0
            };
        Measurement {
            breakdown: Section::of(self.name) == Section::Breakdown,
            section: Section::of(self.name),
            per_second: if ns > 0.0 { 1e9 / ns } else { 0.0 },
            name: self.name,
            what: self.what,
            iterations: self.iterations,
            cycles_per_op: self.cycles as f64 / self.iterations as f64,
            ns_per_op: ns,
            ratio_to_floor: ratio,
            wall_ns_per_op: self.wall_ns.map(|w| w / self.iterations as f64),
            exits: self.exits,
            rounds_ns_per_op: self
                .round_cycles
                .iter()
                .map(|&c| cycles_to_ns(c, khz) / self.iterations as f64)
                .collect(),
        }
    }
}

/// TSC cycles to nanoseconds at `khz` kHz.
pub fn cycles_to_ns(cycles: u64, khz: u32) -> f64 {
    if khz == 0 {
        return 0.0;
    }
    cycles as f64 * 1e6 / f64::from(khz)
}

// ---------------------------------------------------------------------------------------
// Ring-0 phases: a minimal VM (four-level page tables, one code page, one stack page).

/// Where the ring-0 code runs (L4 slot 511, like a Linux kernel).
const CODE_VA: u64 = 0xffff_ffff_8000_0000;
const L4_PFN: u64 = 1;
const L3_PFN: u64 = 2;
const L2_PFN: u64 = 3;
const L1_PFN: u64 = 4;
const CODE_PFN: u64 = 16;
const VM_PAGES: u64 = 32;
const PORT_LOOP: u8 = 0xf0;
/// In r13 at the store that ends a phase ("kxendone").
const DONE: u64 = 0x6b78_656e_646f_6e65;

struct Ring0Vm {
    vm: Vm,
    vcpu: crate::vcpu::Vcpu,
}

impl Ring0Vm {
    /// A VM whose `code` sits at [`CODE_VA`] (read-only, user-accessible as the host
    /// requires for ring-0 code); the vCPU is left at CPL3 at the start of `code`.
    fn new(code: &[u8]) -> Result<Self, BenchError> {
        let vm = Vm::new(VM_PAGES, 1)?;
        let mem = vm.ram().mem();
        let w = |pfn: u64, idx: u64, v: u64| {
            mem.write_obj(v, GuestAddress(pfn * PAGE_SIZE + idx * 8))
                .map_err(|e| BenchError::Memory(e.to_string()))
        };
        const P: u64 = 1;
        const RW: u64 = 2;
        const US: u64 = 4;
        let table = P | RW | US;
        w(L4_PFN, 511, (L3_PFN * PAGE_SIZE) | table)?;
        for &(slot, e) in vm.ring0().private_l4_entries() {
            w(L4_PFN, slot as u64, e)?;
        }
        w(L3_PFN, 510, (L2_PFN * PAGE_SIZE) | table)?;
        w(L2_PFN, 0, (L1_PFN * PAGE_SIZE) | table)?;
        w(L1_PFN, 0, (CODE_PFN * PAGE_SIZE) | P | US)?;
        if code.len() as u64 > PAGE_SIZE {
            return Err(BenchError::Memory("bench code larger than a page".into()));
        }
        mem.write_slice(code, GuestAddress(CODE_PFN * PAGE_SIZE))
            .map_err(|e| BenchError::Memory(e.to_string()))?;
        let mut vcpu = vm.create_vcpu(0)?;
        let rsp = vcpu.ring0().rsp0_top;
        vcpu.set_pv_entry(PvEntry {
            rip: CODE_VA,
            rsp,
            rsi: 0,
            cr3: L4_PFN * PAGE_SIZE,
            rflags: 0x202,
        })?;
        Ok(Self { vm, vcpu })
    }

    /// Switch the vCPU to ring 0 at the start of the code, on kxen's ring-0 stack (so an
    /// exception there is readable).
    fn enter_ring0(&mut self) -> Result<(), BenchError> {
        let rsp = self.vcpu.ring0().rsp0_top;
        self.vcpu
            .enter_ring0_for_test(CODE_VA, rsp, L4_PFN * PAGE_SIZE)?;
        Ok(())
    }
}

/// A few hand-assembled x86-64 instructions.
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
}

impl Asm {
    fn here(&self) -> u64 {
        CODE_VA + self.code.len() as u64
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }
    /// mov $imm64, %r15 (the loop counter)
    fn mov_counter(&mut self, imm: u64) -> &mut Self {
        self.bytes(&[0x49, 0xbf]).bytes(&imm.to_le_bytes())
    }
    /// mov $imm64, %r13 (the end-of-phase marker)
    fn mark_done(&mut self) -> &mut Self {
        self.bytes(&[0x49, 0xbd]).bytes(&DONE.to_le_bytes())
    }
    /// rdtsc; shl $32, %rdx; or %rdx, %rax  (rax = full TSC; rdx clobbered)
    fn rdtsc64(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0])
    }
    /// mov %rax, %r12
    fn save_start(&mut self) -> &mut Self {
        self.bytes(&[0x49, 0x89, 0xc4])
    }
    /// sub %r12, %rax
    fn sub_start(&mut self) -> &mut Self {
        self.bytes(&[0x4c, 0x29, 0xe0])
    }
    /// dec %r15; jnz target (rel32)
    fn loop_to(&mut self, target: u64) -> &mut Self {
        self.bytes(&[0x49, 0xff, 0xcf]);
        let next = self.here() + 6;
        let rel = target.wrapping_sub(next) as i64 as i32;
        self.bytes(&[0x0f, 0x85]).bytes(&rel.to_le_bytes())
    }
    /// wrmsr MSR_LSTAR = target (clobbers ecx, eax, edx)
    fn wrmsr_lstar(&mut self, target: u64) -> &mut Self {
        self.bytes(&[0xb9]).bytes(&0xc000_0082u32.to_le_bytes());
        self.bytes(&[0xb8]).bytes(&(target as u32).to_le_bytes());
        self.bytes(&[0xba])
            .bytes(&((target >> 32) as u32).to_le_bytes());
        self.bytes(&[0x0f, 0x30])
    }
    /// `jmp` over `body` (< 128 bytes), then `body`; returns the body's address.
    fn skipped(&mut self, body: &[u8]) -> u64 {
        let len = u8::try_from(body.len())
            .ok()
            .filter(|&l| l < 128)
            .unwrap_or(0);
        self.bytes(&[0xeb, len]);
        let at = self.here();
        self.bytes(&body[..usize::from(len)]);
        at
    }
    /// mov %rax, (abs64): a store to the syscall exit page ends a phase with a
    /// [`VcpuExit::Syscall`] carrying rax, from any CPL.
    fn store_rax(&mut self, addr: u64) -> &mut Self {
        self.bytes(&[0x48, 0xa3]).bytes(&addr.to_le_bytes())
    }
}

fn unexpected(phase: &'static str, exit: &VcpuExit) -> BenchError {
    BenchError::UnexpectedExit {
        phase,
        exit: short_exit(exit),
    }
}

/// Which exit a ring-0 loop body causes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoopExit {
    /// `out` to [`PORT_LOOP`].
    Port,
    /// A store to the exit page (an MMIO exit; [`VcpuExit::Syscall`] without the marker).
    Mmio,
    /// Like `Mmio`, from CPL3, resumed with [`crate::vcpu::Vcpu::return_to_guest`] at rcx
    /// (registers and special registers set, as after every hypercall).
    MmioResume,
    /// `int3` from CPL3 through kxen's IDT stub (ring 0, `out`), resumed after it with
    /// `return_to_guest`: kxen's exception entry and exit without the bounce.
    Int3Resume,
    /// None: handled inside the host kernel.
    None,
}

/// Time `iterations` runs of `body`, in ring 0 or (`ring3`) at CPL3 like a guest kernel;
/// `KVM_RUN` again after each expected exit.
fn timed_loop(
    name: &'static str,
    what: &str,
    body: &[u8],
    kind: LoopExit,
    ring3: bool,
    iterations: u64,
) -> Result<Phase, BenchError> {
    // The exit page's address is the same in every VM with one vCPU.
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut a = Asm::default();
    a.mov_counter(iterations).rdtsc64().save_start();
    let top = a.here();
    a.bytes(body).loop_to(top);
    a.rdtsc64().sub_start().mark_done().store_rax(exit_va);
    let mut g = Ring0Vm::new(&a.code)?;
    if !ring3 {
        g.enter_ring0()?;
    }
    let start = Instant::now();
    let mut exits = 0u64;
    let cycles = loop {
        match g.vcpu.run()? {
            VcpuExit::Syscall { regs, .. } if regs.r13 == DONE => break regs.rax,
            VcpuExit::Syscall { .. } if kind == LoopExit::Mmio => exits += 1,
            VcpuExit::Exception {
                vector: 3, regs, ..
            } if kind == LoopExit::Int3Resume => {
                exits += 1;
                g.vcpu
                    .return_to_guest(&regs, crate::vcpu::GuestCs::Long64)?;
            }
            VcpuExit::Syscall { regs, .. } if kind == LoopExit::MmioResume => {
                exits += 1;
                g.vcpu
                    .return_to_guest(&regs, crate::vcpu::GuestCs::Long64)?;
            }
            VcpuExit::Io { port, size: 1, .. }
                if kind == LoopExit::Port && port == u16::from(PORT_LOOP) =>
            {
                exits += 1
            }
            other => return Err(unexpected(name, &other)),
        }
    };
    let wall_ns = start.elapsed().as_secs_f64() * 1e9;
    let want = if kind == LoopExit::None {
        0
    } else {
        iterations
    };
    if exits != want {
        return Err(BenchError::UnexpectedExit {
            phase: name,
            exit: format!("{exits} exits for {iterations} iterations"),
        });
    }
    Ok(Phase {
        name,
        what: what.into(),
        iterations,
        cycles,
        wall_ns: Some(wall_ns),
        round_cycles: Vec::new(),
        exits: Some(total_exits(&g.vm)),
    })
}

/// The floor: `out %al, $0xf0` from ring 0, each one a userspace exit; `KVM_RUN` again.
fn bare_exit(iterations: u64) -> Result<Phase, BenchError> {
    timed_loop(
        "exit",
        "bare KVM userspace exit (ring-0 `out` to an unused port) [floor]",
        &[0xe6, PORT_LOOP],
        LoopExit::Port,
        false,
        iterations,
    )
}

/// A userspace exit through an MMIO write (how kxen's LSTAR stub leaves the VM), from ring
/// 0 or from CPL3; `KVM_RUN` again at once (KVM has retired the store; no register is set).
fn mmio_exit(iterations: u64, ring3: bool) -> Result<Phase, BenchError> {
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut body = Asm::default();
    body.store_rax(exit_va);
    let (name, what) = if ring3 {
        (
            "exit_mmio_cpl3",
            "KVM userspace exit through an MMIO write from CPL3 (store to kxen's exit page), \
             no state set",
        )
    } else {
        (
            "exit_mmio",
            "KVM userspace exit through an MMIO write from ring 0 (store to kxen's exit page)",
        )
    };
    timed_loop(name, what, &body.code, LoopExit::Mmio, ring3, iterations)
}

/// An MMIO exit from CPL3 resumed the way kxen resumes a guest after a hypercall
/// ([`crate::vcpu::Vcpu::return_to_guest`]: registers and special registers set).
fn mmio_exit_resume(iterations: u64) -> Result<Phase, BenchError> {
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut body = Asm::default();
    // lea next(%rip), %rcx (the exit reports rip = rcx, as for a syscall); store; next:
    body.bytes(&[0x48, 0x8d, 0x0d]).bytes(&10i32.to_le_bytes());
    body.store_rax(exit_va);
    timed_loop(
        "exit_resume",
        "MMIO exit from CPL3, resumed with return_to_guest (regs + sregs set), as kxen does",
        &body.code,
        LoopExit::MmioResume,
        true,
        iterations,
    )
}

/// `int3` from CPL3 to kxen's #BP stub, out to the VMM and back after the `int3`.
fn int3_exit(iterations: u64) -> Result<Phase, BenchError> {
    timed_loop(
        "int3_vmm",
        "int3 (CPL3) -> kxen IDT stub -> VMM -> back to CPL3 (no bounce to a guest handler)",
        &[0xcc],
        LoopExit::Int3Resume,
        true,
        iterations,
    )
}

/// An exit KVM handles in the host kernel: `cpuid`, from ring 0 or from CPL3.
fn kernel_exit(iterations: u64, ring3: bool) -> Result<Phase, BenchError> {
    let (name, what) = if ring3 {
        (
            "exit_kernel_cpl3",
            "in-kernel KVM exit (`cpuid` from CPL3, no userspace exit)",
        )
    } else {
        (
            "exit_kernel",
            "in-kernel KVM exit (`cpuid` from ring 0, no userspace exit)",
        )
    };
    timed_loop(
        name,
        what,
        &[0x31, 0xc0, 0x0f, 0xa2], // xor %eax, %eax; cpuid
        LoopExit::None,
        ring3,
        iterations,
    )
}

/// In-VM `syscall` round trips, no VMM exit: LSTAR (set with `wrmsr` from ring 0) points
/// at a handler in the VM that returns with `jmp *%rcx`.
///
/// With `from_ring3 == false` the loop runs in ring 0 (`syscall` from CPL0 enters the
/// handler at CPL0). With `from_ring3 == true` ring 0 first drops to CPL3 with one
/// `syscall`/`sysretq` and the loop runs there; on this host the handler then runs at CPL3
/// (the quirk), which is why it cannot end in `sysretq` (see [`sysret_probe`]) and why a
/// plain `jmp` back works at all.
fn in_vm_syscall(iterations: u64, from_ring3: bool) -> Result<Phase, BenchError> {
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut a = Asm::default();
    let handler = a.skipped(&[0xff, 0xe1]); // jmp *%rcx
    if from_ring3 {
        // A one-shot handler, entered from ring 0: LSTAR = handler, sysretq to rcx (CPL3).
        let mut b = Asm::default();
        b.bytes(&[0x49, 0x89, 0xce]); // mov %rcx, %r14
        b.wrmsr_lstar(handler);
        b.bytes(&[0x4c, 0x89, 0xf1]); // mov %r14, %rcx
        b.bytes(&[0x48, 0x0f, 0x07]); // sysretq
        let drop_to_ring3 = a.skipped(&b.code);
        a.wrmsr_lstar(drop_to_ring3);
        a.bytes(&[0x0f, 0x05]); // syscall: continue below at CPL3
    } else {
        a.wrmsr_lstar(handler);
    }
    a.mov_counter(iterations).rdtsc64().save_start();
    let top = a.here();
    a.bytes(&[0x0f, 0x05]).loop_to(top); // syscall
    a.rdtsc64().sub_start().store_rax(exit_va);
    let name = if from_ring3 {
        "syscall_cpl3"
    } else {
        "syscall"
    };
    ring0_once(&a.code, name, iterations, |g| {
        if from_ring3 {
            format!(
                "in-VM syscall from CPL3 to an LSTAR handler (still CPL3 on this host, cs {:#x}) \
                 and back by jmp, no VMM exit",
                g.vcpu.sregs().cs.selector
            )
        } else {
            "in-VM syscall from ring 0 to an LSTAR handler and back by jmp, no VMM exit".into()
        }
    })
}

/// `syscall`/`sysretq` round trips in the VM, for hosts where [`sysret_probe`] says they
/// work (not this PVM host): ring 0 points LSTAR at a `sysretq`, the first `syscall` comes
/// from ring 0, every later one from CPL3.
fn in_vm_sysret(iterations: u64) -> Result<Phase, BenchError> {
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut a = Asm::default();
    let handler = a.skipped(&[0x48, 0x0f, 0x07]); // sysretq
    a.wrmsr_lstar(handler);
    a.mov_counter(iterations).rdtsc64().save_start();
    let top = a.here();
    a.bytes(&[0x0f, 0x05]).loop_to(top); // syscall
    a.rdtsc64().sub_start().store_rax(exit_va);
    ring0_once(&a.code, "syscall_sysret", iterations, |_| {
        "in-VM syscall (CPL3) + sysretq, handler at LSTAR in ring 0, no VMM exit".into()
    })
}

/// Run `code` from ring 0 once, to the exit-page store that ends it with the loop's cycle
/// count in rax: a phase that loops inside the VM with no exit of its own. `what` describes
/// it, from the VM as the run left it.
fn ring0_once(
    code: &[u8],
    name: &'static str,
    iterations: u64,
    what: impl FnOnce(&Ring0Vm) -> String,
) -> Result<Phase, BenchError> {
    let mut g = Ring0Vm::new(code)?;
    g.enter_ring0()?;
    let start = Instant::now();
    let exit = g.vcpu.run()?;
    let wall_ns = start.elapsed().as_secs_f64() * 1e9;
    let VcpuExit::Syscall { regs, .. } = exit else {
        return Err(unexpected(name, &exit));
    };
    Ok(Phase {
        name,
        what: what(&g),
        iterations,
        cycles: regs.rax,
        wall_ns: Some(wall_ns),
        round_cycles: Vec::new(),
        exits: Some(total_exits(&g.vm)),
    })
}

/// What the KVM helper's kvm_bench.rs timed as a "syscall round trip": a CPL3 `syscall`
/// to kxen's LSTAR stub (an MMIO write to the exit page), out to the VMM, and back to CPL3
/// with [`crate::vcpu::Vcpu::return_to_guest`]: kxen's hypercall entry and exit, no
/// dispatch.
fn vmm_syscall(iterations: u64) -> Result<Phase, BenchError> {
    timed_loop(
        "syscall_vmm",
        "guest syscall (CPL3) -> kxen LSTAR stub -> VMM -> back to CPL3 \
         (kvm_bench.rs's \"syscall round trip\")",
        &[0x0f, 0x05], // syscall
        LoopExit::MmioResume,
        true,
        iterations,
    )
}

/// Whether a `syscall`/`sysretq` loop can run in the VM: ring 0 does `syscall` twice to a
/// `sysretq` handler. Returns whether it can and a sentence for the report.
pub fn sysret_probe() -> Result<(bool, String), BenchError> {
    let exit_va = Ring0Vm::new(&[])?.vm.ring0().syscall_exit_va();
    let mut a = Asm::default();
    let handler = a.skipped(&[0x48, 0x0f, 0x07]); // sysretq
    a.wrmsr_lstar(handler);
    a.bytes(&[0x0f, 0x05]); // syscall from CPL0: handler at CPL0, sysretq to CPL3
    a.bytes(&[0x0f, 0x05]); // syscall from CPL3
    a.store_rax(exit_va);
    let mut g = Ring0Vm::new(&a.code)?;
    g.enter_ring0()?;
    Ok(match g.vcpu.run()? {
        VcpuExit::Syscall { .. } => (
            true,
            "syscall/sysretq: two round trips from ring 0 and ring 3 completed in the VM \
             (the host keeps syscall semantics; see syscall_sysret)"
                .into(),
        ),
        VcpuExit::Exception {
            vector: 13, frame, ..
        } if frame.rip == handler => (
            false,
            format!(
                "syscall/sysretq: the first syscall (from ring 0) and sysretq work; the \
                 second syscall, from ring 3, reaches LSTAR still at CPL3 (frame cs {:#x}) \
                 and its sysretq raises #GP: on this host a syscall/sysretq loop cannot \
                 run, so the in-VM figures return from the handler with jmp *%rcx",
                frame.cs
            ),
        ),
        other => (
            false,
            format!("syscall/sysretq probe: unexpected {}", short_exit(&other)),
        ),
    })
}

fn short_exit(e: &VcpuExit) -> String {
    match e {
        VcpuExit::Exception {
            vector,
            error_code,
            frame,
            ..
        } => format!(
            "exception {vector} (error {error_code:?}) at rip {:#x} cs {:#x}",
            frame.rip, frame.cs
        ),
        other => format!("{other:?}"),
    }
}

fn total_exits(vm: &Vm) -> u64 {
    crate::vcpu::ExitKind::ALL
        .iter()
        .map(|&k| vm.stats().exits(k))
        .sum()
}

// ---------------------------------------------------------------------------------------
// Guest phases: boot the bench guest and read its KXEN-TEST VALUE lines.

/// Console output collected from the bench guest.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let b = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long the bench guest may take: generous (about ten exits per iteration over all
/// its phases, at tens of µs each, on a loaded host), but bounded, since a guest kxen
/// cannot serve yet spins forever.
fn guest_timeout(iterations: u64) -> Duration {
    Duration::from_secs(20).saturating_add(Duration::from_millis(iterations.saturating_mul(5)))
}

/// Boot the bench guest with `iterations=N`; `Err` says why nothing could be measured;
/// modes the guest could not run come back as [`Missing`]. Two vCPUs (`evtchn_ipi`).
/// The domain runs on its own thread so that a guest that never shuts down only costs the
/// timeout (the thread is then left behind; the process exits after the report).
type GuestResults = (Vec<Phase>, Vec<Missing>, Option<TimerWakeup>);

fn guest_phases(iterations: u64) -> Result<GuestResults, String> {
    let spec = LaunchSpec {
        name: "kxen-bench".into(),
        kernel: BENCH_GUEST.to_vec(),
        initrd: Vec::new(),
        cmdline: format!("iterations={iterations}"),
        memory_mib: 32,
        vcpus: 2,
        privileged: false,
        ..Default::default()
    };
    let console = Captured::default();
    let out = console.clone();
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kxen-bench-guest".into())
        .spawn(move || {
            let r = Domain::create(&spec, Box::new(out)).and_then(|mut d| {
                let outcome = d.run()?;
                let s = d.stats();
                // xen: public/xen.h __HYPERVISOR_xen_version = 17, __HYPERVISOR_iret = 23,
                // __HYPERVISOR_mmuext_op = 26; #BP = vector 3, #PF = vector 14
                let counts = GuestCounts {
                    versions: s.hypercalls(17),
                    bps: s.vector(3),
                    irets: s.hypercalls(23),
                    mmuext: s.hypercalls(26),
                    pfs: s.vector(14),
                };
                Ok((outcome, d.stats_line(), counts))
            });
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the bench guest thread: {e}"));
    }
    let timeout = guest_timeout(iterations);
    let (outcome, stats, counts) = match rx.recv_timeout(timeout) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("bench guest: {e}")),
        Err(_) => {
            return Err(format!(
                "bench guest did not finish within {} s (console: {:?})",
                timeout.as_secs(),
                tail(&console.text())
            ))
        }
    };
    let text = console.text();
    if outcome.reason != ShutdownReason::Poweroff {
        return Err(format!(
            "bench guest: {} (console: {:?})",
            outcome.describe(),
            tail(&text)
        ));
    }
    debug!("bench guest: {stats}");
    let (mut phases, mut missing) = phases_from_console(&text, iterations)?;
    let timer = match timer_wakeup_from_console(&text) {
        Ok(t) => Some(t),
        Err(reason) => {
            missing.push(Missing::new(TIMER_WAKEUP, reason));
            None
        }
    };
    for p in &mut phases {
        // Exits the VMM saw for the whole guest run (a few come from outside the loops);
        // the mmu_update modes share one counter, so none is given for them.
        p.exits = match p.name {
            "hypercall" => Some(counts.versions),
            "exception" => Some(counts.bps.saturating_add(counts.irets)),
            "mmuext_flush" => Some(counts.mmuext),
            "ptwr_store" => Some(counts.pfs),
            _ => None,
        };
    }
    Ok((phases, missing, timer))
}

/// The VMM's counters for one bench guest run.
struct GuestCounts {
    versions: u64,
    bps: u64,
    irets: u64,
    mmuext: u64,
    pfs: u64,
}

/// The last line or so of a console transcript, for error messages.
fn tail(text: &str) -> &str {
    let t = text.trim_end();
    let start = t.char_indices().rev().nth(160).map_or(0, |(i, _)| i);
    &t[start..]
}

/// The guest phases from the bench guest's console transcript. `Err` names the first
/// problem with the hypercall and exception phases: a failed check, a panic, a missing or
/// bad value; a PV-memory mode the guest could not run (or printed no number for) is
/// [`Missing`] with the guest's reason.
fn phases_from_console(
    console: &str,
    iterations: u64,
) -> Result<(Vec<Phase>, Vec<Missing>), String> {
    for l in console.lines() {
        let l = l.trim();
        if l.starts_with("KXEN-TEST: FAIL") || l.starts_with("KXEN-TEST: PANIC") {
            return Err(format!("bench guest: {l}"));
        }
    }
    let values = parse_values(console);
    let get = |name: &str| -> Result<u64, String> {
        let v = values
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| format!("bench guest printed no {name} value"))?;
        v.1.parse()
            .map_err(|_| format!("bench guest: {name}={} is not a number", v.1))
    };
    let n = get("iterations")?;
    if n != iterations {
        return Err(format!(
            "bench guest ran {n} iterations, {iterations} were asked for"
        ));
    }
    let phase = |name, what: &str, iterations, cycles| Phase {
        name,
        what: what.into(),
        iterations,
        cycles,
        wall_ns: None,
        exits: None,
        round_cycles: Vec::new(),
    };
    let mut phases = vec![
        phase(
            "hypercall",
            "xen_version(XENVER_version) from the bench guest through kxen's hypercall path",
            iterations,
            get("hypercall_cycles")?,
        ),
        phase(
            "exception",
            "int3 in the bench guest -> kxen -> guest #BP handler -> iret hypercall back",
            iterations,
            get("exception_cycles")?,
        ),
    ];
    let mut missing = Vec::new();
    for (name, what) in GUEST_MODES {
        let cycles_key = format!("{name}_cycles");
        let raw = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let measured = match (raw(&cycles_key), raw(&format!("{name}_ops"))) {
            (None, _) => Err(format!("bench guest printed no {cycles_key} value")),
            (Some(c), ops) => match c.strip_prefix("not measured: ") {
                Some(reason) => Err(format!("bench guest: {reason}")),
                None => match (c.parse::<u64>(), ops.map(|o| o.parse::<u64>())) {
                    (Ok(c), Some(Ok(o))) if o > 0 => Ok((c, o)),
                    _ => Err(format!(
                        "bench guest: {cycles_key}={c} over {name}_ops={} is not a count",
                        ops.map_or("(none)", |o| o.as_str())
                    )),
                },
            },
        };
        match measured {
            Ok((cycles, ops)) => phases.push(phase(name, what, ops, cycles)),
            Err(reason) => missing.push(Missing::new(name, reason)),
        }
    }
    Ok((phases, missing))
}

/// The timer wakeup figures from the bench guest's console; `Err` with the guest's reason
/// (`timer_wakeup_count=not measured: ...`) or the value missing or malformed.
fn timer_wakeup_from_console(console: &str) -> Result<TimerWakeup, String> {
    let values = parse_values(console);
    let raw = |key: &str| {
        values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("bench guest printed no {key} value"))
    };
    let count = raw("timer_wakeup_count")?;
    if let Some(reason) = count.strip_prefix("not measured: ") {
        return Err(format!("bench guest: {reason}"));
    }
    let int = |key: &str| -> Result<i64, String> {
        let v = raw(key)?;
        v.parse()
            .map_err(|_| format!("bench guest: {key}={v} is not a number"))
    };
    let count = int("timer_wakeup_count")?;
    let ahead = int("timer_wakeup_ahead_ns")?;
    if count <= 0 || ahead < 0 {
        return Err(format!(
            "bench guest: {count} timer wakeups {ahead} ns ahead is not a measurement"
        ));
    }
    Ok(TimerWakeup {
        count: count as u64,
        ahead_ns: ahead as u64,
        mean_ns: int("timer_wakeup_late_mean_ns")?,
        median_ns: int("timer_wakeup_late_median_ns")?,
        min_ns: int("timer_wakeup_late_min_ns")?,
        max_ns: int("timer_wakeup_late_max_ns")?,
    })
}

/// `KXEN-TEST: VALUE name=value` pairs from a console transcript.
pub fn parse_values(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KXEN-TEST: VALUE "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_convert_to_ns_at_the_tsc_rate() {
        assert_eq!(cycles_to_ns(3_000_000, 3_000_000), 1_000_000.0);
        assert_eq!(cycles_to_ns(2_500, 2_500_000), 1_000.0);
        assert_eq!(cycles_to_ns(5, 0), 0.0);
    }

    #[test]
    fn values_are_parsed_from_console_lines() {
        let c = "hello\nKXEN-TEST: VALUE hypercall_cycles=1234\r\nKXEN-TEST: PASS x\n\
                 KXEN-TEST: VALUE bad\nKXEN-TEST: VALUE n = 7\n";
        assert_eq!(
            parse_values(c),
            vec![
                ("hypercall_cycles".to_string(), "1234".to_string()),
                ("n".to_string(), "7".to_string())
            ]
        );
    }

    #[test]
    fn sysret_loop_runs_exactly_when_the_probe_says_it_can() {
        if !crate::vcpu::kvm_available() {
            eprintln!("skipped: /dev/kvm not available");
            return;
        }
        let (works, note) = sysret_probe().unwrap();
        let phase = in_vm_sysret(10);
        assert_eq!(phase.is_ok(), works, "{note}; phase: {phase:?}");
        if let Err(e) = phase {
            assert!(e.to_string().contains("exception 13"), "{e}");
        }
    }

    #[test]
    fn ring0_phases_count_the_exits_they_cause() {
        if !crate::vcpu::kvm_available() {
            eprintln!("skipped: /dev/kvm not available");
            return;
        }
        // One exit per iteration plus the final store; none for in-VM loops but the store.
        assert_eq!(bare_exit(50).unwrap().exits, Some(51));
        assert_eq!(mmio_exit(50, true).unwrap().exits, Some(51));
        assert_eq!(int3_exit(50).unwrap().exits, Some(51));
        assert_eq!(in_vm_syscall(50, false).unwrap().exits, Some(1));
        assert_eq!(kernel_exit(50, true).unwrap().exits, Some(1));
        let p = vmm_syscall(50).unwrap();
        assert_eq!((p.exits, p.iterations), (Some(51), 50));
        assert!(p.cycles > 0);
    }

    #[test]
    fn bench_guest_is_a_pv_kernel_kxen_would_launch() {
        use xen_abi::negotiate::LaunchMode;
        let r = crate::inspect::inspect(BENCH_GUEST, LaunchMode::Unprivileged, 16).unwrap();
        assert_eq!(r.verdict(LaunchMode::Unprivileged).refusal, None);
        assert_eq!(r.layout.error, None);
    }

    #[test]
    fn guest_console_gives_both_phases() {
        let c = "KXEN-TEST: VALUE iterations=100\nKXEN-TEST: PASS hypercall_results_consistent\n\
                 KXEN-TEST: VALUE hypercall_cycles=5000\nKXEN-TEST: VALUE exception_cycles=9000\n\
                 KXEN-TEST: DONE pass=3 fail=0\n";
        let (p, missing) = phases_from_console(c, 100).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(missing.len(), GUEST_MODES.len());
        assert_eq!((p[0].name, p[0].cycles), ("hypercall", 5000));
        assert_eq!((p[1].name, p[1].cycles), ("exception", 9000));
        let m = p[0].clone().finish(1_000_000, 10.0, &[]);
        assert_eq!(m.ns_per_op, 50.0);
        assert_eq!(m.ratio_to_floor, 5.0);
        assert_eq!(m.wall_ns_per_op, None);
    }

    #[test]
    fn pte_modes_are_measured_per_update_or_missing_with_the_guests_reason() {
        let c = "KXEN-TEST: VALUE iterations=100\nKXEN-TEST: VALUE hypercall_cycles=5000\n\
                 KXEN-TEST: VALUE exception_cycles=9000\n\
                 KXEN-TEST: VALUE mmu_update_x1_cycles=2000\nKXEN-TEST: VALUE mmu_update_x1_ops=100\n\
                 KXEN-TEST: VALUE mmu_update_x512_cycles=5120\nKXEN-TEST: VALUE mmu_update_x512_ops=512\n\
                 KXEN-TEST: VALUE mmu_update_x32_cycles=not measured: mmu_update returned -22\n\
                 KXEN-TEST: VALUE ptwr_store_cycles=77\nKXEN-TEST: VALUE ptwr_store_ops=0\n";
        let (p, missing) = phases_from_console(c, 100).unwrap();
        let x1 = p.iter().find(|p| p.name == "mmu_update_x1").unwrap();
        assert_eq!((x1.iterations, x1.cycles), (100, 2000));
        let m = p
            .iter()
            .find(|p| p.name == "mmu_update_x512")
            .unwrap()
            .clone()
            .finish(1_000_000, 5.0, &[]);
        assert_eq!(
            (m.iterations, m.ns_per_op, m.ratio_to_floor),
            (512, 10.0, 2.0)
        );
        assert_eq!(m.per_second, 1e8);
        assert_eq!(m.section, Section::PvMemory);
        assert!(!m.breakdown);
        let reason = |n: &str| {
            missing
                .iter()
                .find(|m| m.name == n)
                .map(|m| m.reason.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            reason("mmu_update_x32"),
            "bench guest: mmu_update returned -22"
        );
        assert!(reason("ptwr_store").contains("not a count"), "{missing:?}");
        assert!(reason("mmuext_flush").contains("printed no"), "{missing:?}");
        assert_eq!(Section::of("mmuext_flush"), Section::Breakdown);
        assert_eq!(
            missing
                .iter()
                .find(|m| m.name == "ptwr_store")
                .unwrap()
                .section,
            Section::PvMemory
        );
    }

    #[test]
    fn pte_lines_print_under_their_heading_and_a_missing_mode_says_why() {
        let p = Phase {
            name: "mmu_update_x32",
            what: "w".into(),
            iterations: 64,
            cycles: 64_000,
            wall_ns: None,
            exits: None,
            round_cycles: Vec::new(),
        };
        let report = BenchReport {
            iterations: 50,
            tsc_khz: 1_000_000,
            results: vec![p.finish(1_000_000, 500.0, &[])],
            missing: vec![Missing::new("ptwr_store", "bench guest: no".into())],
            timer_wakeup: None,
            notes: Vec::new(),
        };
        let text = report.to_string();
        let heading = text.find("PV memory: PTE updates").expect("heading");
        let line = text.find("mmu_update_x32:").expect("line");
        let gone = text.find("ptwr_store:       not measured: bench guest: no");
        assert!(heading < line, "{text}");
        assert!(gone.is_some_and(|g| g > heading), "{text}");
        assert!(
            text.contains("1000.0 ns/update    1000000 updates/s    2.000x floor"),
            "{text}"
        );
    }

    #[test]
    fn timer_wakeup_is_parsed_or_missing_with_the_guests_reason() {
        let c = "KXEN-TEST: VALUE timer_wakeup_count=3\nKXEN-TEST: VALUE timer_wakeup_ahead_ns=1000000\n\
                 KXEN-TEST: VALUE timer_wakeup_late_mean_ns=200\nKXEN-TEST: VALUE timer_wakeup_late_median_ns=150\n\
                 KXEN-TEST: VALUE timer_wakeup_late_min_ns=-5\nKXEN-TEST: VALUE timer_wakeup_late_max_ns=900\n";
        let t = timer_wakeup_from_console(c).unwrap();
        assert_eq!(
            t,
            TimerWakeup {
                count: 3,
                ahead_ns: 1_000_000,
                mean_ns: 200,
                median_ns: 150,
                min_ns: -5,
                max_ns: 900
            }
        );
        let no =
            "KXEN-TEST: VALUE timer_wakeup_count=not measured: EVTCHNOP_bind_virq returned -22\n";
        assert_eq!(
            timer_wakeup_from_console(no).unwrap_err(),
            "bench guest: EVTCHNOP_bind_virq returned -22"
        );
        let short =
            "KXEN-TEST: VALUE timer_wakeup_count=3\nKXEN-TEST: VALUE timer_wakeup_ahead_ns=1\n";
        assert!(timer_wakeup_from_console(short)
            .unwrap_err()
            .contains("timer_wakeup_late_mean_ns"));
        assert!(timer_wakeup_from_console("")
            .unwrap_err()
            .contains("printed no timer_wakeup_count"));
        assert_eq!(Section::of("evtchn_ipi"), Section::Events);
        assert_eq!(Section::of(TIMER_WAKEUP), Section::Events);
    }

    #[test]
    fn event_lines_and_timer_wakeup_print_under_the_events_heading() {
        let p = Phase {
            name: "evtchn_ipi",
            what: "w".into(),
            iterations: 10,
            cycles: 10_000,
            wall_ns: None,
            exits: None,
            round_cycles: Vec::new(),
        };
        let report = BenchReport {
            iterations: 10,
            tsc_khz: 1_000_000,
            results: vec![p.finish(1_000_000, 500.0, &[])],
            missing: vec![Missing::new("evtchn_self", "bench guest: no".into())],
            timer_wakeup: Some(TimerWakeup {
                count: 10,
                ahead_ns: 1_000_000,
                mean_ns: 1,
                median_ns: 2,
                min_ns: 0,
                max_ns: 3,
            }),
            notes: Vec::new(),
        };
        let text = report.to_string();
        let heading = text.find("events and time").expect("heading");
        let ipi = text.find("evtchn_ipi:").expect("ipi line");
        let timer = text
            .find("timer_wakeup:     late by mean 1 ns, median 2 ns, min 0 ns, max 3 ns  [10 wakeups]")
            .expect("timer line");
        let gone = text.find("evtchn_self:      not measured: bench guest: no");
        assert!(heading < ipi && heading < timer, "{text}");
        assert!(gone.is_some_and(|g| g > heading), "{text}");
        assert!(text.contains("1000.0 ns/op    2.000x floor"), "{text}");
    }

    #[test]
    fn ratio_is_the_median_of_per_round_ratios() {
        let p = Phase {
            name: "x",
            what: String::new(),
            iterations: 1,
            cycles: 30,
            wall_ns: None,
            exits: None,
            // ratios 3.0, 2.0, 10.0 against the floor rounds below
            round_cycles: vec![30, 40, 50],
        };
        let m = p.finish(1_000_000, 1.0, &[10, 20, 5]);
        assert_eq!(m.ratio_to_floor, 3.0);
        assert_eq!(m.rounds_ns_per_op, vec![30.0, 40.0, 50.0]);
    }

    #[test]
    fn guest_console_problems_are_reported_not_measured() {
        let ok = "KXEN-TEST: VALUE iterations=100\nKXEN-TEST: VALUE hypercall_cycles=1\n\
                  KXEN-TEST: VALUE exception_cycles=2\n";
        assert!(phases_from_console(ok, 99)
            .unwrap_err()
            .contains("100 iterations"));
        let failed = format!("{ok}KXEN-TEST: FAIL set_trap_table: got -38\n");
        assert!(phases_from_console(&failed, 100)
            .unwrap_err()
            .contains("FAIL set_trap_table"));
        let missing = "KXEN-TEST: VALUE iterations=100\nKXEN-TEST: VALUE hypercall_cycles=1\n";
        assert!(phases_from_console(missing, 100)
            .unwrap_err()
            .contains("exception_cycles"));
        let bad = "KXEN-TEST: VALUE iterations=x\n";
        assert!(phases_from_console(bad, 100)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn loop_jump_lands_on_its_target() {
        let mut a = Asm::default();
        a.bytes(&[0x90; 5]);
        let top = a.here();
        a.bytes(&[0x90]).loop_to(top);
        // dec r15 (3) + jnz rel32 (6) after one nop at `top`.
        let rel = i32::from_le_bytes(a.code[a.code.len() - 4..].try_into().unwrap());
        assert_eq!(i64::from(rel), top as i64 - a.here() as i64);
        assert_eq!(rel, -10);
    }
}
