//! privop: privileged operations a PV kernel executes at CPL3 and Xen emulates
//! (emul-priv-op.c on #GP(0), emul-inv-op.c for the forced-emulation prefix).

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::arch::asm;
use kit::abi::*;
use kit::traps::{self, ANY_RIP};

xen_notes!(features = "writable_page_tables");

const MSR_GS_BASE: u32 = 0xc000_0101;

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: at CPL3 rdmsr traps to kxen, which emulates it or bounces #GP to the kit.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as for rdmsr.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nostack))
    };
}

/// CPUID through Xen's forced-emulation prefix: `ud2; .ascii "xen"; cpuid`.
fn xen_cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the prefix raises #UD, which kxen recognises and emulates; rbx is saved
    // around it because the compiler reserves it.
    unsafe {
        asm!("xchg {b:r}, %rbx", "ud2", ".ascii \"xen\"", "cpuid", "xchg {b:r}, %rbx",
             b = out(reg) b, inout("eax") leaf => a, inout("ecx") 0u32 => c, out("edx") d,
             options(att_syntax));
    }
    [a, b, c, d]
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: at CPL3 `mov %cr3` raises #GP(0), which kxen emulates.
    unsafe { asm!("mov %cr3, %rax", out("rax") v, options(att_syntax, nomem, nostack)) };
    v
}

/// `mov %rax, %cr3` (3 bytes).
fn write_cr3(v: u64) {
    // SAFETY: at CPL3 this raises #GP(0): kxen switches to `v` if it names a valid L4
    // (the current one, here) or bounces #GP(0) to the kit, which skips the 3 bytes.
    unsafe { asm!("mov %rax, %cr3", in("rax") v, options(att_syntax, nostack)) };
}

/// A writable page full of invalid entries: it can never become an L4.
#[repr(C, align(4096))]
struct Page([u64; 512]);
static mut NOT_L4: Page = Page([0; 512]);

fn kmain(_si: &'static StartInfo) {
    // The kit has installed its trap table, so unknown MSRs now raise #GP (Xen only fakes
    // reads as 0 before a #GP handler exists).
    wrmsr(MSR_GS_BASE, 0x1234_5000);
    check_eq!("wrmsr_gs_base_read_back", rdmsr(MSR_GS_BASE), 0x1234_5000u64);

    let sig = xen_cpuid(0x4000_0000);
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&sig[1].to_le_bytes());
    name[4..8].copy_from_slice(&sig[2].to_le_bytes());
    name[8..12].copy_from_slice(&sig[3].to_le_bytes());
    check!("forced_cpuid_signature", &name == b"XenVMMXenVMM", "{:?}", name);
    check!("forced_cpuid_max_leaf", sig[0] >= 0x4000_0002, "{:#x}", sig[0]);
    // A plain cpuid does not fault under KVM: kxen loads the same PV view into the vCPU.
    let (b, c, d): (u32, u32, u32);
    // SAFETY: cpuid has no memory effects; rbx is saved around it (reserved by the compiler).
    unsafe {
        asm!("xchg {b:r}, %rbx", "cpuid", "xchg {b:r}, %rbx",
             b = out(reg) b, inout("eax") 0x4000_0000u32 => _, inout("ecx") 0u32 => c,
             out("edx") d, options(att_syntax));
    }
    let mut plain = [0u8; 12];
    plain[0..4].copy_from_slice(&b.to_le_bytes());
    plain[4..8].copy_from_slice(&c.to_le_bytes());
    plain[8..12].copy_from_slice(&d.to_le_bytes());
    check!("plain_cpuid_signature", &plain == b"XenVMMXenVMM", "{:?}", plain);
    let ver = xen_cpuid(0x4000_0001);
    value!("xen_cpuid_version", "{:#x}", ver[0]);
    check_eq!("forced_cpuid_version", ver[0], (4u32 << 16) | 19);
    let hc = xen_cpuid(0x4000_0002);
    check_eq!("forced_cpuid_hypercall_pages", hc[0], 1u32);
    check_eq!("forced_cpuid_hypercall_msr", hc[1], 0x4000_0000u32);

    // An MSR Xen does not emulate: #GP(0) bounced to the guest (2-byte rdmsr skipped).
    traps::expect(13, ANY_RIP, 2);
    let _ = rdmsr(0x1a0_0000);
    let f = traps::take_last();
    check!("unknown_msr_gp", f.is_some_and(|f| f.vector == 13 && f.error_code == 0), "{:?}", f);

    // cli in guest kernel mode without IOPL: #GP(0) bounced (Xen: iopl_ok fails).
    traps::expect(13, ANY_RIP, 1);
    // SAFETY: cli faults at CPL3; the kit's handler skips it.
    unsafe { asm!("cli", options(nomem, nostack)) };
    let f = traps::take_last();
    check!("cli_without_iopl_gp", f.is_some_and(|f| f.vector == 13), "{:?}", f);

    // mov to %cr3: like MMUEXT_NEW_BASEPTR (xen: new_guest_cr3). Reloading the current
    // base succeeds and execution continues after the instruction.
    let cr3 = read_cr3();
    value!("cr3", "{:#x}", cr3);
    traps::expect(13, ANY_RIP, 3);
    write_cr3(cr3);
    let f = traps::take_last();
    check!("mov_cr3_current_ok", f.is_none() && read_cr3() == cr3, "{:?}", f);
    // A frame that is not a page table: #GP(0), rip left on the instruction.
    // SAFETY: single-threaded guest; the page is only touched here.
    let page = unsafe { &mut *(&raw mut NOT_L4) };
    page.0.fill(!0);
    let frame = kit::events::pfn_of(page as *const Page as u64);
    traps::expect(13, ANY_RIP, 3);
    write_cr3(frame << 12);
    let f = traps::take_last();
    check!(
        "mov_cr3_non_l4_gp",
        f.is_some_and(|f| f.vector == 13 && f.error_code == 0) && read_cr3() == cr3,
        "{:?}",
        f
    );
}
