//! traps: exceptions bounced to the guest's trap table (set_trap_table) with Xen's frame,
//! and the return through HYPERVISOR_iret.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::arch::asm;
use kit::abi::*;
use kit::traps::{self, TrapFrame, ANY_RIP};

xen_notes!(features = "writable_page_tables");

fn kmain(_si: &'static StartInfo) {
    let rc = traps::install();
    if !check_eq!("set_trap_table", rc, 0) {
        return;
    }

    // #UD (fault: rip = the ud2; resume 2 bytes later).
    traps::expect(6, ANY_RIP, 2);
    let (rip, sp): (u64, u64);
    // SAFETY: ud2 traps to the kit's #UD stub, which skips it; all registers are restored.
    unsafe {
        asm!("lea 2f(%rip), {r}", "mov %rsp, {s}", "2: ud2",
             r = out(reg) rip, s = out(reg) sp, options(att_syntax));
    }
    if let Some(f) = frame("ud_taken") {
        check_eq!("ud_vector", f.vector, 6u64);
        check_eq!("ud_rip", f.rip, rip);
        check_eq!("ud_rsp", f.rsp, sp);
        frame_values("ud", &f);
        // Xen: RPL of cs cleared for a frame from guest kernel mode; bits 32-39 = saved
        // upcall mask (events are masked in kit guests); rflags.IF = !mask.
        check_eq!(
            "ud_cs_selector",
            f.cs & 0xfffc,
            u64::from(FLAT_KERNEL_CS) & 0xfffc
        );
        check_eq!("ud_cs_saved_upcall_mask", (f.cs >> 32) & 0xff, 1u64);
        check_eq!("ud_rflags_if_clear", f.rflags & 0x200, 0u64);
    }

    // Registers survive a trap round trip (iret restores rcx/r11 from the frame).
    traps::expect(6, ANY_RIP, 2);
    let (a, c, d, r11): (u64, u64, u64, u64);
    // SAFETY: as above; the values are set right before the trap and read right after.
    unsafe {
        asm!("mov $0x1111, %rax", "mov $0x2222, %rcx", "mov $0x3333, %rdx",
             "mov $0x4444, %r11", "ud2",
             out("rax") a, out("rcx") c, out("rdx") d, out("r11") r11, options(att_syntax));
    }
    let _ = frame("ud_regs_taken");
    check!(
        "registers_preserved_across_trap",
        (a, c, d, r11) == (0x1111, 0x2222, 0x3333, 0x4444),
        "{:#x?}",
        (a, c, d, r11)
    );

    // #BP (trap: rip after the int3).
    traps::expect(3, ANY_RIP, 0);
    let rip: u64;
    // SAFETY: int3 traps to the kit's #BP stub, which resumes after it.
    unsafe { asm!("lea 2f(%rip), {r}", "int3", "2:", r = out(reg) rip, options(att_syntax)) };
    if let Some(f) = frame("bp_taken") {
        check_eq!("bp_rip_after_int3", f.rip, rip);
    }

    // #GP(0) from a non-canonical access.
    traps::expect(13, ANY_RIP, 3);
    let rip: u64;
    // SAFETY: the load faults (#GP) and the handler skips the 3-byte instruction.
    unsafe {
        asm!("movabs $0x8000000000000000, %rax", "lea 2f(%rip), {r}", "2: mov (%rax), %rax",
             r = out(reg) rip, out("rax") _, options(att_syntax));
    }
    if let Some(f) = frame("gp_taken") {
        check_eq!("gp_rip", f.rip, rip);
        check_eq!("gp_error_code", f.error_code, 0u64);
    }

    // #PF from a read of an unmapped address.
    traps::expect(14, ANY_RIP, 3);
    let rip: u64;
    // SAFETY: the load faults (#PF) and the handler skips the 3-byte instruction.
    unsafe {
        asm!("movabs $0x1000000000, %rax", "lea 2f(%rip), {r}", "2: mov (%rax), %rax",
             r = out(reg) rip, out("rax") _, options(att_syntax));
    }
    if let Some(f) = frame("pf_taken") {
        check_eq!("pf_rip", f.rip, rip);
        value!("pf_error_code", "{:#x}", f.error_code);
        check_eq!("pf_error_not_present_read", f.error_code & 3, 0u64);
    }

    // #DE from a division by zero.
    traps::expect(0, ANY_RIP, 3);
    let rip: u64;
    // SAFETY: div by zero faults (#DE) and the handler skips the 3-byte `div %rcx`.
    unsafe {
        asm!("xor %ecx, %ecx", "mov $1, %eax", "xor %edx, %edx", "lea 2f(%rip), {r}",
             "2: div %rcx", r = out(reg) rip, out("rax") _, out("rcx") _, out("rdx") _,
             options(att_syntax));
    }
    if let Some(f) = frame("de_taken") {
        check_eq!("de_rip", f.rip, rip);
    }

    check_eq!("traps_taken", traps::hits(), 6u32);
}

fn frame(name: &str) -> Option<TrapFrame> {
    let f = traps::take_last();
    check!(name, f.is_some(), "expected trap did not arrive");
    f
}

fn frame_values(name: &str, f: &TrapFrame) {
    value!(
        name,
        "rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x} err={:#x}",
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        f.error_code
    );
}
