//! The bridge from an exception exit to privileged-operation emulation ([`crate::emulate`]):
//! what Xen does on a PV guest's `#GP(0)` (emul-priv-op.c) and on the forced-emulation
//! prefix `ud2; .ascii "xen"; cpuid` (emul-inv-op.c) before it would bounce the fault.
//!
//! [`try_emulate`] fetches the instruction through the checked guest accessor, runs the
//! emulator with the vCPU's PV state, and applies the outcome to the registers and the vCPU.
//! It answers what the trap path does next: resume the guest, bounce a different event, or
//! bounce the original fault.

use std::sync::OnceLock;

use kvm_ioctls::Kvm;
use xen_abi::arch::PAGE_SIZE;

use crate::domain::DomainShared;
use crate::emulate::cpuid::{CpuidLeaf, CpuidSource, CpuidTable, PvCpuidConfig};
use crate::emulate::{self, EmuEffect, EmuEnv, EmuOutcome, EmuRegs, EmuState, RegWrites};
use crate::memory::{GuestRam, GuestVirt};
use crate::vcpu::{GuestRegs, Vcpu};

/// `#UD`.
const VEC_UD: u8 = 6;
/// `#GP`.
const VEC_GP: u8 = 13;
/// `#PF`.
const VEC_PF: u8 = 14;
/// Bytes fetched at rip: the longest x86 instruction is 15 bytes.
const FETCH: usize = 16;

/// What the trap path should do after [`try_emulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Emulated: resume the guest with the updated registers.
    Resume,
    /// Deliver this event to the guest instead of the original fault.
    Inject {
        /// Vector.
        vector: u8,
        /// Error code.
        error_code: Option<u64>,
        /// CR2 for a #PF.
        cr2: u64,
    },
    /// Not an emulated instruction: bounce the original fault.
    Bounce,
}

/// The host's supported CPUID, read once.
fn host_cpuid() -> &'static CpuidTable {
    static TABLE: OnceLock<CpuidTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        Kvm::new()
            .and_then(|k| k.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
            .map(|c| CpuidTable::from_kvm(c.as_slice()))
            .unwrap_or_default()
    })
}

/// The host's microcode revision, from the first `microcode` line of /proc/cpuinfo (0 if
/// there is none), read once.
fn host_microcode_revision() -> u32 {
    static REV: OnceLock<u32> = OnceLock::new();
    *REV.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| parse_microcode(&s))
            .unwrap_or(0)
    })
}

/// The value of the first `microcode : 0x…` line of a /proc/cpuinfo text.
fn parse_microcode(cpuinfo: &str) -> Option<u32> {
    let line = cpuinfo.lines().find(|l| l.starts_with("microcode"))?;
    let v = line.split(':').nth(1)?.trim();
    let hex = v.strip_prefix("0x").unwrap_or(v);
    u32::from_str_radix(hex, 16).ok()
}

struct Env<'a> {
    guest: GuestVirt<'a>,
    cpuid: PvCpuidConfig,
}

impl CpuidSource for Env<'_> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidLeaf> {
        host_cpuid().host_cpuid(leaf, subleaf)
    }
}

impl EmuEnv for Env<'_> {
    fn cpuid_config(&self) -> PvCpuidConfig {
        self.cpuid
    }

    fn microcode_revision(&self) -> u32 {
        host_microcode_revision()
    }

    fn tsc(&mut self) -> u64 {
        // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn read_guest(&mut self, va: u64, buf: &mut [u8]) -> usize {
        if self.guest.copy_from_guest(va, buf).is_ok() {
            return buf.len();
        }
        // Partial: as many leading bytes as are readable.
        let mut n = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            if self
                .guest
                .copy_from_guest(va.wrapping_add(i as u64), &mut one)
                .is_err()
            {
                break;
            }
            *b = one[0];
            n += 1;
        }
        n
    }

    fn write_guest(&mut self, va: u64, buf: &[u8]) -> usize {
        if self.guest.copy_to_guest(va, buf).is_ok() {
            return buf.len();
        }
        let mut n = 0;
        for (i, b) in buf.iter().enumerate() {
            if self
                .guest
                .copy_to_guest(va.wrapping_add(i as u64), &[*b])
                .is_err()
            {
                break;
            }
            n += 1;
        }
        n
    }
}

/// Apply the emulator's register writes to the guest's registers (through KVM's layout,
/// which `GuestRegs` mirrors field for field).
fn apply_writes(regs: &mut GuestRegs, writes: &RegWrites) {
    let mut k = regs.to_kvm();
    writes.apply_kvm(&mut k);
    *regs = GuestRegs::from(&k);
}

/// Try to emulate the instruction behind a guest `#GP(0)` or `#UD` exit. `regs` are the
/// guest's registers at the fault (rip at the instruction) and are updated on success.
pub fn try_emulate(
    vcpu: &mut Vcpu,
    domain: &DomainShared,
    vector: u8,
    error_code: Option<u64>,
    regs: &mut GuestRegs,
) -> Next {
    // xen: emul-priv-op.c, only a #GP with error code 0 is a candidate for emulation
    let gp = vector == VEC_GP && error_code == Some(0);
    if !gp && vector != VEC_UD {
        return Next::Bounce;
    }
    let ram: GuestRam = vcpu.ram().clone();
    let mut env = Env {
        guest: GuestVirt::new(&ram, vcpu.cr3()),
        cpuid: *vcpu.cpuid_config(),
    };
    let mut bytes = [0u8; FETCH];
    let got = env.read_guest(regs.rip, &mut bytes);
    let id = vcpu.id();
    let mut state = EmuState::from_pv(vcpu.pv(), id);
    let er = EmuRegs::from_kvm(&regs.to_kvm());
    let outcome = if gp {
        emulate::emulate_gp(&bytes[..got], &er, &mut state, &mut env)
    } else {
        emulate::emulate_ud(&bytes[..got], &er, &mut state, &mut env)
    };
    tracing::trace!(
        vector,
        rip = format_args!("{:#x}", regs.rip),
        ?outcome,
        "privop"
    );
    match outcome {
        EmuOutcome::Done {
            regs: writes,
            rip_advance,
            effect,
        } => {
            if let Some(next) = apply_effect(vcpu, domain, &ram, &state, effect) {
                return next;
            }
            apply_writes(regs, &writes);
            regs.rip = regs.rip.wrapping_add(u64::from(rip_advance));
            // xen: a completed emulation clears RF like a retired instruction
            regs.rflags &= !(1 << 16);
            Next::Resume
        }
        EmuOutcome::Inject { vector, error_code } => Next::Inject {
            vector,
            error_code: error_code.map(u64::from),
            cr2: 0,
        },
        EmuOutcome::FetchFault { offset } => Next::Inject {
            vector: VEC_PF,
            error_code: Some(0),
            cr2: regs.rip.wrapping_add(offset as u64),
        },
        EmuOutcome::PageFault {
            regs: writes,
            addr,
            error_code,
        } => {
            apply_writes(regs, &writes);
            Next::Inject {
                vector: VEC_PF,
                error_code: Some(u64::from(error_code)),
                cr2: addr,
            }
        }
        EmuOutcome::NotEmulated => Next::Bounce,
    }
}

/// Carry out what the emulator could not do itself; `Some(next)` overrides the outcome.
fn apply_effect(
    vcpu: &mut Vcpu,
    domain: &DomainShared,
    ram: &GuestRam,
    state: &EmuState,
    effect: EmuEffect,
) -> Option<Next> {
    let gp0 = Some(Next::Inject {
        vector: VEC_GP,
        error_code: Some(0),
        cr2: 0,
    });
    match effect {
        EmuEffect::None => None,
        EmuEffect::SegmentBase => {
            vcpu.set_fs_base(state.fs_base);
            let gs = if state.kernel_mode {
                state.gs_base_kernel
            } else {
                state.gs_base_user
            };
            vcpu.set_gs_base(gs);
            state.store_to_pv(vcpu.pv_mut());
            None
        }
        EmuEffect::Cr2(v) => {
            domain.set_cr2(ram, vcpu.id(), v);
            None
        }
        EmuEffect::HypercallPage { gfn } => {
            // xen: the hypercall-page MSR writes the page into a frame of the guest's RAM
            if gfn >= domain.nr_pages {
                return gp0;
            }
            let page = crate::builder::hypercall_page(vcpu.ring0_layer().syscall_exit_va());
            match vm_memory::Bytes::write_slice(
                ram.mem(),
                &page,
                vm_memory::GuestAddress(gfn * PAGE_SIZE),
            ) {
                Ok(()) => None,
                Err(_) => gp0,
            }
        }
        EmuEffect::NewCr3 { pfn } => {
            // xen: a PV kernel's CR3 write is new_guest_cr3, as MMUEXT_NEW_BASEPTR; a
            // frame that cannot become an L4 is #GP(0) with rip unchanged.
            match crate::hypercall::mmu::switch_kernel_base(domain, ram, vcpu.pv_mut(), pfn) {
                Ok(()) => {
                    // Entries the validation fixed up must reach KVM's shadow MMU, as after
                    // a hypercall (crate::mm).
                    let written = domain
                        .mm
                        .lock()
                        .map(|mut m| m.take_replay())
                        .unwrap_or_default();
                    vcpu.sync_pte_writes(written);
                    let cr3 = vcpu.pv().current_cr3();
                    vcpu.flush_tlb(cr3);
                    None
                }
                Err(e) => {
                    tracing::debug!(pfn, error = %e, "mov to %cr3 refused");
                    gp0
                }
            }
        }
        EmuEffect::FpuTaskSwitch { ts } => {
            // clts / mov to %cr0: the virtual TS; crate::pvmode::apply mirrors it into the VM.
            vcpu.pv_mut().cr0_ts = u32::from(ts);
            None
        }
        EmuEffect::Cr4(v) => {
            tracing::debug!(
                cr4 = format_args!("{v:#x}"),
                "guest CR4 write recorded only"
            );
            None
        }
        EmuEffect::Xcr0(v) => {
            tracing::debug!(xcr0 = format_args!("{v:#x}"), "xsetbv not applied yet");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_microcode;

    #[test]
    fn microcode_revision_comes_from_the_first_cpuinfo_line() {
        let text = "processor\t: 0\nmicrocode\t: 0x2b000620\nprocessor\t: 1\nmicrocode\t: 0x1\n";
        assert_eq!(parse_microcode(text), Some(0x2b00_0620));
        assert_eq!(parse_microcode("microcode : 0x1\n"), Some(1));
        assert_eq!(parse_microcode("flags : fpu\n"), None);
        assert_eq!(parse_microcode("microcode : junk\n"), None);
    }
}
