//! PV console backend: the host side of the guest's console ring page.
//!
//! The page holds `struct xencons_interface` (xen: public/io/console.h): an input ring
//! `in[1024]` (backend produces keyboard input, guest consumes), an output ring `out[2048]`
//! (guest produces, backend consumes), then the free-running `u32` indices `in_cons`,
//! `in_prod`, `out_cons`, `out_prod` (masked by the ring size when used as offsets), and since
//! Xen 4.21 a `u8 connection` flag (0 = connected, 1 = disconnected).
//!
//! The page is guest memory: every index read from it is hostile. The backend reads each index
//! once per operation, checks that `prod - cons` (mod 2^32) is at most the ring size, and only
//! ever touches offsets masked into the ring, so no guest value can make it loop, overflow or
//! address outside the page. An impossible index pair is a protocol error: the ring is reset
//! (consumer catches up with producer) and the error is reported.
//!
//! Accesses go through [`RingPage`] so the backend can be tested without a VM; the VMM
//! implements it over guest memory with volatile accesses.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{fence, Ordering};

// The ring layout is Xen's (public/io/console.h), defined once in xen-abi.
pub use xen_abi::console::{
    XENCONSOLE_CONNECTED, XENCONSOLE_DISCONNECTED, XENCONS_CONNECTION_OFFSET as CONNECTION_OFFSET,
    XENCONS_IN_CONS_OFFSET as IN_CONS_OFFSET, XENCONS_IN_OFFSET as IN_OFFSET,
    XENCONS_IN_PROD_OFFSET as IN_PROD_OFFSET, XENCONS_IN_SIZE as IN_SIZE,
    XENCONS_OUT_CONS_OFFSET as OUT_CONS_OFFSET, XENCONS_OUT_OFFSET as OUT_OFFSET,
    XENCONS_OUT_PROD_OFFSET as OUT_PROD_OFFSET, XENCONS_OUT_SIZE as OUT_SIZE,
};
/// Size of the console page.
pub const PAGE_SIZE: usize = 4096;
/// Default bound of the input queue kept while the guest does not consume input.
pub const DEFAULT_INPUT_LIMIT: usize = 1 << 20;

const _: () = assert!(IN_SIZE.is_power_of_two() && OUT_SIZE.is_power_of_two());
const _: () = assert!(IN_OFFSET + IN_SIZE == OUT_OFFSET && OUT_OFFSET + OUT_SIZE == IN_CONS_OFFSET);
const _: () = assert!(CONNECTION_OFFSET < PAGE_SIZE);

/// Byte access to the console page. Offsets are relative to the start of the page and the
/// backend never passes a range reaching past [`PAGE_SIZE`].
pub trait RingPage {
    /// The accessor's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Copy `buf.len()` bytes at `off` out of the page.
    fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Copy `data` into the page at `off`.
    fn write(&self, off: usize, data: &[u8]) -> Result<(), Self::Error>;

    /// Read a little-endian `u32` index at `off` (4-byte aligned). Implementations over shared
    /// memory should override this with one aligned 32-bit volatile/atomic load so an index
    /// the guest is updating is never torn.
    fn read_u32(&self, off: usize) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Write a little-endian `u32` index at `off` (4-byte aligned); see [`RingPage::read_u32`].
    fn write_u32(&self, off: usize, v: u32) -> Result<(), Self::Error> {
        self.write(off, &v.to_le_bytes())
    }
}

/// Errors of the console backend.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The page accessor failed.
    #[error("console page access failed: {0}")]
    Page(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The guest's output indices are impossible; `out_cons` was reset to `out_prod` and the
    /// pending output dropped.
    #[error(
        "guest console output ring has invalid indices (out_cons {cons:#x}, out_prod {prod:#x}); \
         ring reset, pending output dropped"
    )]
    BadOutputIndices {
        /// `out_cons` as read.
        cons: u32,
        /// `out_prod` as read.
        prod: u32,
    },
    /// The input indices are impossible (the guest moved `in_cons` or `in_prod`); `in_prod`
    /// was reset to `in_cons`. Queued input is kept.
    #[error(
        "guest console input ring has invalid indices (in_cons {cons:#x}, in_prod {prod:#x}); \
         ring reset"
    )]
    BadInputIndices {
        /// `in_cons` as read.
        cons: u32,
        /// `in_prod` as read.
        prod: u32,
    },
    /// Writing the guest's output to the host writer failed (the output was consumed from
    /// the ring and is lost, so a broken host output never stalls the guest).
    #[error("writing console output failed: {0}")]
    Output(#[source] std::io::Error),
}

fn page_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> ConsoleError {
    ConsoleError::Page(Box::new(e))
}

/// The console backend's state: the input queue and the pending-notification flag.
#[derive(Debug)]
pub struct ConsoleBackend {
    input: VecDeque<u8>,
    input_limit: usize,
    notify: bool,
}

impl Default for ConsoleBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleBackend {
    /// A backend whose input queue holds up to [`DEFAULT_INPUT_LIMIT`] bytes.
    pub fn new() -> Self {
        Self::with_input_limit(DEFAULT_INPUT_LIMIT)
    }

    /// A backend whose input queue holds up to `limit` bytes.
    pub fn with_input_limit(limit: usize) -> Self {
        ConsoleBackend {
            input: VecDeque::new(),
            input_limit: limit,
            notify: false,
        }
    }

    /// Mark the ring as serviced (`connection = XENCONSOLE_CONNECTED`) for guests that check it.
    pub fn connect<P: RingPage>(&mut self, page: &P) -> Result<(), ConsoleError> {
        page.write(CONNECTION_OFFSET, &[XENCONSOLE_CONNECTED])
            .map_err(page_err)
    }

    /// Whether the guest should be notified (event channel) because the backend consumed
    /// output or produced input since the last call; clears the flag.
    pub fn take_notify(&mut self) -> bool {
        std::mem::take(&mut self.notify)
    }

    /// Whether a notification is pending (without clearing it).
    pub fn notify_pending(&self) -> bool {
        self.notify
    }

    /// Bytes queued for the guest and not yet in the ring.
    pub fn queued_input(&self) -> usize {
        self.input.len()
    }

    /// How many more bytes [`ConsoleBackend::queue_input`] accepts now.
    pub fn input_space(&self) -> usize {
        self.input_limit.saturating_sub(self.input.len())
    }

    /// Consume everything the guest has produced (`out_cons..out_prod`) and write it to `out`.
    /// Returns the number of bytes consumed.
    ///
    /// If the indices are impossible (`out_prod - out_cons > 2048`, which includes a producer
    /// behind the consumer), `out_cons` is set to `out_prod` and
    /// [`ConsoleError::BadOutputIndices`] is returned. If `out` fails, the bytes are still
    /// consumed and [`ConsoleError::Output`] is returned.
    pub fn drain_output<P: RingPage>(
        &mut self,
        page: &P,
        out: &mut impl Write,
    ) -> Result<usize, ConsoleError> {
        let cons = page.read_u32(OUT_CONS_OFFSET).map_err(page_err)?;
        let prod = page.read_u32(OUT_PROD_OFFSET).map_err(page_err)?;
        // Read the producer index before the data it publishes.
        fence(Ordering::SeqCst);
        let avail = prod.wrapping_sub(cons) as usize;
        if avail == 0 {
            return Ok(0);
        }
        if avail > OUT_SIZE {
            page.write_u32(OUT_CONS_OFFSET, prod).map_err(page_err)?;
            self.notify = true;
            return Err(ConsoleError::BadOutputIndices { cons, prod });
        }
        let mut buf = [0u8; OUT_SIZE];
        let data = &mut buf[..avail];
        read_ring(page, OUT_OFFSET, OUT_SIZE, cons, data).map_err(page_err)?;
        // Finish reading the data before handing the space back to the guest.
        fence(Ordering::SeqCst);
        page.write_u32(OUT_CONS_OFFSET, prod).map_err(page_err)?;
        self.notify = true;
        out.write_all(data).map_err(ConsoleError::Output)?;
        Ok(avail)
    }

    /// Queue input for the guest, up to the queue's limit; returns how many bytes of `data`
    /// were accepted (the rest is the caller's to retry). Nothing reaches the guest until
    /// [`ConsoleBackend::flush_input`].
    pub fn queue_input(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.input_space());
        self.input.extend(data.get(..n).unwrap_or(&[]));
        n
    }

    /// Move as much queued input as fits into the guest's input ring; returns the number of
    /// bytes moved. Bytes stay queued until they are in the ring, so none is lost or reordered,
    /// also when the page accessor fails.
    pub fn flush_input<P: RingPage>(&mut self, page: &P) -> Result<usize, ConsoleError> {
        if self.input.is_empty() {
            return Ok(0);
        }
        let n = self.produce(page, Source::Queue)?;
        self.input.drain(..n);
        Ok(n)
    }

    /// Write `data` into the guest's input ring after any queued input; returns how many bytes
    /// of `data` went in (0 while older queued input is still waiting, so order is kept). The
    /// caller keeps the rest, or hands it to [`ConsoleBackend::queue_input`].
    pub fn push_input<P: RingPage>(
        &mut self,
        page: &P,
        data: &[u8],
    ) -> Result<usize, ConsoleError> {
        self.flush_input(page)?;
        if !self.input.is_empty() || data.is_empty() {
            return Ok(0);
        }
        self.produce(page, Source::Slice(data))
    }

    /// Produce bytes from `src` into the input ring; returns how many.
    fn produce<P: RingPage>(&mut self, page: &P, src: Source<'_>) -> Result<usize, ConsoleError> {
        let cons = page.read_u32(IN_CONS_OFFSET).map_err(page_err)?;
        let prod = page.read_u32(IN_PROD_OFFSET).map_err(page_err)?;
        // Read the consumer index before overwriting the space it frees.
        fence(Ordering::SeqCst);
        let used = prod.wrapping_sub(cons) as usize;
        if used > IN_SIZE {
            page.write_u32(IN_PROD_OFFSET, cons).map_err(page_err)?;
            self.notify = true;
            return Err(ConsoleError::BadInputIndices { cons, prod });
        }
        let space = IN_SIZE - used;
        let data: &[u8] = match src {
            Source::Slice(d) => d,
            Source::Queue => self.input.make_contiguous(),
        };
        let n = space.min(data.len());
        if n == 0 {
            return Ok(0);
        }
        write_ring(page, IN_OFFSET, IN_SIZE, prod, &data[..n]).map_err(page_err)?;
        // The data must be visible before the producer index that publishes it.
        fence(Ordering::SeqCst);
        // n <= IN_SIZE, so the cast is exact.
        page.write_u32(IN_PROD_OFFSET, prod.wrapping_add(n as u32))
            .map_err(page_err)?;
        self.notify = true;
        Ok(n)
    }
}

enum Source<'a> {
    Slice(&'a [u8]),
    Queue,
}

/// Read `buf.len()` (at most `size`) bytes from the ring at `base`, starting at index `idx`.
fn read_ring<P: RingPage>(
    page: &P,
    base: usize,
    size: usize,
    idx: u32,
    buf: &mut [u8],
) -> Result<(), P::Error> {
    let start = idx as usize & (size - 1);
    let first = buf.len().min(size - start);
    let (a, b) = buf.split_at_mut(first);
    page.read(base + start, a)?;
    if !b.is_empty() {
        page.read(base, b)?;
    }
    Ok(())
}

/// Write `data` (at most `size` bytes) into the ring at `base`, starting at index `idx`.
fn write_ring<P: RingPage>(
    page: &P,
    base: usize,
    size: usize,
    idx: u32,
    data: &[u8],
) -> Result<(), P::Error> {
    let start = idx as usize & (size - 1);
    let first = data.len().min(size - start);
    let (a, b) = data.split_at(first);
    page.write(base + start, a)?;
    if !b.is_empty() {
        page.write(base, b)?;
    }
    Ok(())
}

/// A console page in host memory, for tests and tools.
#[derive(Debug)]
pub struct MemPage {
    bytes: std::cell::RefCell<Vec<u8>>,
}

/// [`MemPage`] access outside the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at offset {off:#x} is outside the page")]
pub struct OutOfPage {
    /// Offset.
    pub off: usize,
    /// Length.
    pub len: usize,
}

impl Default for MemPage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPage {
    /// A zeroed page.
    pub fn new() -> Self {
        MemPage {
            bytes: std::cell::RefCell::new(vec![0; PAGE_SIZE]),
        }
    }

    fn range(off: usize, len: usize) -> Result<std::ops::Range<usize>, OutOfPage> {
        match off.checked_add(len) {
            Some(end) if end <= PAGE_SIZE => Ok(off..end),
            _ => Err(OutOfPage { off, len }),
        }
    }
}

impl RingPage for MemPage {
    type Error = OutOfPage;

    fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), OutOfPage> {
        let r = Self::range(off, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, off: usize, data: &[u8]) -> Result<(), OutOfPage> {
        let r = Self::range(off, data.len())?;
        self.bytes.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- a simulated guest frontend, written independently of the backend ----

    fn get(p: &MemPage, off: usize) -> u32 {
        p.read_u32(off).unwrap()
    }

    fn set(p: &MemPage, off: usize, v: u32) {
        p.write_u32(off, v).unwrap()
    }

    /// Guest side of `out`: produce as much of `data` as fits, byte by byte.
    fn guest_write(p: &MemPage, data: &[u8]) -> usize {
        let cons = get(p, OUT_CONS_OFFSET);
        let mut prod = get(p, OUT_PROD_OFFSET);
        let mut n = 0;
        for &b in data {
            if prod.wrapping_sub(cons) as usize == OUT_SIZE {
                break;
            }
            p.write(OUT_OFFSET + (prod as usize % OUT_SIZE), &[b])
                .unwrap();
            prod = prod.wrapping_add(1);
            n += 1;
        }
        set(p, OUT_PROD_OFFSET, prod);
        n
    }

    /// Guest side of `in`: consume up to `max` bytes, byte by byte.
    fn guest_read(p: &MemPage, max: usize) -> Vec<u8> {
        let mut cons = get(p, IN_CONS_OFFSET);
        let prod = get(p, IN_PROD_OFFSET);
        let mut v = Vec::new();
        while cons != prod && v.len() < max {
            let mut b = [0u8];
            p.read(IN_OFFSET + (cons as usize % IN_SIZE), &mut b)
                .unwrap();
            v.push(b[0]);
            cons = cons.wrapping_add(1);
        }
        set(p, IN_CONS_OFFSET, cons);
        v
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8
            })
            .collect()
    }

    fn page_at(out_idx: u32, in_idx: u32) -> MemPage {
        let p = MemPage::new();
        set(&p, OUT_CONS_OFFSET, out_idx);
        set(&p, OUT_PROD_OFFSET, out_idx);
        set(&p, IN_CONS_OFFSET, in_idx);
        set(&p, IN_PROD_OFFSET, in_idx);
        p
    }

    #[test]
    fn layout_matches_xencons_interface() {
        // char in[1024]; char out[2048]; u32 in_cons, in_prod, out_cons, out_prod; u8 connection
        assert_eq!(
            (
                IN_CONS_OFFSET,
                IN_PROD_OFFSET,
                OUT_CONS_OFFSET,
                OUT_PROD_OFFSET
            ),
            (1024 + 2048, 3076, 3080, 3084)
        );
        assert_eq!(CONNECTION_OFFSET, 3088);
    }

    #[test]
    fn output_wraps_correctly_at_every_start_offset() {
        let lens = [1, 2, 7, OUT_SIZE - 1, OUT_SIZE];
        for base in [0u32, 0x1000_0000, u32::MAX - OUT_SIZE as u32 + 1] {
            for start in 0..OUT_SIZE as u32 {
                for &len in &lens {
                    let idx = base.wrapping_add(start);
                    let p = page_at(idx, 0);
                    let data = pattern(len, start);
                    assert_eq!(guest_write(&p, &data), len);
                    let mut be = ConsoleBackend::new();
                    let mut got = Vec::new();
                    assert_eq!(be.drain_output(&p, &mut got).unwrap(), len);
                    assert_eq!(got, data, "start {start} len {len}");
                    assert_eq!(get(&p, OUT_CONS_OFFSET), idx.wrapping_add(len as u32));
                    assert!(be.take_notify());
                }
            }
        }
    }

    #[test]
    fn input_wraps_correctly_at_every_start_offset() {
        let lens = [1, 2, 5, IN_SIZE - 1, IN_SIZE];
        for base in [0u32, 0x7fff_0000, u32::MAX - IN_SIZE as u32 + 1] {
            for start in 0..IN_SIZE as u32 {
                for &len in &lens {
                    let idx = base.wrapping_add(start);
                    let p = page_at(0, idx);
                    let data = pattern(len, start + 7);
                    let mut be = ConsoleBackend::new();
                    assert_eq!(be.push_input(&p, &data).unwrap(), len);
                    assert!(be.take_notify());
                    assert_eq!(get(&p, IN_PROD_OFFSET), idx.wrapping_add(len as u32));
                    assert_eq!(guest_read(&p, usize::MAX), data, "start {start} len {len}");
                }
            }
        }
    }

    #[test]
    fn full_output_ring_drains_in_one_call_and_empty_ring_is_a_noop() {
        let p = page_at(5, 0);
        let mut be = ConsoleBackend::new();
        let mut got = Vec::new();
        assert_eq!(be.drain_output(&p, &mut got).unwrap(), 0);
        assert!(!be.take_notify(), "nothing consumed, nothing to notify");
        let data = pattern(OUT_SIZE + 100, 1);
        assert_eq!(guest_write(&p, &data), OUT_SIZE, "guest sees a full ring");
        assert_eq!(be.drain_output(&p, &mut got).unwrap(), OUT_SIZE);
        assert_eq!(got, data[..OUT_SIZE]);
        assert_eq!(guest_write(&p, &data[OUT_SIZE..]), 100);
        assert_eq!(be.drain_output(&p, &mut got).unwrap(), 100);
        assert_eq!(got, data);
    }

    #[test]
    fn full_input_ring_accepts_only_the_free_space() {
        let p = page_at(0, 3);
        let mut be = ConsoleBackend::new();
        let data = pattern(1500, 2);
        assert_eq!(be.push_input(&p, &data).unwrap(), IN_SIZE);
        assert_eq!(be.push_input(&p, &data[IN_SIZE..]).unwrap(), 0);
        assert_eq!(guest_read(&p, 100), data[..100]);
        assert_eq!(be.push_input(&p, &data[IN_SIZE..]).unwrap(), 100);
        let rest = guest_read(&p, usize::MAX);
        assert_eq!(rest.len(), IN_SIZE);
        assert_eq!(rest[..IN_SIZE - 100], data[100..IN_SIZE]);
        assert_eq!(rest[IN_SIZE - 100..], data[IN_SIZE..IN_SIZE + 100]);
    }

    #[test]
    fn one_megabyte_of_input_arrives_intact_through_a_slow_guest() {
        let total = 1 << 20;
        let data = pattern(total, 3);
        let p = page_at(0, u32::MAX - 10);
        let mut be = ConsoleBackend::with_input_limit(4096);
        let mut sent = 0;
        let mut received = Vec::with_capacity(total);
        let mut rng = 12345u32;
        let mut rounds = 0;
        while received.len() < total {
            rounds += 1;
            assert!(rounds < 10 * total, "no progress");
            sent += be.queue_input(&data[sent..]);
            be.flush_input(&p).unwrap();
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let want = (rng >> 16) as usize % 300 + 1;
            received.extend(guest_read(&p, want));
        }
        assert_eq!(sent, total);
        assert_eq!(be.queued_input(), 0);
        assert!(received == data, "input corrupted or reordered");
    }

    #[test]
    fn one_megabyte_of_output_arrives_intact_from_a_bursty_guest() {
        let total = 1 << 20;
        let data = pattern(total, 4);
        let p = page_at(u32::MAX - 3, 0);
        let mut be = ConsoleBackend::new();
        let mut sent = 0;
        let mut got = Vec::with_capacity(total);
        let mut rng = 999u32;
        while got.len() < total {
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let burst = (rng >> 16) as usize % 3000;
            let end = (sent + burst).min(total);
            sent += guest_write(&p, &data[sent..end]);
            be.drain_output(&p, &mut got).unwrap();
        }
        assert!(got == data, "output corrupted or reordered");
    }

    #[test]
    fn hostile_output_indices_reset_the_ring_and_report() {
        for (cons, prod) in [
            (0u32, OUT_SIZE as u32 + 1),
            (100, 100 + 0x8000_0000),
            (10, 9),
            (0, u32::MAX),
            (u32::MAX, 0x1000),
        ] {
            let p = page_at(0, 0);
            set(&p, OUT_CONS_OFFSET, cons);
            set(&p, OUT_PROD_OFFSET, prod);
            let mut be = ConsoleBackend::new();
            let mut got = Vec::new();
            match be.drain_output(&p, &mut got) {
                Err(ConsoleError::BadOutputIndices { cons: c, prod: pr }) => {
                    assert_eq!((c, pr), (cons, prod))
                }
                other => panic!("({cons:#x},{prod:#x}): expected BadOutputIndices, got {other:?}"),
            }
            assert!(got.is_empty());
            assert_eq!(get(&p, OUT_CONS_OFFSET), prod, "consumer caught up");
            assert!(be.take_notify());
            // The ring works again afterwards.
            assert_eq!(be.drain_output(&p, &mut got).unwrap(), 0);
            assert_eq!(guest_write(&p, b"ok"), 2);
            assert_eq!(be.drain_output(&p, &mut got).unwrap(), 2);
            assert_eq!(got, b"ok");
        }
        // Exactly a full ring is legal, one more is not.
        let p = page_at(7, 0);
        set(&p, OUT_PROD_OFFSET, 7 + OUT_SIZE as u32);
        assert_eq!(
            ConsoleBackend::new()
                .drain_output(&p, &mut Vec::new())
                .unwrap(),
            OUT_SIZE
        );
    }

    #[test]
    fn hostile_input_indices_reset_the_ring_and_keep_queued_input() {
        for (cons, prod) in [(5u32, 0u32), (0, IN_SIZE as u32 + 1), (0x8000_0000, 0)] {
            let p = page_at(0, 0);
            set(&p, IN_CONS_OFFSET, cons);
            set(&p, IN_PROD_OFFSET, prod);
            let mut be = ConsoleBackend::new();
            assert_eq!(be.queue_input(b"hello"), 5);
            match be.flush_input(&p) {
                Err(ConsoleError::BadInputIndices { cons: c, prod: pr }) => {
                    assert_eq!((c, pr), (cons, prod))
                }
                other => panic!("({cons:#x},{prod:#x}): expected BadInputIndices, got {other:?}"),
            }
            assert_eq!(be.queued_input(), 5, "no byte lost");
            assert_eq!(get(&p, IN_PROD_OFFSET), cons, "ring reset to empty");
            assert_eq!(be.flush_input(&p).unwrap(), 5);
            assert_eq!(guest_read(&p, usize::MAX), b"hello");
        }
    }

    #[test]
    fn zero_length_operations_touch_nothing() {
        let p = page_at(0, 0);
        let mut be = ConsoleBackend::new();
        assert_eq!(be.push_input(&p, &[]).unwrap(), 0);
        assert_eq!(be.queue_input(&[]), 0);
        assert_eq!(be.flush_input(&p).unwrap(), 0);
        assert_eq!(be.drain_output(&p, &mut Vec::new()).unwrap(), 0);
        assert!(!be.take_notify());
        assert!(p.bytes.borrow().iter().all(|&b| b == 0));
        // Also with a page that fails every access: no access is made at all.
        let mut be = ConsoleBackend::new();
        assert_eq!(be.push_input(&FailingPage, &[]).unwrap(), 0);
        assert_eq!(be.flush_input(&FailingPage).unwrap(), 0);
    }

    #[test]
    fn push_input_keeps_order_behind_queued_bytes() {
        let p = page_at(0, 0);
        let mut be = ConsoleBackend::new();
        // Fill the ring, then queue more.
        let first = pattern(IN_SIZE, 5);
        assert_eq!(be.push_input(&p, &first).unwrap(), IN_SIZE);
        assert_eq!(be.queue_input(b"abc"), 3);
        // Guest frees 2 bytes: "ab" goes in, "c" stays queued, "def" must wait.
        assert_eq!(guest_read(&p, 2), first[..2]);
        assert_eq!(be.push_input(&p, b"def").unwrap(), 0);
        assert_eq!(be.queued_input(), 1);
        let mut all = guest_read(&p, usize::MAX);
        assert_eq!(be.push_input(&p, b"def").unwrap(), 3);
        all.extend(guest_read(&p, usize::MAX));
        let mut expect = first[2..].to_vec();
        expect.extend(b"abcdef");
        assert_eq!(all, expect);
    }

    #[test]
    fn input_queue_is_bounded_and_reports_what_it_took() {
        let mut be = ConsoleBackend::with_input_limit(10);
        assert_eq!(be.input_space(), 10);
        assert_eq!(be.queue_input(b"0123456"), 7);
        assert_eq!(be.queue_input(b"789abc"), 3);
        assert_eq!(be.input_space(), 0);
        assert_eq!(be.queue_input(b"x"), 0);
        let p = page_at(0, 0);
        assert_eq!(be.flush_input(&p).unwrap(), 10);
        assert_eq!(guest_read(&p, usize::MAX), b"0123456789");
    }

    #[derive(Debug)]
    struct FailingPage;
    impl RingPage for FailingPage {
        type Error = OutOfPage;
        fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), OutOfPage> {
            Err(OutOfPage {
                off,
                len: buf.len(),
            })
        }
        fn write(&self, off: usize, data: &[u8]) -> Result<(), OutOfPage> {
            Err(OutOfPage {
                off,
                len: data.len(),
            })
        }
    }

    #[test]
    fn page_errors_are_reported_and_lose_no_input() {
        let mut be = ConsoleBackend::new();
        assert_eq!(be.queue_input(b"keep"), 4);
        assert!(matches!(
            be.flush_input(&FailingPage),
            Err(ConsoleError::Page(_))
        ));
        assert!(matches!(
            be.drain_output(&FailingPage, &mut Vec::new()),
            Err(ConsoleError::Page(_))
        ));
        assert!(matches!(
            be.connect(&FailingPage),
            Err(ConsoleError::Page(_))
        ));
        assert_eq!(be.queued_input(), 4);
        let p = page_at(0, 0);
        assert_eq!(be.flush_input(&p).unwrap(), 4);
        assert_eq!(guest_read(&p, usize::MAX), b"keep");
    }

    #[test]
    fn mem_page_refuses_out_of_page_access() {
        let p = MemPage::new();
        assert!(p.write(PAGE_SIZE - 1, &[1, 2]).is_err());
        assert!(p.read(usize::MAX, &mut [0]).is_err());
        assert!(p.write(PAGE_SIZE - 2, &[1, 2]).is_ok());
    }

    struct BrokenWriter;
    impl Write for BrokenWriter {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn broken_host_output_still_consumes_so_the_guest_never_stalls() {
        let p = page_at(0, 0);
        guest_write(&p, b"lost");
        let mut be = ConsoleBackend::new();
        assert!(matches!(
            be.drain_output(&p, &mut BrokenWriter),
            Err(ConsoleError::Output(_))
        ));
        assert_eq!(get(&p, OUT_CONS_OFFSET), 4);
        assert!(be.take_notify());
    }

    #[test]
    fn notify_flag_is_set_by_progress_and_cleared_by_take() {
        let p = page_at(0, 0);
        let mut be = ConsoleBackend::new();
        assert!(!be.notify_pending());
        be.push_input(&p, b"x").unwrap();
        assert!(be.notify_pending());
        assert!(be.take_notify());
        assert!(!be.take_notify());
        // Ring full: no progress, no notification.
        be.push_input(&p, &[0; IN_SIZE]).unwrap();
        be.take_notify();
        assert_eq!(be.push_input(&p, b"y").unwrap(), 0);
        assert!(!be.take_notify());
        guest_write(&p, b"z");
        be.drain_output(&p, &mut Vec::new()).unwrap();
        assert!(be.take_notify());
    }

    #[test]
    fn connect_marks_the_page_connected() {
        let p = MemPage::new();
        p.write(CONNECTION_OFFSET, &[XENCONSOLE_DISCONNECTED])
            .unwrap();
        ConsoleBackend::new().connect(&p).unwrap();
        let mut b = [0xffu8];
        p.read(CONNECTION_OFFSET, &mut b).unwrap();
        assert_eq!(b[0], XENCONSOLE_CONNECTED);
    }
}
