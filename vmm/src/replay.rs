//! Ring-0 replay programs: the code kxen generates to make KVM's shadow MMU see the
//! page-table entries the VMM wrote in guest RAM (docs/kvm-quirks.md).
//!
//! KVM on these hosts does not notice a write the VMM makes to a guest page table it
//! shadows. kxen therefore rewrites every such entry from ring 0, through the
//! supervisor-only alias of guest RAM (L4 slot 259): `lock orq $0` stores the entry's
//! current value back, a write KVM traps and applies to its shadow. On this PVM host every
//! ring-0 instruction is emulated by KVM one at a time (a `kvm_emulate_insn` each), so a
//! program is straight-line code with **one instruction per entry** (`lock orq $0,
//! disp32(%rdi)`, `rdi` = the alias base), not a loop over a list (five emulated
//! instructions per entry).
//!
//! A program ends one of two ways ([`End`]):
//! * [`End::Exit`]: reload CR3, then `out %al, $PORT_TLB_FLUSH` — a separate `KVM_RUN`
//!   that returns to the VMM (chunks before the last; ring-0 callers that are not a guest).
//! * [`End::Return`]: optionally reload CR3, then `pop %rdi; iretq` — the guest's frame
//!   (saved `rdi`, then rip, cs, rflags, rsp, ss) is on the stack, and the program returns
//!   straight to the guest: the replay costs no exit of its own.

use crate::ring0::{GUEST_ALIAS_BASE, PORT_TLB_FLUSH};

/// How a replay program ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Reload CR3 and exit to the VMM with `out %al, $PORT_TLB_FLUSH`.
    Exit,
    /// Return to the guest with `pop %rdi; iretq`, reloading CR3 first if `reload_cr3`.
    Return {
        /// Flush the TLB (the guest asked for it, or its base pointer changed).
        reload_cr3: bool,
    },
}

/// Bytes of the longest entry (`movabs $va,%rdi; lock orq $0,(%rdi)`).
pub const MAX_ENTRY_BYTES: usize = 15;
/// Bytes of the longest epilogue.
pub const MAX_END_BYTES: usize = 16;
/// Words of the guest frame an [`End::Return`] program pops: rdi, rip, cs, rflags, rsp, ss.
pub const FRAME_WORDS: usize = 6;

/// Largest guest-physical address reachable as `disp32(%rdi)` from the alias base.
const DISP32_LIMIT: u64 = 1 << 31;

/// The code that rewrites the entries at guest-physical addresses `gpas` (8-byte aligned,
/// sorted and deduplicated, inside guest RAM: the caller checks) as [`writes`] says, then
/// ends as `end` says. The register `rdi` must
/// hold [`GUEST_ALIAS_BASE`] on entry; it is clobbered (restored from the frame by
/// [`End::Return`]).
pub fn program(gpas: &[u64], end: End) -> Vec<u8> {
    let mut code = Vec::with_capacity(gpas.len() * 8 + MAX_END_BYTES);
    let mut far = Vec::new();
    for w in writes(gpas) {
        let (gpa, byte) = match w {
            Write::Entry(g) => (g, false),
            Write::WholePage(g) => (g + 1, true),
        };
        if gpa >= DISP32_LIMIT {
            far.push((gpa, byte));
            continue;
        }
        // Entries the 32-bit displacement reaches first, with rdi at the alias base:
        // lock orq $0, disp32(%rdi)  |  lock orb $0, disp32(%rdi)
        code.extend_from_slice(if byte {
            &[0xf0, 0x80, 0x8f]
        } else {
            &[0xf0, 0x48, 0x83, 0x8f]
        });
        code.extend_from_slice(&(gpa as u32).to_le_bytes());
        code.push(0x00);
    }
    // ...then the others, each through its own absolute address in rdi.
    for (gpa, byte) in far {
        // movabs $alias, %rdi ; lock orq $0, (%rdi)  |  lock orb $0, (%rdi)
        code.extend_from_slice(&[0x48, 0xbf]);
        code.extend_from_slice(&GUEST_ALIAS_BASE.wrapping_add(gpa).to_le_bytes());
        code.extend_from_slice(if byte {
            &[0xf0, 0x80, 0x0f, 0x00]
        } else {
            &[0xf0, 0x48, 0x83, 0x0f, 0x00]
        });
    }
    // mov %cr3,%rdi ; mov %rdi,%cr3
    const RELOAD: [u8; 6] = [0x0f, 0x20, 0xdf, 0x0f, 0x22, 0xdf];
    match end {
        End::Exit => {
            code.extend_from_slice(&RELOAD);
            // out %al,$PORT_TLB_FLUSH ; ud2
            code.extend_from_slice(&[0xe6, PORT_TLB_FLUSH as u8, 0x0f, 0x0b]);
        }
        End::Return { reload_cr3 } => {
            if reload_cr3 {
                code.extend_from_slice(&RELOAD);
            }
            // pop %rdi ; iretq ; ud2
            code.extend_from_slice(&[0x5f, 0x48, 0xcf, 0x0f, 0x0b]);
        }
    }
    code
}

/// Entries of one page from which a program drops KVM's whole shadow of that page instead of
/// rewriting each entry.
pub const WHOLE_PAGE_FROM: usize = 8;

/// One write a program makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Rewrite the 8-byte entry at this guest-physical address (KVM updates or drops the
    /// one shadow entry).
    Entry(u64),
    /// Rewrite one byte in the middle of the entry at this address: a write KVM treats as
    /// "misaligned" for a page table it shadows and answers by dropping its whole shadow of
    /// the page, to rebuild it from guest memory (the VMM's entries included) when next used.
    /// One emulated instruction instead of one per entry, for a table rewritten wholesale
    /// (a newly validated L1 has all 512 entries written).
    WholePage(u64),
}

/// The writes for `gpas` (sorted, deduplicated): one per entry, or one per page that has at
/// least [`WHOLE_PAGE_FROM`] entries in the list.
pub fn writes(gpas: &[u64]) -> impl Iterator<Item = Write> + '_ {
    gpas.chunk_by(|a, b| a >> 12 == b >> 12).flat_map(|page| {
        let whole = page.len() >= WHOLE_PAGE_FROM;
        let each = if whole { &page[..1] } else { page };
        each.iter().map(move |&g| {
            if whole {
                Write::WholePage(g)
            } else {
                Write::Entry(g)
            }
        })
    })
}

/// Most entries one program of `code_bytes` bytes can hold, whatever their addresses.
pub const fn capacity(code_bytes: usize) -> usize {
    code_bytes.saturating_sub(MAX_END_BYTES) / MAX_ENTRY_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    /// One decoded instruction, reduced to what these programs vary in.
    #[derive(Debug, PartialEq, Eq)]
    enum Op {
        /// `lock or qword [base + disp], 0`.
        LockOrZero {
            base: Register,
            disp: u64,
        },
        /// `mov rdi, imm64`.
        MovRdiImm(u64),
        Other(Mnemonic),
    }

    fn decode(code: &[u8]) -> Vec<Op> {
        let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let mut out = Vec::new();
        let mut ins = Instruction::default();
        while d.can_decode() {
            d.decode_out(&mut ins);
            assert!(!ins.is_invalid(), "invalid instruction in {code:02x?}");
            out.push(match ins.mnemonic() {
                Mnemonic::Or => {
                    assert!(ins.has_lock_prefix());
                    assert_eq!(ins.op0_kind(), OpKind::Memory);
                    assert_eq!(ins.immediate(1), 0);
                    assert_eq!(ins.memory_size(), iced_x86::MemorySize::UInt64);
                    Op::LockOrZero {
                        base: ins.memory_base(),
                        disp: ins.memory_displacement64(),
                    }
                }
                Mnemonic::Mov
                    if ins.op0_register() == Register::RDI
                        && ins.op1_kind() == OpKind::Immediate64 =>
                {
                    Op::MovRdiImm(ins.immediate64())
                }
                m => Op::Other(m),
            });
        }
        out
    }

    fn or_rdi(disp: u64) -> Op {
        Op::LockOrZero {
            base: Register::RDI,
            disp,
        }
    }

    #[test]
    fn return_program_rewrites_each_entry_with_one_instruction_then_irets() {
        let code = program(&[0x1000, 0x7fff_fff8], End::Return { reload_cr3: false });
        assert_eq!(
            decode(&code),
            [
                or_rdi(0x1000),
                or_rdi(0x7fff_fff8),
                Op::Other(Mnemonic::Pop),
                Op::Other(Mnemonic::Iretq),
                Op::Other(Mnemonic::Ud2),
            ]
        );
    }

    #[test]
    fn reload_and_exit_epilogues() {
        let r = program(&[], End::Return { reload_cr3: true });
        assert_eq!(
            decode(&r),
            [
                Op::Other(Mnemonic::Mov),
                Op::Other(Mnemonic::Mov),
                Op::Other(Mnemonic::Pop),
                Op::Other(Mnemonic::Iretq),
                Op::Other(Mnemonic::Ud2),
            ]
        );
        // The two movs are CR3 -> rdi -> CR3.
        assert_eq!(&r[..6], &[0x0f, 0x20, 0xdf, 0x0f, 0x22, 0xdf]);
        let e = program(&[8], End::Exit);
        assert_eq!(
            decode(&e),
            [
                or_rdi(8),
                Op::Other(Mnemonic::Mov),
                Op::Other(Mnemonic::Mov),
                Op::Other(Mnemonic::Out),
                Op::Other(Mnemonic::Ud2),
            ]
        );
        assert!(e.ends_with(&[0xe6, PORT_TLB_FLUSH as u8, 0x0f, 0x0b]));
    }

    #[test]
    fn entries_beyond_two_gib_use_their_absolute_alias_address() {
        let gpa = 0x1_2345_6788u64;
        let code = program(&[gpa, 0x10], End::Exit);
        let ops = decode(&code);
        assert_eq!(ops[0], or_rdi(0x10));
        assert_eq!(ops[1], Op::MovRdiImm(GUEST_ALIAS_BASE + gpa));
        assert_eq!(ops[2], or_rdi(0));
    }

    #[test]
    fn a_page_with_many_entries_gets_one_misaligned_byte_write() {
        let mut gpas: Vec<u64> = (0..512u64).map(|i| 0x5000 + i * 8).collect();
        gpas.extend([0x9000, 0x9008, 0x1_0000_0000]);
        let w: Vec<Write> = writes(&gpas).collect();
        assert_eq!(
            w,
            [
                Write::WholePage(0x5000),
                Write::Entry(0x9000),
                Write::Entry(0x9008),
                Write::Entry(0x1_0000_0000)
            ]
        );
        let seven: Vec<u64> = (0..7u64).map(|i| 0x5000 + i * 8).collect();
        assert_eq!(writes(&seven).count(), 7, "below the threshold: per entry");
        let code = program(&gpas, End::Return { reload_cr3: false });
        let mut d = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE);
        let first = d.decode();
        assert!(first.has_lock_prefix());
        assert_eq!(first.mnemonic(), Mnemonic::Or);
        assert_eq!(first.memory_size(), iced_x86::MemorySize::UInt8);
        assert_eq!(first.memory_base(), Register::RDI);
        assert_eq!(
            first.memory_displacement64(),
            0x5001,
            "inside the first entry"
        );
        let ops = decode(&code[first.len()..]);
        assert_eq!(ops[0], or_rdi(0x9000));
        assert_eq!(ops[1], or_rdi(0x9008));
        assert_eq!(ops[2], Op::MovRdiImm(GUEST_ALIAS_BASE + 0x1_0000_0000));
        assert_eq!(ops[3], or_rdi(0));
    }

    #[test]
    fn capacity_bounds_the_worst_case_program() {
        let n = capacity(4096);
        let far: Vec<u64> = (0..n as u64).map(|i| DISP32_LIMIT + i * 4096).collect();
        for end in [End::Exit, End::Return { reload_cr3: true }] {
            assert!(program(&far, end).len() <= 4096);
        }
        let more: Vec<u64> = (0..n as u64 + 2).map(|i| DISP32_LIMIT + i * 4096).collect();
        assert!(program(&more, End::Exit).len() > 4096 - MAX_END_BYTES);
    }
}
