//! Writable page tables (`VMASST_TYPE_writable_pagetables`): a guest kernel write to one
//! of its validated L1 tables (mapped read-only, so it faults) is emulated: the faulting
//! instruction is decoded (iced-x86), the stored value merged into the entry, validated and
//! adjusted by the PTE engine, installed, and the guest resumes after the instruction.
//! A value the engine refuses is not installed and the #PF is bounced to the guest, as
//! Xen's ptwr emulation does (`X86EMUL_UNHANDLEABLE`).
// xen: arch/x86/pv/ro-page-fault.c, ptwr_do_page_fault / ptwr_emulated_update /
// ptwr_emulated_cmpxchg (partial writes merged with the current entry).
//
// Handled: MOV to memory from a register or immediate (8..64-bit), XCHG with memory,
// CMPXCHG (the accumulator and ZF/flags updated as the CPU would), BTS/BTR/BTC and
// AND/OR/XOR into the entry (Linux clears _PAGE_ACCESSED with `lock btr`). Anything else is
// bounced as the #PF it was.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use xen_abi::mmu::{pte_mfn, _PAGE_PRESENT, _PAGE_RW, VMASST_TYPE_WRITABLE_PAGETABLES};
use xen_abi::pte::Level;
use xen_abi::pv_vcpu::GuestMode;

use crate::domain::DomainShared;
use crate::memory::{GuestVirt, PAGE_SIZE};
use crate::trap::{pf_error, VEC_PF};
use crate::vcpu::{GuestRegs, Vcpu};

/// The 64-bit register of `GuestRegs` behind an iced register, and its width in bytes
/// (`None` for AH..BH and non-GPRs).
fn gpr(regs: &mut GuestRegs, r: Register) -> Option<(&mut u64, usize)> {
    if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) {
        return None;
    }
    let size = r.size();
    let slot = match r.full_register() {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return None,
    };
    Some((slot, size))
}

fn mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    }
}

/// Write the low `width` bytes of a register as the CPU does (32-bit writes zero-extend).
fn set_gpr(slot: &mut u64, width: usize, v: u64) {
    *slot = match width {
        8 => v,
        4 => v & 0xffff_ffff,
        w => (*slot & !mask(w)) | (v & mask(w)),
    };
}

/// Flags of `a - b` at `width` bytes (CF, PF, AF, ZF, SF, OF), as CMP/CMPXCHG set them.
fn sub_flags(a: u64, b: u64, width: usize) -> u64 {
    let m = mask(width);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b) & m;
    let sign = 1u64 << (width * 8 - 1);
    let mut f = 0;
    if a < b {
        f |= 1; // CF
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= 1 << 2; // PF
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= 1 << 4; // AF
    }
    if r == 0 {
        f |= 1 << 6; // ZF
    }
    if r & sign != 0 {
        f |= 1 << 7; // SF
    }
    if (a ^ b) & (a ^ r) & sign != 0 {
        f |= 1 << 11; // OF
    }
    f
}

const ARITH_FLAGS: u64 = 1 | 1 << 2 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 11;

/// Try to emulate a write to a validated L1 table for a #PF exit. Returns true when the
/// write was handled (installed, rip advanced): the guest resumes with `regs`. False means
/// "not a ptwr case or refused": deliver the #PF as usual.
pub fn emulate(
    vcpu: &mut Vcpu,
    domain: &DomainShared,
    vector: u8,
    error_code: Option<u64>,
    cr2: u64,
    regs: &mut GuestRegs,
) -> bool {
    let ec = error_code.unwrap_or(0);
    if vector != VEC_PF
        || ec & (pf_error::PRESENT | pf_error::WRITE) != (pf_error::PRESENT | pf_error::WRITE)
        || ec & (pf_error::RSVD | pf_error::FETCH) != 0
        || vcpu.pv().guest_mode() != GuestMode::Kernel
        || !vcpu.pv().vm_assist(VMASST_TYPE_WRITABLE_PAGETABLES)
    {
        return false;
    }
    let ram = vcpu.ram().clone();
    let cr3 = vcpu.cr3() & !0xfff;
    let handled_flush = {
        let mut mm = domain.mm.lock().unwrap_or_else(|p| p.into_inner());
        // The faulting address must be mapped read-only onto a validated L1 table.
        let Some((map_l1, map_slot)) = mm.l1_slot_for(&ram, cr3, cr2) else {
            return false;
        };
        let Ok(pte) = mm.read_entry(&ram, map_l1, map_slot) else {
            return false;
        };
        let target = pte_mfn(pte);
        if pte & _PAGE_PRESENT == 0
            || pte & _PAGE_RW != 0
            || !mm.is_validated_table(target, Level::L1)
        {
            return false;
        }
        // Decode the instruction (up to 15 bytes, fewer at the end of a mapped range).
        let guest = GuestVirt::new(&ram, cr3);
        let mut insn = [0u8; 15];
        let mut len = insn.len();
        while len > 0 && guest.copy_from_guest(regs.rip, &mut insn[..len]).is_err() {
            len -= 1;
        }
        let mut dec = Decoder::with_ip(64, &insn[..len], regs.rip, DecoderOptions::NONE);
        let ins = dec.decode();
        if ins.is_invalid() {
            return false;
        }
        let width = ins.memory_size().size();
        let off = cr2 & (PAGE_SIZE - 1);
        let (slot, sub) = ((off / 8) as usize, (off % 8) as usize);
        if !(1..=8).contains(&width) || sub + width > 8 {
            return false;
        }
        let Ok(cur) = mm.read_entry(&ram, target, slot) else {
            return false;
        };
        let shift = sub * 8;
        let old_part = (cur >> shift) & mask(width);
        let mem_first = ins.op_kind(0) == OpKind::Memory;
        let other = if mem_first { 1 } else { 0 };
        // The value to store, and what to do after a successful store.
        let (value, kind) = match ins.mnemonic() {
            Mnemonic::Mov if mem_first => match ins.op_kind(1) {
                OpKind::Register => match gpr(regs, ins.op_register(1)) {
                    Some((v, _)) => (*v, Kind::Plain),
                    None => return false,
                },
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate32to64
                | OpKind::Immediate8to64 => (ins.immediate(1), Kind::Plain),
                _ => return false,
            },
            Mnemonic::Xchg if ins.op_kind(other) == OpKind::Register => {
                match gpr(regs, ins.op_register(other)) {
                    Some((v, _)) => (*v, Kind::Xchg(ins.op_register(other))),
                    None => return false,
                }
            }
            Mnemonic::Cmpxchg if mem_first && ins.op_kind(1) == OpKind::Register => {
                let acc = regs.rax & mask(width);
                if acc != old_part {
                    // Compare failed: no store; the accumulator gets the current value.
                    set_gpr(&mut regs.rax, width, old_part);
                    regs.rflags = (regs.rflags & !ARITH_FLAGS) | sub_flags(acc, old_part, width);
                    regs.rip = regs.rip.wrapping_add(ins.len() as u64);
                    return true;
                }
                match gpr(regs, ins.op_register(1)) {
                    Some((v, _)) => (*v, Kind::Cmpxchg(acc)),
                    None => return false,
                }
            }
            // Read-modify-write forms (Linux's `lock btr` on _PAGE_ACCESSED, `lock and`/`or`).
            Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if mem_first => {
                let bit = match ins.op_kind(1) {
                    OpKind::Immediate8 => ins.immediate(1) % (width as u64 * 8),
                    OpKind::Register => match gpr(regs, ins.op_register(1)) {
                        // A register offset may leave the operand: not handled.
                        Some((v, w)) if (*v & mask(w)) < width as u64 * 8 => *v & mask(w),
                        _ => return false,
                    },
                    _ => return false,
                };
                let was = (old_part >> bit) & 1;
                let new = match ins.mnemonic() {
                    Mnemonic::Bts => old_part | (1 << bit),
                    Mnemonic::Btr => old_part & !(1 << bit),
                    _ => old_part ^ (1 << bit),
                };
                (new, Kind::Carry(was))
            }
            Mnemonic::And | Mnemonic::Or | Mnemonic::Xor if mem_first => {
                let src = match ins.op_kind(1) {
                    OpKind::Register => match gpr(regs, ins.op_register(1)) {
                        Some((v, _)) => *v,
                        None => return false,
                    },
                    OpKind::Immediate8
                    | OpKind::Immediate16
                    | OpKind::Immediate32
                    | OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64 => ins.immediate(1),
                    _ => return false,
                };
                let r = match ins.mnemonic() {
                    Mnemonic::And => old_part & src,
                    Mnemonic::Or => old_part | src,
                    _ => old_part ^ src,
                } & mask(width);
                (r, Kind::Logic(r))
            }
            _ => return false,
        };
        let merged = (cur & !(mask(width) << shift)) | ((value & mask(width)) << shift);
        match mm.update_entry(&ram, target, Level::L1, slot, merged, false) {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("ptwr at {:#x}: {merged:#x} refused: {e}", regs.rip);
                return false;
            }
        }
        match kind {
            Kind::Plain => {}
            Kind::Xchg(r) => {
                if let Some((v, w)) = gpr(regs, r) {
                    set_gpr(v, w, old_part);
                }
            }
            Kind::Cmpxchg(acc) => {
                regs.rflags = (regs.rflags & !ARITH_FLAGS) | sub_flags(acc, old_part, width);
            }
            Kind::Carry(cf) => regs.rflags = (regs.rflags & !1) | cf,
            Kind::Logic(r) => regs.rflags = (regs.rflags & !ARITH_FLAGS) | logic_flags(r, width),
        }
        regs.rip = regs.rip.wrapping_add(ins.len() as u64);
        (true, mm.take_flush(), mm.take_replay())
    };
    let (handled, flush, written) = handled_flush;
    vcpu.sync_pte_writes(written);
    if flush {
        let c = vcpu.pv().current_cr3();
        vcpu.flush_tlb(c);
    }
    handled
}

enum Kind {
    Plain,
    Xchg(Register),
    Cmpxchg(u64),
    /// BTS/BTR/BTC: CF = the bit's old value.
    Carry(u64),
    /// AND/OR/XOR: flags of the result (CF = OF = 0).
    Logic(u64),
}

/// Flags of a logic result at `width` bytes: PF, ZF, SF; CF, OF (and AF) clear.
fn logic_flags(r: u64, width: usize) -> u64 {
    let mut f = 0;
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= 1 << 2;
    }
    if r & mask(width) == 0 {
        f |= 1 << 6;
    }
    if r & (1u64 << (width * 8 - 1)) != 0 {
        f |= 1 << 7;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_writes_follow_the_cpu() {
        let mut r = GuestRegs {
            rax: 0x1111_2222_3333_4444,
            ..Default::default()
        };
        let (v, w) = gpr(&mut r, Register::EAX).unwrap();
        set_gpr(v, w, 0xdead_beef_0000_0001);
        assert_eq!(r.rax, 1);
        r.rbx = 0xffff;
        let (v, w) = gpr(&mut r, Register::BL).unwrap();
        set_gpr(v, w, 0x12);
        assert_eq!(r.rbx, 0xff12);
        assert!(gpr(&mut r, Register::AH).is_none());
        assert!(gpr(&mut r, Register::XMM0).is_none());
    }

    #[test]
    fn cmp_flags_match_the_cpu() {
        assert_eq!(sub_flags(5, 5, 8) & (1 << 6), 1 << 6);
        assert_eq!(sub_flags(4, 5, 8) & 1, 1);
        assert_eq!(sub_flags(0x80, 1, 1) & (1 << 11), 1 << 11);
        assert_eq!(sub_flags(6, 5, 4) & (1 | 1 << 6), 0);
    }
}
