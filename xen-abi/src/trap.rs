//! Trap table entries, x86 exception vectors, the `iret` hypercall frame and the layout of
//! Xen's bounce frame (xen: public/arch-x86/xen.h, public/arch-x86/xen-x86_64.h,
//! arch/x86/x86_64/entry.S create_bounce_frame). Constants and layouts only.

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

/// `struct trap_info` (16 bytes on x86_64). A `set_trap_table` list ends at the first entry
/// whose `address` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: DPL (who may raise it with `int n`); bit 2: disable events on entry.
    pub flags: u8,
    /// Code selector of the handler.
    pub cs: u16,
    /// Padding before the 8-byte-aligned address (explicit).
    pub _pad: u32,
    /// Handler address; 0 ends the list.
    pub address: u64,
}
impl_pod!(TrapInfo {
    u8,
    u8,
    u16,
    u32,
    u64
});
const _: () = assert!(size_of::<TrapInfo>() == 16);
const _: () = assert!(offset_of!(TrapInfo, cs) == 2);
const _: () = assert!(offset_of!(TrapInfo, address) == 8);

/// DPL bits of `TrapInfo::flags` (xen: TI_GET_DPL).
pub const TI_DPL_MASK: u8 = 3;
/// "Disable events" bit of `TrapInfo::flags` (xen: TI_GET_IF): entering the handler sets
/// the upcall mask.
pub const TI_DISABLE_EVENTS: u8 = 4;

impl TrapInfo {
    /// The DPL (0-3).
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }
    /// Whether entering the handler masks events.
    pub const fn disables_events(&self) -> bool {
        self.flags & TI_DISABLE_EVENTS != 0
    }
    /// Whether this entry terminates a `set_trap_table` list.
    pub const fn is_terminator(&self) -> bool {
        self.address == 0
    }
}

/// Number of vectors in the virtual IDT.
pub const NR_VECTORS: usize = 256;

/// #DE divide error.
pub const X86_EXC_DE: u8 = 0;
/// #DB debug.
pub const X86_EXC_DB: u8 = 1;
/// NMI.
pub const X86_EXC_NMI: u8 = 2;
/// #BP breakpoint (`int3`).
pub const X86_EXC_BP: u8 = 3;
/// #OF overflow.
pub const X86_EXC_OF: u8 = 4;
/// #BR bound range.
pub const X86_EXC_BR: u8 = 5;
/// #UD invalid opcode.
pub const X86_EXC_UD: u8 = 6;
/// #NM device not available.
pub const X86_EXC_NM: u8 = 7;
/// #DF double fault.
pub const X86_EXC_DF: u8 = 8;
/// Coprocessor segment overrun (legacy).
pub const X86_EXC_CSO: u8 = 9;
/// #TS invalid TSS.
pub const X86_EXC_TS: u8 = 10;
/// #NP segment not present.
pub const X86_EXC_NP: u8 = 11;
/// #SS stack fault.
pub const X86_EXC_SS: u8 = 12;
/// #GP general protection.
pub const X86_EXC_GP: u8 = 13;
/// #PF page fault.
pub const X86_EXC_PF: u8 = 14;
/// Vector 15 (reserved; Xen's "spurious interrupt bug").
pub const X86_EXC_SPV: u8 = 15;
/// #MF x87 floating point.
pub const X86_EXC_MF: u8 = 16;
/// #AC alignment check.
pub const X86_EXC_AC: u8 = 17;
/// #MC machine check.
pub const X86_EXC_MC: u8 = 18;
/// #XM SIMD floating point.
pub const X86_EXC_XM: u8 = 19;
/// #VE virtualisation exception.
pub const X86_EXC_VE: u8 = 20;
/// #CP control protection.
pub const X86_EXC_CP: u8 = 21;

/// Whether the CPU pushes an error code for exception `vector`.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(
        vector,
        X86_EXC_DF
            | X86_EXC_TS
            | X86_EXC_NP
            | X86_EXC_SS
            | X86_EXC_GP
            | X86_EXC_PF
            | X86_EXC_AC
            | X86_EXC_CP
    )
}

/// Short mnemonic of an exception vector ("#PF"), `None` above 21.
pub const fn exception_name(vector: u8) -> Option<&'static str> {
    Some(match vector {
        X86_EXC_DE => "#DE",
        X86_EXC_DB => "#DB",
        X86_EXC_NMI => "NMI",
        X86_EXC_BP => "#BP",
        X86_EXC_OF => "#OF",
        X86_EXC_BR => "#BR",
        X86_EXC_UD => "#UD",
        X86_EXC_NM => "#NM",
        X86_EXC_DF => "#DF",
        X86_EXC_CSO => "#CSO",
        X86_EXC_TS => "#TS",
        X86_EXC_NP => "#NP",
        X86_EXC_SS => "#SS",
        X86_EXC_GP => "#GP",
        X86_EXC_PF => "#PF",
        X86_EXC_SPV => "#SPV",
        X86_EXC_MF => "#MF",
        X86_EXC_AC => "#AC",
        X86_EXC_MC => "#MC",
        X86_EXC_XM => "#XM",
        X86_EXC_VE => "#VE",
        X86_EXC_CP => "#CP",
        _ => return None,
    })
}

/// Bit number of `VGCF_in_syscall`.
pub const VGCF_IN_SYSCALL_BIT: u32 = 8;
/// `iret` flag: the guest entered through `syscall`; return like `sysret` (rcx/r11, cs/ss
/// discarded).
pub const VGCF_IN_SYSCALL: u64 = 1 << VGCF_IN_SYSCALL_BIT;

/// `struct iret_context`: what the guest pushes before `HYPERVISOR_iret`, lowest address
/// (the guest's `rsp` at the hypercall) first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IretContext {
    /// Restored rax.
    pub rax: u64,
    /// Restored r11 (unless in_syscall).
    pub r11: u64,
    /// Restored rcx (unless in_syscall).
    pub rcx: u64,
    /// `VGCF_*` flags.
    pub flags: u64,
    /// Return rip.
    pub rip: u64,
    /// Return cs; `(cs & 3) == 3` switches to guest user mode.
    pub cs: u64,
    /// Return rflags (IOPL/VM stripped, IF forced on; upcall_mask = !IF).
    pub rflags: u64,
    /// Return rsp.
    pub rsp: u64,
    /// Return ss.
    pub ss: u64,
}
impl_pod!(IretContext {
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64
});
const _: () = assert!(size_of::<IretContext>() == 72);
const _: () = assert!(offset_of!(IretContext, flags) == 24);
const _: () = assert!(offset_of!(IretContext, rip) == 32);
const _: () = assert!(offset_of!(IretContext, ss) == 64);

/// One 8-byte word of a bounce frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BounceWord {
    /// Guest rcx at the time of the event.
    Rcx,
    /// Guest r11.
    R11,
    /// Exception error code (only for vectors that have one).
    ErrorCode,
    /// Interrupted rip.
    Rip,
    /// Interrupted cs, with the saved upcall mask in bits 32-39.
    Cs,
    /// Interrupted rflags (IF = !saved upcall mask).
    Rflags,
    /// Interrupted rsp.
    Rsp,
    /// Interrupted ss.
    Ss,
}

/// Bounce frame order, lowest address first, with an error code.
pub const BOUNCE_ORDER_WITH_ERROR: [BounceWord; 8] = [
    BounceWord::Rcx,
    BounceWord::R11,
    BounceWord::ErrorCode,
    BounceWord::Rip,
    BounceWord::Cs,
    BounceWord::Rflags,
    BounceWord::Rsp,
    BounceWord::Ss,
];
/// Bounce frame order, lowest address first, without an error code.
pub const BOUNCE_ORDER: [BounceWord; 7] = [
    BounceWord::Rcx,
    BounceWord::R11,
    BounceWord::Rip,
    BounceWord::Cs,
    BounceWord::Rflags,
    BounceWord::Rsp,
    BounceWord::Ss,
];

/// Number of words in a bounce frame.
pub const fn bounce_frame_words(with_error_code: bool) -> usize {
    if with_error_code {
        8
    } else {
        7
    }
}

/// Index (in words from the frame's lowest address) of `word`; `None` for `ErrorCode`
/// in a frame without one.
pub const fn bounce_word_index(word: BounceWord, with_error_code: bool) -> Option<usize> {
    let e = with_error_code as usize;
    Some(match word {
        BounceWord::Rcx => 0,
        BounceWord::R11 => 1,
        BounceWord::ErrorCode => {
            if with_error_code {
                2
            } else {
                return None;
            }
        }
        BounceWord::Rip => 2 + e,
        BounceWord::Cs => 3 + e,
        BounceWord::Rflags => 4 + e,
        BounceWord::Rsp => 5 + e,
        BounceWord::Ss => 6 + e,
    })
}

/// Shift of the saved upcall mask inside the bounce frame's cs word.
pub const BOUNCE_CS_MASK_SHIFT: u32 = 32;

/// The bounce frame's cs word: the selector with the saved upcall mask in bits 32-39.
pub const fn bounce_cs_word(cs: u16, saved_upcall_mask: u8) -> u64 {
    (cs as u64) | ((saved_upcall_mask as u64) << BOUNCE_CS_MASK_SHIFT)
}
/// Split a bounce-frame cs word into (selector, saved upcall mask).
pub const fn split_bounce_cs_word(word: u64) -> (u16, u8) {
    (word as u16, (word >> BOUNCE_CS_MASK_SHIFT) as u8)
}

/// The failsafe callback frame additionally has ds, es, fs, gs below rcx (Xen pushes them
/// when the callback was registered for a segment-load failure).
pub const FAILSAFE_EXTRA_WORDS: usize = 4;

/// Bounce frame without error code, as `#[repr(C)]` (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceFrame {
    /// Guest rcx.
    pub rcx: u64,
    /// Guest r11.
    pub r11: u64,
    /// Interrupted rip.
    pub rip: u64,
    /// `bounce_cs_word(cs, saved_upcall_mask)`.
    pub cs: u64,
    /// Interrupted rflags.
    pub rflags: u64,
    /// Interrupted rsp.
    pub rsp: u64,
    /// Interrupted ss.
    pub ss: u64,
}
impl_pod!(BounceFrame {
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64
});
const _: () = assert!(size_of::<BounceFrame>() == 56);

/// Bounce frame with error code (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceFrameWithError {
    /// Guest rcx.
    pub rcx: u64,
    /// Guest r11.
    pub r11: u64,
    /// Exception error code.
    pub error_code: u64,
    /// Interrupted rip.
    pub rip: u64,
    /// `bounce_cs_word(cs, saved_upcall_mask)`.
    pub cs: u64,
    /// Interrupted rflags.
    pub rflags: u64,
    /// Interrupted rsp.
    pub rsp: u64,
    /// Interrupted ss.
    pub ss: u64,
}
impl_pod!(BounceFrameWithError {
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64
});
const _: () = assert!(size_of::<BounceFrameWithError>() == 64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn trap_info_layout_and_flags() {
        let mut b = [0u8; 16];
        b[0] = X86_EXC_PF;
        b[1] = 4 | 3;
        b[2..4].copy_from_slice(&0xe033u16.to_le_bytes());
        b[8..].copy_from_slice(&0xffff_ffff_8100_1000u64.to_le_bytes());
        let t = TrapInfo::from_bytes(&b).unwrap();
        assert_eq!(t.vector, 14);
        assert_eq!(t.dpl(), 3);
        assert!(t.disables_events());
        assert_eq!(t.cs, 0xe033);
        assert!(!t.is_terminator());
        assert!(TrapInfo::default().is_terminator());
        assert_eq!(size_of::<TrapInfo>(), 16);
    }

    #[test]
    fn error_code_vectors() {
        let with: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];
        for v in 0..=255u8 {
            assert_eq!(has_error_code(v), with.contains(&v), "vector {v}");
        }
        assert_eq!(exception_name(14), Some("#PF"));
        assert_eq!(exception_name(22), None);
    }

    #[test]
    fn iret_context_layout() {
        assert_eq!(size_of::<IretContext>(), 72);
        assert_eq!(VGCF_IN_SYSCALL, 0x100);
        let words: [u64; 9] = [1, 2, 3, 0x100, 5, 0xe033, 0x202, 8, 0xe02b];
        let ctx = IretContext::from_bytes(words.as_bytes()).unwrap();
        assert_eq!(ctx.rax, 1);
        assert_eq!(ctx.rcx, 3);
        assert_eq!(ctx.flags & VGCF_IN_SYSCALL, VGCF_IN_SYSCALL);
        assert_eq!(ctx.cs, 0xe033);
        assert_eq!(ctx.ss, 0xe02b);
    }

    #[test]
    fn bounce_frame_word_order() {
        for (i, w) in BOUNCE_ORDER_WITH_ERROR.iter().enumerate() {
            assert_eq!(bounce_word_index(*w, true), Some(i));
        }
        for (i, w) in BOUNCE_ORDER.iter().enumerate() {
            assert_eq!(bounce_word_index(*w, false), Some(i));
        }
        assert_eq!(bounce_word_index(BounceWord::ErrorCode, false), None);
        assert_eq!(bounce_frame_words(true), 8);
        assert_eq!(offset_of!(BounceFrameWithError, rip), 8 * 3);
        assert_eq!(offset_of!(BounceFrame, rip), 8 * 2);
        assert_eq!(offset_of!(BounceFrame, ss), 8 * 6);
        let w = bounce_cs_word(0xe033, 1);
        assert_eq!(w, 0x0000_0001_0000_e033);
        assert_eq!(split_bounce_cs_word(w), (0xe033, 1));
    }
}
