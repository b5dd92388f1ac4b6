//! The CPUID a PV guest sees: the host's supported CPUID through a documented filter (the
//! features Xen never offers PV guests), plus Xen's hypervisor leaves at `0x4000_0000`.

use xen_abi::version::{KXEN_XEN_MAJOR, KXEN_XEN_MINOR};

/// One CPUID result: `[eax, ebx, ecx, edx]`.
pub type CpuidLeaf = [u32; 4];

/// The host side of CPUID: what the CPU (under KVM: `KVM_GET_SUPPORTED_CPUID`) supports.
pub trait CpuidSource {
    /// The unfiltered leaf, or `None` when the host has no such leaf/subleaf.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidLeaf>;
}

/// A fixed table of leaves (tests; or a snapshot of `KVM_GET_SUPPORTED_CPUID`).
#[derive(Debug, Clone, Default)]
pub struct CpuidTable {
    /// `(leaf, subleaf, result)`; subleaf is ignored for leaves that have none (use 0).
    pub entries: Vec<(u32, u32, CpuidLeaf)>,
}

impl CpuidSource for CpuidTable {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidLeaf> {
        let indexed = has_subleaves(leaf);
        self.entries
            .iter()
            .find(|(l, s, _)| *l == leaf && (!indexed || *s == subleaf))
            .map(|(_, _, r)| *r)
    }
}

impl CpuidTable {
    /// A snapshot of KVM's CPUID entries (`KVM_GET_SUPPORTED_CPUID`). Entries without
    /// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` are stored with subleaf 0.
    pub fn from_kvm(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Self {
        Self {
            entries: entries
                .iter()
                .map(|e| {
                    let sub = if e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
                        e.index
                    } else {
                        0
                    };
                    (e.function, sub, [e.eax, e.ebx, e.ecx, e.edx])
                })
                .collect(),
        }
    }

    /// Entries for `KVM_SET_CPUID2` (subleaf leaves flagged as indexed).
    pub fn to_kvm(&self) -> Vec<kvm_bindings::kvm_cpuid_entry2> {
        self.entries
            .iter()
            .map(|&(function, index, r)| kvm_bindings::kvm_cpuid_entry2 {
                function,
                index,
                flags: if has_subleaves(function) {
                    kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax: r[0],
                ebx: r[1],
                ecx: r[2],
                edx: r[3],
                ..Default::default()
            })
            .collect()
    }
}

/// The table a PV guest's *native* `cpuid` should see (load it with `KVM_SET_CPUID2`): every
/// basic and extended host leaf through the PV filter (the faulting-CPUID view: OSXSAVE is left
/// to KVM, which tracks the real CR4), KVM's own 0x4000xxxx leaves replaced by Xen's.
pub fn pv_native_table(host: &CpuidTable, cfg: &PvCpuidConfig) -> CpuidTable {
    let ctx = CpuidContext {
        kernel_mode: false,
        forced: false,
        cr4: 0,
    };
    let mut entries: Vec<(u32, u32, CpuidLeaf)> = host
        .entries
        .iter()
        .filter(|(leaf, _, _)| !(0x4000_0000..0x5000_0000).contains(leaf))
        .map(|&(leaf, sub, _)| (leaf, sub, pv_cpuid(host, cfg, ctx, leaf, sub)))
        .collect();
    if !entries.iter().any(|e| e.0 == FREQ_LEAF) {
        let r = pv_cpuid(host, cfg, ctx, FREQ_LEAF, 0);
        if r != [0; 4] {
            entries.push((FREQ_LEAF, 0, r));
        }
    }
    for idx in 0..=XEN_CPUID_MAX_NUM_LEAVES {
        let leaf = XEN_CPUID_FIRST_LEAF + idx;
        // The time leaf has subleaves; KVM matches it by index only when flagged, so list 0-2.
        let subs: &[u32] = if idx == 3 { &[0, 1, 2] } else { &[0] };
        for &sub in subs {
            entries.push((leaf, sub, xen_leaf(cfg, leaf, sub)));
        }
    }
    CpuidTable { entries }
}

/// Leaves whose result depends on ECX.
const fn has_subleaves(leaf: u32) -> bool {
    matches!(
        leaf,
        4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1f
    ) || leaf == 0x8000_001d
}

// xen: public/arch-x86/cpuid.h, XEN_CPUID_FIRST_LEAF and the signature words ("XenVMMXenVMM").
/// First Xen leaf.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// "XenV".
pub const XEN_CPUID_SIGNATURE_EBX: u32 = 0x566e_6558;
/// "MMXe".
pub const XEN_CPUID_SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// "nVMM".
pub const XEN_CPUID_SIGNATURE_EDX: u32 = 0x4d4d_566e;
/// Number of Xen leaves after the first (leaf 0x40000005 is the last).
// xen: public/arch-x86/cpuid.h, XEN_CPUID_MAX_NUM_LEAVES (5)
pub const XEN_CPUID_MAX_NUM_LEAVES: u32 = 5;
/// Base of Xen's MSRs (the hypercall-page MSR), reported in leaf 0x40000002 EBX.
// xen: arch/x86 cpuid_hypervisor_leaves, leaf 2 ebx = 0x40000000 (non-viridian)
pub const XEN_MSR_BASE: u32 = 0x4000_0000;
/// Leaf 0x40000002 ECX bit: `MMU_PT_UPDATE_PRESERVE_AD` is supported (set for PV guests).
// xen: public/arch-x86/cpuid.h, XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD
pub const XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD: u32 = 1 << 0;

/// Values for the time leaf (0x40000003), as the domain's TSC setup defines them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeLeaf {
    /// Subleaf 0 EAX bit 0: TSC is virtualised (vtsc).
    pub vtsc: bool,
    /// Subleaf 0 EAX bit 1: host TSC is safe (invariant and synchronised).
    pub tsc_safe: bool,
    /// Subleaf 0 EAX bit 2: RDTSCP is available.
    pub rdtscp: bool,
    /// Subleaf 0 EBX: the domain's `tsc_mode`.
    pub tsc_mode: u32,
    /// Subleaf 0 ECX: guest TSC frequency in kHz.
    pub tsc_khz: u32,
    /// Subleaf 0 EDX: incarnation (bumped on migration).
    pub incarnation: u32,
    /// Subleaf 1: TSC offset (EAX low, EBX high).
    pub offset: u64,
    /// Subleaf 1 ECX: TSC-to-ns multiplier.
    pub mul_frac: u32,
    /// Subleaf 1 EDX: TSC-to-ns shift (sign-extended).
    pub shift: i8,
    /// Subleaf 2 EAX: physical CPU frequency in kHz.
    pub cpu_khz: u32,
}

/// The domain-level inputs of the PV CPUID view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvCpuidConfig {
    /// Xen major version reported in leaf 0x40000001.
    pub xen_major: u32,
    /// Xen minor version.
    pub xen_minor: u32,
    /// Whether leaf 0x40000002 advertises `MMU_PT_UPDATE_PRESERVE_AD` (Xen always does for PV).
    pub preserve_ad: bool,
    /// Leaf 0x40000005 EBX: maximum machine address width in bits.
    pub max_machine_addr_bits: u8,
    /// Time leaf contents.
    pub time: TimeLeaf,
    /// kxen extension: when non-zero and the host's leaf 0x16 (processor frequency) is
    /// empty, report this base/maximum frequency in MHz there. Xen caps a PV guest's basic
    /// leaves at 0xd, so Linux under Xen calibrates `cpu_khz` with ~100 000 reads of the PIT
    /// (`quick_pit_calibrate`), each a cheap in-hypervisor emulation there but a ~20 µs
    /// userspace exit here; with the leaf, Linux takes the frequency from CPUID instead
    /// (`cpuid_freq_leaf` in xl.cfg turns it off; docs/performance.md).
    pub freq_leaf_mhz: u32,
}

impl Default for PvCpuidConfig {
    fn default() -> Self {
        Self {
            xen_major: KXEN_XEN_MAJOR,
            xen_minor: KXEN_XEN_MINOR,
            preserve_ad: true,
            max_machine_addr_bits: 40,
            time: TimeLeaf::default(),
            freq_leaf_mhz: 0,
        }
    }
}

/// Bits of CPUID.1 ECX.
pub mod leaf1_ecx {
    /// DTES64.
    pub const DTES64: u32 = 1 << 2;
    /// MONITOR/MWAIT.
    pub const MONITOR: u32 = 1 << 3;
    /// CPL-qualified debug store.
    pub const DSCPL: u32 = 1 << 4;
    /// VMX.
    pub const VMX: u32 = 1 << 5;
    /// SMX.
    pub const SMX: u32 = 1 << 6;
    /// Enhanced SpeedStep.
    pub const EIST: u32 = 1 << 7;
    /// Thermal monitor 2.
    pub const TM2: u32 = 1 << 8;
    /// Silicon debug.
    pub const SDBG: u32 = 1 << 11;
    /// xTPR update control.
    pub const XTPR: u32 = 1 << 14;
    /// Perfmon and debug capability.
    pub const PDCM: u32 = 1 << 15;
    /// Process-context identifiers.
    pub const PCID: u32 = 1 << 17;
    /// Direct cache access.
    pub const DCA: u32 = 1 << 18;
    /// x2APIC.
    pub const X2APIC: u32 = 1 << 21;
    /// TSC deadline timer.
    pub const TSC_DEADLINE: u32 = 1 << 24;
    /// XSAVE.
    pub const XSAVE: u32 = 1 << 26;
    /// OS has enabled XSAVE (CR4.OSXSAVE).
    pub const OSXSAVE: u32 = 1 << 27;
    /// Running under a hypervisor.
    pub const HYPERVISOR: u32 = 1 << 31;
}

/// Bits of CPUID.1 EDX.
pub mod leaf1_edx {
    /// Virtual-8086 mode extensions.
    pub const VME: u32 = 1 << 1;
    /// Page size extension.
    pub const PSE: u32 = 1 << 3;
    /// On-chip APIC.
    pub const APIC: u32 = 1 << 9;
    /// MTRRs.
    pub const MTRR: u32 = 1 << 12;
    /// 36-bit PSE.
    pub const PSE36: u32 = 1 << 17;
    /// Processor serial number.
    pub const PSN: u32 = 1 << 18;
    /// Debug store.
    pub const DS: u32 = 1 << 21;
    /// Thermal monitor and clock control.
    pub const ACPI: u32 = 1 << 22;
    /// Thermal monitor.
    pub const TM: u32 = 1 << 29;
    /// Pending break enable.
    pub const PBE: u32 = 1 << 31;
}

/// Bits of CPUID.7.0 EBX / ECX.
pub mod leaf7 {
    /// EBX: SGX.
    pub const EBX_SGX: u32 = 1 << 2;
    /// EBX: SMEP.
    pub const EBX_SMEP: u32 = 1 << 7;
    /// EBX: INVPCID.
    pub const EBX_INVPCID: u32 = 1 << 10;
    /// EBX: resource-director monitoring.
    pub const EBX_PQM: u32 = 1 << 12;
    /// EBX: MPX.
    pub const EBX_MPX: u32 = 1 << 14;
    /// EBX: resource-director allocation.
    pub const EBX_PQE: u32 = 1 << 15;
    /// EBX: SMAP.
    pub const EBX_SMAP: u32 = 1 << 20;
    /// EBX: processor trace.
    pub const EBX_PROC_TRACE: u32 = 1 << 25;
    /// ECX: UMIP.
    pub const ECX_UMIP: u32 = 1 << 2;
    /// ECX: protection keys.
    pub const ECX_PKU: u32 = 1 << 3;
    /// ECX: OS enabled protection keys.
    pub const ECX_OSPKE: u32 = 1 << 4;
    /// ECX: WAITPKG.
    pub const ECX_WAITPKG: u32 = 1 << 5;
    /// ECX: 5-level paging.
    pub const ECX_LA57: u32 = 1 << 16;
    /// ECX: SGX launch control.
    pub const ECX_SGX_LC: u32 = 1 << 30;
}

/// Bits of CPUID.0x80000001 ECX / EDX.
pub mod ext1 {
    /// ECX: SVM.
    pub const ECX_SVM: u32 = 1 << 2;
    /// ECX: instruction-based sampling.
    pub const ECX_IBS: u32 = 1 << 10;
    /// ECX: SKINIT.
    pub const ECX_SKINIT: u32 = 1 << 12;
    /// ECX: watchdog timer.
    pub const ECX_WDT: u32 = 1 << 13;
    /// ECX: lightweight profiling.
    pub const ECX_LWP: u32 = 1 << 15;
    /// EDX: 1 GiB pages.
    pub const EDX_PAGE1GB: u32 = 1 << 26;
}

// Filter masks. Sources: xen/include/public/arch-x86/cpufeatureset.h marks each feature with
// the guests that may see it ('A' all, 'S'/'H' HVM only, none: hidden); cpuid.c
// recalculate_misc()/guest_cpuid() adjust leaves. kxen hides what Xen hides from a PV domU,
// plus what kxen cannot virtualise (x2APIC/APIC: no local APIC for PV guests).
const HIDE_1_ECX: u32 = leaf1_ecx::DTES64
    | leaf1_ecx::MONITOR // PV guests cannot use MONITOR/MWAIT
    | leaf1_ecx::DSCPL
    | leaf1_ecx::VMX // no nested virtualisation for PV
    | leaf1_ecx::SMX
    | leaf1_ecx::EIST // leaked only to the hardware domain
    | leaf1_ecx::TM2
    | leaf1_ecx::SDBG
    | leaf1_ecx::XTPR
    | leaf1_ecx::PDCM // no vPMU
    | leaf1_ecx::PCID // HVM only
    | leaf1_ecx::DCA
    | leaf1_ecx::X2APIC
    | leaf1_ecx::TSC_DEADLINE // HVM only (needs an emulated LAPIC)
    | leaf1_ecx::OSXSAVE; // dynamic, see pv_cpuid
const HIDE_1_EDX: u32 = leaf1_edx::VME // 'S': HVM only
    | leaf1_edx::PSE
    | leaf1_edx::PSE36
    | leaf1_edx::APIC
    | leaf1_edx::MTRR // leaked only to the hardware domain
    | leaf1_edx::PSN
    | leaf1_edx::DS
    | leaf1_edx::ACPI
    | leaf1_edx::TM
    | leaf1_edx::PBE;
const HIDE_7_EBX: u32 = leaf7::EBX_SGX
    | leaf7::EBX_SMEP // 'S': Xen uses SMEP/SMAP itself; PV kernels run at CPL3
    | leaf7::EBX_INVPCID
    | leaf7::EBX_PQM
    | leaf7::EBX_MPX
    | leaf7::EBX_PQE
    | leaf7::EBX_SMAP
    | leaf7::EBX_PROC_TRACE;
const HIDE_7_ECX: u32 = leaf7::ECX_UMIP
    | leaf7::ECX_PKU
    | leaf7::ECX_OSPKE // dynamic: a PV guest cannot set CR4.PKE
    | leaf7::ECX_WAITPKG
    | leaf7::ECX_LA57
    | leaf7::ECX_SGX_LC;
/// Leaf 7 EDX speculation controls: IBRSB (26), STIBP (27), L1D_FLUSH (28), ARCH_CAPS (29),
/// SSBD (31). Xen offers them and emulates their MSRs (SPEC_CTRL, PRED_CMD, FLUSH_CMD,
/// ARCH_CAPABILITIES); kxen does not virtualize those MSRs yet, so it hides the features
/// rather than let a guest fault on `wrmsr` (Linux issues IBPB through PRED_CMD on context
/// switches when it sees them).
const HIDE_7_EDX: u32 = (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 31);
/// Leaf 0x80000008 EBX, AMD's view of the same controls: IBPB (12), IBRS (14), STIBP (15),
/// IBRS/STIBP always-on (16, 17), IBRS preferred (18), AMD_SSBD (24), VIRT_SSBD (25),
/// PSFD (28).
const HIDE_E8_EBX: u32 = (1 << 12)
    | (1 << 14)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 18)
    | (1 << 24)
    | (1 << 25)
    | (1 << 28);
const HIDE_E1_ECX: u32 =
    ext1::ECX_SVM | ext1::ECX_IBS | ext1::ECX_SKINIT | ext1::ECX_WDT | ext1::ECX_LWP;
const HIDE_E1_EDX: u32 = ext1::EDX_PAGE1GB; // 'H': HVM only

/// The processor frequency information leaf (Intel SDM: base, maximum and bus MHz).
pub const FREQ_LEAF: u32 = 0x16;

/// Per-call facts the dynamic parts of the view depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidContext {
    /// The guest is in kernel mode.
    pub kernel_mode: bool,
    /// The CPUID came through the forced-emulation prefix (#UD), not a faulting CPUID (#GP).
    pub forced: bool,
    /// The guest's virtual CR4.
    pub cr4: u64,
}

/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;

/// The CPUID result a PV guest gets for `leaf`/`subleaf`.
pub fn pv_cpuid(
    src: &(impl CpuidSource + ?Sized),
    cfg: &PvCpuidConfig,
    ctx: CpuidContext,
    leaf: u32,
    subleaf: u32,
) -> CpuidLeaf {
    // xen: cpuid.c guest_cpuid, 0x40000000..0x400001ff go to the hypervisor leaves.
    if (0x4000_0000..=0x4000_01ff).contains(&leaf) {
        return xen_leaf(cfg, leaf, subleaf);
    }
    let basic_max = src.host_cpuid(0, 0).map_or(0, |l| l[0]);
    let extd_max = src.host_cpuid(0x8000_0000, 0).map_or(0, |l| l[0]);
    let in_range = if leaf < 0x4000_0000 {
        leaf <= basic_max
    } else if (0x8000_0000..0x8001_0000).contains(&leaf) {
        leaf <= extd_max
    } else {
        false
    };
    // Out-of-range leaves read as zeros (Xen follows the AMD model).
    if !in_range {
        return [0; 4];
    }
    let host = src.host_cpuid(leaf, subleaf);
    if leaf == FREQ_LEAF && cfg.freq_leaf_mhz != 0 && host.unwrap_or([0; 4]) == [0; 4] {
        // kxen: base and maximum frequency; the bus (reference) frequency is not enumerated.
        let mhz = cfg.freq_leaf_mhz & 0xffff;
        return [mhz, mhz, 0, 0];
    }
    let Some(mut r) = host else {
        return [0; 4];
    };
    match leaf {
        1 => {
            // xen: guest_cpuid, leaf 1 ebx: APIC ID is dynamic (0 for PV).
            r[1] &= 0x00ff_ffff;
            r[2] &= !HIDE_1_ECX;
            r[2] |= leaf1_ecx::HYPERVISOR;
            r[3] &= !HIDE_1_EDX;
            // xen: guest_cpuid, PV OSXSAVE: the guest's CR4.OSXSAVE, or (leaked) for the
            // kernel's forced-emulation view when XSAVE is offered.
            let xsave = r[2] & leaf1_ecx::XSAVE != 0;
            if ctx.cr4 & CR4_OSXSAVE != 0 || (xsave && ctx.forced && ctx.kernel_mode) {
                r[2] |= leaf1_ecx::OSXSAVE;
            }
        }
        // xen: recalculate_misc: 3 (PSN), 5 (MONITOR), 6 (thermal), 8, 9 (DCA), 0xc hidden;
        // 0xa empty without vPMU; topology (0xb, 0x1f) zeroed.
        3 | 5 | 6 | 8 | 9 | 0xa | 0xb | 0xc | 0x1f => return [0; 4],
        7 if subleaf == 0 => {
            r[1] &= !HIDE_7_EBX;
            r[2] &= !HIDE_7_ECX;
            r[3] &= !HIDE_7_EDX;
        }
        0x8000_0008 => {
            r[1] &= !HIDE_E8_EBX;
        }
        0x8000_0001 => {
            r[2] &= !HIDE_E1_ECX;
            r[3] &= !HIDE_E1_EDX;
        }
        // xen: calculate_pv_max_policy: no SVM leaf for PV guests; 0x80000007 mostly hidden.
        0x8000_000a => return [0; 4],
        0x8000_0007 => {
            r[0] = 0;
            r[1] = 0;
            r[2] = 0;
        }
        _ => {}
    }
    r
}

/// Xen's hypervisor leaves (0x40000000 + idx) for a PV, non-viridian guest.
// xen: cpuid.c/traps.c cpuid_hypervisor_leaves
fn xen_leaf(cfg: &PvCpuidConfig, leaf: u32, subleaf: u32) -> CpuidLeaf {
    let idx = leaf.wrapping_sub(XEN_CPUID_FIRST_LEAF);
    if idx > XEN_CPUID_MAX_NUM_LEAVES {
        return [0; 4];
    }
    match idx {
        0 => [
            XEN_CPUID_FIRST_LEAF + XEN_CPUID_MAX_NUM_LEAVES,
            XEN_CPUID_SIGNATURE_EBX,
            XEN_CPUID_SIGNATURE_ECX,
            XEN_CPUID_SIGNATURE_EDX,
        ],
        1 => [
            ((cfg.xen_major & 0xffff) << 16) | (cfg.xen_minor & 0xffff),
            0,
            0,
            0,
        ],
        2 => [
            1, // one hypercall page
            XEN_MSR_BASE,
            if cfg.preserve_ad {
                XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD
            } else {
                0
            },
            0,
        ],
        3 => {
            let t = &cfg.time;
            match subleaf {
                0 => [
                    u32::from(t.vtsc) | (u32::from(t.tsc_safe) << 1) | (u32::from(t.rdtscp) << 2),
                    t.tsc_mode,
                    t.tsc_khz,
                    t.incarnation,
                ],
                1 => [
                    t.offset as u32,
                    (t.offset >> 32) as u32,
                    t.mul_frac,
                    i32::from(t.shift) as u32,
                ],
                2 => [t.cpu_khz, 0, 0, 0],
                _ => [0; 4],
            }
        }
        // Leaf 4 is HVM-only: zeros for PV.
        4 => [0; 4],
        5 if subleaf == 0 => [0, u32::from(cfg.max_machine_addr_bits), 0, 0],
        _ => [0; 4],
    }
}
