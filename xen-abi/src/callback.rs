//! `callback_op` and `set_callbacks` (xen: public/callback.h; xen_callback_t is an
//! `unsigned long` on x86_64, public/arch-x86/xen-x86_64.h).

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

/// Event upcall (events are always masked on entry).
pub const CALLBACKTYPE_EVENT: u16 = 0;
/// Failsafe callback (bad segment on return to guest).
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
/// 64-bit `syscall` from guest user mode (x86_64 only).
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
/// Old number for sysenter, refused by modern Xen.
pub const CALLBACKTYPE_SYSENTER_DEPRECATED: u16 = 3;
/// NMI callback.
pub const CALLBACKTYPE_NMI: u16 = 4;
/// `sysenter` from 32-bit guest user mode.
pub const CALLBACKTYPE_SYSENTER: u16 = 5;
/// 32-bit `syscall` from guest user mode (x86_64 only).
pub const CALLBACKTYPE_SYSCALL32: u16 = 7;

/// Bit number of `CALLBACKF_mask_events`.
pub const CALLBACKF_MASK_EVENTS_BIT: u32 = 0;
/// Mask events (set upcall_mask) while running the callback (ignored for event and NMI).
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << CALLBACKF_MASK_EVENTS_BIT;

/// Register a callback; arg = `CallbackRegister`.
pub const CALLBACKOP_REGISTER: u32 = 0;
/// Unregister a callback; arg = `CallbackUnregister`.
pub const CALLBACKOP_UNREGISTER: u32 = 1;

/// Name of a `CALLBACKTYPE_*`.
pub const fn type_name(ty: u16) -> Option<&'static str> {
    Some(match ty {
        CALLBACKTYPE_EVENT => "event",
        CALLBACKTYPE_FAILSAFE => "failsafe",
        CALLBACKTYPE_SYSCALL => "syscall",
        CALLBACKTYPE_SYSENTER_DEPRECATED => "sysenter_deprecated",
        CALLBACKTYPE_NMI => "nmi",
        CALLBACKTYPE_SYSENTER => "sysenter",
        CALLBACKTYPE_SYSCALL32 => "syscall32",
        _ => return None,
    })
}

/// `struct callback_register` (16 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackRegister {
    /// `CALLBACKTYPE_*`.
    pub ty: u16,
    /// `CALLBACKF_*`.
    pub flags: u16,
    /// Padding before the 8-byte-aligned address (explicit).
    pub _pad: u32,
    /// Guest virtual address of the callback (`xen_callback_t`).
    pub address: u64,
}
impl_pod!(CallbackRegister { u16, u16, u32, u64 });
const _: () = assert!(size_of::<CallbackRegister>() == 16);
const _: () = assert!(offset_of!(CallbackRegister, flags) == 2);
const _: () = assert!(offset_of!(CallbackRegister, address) == 8);

impl CallbackRegister {
    /// Whether `CALLBACKF_mask_events` is set.
    pub const fn masks_events(&self) -> bool {
        self.flags & CALLBACKF_MASK_EVENTS != 0
    }
}

/// `struct callback_unregister`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackUnregister {
    /// `CALLBACKTYPE_*`.
    pub ty: u16,
    /// Unused.
    pub _unused: u16,
}
impl_pod!(CallbackUnregister { u16, u16 });
const _: () = assert!(size_of::<CallbackUnregister>() == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn numbers_match_callback_h() {
        assert_eq!(CALLBACKTYPE_EVENT, 0);
        assert_eq!(CALLBACKTYPE_FAILSAFE, 1);
        assert_eq!(CALLBACKTYPE_SYSCALL, 2);
        assert_eq!(CALLBACKTYPE_NMI, 4);
        assert_eq!(CALLBACKTYPE_SYSENTER, 5);
        assert_eq!(CALLBACKTYPE_SYSCALL32, 7);
        assert_eq!(CALLBACKF_MASK_EVENTS, 1);
        assert_eq!((CALLBACKOP_REGISTER, CALLBACKOP_UNREGISTER), (0, 1));
        assert_eq!(type_name(7), Some("syscall32"));
        assert_eq!(type_name(6), None);
    }

    #[test]
    fn callback_register_layout_from_guest_bytes() {
        // type=syscall, flags=mask_events, 4 pad bytes, address
        let mut b = [0u8; 16];
        b[0] = 2;
        b[2] = 1;
        b[8..].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        let r = CallbackRegister::from_bytes(&b).unwrap();
        assert_eq!(r.ty, CALLBACKTYPE_SYSCALL);
        assert!(r.masks_events());
        assert_eq!(r.address, 0xffff_ffff_8100_0000);
        assert_eq!(r.as_bytes(), &b);
    }
}
