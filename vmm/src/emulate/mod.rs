//! Privileged-operation emulation for PV guests: what Xen does when a PV guest's kernel (or
//! user code) executes an instruction that faults at CPL3 with `#GP(0)`, and the
//! forced-emulation CPUID prefix on `#UD`.
//!
//! Pure logic: the caller fetches the instruction bytes at `rip` through the checked guest
//! accessor, hands over the registers and the vCPU's emulation state, and applies the
//! [`EmuOutcome`]. Nothing here touches KVM or guest memory except through [`EmuEnv`].
//!
//! Wiring (the trap path, after `read_exception_frame`):
//! - `#GP` from the guest with error code 0: fetch up to 16 bytes at rip with `GuestVirt`
//!   (stop at the first unreadable byte), build [`EmuState`] (`EmuState::from_pv` plus the
//!   per-vCPU fields kept alongside: CR0.TS, CR2, CR4, IOPL, I/O bitmap, TSC_AUX, XCR0; FS/GS
//!   bases synced from the live registers), call [`emulate_gp`]. A non-zero error code is not
//!   emulation: bounce it (or the `int $n` path).
//! - `#UD`: first the kxen `int $n` quirk (`trap::software_int_at`), then [`emulate_ud`].
//! - [`EmuOutcome::Done`]: apply `regs` (`RegWrites::apply_kvm`), `rip += rip_advance`, clear
//!   RFLAGS.RF, perform `effect`, keep the updated state. `Inject`: bounce that vector through
//!   the guest's trap table. `FetchFault`: bounce `#PF` (error 0, CR2 = rip + offset).
//!   `NotEmulated`: bounce the original exception (`#GP(0)` or `#UD`).
//! - Load [`pv_native_table`] with `KVM_SET_CPUID2` so the guest's native `cpuid` (which does
//!   not fault) sees the same filtered view with Xen's leaves.
//!
//! Sources (behaviour, not code): xen/arch/x86/pv/emul-priv-op.c (what is emulated and the
//! permission checks), xen/arch/x86/pv/emul-inv-op.c (forced emulation), xen/arch/x86/cpuid.c
//! (`cpuid_hypervisor_leaves`, the PV policy).

pub mod cpuid;

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, OpKind, Register};
use xen_abi::mmu::VMASST_TYPE_ARCHITECTURAL_IOPL;
use xen_abi::pv_vcpu::{GuestMode, PvVcpuState};

pub use cpuid::{
    pv_cpuid, pv_native_table, CpuidContext, CpuidLeaf, CpuidSource, CpuidTable, PvCpuidConfig,
};

#[cfg(test)]
mod tests;

/// `#UD`.
pub const VEC_UD: u8 = 6;
/// `#GP`.
pub const VEC_GP: u8 = 13;
/// `#PF`.
pub const VEC_PF: u8 = 14;

/// The forced-emulation prefix: `ud2; .ascii "xen"`.
// xen: pv/emul-inv-op.c, emulate_forced_invalid_op signature check
pub const FORCED_EMULATION_PREFIX: [u8; 5] = [0x0f, 0x0b, b'x', b'e', b'n'];

/// MSR numbers kxen handles.
pub mod msr {
    /// Time-stamp counter.
    pub const IA32_TSC: u32 = 0x10;
    /// Platform ID (Intel).
    pub const IA32_PLATFORM_ID: u32 = 0x17;
    /// Microcode revision (Intel `IA32_BIOS_SIGN_ID`; AMD `PATCH_LEVEL` is the same index).
    pub const IA32_UCODE_REV: u32 = 0x8b;
    /// Page attribute table.
    pub const IA32_CR_PAT: u32 = 0x277;
    /// Local APIC base.
    pub const IA32_APICBASE: u32 = 0x1b;
    /// Platform info (Intel; bit 31 = CPUID faulting available).
    pub const INTEL_PLATFORM_INFO: u32 = 0xce;
    /// Misc feature enables (Intel; bit 0 = CPUID faulting).
    pub const INTEL_MISC_FEATURES_ENABLES: u32 = 0x140;
    /// Performance capabilities.
    pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
    /// Misc enables.
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// Extended feature enables.
    pub const EFER: u32 = 0xc000_0080;
    /// FS base.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base (the active one).
    pub const GS_BASE: u32 = 0xc000_0101;
    /// The other GS base (swapgs).
    pub const SHADOW_GS_BASE: u32 = 0xc000_0102;
    /// TSC_AUX (rdtscp's ECX).
    pub const TSC_AUX: u32 = 0xc000_0103;
    /// Xen's hypercall-page MSR (base of Xen's range, see CPUID 0x40000002 EBX).
    pub const XEN_HYPERCALL_PAGE: u32 = 0x4000_0000;
}

/// `MSR_IA32_MISC_ENABLE` bits Xen adjusts.
// xen: emul-priv-op.c guest_misc_enable
pub mod misc_enable {
    /// Fast strings.
    pub const FAST_STRING: u64 = 1 << 0;
    /// Performance monitoring available (hidden).
    pub const PERF_AVAIL: u64 = 1 << 7;
    /// BTS unavailable (forced).
    pub const BTS_UNAVAIL: u64 = 1 << 11;
    /// PEBS unavailable (forced).
    pub const PEBS_UNAVAIL: u64 = 1 << 12;
    /// MONITOR/MWAIT enabled (hidden).
    pub const MONITOR_ENABLE: u64 = 1 << 18;
    /// xTPR messages disabled (forced).
    pub const XTPR_DISABLE: u64 = 1 << 23;
}

/// Control-register bits.
pub mod cr {
    /// CR0 as kxen's VM runs (vcpu.rs: PE MP ET NE WP PG), which a PV guest reads as Xen's
    /// `read_cr0()`; TS is virtual.
    pub const CR0_HOST: u64 = 0x8001_0033;
    /// CR0.TS.
    pub const CR0_TS: u64 = 1 << 3;
    /// CR4.TSD.
    pub const CR4_TSD: u64 = 1 << 2;
    /// CR4.DE.
    pub const CR4_DE: u64 = 1 << 3;
    /// CR4.PAE.
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4.MCE.
    pub const CR4_MCE: u64 = 1 << 6;
    /// CR4.OSFXSR.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// CR4.OSXMMEXCPT.
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    /// CR4.FSGSBASE.
    pub const CR4_FSGSBASE: u64 = 1 << 16;
    /// CR4.OSXSAVE.
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    /// Bits a PV guest controls.
    // xen: pv_fixup_guest_cr4, PV_CR4_GUEST_MASK
    pub const PV_CR4_GUEST_MASK: u64 = CR4_TSD | CR4_DE | CR4_FSGSBASE | CR4_OSXSAVE;
    /// Bits of the hypervisor's CR4 a PV guest sees.
    // xen: pv_fixup_guest_cr4, PV_CR4_GUEST_VISIBLE_MASK
    pub const PV_CR4_GUEST_VISIBLE: u64 = CR4_PAE | CR4_MCE | CR4_OSFXSR | CR4_OSXMMEXCPT;
}

/// EFER as a 64-bit PV guest reads it: SCE, LME, LMA, NXE.
pub const EFER_PV: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

/// The PAT Xen runs with, which a PV guest reads (and must build its PTEs for).
// xen: asm/processor.h XEN_MSR_PAT (WB, WT, UC-, UC, WC, WP, UC, UC)
pub const XEN_MSR_PAT: u64 = 0x0000_0501_0007_0406;

/// The vCPU state emulation reads and updates (Xen's `v->arch.pv` fields it uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuState {
    /// vCPU number (for the APIC base BSP bit).
    pub vcpu_id: u32,
    /// Guest kernel mode (`PvVcpuState::guest_mode`).
    pub kernel_mode: bool,
    /// Virtual CR0.TS (`fpu_taskswitch`).
    pub cr0_ts: bool,
    /// Virtual CR2 (mirrors `vcpu_info.arch.cr2`).
    pub cr2: u64,
    /// Machine address of the guest's kernel L4 (`PvVcpuState::kernel_cr3`).
    pub cr3: u64,
    /// Virtual CR4 (only `PV_CR4_GUEST_MASK` bits are the guest's).
    pub cr4: u64,
    /// Virtual IOPL (0-3, `PHYSDEVOP_set_iopl`).
    pub iopl: u8,
    /// Guest-virtual address of the I/O bitmap (`PHYSDEVOP_set_iobitmap`).
    pub iobmp: u64,
    /// Number of ports the bitmap covers (0: none).
    pub iobmp_limit: u32,
    /// `vm_assist` bits.
    pub vm_assist: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base used in kernel mode.
    pub gs_base_kernel: u64,
    /// GS base used in user mode.
    pub gs_base_user: u64,
    /// EFER as the guest reads it.
    pub efer: u64,
    /// The host's `MSR_IA32_MISC_ENABLE` before [`guest_misc_enable`].
    pub misc_enable_host: u64,
    /// `MSR_TSC_AUX`.
    pub tsc_aux: u32,
    /// XCR0 (last successful `xsetbv`).
    pub xcr0: u64,
    /// The guest has a `#GP` handler in its trap table. Without one, Xen fakes unknown MSR
    /// reads as 0 instead of raising `#GP` (early-boot kernels read MSRs before setting up
    /// their trap table).
    pub gp_handler_set: bool,
}

impl Default for EmuState {
    fn default() -> Self {
        Self {
            vcpu_id: 0,
            kernel_mode: true,
            cr0_ts: false,
            cr2: 0,
            cr3: 0,
            cr4: fixup_guest_cr4(0, true, true, true, true),
            iopl: 0,
            iobmp: 0,
            iobmp_limit: 0,
            vm_assist: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            efer: EFER_PV,
            misc_enable_host: misc_enable::FAST_STRING,
            tsc_aux: 0,
            xcr0: 1,
            gp_handler_set: true,
        }
    }
}

impl EmuState {
    /// The fields kept in `PvVcpuState`; the rest keep their defaults.
    pub fn from_pv(pv: &PvVcpuState, vcpu_id: u32) -> Self {
        Self {
            vcpu_id,
            kernel_mode: pv.guest_mode() == GuestMode::Kernel,
            cr3: pv.kernel_cr3,
            vm_assist: pv.vm_assist,
            fs_base: pv.fs_base,
            gs_base_kernel: pv.gs_base_kernel,
            gs_base_user: pv.gs_base_user,
            cr0_ts: pv.cr0_ts != 0,
            iopl: (pv.iopl & 3) as u8,
            gp_handler_set: pv
                .traps
                .get(usize::from(VEC_GP))
                .is_some_and(|t| t.is_set()),
            ..Self::default()
        }
    }

    /// Copy the segment bases (changed by `wrmsr`) back into `PvVcpuState`.
    pub fn store_to_pv(&self, pv: &mut PvVcpuState) {
        pv.fs_base = self.fs_base;
        pv.gs_base_kernel = self.gs_base_kernel;
        pv.gs_base_user = self.gs_base_user;
    }

    /// The CPL Xen assumes for IOPL checks: 0 or 1 in kernel mode, 3 in user mode.
    // xen: emul-priv-op.c iopl_ok
    pub fn io_cpl(&self) -> u8 {
        if !self.kernel_mode {
            3
        } else if vm_assist_bit(self.vm_assist, VMASST_TYPE_ARCHITECTURAL_IOPL) {
            0
        } else {
            1
        }
    }

    /// Whether the virtual IOPL permits port I/O and `cli`/`sti`.
    pub fn iopl_ok(&self) -> bool {
        self.io_cpl() <= self.iopl
    }

    /// CR0 as the guest reads it.
    pub fn cr0(&self) -> u64 {
        (cr::CR0_HOST & !cr::CR0_TS) | if self.cr0_ts { cr::CR0_TS } else { 0 }
    }
}

fn vm_assist_bit(bits: u64, ty: u32) -> bool {
    ty < 64 && bits & (1u64 << ty) != 0
}

/// Xen's `pv_fixup_guest_cr4`: keep the guest-controlled bits its CPUID allows, and show the
/// hypervisor's visible bits.
pub fn fixup_guest_cr4(val: u64, tsc: bool, de: bool, fsgsbase: bool, xsave: bool) -> u64 {
    let mut drop = 0;
    if !tsc {
        drop |= cr::CR4_TSD;
    }
    if !de {
        drop |= cr::CR4_DE;
    }
    if !fsgsbase {
        drop |= cr::CR4_FSGSBASE;
    }
    if !xsave {
        drop |= cr::CR4_OSXSAVE;
    }
    ((val & !drop) & cr::PV_CR4_GUEST_MASK) | cr::PV_CR4_GUEST_VISIBLE
}

/// `MSR_IA32_MISC_ENABLE` as a guest reads it.
// xen: emul-priv-op.c guest_misc_enable
pub fn guest_misc_enable(host: u64) -> u64 {
    (host & !(misc_enable::PERF_AVAIL | misc_enable::MONITOR_ENABLE))
        | misc_enable::BTS_UNAVAIL
        | misc_enable::PEBS_UNAVAIL
        | misc_enable::XTPR_DISABLE
}

/// General-purpose registers in encoding order (rax rcx rdx rbx rsp rbp rsi rdi r8..r15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// rax
    Rax = 0,
    /// rcx
    Rcx = 1,
    /// rdx
    Rdx = 2,
    /// rbx
    Rbx = 3,
    /// rsp
    Rsp = 4,
    /// rbp
    Rbp = 5,
    /// rsi
    Rsi = 6,
    /// rdi
    Rdi = 7,
    /// r8
    R8 = 8,
    /// r9
    R9 = 9,
    /// r10
    R10 = 10,
    /// r11
    R11 = 11,
    /// r12
    R12 = 12,
    /// r13
    R13 = 13,
    /// r14
    R14 = 14,
    /// r15
    R15 = 15,
}

impl Gpr {
    fn from_iced(r: Register) -> Option<Self> {
        Some(match r {
            Register::RAX => Gpr::Rax,
            Register::RCX => Gpr::Rcx,
            Register::RDX => Gpr::Rdx,
            Register::RBX => Gpr::Rbx,
            Register::RSP => Gpr::Rsp,
            Register::RBP => Gpr::Rbp,
            Register::RSI => Gpr::Rsi,
            Register::RDI => Gpr::Rdi,
            Register::R8 => Gpr::R8,
            Register::R9 => Gpr::R9,
            Register::R10 => Gpr::R10,
            Register::R11 => Gpr::R11,
            Register::R12 => Gpr::R12,
            Register::R13 => Gpr::R13,
            Register::R14 => Gpr::R14,
            Register::R15 => Gpr::R15,
            _ => return None,
        })
    }
}

/// The guest registers emulation reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmuRegs {
    /// GPRs indexed by [`Gpr`].
    pub gpr: [u64; 16],
    /// Instruction pointer (of the faulting instruction).
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}

impl EmuRegs {
    /// Read a GPR.
    pub fn get(&self, r: Gpr) -> u64 {
        self.gpr[r as usize & 15]
    }
    /// Build from KVM's register block.
    pub fn from_kvm(r: &kvm_bindings::kvm_regs) -> Self {
        Self {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// Up to four register writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegWrites {
    len: u8,
    w: [(u8, u64); 4],
}

impl RegWrites {
    fn push(&mut self, r: Gpr, v: u64) {
        if let Some(slot) = self.w.get_mut(usize::from(self.len)) {
            *slot = (r as u8, v);
            self.len += 1;
        }
    }
    fn one(r: Gpr, v: u64) -> Self {
        let mut s = Self::default();
        s.push(r, v);
        s
    }
    /// The writes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Gpr, u64)> + '_ {
        self.w
            .iter()
            .take(usize::from(self.len))
            .filter_map(|&(i, v)| gpr_from_index(i).map(|g| (g, v)))
    }
    /// The value written to `r`, if any (the last write wins).
    pub fn get(&self, r: Gpr) -> Option<u64> {
        self.iter().filter(|(g, _)| *g == r).map(|(_, v)| v).last()
    }
    /// Whether there are no writes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Apply to a KVM register block.
    pub fn apply_kvm(&self, r: &mut kvm_bindings::kvm_regs) {
        for (g, v) in self.iter() {
            let dst = match g {
                Gpr::Rax => &mut r.rax,
                Gpr::Rcx => &mut r.rcx,
                Gpr::Rdx => &mut r.rdx,
                Gpr::Rbx => &mut r.rbx,
                Gpr::Rsp => &mut r.rsp,
                Gpr::Rbp => &mut r.rbp,
                Gpr::Rsi => &mut r.rsi,
                Gpr::Rdi => &mut r.rdi,
                Gpr::R8 => &mut r.r8,
                Gpr::R9 => &mut r.r9,
                Gpr::R10 => &mut r.r10,
                Gpr::R11 => &mut r.r11,
                Gpr::R12 => &mut r.r12,
                Gpr::R13 => &mut r.r13,
                Gpr::R14 => &mut r.r14,
                Gpr::R15 => &mut r.r15,
            };
            *dst = v;
        }
    }
}

fn gpr_from_index(i: u8) -> Option<Gpr> {
    use Gpr::*;
    const ALL: [Gpr; 16] = [
        Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15,
    ];
    ALL.get(usize::from(i)).copied()
}

/// Something the caller must do besides writing registers (state in [`EmuState`] is already
/// updated unless the effect says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmuEffect {
    /// Nothing else.
    None,
    /// Virtual CR0.TS changed (`fpu_taskswitch`): set/clear the VM's real CR0.TS so the guest's
    /// next FPU use raises `#NM` (bounced to the guest) when set.
    FpuTaskSwitch {
        /// New TS.
        ts: bool,
    },
    /// CR2 written: mirror into `vcpu_info.arch.cr2`.
    Cr2(u64),
    /// `mov %reg, %cr3`: switch the guest's kernel page table to frame `pfn`, exactly as
    /// `MMUEXT_NEW_BASEPTR` (validate + pin as L4). On failure inject `#GP(0)` and do not
    /// advance rip; on success update `PvVcpuState::kernel_cr3` and advance.
    NewCr3 {
        /// Guest frame of the new L4.
        pfn: u64,
    },
    /// Virtual CR4 changed; the VM's real CR4.TSD should follow the guest's (so user-mode
    /// `rdtsc` traps), other bits stay kxen's.
    Cr4(u64),
    /// A segment base changed (`wrmsr`): load it into the VM and `EmuState::store_to_pv`.
    SegmentBase,
    /// Write the hypercall page into guest frame `gfn` (the Xen MSR). On failure (frame not
    /// guest RAM) inject `#GP(0)` instead.
    HypercallPage {
        /// Guest frame.
        gfn: u64,
    },
    /// XCR0 changed: load it into the vCPU (`KVM_SET_XCRS`).
    Xcr0(u64),
}

/// The outcome of an emulation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmuOutcome {
    /// Emulated: apply `regs`, advance rip by `rip_advance`, perform `effect`.
    Done {
        /// Register writes.
        regs: RegWrites,
        /// Instruction length.
        rip_advance: u8,
        /// Extra work for the caller.
        effect: EmuEffect,
    },
    /// Deliver this exception to the guest instead (rip unchanged).
    Inject {
        /// Vector.
        vector: u8,
        /// Error code, if the vector takes one.
        error_code: Option<u32>,
    },
    /// Instruction fetch hit an unreadable byte at `rip + offset`: inject `#PF` (error code 0,
    /// as Xen does) with CR2 = `rip + offset`.
    FetchFault {
        /// Offset from rip of the first unreadable byte.
        offset: u8,
    },
    /// A string I/O instruction made `regs` progress, then faulted: apply `regs`, leave rip,
    /// inject `#PF(error_code)` with CR2 = `addr`.
    PageFault {
        /// Register writes for the completed iterations.
        regs: RegWrites,
        /// Faulting linear address.
        addr: u64,
        /// `#PF` error code (bit 1 = write).
        error_code: u32,
    },
    /// Not an instruction Xen emulates: deliver the original fault (`#GP(0)` / `#UD`).
    NotEmulated,
}

/// Iterations of a `rep ins`/`rep outs` done per exit; the rest re-executes (rip is left on
/// the instruction with the count updated), as Xen stops on preemption.
pub const MAX_REPS_PER_CALL: u64 = 512;

impl EmuOutcome {
    fn gp0() -> Self {
        EmuOutcome::Inject {
            vector: VEC_GP,
            error_code: Some(0),
        }
    }
    fn ud() -> Self {
        EmuOutcome::Inject {
            vector: VEC_UD,
            error_code: None,
        }
    }
    fn done(regs: RegWrites, len: usize, effect: EmuEffect) -> Self {
        EmuOutcome::Done {
            regs,
            rip_advance: u8::try_from(len).unwrap_or(u8::MAX),
            effect,
        }
    }
}

/// What emulation needs from the rest of kxen.
pub trait EmuEnv: CpuidSource {
    /// The domain's CPUID configuration.
    fn cpuid_config(&self) -> PvCpuidConfig {
        PvCpuidConfig::default()
    }
    /// The guest's TSC now.
    fn tsc(&mut self) -> u64;
    /// Read guest-virtual bytes through the guest's current page tables, with the guest's
    /// permissions; returns how many leading bytes were readable.
    fn read_guest(&mut self, va: u64, buf: &mut [u8]) -> usize;
    /// Write guest-virtual bytes (current page tables, guest permissions); returns how many
    /// leading bytes were written.
    fn write_guest(&mut self, va: u64, buf: &[u8]) -> usize;
    /// Read the I/O bitmap: Xen reads it through the guest's *kernel* page tables even in
    /// user mode (`toggle_guest_pt`). Defaults to [`EmuEnv::read_guest`].
    fn read_guest_kernel(&mut self, va: u64, buf: &mut [u8]) -> usize {
        self.read_guest(va, buf)
    }
    /// The host CPU's microcode revision (reported in `IA32_UCODE_REV`'s high half).
    fn microcode_revision(&self) -> u32 {
        0
    }
    /// A permitted port read (`size` 1, 2 or 4). kxen has no physical ports for a domU: Xen
    /// returns all-ones except for the few ports it virtualises.
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let _ = port;
        (u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 4)))) as u32
    }
    /// A permitted port write.
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        let _ = (port, size, value);
    }
}

fn decode(bytes: &[u8], rip: u64) -> Result<Instruction, EmuOutcome> {
    let mut dec = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = dec.decode();
    if insn.is_invalid() {
        return Err(match dec.last_error() {
            // Ran out of fetched bytes: if the caller gave fewer than the longest instruction,
            // the next byte is unreadable guest memory.
            DecoderError::NoMoreBytes if bytes.len() < 15 => EmuOutcome::FetchFault {
                offset: u8::try_from(bytes.len()).unwrap_or(u8::MAX),
            },
            _ => EmuOutcome::NotEmulated,
        });
    }
    Ok(insn)
}

/// Emulate the instruction at `regs.rip` after a `#GP(0)` from the guest (Xen's
/// `pv_emulate_privileged_op`). `bytes` are the readable bytes at rip (up to 16; fewer when
/// the fetch stopped at an unreadable page). Call only for error code 0: a non-zero error
/// code is a selector fault Xen bounces unchanged.
pub fn emulate_gp(
    bytes: &[u8],
    regs: &EmuRegs,
    state: &mut EmuState,
    env: &mut impl EmuEnv,
) -> EmuOutcome {
    let insn = match decode(bytes, regs.rip) {
        Ok(i) => i,
        Err(o) => return o,
    };
    // A LOCK prefix makes every instruction here #UD before any privilege check, so a #GP
    // with one is not ours (the AMD `lock mov cr0` = CR8 alias is not emulated either).
    if insn.has_lock_prefix() {
        return EmuOutcome::NotEmulated;
    }
    let len = insn.len();
    let ring0 = state.kernel_mode; // x86_emulate's mode_ring0(): kernel mode fakes DPL 0
    let code = insn.code();

    // The instructions Xen's validate() accepts; everything else is the guest's #GP.
    match code {
        Code::In_AL_imm8
        | Code::In_AX_imm8
        | Code::In_EAX_imm8
        | Code::In_AL_DX
        | Code::In_AX_DX
        | Code::In_EAX_DX
        | Code::Out_imm8_AL
        | Code::Out_imm8_AX
        | Code::Out_imm8_EAX
        | Code::Out_DX_AL
        | Code::Out_DX_AX
        | Code::Out_DX_EAX => emulate_io(&insn, code, regs, state, env),

        Code::Insb_m8_DX
        | Code::Insw_m16_DX
        | Code::Insd_m32_DX
        | Code::Outsb_DX_m8
        | Code::Outsw_DX_m16
        | Code::Outsd_DX_m32 => emulate_string_io(&insn, code, regs, state, env),

        Code::Cli | Code::Sti => {
            // xen: validate(): cli/sti are ignored when IOPL allows them, else #GP.
            if state.iopl_ok() {
                EmuOutcome::done(RegWrites::default(), len, EmuEffect::None)
            } else {
                EmuOutcome::NotEmulated
            }
        }

        Code::Clts => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            state.cr0_ts = false;
            EmuOutcome::done(
                RegWrites::default(),
                len,
                EmuEffect::FpuTaskSwitch { ts: false },
            )
        }

        Code::Wbinvd => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            // xen: _wbinvd: ignored for a domain without cache-flush permission.
            EmuOutcome::done(RegWrites::default(), len, EmuEffect::None)
        }

        Code::Mov_r64_cr => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            let Some(dst) = Gpr::from_iced(insn.op0_register()) else {
                return EmuOutcome::NotEmulated;
            };
            let val = match insn.op1_register() {
                Register::CR0 => state.cr0(),
                Register::CR2 => state.cr2,
                // xen: read_cr: CR3 = the guest's (kernel) L4 frame as a CR3 value.
                Register::CR3 => state.cr3 & !0xfff,
                Register::CR4 => state.cr4,
                _ => return EmuOutcome::NotEmulated,
            };
            EmuOutcome::done(RegWrites::one(dst, val), len, EmuEffect::None)
        }

        Code::Mov_cr_r64 => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            let Some(src) = Gpr::from_iced(insn.op1_register()) else {
                return EmuOutcome::NotEmulated;
            };
            let val = regs.get(src);
            match insn.op0_register() {
                Register::CR0 => {
                    // xen: write_cr: only TS may change.
                    if (val ^ state.cr0()) & !cr::CR0_TS != 0 {
                        return EmuOutcome::NotEmulated;
                    }
                    let ts = val & cr::CR0_TS != 0;
                    state.cr0_ts = ts;
                    EmuOutcome::done(RegWrites::default(), len, EmuEffect::FpuTaskSwitch { ts })
                }
                Register::CR2 => {
                    state.cr2 = val;
                    EmuOutcome::done(RegWrites::default(), len, EmuEffect::Cr2(val))
                }
                // xen: write_cr: xen_cr3_to_pfn, then new_guest_cr3.
                Register::CR3 => EmuOutcome::done(
                    RegWrites::default(),
                    len,
                    EmuEffect::NewCr3 { pfn: val >> 12 },
                ),
                Register::CR4 => {
                    let c = cpu_caps(env);
                    state.cr4 = fixup_guest_cr4(val, c.tsc, c.de, c.fsgsbase, c.xsave);
                    EmuOutcome::done(RegWrites::default(), len, EmuEffect::Cr4(state.cr4))
                }
                _ => EmuOutcome::NotEmulated,
            }
        }

        Code::Rdmsr => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            let idx = regs.get(Gpr::Rcx) as u32;
            match read_msr(idx, state, env) {
                Some(v) => {
                    let mut w = RegWrites::one(Gpr::Rax, v & 0xffff_ffff);
                    w.push(Gpr::Rdx, v >> 32);
                    EmuOutcome::done(w, len, EmuEffect::None)
                }
                None => EmuOutcome::gp0(),
            }
        }

        Code::Wrmsr => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            let idx = regs.get(Gpr::Rcx) as u32;
            let val = (regs.get(Gpr::Rdx) << 32) | (regs.get(Gpr::Rax) & 0xffff_ffff);
            match write_msr(idx, val, state, env) {
                Some(effect) => EmuOutcome::done(RegWrites::default(), len, effect),
                None => EmuOutcome::gp0(),
            }
        }

        Code::Rdtsc | Code::Rdtscp => {
            // x86_emulate: rdtsc faults outside ring 0 when (virtual) CR4.TSD is set.
            if !ring0 && state.cr4 & cr::CR4_TSD != 0 {
                return EmuOutcome::gp0();
            }
            if code == Code::Rdtscp && !has_rdtscp(env) {
                return EmuOutcome::ud();
            }
            let t = env.tsc();
            let mut w = RegWrites::one(Gpr::Rax, t & 0xffff_ffff);
            w.push(Gpr::Rdx, t >> 32);
            if code == Code::Rdtscp {
                w.push(Gpr::Rcx, u64::from(state.tsc_aux));
            }
            EmuOutcome::done(w, len, EmuEffect::None)
        }

        Code::Cpuid => {
            // A faulting CPUID (no forced-emulation prefix): the #GP view.
            let w = cpuid_writes(regs, state, env, false);
            EmuOutcome::done(w, len, EmuEffect::None)
        }

        Code::Xsetbv => {
            if !ring0 {
                return EmuOutcome::gp0();
            }
            if state.cr4 & cr::CR4_OSXSAVE == 0 {
                return EmuOutcome::ud();
            }
            let val = (regs.get(Gpr::Rdx) << 32) | (regs.get(Gpr::Rax) & 0xffff_ffff);
            if regs.get(Gpr::Rcx) as u32 != 0 || !xcr0_ok(val, env) {
                return EmuOutcome::gp0();
            }
            state.xcr0 = val;
            EmuOutcome::done(RegWrites::default(), len, EmuEffect::Xcr0(val))
        }

        // hlt is not in Xen's list: a PV guest blocks with SCHEDOP_block, hlt is a #GP.
        _ => EmuOutcome::NotEmulated,
    }
}

/// Handle a `#UD` in the guest: Xen's forced-emulation prefix `ud2; .ascii "xen"; cpuid`
/// (`0f 0b 78 65 6e 0f a2`) runs CPUID with the enlightened view and skips all 7 bytes.
/// Anything else is [`EmuOutcome::NotEmulated`] (the caller delivers `#UD`, after its own
/// `int $n` check).
// xen: pv/emul-inv-op.c emulate_forced_invalid_op
pub fn emulate_ud(
    bytes: &[u8],
    regs: &EmuRegs,
    state: &mut EmuState,
    env: &mut impl EmuEnv,
) -> EmuOutcome {
    const CPUID: [u8; 2] = [0x0f, 0xa2];
    let want = FORCED_EMULATION_PREFIX.iter().chain(CPUID.iter());
    for (i, (&w, got)) in want
        .zip(bytes.iter().map(Some).chain(core::iter::repeat(None)))
        .enumerate()
    {
        match got {
            Some(&b) if b == w => {}
            Some(_) => return EmuOutcome::NotEmulated,
            None => {
                return EmuOutcome::FetchFault {
                    offset: u8::try_from(i).unwrap_or(u8::MAX),
                }
            }
        }
    }
    let w = cpuid_writes(regs, state, env, true);
    EmuOutcome::done(
        w,
        FORCED_EMULATION_PREFIX.len() + CPUID.len(),
        EmuEffect::None,
    )
}

fn cpuid_writes(regs: &EmuRegs, state: &EmuState, env: &impl EmuEnv, forced: bool) -> RegWrites {
    let leaf = regs.get(Gpr::Rax) as u32;
    let sub = regs.get(Gpr::Rcx) as u32;
    let ctx = CpuidContext {
        kernel_mode: state.kernel_mode,
        forced,
        cr4: state.cr4,
    };
    let r = pv_cpuid(env, &env.cpuid_config(), ctx, leaf, sub);
    let mut w = RegWrites::default();
    w.push(Gpr::Rax, u64::from(r[0]));
    w.push(Gpr::Rbx, u64::from(r[1]));
    w.push(Gpr::Rcx, u64::from(r[2]));
    w.push(Gpr::Rdx, u64::from(r[3]));
    w
}

struct Caps {
    tsc: bool,
    de: bool,
    fsgsbase: bool,
    xsave: bool,
}

fn cpu_caps(env: &impl EmuEnv) -> Caps {
    let l1 = env.host_cpuid(1, 0).unwrap_or([0; 4]);
    let l7 = env.host_cpuid(7, 0).unwrap_or([0; 4]);
    Caps {
        tsc: l1[3] & (1 << 4) != 0,
        de: l1[3] & (1 << 2) != 0,
        fsgsbase: l7[1] & 1 != 0,
        xsave: l1[2] & cpuid::leaf1_ecx::XSAVE != 0,
    }
}

/// CPU vendors some MSRs depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
}

/// The vendor from CPUID leaf 0 (`GenuineIntel`, `AuthenticAMD`), `None` for others.
fn vendor(env: &impl EmuEnv) -> Option<Vendor> {
    match env.host_cpuid(0, 0).map(|l| l[1]) {
        Some(0x756e_6547) => Some(Vendor::Intel), // "Genu"
        Some(0x6874_7541) => Some(Vendor::Amd),   // "Auth"
        _ => None,
    }
}

fn has_tsc_aux(env: &impl EmuEnv) -> bool {
    // RDPID: CPUID.7.0 ECX bit 22.
    has_rdtscp(env) || env.host_cpuid(7, 0).is_some_and(|l| l[2] & (1 << 22) != 0)
}

fn has_rdtscp(env: &impl EmuEnv) -> bool {
    env.host_cpuid(0x8000_0001, 0)
        .is_some_and(|l| l[3] & (1 << 27) != 0)
}

/// XCR0 checks: x87 always set, AVX needs SSE, only bits the CPU supports.
// xen: xstate.c handle_xsetbv (valid_xcr0)
fn xcr0_ok(val: u64, env: &impl EmuEnv) -> bool {
    let d = env.host_cpuid(0xd, 0).unwrap_or([0; 4]);
    let supported = u64::from(d[0]) | (u64::from(d[3]) << 32);
    val & 1 != 0 && (val & 4 == 0 || val & 2 != 0) && val & !supported == 0
}

fn is_canonical(v: u64) -> bool {
    ((v as i64) << 16 >> 16) as u64 == v
}

fn read_msr(idx: u32, state: &EmuState, env: &mut impl EmuEnv) -> Option<u64> {
    // xen: emul-priv-op.c read_msr + msr.c guest_rdmsr; anything unlisted is #GP.
    Some(match idx {
        msr::FS_BASE => state.fs_base,
        msr::GS_BASE => state.gs_base_kernel,
        msr::SHADOW_GS_BASE => state.gs_base_user,
        msr::IA32_TSC => env.tsc(),
        // xen: msr.c guest_rdmsr: TSC_AUX exists only with RDTSCP or RDPID.
        msr::TSC_AUX if has_tsc_aux(env) => u64::from(state.tsc_aux),
        msr::EFER => state.efer,
        msr::IA32_CR_PAT => XEN_MSR_PAT,
        msr::IA32_MISC_ENABLE => guest_misc_enable(state.misc_enable_host),
        // No local APIC for PV: report the architectural default, enabled, BSP on vCPU 0.
        msr::IA32_APICBASE => 0xfee0_0000 | (1 << 11) | if state.vcpu_id == 0 { 1 << 8 } else { 0 },
        msr::IA32_PLATFORM_ID | msr::IA32_PERF_CAPABILITIES => 0,
        // xen: msr.c guest_rdmsr, UCODE_REV: Intel and AMD read the revision of the loaded
        // microcode in the high half, whatever was written before.
        msr::IA32_UCODE_REV if vendor(env).is_some() => u64::from(env.microcode_revision()) << 32,
        // No CPUID faulting offered.
        msr::INTEL_PLATFORM_INFO | msr::INTEL_MISC_FEATURES_ENABLES => 0,
        // xen: read_msr "faking RDMSR": with no #GP handler registered, an unknown MSR
        // outside Xen's 0x4000xxxx range reads as 0 rather than killing the guest.
        _ if !state.gp_handler_set && idx >> 16 != 0x4000 => {
            tracing::warn!(msr = idx, "faking RDMSR as 0 (no #GP handler yet)");
            0
        }
        // xen: guest_rdmsr_xen: nothing in Xen's MSR range is readable; the rest is #GP.
        _ => return None,
    })
}

fn write_msr(idx: u32, val: u64, state: &mut EmuState, env: &impl EmuEnv) -> Option<EmuEffect> {
    // xen: emul-priv-op.c write_msr + msr.c guest_wrmsr.
    match idx {
        msr::FS_BASE | msr::GS_BASE | msr::SHADOW_GS_BASE => {
            if !is_canonical(val) {
                return None;
            }
            match idx {
                msr::FS_BASE => state.fs_base = val,
                msr::GS_BASE => state.gs_base_kernel = val,
                _ => state.gs_base_user = val,
            }
            Some(EmuEffect::SegmentBase)
        }
        msr::TSC_AUX if has_tsc_aux(env) => {
            let v = u32::try_from(val).ok()?;
            state.tsc_aux = v;
            Some(EmuEffect::None)
        }
        // xen: write_msr: EFER may only be written with its current value (Linux does).
        msr::EFER => (val == state.efer).then_some(EmuEffect::None),
        // xen: write_msr: MISC_ENABLE writes are dropped (warned when different).
        msr::IA32_MISC_ENABLE => {
            let cur = guest_misc_enable(state.misc_enable_host);
            if val != cur {
                tracing::warn!(msr = idx, from = cur, to = val, "guest WRMSR ignored");
            }
            Some(EmuEffect::None)
        }
        msr::INTEL_MISC_FEATURES_ENABLES if val == 0 => Some(EmuEffect::None),
        // xen: msr.c guest_wrmsr, UCODE_REV: read-only, except the 0 Intel documents writing
        // before reading it.
        msr::IA32_UCODE_REV if val == 0 && vendor(env) == Some(Vendor::Intel) => {
            Some(EmuEffect::None)
        }
        // xen: traps.c wrmsr_hypervisor_regs: idx 0 = hypercall page; low 12 bits = page
        // index, only page 0 exists.
        msr::XEN_HYPERCALL_PAGE => {
            if val & 0xfff != 0 {
                return None;
            }
            Some(EmuEffect::HypercallPage { gfn: val >> 12 })
        }
        _ => None,
    }
}

fn emulate_io(
    insn: &Instruction,
    code: Code,
    regs: &EmuRegs,
    state: &mut EmuState,
    env: &mut impl EmuEnv,
) -> EmuOutcome {
    let (is_in, size, imm) = match code {
        Code::In_AL_imm8 => (true, 1u8, true),
        Code::In_AX_imm8 => (true, 2, true),
        Code::In_EAX_imm8 => (true, 4, true),
        Code::In_AL_DX => (true, 1, false),
        Code::In_AX_DX => (true, 2, false),
        Code::In_EAX_DX => (true, 4, false),
        Code::Out_imm8_AL => (false, 1, true),
        Code::Out_imm8_AX => (false, 2, true),
        Code::Out_imm8_EAX => (false, 4, true),
        Code::Out_DX_AL => (false, 1, false),
        Code::Out_DX_AX => (false, 2, false),
        _ => (false, 4, false),
    };
    let port: u16 = if imm {
        u16::from(insn.immediate8())
    } else {
        regs.get(Gpr::Rdx) as u16
    };
    if !io_permitted(port, size, state, env) {
        // xen: guest_io_okay fails -> X86EMUL_UNHANDLEABLE -> the guest's #GP(0).
        return EmuOutcome::gp0();
    }
    let len = insn.len();
    let rax = regs.get(Gpr::Rax);
    if is_in {
        let data = u64::from(env.port_in(port, size));
        let new = match size {
            1 => (rax & !0xff) | (data & 0xff),
            2 => (rax & !0xffff) | (data & 0xffff),
            _ => data & 0xffff_ffff, // 32-bit writes zero-extend
        };
        EmuOutcome::done(RegWrites::one(Gpr::Rax, new), len, EmuEffect::None)
    } else {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        env.port_out(port, size, (rax & mask) as u32);
        EmuOutcome::done(RegWrites::default(), len, EmuEffect::None)
    }
}

/// Xen's `guest_io_okay`: IOPL, else the guest's I/O bitmap (a set bit denies; unreadable
/// bitmap bytes deny).
pub fn io_permitted(port: u16, size: u8, state: &EmuState, env: &mut impl EmuEnv) -> bool {
    if state.iopl_ok() {
        return true;
    }
    let end = u32::from(port) + u32::from(size);
    if state.iobmp_limit <= end {
        return false;
    }
    let mut b = [0xffu8; 2];
    let got = env.read_guest_kernel(state.iobmp.wrapping_add(u64::from(port >> 3)), &mut b);
    for x in b.iter_mut().skip(got) {
        *x = 0xff;
    }
    let bits = u16::from_le_bytes(b);
    let mask = ((1u16 << size) - 1) << (port & 7);
    bits & mask == 0
}

/// Xen's port I/O for a domain without physical port access (a domU): reads return all-ones
/// except the virtualised CMOS index (0x70) and PCI `CONFIG_ADDRESS` (0xcf8, dword only),
/// which are remembered per domain; writes elsewhere are dropped. kxen has no PIT, so the PIT
/// ports (0x42, 0x43, 0x61) read as all-ones too (Xen would emulate them).
// xen: emul-priv-op.c guest_io_read / guest_io_write (non-hardware-domain paths)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomUPorts {
    /// Last value written to port 0x70.
    pub cmos_idx: u8,
    /// Last dword written to port 0xcf8.
    pub pci_cf8: u32,
}

impl DomUPorts {
    /// A port read of `size` bytes (1, 2 or 4).
    pub fn read(&self, port: u16, size: u8) -> u32 {
        if port == 0xcf8 && size == 4 {
            return self.pci_cf8;
        }
        let mut data = 0u32;
        for i in 0..size.min(4) {
            let p = port.wrapping_add(u16::from(i));
            let byte = if p == 0x70 {
                u32::from(self.cmos_idx)
            } else {
                0xff
            };
            data |= byte << (8 * u32::from(i));
        }
        data
    }

    /// A port write of `size` bytes.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == 0xcf8 && size == 4 {
            self.pci_cf8 = value;
            return;
        }
        for i in 0..size.min(4) {
            if port.wrapping_add(u16::from(i)) == 0x70 {
                self.cmos_idx = (value >> (8 * u32::from(i))) as u8;
            }
        }
    }
}

/// `ins`/`outs`, optionally `rep`: Xen's `rep_ins`/`rep_outs`.
fn emulate_string_io(
    insn: &Instruction,
    code: Code,
    regs: &EmuRegs,
    state: &mut EmuState,
    env: &mut impl EmuEnv,
) -> EmuOutcome {
    let (is_in, size) = match code {
        Code::Insb_m8_DX => (true, 1u8),
        Code::Insw_m16_DX => (true, 2),
        Code::Insd_m32_DX => (true, 4),
        Code::Outsb_DX_m8 => (false, 1),
        Code::Outsw_DX_m16 => (false, 2),
        _ => (false, 4),
    };
    let port = regs.get(Gpr::Rdx) as u16;
    if !io_permitted(port, size, state, env) {
        return EmuOutcome::gp0();
    }
    let mem_kind = if is_in {
        insn.op0_kind()
    } else {
        insn.op1_kind()
    };
    let addr32 = matches!(mem_kind, OpKind::MemoryESEDI | OpKind::MemorySegESI);
    let amask: u64 = if addr32 { 0xffff_ffff } else { u64::MAX };
    let index_reg = if is_in { Gpr::Rdi } else { Gpr::Rsi };
    // 64-bit mode: segment bases are 0 except FS and GS; ins always uses ES.
    let seg_base = if is_in {
        0
    } else {
        match insn.memory_segment() {
            Register::FS => state.fs_base,
            Register::GS if state.kernel_mode => state.gs_base_kernel,
            Register::GS => state.gs_base_user,
            _ => 0,
        }
    };
    let is_rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let mut count = if is_rep {
        regs.get(Gpr::Rcx) & amask
    } else {
        1
    };
    let len = insn.len();
    if count == 0 {
        return EmuOutcome::done(RegWrites::default(), len, EmuEffect::None);
    }
    let down = regs.rflags & (1 << 10) != 0; // DF
    let step = u64::from(size);
    let mut index = regs.get(index_reg) & amask;
    let mut done_reps = 0u64;
    let progress = |index: u64, count: u64| {
        let mut w = RegWrites::one(index_reg, index & amask);
        if is_rep {
            // With 32-bit addressing ECX is written, which zero-extends into RCX.
            w.push(Gpr::Rcx, count & amask);
        }
        w
    };
    while count > 0 && done_reps < MAX_REPS_PER_CALL {
        let addr = seg_base.wrapping_add(index);
        let last = addr.wrapping_add(step - 1);
        if !is_canonical(addr) || !is_canonical(last) {
            if done_reps == 0 {
                return EmuOutcome::gp0();
            }
            break;
        }
        let mut buf = [0u8; 4];
        let bytes = buf.get_mut(..usize::from(size)).unwrap_or_default();
        if is_in {
            let data = env.port_in(port, size);
            bytes.copy_from_slice(&data.to_le_bytes()[..usize::from(size)]);
            let n = env.write_guest(addr, bytes);
            if n < bytes.len() {
                return EmuOutcome::PageFault {
                    regs: progress(index, count),
                    addr: addr.wrapping_add(n as u64),
                    error_code: 2 | 4, // write, user
                };
            }
        } else {
            let n = env.read_guest(addr, bytes);
            if n < bytes.len() {
                return EmuOutcome::PageFault {
                    regs: progress(index, count),
                    addr: addr.wrapping_add(n as u64),
                    error_code: 4, // read, user
                };
            }
            let mut word = [0u8; 4];
            word[..usize::from(size)].copy_from_slice(bytes);
            env.port_out(port, size, u32::from_le_bytes(word));
        }
        index = if down {
            index.wrapping_sub(step)
        } else {
            index.wrapping_add(step)
        } & amask;
        count -= 1;
        done_reps += 1;
    }
    let w = progress(index, count);
    if count == 0 || !is_rep {
        EmuOutcome::done(w, len, EmuEffect::None)
    } else {
        // More to do: stay on the instruction; it faults again and continues.
        EmuOutcome::Done {
            regs: w,
            rip_advance: 0,
            effect: EmuEffect::None,
        }
    }
}
