//! kxen: run Xen PV guests on Linux KVM.
//!
//! See `docs/ARCHITECTURE.md` for the layers and how a trap flows through them.

pub mod bench;
pub mod builder;
pub mod config;
pub mod demo_image;
pub mod domain;
pub mod emulate;
pub mod events;
pub mod hypercall;
pub mod image;
pub mod inspect;
pub mod launch;
pub mod memory;
pub mod mm;
pub mod privop;
pub mod ptwr;
pub mod pvmode;
pub mod replay;
pub mod ring0;
pub mod smp;
pub mod time;
pub mod tlbflush;
pub mod trap;
pub mod vcpu;
