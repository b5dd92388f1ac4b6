//! Grant tables, version 1: the shared table model and the checked access kxen's own
//! backends (domain 0) use to reach pages a guest granted them.
//!
//! A v1 grant table is an array of 8-byte `struct grant_entry_v1 { u16 flags; u16 domid;
//! u32 frame; }` filling `nr_frames` consecutive frames that Xen owns and shares with the
//! guest (xen: public/grant_table.h). The guest writes `domid` and `frame`, then `flags`
//! (type [`GTF_PERMIT_ACCESS`], maybe [`GTF_READONLY`]); the hypervisor sets
//! [`GTF_READING`]/[`GTF_WRITING`] while the granted frame is in use, with a compare-exchange
//! of the combined `flags|domid` word, so a guest ending foreign access (its own
//! compare-exchange of the flags to 0 once neither bit is set) and the hypervisor never both
//! win. This module implements that protocol as Xen's `_set_status_v1` does: at most five
//! attempts against a guest that keeps changing the entry, then `GNTST_general_error`.
//!
//! Everything read from the table is hostile: refs are bounds-checked against the current
//! table size, the granted frame against the frames the guest owns, copy ranges against the
//! page, and the table is only ever touched through [`GrantMemory`] (guest-physical
//! addresses, checked by the implementation), so a guest cannot make kxen reach outside its
//! memory, panic or loop.
//!
//! Active-entry bookkeeping (Xen's `active_grant_entry` pin counts) is host-private: which
//! domain holds the entry and how many read/write uses are outstanding. The first use of an
//! entry checks the shared flags; later read uses only check the pinning domain, as in Xen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use thiserror::Error;

/// A domain id.
pub type DomId = u16;
/// A grant reference (index into the table).
pub type GrantRef = u32;

/// Size of a page / frame.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a v1 entry.
pub const ENTRY_SIZE: u64 = 8;
/// v1 entries per table frame.
pub const ENTRIES_PER_FRAME: u32 = (PAGE_SIZE / ENTRY_SIZE) as u32;
/// Offset of `flags` (u16) in an entry.
pub const FLAGS_OFFSET: u64 = 0;
/// Offset of `domid` (u16) in an entry.
pub const DOMID_OFFSET: u64 = 2;
/// Offset of `frame` (u32) in an entry.
pub const FRAME_OFFSET: u64 = 4;

// xen: public/grant_table.h, GTF_* (entry type in bits 0-1, then subflags)
/// Entry type: grants nothing.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map/access `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: `domid` may transfer a frame to the granting guest.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: transitive grant (v2 only; refused in a v1 table).
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the entry type.
pub const GTF_TYPE_MASK: u16 = 3;
/// permit_access: read-only access only. [guest]
pub const GTF_READONLY: u16 = 1 << 2;
/// permit_access: in use for reading. [hypervisor]
pub const GTF_READING: u16 = 1 << 3;
/// permit_access: in use for writing. [hypervisor]
pub const GTF_WRITING: u16 = 1 << 4;
/// permit_access: cache attribute PWT. [guest]
pub const GTF_PWT: u16 = 1 << 5;
/// permit_access: cache attribute PCD. [guest]
pub const GTF_PCD: u16 = 1 << 6;
/// permit_access: cache attribute PAT. [guest]
pub const GTF_PAT: u16 = 1 << 7;
/// permit_access: sub-page grant (v2 only: a v1 entry with it cannot be mapped).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// accept_transfer: the hypervisor committed to a transfer. [hypervisor]
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// accept_transfer: the transferred frame number is in `frame`. [hypervisor]
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

// xen: public/grant_table.h, GNTST_* (all errors negative)
/// Success.
pub const GNTST_OKAY: i16 = 0;
/// General undefined error.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// Unrecognised domain id.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// Unrecognised or inappropriate grant ref.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// Unrecognised or inappropriate handle.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// Inappropriate virtual address to map.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// Inappropriate device address to unmap.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// Out of space in the I/O MMU.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// Not enough privilege for the operation.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// Specified page was invalid for the operation.
pub const GNTST_BAD_PAGE: i16 = -9;
/// Copy arguments cross a page boundary.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// Transfer page address too large.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// Operation not done; try again.
pub const GNTST_EAGAIN: i16 = -12;

/// Table frames a domain starts with (xen: include/xen/grant_table.h, INITIAL_NR_GRANT_FRAMES).
pub const INITIAL_NR_GRANT_FRAMES: u32 = 1;
/// Entries reserved for the toolstack (xenstore, console) at the start of the table
/// (xen: public/grant_table.h GNTTAB_NR_RESERVED_ENTRIES).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// How often the flags compare-exchange is retried against a guest that keeps changing the
/// entry before giving up (xen: common/grant_table.c, _set_status_v1: five attempts).
const CMPXCHG_ATTEMPTS: u32 = 5;
/// A pin count at this value refuses more uses (xen: the 0x80 bit of each 8-bit pin field).
const PIN_LIMIT: u32 = 0x80;

/// Guest-physical memory as the grant table sees it. Addresses are guest-physical (kxen's
/// PV guests are identity-mapped, so a frame number is a machine frame too). Every method
/// fails cleanly (never panics) for addresses outside the guest's memory; the atomic
/// methods are only called with naturally aligned addresses.
pub trait GrantMemory {
    /// The accessor's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether `frame` is a frame of the granting domain that may be granted.
    fn is_grantable_frame(&self, frame: u64) -> bool;

    /// One atomic 32-bit load at `gpa` (4-byte aligned).
    fn load_u32(&self, gpa: u64) -> Result<u32, Self::Error>;

    /// One atomic 32-bit compare-exchange at `gpa` (4-byte aligned): `Ok(Ok(current))` when
    /// it stored `new`, `Ok(Err(actual))` when the value was `actual` instead.
    fn compare_exchange_u32(
        &self,
        gpa: u64,
        current: u32,
        new: u32,
    ) -> Result<Result<u32, u32>, Self::Error>;

    /// Atomically clear `mask` bits of the 16-bit value at `gpa` (2-byte aligned).
    fn fetch_and_u16(&self, gpa: u64, mask: u16) -> Result<u16, Self::Error>;

    /// Atomically set `bits` in the 16-bit value at `gpa` (2-byte aligned).
    fn fetch_or_u16(&self, gpa: u64, bits: u16) -> Result<u16, Self::Error>;

    /// Copy bytes out of guest memory.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Copy bytes into guest memory.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), Self::Error>;
}

/// Why a grant operation failed; [`GrantError::status`] is Xen's `GNTST_*` for it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// The ref is beyond the table's current size.
    #[error("grant ref {0:#x} is beyond the table")]
    BadGntref(GrantRef),
    /// The entry does not grant this access: wrong type, wrong domain, read-only entry for a
    /// write, a sub-page or transitive entry where a v1 mapping needs a full page, or an entry
    /// the guest kept changing. Xen reports every one of these as `GNTST_general_error`.
    #[error("grant ref {gref:#x}: {why}")]
    Refused {
        /// The ref.
        gref: GrantRef,
        /// What was wrong.
        why: &'static str,
    },
    /// The granted frame is not a frame of the granting domain.
    #[error("grant ref {gref:#x} names frame {frame:#x}, not the guest's")]
    BadPage {
        /// The ref.
        gref: GrantRef,
        /// The frame the entry named.
        frame: u64,
    },
    /// A copy range reaches beyond the page.
    #[error("copy of {len} bytes at offset {offset} crosses the page boundary")]
    BadCopyArg {
        /// Offset in the page.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A write through a read-only mapping.
    #[error("write through a read-only mapping of grant ref {0:#x}")]
    ReadOnlyMapping(GrantRef),
    /// The mapping given to `release` is not held.
    #[error("grant ref {0:#x} is not mapped by this domain")]
    NotMapped(GrantRef),
    /// Guest memory could not be accessed.
    #[error("guest memory access failed: {0}")]
    Memory(String),
}

impl GrantError {
    /// The Xen `GNTST_*` status for this error.
    pub fn status(&self) -> i16 {
        match self {
            GrantError::BadGntref(_) => GNTST_BAD_GNTREF,
            GrantError::BadPage { .. } => GNTST_BAD_PAGE,
            GrantError::BadCopyArg { .. } => GNTST_BAD_COPY_ARG,
            GrantError::Refused { .. }
            | GrantError::ReadOnlyMapping(_)
            | GrantError::NotMapped(_)
            | GrantError::Memory(_) => GNTST_GENERAL_ERROR,
        }
    }
}

fn mem_err<E: std::error::Error>(e: E) -> GrantError {
    GrantError::Memory(e.to_string())
}

/// A granted frame in use by a backend: returned by [`GrantTable::access`], given back to
/// [`GrantTable::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantMapping {
    /// The grant ref.
    pub gref: GrantRef,
    /// The domain using it.
    pub domid: DomId,
    /// The granted frame (guest-physical = machine frame number).
    pub frame: u64,
    /// Whether writes are allowed.
    pub writable: bool,
}

impl GrantMapping {
    /// Guest-physical address of byte `offset` of the granted page.
    pub fn gpa(&self, offset: u64) -> u64 {
        self.frame * PAGE_SIZE + offset
    }

    fn range(&self, offset: u64, len: usize) -> Result<u64, GrantError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= PAGE_SIZE => Ok(self.gpa(offset)),
            _ => Err(GrantError::BadCopyArg { offset, len }),
        }
    }

    /// Read from the granted page.
    pub fn read<M: GrantMemory>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GrantError> {
        let gpa = self.range(offset, buf.len())?;
        mem.read(gpa, buf).map_err(mem_err)
    }

    /// Write to the granted page (a writable mapping only).
    pub fn write<M: GrantMemory>(
        &self,
        mem: &M,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GrantError> {
        if !self.writable {
            return Err(GrantError::ReadOnlyMapping(self.gref));
        }
        let gpa = self.range(offset, data.len())?;
        mem.write(gpa, data).map_err(mem_err)
    }
}

/// Host-private state of an entry in use (xen: struct active_grant_entry, host pins only).
#[derive(Debug, Clone, Copy)]
struct Active {
    domid: DomId,
    frame: u64,
    readers: u32,
    writers: u32,
}

/// A domain's v1 grant table.
#[derive(Debug)]
pub struct GrantTable {
    /// Machine frame of the first table frame; the table's frames are consecutive.
    base_frame: u64,
    /// The most frames the table may grow to.
    max_frames: u32,
    /// Frames currently in use (grown by `GNTTABOP_setup_table`).
    nr_frames: AtomicU32,
    /// Entries in use by backends, by ref.
    active: Mutex<HashMap<GrantRef, Active>>,
}

impl GrantTable {
    /// A table whose frames are `base_frame .. base_frame + max_frames`, starting with
    /// [`INITIAL_NR_GRANT_FRAMES`] frames in use. The frames must be zeroed by the caller.
    pub fn new(base_frame: u64, max_frames: u32) -> Self {
        let max_frames = max_frames.max(INITIAL_NR_GRANT_FRAMES);
        GrantTable {
            base_frame,
            max_frames,
            nr_frames: AtomicU32::new(INITIAL_NR_GRANT_FRAMES),
            active: Mutex::new(HashMap::new()),
        }
    }

    /// The table version (kxen implements v1 only).
    pub fn version(&self) -> u32 {
        1
    }

    /// Frames in use.
    pub fn nr_frames(&self) -> u32 {
        self.nr_frames.load(Ordering::Acquire)
    }

    /// The most frames the table may have.
    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Entries in the table now.
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames().saturating_mul(ENTRIES_PER_FRAME)
    }

    /// Machine frame of table frame `i` (`None` beyond the maximum).
    pub fn frame(&self, i: u32) -> Option<u64> {
        (i < self.max_frames).then(|| self.base_frame + u64::from(i))
    }

    /// Grow the table to at least `nr` frames (`GNTTABOP_setup_table`); never shrinks.
    /// `Err(max)` when `nr` is beyond the maximum.
    // xen: common/grant_table.c, gnttab_setup_table / gnttab_grow_table
    pub fn grow(&self, nr: u32) -> Result<u32, u32> {
        if nr > self.max_frames {
            return Err(self.max_frames);
        }
        Ok(self.nr_frames.fetch_max(nr, Ordering::AcqRel).max(nr))
    }

    /// Guest-physical address of entry `gref`, if it is in the current table.
    pub fn entry_gpa(&self, gref: GrantRef) -> Result<u64, GrantError> {
        if gref >= self.nr_entries() {
            return Err(GrantError::BadGntref(gref));
        }
        Ok(self.base_frame * PAGE_SIZE + u64::from(gref) * ENTRY_SIZE)
    }

    /// Read entry `gref` as (flags, domid, frame) (no side effects; for inspection).
    pub fn read_entry<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
    ) -> Result<(u16, DomId, u32), GrantError> {
        let gpa = self.entry_gpa(gref)?;
        let combo = mem.load_u32(gpa).map_err(mem_err)?;
        let frame = mem.load_u32(gpa + FRAME_OFFSET).map_err(mem_err)?;
        Ok((combo as u16, (combo >> 16) as DomId, frame))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantRef, Active>> {
        match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Set `GTF_reading` (and `GTF_writing` for a write) on the entry after checking its type
    /// and domain, with Xen's bounded compare-exchange loop.
    // xen: common/grant_table.c, _set_status_v1
    fn set_status<M: GrantMemory>(
        mem: &M,
        gpa: u64,
        gref: GrantRef,
        domid: DomId,
        write: bool,
        check_entry: bool,
        map: bool,
    ) -> Result<(), GrantError> {
        let mut type_mask = GTF_TYPE_MASK;
        if map {
            // A v1 mapping needs a whole page: an entry with GTF_sub_page is refused.
            type_mask |= GTF_SUB_PAGE;
        }
        let mut combo = mem.load_u32(gpa).map_err(mem_err)?;
        let mut attempt = 0;
        loop {
            let flags = combo as u16;
            let edomid = (combo >> 16) as DomId;
            if check_entry && (flags & type_mask != GTF_PERMIT_ACCESS || edomid != domid) {
                return Err(GrantError::Refused {
                    gref,
                    why: "entry does not permit access to this domain",
                });
            }
            let mut new = flags | GTF_READING;
            if write {
                if flags & GTF_READONLY != 0 {
                    return Err(GrantError::Refused {
                        gref,
                        why: "write access to a read-only grant",
                    });
                }
                new |= GTF_WRITING;
            }
            let new = (combo & 0xffff_0000) | u32::from(new);
            match mem.compare_exchange_u32(gpa, combo, new).map_err(mem_err)? {
                Ok(_) => return Ok(()),
                Err(actual) => {
                    attempt += 1;
                    if attempt >= CMPXCHG_ATTEMPTS {
                        return Err(GrantError::Refused {
                            gref,
                            why: "shared grant entry is unstable",
                        });
                    }
                    combo = actual;
                }
            }
        }
    }

    fn clear_flags<M: GrantMemory>(mem: &M, gpa: u64, bits: u16) -> Result<(), GrantError> {
        // xen: gnttab_clear_flags, an atomic clear of bits in the entry's flags
        mem.fetch_and_u16(gpa + FLAGS_OFFSET, !bits)
            .map(|_| ())
            .map_err(mem_err)
    }

    /// Start using granted frame `gref` on behalf of backend domain `domid` (kxen's backends
    /// are domain 0): checks the entry permits access to `domid` (and writes, for `write`),
    /// sets `GTF_reading`/`GTF_writing` so the guest sees the frame in use, and pins it until
    /// [`GrantTable::release`].
    // xen: common/grant_table.c, map_grant_ref / acquire_grant_for_copy (v1, host mapping)
    pub fn access<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        write: bool,
    ) -> Result<GrantMapping, GrantError> {
        self.acquire(mem, gref, domid, write, true)
    }

    /// Like [`GrantTable::access`] with `GNTTABOP_copy`'s rule: a v1 entry's `GTF_sub_page`
    /// bit does not matter for a copy. Release with [`GrantTable::release`].
    pub fn access_for_copy<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        write: bool,
    ) -> Result<GrantMapping, GrantError> {
        self.acquire(mem, gref, domid, write, false)
    }

    /// `GNTTABOP_swap_grant_ref`: swap two entries of the guest's own table; a status.
    // xen: common/grant_table.c, swap_grant_ref (bad_gntref, same ref is a no-op, eagain
    // while either is in use)
    pub fn swap<M: GrantMemory>(&self, mem: &M, a: GrantRef, b: GrantRef) -> i16 {
        let (Ok(ga), Ok(gb)) = (self.entry_gpa(a), self.entry_gpa(b)) else {
            return GNTST_BAD_GNTREF;
        };
        if a == b {
            return GNTST_OKAY;
        }
        let active = self.lock();
        if active.contains_key(&a) || active.contains_key(&b) {
            return GNTST_EAGAIN;
        }
        let mut ea = [0u8; ENTRY_SIZE as usize];
        let mut eb = [0u8; ENTRY_SIZE as usize];
        let r = mem
            .read(ga, &mut ea)
            .and_then(|()| mem.read(gb, &mut eb))
            .and_then(|()| mem.write(ga, &eb))
            .and_then(|()| mem.write(gb, &ea));
        match r {
            Ok(()) => GNTST_OKAY,
            Err(_) => GNTST_GENERAL_ERROR,
        }
    }

    fn acquire<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        write: bool,
        map: bool,
    ) -> Result<GrantMapping, GrantError> {
        let gpa = self.entry_gpa(gref)?;
        let mut active = self.lock();
        let pinned = active.get(&gref).copied();
        if let Some(a) = pinned {
            if a.domid != domid || a.readers >= PIN_LIMIT || a.writers >= PIN_LIMIT {
                return Err(GrantError::Refused {
                    gref,
                    why: "entry pinned by another domain, or too many uses",
                });
            }
        }
        let need_status = match pinned {
            None => true,
            Some(a) => write && a.writers == 0,
        };
        if need_status {
            Self::set_status(mem, gpa, gref, domid, write, pinned.is_none(), map)?;
        }
        let frame = match pinned {
            Some(a) => a.frame,
            None => {
                let frame = match mem.load_u32(gpa + FRAME_OFFSET) {
                    Ok(f) => u64::from(f),
                    Err(e) => {
                        let bits = if write {
                            GTF_READING | GTF_WRITING
                        } else {
                            GTF_READING
                        };
                        let _ = Self::clear_flags(mem, gpa, bits);
                        return Err(mem_err(e));
                    }
                };
                if !mem.is_grantable_frame(frame) {
                    // xen: get_paged_frame fails -> GNTST_bad_page; the status bits just
                    // set are cleared again (nothing else holds the entry).
                    let bits = if write {
                        GTF_READING | GTF_WRITING
                    } else {
                        GTF_READING
                    };
                    Self::clear_flags(mem, gpa, bits)?;
                    return Err(GrantError::BadPage { gref, frame });
                }
                frame
            }
        };
        let a = active.entry(gref).or_insert(Active {
            domid,
            frame,
            readers: 0,
            writers: 0,
        });
        if write {
            a.writers += 1;
        } else {
            a.readers += 1;
        }
        Ok(GrantMapping {
            gref,
            domid,
            frame,
            writable: write,
        })
    }

    /// Stop using a mapping from [`GrantTable::access`]: the last writer clears `GTF_writing`,
    /// the last user clears `GTF_reading` (the guest may then end foreign access).
    // xen: common/grant_table.c, unmap_common_complete / release_grant_for_copy
    pub fn release<M: GrantMemory>(&self, mem: &M, m: &GrantMapping) -> Result<(), GrantError> {
        let gpa = self
            .entry_gpa(m.gref)
            .map_err(|_| GrantError::NotMapped(m.gref))?;
        let mut active = self.lock();
        let Some(a) = active.get_mut(&m.gref) else {
            return Err(GrantError::NotMapped(m.gref));
        };
        if a.domid != m.domid {
            return Err(GrantError::NotMapped(m.gref));
        }
        let mut clear = 0;
        if m.writable {
            if a.writers == 0 {
                return Err(GrantError::NotMapped(m.gref));
            }
            a.writers -= 1;
            if a.writers == 0 {
                clear |= GTF_WRITING;
            }
        } else {
            if a.readers == 0 {
                return Err(GrantError::NotMapped(m.gref));
            }
            a.readers -= 1;
        }
        if a.readers == 0 && a.writers == 0 {
            clear |= GTF_READING;
            active.remove(&m.gref);
        }
        if clear != 0 {
            Self::clear_flags(mem, gpa, clear)?;
        }
        Ok(())
    }

    /// Whether `gref` is in use by a backend (pinned).
    pub fn is_pinned(&self, gref: GrantRef) -> bool {
        self.lock().contains_key(&gref)
    }

    /// `GNTTABOP_copy` from a granted frame into `buf` for backend `domid`. The entry is
    /// pinned for reading for the duration of the copy, as Xen does.
    // xen: common/grant_table.c, gnttab_copy_claim_buf / gnttab_copy_buf
    pub fn copy_from<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GrantError> {
        let m = self.acquire(mem, gref, domid, false, false)?;
        let r = m.read(mem, offset, buf);
        self.release(mem, &m)?;
        r
    }

    /// `GNTTABOP_copy` from `data` into a granted frame for backend `domid` (needs a writable
    /// grant).
    pub fn copy_to<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GrantError> {
        let m = self.acquire(mem, gref, domid, true, false)?;
        let r = m.write(mem, offset, data);
        self.release(mem, &m)?;
        r
    }

    /// Commit to transferring a frame into entry `gref` from domain `domid`: the entry must be
    /// exactly `GTF_accept_transfer` for `domid`; sets `GTF_transfer_committed`.
    // xen: common/grant_table.c, gnttab_prepare_for_transfer
    pub fn prepare_transfer<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
    ) -> Result<(), GrantError> {
        let gpa = self.entry_gpa(gref)?;
        let mut combo = mem.load_u32(gpa).map_err(mem_err)?;
        for _ in 0..CMPXCHG_ATTEMPTS {
            let flags = combo as u16;
            if flags != GTF_ACCEPT_TRANSFER || (combo >> 16) as DomId != domid {
                return Err(GrantError::Refused {
                    gref,
                    why: "entry does not accept a transfer from this domain",
                });
            }
            let new = combo | u32::from(GTF_TRANSFER_COMMITTED);
            match mem.compare_exchange_u32(gpa, combo, new).map_err(mem_err)? {
                Ok(_) => return Ok(()),
                Err(actual) => combo = actual,
            }
        }
        Err(GrantError::Refused {
            gref,
            why: "shared grant entry is unstable",
        })
    }

    /// Finish a transfer into a committed entry: write the new frame, then set
    /// `GTF_transfer_completed` (the guest spins on it).
    pub fn complete_transfer<M: GrantMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        frame: u32,
    ) -> Result<(), GrantError> {
        let gpa = self.entry_gpa(gref)?;
        mem.write(gpa + FRAME_OFFSET, &frame.to_le_bytes())
            .map_err(mem_err)?;
        std::sync::atomic::fence(Ordering::Release);
        mem.fetch_or_u16(gpa + FLAGS_OFFSET, GTF_TRANSFER_COMPLETED)
            .map(|_| ())
            .map_err(mem_err)
    }
}

#[cfg(test)]
mod tests;
