//! The xenstore ring page (xen: public/io/xs_wire.h `struct xenstore_domain_interface`):
//! `req[1024]` (guest produces requests), `rsp[1024]` (xenstored produces replies and watch
//! events), the free-running `u32` indices `req_cons`, `req_prod`, `rsp_cons`, `rsp_prod`,
//! then `server_features`, `connection` and `error`.
//!
//! Every index read from the page is hostile: `prod - cons` (mod 2^32) above the ring size is
//! a protocol error reported as such (xenstored then stops serving the ring and sets
//! `error = XENSTORE_ERROR_RINGIDX`), and data offsets are always masked into the ring.

use std::sync::atomic::{fence, Ordering};

use crate::console::RingPage;

/// Size of each ring (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: usize = 1024;
/// Offset of `req`.
pub const REQ_OFFSET: usize = 0;
/// Offset of `rsp`.
pub const RSP_OFFSET: usize = 1024;
/// Offset of `req_cons`.
pub const REQ_CONS_OFFSET: usize = 2048;
/// Offset of `req_prod`.
pub const REQ_PROD_OFFSET: usize = 2052;
/// Offset of `rsp_cons`.
pub const RSP_CONS_OFFSET: usize = 2056;
/// Offset of `rsp_prod`.
pub const RSP_PROD_OFFSET: usize = 2060;
/// Offset of `server_features`.
pub const SERVER_FEATURES_OFFSET: usize = 2064;
/// Offset of `connection`.
pub const CONNECTION_OFFSET: usize = 2068;
/// Offset of `error`.
pub const ERROR_OFFSET: usize = 2072;

/// `server_features` bit: the server supports guest-initiated reconnection.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the `error` field exists.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection`: steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: the guest asks for a reconnect (ring reset).
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: none.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

const _: () = assert!(RING_SIZE.is_power_of_two());
const _: () =
    assert!(REQ_OFFSET + RING_SIZE == RSP_OFFSET && RSP_OFFSET + RING_SIZE == REQ_CONS_OFFSET);

/// Ring indices that cannot be right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadIndices {
    /// Consumer index as read.
    pub cons: u32,
    /// Producer index as read.
    pub prod: u32,
}

/// Unconsumed request bytes: `(req_cons, count)`.
pub(crate) fn req_avail<P: RingPage>(
    page: &P,
) -> Result<Result<(u32, usize), BadIndices>, P::Error> {
    let cons = page.read_u32(REQ_CONS_OFFSET)?;
    let prod = page.read_u32(REQ_PROD_OFFSET)?;
    // Read the producer index before the data it publishes.
    fence(Ordering::SeqCst);
    let n = prod.wrapping_sub(cons) as usize;
    if n > RING_SIZE {
        return Ok(Err(BadIndices { cons, prod }));
    }
    Ok(Ok((cons, n)))
}

/// Copy request bytes at index `cons` into `buf` (at most [`RING_SIZE`] bytes) and hand the
/// space back by advancing `req_cons`.
pub(crate) fn req_consume<P: RingPage>(
    page: &P,
    cons: u32,
    buf: &mut [u8],
) -> Result<(), P::Error> {
    let start = cons as usize & (RING_SIZE - 1);
    let first = buf.len().min(RING_SIZE - start);
    let (a, b) = buf.split_at_mut(first);
    page.read(REQ_OFFSET + start, a)?;
    if !b.is_empty() {
        page.read(REQ_OFFSET, b)?;
    }
    // Finish reading the data before releasing the space.
    fence(Ordering::SeqCst);
    // buf.len() <= RING_SIZE, so the cast is exact.
    page.write_u32(REQ_CONS_OFFSET, cons.wrapping_add(buf.len() as u32))
}

/// Free response space: `(rsp_prod, count)`.
pub(crate) fn rsp_space<P: RingPage>(
    page: &P,
) -> Result<Result<(u32, usize), BadIndices>, P::Error> {
    let cons = page.read_u32(RSP_CONS_OFFSET)?;
    let prod = page.read_u32(RSP_PROD_OFFSET)?;
    // Read the consumer index before overwriting the space it frees.
    fence(Ordering::SeqCst);
    let used = prod.wrapping_sub(cons) as usize;
    if used > RING_SIZE {
        return Ok(Err(BadIndices { cons, prod }));
    }
    Ok(Ok((prod, RING_SIZE - used)))
}

/// Write `data` (at most the free space) at index `prod` and publish it.
pub(crate) fn rsp_produce<P: RingPage>(page: &P, prod: u32, data: &[u8]) -> Result<(), P::Error> {
    let start = prod as usize & (RING_SIZE - 1);
    let first = data.len().min(RING_SIZE - start);
    let (a, b) = data.split_at(first);
    page.write(RSP_OFFSET + start, a)?;
    if !b.is_empty() {
        page.write(RSP_OFFSET, b)?;
    }
    // The data must be visible before the producer index that publishes it.
    fence(Ordering::SeqCst);
    page.write_u32(RSP_PROD_OFFSET, prod.wrapping_add(data.len() as u32))
}
