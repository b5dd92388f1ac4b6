//! `console_io` commands (xen: public/xen.h) and the PV console ring page
//! (xen: public/io/console.h).

use crate::arch::{impl_pod, impl_zeroed_default};
use core::mem::{offset_of, size_of};

/// Write a buffer to the hypervisor console.
pub const CONSOLEIO_WRITE: u32 = 0;
/// Read from the hypervisor console (privileged).
pub const CONSOLEIO_READ: u32 = 1;

/// Ring index type.
pub type XenconsRingIdx = u32;

/// Size of the input (backend to guest) ring.
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the output (guest to backend) ring.
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `connection` value: the backend is servicing the ring (the default of a zeroed page).
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// `connection` value: the ring is not (yet) serviced.
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

/// `struct xencons_interface`. The `connection` byte was added in Xen 4.21; older guests
/// ignore it, and a zeroed page means "connected", as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenconsInterface {
    /// Input ring (to the guest).
    pub input: [u8; XENCONS_IN_SIZE],
    /// Output ring (from the guest).
    pub output: [u8; XENCONS_OUT_SIZE],
    /// Input consumer index (guest).
    pub in_cons: XenconsRingIdx,
    /// Input producer index (backend).
    pub in_prod: XenconsRingIdx,
    /// Output consumer index (backend).
    pub out_cons: XenconsRingIdx,
    /// Output producer index (guest).
    pub out_prod: XenconsRingIdx,
    /// `XENCONSOLE_*` (Xen 4.21+).
    pub connection: u8,
    /// Tail padding (explicit).
    pub _pad: [u8; 3],
}
impl_pod!(XenconsInterface {
    [u8; XENCONS_IN_SIZE],
    [u8; XENCONS_OUT_SIZE],
    u32,
    u32,
    u32,
    u32,
    u8,
    [u8; 3]
});
impl_zeroed_default!(XenconsInterface);

/// Offset of `in` in the ring page.
pub const XENCONS_IN_OFFSET: usize = offset_of!(XenconsInterface, input);
/// Offset of `out`.
pub const XENCONS_OUT_OFFSET: usize = offset_of!(XenconsInterface, output);
/// Offset of `in_cons`.
pub const XENCONS_IN_CONS_OFFSET: usize = offset_of!(XenconsInterface, in_cons);
/// Offset of `in_prod`.
pub const XENCONS_IN_PROD_OFFSET: usize = offset_of!(XenconsInterface, in_prod);
/// Offset of `out_cons`.
pub const XENCONS_OUT_CONS_OFFSET: usize = offset_of!(XenconsInterface, out_cons);
/// Offset of `out_prod`.
pub const XENCONS_OUT_PROD_OFFSET: usize = offset_of!(XenconsInterface, out_prod);
/// Offset of `connection`.
pub const XENCONS_CONNECTION_OFFSET: usize = offset_of!(XenconsInterface, connection);

const _: () = assert!(XENCONS_IN_OFFSET == 0);
const _: () = assert!(XENCONS_OUT_OFFSET == 1024);
const _: () = assert!(XENCONS_IN_CONS_OFFSET == 3072);
const _: () = assert!(XENCONS_IN_PROD_OFFSET == 3076);
const _: () = assert!(XENCONS_OUT_CONS_OFFSET == 3080);
const _: () = assert!(XENCONS_OUT_PROD_OFFSET == 3084);
const _: () = assert!(XENCONS_CONNECTION_OFFSET == 3088);
const _: () = assert!(size_of::<XenconsInterface>() == 3092);
const _: () = assert!(size_of::<XenconsInterface>() <= crate::arch::PAGE_SIZE as usize);

/// `MASK_XENCONS_IDX` for the input ring: index into `in`.
pub const fn mask_in_idx(idx: XenconsRingIdx) -> usize {
    (idx as usize) & (XENCONS_IN_SIZE - 1)
}
/// `MASK_XENCONS_IDX` for the output ring: index into `out`.
pub const fn mask_out_idx(idx: XenconsRingIdx) -> usize {
    (idx as usize) & (XENCONS_OUT_SIZE - 1)
}
/// Bytes pending in a ring, `None` if the (guest-written) indices are inconsistent
/// (producer more than `ring_size` ahead of the consumer).
pub const fn ring_pending(
    prod: XenconsRingIdx,
    cons: XenconsRingIdx,
    ring_size: usize,
) -> Option<u32> {
    let n = prod.wrapping_sub(cons);
    if n as usize <= ring_size {
        Some(n)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn console_ring_offsets_match_console_h() {
        assert_eq!(offset_of!(XenconsInterface, in_cons), 3072);
        assert_eq!(offset_of!(XenconsInterface, out_prod), 3084);
        assert_eq!((CONSOLEIO_WRITE, CONSOLEIO_READ), (0, 1));
        let mut page = [0u8; 4096];
        page[3084..3088].copy_from_slice(&5u32.to_le_bytes());
        page[1024] = b'h';
        let ring = XenconsInterface::read_from_prefix(&page).unwrap();
        assert_eq!(ring.out_prod, 5);
        assert_eq!(ring.output[0], b'h');
        assert_eq!(ring.connection, XENCONSOLE_CONNECTED);
    }

    #[test]
    fn index_masking_and_pending() {
        assert_eq!(mask_out_idx(2048), 0);
        assert_eq!(mask_out_idx(2049), 1);
        assert_eq!(mask_in_idx(1023), 1023);
        assert_eq!(mask_in_idx(1024), 0);
        assert_eq!(ring_pending(5, 3, XENCONS_OUT_SIZE), Some(2));
        assert_eq!(ring_pending(1, u32::MAX, XENCONS_OUT_SIZE), Some(2));
        assert_eq!(ring_pending(3000, 0, XENCONS_OUT_SIZE), None);
        assert_eq!(ring_pending(0, 1, XENCONS_OUT_SIZE), None);
    }
}
