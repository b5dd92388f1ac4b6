//! Exceptions: the exit side (which vector, the error code, the CPU-pushed frame).
//!
//! When the guest takes an exception, the CPU switches to the vCPU's ring-0 stack (RSP0, or an
//! IST stack for #DF/NMI/#MC), pushes `ss, rsp, rflags, cs, rip` and, for some vectors, an error
//! code, then enters the vector's stub, which exits to the VMM. This module reads that frame
//! back. Building Xen's bounce frame for the guest's handler is done elsewhere (later).

use thiserror::Error;

use crate::memory::GuestVirt;
use crate::ring0::{vector_has_error_code, Ring0Layer, VcpuRing0};

/// `#DE`.
pub const VEC_DE: u8 = 0;
/// `#DB`.
pub const VEC_DB: u8 = 1;
/// NMI.
pub const VEC_NMI: u8 = 2;
/// `#BP` (int3).
pub const VEC_BP: u8 = 3;
/// `#OF` (into).
pub const VEC_OF: u8 = 4;
/// `#UD`.
pub const VEC_UD: u8 = 6;
/// `#NM`.
pub const VEC_NM: u8 = 7;
/// `#DF`.
pub const VEC_DF: u8 = 8;
/// `#GP`.
pub const VEC_GP: u8 = 13;
/// `#PF`.
pub const VEC_PF: u8 = 14;

/// `#PF` error code bits.
pub mod pf_error {
    /// The fault was a protection violation (page present).
    pub const PRESENT: u64 = 1 << 0;
    /// Write access.
    pub const WRITE: u64 = 1 << 1;
    /// Access from CPL3.
    pub const USER: u64 = 1 << 2;
    /// Reserved bit set in a paging entry.
    pub const RSVD: u64 = 1 << 3;
    /// Instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// The interrupt frame the CPU pushed on the ring-0 stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFrame {
    /// Interrupted (faults) or next (traps) instruction.
    pub rip: u64,
    /// Code selector at the time of the exception (0xe033 for the guest).
    pub cs: u64,
    /// RFLAGS at the time of the exception.
    pub rflags: u64,
    /// Stack pointer at the time of the exception.
    pub rsp: u64,
    /// Stack selector at the time of the exception.
    pub ss: u64,
}

impl CpuFrame {
    /// Whether the exception interrupted CPL3 code (the guest) rather than ring 0 (kxen).
    pub fn from_guest(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// Errors reading an exception frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrapError {
    /// The ring-0 stack pointer at the stub is not on this vCPU's ring-0 stacks.
    #[error("ring-0 stack pointer {rsp:#x} outside the vCPU's ring-0 stacks (vector {vector})")]
    BadStack {
        /// The vector.
        vector: u8,
        /// The ring-0 rsp seen.
        rsp: u64,
    },
}

/// Read the error code (if the vector has one) and the CPU frame at ring-0 `rsp`.
pub fn read_exception_frame(
    ring0: &Ring0Layer,
    cpu: &VcpuRing0,
    vector: u8,
    rsp: u64,
) -> Result<(Option<u64>, CpuFrame), TrapError> {
    let has_err = vector_has_error_code(vector);
    let len = if has_err { 48 } else { 40 };
    let bad = TrapError::BadStack { vector, rsp };
    if !cpu.on_ring0_stack(rsp, len) {
        return Err(bad);
    }
    let mut at = rsp;
    let mut next = || {
        let v = ring0.read_u64(at);
        at = at.wrapping_add(8);
        v.ok_or(TrapError::BadStack { vector, rsp })
    };
    let error_code = if has_err { Some(next()?) } else { None };
    let frame = CpuFrame {
        rip: next()?,
        cs: next()?,
        rflags: next()?,
        rsp: next()?,
        ss: next()?,
    };
    Ok((error_code, frame))
}

/// If the instruction at `rip` (guest-virtual, read through the guest's page tables) is
/// `int $n` (`CD nn`), return `n`.
///
/// Needed because on nested KVM on PVM an `int $n` (n other than 3 and 4) from CPL3 raises #UD
/// at the instruction instead of #GP(`n << 3 | 2`) or delivering through a DPL-3 gate; the
/// trap layer uses this to recognise a software interrupt (e.g. `int $0x80`).
pub fn software_int_at(guest: &GuestVirt<'_>, rip: u64) -> Option<u8> {
    let mut insn = [0u8; 2];
    guest.copy_from_guest(rip, &mut insn).ok()?;
    (insn[0] == 0xcd).then_some(insn[1])
}

/// A short name for a vector, for logs.
pub fn vector_name(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "rsvd15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "rsvd22", "rsvd23",
        "rsvd24", "rsvd25", "rsvd26", "rsvd27", "#HV", "#VC", "#SX", "rsvd31",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("int")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn reads_frame_with_and_without_error_code() {
        let l = Ring0Layer::new(1).unwrap();
        let c = l.vcpu(0).unwrap();
        let base = c.rsp0_top - 48;
        let vals = [0x14u64, 0x1000, 0xe033, 0x202, 0x2000, 0xe02b];
        for (i, v) in vals.iter().enumerate() {
            let gpa = l.va_to_gpa(base + 8 * i as u64, 8).unwrap();
            l.private_mem()
                .mem()
                .write_obj(*v, GuestAddress(gpa))
                .unwrap();
        }
        let (err, f) = read_exception_frame(&l, &c, VEC_PF, base).unwrap();
        assert_eq!(err, Some(0x14));
        assert_eq!(
            f,
            CpuFrame {
                rip: 0x1000,
                cs: 0xe033,
                rflags: 0x202,
                rsp: 0x2000,
                ss: 0xe02b
            }
        );
        assert!(f.from_guest());
        let (err, f) = read_exception_frame(&l, &c, VEC_UD, base + 8).unwrap();
        assert_eq!(err, None);
        assert_eq!(f.rip, 0x1000);
    }

    #[test]
    fn refuses_stack_pointer_off_the_ring0_stacks() {
        let l = Ring0Layer::new(1).unwrap();
        let c = l.vcpu(0).unwrap();
        for rsp in [0, c.rsp0_top - 40, c.gdt_base, u64::MAX - 7] {
            assert!(read_exception_frame(&l, &c, VEC_GP, rsp).is_err());
        }
        assert!(read_exception_frame(&l, &c, VEC_DF, c.ist_tops[0] - 48).is_ok());
    }

    #[test]
    fn software_int_is_decoded_through_guest_page_tables() {
        use crate::memory::GuestRam;
        let ram = GuestRam::new(8).unwrap();
        // VA 0.. -> L4 pfn 1 -> L3 2 -> L2 3 -> L1 4 -> pfn 5.
        for (pfn, next) in [(1u64, 2u64), (2, 3), (3, 4), (4, 5)] {
            ram.mem()
                .write_obj((next << 12) | 7, GuestAddress(pfn << 12))
                .unwrap();
        }
        ram.mem()
            .write_slice(&[0xcd, 0x80, 0x0f, 0x0b], GuestAddress(5 << 12))
            .unwrap();
        let g = GuestVirt::new(&ram, 1 << 12);
        assert_eq!(software_int_at(&g, 0), Some(0x80));
        assert_eq!(software_int_at(&g, 2), None);
        assert_eq!(software_int_at(&g, 0x1000), None, "unmapped");
        assert_eq!(software_int_at(&g, 0xfff), None, "crosses into unmapped");
    }

    #[test]
    fn vector_names() {
        assert_eq!(vector_name(14), "#PF");
        assert_eq!(vector_name(200), "int");
    }
}
