//! The KVM VM, vCPU setup and the run loop with exit classification.
//!
//! The guest kernel runs at CPL3 (CS 0xe033, SS 0xe02b, IOPL 0). Every way into ring 0 (IDT
//! vectors, `syscall`, `sysenter`) lands on a stub that exits to the VMM with an `out` (see the
//! port map in [`crate::ring0`]); the VMM reads the state, and resumes the guest at CPL3 by
//! setting registers and segments ([`Vcpu::return_to_guest`]). `vmcall` is never used: on
//! these hosts (nested KVM on PVM) it never returns.
//!
//! Typical loop (the builder sets memory up first):
//!
//! ```text
//! let vm = Vm::new(pages, nr_vcpus)?;            // RAM + ring-0 layer, two memslots
//! // builder: write guest page tables incl. vm.ring0().private_l4_entries()
//! let mut v = vm.create_vcpu(0)?;
//! v.set_pv_entry(PvEntry { rip, rsp, rsi, cr3, rflags: 0x202 })?;
//! loop { match v.run()? {
//!     VcpuExit::Syscall { mut regs, .. } => { /* dispatch */ v.return_to_guest(&regs, GuestCs::Long64)? }
//!     VcpuExit::Exception { .. } => { /* bounce to the guest's trap table */ }
//!     ...
//! } }
//! ```
//!
//! # What each exit carries
//!
//! * `Syscall { regs, compat }`: all GPRs as the guest left them; `regs.rip = rcx` (return
//!   address), `regs.rflags = r11`; `rsp` is the guest's. CR3 (for guest memory access) is in
//!   [`Vcpu::cr3`].
//! * `Exception { vector, error_code, cr2, frame, regs }`: the CPU-pushed frame read from the
//!   ring-0 stack; `regs` has the guest GPRs with `rip/rsp/rflags` from the frame.
//! * `Io`, `Shutdown` (triple fault), `Interrupted` (kicked), `Unexpected { reason }`.
//!
//! # Quirks of nested KVM on PVM (measured here)
//!
//! * `syscall` from CPL3 jumps to LSTAR but stays at CPL3 (CS 0xe033), so a port stub's `out`
//!   would raise #GP(0) (still recognised by [`Vcpu::run`] as `Syscall`, ~65 µs round trip).
//!   LSTAR therefore points at an MMIO-write stub ([`crate::ring0::SYSCALL_EXIT_GPA`]), ~40 µs
//!   round trip, against ~8-28 µs for a bare ring-0 `out` exit.
//! * `int $n` from CPL3 (n other than 3/4 in 64-bit mode) raises #UD at the instruction
//!   whatever the gate DPL; `int3` in compat mode raises #UD too; `sysenter` raises #UD.
//!   [`crate::trap::software_int_at`] decodes `int $n` for the trap layer.
//! * `KVM_GET/SET_(S)REGS` ioctls cost several µs each: registers travel through `kvm_run`
//!   (`KVM_CAP_SYNC_REGS`) when available.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region,
    kvm_xcrs, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit as KvmExit, VcpuFd, VmFd};
use thiserror::Error;
use tracing::{debug, warn};
use xen_abi::pv_vcpu::PvVcpuState;

use crate::emulate::cpuid::PvCpuidConfig;
use crate::hypercall::HypercallCtx;
use crate::memory::{GuestRam, MemArea, MemoryError};
use crate::replay;
use crate::ring0::{
    Ring0Error, Ring0Layer, VcpuRing0, GUEST_ALIAS_BASE, MAX_REPLAY, PORT_SYSCALL, PORT_SYSCALL32,
    PORT_SYSENTER, PORT_TLB_FLUSH, REPLAY_PAGES, RING0_CS, RING0_DS, RING3_CS32, RING3_CS64,
    RING3_DS, SYSCALL_EXIT_GPA, TSS_SEL,
};
use crate::trap::{read_exception_frame, CpuFrame, TrapError, VEC_GP};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_PGE: u64 = 1 << 7;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Always 1.
    pub const FIXED: u64 = 1 << 1;
    /// Trap (single step).
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// I/O privilege level (2 bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Virtual 8086.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// Bits a guest may control: arithmetic flags, TF, DF, OF, AC, ID (never IOPL/NT/VM/RF/VIF/VIP).
    pub const GUEST_MASK: u64 = 0x0000_0000_0024_0dd5 | TF;
}

/// Make guest-supplied RFLAGS safe: IOPL 0 (so guest `in`/`out` fault), IF set (Xen PV guests
/// always run with IF=1; their virtual IF is the event mask), no NT/VM.
// xen: the iret hypercall clears IOPL/VM and sets IF (arch/x86/x86_64/entry.S behaviour)
pub fn sanitize_rflags(v: u64) -> u64 {
    (v & rflags::GUEST_MASK) | rflags::FIXED | rflags::IF
}

/// Errors creating the VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened or a VM-wide ioctl failed.
    #[error("KVM: {what}: {err}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// Memory allocation failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The ring-0 layer could not be built.
    #[error(transparent)]
    Ring0(#[from] Ring0Error),
    /// The host cannot run kxen guests.
    #[error("unsupported host: {0}")]
    Unsupported(&'static str),
}

/// Errors from a vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("KVM vCPU {what}: {err}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// The vCPU id is out of range or already created.
    #[error("bad vCPU id {0}")]
    BadId(u32),
    /// An exception frame could not be read.
    #[error(transparent)]
    Trap(#[from] TrapError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |err| VcpuError::Kvm { what, err }
}
fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { what, err }
}

/// Kinds of exit counted in [`ExitStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    /// [`VcpuExit::Syscall`].
    Syscall,
    /// [`VcpuExit::Exception`].
    Exception,
    /// [`VcpuExit::Io`].
    Io,
    /// [`VcpuExit::Shutdown`].
    Shutdown,
    /// [`VcpuExit::Interrupted`].
    Interrupted,
    /// [`VcpuExit::Unexpected`].
    Unexpected,
}

impl ExitKind {
    /// Number of kinds.
    pub const COUNT: usize = 6;
    /// All kinds, in counter order.
    pub const ALL: [ExitKind; Self::COUNT] = [
        Self::Syscall,
        Self::Exception,
        Self::Io,
        Self::Shutdown,
        Self::Interrupted,
        Self::Unexpected,
    ];
}

/// Number of hypercall numbers counted individually; higher ones share one counter.
pub const HYPERCALL_COUNTERS: usize = 64;

/// Cheap exit/hypercall counters, shared by all vCPUs of a VM (relaxed atomics).
#[derive(Debug)]
pub struct ExitStats {
    exits: [AtomicU64; ExitKind::COUNT],
    vectors: [AtomicU64; 256],
    hypercalls: [AtomicU64; HYPERCALL_COUNTERS],
    hypercalls_other: AtomicU64,
}

impl Default for ExitStats {
    fn default() -> Self {
        Self {
            exits: std::array::from_fn(|_| AtomicU64::new(0)),
            vectors: std::array::from_fn(|_| AtomicU64::new(0)),
            hypercalls: std::array::from_fn(|_| AtomicU64::new(0)),
            hypercalls_other: AtomicU64::new(0),
        }
    }
}

impl ExitStats {
    /// Count one exit of `kind`.
    pub fn count_exit(&self, kind: ExitKind) {
        self.exits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Count one exception exit with `vector`.
    pub fn count_vector(&self, vector: u8) {
        self.vectors[usize::from(vector)].fetch_add(1, Ordering::Relaxed);
    }
    /// Count one hypercall `nr`.
    pub fn count_hypercall(&self, nr: u64) {
        match usize::try_from(nr)
            .ok()
            .and_then(|i| self.hypercalls.get(i))
        {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.hypercalls_other.fetch_add(1, Ordering::Relaxed),
        };
    }
    /// Exits of `kind` so far.
    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize].load(Ordering::Relaxed)
    }
    /// Exception exits with `vector` so far.
    pub fn vector(&self, vector: u8) -> u64 {
        self.vectors[usize::from(vector)].load(Ordering::Relaxed)
    }
    /// Non-zero counters as `(name, count)`: exit kinds (`exit.syscall`...), exception
    /// vectors (`vector.14`), hypercalls (`hypercall.17`, `hypercall.other`).
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for k in ExitKind::ALL {
            out.push((format!("exit.{k:?}").to_lowercase(), self.exits(k)));
        }
        for (v, c) in self.vectors.iter().enumerate() {
            out.push((format!("vector.{v}"), c.load(Ordering::Relaxed)));
        }
        for (n, c) in self.hypercalls.iter().enumerate() {
            out.push((format!("hypercall.{n}"), c.load(Ordering::Relaxed)));
        }
        out.push((
            "hypercall.other".into(),
            self.hypercalls_other.load(Ordering::Relaxed),
        ));
        out.retain(|(_, c)| *c != 0);
        out
    }

    /// Hypercalls `nr` so far (`nr >= HYPERCALL_COUNTERS` all share one counter).
    pub fn hypercalls(&self, nr: u64) -> u64 {
        match usize::try_from(nr)
            .ok()
            .and_then(|i| self.hypercalls.get(i))
        {
            Some(c) => c.load(Ordering::Relaxed),
            None => self.hypercalls_other.load(Ordering::Relaxed),
        }
    }
}

/// General-purpose registers plus rip/rflags of the guest at the point it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl From<&kvm_regs> for GuestRegs {
    fn from(r: &kvm_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl GuestRegs {
    pub(crate) fn to_kvm(self) -> kvm_regs {
        kvm_regs {
            rax: self.rax,
            rbx: self.rbx,
            rcx: self.rcx,
            rdx: self.rdx,
            rsi: self.rsi,
            rdi: self.rdi,
            rsp: self.rsp,
            rbp: self.rbp,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip: self.rip,
            rflags: self.rflags,
        }
    }
}

/// Start-of-day state of a PV vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PvEntry {
    /// Entry point (guest virtual).
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// `start_info` virtual address (Xen passes it in rsi).
    pub rsi: u64,
    /// Page-table base (machine address of the L4).
    pub cr3: u64,
    /// Initial RFLAGS (sanitized: IOPL 0, IF 1).
    pub rflags: u64,
}

/// Which CPL3 code segment to return to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestCs {
    /// 64-bit: CS `FLAT_RING3_CS64` (0xe033).
    #[default]
    Long64,
    /// Compatibility mode: CS `FLAT_RING3_CS32` (0xe023).
    Compat32,
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// The guest executed `syscall` (64-bit, or compat when `compat`). `regs.rip`/`regs.rflags`
    /// are the return address and flags (= `rcx`/`r11`), everything else as the guest left it.
    Syscall {
        /// Registers.
        regs: GuestRegs,
        /// Entered through CSTAR (compat mode) rather than LSTAR.
        compat: bool,
    },
    /// The guest executed `sysenter`; `regs.rsp`/`rip` are as the guest left them except
    /// that the CPU does not save them (the guest's convention says where to return).
    Sysenter {
        /// Registers.
        regs: GuestRegs,
    },
    /// An IDT vector was delivered (exception, or `int n` through a DPL-3 gate).
    /// `regs.rip`/`rsp`/`rflags` are taken from `frame`.
    Exception {
        /// The vector.
        vector: u8,
        /// The error code, for vectors that have one.
        error_code: Option<u64>,
        /// CR2 at the exit (meaningful for #PF).
        cr2: u64,
        /// The frame the CPU pushed.
        frame: CpuFrame,
        /// Registers.
        regs: GuestRegs,
    },
    /// An `out` that is not one of kxen's stubs (only possible from ring-0 test code).
    Io {
        /// Port.
        port: u16,
        /// Bytes written (up to 4; zero-filled).
        data: [u8; 4],
        /// Access size.
        size: u8,
        /// Registers at the exit.
        regs: GuestRegs,
    },
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_RUN` was interrupted (immediate exit / signal) before or while running.
    Interrupted,
    /// Anything else; the guest cannot be resumed meaningfully.
    Unexpected {
        /// Description.
        reason: String,
    },
}

/// The KVM VM: guest RAM, kxen-private memory and the ring-0 layer.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    ram: GuestRam,
    ring0: Arc<Ring0Layer>,
    stats: Arc<ExitStats>,
    created: std::sync::Mutex<Vec<bool>>,
    /// Offer CPUID leaf 0x16 (processor frequency) to vCPUs created from now on.
    freq_leaf: AtomicBool,
}

impl Vm {
    /// Create a VM with `mem_pages` pages of guest RAM and room for `nr_vcpus` vCPUs.
    pub fn new(mem_pages: u64, nr_vcpus: u32) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(vm_err("open /dev/kvm"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(vm_err("get supported cpuid"))?;
        let phys_bits = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0x8000_0008)
            .map_or(36, |e| e.eax & 0xff);
        // Private memory sits at PRIVATE_BASE = 1 << 39: the guest must address 40 bits.
        if phys_bits < 40 {
            return Err(VmError::Unsupported(
                "fewer than 40 guest physical address bits",
            ));
        }
        let fd = kvm.create_vm().map_err(vm_err("create VM"))?;
        let ram = GuestRam::new(mem_pages)?;
        let ring0 = Ring0Layer::new(nr_vcpus, mem_pages)?;
        Self::add_slot(&fd, 0, &ram)?;
        Self::add_slot(&fd, 1, ring0.private_mem())?;
        Ok(Vm {
            kvm,
            fd,
            ram,
            ring0: Arc::new(ring0),
            stats: Arc::new(ExitStats::default()),
            created: std::sync::Mutex::new(vec![false; nr_vcpus as usize]),
            freq_leaf: AtomicBool::new(true),
        })
    }

    /// Whether vCPUs created from now on see CPUID leaf 0x16 filled with the TSC frequency
    /// when the host leaves it empty ([`PvCpuidConfig::freq_leaf_mhz`]; on by default).
    pub fn set_cpuid_freq_leaf(&self, on: bool) {
        self.freq_leaf.store(on, Ordering::Relaxed);
    }

    fn add_slot(fd: &VmFd, slot: u32, area: &MemArea) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: area.base(),
            memory_size: area.size(),
            userspace_addr: area.host_addr(),
        };
        // SAFETY: the region is a live mmap owned by `area`. Clones of it are held by the `Vm`
        // and by every `Vcpu` (fields declared after their KVM fds, so the fds close first),
        // so the mapping outlives every file descriptor through which KVM can reach it; it is
        // never resized or remapped.
        unsafe { fd.set_user_memory_region(region) }.map_err(vm_err("set memory region"))
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM file descriptor (for irqfd/ioeventfd and the like).
    pub fn vm_fd(&self) -> &VmFd {
        &self.fd
    }

    /// The ring-0 layer (for [`Ring0Layer::private_l4_entries`]).
    pub fn ring0(&self) -> &Ring0Layer {
        &self.ring0
    }

    /// Exit counters.
    pub fn stats(&self) -> &Arc<ExitStats> {
        &self.stats
    }

    /// Create and set up vCPU `id` (each id once, `0..nr_vcpus`).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu, VcpuError> {
        let r0 = self.ring0.vcpu(id).ok_or(VcpuError::BadId(id))?;
        {
            let mut created = self
                .created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match created.get_mut(id as usize) {
                Some(c) if !*c => *c = true,
                _ => return Err(VcpuError::BadId(id)),
            }
        }
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create"))?;
        let mut vcpu = Vcpu {
            id,
            fd,
            ram: self.ram.clone(),
            ring0: Arc::clone(&self.ring0),
            r0,
            stats: Arc::clone(&self.stats),
            sregs: kvm_sregs::default(),
            pv: Box::default(),
            sync: false,
            kick: Arc::default(),
            flush_pending: false,
            reload_cr3: false,
            flush_cr3: None,
            pte_replay: Vec::new(),
            in_flight: None,
            restart_len: 2,
            cpuid_cfg: PvCpuidConfig::default(),
        };
        install_kick_handler()?;
        vcpu.setup(&self.kvm, self.freq_leaf.load(Ordering::Relaxed))?;
        Ok(vcpu)
    }
}

fn seg(selector: u16, type_: u8, dpl: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn null_seg() -> kvm_segment {
    kvm_segment {
        unusable: 1,
        ..kvm_segment::default()
    }
}

/// One vCPU.
#[derive(Debug)]
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    /// Keeps guest RAM mapped while the vCPU (and so the VM in the kernel) exists.
    ram: GuestRam,
    /// Keeps private memory mapped, likewise.
    ring0: Arc<Ring0Layer>,
    r0: VcpuRing0,
    stats: Arc<ExitStats>,
    /// Special registers as of the last exit / as they will be set at the next return.
    sregs: kvm_sregs,
    pv: Box<PvVcpuState>,
    /// Registers travel through `kvm_run` (KVM_CAP_SYNC_REGS) instead of ioctls.
    sync: bool,
    kick: Arc<KickState>,
    /// Replays or a TLB flush are due before the guest's next instruction
    /// ([`Vcpu::flush_tlb`], [`Vcpu::sync_pte_writes`]); `run` prepares them.
    flush_pending: bool,
    /// The due work includes a CR3 reload ([`Vcpu::flush_tlb`]).
    reload_cr3: bool,
    /// The CR3 [`Vcpu::flush_tlb`] asked for, applied when the replay is prepared.
    flush_cr3: Option<u64>,
    /// The domain-level inputs of this vCPU's CPUID view (native and forced-emulation).
    cpuid_cfg: PvCpuidConfig,
    /// Guest-physical addresses of page-table entries the VMM wrote, replayed in ring 0
    /// before the guest's next instruction ([`Vcpu::sync_pte_writes`]).
    pte_replay: Vec<u64>,
    /// The entries of the folded replay program last handed to KVM (it returns to the guest
    /// by itself; kept in case a kick stops the vCPU inside it).
    in_flight: Option<Vec<u64>>,
    /// How far back the last hypercall restarts (see [`HypercallCtx::restart_len`]).
    restart_len: u64,
}

impl Vcpu {
    fn setup(&mut self, kvm: &Kvm, freq_leaf: bool) -> Result<(), VcpuError> {
        let host = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported cpuid"))?;
        // xen: cpuid.c, leaf 0x40000003: the guest TSC frequency in subleaf 0 ECX and the
        // CPU frequency in subleaf 2 EAX (kxen: both are KVM's TSC rate for this vCPU).
        let tsc_khz = self.tsc_khz().unwrap_or(0);
        self.cpuid_cfg.time.tsc_khz = tsc_khz;
        self.cpuid_cfg.time.cpu_khz = tsc_khz;
        if freq_leaf {
            self.cpuid_cfg.freq_leaf_mhz = tsc_khz / 1000;
        }
        // The vCPU's native `cpuid` (which does not fault under KVM) sees the same PV view
        // as the forced-emulation path, Xen's leaves at 0x40000000 included.
        let pv = crate::emulate::cpuid::pv_native_table(
            &crate::emulate::cpuid::CpuidTable::from_kvm(host.as_slice()),
            &self.cpuid_cfg,
        )
        .to_kvm();
        let cpuid = kvm_bindings::CpuId::from_entries(&pv).map_err(|_| VcpuError::Kvm {
            what: "build cpuid",
            // E2BIG: more entries than KVM_MAX_CPUID_ENTRIES.
            err: kvm_ioctls::Error::new(7),
        })?;
        // XSAVE and XCR0 follow what the guest is shown (KVM checks CR4/XCR0 against it).
        let leaf = |f: u32, i: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .copied()
        };
        let xsave = leaf(1, 0).is_some_and(|e| e.ecx & (1 << 26) != 0);
        let xcr0_supported = leaf(0xd, 0).map_or(0, |e| u64::from(e.eax));
        self.fd.set_cpuid2(&cpuid).map_err(kvm_err("set cpuid"))?;

        let tss = kvm_segment {
            base: self.r0.tss_base,
            limit: VcpuRing0::TSS_LIMIT,
            selector: TSS_SEL,
            type_: 11, // busy 64-bit TSS
            present: 1,
            ..kvm_segment::default()
        };
        let mut cr4 = CR4_PAE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        if xsave {
            cr4 |= CR4_OSXSAVE;
        }
        let mut sregs = self.fd.get_sregs().map_err(kvm_err("get sregs"))?;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.cr4 = cr4;
        sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
        sregs.gdt.base = self.r0.gdt_base;
        sregs.gdt.limit = VcpuRing0::GDT_LIMIT;
        sregs.idt.base = self.ring0.idt_base();
        sregs.idt.limit = 0xfff;
        sregs.tr = tss;
        sregs.ldt = null_seg();
        sregs.ds = null_seg();
        sregs.es = null_seg();
        sregs.fs = null_seg();
        sregs.gs = null_seg();
        set_cpl3_segments(&mut sregs, GuestCs::Long64);
        self.sregs = sregs;
        // Not applied yet: CR3 comes with the entry point (set_pv_entry).

        let star = (u64::from(RING3_CS32) << 48) | (u64::from(RING0_CS) << 32);
        let msrs = [
            (MSR_STAR, star),
            (MSR_LSTAR, self.ring0.syscall_stub()),
            (MSR_CSTAR, self.ring0.special_stub(PORT_SYSCALL32)),
            (
                MSR_SFMASK,
                rflags::TF | rflags::IF | rflags::DF | rflags::AC | rflags::NT | rflags::IOPL,
            ),
            (MSR_SYSENTER_CS, u64::from(RING0_CS)),
            (MSR_SYSENTER_ESP, self.r0.rsp0_top),
            (MSR_SYSENTER_EIP, self.ring0.special_stub(PORT_SYSENTER)),
        ];
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
            what: "build msrs",
            err: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let n = self.fd.set_msrs(&msrs).map_err(kvm_err("set msrs"))?;
        if n != entries.len() {
            return Err(VcpuError::Kvm {
                what: "set msrs (partial)",
                err: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
        if xsave {
            // x87 | SSE | AVX, as far as the host supports them.
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = 0x7 & (xcr0_supported | 0x3);
            self.fd.set_xcrs(&xcrs).map_err(kvm_err("set xcrs"))?;
        }
        // Registers and special registers through kvm_run: saves four ioctls per round trip
        // (each costs several microseconds on these hosts).
        self.sync = kvm.check_extension(kvm_ioctls::Cap::SyncRegs);
        if self.sync {
            self.fd.set_sync_valid_reg(SyncReg::Register);
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        debug!(vcpu = self.id, xsave, sync_regs = self.sync, "vCPU set up");
        Ok(())
    }

    /// The guest TSC frequency KVM runs this vCPU at (`KVM_GET_TSC_KHZ`), if it tells.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k > 0)
    }

    /// Guest TSC minus host TSC, measured by reading `IA32_TSC` through KVM between two host
    /// `rdtsc`s (the midpoint is taken); `None` if KVM does not report the MSR.
    pub fn measure_tsc_offset(&self) -> Option<u64> {
        const MSR_IA32_TSC: u32 = 0x10;
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .ok()?;
        let before = crate::time::clock::rdtsc();
        let n = self.fd.get_msrs(&mut msrs).ok()?;
        let after = crate::time::clock::rdtsc();
        if n != 1 {
            return None;
        }
        let guest = msrs.as_slice().first()?.data;
        let mid = before.wrapping_add(after.wrapping_sub(before) / 2);
        Some(guest.wrapping_sub(mid))
    }

    /// The inputs of this vCPU's PV CPUID view.
    pub fn cpuid_config(&self) -> &PvCpuidConfig {
        &self.cpuid_cfg
    }

    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// This vCPU's ring-0 structures.
    pub fn ring0(&self) -> &VcpuRing0 {
        &self.r0
    }

    /// The PV state (trap table, callbacks, ...), kept in host memory.
    pub fn pv(&self) -> &PvVcpuState {
        &self.pv
    }

    /// Mutable PV state.
    pub fn pv_mut(&mut self) -> &mut PvVcpuState {
        &mut self.pv
    }

    /// A hypercall context for this vCPU: its PV state, its current page tables and the
    /// domain-wide state `domain`.
    pub fn hypercall_ctx<'a, D>(
        &'a mut self,
        regs: &'a mut GuestRegs,
        domain: &'a D,
    ) -> HypercallCtx<'a, D> {
        let mut ctx = HypercallCtx::new(
            self.id,
            &self.ram,
            self.sregs.cr3,
            regs,
            &mut self.pv,
            domain,
        );
        ctx.restart_len = self.restart_len;
        ctx
    }

    /// Guest RAM (the vCPU keeps the mapping alive while it exists).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Special registers as of the last exit (CR2, CR3, segments...).
    pub fn sregs(&self) -> &kvm_sregs {
        &self.sregs
    }

    /// Current page-table base (CR3) as of the last exit, or as set for the next return.
    pub fn cr3(&self) -> u64 {
        self.sregs.cr3
    }

    /// The VM's ring-0 layer (GDT contents live in its private memory).
    pub fn ring0_layer(&self) -> &Ring0Layer {
        &self.ring0
    }

    /// Set the guest's debug registers (DR0-DR3, DR6, DR7) with `KVM_SET_DEBUGREGS`.
    pub fn set_debugregs(&self, db: [u64; 4], dr6: u64, dr7: u64) -> Result<(), VcpuError> {
        let d = kvm_bindings::kvm_debugregs {
            db,
            dr6,
            dr7,
            ..Default::default()
        };
        self.fd.set_debug_regs(&d).map_err(kvm_err("set debugregs"))
    }

    /// The guest's debug registers (DR0-DR3, DR6, DR7) from `KVM_GET_DEBUGREGS`.
    pub fn debugregs(&self) -> Result<([u64; 4], u64, u64), VcpuError> {
        let d = self.fd.get_debug_regs().map_err(kvm_err("get debugregs"))?;
        Ok((d.db, d.dr6, d.dr7))
    }

    /// Set the FS base used from the next return to the guest on.
    pub fn set_fs_base(&mut self, base: u64) {
        self.sregs.fs.base = base;
    }

    /// Set the GS base used from the next return to the guest on.
    pub fn set_gs_base(&mut self, base: u64) {
        self.sregs.gs.base = base;
    }

    /// Special registers to be applied at the next return (CS/SS are overwritten by
    /// [`Vcpu::return_to_guest`]; keep CR0/CR4/EFER/GDT/IDT/TR as set up).
    pub fn sregs_mut(&mut self) -> &mut kvm_sregs {
        &mut self.sregs
    }

    /// Change CR3 for the next return to the guest (a full TLB flush of non-global entries).
    pub fn set_cr3(&mut self, cr3: u64) {
        self.sregs.cr3 = cr3;
    }

    /// Load `cr3` for the next return and flush the guest's TLB first: before the guest's
    /// next instruction kxen's ring-0 replay program reloads CR3 (see [`crate::replay`]),
    /// which is what makes KVM drop translations the VMM changed behind the guest's back.
    /// Non-global translations are flushed (kernel mappings are never global).
    pub fn flush_tlb(&mut self, cr3: u64) {
        self.sregs.cr3 = cr3;
        self.flush_cr3 = Some(cr3);
        self.reload_cr3 = true;
        self.flush_pending = true;
    }

    /// Guest-physical addresses of page-table entries the VMM wrote in guest RAM: KVM's
    /// shadow MMU does not see writes from the VMM, so before the guest's next instruction
    /// ring 0 rewrites each entry with its current value (a write KVM traps).
    pub fn sync_pte_writes(&mut self, gpas: impl IntoIterator<Item = u64>) {
        let before = self.pte_replay.len();
        let ring0 = Arc::clone(&self.ring0);
        self.pte_replay.extend(
            gpas.into_iter()
                .map(|g| g & !7)
                .filter(|&g| ring0.guest_alias_va(g).is_some()),
        );
        if self.pte_replay.len() != before {
            self.flush_pending = true;
        }
    }

    /// Whether `rip` lies in this vCPU's replay program.
    fn in_replay_code(&self, rip: u64) -> bool {
        self.sregs.cs.selector == RING0_CS
            && rip
                .checked_sub(self.r0.replay_code)
                .is_some_and(|off| off < REPLAY_PAGES * crate::memory::PAGE_SIZE)
    }

    /// Where a folded replay program finds the guest's frame (rdi, rip, cs, rflags, rsp, ss).
    fn replay_frame_va(&self) -> u64 {
        self.r0.rsp0_top - 64
    }

    /// Before `KVM_RUN`: turn due replays and flushes into a ring-0 replay program that the
    /// vCPU runs first and that returns straight to the guest (no exit of its own). What does
    /// not fit one program, and work due while the vCPU is not in guest code, runs now as
    /// separate programs that exit (`End::Exit`).
    fn prepare_replay(&mut self) -> Result<(), VcpuError> {
        let mut regs = self.fetch_state()?;
        if let Some(cr3) = self.flush_cr3.take() {
            self.sregs.cr3 = cr3;
        }
        if let Some(g) = self.finish_in_flight(&regs)? {
            regs = g;
        }
        let mut gpas = std::mem::take(&mut self.pte_replay);
        let reload = std::mem::take(&mut self.reload_cr3);
        gpas.sort_unstable();
        gpas.dedup();
        let guest_cs = self.sregs.cs.selector;
        let in_guest = matches!(guest_cs, RING3_CS64 | RING3_CS32);
        if in_guest && gpas.is_empty() && !reload {
            return Ok(());
        }
        let folded = if in_guest {
            gpas.len().min(MAX_REPLAY)
        } else {
            0
        };
        let (head, tail) = gpas.split_at(gpas.len() - folded);
        if !head.is_empty() || !in_guest {
            let saved = self.sregs;
            let mut chunks: Vec<&[u64]> = head.chunks(MAX_REPLAY).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                self.run_program(chunk)?;
            }
            self.sregs = saved;
            if !in_guest {
                return self.push_state(&regs);
            }
        }
        let frame_va = self.replay_frame_va();
        let frame = [
            regs.rdi,
            regs.rip,
            u64::from(guest_cs),
            regs.rflags,
            regs.rsp,
            u64::from(self.sregs.ss.selector),
        ];
        self.ring0
            .write_words(frame_va, &frame)
            .ok_or_else(|| replay_error("replay: guest frame"))?;
        let code = replay::program(tail, replay::End::Return { reload_cr3: reload });
        self.in_flight = Some(tail.to_vec());
        self.load_program(&code, frame_va, &regs)
    }

    /// Write `code` into this vCPU's replay pages and make it what `KVM_RUN` enters next:
    /// ring 0, interrupts off, stack at `rsp`, rdi = the guest-RAM alias base, the other
    /// registers from `regs`.
    fn load_program(&mut self, code: &[u8], rsp: u64, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.ring0
            .write_bytes(self.r0.replay_code, code)
            .ok_or_else(|| replay_error("replay: program"))?;
        set_ring0_segments(&mut self.sregs);
        self.push_state(&kvm_regs {
            rip: self.r0.replay_code,
            rsp,
            rdi: GUEST_ALIAS_BASE,
            rflags: rflags::FIXED,
            ..*regs
        })
    }

    /// If the vCPU stopped inside its folded replay program (a kick interrupted it), finish
    /// the program with a run of its own and put the guest's state back as the state to
    /// enter; returns that state. `None` when no program is under way.
    fn finish_in_flight(&mut self, regs: &kvm_regs) -> Result<Option<kvm_regs>, VcpuError> {
        let Some(gpas) = self.in_flight.take() else {
            return Ok(None);
        };
        if !self.in_replay_code(regs.rip) {
            return Ok(None); // it completed: the guest has run since
        }
        let frame_va = self.replay_frame_va();
        let mut w = [0u64; replay::FRAME_WORDS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self
                .ring0
                .read_u64(frame_va + 8 * i as u64)
                .ok_or_else(|| replay_error("replay: read guest frame"))?;
        }
        self.run_program(&gpas)?;
        let guest = kvm_regs {
            rdi: w[0],
            rip: w[1],
            rflags: w[3],
            rsp: w[4],
            ..*regs
        };
        let cs = if w[2] == u64::from(RING3_CS32) {
            GuestCs::Compat32
        } else {
            GuestCs::Long64
        };
        set_cpl3_segments(&mut self.sregs, cs);
        self.push_state(&guest)?;
        Ok(Some(guest))
    }

    /// Run a replay program that rewrites `gpas`, reloads CR3 and exits, as a `KVM_RUN` of
    /// its own. Leaves the vCPU's registers as the program left them.
    fn run_program(&mut self, gpas: &[u64]) -> Result<(), VcpuError> {
        let code = replay::program(gpas, replay::End::Exit);
        let rsp = self.replay_frame_va() - 64;
        self.load_program(&code, rsp, &kvm_regs::default())?;
        // A kick arriving now interrupts KVM_RUN: keep it pending for the next `run` and
        // retry (bounded: a kick storm must not spin forever).
        for _ in 0..64 {
            match self.fd.run() {
                Ok(KvmExit::IoOut(port, _)) if port == PORT_TLB_FLUSH => {
                    self.fetch_state()?;
                    return Ok(());
                }
                Ok(KvmExit::Intr) => {}
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Ok(_) => return Err(replay_error("replay program: unexpected exit")),
                Err(err) => {
                    return Err(VcpuError::Kvm {
                        what: "run replay program",
                        err,
                    })
                }
            }
            self.set_immediate_exit(false);
            self.kick.pending.store(true, Ordering::SeqCst);
        }
        Err(replay_error("replay program interrupted too often"))
    }

    /// Set the start-of-day state: CPL3 in 64-bit mode at `entry.rip` with the given stack,
    /// rsi and page tables. The guest's L4 must contain [`Ring0Layer::private_l4_entries`].
    pub fn set_pv_entry(&mut self, entry: PvEntry) -> Result<(), VcpuError> {
        self.sregs.cr3 = entry.cr3;
        self.pv.kernel_cr3 = entry.cr3;
        let regs = GuestRegs {
            rip: entry.rip,
            rsp: entry.rsp,
            rsi: entry.rsi,
            rflags: entry.rflags,
            ..Default::default()
        };
        self.return_to_guest(&regs, GuestCs::Long64)
    }

    /// Resume the guest at CPL3 with `regs` (RFLAGS sanitized) and the chosen code segment;
    /// SS is `FLAT_RING3_SS` (0xe02b). Data segments and the rest of the special registers
    /// stay as they were (or as changed through [`Vcpu::set_cr3`]).
    pub fn return_to_guest(&mut self, regs: &GuestRegs, cs: GuestCs) -> Result<(), VcpuError> {
        let mut r = *regs;
        r.rflags = sanitize_rflags(r.rflags);
        set_cpl3_segments(&mut self.sregs, cs);
        self.push_state(&r.to_kvm())
    }

    /// Hand registers and `self.sregs` to KVM for the next entry.
    fn push_state(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        if self.sync {
            let s = self.fd.sync_regs_mut();
            s.regs = *regs;
            s.sregs = self.sregs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            return Ok(());
        }
        self.fd.set_regs(regs).map_err(kvm_err("set regs"))?;
        self.fd.set_sregs(&self.sregs).map_err(kvm_err("set sregs"))
    }

    /// Fetch registers and special registers (into `self.sregs`) after an exit.
    fn fetch_state(&mut self) -> Result<kvm_regs, VcpuError> {
        if self.sync {
            let s = self.fd.sync_regs();
            self.sregs = s.sregs;
            return Ok(s.regs);
        }
        let regs = self.fd.get_regs().map_err(kvm_err("get regs"))?;
        self.sregs = self.fd.get_sregs().map_err(kvm_err("get sregs"))?;
        Ok(regs)
    }

    /// After [`VcpuExit::Interrupted`]: the guest's registers and code segment if the vCPU
    /// stopped in guest code (CPL3), so the run loop may redirect it (an event upcall);
    /// `None` if it stopped inside kxen's ring 0 (then it must simply be resumed). Nothing is
    /// changed unless the caller then uses [`Vcpu::return_to_guest`].
    pub fn interrupted_guest_state(&mut self) -> Result<Option<(GuestRegs, GuestCs)>, VcpuError> {
        let mut kregs = self.fetch_state()?;
        // Stopped inside a folded replay program: finish it, then it is the guest's state.
        if let Some(g) = self.finish_in_flight(&kregs)? {
            kregs = g;
        }
        let cs = match self.sregs.cs.selector {
            RING3_CS64 => GuestCs::Long64,
            RING3_CS32 => GuestCs::Compat32,
            _ => return Ok(None),
        };
        // An exception or interrupt KVM is about to inject belongs to the current rip: do
        // not move the guest under it (the exception exits at once; events go after it).
        let ev = self
            .fd
            .get_vcpu_events()
            .map_err(kvm_err("get vcpu events"))?;
        if ev.exception.injected != 0
            || ev.exception.pending != 0
            || ev.interrupt.injected != 0
            || ev.nmi.injected != 0
        {
            return Ok(None);
        }
        Ok(Some((GuestRegs::from(&kregs), cs)))
    }

    /// Enter ring 0 at `rip` with stack `rsp` (CS 0xe008, SS 0xe010). For measuring bare
    /// ring-0 exits in tests; the code page must be mapped user-accessible (a host quirk).
    #[doc(hidden)]
    pub fn enter_ring0_for_test(&mut self, rip: u64, rsp: u64, cr3: u64) -> Result<(), VcpuError> {
        self.sregs.cr3 = cr3;
        set_ring0_segments(&mut self.sregs);
        let regs = kvm_regs {
            rip,
            rsp,
            rflags: rflags::FIXED,
            ..Default::default()
        };
        self.push_state(&regs)
    }

    /// Make the next (or current) `KVM_RUN` return [`VcpuExit::Interrupted`] at once.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    fn count(&self, exit: VcpuExit) -> VcpuExit {
        let kind = match &exit {
            VcpuExit::Syscall { .. } | VcpuExit::Sysenter { .. } => ExitKind::Syscall,
            VcpuExit::Exception { vector, .. } => {
                self.stats.count_vector(*vector);
                ExitKind::Exception
            }
            VcpuExit::Io { .. } => ExitKind::Io,
            VcpuExit::Shutdown => ExitKind::Shutdown,
            VcpuExit::Interrupted => ExitKind::Interrupted,
            VcpuExit::Unexpected { .. } => ExitKind::Unexpected,
        };
        self.stats.count_exit(kind);
        exit
    }

    /// A handle that interrupts this vCPU's `run` from another thread.
    pub fn kicker(&self) -> VcpuKicker {
        VcpuKicker(Arc::clone(&self.kick))
    }

    /// Run the vCPU until the guest needs the VMM or a [`VcpuKicker`] kicks it.
    pub fn run(&mut self) -> Result<VcpuExit, VcpuError> {
        let ie = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        IMMEDIATE_EXIT.with(|c| c.set(ie));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as u64;
        self.kick.thread.store(me, Ordering::SeqCst);
        let exit = if self.kick.pending.swap(false, Ordering::SeqCst) {
            // Kicked before entering: a signal may also have set immediate_exit; clear it.
            self.set_immediate_exit(false);
            Ok(VcpuExit::Interrupted)
        } else {
            self.run_inner()
        };
        self.kick.thread.store(0, Ordering::SeqCst);
        // A late signal must not write here once `run` has returned (the vCPU may move to
        // another thread or be dropped); a kick it carried is still in `pending`.
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        if matches!(exit, Ok(VcpuExit::Interrupted)) {
            self.kick.pending.store(false, Ordering::SeqCst);
        }
        Ok(self.count(exit?))
    }

    fn run_inner(&mut self) -> Result<VcpuExit, VcpuError> {
        loop {
            if let Some(exit) = self.run_once()? {
                return Ok(exit);
            }
        }
    }

    /// One `KVM_RUN`; `None` when the exit was handled here and the guest should just go on.
    fn run_once(&mut self) -> Result<Option<VcpuExit>, VcpuError> {
        if std::mem::take(&mut self.flush_pending) {
            self.prepare_replay()?;
        }
        let io = match self.fd.run() {
            Ok(KvmExit::MmioWrite(addr, _)) if addr & !0xfff == SYSCALL_EXIT_GPA => {
                // The LSTAR stub's store (or the guest writing the exit page itself, any size or
                // offset, which is equivalent to a `syscall`). KVM has already retired it.
                let kregs = self.fetch_state()?;
                let mut regs = GuestRegs::from(&kregs);
                regs.rip = kregs.rcx;
                regs.rflags = kregs.r11;
                // From the LSTAR stub: a `syscall` restarts 2 bytes back. Otherwise the store
                // is the hypercall page's own exit sequence (a guest storing to the exit page
                // itself is taken as having run that sequence).
                let from_lstar = kregs.rip.wrapping_sub(self.ring0.syscall_stub()) < 16;
                self.restart_len = if from_lstar {
                    2
                } else {
                    crate::builder::HYPERCALL_EXIT_LEN
                };
                // `syscall` does not switch stacks: rsp is the guest's either way.
                return Ok(Some(VcpuExit::Syscall {
                    regs,
                    compat: false,
                }));
            }
            Ok(KvmExit::MmioRead(addr, data)) => {
                // Only reachable by the guest reading the exit page (no guest PTE can name
                // another unbacked address): reads as all ones.
                debug!(vcpu = self.id, addr, "guest read of the syscall exit page");
                data.fill(0xff);
                return Ok(None);
            }
            Ok(KvmExit::IoOut(port, data)) => {
                let mut d = [0u8; 4];
                let n = data.len().min(4);
                d[..n].copy_from_slice(&data[..n]);
                (port, d, n as u8)
            }
            Ok(KvmExit::Shutdown) => return Ok(Some(VcpuExit::Shutdown)),
            Ok(KvmExit::Intr) => {
                self.set_immediate_exit(false);
                return Ok(Some(VcpuExit::Interrupted));
            }
            Ok(other) => {
                return Ok(Some(VcpuExit::Unexpected {
                    reason: format!("{other:?}"),
                }))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.set_immediate_exit(false);
                return Ok(Some(VcpuExit::Interrupted));
            }
            Err(err) => return Err(VcpuError::Kvm { what: "run", err }),
        };
        let (port, data, size) = io;
        let kregs = self.fetch_state()?;
        let mut regs = GuestRegs::from(&kregs);
        // KVM reports the `out` either not yet retired (rip at it) or retired (rip after it).
        let at_stub = |stub: u64| kregs.rip == stub || kregs.rip == stub + 2;
        let from_ring0 = self.sregs.cs.selector == RING0_CS;
        match (size, port) {
            (1, p) if p < 256 && from_ring0 && at_stub(self.ring0.vector_stub(p as u8)) => {
                let vector = p as u8;
                let (error_code, frame) =
                    read_exception_frame(&self.ring0, &self.r0, vector, kregs.rsp)?;
                if vector == VEC_GP && frame.from_guest() && error_code == Some(0) {
                    // Host quirk (nested KVM on PVM): `syscall`/`sysenter` jump to the entry
                    // point but stay at CPL3, so the stub's `out` raises #GP. A guest jumping
                    // to the stub itself is equivalent to a `syscall` with rcx/r11 of its own
                    // choosing, which it can do anyway.
                    if let Some(exit) = self.syscall_via_gp(&kregs, &frame) {
                        self.restart_len = 2;
                        return Ok(Some(exit));
                    }
                }
                if !frame.from_guest() {
                    warn!(vcpu = self.id, vector, ?frame, "exception in kxen's ring 0");
                }
                regs.rip = frame.rip;
                regs.rsp = frame.rsp;
                regs.rflags = frame.rflags;
                Ok(Some(VcpuExit::Exception {
                    vector,
                    error_code,
                    cr2: self.sregs.cr2,
                    frame,
                    regs,
                }))
            }
            (4, p @ (PORT_SYSCALL | PORT_SYSCALL32))
                if from_ring0 && at_stub(self.ring0.special_stub(p)) =>
            {
                self.restart_len = 2;
                regs.rip = kregs.rcx;
                regs.rflags = kregs.r11;
                Ok(Some(VcpuExit::Syscall {
                    regs,
                    compat: p == PORT_SYSCALL32,
                }))
            }
            (4, PORT_SYSENTER) if from_ring0 && at_stub(self.ring0.special_stub(PORT_SYSENTER)) => {
                Ok(Some(VcpuExit::Sysenter { regs }))
            }
            _ => {
                if !from_ring0 {
                    warn!(vcpu = self.id, port, "port write from outside ring 0");
                }
                Ok(Some(VcpuExit::Io {
                    port,
                    data,
                    size,
                    regs,
                }))
            }
        }
    }
}

impl Vcpu {
    fn syscall_via_gp(&self, kregs: &kvm_regs, frame: &CpuFrame) -> Option<VcpuExit> {
        let port = [PORT_SYSCALL, PORT_SYSCALL32, PORT_SYSENTER]
            .into_iter()
            .find(|&p| self.ring0.special_stub(p) == frame.rip)?;
        let mut regs = GuestRegs::from(kregs);
        regs.rsp = frame.rsp;
        if port == PORT_SYSENTER {
            regs.rip = frame.rip;
            regs.rflags = frame.rflags;
            return Some(VcpuExit::Sysenter { regs });
        }
        regs.rip = kregs.rcx;
        regs.rflags = kregs.r11;
        Some(VcpuExit::Syscall {
            regs,
            compat: port == PORT_SYSCALL32,
        })
    }
}

/// kxen's ring-0 code and stack segments (CS 0xe008, SS 0xe010).
fn set_ring0_segments(sregs: &mut kvm_sregs) {
    sregs.cs = seg(RING0_CS, 11, 0, 1, 0);
    sregs.ss = seg(RING0_DS, 3, 0, 0, 1);
}

/// A replay program could not be written, read back or run as expected (a layout bug or an
/// unexpected exit), reported as an I/O error of the vCPU.
fn replay_error(what: &'static str) -> VcpuError {
    VcpuError::Kvm {
        what,
        err: kvm_ioctls::Error::new(libc::EIO),
    }
}

fn set_cpl3_segments(sregs: &mut kvm_sregs, cs: GuestCs) {
    sregs.cs = match cs {
        GuestCs::Long64 => seg(RING3_CS64, 11, 3, 1, 0),
        GuestCs::Compat32 => seg(RING3_CS32, 11, 3, 0, 1),
    };
    sregs.ss = seg(RING3_DS, 3, 3, 0, 1);
}

/// Signal used to kick vCPU threads out of `KVM_RUN` (`SIGRTMIN + 2`).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

thread_local! {
    /// The running vCPU's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a const-initialised thread-local read and a volatile store.
    let p = IMMEDIATE_EXIT.with(std::cell::Cell::get);
    if !p.is_null() {
        // SAFETY: `p` is non-null only while `Vcpu::run` executes on this thread (it sets it
        // on entry and clears it before returning), and then points at the `immediate_exit`
        // byte of that vCPU's `kvm_run` mapping, which the `&mut Vcpu` keeps alive.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.errno())
        })
        .map_err(|e| VcpuError::Kvm {
            what: "install kick signal handler",
            err: kvm_ioctls::Error::new(e),
        })
}

/// Shared between a [`Vcpu`] and its [`VcpuKicker`]s.
#[derive(Debug, Default)]
struct KickState {
    /// A kick is pending.
    pending: AtomicBool,
    /// `pthread_t` of the thread inside [`Vcpu::run`], 0 when none.
    thread: AtomicU64,
}

/// Makes a vCPU's [`Vcpu::run`] return [`VcpuExit::Interrupted`] soon, from any thread.
#[derive(Debug, Clone)]
pub struct VcpuKicker(Arc<KickState>);

impl VcpuKicker {
    /// Kick: the current or next `run` returns `Interrupted` (possibly once more than asked).
    pub fn kick(&self) {
        self.0.pending.store(true, Ordering::SeqCst);
        let t = self.0.thread.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: `t` is the pthread_t of a thread that is inside `Vcpu::run` (it is reset
            // to 0 before that thread leaves it); signalling it only runs `kick_handler`, which
            // is installed before any `run`.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

/// Whether `/dev/kvm` can be opened (tests skip without it).
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_rflags_forces_iopl0_and_if() {
        let r = sanitize_rflags(u64::MAX);
        assert_eq!(r & rflags::IOPL, 0);
        assert_eq!(r & (rflags::NT | rflags::VM | rflags::RF), 0);
        assert_ne!(r & rflags::IF, 0);
        assert_ne!(r & rflags::TF, 0);
        assert_eq!(sanitize_rflags(0), rflags::FIXED | rflags::IF);
        assert_eq!(r >> 22, 0);
    }

    #[test]
    fn stats_count_and_overflow_bucket() {
        let s = ExitStats::default();
        s.count_exit(ExitKind::Io);
        s.count_hypercall(3);
        s.count_hypercall(1000);
        s.count_hypercall(u64::MAX);
        s.count_vector(14);
        assert_eq!(s.exits(ExitKind::Io), 1);
        assert_eq!(s.exits(ExitKind::Syscall), 0);
        assert_eq!(s.hypercalls(3), 1);
        assert_eq!(s.hypercalls(999), 2);
        assert_eq!(s.vector(14), 1);
        let snap = s.snapshot();
        assert!(snap.contains(&("exit.io".to_string(), 1)));
        assert!(snap.contains(&("vector.14".to_string(), 1)));
        assert!(snap.contains(&("hypercall.3".to_string(), 1)));
        assert!(snap.contains(&("hypercall.other".to_string(), 2)));
        assert_eq!(snap.len(), 4);
    }
}
