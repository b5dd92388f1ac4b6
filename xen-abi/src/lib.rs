//! The Xen PV public interface as kxen needs it: numbers, `#[repr(C)]` layouts, the
//! ELF-note parser, kernel feature negotiation and the PTE fixup engine (`pte`).
//!
//! Pure logic, `no_std`, no allocation: usable from the VMM and from code that runs
//! inside the guest VM.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod arch;
pub mod callback;
pub mod console;
pub mod cpu;
pub mod elf;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod features;
pub mod frame;
pub mod hypercall;
pub mod layout;
pub mod memory;
pub mod mmu;
pub mod negotiate;
pub mod pte;
pub mod pv_vcpu;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod trap;
pub mod version;
