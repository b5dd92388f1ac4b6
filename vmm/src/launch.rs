//! Launching and running a PV domain: kernel image -> notes -> negotiation -> VM -> domain
//! builder -> vCPU 0 -> the run loop.
//!
//! Every refusal (not a kernel, refused features, memory too small for the layout) happens in
//! [`Domain::create`] before KVM is touched and long before any vCPU runs.
//!
//! The run loop is the spine of the trap path: a `syscall` from the guest kernel is a
//! hypercall (dispatched through [`crate::hypercall::pv_hypercalls`]); an exception is bounced
//! to the guest's trap table ([`crate::trap`]); after every exit the console ring is serviced
//! and a shutdown request ends the run.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen_devices::console::ConsoleBackend;
use thiserror::Error;
use xen_abi::elfnote::{parse_xen_notes, NoteError};
use xen_abi::layout::{self, LayoutError, LayoutInput, PAGE_SIZE};
use xen_abi::negotiate::{
    check_launch, features_submap, LaunchMode, LaunchRefusal, SubmapError, KXEN_IMPLEMENTED,
};
use xen_abi::sched::ShutdownReason;

use crate::builder::{self, BootState, BuildError, DomainSpec, KernelSpec, SHARED_FRAMES};
use crate::domain::DomainShared;
use crate::events::{DomainEvents, EventsConfig, EventsError, GuestRingPage};
use crate::hypercall::HypercallArgs;
use crate::image::{load_kernel_image, ImageError};
use crate::memory::{GuestRam, MAX_GUEST_PAGES};
use crate::vcpu::{
    ExitStats, GuestCs, GuestRegs, PvEntry, Vcpu, VcpuError, VcpuExit, VcpuKicker, Vm, VmError,
};
use xen_abi::pv_vcpu::GuestMode;

/// Event channel the builder announces for the xenstore ring (the first `connect_backend`
/// on a fresh port table gives port 1; [`DomainEvents::new`] checks it).
pub const STORE_EVTCHN: u32 = 1;
/// Event channel the builder announces for the console ring (the second one: port 2).
pub const CONSOLE_EVTCHN: u32 = 2;
/// The guest's domain id (the first domU, as with `xl create` on a fresh host).
pub const GUEST_DOMID: u16 = 1;

/// What to launch.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// Domain name.
    pub name: String,
    /// The kernel file's bytes (ELF, bzImage or compressed ELF).
    pub kernel: Vec<u8>,
    /// The initrd's bytes (empty for none).
    pub initrd: Vec<u8>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs (vCPU 0 starts; the guest brings up the others, as under Xen).
    pub vcpus: u32,
    /// Privileged (dom0-like) launch.
    pub privileged: bool,
    /// Page-table ABI the guest sees: kxen's (every software-available PTE bit is the
    /// guest's) or Xen's (bit 52 marks kernel mappings); `pte_abi` in xl.cfg, docs/pte-abi.md.
    pub pte_abi: xen_abi::pte::PteAbi,
    /// Do not offer CPUID leaf 0x16 (kxen's processor-frequency leaf, on by default;
    /// `cpuid_freq_leaf = 0` in xl.cfg, `--no-cpuid-freq-leaf`).
    pub no_cpuid_freq_leaf: bool,
}

/// Why a domain could not be created or run.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// The kernel file is not a usable image.
    #[error("{0}")]
    Image(#[from] ImageError),
    /// Its Xen notes are missing or inconsistent.
    #[error("{0}")]
    Notes(#[from] NoteError),
    /// The kernel cannot run in the requested mode.
    #[error("{0}")]
    Refused(#[from] LaunchRefusal),
    /// The features submap cannot be computed.
    #[error("{0}")]
    Submap(#[from] SubmapError),
    /// The requested memory is unusable.
    #[error("memory: {0}")]
    Memory(String),
    /// The start-of-day layout does not fit.
    #[error("cannot lay out the domain: {0}")]
    Layout(#[from] LayoutError),
    /// Creating the VM failed.
    #[error("{0}")]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    /// The domain builder failed.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The initial page tables did not validate.
    #[error("initial page tables: {0}")]
    InitialTables(#[from] crate::mm::MmError),
    /// Event channels or the xenstore could not be set up.
    #[error("{0}")]
    Events(#[from] EventsError),
    /// The domain's time could not be started.
    #[error("{0}")]
    Time(#[from] crate::time::TimeError),
    /// Applying the PV CPU model to the vCPU failed.
    #[error("{0}")]
    PvMode(#[from] crate::pvmode::PvModeError),
}

/// The domain's time: the TSC rate KVM runs vCPU 0 at (else a calibration), the guest TSC
/// offset measured on it, wallclock and time records written, the timer thread started.
fn attach_time(
    shared: &Arc<DomainShared>,
    vm: &Vm,
    vcpu0: &Vcpu,
    vcpus: u32,
) -> Result<(), LaunchError> {
    let khz = match vcpu0.tsc_khz() {
        Some(k) => k,
        None => crate::time::clock::calibrate_tsc_khz(Duration::from_millis(20))?,
    };
    let offset = vcpu0.measure_tsc_offset().unwrap_or(0);
    tracing::debug!(tsc_khz = khz, tsc_offset = offset as i64, "domain time");
    shared.attach_time(vm.ram(), vcpus, khz, offset)?;
    Ok(())
}

impl Drop for Domain {
    fn drop(&mut self) {
        // The timer thread holds only a weak reference; stop it before the domain goes.
        self.shared.stop_time();
    }
}

/// The code segment to resume an interrupted context with.
fn guest_cs(frame: &crate::trap::CpuFrame) -> GuestCs {
    if (frame.cs as u16) | 3 == xen_abi::arch::FLAT_RING3_CS32 {
        GuestCs::Compat32
    } else {
        GuestCs::Long64
    }
}

impl LaunchError {
    /// Whether the failure is the user's input (a refused or malformed kernel, impossible
    /// memory): the CLI exits with status 2 for these, 1 for kxen's own failures.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LaunchError::Image(_)
                | LaunchError::Notes(_)
                | LaunchError::Refused(_)
                | LaunchError::Submap(_)
                | LaunchError::Memory(_)
                | LaunchError::Layout(_)
                | LaunchError::Build(BuildError::SegmentOutside { .. })
                | LaunchError::Build(BuildError::HypercallPage(_))
                | LaunchError::Build(BuildError::Elf(_))
        )
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The shutdown reason (a domain kxen had to crash ends with `Crash`).
    pub reason: ShutdownReason,
    /// Why kxen crashed the domain, when it did.
    pub crash_message: Option<String>,
    /// Wall time from the first instruction to the end.
    pub run_time: Duration,
    /// Wall time from the first instruction to the first entry of any vCPU into guest user
    /// mode (boot to first userspace); `None` if the guest never entered user mode.
    pub boot_to_user: Option<Duration>,
}

impl Outcome {
    /// The `kxen` exit status for this outcome: 0 poweroff, 3 crash, 4 reboot, 5 suspend,
    /// 6 watchdog, 7 soft reset. (1 is kxen's own failure, 2 a refused input.)
    pub fn exit_status(&self) -> u8 {
        match self.reason {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Crash => 3,
            ShutdownReason::Reboot => 4,
            ShutdownReason::Suspend => 5,
            ShutdownReason::Watchdog => 6,
            ShutdownReason::SoftReset => 7,
        }
    }

    /// One line naming the reason.
    pub fn describe(&self) -> String {
        match &self.crash_message {
            Some(m) => format!("domain crashed: {m}"),
            None => format!("domain shut down: {}", self.reason.name()),
        }
    }
}

/// Stops a running domain from another thread (a host-side timeout, a signal): the run loop
/// ends at its next exit with the domain crashed and this message.
#[derive(Clone)]
pub struct StopHandle {
    why: Arc<std::sync::Mutex<Option<String>>>,
    kicker: VcpuKicker,
    shared: Arc<DomainShared>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("domain", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl StopHandle {
    /// Ask the domain to stop.
    pub fn stop(&self, why: &str) {
        if let Ok(mut w) = self.why.lock() {
            w.get_or_insert_with(|| why.to_string());
        }
        self.kicker.kick();
        if let Some(ev) = self.shared.events() {
            ev.wake_all();
        }
    }

    /// Ask the guest politely, as `xl shutdown` does: write `control/shutdown` (`what` is
    /// `poweroff`, `reboot`, `suspend` or `halt`) in its xenstore home and notify it. The
    /// domain keeps running until the guest acts on it (or [`StopHandle::stop`]).
    pub fn request_shutdown(&self, what: &str) -> Result<(), EventsError> {
        self.shared.request_guest_shutdown(what)
    }

    fn requested(&self) -> Option<String> {
        self.why.lock().ok().and_then(|w| w.clone())
    }
}

/// Whether a vCPU interrupted at `rip` may be redirected (an upcall, a flush before the
/// next guest instruction): only in guest code, never in kxen's stubs in Xen's reserved
/// virtual range (slot 257), which no guest mapping can reach.
fn redirectable(rip: u64) -> bool {
    !xen_abi::arch::in_hypervisor_range(rip)
}

/// A created domain, ready to run.
pub struct Domain {
    stop: StopHandle,
    vm: Vm,
    /// Every vCPU, by id (taken by [`Domain::run`]).
    vcpus: Vec<Vcpu>,
    shared: Arc<DomainShared>,
    boot: BootState,
    console: std::sync::Mutex<ConsoleBackend>,
    console_gpa: u64,
}

/// One vCPU's run loop, on its own host thread (vCPU 0 on the caller's).
struct Runner<'a> {
    vcpu: Vcpu,
    vm: &'a Vm,
    shared: &'a Arc<DomainShared>,
    stop: &'a StopHandle,
    console: &'a std::sync::Mutex<ConsoleBackend>,
    console_gpa: u64,
    no_callback_logged: bool,
    /// When any vCPU first entered guest user mode (set once, by the first).
    first_user: &'a std::sync::OnceLock<Instant>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("name", &self.shared.name)
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

/// Writes console bytes into the domain's shared console sink.
struct SharedOut(Arc<DomainShared>);

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.console_write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Runner<'_> {
    fn service_console(&mut self) {
        // One vCPU services the ring at a time; the others skip (it is serviced after
        // every exit anyway).
        let Ok(mut console) = self.console.try_lock() else {
            return;
        };
        let page = GuestRingPage {
            ram: self.vm.ram(),
            gpa: self.console_gpa,
        };
        // Keyboard input: an unprivileged guest reads it from its console ring; a privileged
        // one through console_io (as dom0 does under Xen), so it stays in the shared queue.
        if !self.shared.privileged() {
            let mut c = match self.shared.console.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            while !c.input.is_empty() && console.input_space() > 0 {
                let (a, _) = c.input.as_slices();
                let n = console.queue_input(a);
                if n == 0 {
                    break;
                }
                c.input.drain(..n);
            }
        }
        let mut out = SharedOut(Arc::clone(self.shared));
        if let Err(e) = console.drain_output(&page, &mut out) {
            tracing::debug!("console ring: {e}");
        }
        if console.queued_input() > 0 {
            if let Err(e) = console.flush_input(&page) {
                tracing::debug!("console ring input: {e}");
            }
        }
        // Output consumed (ring space freed) or input produced: notify the guest, as
        // xenconsoled does.
        if console.take_notify() {
            if let Some(bp) = self.shared.events().map(|e| e.console.backend) {
                self.shared
                    .notify_guest(self.vm.ram(), bp, Some(self.vcpu.id()));
            }
        }
    }

    /// After every exit: the console ring (always: it is how output appears), the xenstore
    /// ring (cheap when idle), whatever the guest notified.
    fn service_backends(&mut self) {
        if let Some(ev) = self.shared.events() {
            // Both are serviced below either way; taking the flags resets them.
            let _ = ev.take_backend_notifications();
        }
        self.service_console();
        self.shared
            .service_xenstore(self.vm.ram(), Some(self.vcpu.id()));
    }

    /// Xen's check before every return to the guest: an upcall pending and not masked is
    /// delivered to the event callback (the registers become the callback's entry state).
    /// `Err` if the bounce frame could not be written (the domain must be crashed).
    fn deliver_events(&mut self, regs: &mut GuestRegs, cs: &mut GuestCs) -> Result<(), String> {
        let id = self.vcpu.id();
        let ram = self.vm.ram();
        if !self.shared.events_need_delivery(ram, id) {
            return Ok(());
        }
        if self.vcpu.pv().callbacks[xen_abi::pv_vcpu::callback_index::EVENT].address == 0 {
            if !self.no_callback_logged {
                self.no_callback_logged = true;
                tracing::info!(
                    vcpu = id,
                    "events unmasked but no event callback registered"
                );
            }
            return Ok(());
        }
        let cr3 = self.vcpu.cr3();
        match crate::trap::bounce_event_callback(
            ram,
            cr3,
            self.vcpu.pv_mut(),
            self.shared,
            id,
            *cs,
            regs,
        ) {
            Ok(new_cr3) => {
                if let Some(c) = new_cr3 {
                    self.vcpu.set_cr3(c);
                }
                *cs = GuestCs::Long64;
                Ok(())
            }
            Err(e) => Err(format!("event upcall: {e}")),
        }
    }

    /// Run this vCPU until the domain shuts down or kxen has to crash it; the crash
    /// message, if any.
    fn run_loop(
        &mut self,
        table: &crate::hypercall::HypercallTable<DomainShared>,
    ) -> Result<Option<String>, LaunchError> {
        if let Some(smp) = self.shared.smp() {
            smp.flush.set_idle(self.vcpu.id(), false);
        }
        let r = self.run_loop_inner(table);
        if let Some(smp) = self.shared.smp() {
            smp.flush.set_idle(self.vcpu.id(), true);
        }
        r
    }

    fn run_loop_inner(
        &mut self,
        table: &crate::hypercall::HypercallTable<DomainShared>,
    ) -> Result<Option<String>, LaunchError> {
        let crash = loop {
            let exit = self.vcpu.run()?;
            crate::pvmode::capture(&mut self.vcpu);
            // Where (and how) the guest resumes, unless the run ends.
            let mut resume: Option<(GuestRegs, GuestCs)> = None;
            let mut interrupted = false;
            let crash = match exit {
                VcpuExit::Syscall { mut regs, compat }
                    if self.vcpu.pv().guest_mode() == GuestMode::User =>
                {
                    // xen: a syscall from guest user mode goes to the guest kernel's callback
                    let shared = Arc::clone(self.shared);
                    match crate::pvmode::syscall_from_user(
                        &mut self.vcpu,
                        &shared,
                        &mut regs,
                        compat,
                    ) {
                        Ok(cs) => {
                            resume = Some((regs, cs));
                            None
                        }
                        Err(e) => Some(e.to_string()),
                    }
                }
                VcpuExit::Syscall { mut regs, compat } => {
                    // xen: a syscall from guest kernel mode is a hypercall
                    // Run-loop contract: see crate::hypercall (regs_replaced, return_cs).
                    let args = HypercallArgs::from_regs(&regs);
                    let shared = Arc::clone(self.shared);
                    let (ret, replaced, mut cs, reload) = {
                        let mut ctx = self.vcpu.hypercall_ctx(&mut regs, &*shared);
                        let ret = table.dispatch(&mut ctx, &args);
                        (ret, ctx.regs_replaced, ctx.return_cs, ctx.reload_cr3)
                    };
                    // Page-table entries the handlers wrote must reach KVM's shadow MMU;
                    // a new base pointer or a guest-requested flush reloads CR3 (crate::mm).
                    // Flushes naming other vCPUs are waited for in `flush_remote` below.
                    let written = self
                        .shared
                        .mm
                        .lock()
                        .map(|mut m| m.take_replay())
                        .unwrap_or_default();
                    self.vcpu.sync_pte_writes(written);
                    if self.flush_remote() || reload {
                        let cr3 = self.vcpu.pv().current_cr3();
                        self.vcpu.flush_tlb(cr3);
                    }
                    if !replaced {
                        regs.rax = ret as u64;
                        if compat {
                            cs = GuestCs::Compat32;
                        }
                    }
                    resume = Some((regs, cs));
                    None
                }
                VcpuExit::Exception {
                    vector,
                    frame,
                    regs,
                    ..
                } if crate::pvmode::before_exception(&mut self.vcpu, vector)? => {
                    resume = Some((regs, guest_cs(&frame)));
                    None
                }
                VcpuExit::Exception {
                    vector,
                    error_code,
                    cr2,
                    frame,
                    mut regs,
                } => {
                    let shared = Arc::clone(self.shared);
                    match crate::trap::handle_exception(
                        &mut self.vcpu,
                        &shared,
                        vector,
                        error_code,
                        cr2,
                        &frame,
                        &mut regs,
                    ) {
                        Ok(cs) => {
                            resume = Some((regs, cs));
                            None
                        }
                        // The domain was crashed (shutdown reason set, message recorded).
                        Err(e) => Some(e.to_string()),
                    }
                }
                VcpuExit::Shutdown => Some("triple fault".to_string()),
                VcpuExit::Interrupted => {
                    // A kick: typically an event for this vCPU (checked below, after the
                    // backends, which may raise one themselves).
                    interrupted = true;
                    None
                }
                VcpuExit::Sysenter { regs } => Some(format!(
                    "sysenter at {:#x} (not supported for 64-bit PV guests)",
                    regs.rip
                )),
                VcpuExit::Io { port, regs, .. } => Some(format!(
                    "unexpected port write {port:#x} at {:#x}",
                    regs.rip
                )),
                VcpuExit::Unexpected { reason } => Some(reason),
            };
            self.service_backends();
            let crash = crash.or_else(|| self.stop.requested());
            if let Some(msg) = crash {
                tracing::error!("crashing domain {}: {msg}", self.shared.name);
                self.shared.crash(&msg);
                break Some(msg);
            }
            if self.shared.shutdown_reason().is_some() {
                break self.shared.crash_message();
            }
            if !self.park_while_down() {
                break self.shared.crash_message();
            }
            if interrupted
                && self
                    .shared
                    .events_need_delivery(self.vm.ram(), self.vcpu.id())
            {
                // Redirect the guest only if it stopped in guest code (not in a kxen stub,
                // which exits again at once anyway).
                resume = self.interrupted_in_guest_code()?;
            }
            if let Some(f) = self.shared.smp().map(|s| &s.flush) {
                // Another vCPU asked this one to flush: do it before any guest instruction
                // (a vCPU stopped in a ring-0 stub exits again at once and flushes then).
                if f.pending(self.vcpu.id()) {
                    if resume.is_none() {
                        resume = self.interrupted_in_guest_code()?;
                    }
                    if resume.is_some() && f.ack(self.vcpu.id()) {
                        let cr3 = self.vcpu.pv().current_cr3();
                        self.vcpu.flush_tlb(cr3);
                    }
                }
            }
            if let Some((mut regs, mut cs)) = resume {
                if let Err(msg) = self.deliver_events(&mut regs, &mut cs) {
                    self.shared.crash(&msg);
                    break Some(msg);
                }
                self.shared
                    .time_before_resume(self.vm.ram(), self.vcpu.cr3(), self.vcpu.id());
                self.resume(&regs, cs)?;
            }
        };
        Ok(crash)
    }

    /// After [`VcpuExit::Interrupted`]: where the guest stopped, if it stopped in its own
    /// code. `None` inside kxen's stubs: those in ring 0, and the LSTAR stub, which runs at
    /// CPL3 with the guest's code segment on this host (`syscall` stays at CPL3) but lives in
    /// Xen's reserved range, where no guest code can run. A vCPU stopped there is half-way
    /// into a hypercall: an upcall delivered now would run before the hypercall the guest
    /// already committed to (e.g. `SCHEDOP_block` after its last check for events), which
    /// then blocks with the event consumed. Xen delivers only at the hypercall's return.
    fn interrupted_in_guest_code(&mut self) -> Result<Option<(GuestRegs, GuestCs)>, LaunchError> {
        Ok(self
            .vcpu
            .interrupted_guest_state()?
            .filter(|(regs, _)| redirectable(regs.rip)))
    }

    /// After a hypercall: wait until the other vCPUs it asked to flush have acknowledged
    /// ([`crate::tlbflush`]); true if this vCPU was asked to flush meanwhile.
    fn flush_remote(&self) -> bool {
        let Some(smp) = self.shared.smp() else {
            return false;
        };
        let (own, late) = smp.flush.wait(self.vcpu.id(), crate::tlbflush::ACK_TIMEOUT);
        if !late.is_empty() {
            tracing::warn!(
                vcpu = self.vcpu.id(),
                ?late,
                "remote TLB flush not acknowledged in time"
            );
        }
        own
    }

    /// After `VCPUOP_down` on this vCPU: wait until it is up again; false if the domain
    /// ends meanwhile.
    fn park_while_down(&mut self) -> bool {
        let Some(smp) = self.shared.smp() else {
            return true;
        };
        let id = self.vcpu.id();
        if smp.is_up(id).unwrap_or(true) {
            return true;
        }
        tracing::debug!(vcpu = id, "vCPU down");
        let shared = self.shared;
        // xen: the runstate area of a down vCPU says RUNSTATE_offline (written through its
        // own page tables, as at a context switch), running again once it is up.
        let flag = self
            .vcpu
            .pv()
            .vm_assist(xen_abi::mmu::VMASST_TYPE_RUNSTATE_UPDATE_FLAG);
        let cr3 = self.vcpu.cr3();
        shared.set_vcpu_runstate(self.vm.ram(), cr3, id, crate::time::RunState::Offline, flag);
        // A down vCPU runs no guest code: it flushes when it runs again.
        smp.flush.set_idle(id, true);
        let run = matches!(
            smp.wait_runnable(id, || shared.shutdown_reason().is_some()),
            crate::smp::Wake::Run(_)
        );
        smp.flush.set_idle(id, false);
        if run {
            shared.set_vcpu_runstate(self.vm.ram(), cr3, id, crate::time::RunState::Running, flag);
        }
        run
    }

    /// A secondary vCPU's thread: wait for `VCPUOP_up`, start from the context given with
    /// `VCPUOP_initialise`, run. A failure crashes the domain.
    fn run_secondary(mut self, table: &crate::hypercall::HypercallTable<DomainShared>) {
        let id = self.vcpu.id();
        let shared = self.shared;
        let r = match shared.smp() {
            Some(smp) => match smp.wait_runnable(id, || shared.shutdown_reason().is_some()) {
                crate::smp::Wake::Stop => return,
                crate::smp::Wake::Run(ctx) => {
                    let applied = match ctx {
                        Some(c) => {
                            if c.ldt_ents != 0 {
                                // xen: arch_set_info_guest takes the LDT like MMUEXT_SET_LDT.
                                if let Ok(mut mm) = self.shared.mm.lock() {
                                    mm.set_ldt(self.vm.ram(), id, c.ldt_base, c.ldt_ents, c.cr3);
                                }
                            }
                            crate::smp::apply_context(&mut self.vcpu, &c).map_err(|e| e.to_string())
                        }
                        None => Err("vCPU up without a context".to_string()),
                    };
                    match applied {
                        Ok(()) => {
                            tracing::debug!(vcpu = id, "vCPU up");
                            let flag = self
                                .vcpu
                                .pv()
                                .vm_assist(xen_abi::mmu::VMASST_TYPE_RUNSTATE_UPDATE_FLAG);
                            shared.set_vcpu_runstate(
                                self.vm.ram(),
                                self.vcpu.cr3(),
                                id,
                                crate::time::RunState::Running,
                                flag,
                            );
                            shared.publish_vcpu_time(self.vm.ram(), None, id);
                            self.run_loop(table).map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e),
                    }
                }
            },
            None => return,
        };
        if let Err(e) = r {
            shared.crash(&format!("vCPU {id}: {e}"));
        }
        shared.end_all_vcpus();
    }

    /// Return to the guest: the PV CPU model (mode, page table, segment bases, CR0.TS, GDT,
    /// debug registers) first, then the registers.
    fn resume(&mut self, regs: &GuestRegs, cs: GuestCs) -> Result<(), LaunchError> {
        crate::pvmode::apply(&mut self.vcpu)?;
        // Every entry into guest user mode (an iret with RPL 3, a vCPU initialised in user
        // mode) resumes through here: note the first one (a mode check and an atomic load
        // per resume after that).
        if self.vcpu.pv().guest_mode() == GuestMode::User && self.first_user.get().is_none() {
            let _ = self.first_user.set(Instant::now());
        }
        Ok(self.vcpu.return_to_guest(regs, cs)?)
    }
}

impl Domain {
    /// Check the kernel, then create the VM and build the domain. `console_out` receives the
    /// guest's console output.
    pub fn create(
        spec: &LaunchSpec,
        console_out: Box<dyn Write + Send>,
    ) -> Result<Self, LaunchError> {
        let mode = if spec.privileged {
            LaunchMode::Privileged
        } else {
            LaunchMode::Unprivileged
        };
        let image = load_kernel_image(&spec.kernel)?;
        let notes = parse_xen_notes(&image.elf)?;
        let params = notes.kernel_params()?;
        // The refusals of the foundation: before any VM or vCPU exists.
        check_launch(&params, mode)?;
        let submap0 = features_submap(mode, &params, KXEN_IMPLEMENTED, 0)?;

        let nr_pages = spec
            .memory_mib
            .checked_mul(1 << 20)
            .map(|b| b / PAGE_SIZE)
            .filter(|&p| p > 0 && p + SHARED_FRAMES <= MAX_GUEST_PAGES)
            .ok_or_else(|| {
                LaunchError::Memory(format!(
                    "{} MiB is not a usable guest memory size",
                    spec.memory_mib
                ))
            })?;
        let kernel = KernelSpec::from_params(&params);
        // Lay out first, so "too little memory" is a refusal before KVM is opened.
        layout::compute(&LayoutInput {
            virt_base: kernel.virt_base,
            virt_kstart: kernel.virt_kstart,
            virt_kend: kernel.virt_kend,
            nr_pages,
            initrd_len: spec.initrd.len() as u64,
            unmapped_initrd: kernel.unmapped_initrd,
            p2m_base: kernel.init_p2m,
        })?;

        let vcpus = spec.vcpus.max(1);
        let vm = Vm::new(nr_pages + SHARED_FRAMES, vcpus)?;
        vm.set_cpuid_freq_leaf(!spec.no_cpuid_freq_leaf);
        vm.ring0()
            .invalidate_m2p(nr_pages, SHARED_FRAMES)
            .map_err(VmError::from)?;
        let boot = builder::build(
            vm.ram().mem(),
            &DomainSpec {
                elf: &image.elf,
                kernel,
                initrd: &spec.initrd,
                cmdline: &spec.cmdline,
                nr_pages,
                privileged: spec.privileged,
                store_evtchn: STORE_EVTCHN,
                console_evtchn: CONSOLE_EVTCHN,
                private_l4: vm.ring0().private_l4_entries(),
                exit_va: vm.ring0().syscall_exit_va(),
            },
        )?;
        tracing::info!(
            entry = format_args!("{:#x}", boot.rip),
            start_info = format_args!("{:#x}", boot.rsi),
            pages = nr_pages,
            "domain built"
        );
        // Start of day as Xen's builder + pin: validate the initial tables, pin the L4.
        // Xen-shared frames, read-write: shared_info and the grant-table frames.
        // xen: share_xen_page_with_guest(SHARE_rw) for both.
        let shared_frames: Vec<(u64, bool)> = std::iter::once(boot.shared_info_mfn)
            .chain(
                (0..u64::from(builder::MAX_GRANT_FRAMES))
                    .map(|i| builder::grant_table_mfn(nr_pages) + i),
            )
            .map(|m| (m, true))
            .collect();
        let mut mm = crate::mm::DomainMm::new(
            nr_pages,
            &shared_frames,
            xen_abi::pte::PteConfig {
                abi: spec.pte_abi,
                ..Default::default()
            },
            vm.ring0().private_l4_entries(),
        );
        mm.start_of_day(vm.ram(), boot.cr3 / PAGE_SIZE)?;
        // The vCPUs' GDT/LDT copies are written under the frame table's lock.
        mm.attach_ring0(vm.ring0().clone());
        let mut vcpu = vm.create_vcpu(0)?;
        vcpu.set_pv_entry(PvEntry {
            rip: boot.rip,
            rsp: boot.rsp,
            rsi: boot.rsi,
            cr3: boot.cr3,
            // xen: xg_dom_x86.c vcpu_x86_64, interrupts (events) notionally enabled
            rflags: 0x202,
        })?;
        let shared = Arc::new(DomainShared::new(
            spec.name.clone(),
            mode,
            submap0,
            spec.cmdline.clone(),
            nr_pages,
            boot.shared_info_mfn,
            console_out,
        ));
        *shared.mm.lock().unwrap_or_else(|p| p.into_inner()) = mm;
        let _ = shared.m2p_extent_mfns.set(vm.ring0().m2p_extent_mfns());
        let events = DomainEvents::new(
            vm.ram().clone(),
            &EventsConfig {
                domid: GUEST_DOMID,
                name: spec.name.clone(),
                memory_kib: nr_pages * (PAGE_SIZE / 1024),
                vcpus,
                store_port: STORE_EVTCHN,
                store_mfn: boot.store_mfn,
                console_port: CONSOLE_EVTCHN,
                console_mfn: boot.console_mfn,
            },
        )?;
        events.register_kicker(0, vcpu.kicker());
        // The other vCPUs exist from the start, down until the guest brings them up
        // (VCPUOP_initialise + VCPUOP_up, crate::smp).
        let mut all = vec![vcpu];
        for id in 1..vcpus {
            let v = vm.create_vcpu(id)?;
            events.register_kicker(id, v.kicker());
            all.push(v);
        }
        shared.attach_events(events)?;
        let _ = shared.smp.set(crate::smp::Smp::new(vcpus));
        attach_time(&shared, &vm, &all[0], vcpus)?;
        Ok(Domain {
            stop: StopHandle {
                why: Arc::default(),
                kicker: all[0].kicker(),
                shared: shared.clone(),
            },
            console_gpa: boot.console_mfn * PAGE_SIZE,
            vm,
            vcpus: all,
            shared,
            boot,
            console: std::sync::Mutex::new(ConsoleBackend::new()),
        })
    }

    /// A handle that stops the run from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The state shared with hypercall handlers.
    pub fn shared(&self) -> &Arc<DomainShared> {
        &self.shared
    }

    /// The guest's RAM (with the frames shared with it), e.g. for a backend reaching granted
    /// pages through [`DomainShared::grant_table`] after the guest signalled readiness.
    pub fn ram(&self) -> &GuestRam {
        self.vm.ram()
    }

    /// Where things were put at start of day.
    pub fn boot_state(&self) -> &BootState {
        &self.boot
    }

    /// Exit, vector and hypercall counters.
    pub fn stats(&self) -> &Arc<ExitStats> {
        self.vm.stats()
    }

    /// Run the domain until it shuts down or kxen has to crash it: vCPU 0 on this thread,
    /// every other vCPU on its own thread (parked until the guest brings it up). Any
    /// vCPU's shutdown or crash stops them all; their threads are joined before returning.
    pub fn run(&mut self) -> Result<Outcome, LaunchError> {
        let start = Instant::now();
        let first_user = std::sync::OnceLock::new();
        let table = crate::hypercall::pv_hypercall_table().with_stats(self.vm.stats().clone());
        let vcpus = std::mem::take(&mut self.vcpus);
        let (vm, shared, stop, console) = (&self.vm, &self.shared, &self.stop, &self.console);
        let console_gpa = self.console_gpa;
        let runner = |vcpu: Vcpu| Runner {
            vcpu,
            vm,
            shared,
            stop,
            console,
            console_gpa,
            no_callback_logged: false,
            first_user: &first_user,
        };
        let mut it = vcpus.into_iter();
        let Some(vcpu0) = it.next() else {
            return Err(LaunchError::Vcpu(VcpuError::BadId(0)));
        };
        let result = std::thread::scope(|scope| {
            for v in it {
                let r = runner(v);
                let table = &table;
                let name = format!("kxen-vcpu{}", r.vcpu.id());
                if let Err(e) = std::thread::Builder::new()
                    .name(name)
                    .spawn_scoped(scope, move || r.run_secondary(table))
                {
                    shared.crash(&format!("cannot start a vCPU thread: {e}"));
                }
            }
            let mut r0 = runner(vcpu0);
            let res = r0.run_loop(&table);
            if let Err(e) = &res {
                shared.crash(&e.to_string());
            }
            // Stop every other vCPU (the scope joins their threads).
            shared.end_all_vcpus();
            r0.service_console();
            res
        });
        self.shared.stop_time();
        let crash = result?.or_else(|| self.shared.crash_message());
        let reason = self
            .shared
            .shutdown_reason()
            .unwrap_or(ShutdownReason::Crash);
        let outcome = Outcome {
            reason,
            crash_message: crash,
            run_time: start.elapsed(),
            boot_to_user: first_user.get().map(|t| t.saturating_duration_since(start)),
        };
        tracing::debug!(
            "run summary: {} in {:?}; {}",
            outcome.describe(),
            outcome.run_time,
            self.stats_line()
        );
        Ok(outcome)
    }

    /// Exits by kind, hypercalls by number and traps by vector, on one line.
    pub fn stats_line(&self) -> String {
        self.stats()
            .snapshot()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::redirectable;
    use xen_abi::arch::{KXEN_RING0_VIRT_START, L4_SLOT_SIZE};

    #[test]
    fn a_vcpu_stopped_in_kxens_stubs_is_never_redirected_into_an_upcall() {
        // Anywhere in kxen's ring-0 slot, where the LSTAR stub runs at CPL3 on this host.
        for rip in [
            KXEN_RING0_VIRT_START,
            KXEN_RING0_VIRT_START + 0x1000 + 4,
            KXEN_RING0_VIRT_START + L4_SLOT_SIZE - 1,
        ] {
            assert!(!redirectable(rip), "{rip:#x}");
        }
        // Guest kernel and user code.
        for rip in [0xffff_ffff_8000_1000, 0xffff_8800_0000_0000, 0x40_1000] {
            assert!(redirectable(rip), "{rip:#x}");
        }
    }
}
