use super::cpuid::{ext1, leaf1_ecx, leaf1_edx, leaf7};
use super::*;
use proptest::prelude::*;

/// A host that supports a typical modern feature set.
fn host_table() -> CpuidTable {
    let all = u32::MAX;
    CpuidTable {
        entries: vec![
            (0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            // leaf 1: every feature bit set, APIC id 7 in ebx[31:24]
            (1, 0, [0x000a_0655, 0x0710_0800, all, all]),
            (5, 0, [0x40, 0x40, 3, 0x1120]),
            (6, 0, [4, 0, 1, 0]),
            (7, 0, [0, all, all, all]),
            (0xb, 0, [1, 2, 0x100, 7]),
            (0xd, 0, [0x7, 0x340, 0x340, 0]),
            (0xd, 1, [0xf, 0, 0, 0]),
            (0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            (0x8000_0001, 0, [0, 0, all, all]),
            (0x8000_0008, 0, [0x3030, 0, 0, 0]),
        ],
    }
}

struct TestEnv {
    cpuid: CpuidTable,
    tsc: u64,
    /// Guest memory: (va, bytes).
    mem: Vec<(u64, Vec<u8>)>,
    outs: Vec<(u16, u8, u32)>,
    ins: Vec<(u16, u8)>,
    ucode: u32,
}

impl TestEnv {
    fn new() -> Self {
        Self {
            cpuid: host_table(),
            tsc: 0x1234_5678_9abc_def0,
            mem: Vec::new(),
            outs: Vec::new(),
            ins: Vec::new(),
            ucode: 0,
        }
    }
}

impl CpuidSource for TestEnv {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidLeaf> {
        self.cpuid.host_cpuid(leaf, subleaf)
    }
}

impl EmuEnv for TestEnv {
    fn tsc(&mut self) -> u64 {
        self.tsc
    }
    fn microcode_revision(&self) -> u32 {
        self.ucode
    }
    fn read_guest(&mut self, va: u64, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            let a = va.wrapping_add(i as u64);
            let hit = self.mem.iter().find_map(|(base, bytes)| {
                a.checked_sub(*base)
                    .and_then(|off| bytes.get(usize::try_from(off).ok()?))
                    .copied()
            });
            match hit {
                Some(v) => {
                    *b = v;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
    fn write_guest(&mut self, va: u64, buf: &[u8]) -> usize {
        let mut n = 0;
        for (i, b) in buf.iter().enumerate() {
            let a = va.wrapping_add(i as u64);
            let slot = self.mem.iter_mut().find_map(|(base, bytes)| {
                let off = usize::try_from(a.checked_sub(*base)?).ok()?;
                bytes.get_mut(off)
            });
            match slot {
                Some(v) => {
                    *v = *b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.ins.push((port, size));
        0xa1b2_c3d4
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.outs.push((port, size, value));
    }
}

const RIP: u64 = 0xffff_ffff_8100_0000;

fn regs() -> EmuRegs {
    let mut r = EmuRegs {
        rip: RIP,
        rflags: 0x202,
        ..Default::default()
    };
    for (i, g) in r.gpr.iter_mut().enumerate() {
        *g = 0x1111_1111_1111_1100 + i as u64;
    }
    r
}

fn with(mut r: EmuRegs, g: Gpr, v: u64) -> EmuRegs {
    r.gpr[g as usize] = v;
    r
}

fn gp(bytes: &[u8], r: &EmuRegs, s: &mut EmuState, env: &mut TestEnv) -> EmuOutcome {
    emulate_gp(bytes, r, s, env)
}

fn done(o: EmuOutcome) -> (RegWrites, u8, EmuEffect) {
    match o {
        EmuOutcome::Done {
            regs,
            rip_advance,
            effect,
        } => (regs, rip_advance, effect),
        other => panic!("expected Done, got {other:?}"),
    }
}

fn user() -> EmuState {
    EmuState {
        kernel_mode: false,
        ..Default::default()
    }
}

const GP0: EmuOutcome = EmuOutcome::Inject {
    vector: VEC_GP,
    error_code: Some(0),
};

// ---- control registers ----

#[test]
fn mov_from_cr0_reports_host_cr0_with_virtual_ts() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %cr0, %rbx = 0f 20 c3
    let (w, len, _) = done(gp(&[0x0f, 0x20, 0xc3], &regs(), &mut s, &mut env));
    assert_eq!(len, 3);
    assert_eq!(w.get(Gpr::Rbx), Some(cr::CR0_HOST & !cr::CR0_TS));
    s.cr0_ts = true;
    let (w, _, _) = done(gp(&[0x0f, 0x20, 0xc3], &regs(), &mut s, &mut env));
    assert_eq!(w.get(Gpr::Rbx), Some(cr::CR0_HOST | cr::CR0_TS));
}

#[test]
fn mov_from_cr2_cr3_cr4_and_extended_register() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        cr2: 0xdead_b000,
        cr3: 0x0012_3000,
        ..Default::default()
    };
    // mov %cr2, %rax = 0f 20 d0
    let (w, len, _) = done(gp(&[0x0f, 0x20, 0xd0], &regs(), &mut s, &mut env));
    assert_eq!((w.get(Gpr::Rax), len), (Some(0xdead_b000), 3));
    // mov %cr3, %r9 = 41 0f 20 d9
    let (w, len, _) = done(gp(&[0x41, 0x0f, 0x20, 0xd9], &regs(), &mut s, &mut env));
    assert_eq!((w.get(Gpr::R9), len), (Some(0x0012_3000), 4));
    // mov %cr4, %rdx = 0f 20 e2
    let (w, _, _) = done(gp(&[0x0f, 0x20, 0xe2], &regs(), &mut s, &mut env));
    assert_eq!(w.get(Gpr::Rdx), Some(cr::PV_CR4_GUEST_VISIBLE));
}

#[test]
fn cr_access_from_guest_user_mode_is_gp0() {
    let mut env = TestEnv::new();
    let mut s = user();
    for bytes in [
        &[0x0f, 0x20, 0xc3][..],
        &[0x0f, 0x22, 0xd8],
        &[0x0f, 0x06],
        &[0x0f, 0x09],
        &[0x0f, 0x32],
        &[0x0f, 0x30],
    ] {
        assert_eq!(gp(bytes, &regs(), &mut s, &mut env), GP0, "{bytes:x?}");
    }
}

#[test]
fn cr0_write_toggles_only_ts_and_rejects_other_bits() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %rax, %cr0 = 0f 22 c0
    let r = with(regs(), Gpr::Rax, cr::CR0_HOST | cr::CR0_TS);
    let (_, len, eff) = done(gp(&[0x0f, 0x22, 0xc0], &r, &mut s, &mut env));
    assert_eq!((len, eff), (3, EmuEffect::FpuTaskSwitch { ts: true }));
    assert!(s.cr0_ts);
    let r = with(regs(), Gpr::Rax, cr::CR0_HOST & !(1 << 16)); // clear WP
    assert_eq!(
        gp(&[0x0f, 0x22, 0xc0], &r, &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
    assert!(s.cr0_ts, "a refused write changes nothing");
}

#[test]
fn clts_clears_virtual_ts() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        cr0_ts: true,
        ..Default::default()
    };
    let (w, len, eff) = done(gp(&[0x0f, 0x06], &regs(), &mut s, &mut env));
    assert!(w.is_empty());
    assert_eq!((len, eff), (2, EmuEffect::FpuTaskSwitch { ts: false }));
    assert!(!s.cr0_ts);
}

#[test]
fn cr2_write_is_recorded_and_reported() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %rsi, %cr2 = 0f 22 d6
    let r = with(regs(), Gpr::Rsi, 0x4242_0000);
    let (_, _, eff) = done(gp(&[0x0f, 0x22, 0xd6], &r, &mut s, &mut env));
    assert_eq!(eff, EmuEffect::Cr2(0x4242_0000));
    assert_eq!(s.cr2, 0x4242_0000);
}

#[test]
fn cr3_write_asks_the_caller_to_switch_page_tables() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %rbx, %cr3 = 0f 22 db
    let r = with(regs(), Gpr::Rbx, 0x0055_5000);
    let (_, len, eff) = done(gp(&[0x0f, 0x22, 0xdb], &r, &mut s, &mut env));
    assert_eq!((len, eff), (3, EmuEffect::NewCr3 { pfn: 0x555 }));
}

#[test]
fn cr4_write_keeps_only_guest_bits_and_shows_visible_bits() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %rax, %cr4 = 0f 22 e0; try to set everything
    let r = with(regs(), Gpr::Rax, u64::MAX);
    let (_, _, eff) = done(gp(&[0x0f, 0x22, 0xe0], &r, &mut s, &mut env));
    let want = cr::PV_CR4_GUEST_MASK | cr::PV_CR4_GUEST_VISIBLE;
    assert_eq!(eff, EmuEffect::Cr4(want));
    assert_eq!(s.cr4, want);
    // Without XSAVE on the host, OSXSAVE cannot be set.
    env.cpuid.entries[1].2[2] &= !leaf1_ecx::XSAVE;
    let (_, _, eff) = done(gp(&[0x0f, 0x22, 0xe0], &r, &mut s, &mut env));
    assert_eq!(eff, EmuEffect::Cr4(want & !cr::CR4_OSXSAVE));
}

#[test]
fn cr8_and_debug_registers_are_not_emulated() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // mov %cr8, %rax = 44 0f 20 c0 ; mov %dr7, %rax = 0f 21 f8
    for b in [&[0x44, 0x0f, 0x20, 0xc0][..], &[0x0f, 0x21, 0xf8]] {
        assert_eq!(gp(b, &regs(), &mut s, &mut env), EmuOutcome::NotEmulated);
    }
}

// ---- MSRs ----

fn rdmsr(idx: u32, s: &mut EmuState, env: &mut TestEnv) -> EmuOutcome {
    gp(
        &[0x0f, 0x32],
        &with(regs(), Gpr::Rcx, u64::from(idx)),
        s,
        env,
    )
}

fn wrmsr(idx: u32, val: u64, s: &mut EmuState, env: &mut TestEnv) -> EmuOutcome {
    let r = with(regs(), Gpr::Rcx, 0xffff_ffff_0000_0000 | u64::from(idx));
    let r = with(r, Gpr::Rax, 0xdead_0000_0000_0000 | (val & 0xffff_ffff));
    let r = with(r, Gpr::Rdx, val >> 32);
    gp(&[0x0f, 0x30], &r, s, env)
}

fn msr_value(o: EmuOutcome) -> u64 {
    let (w, len, _) = done(o);
    assert_eq!(len, 2);
    let lo = w.get(Gpr::Rax).unwrap();
    let hi = w.get(Gpr::Rdx).unwrap();
    assert!(lo <= 0xffff_ffff && hi <= 0xffff_ffff);
    (hi << 32) | lo
}

#[test]
fn rdmsr_segment_bases_efer_tsc_misc_enable_apicbase() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        fs_base: 0x7fff_0000_1000,
        gs_base_kernel: 0xffff_8880_0000_0000,
        gs_base_user: 0x1234,
        vcpu_id: 0,
        ..Default::default()
    };
    assert_eq!(msr_value(rdmsr(msr::FS_BASE, &mut s, &mut env)), s.fs_base);
    assert_eq!(
        msr_value(rdmsr(msr::GS_BASE, &mut s, &mut env)),
        s.gs_base_kernel
    );
    assert_eq!(
        msr_value(rdmsr(msr::SHADOW_GS_BASE, &mut s, &mut env)),
        0x1234
    );
    assert_eq!(msr_value(rdmsr(msr::EFER, &mut s, &mut env)), 0xd01);
    assert_eq!(msr_value(rdmsr(msr::IA32_TSC, &mut s, &mut env)), env.tsc);
    let me = msr_value(rdmsr(msr::IA32_MISC_ENABLE, &mut s, &mut env));
    assert_eq!(me, 1 | (1 << 11) | (1 << 12) | (1 << 23));
    s.misc_enable_host = misc_enable::PERF_AVAIL | misc_enable::MONITOR_ENABLE;
    let me = msr_value(rdmsr(msr::IA32_MISC_ENABLE, &mut s, &mut env));
    assert_eq!(
        me & (misc_enable::PERF_AVAIL | misc_enable::MONITOR_ENABLE),
        0
    );
    assert_eq!(
        msr_value(rdmsr(msr::IA32_APICBASE, &mut s, &mut env)),
        0xfee0_0900
    );
    s.vcpu_id = 3;
    assert_eq!(
        msr_value(rdmsr(msr::IA32_APICBASE, &mut s, &mut env)),
        0xfee0_0800
    );
    assert_eq!(
        msr_value(rdmsr(msr::INTEL_PLATFORM_INFO, &mut s, &mut env)),
        0
    );
    assert_eq!(
        msr_value(rdmsr(msr::IA32_CR_PAT, &mut s, &mut env)),
        0x0000_0501_0007_0406
    );
    s.tsc_aux = 7;
    assert_eq!(msr_value(rdmsr(msr::TSC_AUX, &mut s, &mut env)), 7);
}

#[test]
fn tsc_aux_needs_rdtscp_or_rdpid() {
    let mut env = TestEnv::new();
    env.cpuid.entries.retain(|e| e.0 != 0x8000_0001);
    env.cpuid.entries.iter_mut().for_each(|e| {
        if e.0 == 7 {
            e.2[2] &= !(1 << 22);
        }
    });
    let mut s = EmuState::default();
    assert_eq!(rdmsr(msr::TSC_AUX, &mut s, &mut env), GP0);
    assert_eq!(wrmsr(msr::TSC_AUX, 1, &mut s, &mut env), GP0);
}

#[test]
fn unknown_rdmsr_reads_zero_until_a_gp_handler_is_registered() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        gp_handler_set: false,
        ..Default::default()
    };
    assert_eq!(msr_value(rdmsr(0x174, &mut s, &mut env)), 0);
    // Xen's own range still faults, and writes are unaffected.
    assert_eq!(rdmsr(0x4000_0001, &mut s, &mut env), GP0);
    assert_eq!(wrmsr(0x174, 0, &mut s, &mut env), GP0);
    let mut pv = PvVcpuState::default();
    assert!(!EmuState::from_pv(&pv, 0).gp_handler_set);
    pv.traps[13].address = 0xffff_ffff_8100_0000;
    assert!(EmuState::from_pv(&pv, 0).gp_handler_set);
}

#[test]
fn rdmsr_of_unlisted_msrs_is_gp0() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    for idx in [
        0x0,
        0x3a,        // FEATURE_CONTROL
        0x174,       // SYSENTER_CS
        0xc000_0081, // STAR
        0xc000_0082, // LSTAR
        msr::XEN_HYPERCALL_PAGE,
        0x4000_0001,
        0x6e0, // TSC_DEADLINE
        0x802, // x2APIC id
        u32::MAX,
    ] {
        assert_eq!(rdmsr(idx, &mut s, &mut env), GP0, "msr {idx:#x}");
    }
}

#[test]
fn wrmsr_segment_bases_require_canonical_values() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let (_, len, eff) = done(wrmsr(msr::FS_BASE, 0x7f00_0000_0000, &mut s, &mut env));
    assert_eq!((len, eff), (2, EmuEffect::SegmentBase));
    assert_eq!(s.fs_base, 0x7f00_0000_0000);
    done(wrmsr(msr::GS_BASE, 0xffff_8000_0000_1000, &mut s, &mut env));
    done(wrmsr(msr::SHADOW_GS_BASE, 0x10, &mut s, &mut env));
    assert_eq!(
        (s.gs_base_kernel, s.gs_base_user),
        (0xffff_8000_0000_1000, 0x10)
    );
    assert_eq!(wrmsr(msr::FS_BASE, 0x8000_0000_0000, &mut s, &mut env), GP0);
    assert_eq!(s.fs_base, 0x7f00_0000_0000);
    let mut pv = PvVcpuState::default();
    s.store_to_pv(&mut pv);
    assert_eq!((pv.fs_base, pv.gs_base_user), (0x7f00_0000_0000, 0x10));
}

#[test]
fn wrmsr_hypercall_page_msr_names_the_frame_and_rejects_other_pages() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let (_, _, eff) = done(wrmsr(
        msr::XEN_HYPERCALL_PAGE,
        0x1234_5000,
        &mut s,
        &mut env,
    ));
    assert_eq!(eff, EmuEffect::HypercallPage { gfn: 0x12345 });
    assert_eq!(
        wrmsr(msr::XEN_HYPERCALL_PAGE, 0x1234_5001, &mut s, &mut env),
        GP0
    );
    assert_eq!(wrmsr(0x4000_0001, 0, &mut s, &mut env), GP0);
}

#[test]
fn wrmsr_efer_same_value_only_misc_enable_ignored_others_gp() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let (_, _, eff) = done(wrmsr(msr::EFER, EFER_PV, &mut s, &mut env));
    assert_eq!(eff, EmuEffect::None);
    assert_eq!(wrmsr(msr::EFER, 0, &mut s, &mut env), GP0);
    assert_eq!(s.efer, EFER_PV);
    done(wrmsr(msr::IA32_MISC_ENABLE, 0, &mut s, &mut env));
    assert_eq!(wrmsr(msr::IA32_CR_PAT, XEN_MSR_PAT, &mut s, &mut env), GP0);
    for idx in [
        msr::IA32_TSC,
        msr::IA32_APICBASE,
        0xc000_0082,
        0x6e0,
        0x10000,
    ] {
        assert_eq!(wrmsr(idx, 0, &mut s, &mut env), GP0, "msr {idx:#x}");
    }
    assert_eq!(wrmsr(msr::TSC_AUX, 1 << 32, &mut s, &mut env), GP0);
    done(wrmsr(msr::TSC_AUX, 9, &mut s, &mut env));
    assert_eq!(s.tsc_aux, 9);
}

#[test]
fn microcode_revision_msr_reads_the_revision_and_takes_intels_zero_write() {
    let mut env = TestEnv::new();
    env.ucode = 0x2b00_0620;
    let mut s = EmuState {
        gp_handler_set: true,
        ..Default::default()
    };
    // GenuineIntel (the test table): Linux writes 0, executes CPUID, reads the revision.
    let (_, _, eff) = done(wrmsr(msr::IA32_UCODE_REV, 0, &mut s, &mut env));
    assert_eq!(eff, EmuEffect::None);
    assert_eq!(wrmsr(msr::IA32_UCODE_REV, 1, &mut s, &mut env), GP0);
    assert_eq!(
        msr_value(rdmsr(msr::IA32_UCODE_REV, &mut s, &mut env)),
        0x2b00_0620u64 << 32
    );
    // AuthenticAMD: PATCH_LEVEL reads the same way; it is read-only.
    env.cpuid.entries[0].2[1] = 0x6874_7541;
    assert_eq!(wrmsr(msr::IA32_UCODE_REV, 0, &mut s, &mut env), GP0);
    assert_eq!(
        msr_value(rdmsr(msr::IA32_UCODE_REV, &mut s, &mut env)),
        0x2b00_0620u64 << 32
    );
    // Any other vendor: no such MSR.
    env.cpuid.entries[0].2[1] = 0x1234_5678;
    assert_eq!(rdmsr(msr::IA32_UCODE_REV, &mut s, &mut env), GP0);
    assert_eq!(wrmsr(msr::IA32_UCODE_REV, 0, &mut s, &mut env), GP0);
}

// ---- TSC ----

#[test]
fn rdtsc_returns_split_tsc_and_honours_virtual_tsd() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let (w, len, _) = done(gp(&[0x0f, 0x31], &regs(), &mut s, &mut env));
    assert_eq!(len, 2);
    assert_eq!(w.get(Gpr::Rax), Some(0x9abc_def0));
    assert_eq!(w.get(Gpr::Rdx), Some(0x1234_5678));
    // User mode without TSD: allowed.
    let mut u = user();
    done(gp(&[0x0f, 0x31], &regs(), &mut u, &mut env));
    // User mode with TSD: #GP(0). Kernel mode with TSD: allowed.
    u.cr4 |= cr::CR4_TSD;
    assert_eq!(gp(&[0x0f, 0x31], &regs(), &mut u, &mut env), GP0);
    s.cr4 |= cr::CR4_TSD;
    done(gp(&[0x0f, 0x31], &regs(), &mut s, &mut env));
}

#[test]
fn rdtscp_adds_tsc_aux_or_is_ud_without_the_feature() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        tsc_aux: 5,
        ..Default::default()
    };
    let (w, len, _) = done(gp(&[0x0f, 0x01, 0xf9], &regs(), &mut s, &mut env));
    assert_eq!(len, 3);
    assert_eq!(w.get(Gpr::Rcx), Some(5));
    assert_eq!(w.get(Gpr::Rax), Some(0x9abc_def0));
    env.cpuid.entries.retain(|e| e.0 != 0x8000_0001);
    assert_eq!(
        gp(&[0x0f, 0x01, 0xf9], &regs(), &mut s, &mut env),
        EmuOutcome::Inject {
            vector: VEC_UD,
            error_code: None
        }
    );
}

// ---- misc instructions ----

#[test]
fn wbinvd_is_ignored_in_kernel_mode() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let (w, len, eff) = done(gp(&[0x0f, 0x09], &regs(), &mut s, &mut env));
    assert!(w.is_empty());
    assert_eq!((len, eff), (2, EmuEffect::None));
}

#[test]
fn hlt_is_not_emulated_for_pv_guests() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    assert_eq!(
        gp(&[0xf4], &regs(), &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
}

#[test]
fn cli_sti_are_ignored_with_iopl_and_gp_without() {
    let mut env = TestEnv::new();
    // Kernel mode without architectural IOPL counts as CPL1.
    let mut s = EmuState {
        iopl: 1,
        ..Default::default()
    };
    for b in [0xfa, 0xfb] {
        let (w, len, _) = done(gp(&[b], &regs(), &mut s, &mut env));
        assert!(w.is_empty());
        assert_eq!(len, 1);
    }
    s.iopl = 0;
    assert_eq!(
        gp(&[0xfa], &regs(), &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
    // With architectural IOPL the kernel is CPL0: IOPL 0 suffices.
    s.vm_assist = 1 << VMASST_TYPE_ARCHITECTURAL_IOPL;
    done(gp(&[0xfb], &regs(), &mut s, &mut env));
    // User mode needs IOPL 3.
    let mut u = EmuState { iopl: 2, ..user() };
    assert_eq!(
        gp(&[0xfb], &regs(), &mut u, &mut env),
        EmuOutcome::NotEmulated
    );
    u.iopl = 3;
    done(gp(&[0xfb], &regs(), &mut u, &mut env));
}

#[test]
fn xsetbv_validates_xcr0() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let xsetbv = [0x0f, 0x01, 0xd1];
    let r = with(with(with(regs(), Gpr::Rcx, 0), Gpr::Rax, 7), Gpr::Rdx, 0);
    // CR4.OSXSAVE clear: #UD.
    assert_eq!(
        gp(&xsetbv, &r, &mut s, &mut env),
        EmuOutcome::Inject {
            vector: VEC_UD,
            error_code: None
        }
    );
    s.cr4 |= cr::CR4_OSXSAVE;
    let (_, len, eff) = done(gp(&xsetbv, &r, &mut s, &mut env));
    assert_eq!((len, eff, s.xcr0), (3, EmuEffect::Xcr0(7), 7));
    for (rcx, rax) in [(0, 6), (0, 5), (0, 0xf), (1, 7)] {
        let r = with(with(regs(), Gpr::Rcx, rcx), Gpr::Rax, rax);
        let r = with(r, Gpr::Rdx, 0);
        assert_eq!(
            gp(&xsetbv, &r, &mut s, &mut env),
            GP0,
            "ecx {rcx} xcr0 {rax:#x}"
        );
    }
}

// ---- port I/O ----

#[test]
fn port_io_without_permission_is_gp0() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // in $0x60, %al = e4 60 ; out %al, (%dx) = ee
    assert_eq!(gp(&[0xe4, 0x60], &regs(), &mut s, &mut env), GP0);
    assert_eq!(gp(&[0xee], &regs(), &mut s, &mut env), GP0);
    assert!(env.ins.is_empty() && env.outs.is_empty());
}

#[test]
fn port_io_with_iopl_reads_and_writes_with_operand_size() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        iopl: 1,
        ..Default::default()
    };
    let r = with(
        with(regs(), Gpr::Rax, 0xffff_ffff_ffff_ffff),
        Gpr::Rdx,
        0x3f8,
    );
    // in $0x70, %al
    let (w, len, _) = done(gp(&[0xe4, 0x70], &r, &mut s, &mut env));
    assert_eq!((w.get(Gpr::Rax), len), (Some(0xffff_ffff_ffff_ffd4), 2));
    // in (%dx), %ax = 66 ed
    let (w, len, _) = done(gp(&[0x66, 0xed], &r, &mut s, &mut env));
    assert_eq!((w.get(Gpr::Rax), len), (Some(0xffff_ffff_ffff_c3d4), 2));
    // in (%dx), %eax = ed: zero-extends
    let (w, _, _) = done(gp(&[0xed], &r, &mut s, &mut env));
    assert_eq!(w.get(Gpr::Rax), Some(0xa1b2_c3d4));
    assert_eq!(env.ins, vec![(0x70, 1), (0x3f8, 2), (0x3f8, 4)]);
    // out %al, $0x80 = e6 80 ; out %eax, (%dx) = ef
    let r = with(r, Gpr::Rax, 0x1122_3344_5566_7788);
    done(gp(&[0xe6, 0x80], &r, &mut s, &mut env));
    done(gp(&[0xef], &r, &mut s, &mut env));
    assert_eq!(env.outs, vec![(0x80, 1, 0x88), (0x3f8, 4, 0x5566_7788)]);
}

#[test]
fn io_bitmap_grants_exactly_the_clear_bits() {
    let mut env = TestEnv::new();
    // Bitmap at 0x5000 covering 0x400 ports; ports 0x3f8..0x3ff allowed (byte 0x7f = 0).
    let mut bm = vec![0xffu8; 0x80];
    bm[0x7f] = 0x00;
    env.mem.push((0x5000, bm));
    let mut s = EmuState {
        iobmp: 0x5000,
        iobmp_limit: 0x400,
        ..Default::default()
    };
    let r = with(regs(), Gpr::Rdx, 0x3f8);
    done(gp(&[0xec], &r, &mut s, &mut env)); // in (%dx), %al
    done(gp(
        &[0x66, 0xed],
        &with(r, Gpr::Rdx, 0x3fc),
        &mut s,
        &mut env,
    )); // 2 bytes at 0x3fc
        // xen: guest_io_okay needs limit > port + bytes: the very last port of the range is out.
    assert_eq!(
        gp(&[0xed], &with(r, Gpr::Rdx, 0x3fc), &mut s, &mut env),
        GP0
    );
    assert_eq!(
        gp(&[0xec], &with(r, Gpr::Rdx, 0x3f7), &mut s, &mut env),
        GP0
    );
    // 4 bytes at 0x3fe straddle into 0x400 (past the limit).
    assert_eq!(
        gp(&[0xed], &with(r, Gpr::Rdx, 0x3fe), &mut s, &mut env),
        GP0
    );
    // Beyond the limit: denied even though IOPL would not help.
    assert_eq!(
        gp(&[0xec], &with(r, Gpr::Rdx, 0x500), &mut s, &mut env),
        GP0
    );
    // An access spanning two bitmap bytes needs both clear.
    s.iobmp_limit = 0x800;
    env.mem[0].1.push(0x00);
    done(gp(&[0xed], &with(r, Gpr::Rdx, 0x3fe), &mut s, &mut env));
    env.mem[0].1[0x80] = 0x01;
    assert_eq!(
        gp(&[0xed], &with(r, Gpr::Rdx, 0x3fe), &mut s, &mut env),
        GP0
    );
    // Unreadable bitmap bytes deny.
    s.iobmp = 0x9000;
    assert_eq!(gp(&[0xec], &r, &mut s, &mut env), GP0);
}

// ---- CPUID ----

fn cpuid_regs(o: EmuOutcome) -> ([u32; 4], u8) {
    let (w, len, _) = done(o);
    let g = |r| u32::try_from(w.get(r).unwrap()).unwrap();
    ([g(Gpr::Rax), g(Gpr::Rbx), g(Gpr::Rcx), g(Gpr::Rdx)], len)
}

const FORCED_CPUID: [u8; 7] = [0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2];

fn forced(leaf: u32, sub: u32, s: &mut EmuState, env: &mut TestEnv) -> [u32; 4] {
    let r = with(
        with(regs(), Gpr::Rax, u64::from(leaf)),
        Gpr::Rcx,
        u64::from(sub),
    );
    let (v, len) = cpuid_regs(emulate_ud(&FORCED_CPUID, &r, s, env));
    assert_eq!(len, 7);
    v
}

#[test]
fn forced_emulation_cpuid_returns_the_xen_leaves_exactly() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let l0 = forced(0x4000_0000, 0, &mut s, &mut env);
    assert_eq!(l0[0], 0x4000_0005);
    let sig: Vec<u8> = l0[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(&sig, b"XenVMMXenVMM");
    assert_eq!(
        forced(0x4000_0001, 0, &mut s, &mut env),
        [(4 << 16) | 19, 0, 0, 0]
    );
    assert_eq!(
        forced(0x4000_0002, 0, &mut s, &mut env),
        [1, 0x4000_0000, 1, 0]
    );
    assert_eq!(forced(0x4000_0003, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0x4000_0004, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0x4000_0005, 0, &mut s, &mut env), [0, 40, 0, 0]);
    assert_eq!(forced(0x4000_0006, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0x4000_0100, 0, &mut s, &mut env), [0; 4]);
}

#[test]
fn time_leaf_reports_configured_values() {
    let cfg = PvCpuidConfig {
        time: cpuid::TimeLeaf {
            vtsc: false,
            tsc_safe: true,
            rdtscp: true,
            tsc_mode: 0,
            tsc_khz: 2_000_000,
            incarnation: 3,
            offset: 0x1_0000_0002,
            mul_frac: 0x8000_0000,
            shift: -1,
            cpu_khz: 2_100_000,
        },
        ..Default::default()
    };
    let t = host_table();
    let ctx = CpuidContext::default();
    assert_eq!(
        pv_cpuid(&t, &cfg, ctx, 0x4000_0003, 0),
        [6, 0, 2_000_000, 3]
    );
    assert_eq!(
        pv_cpuid(&t, &cfg, ctx, 0x4000_0003, 1),
        [2, 1, 0x8000_0000, 0xffff_ffff]
    );
    assert_eq!(
        pv_cpuid(&t, &cfg, ctx, 0x4000_0003, 2),
        [2_100_000, 0, 0, 0]
    );
}

#[test]
fn forced_emulation_needs_the_whole_signature() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let r = regs();
    // Plain ud2; "xen" followed by something else; "xeN".
    for b in [
        &[0x0f, 0x0b, 0x90][..],
        &[0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0x31],
        &[0x0f, 0x0b, 0x78, 0x65, 0x4e, 0x0f, 0xa2],
        &[0xcd, 0x80],
    ] {
        assert_eq!(emulate_ud(b, &r, &mut s, &mut env), EmuOutcome::NotEmulated);
    }
    // Signature cut short by an unreadable page: #PF at the first missing byte.
    assert_eq!(
        emulate_ud(&FORCED_CPUID[..4], &r, &mut s, &mut env),
        EmuOutcome::FetchFault { offset: 4 }
    );
}

#[test]
fn cpuid_filter_hides_what_xen_hides_and_sets_hypervisor() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let l1 = forced(1, 0, &mut s, &mut env);
    assert_eq!(l1[1] >> 24, 0, "APIC id cleared");
    for bit in [
        leaf1_ecx::VMX,
        leaf1_ecx::MONITOR,
        leaf1_ecx::PCID,
        leaf1_ecx::X2APIC,
        leaf1_ecx::TSC_DEADLINE,
        leaf1_ecx::EIST,
        leaf1_ecx::PDCM,
    ] {
        assert_eq!(l1[2] & bit, 0, "ecx bit {bit:#x}");
    }
    assert_ne!(l1[2] & leaf1_ecx::HYPERVISOR, 0);
    assert_ne!(l1[2] & leaf1_ecx::XSAVE, 0);
    assert_ne!(l1[2] & 1, 0, "SSE3 passes through");
    for bit in [
        leaf1_edx::APIC,
        leaf1_edx::MTRR,
        leaf1_edx::PSE,
        leaf1_edx::VME,
        leaf1_edx::DS,
    ] {
        assert_eq!(l1[3] & bit, 0, "edx bit {bit:#x}");
    }
    assert_ne!(l1[3] & (1 << 25), 0, "SSE passes through");
    let l7 = forced(7, 0, &mut s, &mut env);
    for bit in [leaf7::EBX_SMEP, leaf7::EBX_SMAP, leaf7::EBX_INVPCID] {
        assert_eq!(l7[1] & bit, 0);
    }
    assert_ne!(l7[1] & 1, 0, "FSGSBASE passes through");
    assert_eq!(
        l7[2] & (leaf7::ECX_PKU | leaf7::ECX_OSPKE | leaf7::ECX_UMIP),
        0
    );
    let e1 = forced(0x8000_0001, 0, &mut s, &mut env);
    assert_eq!(e1[2] & ext1::ECX_SVM, 0);
    assert_eq!(e1[3] & ext1::EDX_PAGE1GB, 0);
    assert_ne!(e1[3] & (1 << 29), 0, "LM passes through");
    // MONITOR leaf, thermal leaf, topology: empty.
    assert_eq!(forced(5, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(6, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0xb, 0, &mut s, &mut env), [0; 4]);
    // Beyond the host's max leaf: zeros; vendor leaf passes.
    assert_eq!(forced(0xe, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0x8000_0009, 0, &mut s, &mut env), [0; 4]);
    assert_eq!(forced(0, 0, &mut s, &mut env)[1], 0x756e_6547);
    // xsave subleaf 1 reaches the host table.
    assert_eq!(forced(0xd, 1, &mut s, &mut env)[0], 0xf);
}

#[test]
fn osxsave_follows_cr4_or_the_kernels_forced_view() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    // Forced emulation from the kernel: leaked OSXSAVE.
    assert_ne!(forced(1, 0, &mut s, &mut env)[2] & leaf1_ecx::OSXSAVE, 0);
    // Faulting CPUID (#GP path) with CR4.OSXSAVE clear: hidden.
    let r = with(with(regs(), Gpr::Rax, 1), Gpr::Rcx, 0);
    let (v, len) = cpuid_regs(gp(&[0x0f, 0xa2], &r, &mut s, &mut env));
    assert_eq!(len, 2);
    assert_eq!(v[2] & leaf1_ecx::OSXSAVE, 0);
    // User mode forced: hidden; with CR4.OSXSAVE: shown.
    let mut u = user();
    assert_eq!(forced(1, 0, &mut u, &mut env)[2] & leaf1_ecx::OSXSAVE, 0);
    u.cr4 |= cr::CR4_OSXSAVE;
    assert_ne!(forced(1, 0, &mut u, &mut env)[2] & leaf1_ecx::OSXSAVE, 0);
}

// ---- hostile bytes ----

#[test]
fn truncated_instruction_is_a_fetch_fault_at_the_missing_byte() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    assert_eq!(
        gp(&[0x0f, 0x20], &regs(), &mut s, &mut env),
        EmuOutcome::FetchFault { offset: 2 }
    );
    assert_eq!(
        gp(&[], &regs(), &mut s, &mut env),
        EmuOutcome::FetchFault { offset: 0 }
    );
}

#[test]
fn garbage_and_unprivileged_instructions_are_not_emulated() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let mut junk = [0u8; 16];
    junk[0] = 0x06; // push %es: invalid in 64-bit mode
    assert_eq!(
        gp(&junk, &regs(), &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
    // 15 prefixes then an opcode: too long.
    let mut long = [0x66u8; 16];
    long[15] = 0x90;
    assert_eq!(
        gp(&long, &regs(), &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
    // A normal instruction (mov %rax,%rbx) is not Xen's to emulate.
    assert_eq!(
        gp(&[0x48, 0x89, 0xc3], &regs(), &mut s, &mut env),
        EmuOutcome::NotEmulated
    );
}

#[test]
fn reg_writes_apply_to_kvm_regs() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    let r = with(with(regs(), Gpr::Rax, 0x4000_0000), Gpr::Rcx, 0);
    let (w, _, _) = done(emulate_ud(&FORCED_CPUID, &r, &mut s, &mut env));
    let mut k = kvm_bindings::kvm_regs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        r15: 99,
        ..Default::default()
    };
    w.apply_kvm(&mut k);
    assert_eq!(
        (k.rax, k.rbx, k.rcx, k.rdx, k.r15),
        (0x4000_0005, 0x566e_6558, 0x6558_4d4d, 0x4d4d_566e, 99)
    );
    let back = EmuRegs::from_kvm(&k);
    assert_eq!(back.get(Gpr::Rbx), 0x566e_6558);
    assert_eq!(back.get(Gpr::R15), 99);
}

#[test]
fn from_pv_takes_mode_cr3_bases_and_vm_assist() {
    let mut pv = PvVcpuState {
        kernel_cr3: 0x7000,
        fs_base: 1,
        gs_base_kernel: 2,
        gs_base_user: 3,
        vm_assist: 1 << 4,
        ..Default::default()
    };
    pv.set_guest_mode(GuestMode::User);
    let s = EmuState::from_pv(&pv, 2);
    assert!(!s.kernel_mode);
    assert_eq!(
        (s.cr3, s.fs_base, s.gs_base_kernel, s.gs_base_user),
        (0x7000, 1, 2, 3)
    );
    assert_eq!((s.vcpu_id, s.io_cpl()), (2, 3));
    pv.set_guest_mode(GuestMode::Kernel);
    assert_eq!(EmuState::from_pv(&pv, 0).io_cpl(), 0);
}

proptest! {
    #[test]
    fn random_windows_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..=16),
        gprs in proptest::array::uniform16(any::<u64>()),
        kernel in any::<bool>(),
        iopl in 0u8..=3,
        cr4 in any::<u64>(),
    ) {
        let mut env = TestEnv::new();
        env.mem.push((0x1000, vec![0x55; 0x2000]));
        let mut s = EmuState {
            kernel_mode: kernel,
            iopl,
            cr4,
            iobmp: 0x1000,
            iobmp_limit: 0x10000,
            ..Default::default()
        };
        let r = EmuRegs { gpr: gprs, rip: RIP, rflags: 0x202 };
        for o in [
            emulate_gp(&bytes, &r, &mut s, &mut env),
            emulate_ud(&bytes, &r, &mut s, &mut env),
        ] {
            if let EmuOutcome::Done { rip_advance, .. } = o {
                prop_assert!(usize::from(rip_advance) <= bytes.len());
                // Only a long `rep ins/outs` stays on the instruction.
                prop_assert!(rip_advance > 0 || bytes.iter().any(|b| (0x6c..=0x6f).contains(b)));
            }
            if let EmuOutcome::FetchFault { offset } = o {
                prop_assert!(usize::from(offset) <= bytes.len());
            }
        }
    }

    #[test]
    fn privileged_ops_from_user_mode_never_succeed(
        tail in proptest::array::uniform14(any::<u8>()),
        op in prop::sample::select(vec![
            [0x0f, 0x20], [0x0f, 0x22], [0x0f, 0x30], [0x0f, 0x32], [0x0f, 0x06], [0x0f, 0x09],
        ]),
    ) {
        let mut env = TestEnv::new();
        let mut s = user();
        let mut b = [0u8; 16];
        b[..2].copy_from_slice(&op);
        b[2..].copy_from_slice(&tail);
        let o = emulate_gp(&b, &regs(), &mut s, &mut env);
        prop_assert!(!matches!(o, EmuOutcome::Done { .. }), "{:?}", o);
    }
}

#[test]
fn native_table_filters_host_leaves_and_replaces_kvm_signature_with_xen() {
    let mut host = host_table();
    // KVM's own signature leaf must not survive.
    host.entries.push((
        0x4000_0000,
        0,
        [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
    ));
    host.entries.push((0x4000_0001, 0, [0xffff, 0, 0, 0]));
    let t = pv_native_table(&host, &PvCpuidConfig::default());
    let get = |l, s| t.host_cpuid(l, s).unwrap();
    assert_eq!(get(0x4000_0000, 0)[1], 0x566e_6558);
    assert_eq!(get(0x4000_0001, 0)[0], (4 << 16) | 19);
    assert_eq!(
        t.entries.iter().filter(|e| e.0 == 0x4000_0000).count(),
        1,
        "one signature leaf"
    );
    assert_eq!(get(1, 0)[2] & leaf1_ecx::VMX, 0);
    assert_ne!(get(1, 0)[2] & leaf1_ecx::HYPERVISOR, 0);
    assert_eq!(get(1, 0)[2] & leaf1_ecx::OSXSAVE, 0);
    assert_eq!(get(0xd, 1)[0], 0xf);
    assert_eq!(get(5, 0), [0; 4]);
    // Round trip through KVM's entry format keeps indexed subleaves apart.
    let back = CpuidTable::from_kvm(&t.to_kvm());
    assert_eq!(back.host_cpuid(0xd, 1), t.host_cpuid(0xd, 1));
    assert_eq!(back.host_cpuid(0xd, 0), t.host_cpuid(0xd, 0));
    assert_eq!(
        back.host_cpuid(0x4000_0003, 0),
        t.host_cpuid(0x4000_0003, 0)
    );
    let kvm = t.to_kvm();
    let e = kvm
        .iter()
        .find(|e| e.function == 0xd && e.index == 1)
        .unwrap();
    assert_eq!(e.flags, kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
    let e = kvm.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(e.flags, 0);
}

#[test]
fn lock_prefixed_instructions_are_not_emulated() {
    let mut env = TestEnv::new();
    let mut s = EmuState {
        iopl: 3,
        ..Default::default()
    };
    for b in [
        &[0xf0, 0x0f, 0x20, 0xc0][..],
        &[0xf0, 0x0f, 0x32],
        &[0xf0, 0x0f, 0x06],
        &[0xf0, 0xe4, 0x60],
    ] {
        assert_eq!(
            gp(b, &regs(), &mut s, &mut env),
            EmuOutcome::NotEmulated,
            "{b:x?}"
        );
    }
}

#[test]
fn domu_ports_remember_cmos_index_and_cf8_only() {
    let mut p = DomUPorts::default();
    assert_eq!(p.read(0x60, 1), 0xff);
    assert_eq!(p.read(0x3f8, 4), 0xffff_ffff);
    p.write(0x70, 1, 0x8b);
    assert_eq!(p.read(0x70, 1), 0x8b);
    assert_eq!(p.read(0x70, 2), 0xff8b);
    p.write(0xcf8, 4, 0x8000_0810);
    assert_eq!(p.read(0xcf8, 4), 0x8000_0810);
    // Byte access to 0xcf8 is not CONFIG_ADDRESS.
    assert_eq!(p.read(0xcf8, 1), 0xff);
    p.write(0xcf8, 2, 0);
    assert_eq!(p.read(0xcf8, 4), 0x8000_0810);
    p.write(0x6f, 2, 0x1200);
    assert_eq!(p.cmos_idx, 0x12);
    assert_eq!(p.read(0x71, 1), 0xff);
}

// ---- string port I/O ----

fn io_state() -> EmuState {
    EmuState {
        iopl: 1,
        ..Default::default()
    }
}

#[test]
fn rep_outsb_sends_each_byte_and_updates_rsi_rcx() {
    let mut env = TestEnv::new();
    env.mem.push((0x2000, b"abc".to_vec()));
    let mut s = io_state();
    let r = with(
        with(with(regs(), Gpr::Rsi, 0x2000), Gpr::Rcx, 3),
        Gpr::Rdx,
        0x3f8,
    );
    // rep outsb = f3 6e
    let (w, len, _) = done(gp(&[0xf3, 0x6e], &r, &mut s, &mut env));
    assert_eq!(len, 2);
    assert_eq!((w.get(Gpr::Rsi), w.get(Gpr::Rcx)), (Some(0x2003), Some(0)));
    assert_eq!(
        env.outs,
        vec![(0x3f8, 1, 0x61), (0x3f8, 1, 0x62), (0x3f8, 1, 0x63)]
    );
}

#[test]
fn rep_insw_backwards_fills_memory_and_decrements_rdi() {
    let mut env = TestEnv::new();
    env.mem.push((0x3000, vec![0; 8]));
    let mut s = io_state();
    let mut r = with(
        with(with(regs(), Gpr::Rdi, 0x3004), Gpr::Rcx, 2),
        Gpr::Rdx,
        0x1f0,
    );
    r.rflags |= 1 << 10; // DF
                         // rep insw = f3 66 6d
    let (w, len, _) = done(gp(&[0xf3, 0x66, 0x6d], &r, &mut s, &mut env));
    assert_eq!(len, 3);
    assert_eq!((w.get(Gpr::Rdi), w.get(Gpr::Rcx)), (Some(0x3000), Some(0)));
    assert_eq!(env.mem[0].1, vec![0, 0, 0xd4, 0xc3, 0xd4, 0xc3, 0, 0]);
    assert_eq!(env.ins, vec![(0x1f0, 2), (0x1f0, 2)]);
}

#[test]
fn single_insd_and_zero_count_rep() {
    let mut env = TestEnv::new();
    env.mem.push((0x3000, vec![0; 4]));
    let mut s = io_state();
    let r = with(with(regs(), Gpr::Rdi, 0x3000), Gpr::Rdx, 0x60);
    // insd = 6d: no rep, rcx untouched
    let (w, len, _) = done(gp(&[0x6d], &r, &mut s, &mut env));
    assert_eq!(
        (len, w.get(Gpr::Rdi), w.get(Gpr::Rcx)),
        (1, Some(0x3004), None)
    );
    assert_eq!(env.mem[0].1, vec![0xd4, 0xc3, 0xb2, 0xa1]);
    // rep insb with rcx = 0: nothing happens, rip advances.
    let r = with(r, Gpr::Rcx, 0);
    let (w, len, _) = done(gp(&[0xf3, 0x6c], &r, &mut s, &mut env));
    assert_eq!((len, w.is_empty(), env.ins.len()), (2, true, 1));
}

#[test]
fn outs_honours_fs_override_and_32bit_addressing() {
    let mut env = TestEnv::new();
    env.mem.push((0x7000_0010, vec![0x5a]));
    env.mem.push((0x10, vec![0xa5]));
    let mut s = EmuState {
        fs_base: 0x7000_0000,
        ..io_state()
    };
    let r = with(with(regs(), Gpr::Rsi, 0x10), Gpr::Rdx, 0x80);
    // fs outsb = 64 6e
    done(gp(&[0x64, 0x6e], &r, &mut s, &mut env));
    // addr32 rep outsb with junk in the upper halves = 67 f3 6e
    let r = with(
        with(r, Gpr::Rsi, 0xdead_0000_0000_0010),
        Gpr::Rcx,
        0xffff_0000_0000_0001,
    );
    let (w, len, _) = done(gp(&[0x67, 0xf3, 0x6e], &r, &mut s, &mut env));
    assert_eq!(
        (len, w.get(Gpr::Rsi), w.get(Gpr::Rcx)),
        (3, Some(0x11), Some(0))
    );
    assert_eq!(env.outs, vec![(0x80, 1, 0x5a), (0x80, 1, 0xa5)]);
}

#[test]
fn string_io_page_fault_keeps_progress() {
    let mut env = TestEnv::new();
    env.mem.push((0x2000, vec![1, 2]));
    let mut s = io_state();
    let r = with(
        with(with(regs(), Gpr::Rsi, 0x2000), Gpr::Rcx, 4),
        Gpr::Rdx,
        0x80,
    );
    match gp(&[0xf3, 0x6e], &r, &mut s, &mut env) {
        EmuOutcome::PageFault {
            regs,
            addr,
            error_code,
        } => {
            assert_eq!(
                (regs.get(Gpr::Rsi), regs.get(Gpr::Rcx)),
                (Some(0x2002), Some(2))
            );
            assert_eq!((addr, error_code), (0x2002, 4));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(env.outs.len(), 2);
    // ins into read-only/unmapped memory: write fault.
    let r = with(with(regs(), Gpr::Rdi, 0x9000), Gpr::Rdx, 0x80);
    match gp(&[0x6c], &r, &mut s, &mut env) {
        EmuOutcome::PageFault {
            addr, error_code, ..
        } => assert_eq!((addr, error_code), (0x9000, 6)),
        o => panic!("{o:?}"),
    }
}

#[test]
fn long_rep_string_io_resumes_by_reexecution() {
    let mut env = TestEnv::new();
    env.mem.push((0x10000, vec![0; 0x1000]));
    let mut s = io_state();
    let r = with(
        with(with(regs(), Gpr::Rsi, 0x10000), Gpr::Rcx, 600),
        Gpr::Rdx,
        0x80,
    );
    let (w, len, _) = done(gp(&[0xf3, 0x6e], &r, &mut s, &mut env));
    assert_eq!(len, 0, "rip stays on the instruction");
    assert_eq!(w.get(Gpr::Rcx), Some(600 - MAX_REPS_PER_CALL));
    assert_eq!(w.get(Gpr::Rsi), Some(0x10000 + MAX_REPS_PER_CALL));
    let r = with(
        with(r, Gpr::Rsi, 0x10000 + MAX_REPS_PER_CALL),
        Gpr::Rcx,
        600 - MAX_REPS_PER_CALL,
    );
    let (w, len, _) = done(gp(&[0xf3, 0x6e], &r, &mut s, &mut env));
    assert_eq!((len, w.get(Gpr::Rcx)), (2, Some(0)));
    assert_eq!(env.outs.len(), 600);
}

#[test]
fn string_io_without_permission_or_at_non_canonical_address_is_gp0() {
    let mut env = TestEnv::new();
    let mut s = EmuState::default();
    assert_eq!(gp(&[0x6c], &regs(), &mut s, &mut env), GP0);
    let mut s = io_state();
    let r = with(regs(), Gpr::Rdi, 0x8000_0000_0000);
    assert_eq!(gp(&[0x6c], &r, &mut s, &mut env), GP0);
    assert!(env.ins.is_empty());
}

proptest! {
    #[test]
    fn rep_string_io_progress_matches_port_traffic(
        op in 0x6cu8..=0x6f,
        opsize in any::<bool>(),
        addr32 in any::<bool>(),
        df in any::<bool>(),
        rcx in 0u64..1500,
        index in 0x0f00u64..0x3100,
    ) {
        let mut env = TestEnv::new();
        env.mem.push((0x1000, vec![0x11; 0x2000]));
        let mut s = EmuState { iopl: 3, ..Default::default() };
        let mut bytes = Vec::new();
        if addr32 { bytes.push(0x67); }
        if opsize { bytes.push(0x66); }
        bytes.extend_from_slice(&[0xf3, op]);
        let mut r = with(with(with(with(regs(), Gpr::Rcx, rcx), Gpr::Rsi, index), Gpr::Rdi, index), Gpr::Rdx, 0x80);
        if df { r.rflags |= 1 << 10; }
        let o = emulate_gp(&bytes, &r, &mut s, &mut env);
        let traffic = (env.ins.len() + env.outs.len()) as u64;
        let left = match o {
            EmuOutcome::Done { regs, .. } | EmuOutcome::PageFault { regs, .. } => {
                regs.get(Gpr::Rcx).unwrap_or(rcx)
            }
            other => {
                prop_assert_eq!(other, GP0);
                rcx
            }
        };
        // Port reads happen before the memory write, so a faulting ins may read one more.
        let is_in = op < 0x6e;
        let faulted = matches!(o, EmuOutcome::PageFault { .. });
        let extra = u64::from(is_in && faulted);
        prop_assert_eq!(rcx - left + extra, traffic);
        prop_assert!(rcx - left <= MAX_REPS_PER_CALL);
    }
}

fn host_with_max(max: u32, leaf16: Option<[u32; 4]>) -> CpuidTable {
    let mut t = host_table();
    t.entries[0].2[0] = max;
    if let Some(r) = leaf16 {
        t.entries.push((0x16, 0, r));
    }
    t
}

#[test]
fn frequency_leaf_is_synthesized_only_when_enabled_and_the_host_leaves_it_empty() {
    let on = PvCpuidConfig {
        freq_leaf_mhz: 2000,
        ..PvCpuidConfig::default()
    };
    let off = PvCpuidConfig::default();
    let ctx = CpuidContext::default();
    // Nested KVM reports leaf 0x16 as zeros (or not at all): kxen fills base = max MHz.
    for host in [host_with_max(0x20, Some([0; 4])), host_with_max(0x20, None)] {
        assert_eq!(pv_cpuid(&host, &on, ctx, 0x16, 0), [2000, 2000, 0, 0]);
        assert_eq!(pv_cpuid(&host, &off, ctx, 0x16, 0), [0; 4]);
        let t = pv_native_table(&host, &on);
        assert_eq!(t.host_cpuid(0x16, 0), Some([2000, 2000, 0, 0]));
        let t = pv_native_table(&host, &off);
        assert_ne!(t.host_cpuid(0x16, 0), Some([2000, 2000, 0, 0]));
    }
    // A host that enumerates its frequencies keeps its own values.
    let real = host_with_max(0x20, Some([2100, 3900, 100, 0]));
    assert_eq!(pv_cpuid(&real, &on, ctx, 0x16, 0), [2100, 3900, 100, 0]);
    // Below the host's max basic leaf the leaf does not exist: zeros, not invented.
    let old = host_with_max(0xd, None);
    assert_eq!(pv_cpuid(&old, &on, ctx, 0x16, 0), [0; 4]);
    assert_eq!(pv_native_table(&old, &on).host_cpuid(0x16, 0), None);
}
