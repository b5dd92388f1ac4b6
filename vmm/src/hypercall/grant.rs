//! `grant_table_op` (hypercall 20): grant tables v1 for a PV guest.
//!
//! The table itself (entries, the GTF flag protocol, backend access) is
//! [`kxen_devices::grant`]; this module is the guest-facing ABI: the `GNTTABOP_*` argument
//! layouts, their count/batch semantics and Xen's statuses and errnos.
//!
//! kxen runs one guest. Its own domain id is 0 when launched privileged (it is dom0) and 1
//! otherwise (the first domU under xl); kxen's backends act as domain 0. Operations that need
//! a second guest (mapping or transferring another domain's grants) get the status Xen gives
//! when that domain does not exist; kxen has no maptrack, so every unmap handle is bad.
// xen: common/grant_table.c, do_grant_table_op and the gnttab_* helpers it calls;
// public/grant_table.h for the layouts.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use kxen_devices::grant::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};
use xen_abi::errno::{EACCES, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ESRCH};
use xen_abi::hypercall as nr;
use xen_abi::memory::{XenAddToPhysmap, XENMAPSPACE_GMFN_FOREIGN};
use xen_abi::mmu::DOMID_SELF;

use super::{err, uint, HypercallArgs, HypercallCtx, EFAULT};
use crate::domain::DomainShared;
use crate::memory::{is_canonical, GuestRam, XEN_RESERVED_END, XEN_RESERVED_START};

// xen: public/grant_table.h, GNTTABOP_*
/// Map a grant ref.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// Unmap a grant mapping.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// Set up (grow) the table and return its frames.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// Dump the table (not in Xen's dispatch any more: -ENOSYS).
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// Transfer a frame.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// Hypervisor copy.
pub const GNTTABOP_COPY: u32 = 5;
/// Current and maximum table size.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// Unmap and replace a mapping.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// Choose the table version.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// v2 status frames.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// The table version.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// Swap two entries.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// Cache maintenance on a granted frame.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

/// `GNTMAP_device_map`.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTCOPY_source_gref`.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;
/// `GNTTAB_CACHE_CLEAN`.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// `GNTTAB_CACHE_INVAL`.
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
/// `GNTTAB_CACHE_SOURCE_GREF`.
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// Bits of the command word that select the op; the rest is a continuation argument only
/// `cache_flush` may carry (xen: GNTTABOP_CONTINUATION_ARG_SHIFT 12).
const CMD_MASK: u32 = (1 << 12) - 1;

// Sizes and field offsets of the op structures (64-bit guest layouts).
const MAP_SIZE: u64 = 32; // host_addr, flags, ref, dom, status@18, handle, dev_bus_addr
const UNMAP_SIZE: u64 = 24; // host_addr, dev_bus_addr|new_addr, handle, status@20
const UNMAP_STATUS: u64 = 20;
const SETUP_SIZE: u64 = 24; // dom@0, nr_frames@4, status@8, frame_list@16
const TRANSFER_SIZE: u64 = 24; // mfn@0, domid@8, ref@12, status@16
const COPY_SIZE: u64 = 40; // source{u@0,domid@8,offset@10} dest{u@16,domid@24,offset@26} len@32 flags@34 status@36
const STATUS_FRAMES_SIZE: u64 = 16; // nr_frames@0, dom@4, status@6, frame_list@8
const SWAP_SIZE: u64 = 12; // ref_a@0, ref_b@4, status@8
const CACHE_FLUSH_SIZE: u64 = 16; // a@0, offset@8, length@10, op@12

/// Ops handled per hypercall before a continuation (Xen preempts long batches likewise).
const BATCH: u32 = 256;

/// kxen's backends act as this domain.
pub const BACKEND_DOMID: DomId = 0;

/// The guest's own domain id: 0 for a privileged launch, else 1.
pub fn own_domid(d: &DomainShared) -> DomId {
    if d.privileged() {
        0
    } else {
        1
    }
}

/// What a domain id names, from the calling guest's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dom {
    /// The caller.
    Own,
    /// kxen's backend domain (0), for an unprivileged caller.
    Backend,
    /// No such domain.
    Missing,
}

/// `rcu_lock_domain_by_any_id`: DOMID_SELF or the caller's id is the caller.
fn lookup_any(d: &DomainShared, dom: DomId) -> Dom {
    if dom == DOMID_SELF || dom == own_domid(d) {
        Dom::Own
    } else if dom == BACKEND_DOMID {
        Dom::Backend
    } else {
        Dom::Missing
    }
}

/// Guest RAM as [`GrantMemory`]: the VM's whole RAM slot (guest frames and the frames shared
/// with it); atomics through `vm_memory`'s checked atomic references.
#[derive(Debug, Clone, Copy)]
pub struct GuestGrantMem<'a>(pub &'a GuestRam);

/// A failed access to guest memory on behalf of the grant table.
#[derive(Debug, thiserror::Error)]
#[error("guest memory at {gpa:#x}: {why}")]
pub struct GrantMemError {
    gpa: u64,
    why: String,
}

impl GuestGrantMem<'_> {
    fn with_atomic<T: vm_memory::AtomicInteger, R>(
        &self,
        gpa: u64,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, GrantMemError> {
        let e = |why: String| GrantMemError { gpa, why };
        let slice = self
            .0
            .mem()
            .get_slice(GuestAddress(gpa), std::mem::size_of::<T>())
            .map_err(|x| e(x.to_string()))?;
        let a = slice.get_atomic_ref::<T>(0).map_err(|x| e(x.to_string()))?;
        Ok(f(a))
    }
}

impl GrantMemory for GuestGrantMem<'_> {
    type Error = GrantMemError;
    fn is_grantable_frame(&self, frame: u64) -> bool {
        self.0.is_valid_pfn(frame)
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, GrantMemError> {
        self.with_atomic::<AtomicU32, _>(gpa, |a| a.load(Ordering::Acquire))
    }
    fn compare_exchange_u32(
        &self,
        gpa: u64,
        current: u32,
        new: u32,
    ) -> Result<Result<u32, u32>, GrantMemError> {
        self.with_atomic::<AtomicU32, _>(gpa, |a| {
            a.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
        })
    }
    fn fetch_and_u16(&self, gpa: u64, mask: u16) -> Result<u16, GrantMemError> {
        self.with_atomic::<AtomicU16, _>(gpa, |a| a.fetch_and(mask, Ordering::AcqRel))
    }
    fn fetch_or_u16(&self, gpa: u64, bits: u16) -> Result<u16, GrantMemError> {
        self.with_atomic::<AtomicU16, _>(gpa, |a| a.fetch_or(bits, Ordering::AcqRel))
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GrantMemError> {
        self.0
            .mem()
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|x| GrantMemError {
                gpa,
                why: x.to_string(),
            })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GrantMemError> {
        self.0
            .mem()
            .write_slice(data, GuestAddress(gpa))
            .map_err(|x| GrantMemError {
                gpa,
                why: x.to_string(),
            })
    }
}

/// Xen's `guest_handle_okay` for a 64-bit PV guest (`array_access_ok`): the byte count does
/// not overflow and the *start* is a guest address (canonical, outside the hypervisor's
/// range). Later elements are checked when they are accessed (-EFAULT, or a status).
// xen: arch/x86/include/asm/x86_64/uaccess.h, __addr_ok / access_ok / array_access_ok
fn handle_okay(va: u64, count: u64, size: u64) -> bool {
    count.checked_mul(size).is_some()
        && is_canonical(va)
        && !(XEN_RESERVED_START..XEN_RESERVED_END).contains(&va)
}

fn rd<T: vm_memory::ByteValued>(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<T, i64> {
    ctx.read_obj(va)
}

/// `HYPERVISOR_grant_table_op(cmd, uop, count)`.
pub fn grant_table_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let full = uint(a.a[0]);
    let uop = a.a[1];
    let count = uint(a.a[2]);
    // xen: a negative (int) count is refused; only cache_flush carries bits above the op.
    if (count as i32) < 0 {
        return err(EINVAL);
    }
    let cmd = full & CMD_MASK;
    if cmd != GNTTABOP_CACHE_FLUSH && full & !CMD_MASK != 0 {
        return err(EINVAL);
    }
    let batched = |size: u64| handle_okay(uop, u64::from(count), size);
    match cmd {
        GNTTABOP_MAP_GRANT_REF => {
            if !batched(MAP_SIZE) {
                return -EFAULT;
            }
            batch(ctx, cmd, uop, count, MAP_SIZE, map_one)
        }
        GNTTABOP_UNMAP_GRANT_REF | GNTTABOP_UNMAP_AND_REPLACE => {
            if !batched(UNMAP_SIZE) {
                return -EFAULT;
            }
            batch(ctx, cmd, uop, count, UNMAP_SIZE, unmap_one)
        }
        GNTTABOP_SETUP_TABLE => setup_table(ctx, uop, count),
        GNTTABOP_TRANSFER => {
            if !batched(TRANSFER_SIZE) {
                return -EFAULT;
            }
            batch(ctx, cmd, uop, count, TRANSFER_SIZE, transfer_one)
        }
        GNTTABOP_COPY => {
            if !batched(COPY_SIZE) {
                return -EFAULT;
            }
            batch(ctx, cmd, uop, count, COPY_SIZE, copy_one)
        }
        GNTTABOP_QUERY_SIZE => query_size(ctx, uop, count),
        GNTTABOP_SET_VERSION => set_version(ctx, uop),
        GNTTABOP_GET_STATUS_FRAMES => get_status_frames(ctx, uop, count),
        GNTTABOP_GET_VERSION => get_version(ctx, uop),
        GNTTABOP_SWAP_GRANT_REF => {
            if !batched(SWAP_SIZE) {
                return -EFAULT;
            }
            batch(ctx, cmd, uop, count, SWAP_SIZE, swap_one)
        }
        GNTTABOP_CACHE_FLUSH => {
            if !batched(CACHE_FLUSH_SIZE) {
                return -EFAULT;
            }
            batch(ctx, full, uop, count, CACHE_FLUSH_SIZE, cache_flush_one)
        }
        _ => err(ENOSYS),
    }
}

/// One element of a batched op: `Err(-errno)` ends the whole call with that value.
type OneFn = fn(&HypercallCtx<'_, DomainShared>, u64) -> Result<(), i64>;

/// Run `one` over `count` elements of `size` bytes at `uop`, `BATCH` at a time with a
/// continuation in between, as Xen's preemptible loops do (inside a multicall, where kxen
/// makes no continuations, all of them; every element must be readable guest memory).
fn batch(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    cmd: u32,
    uop: u64,
    count: u32,
    size: u64,
    one: OneFn,
) -> i64 {
    let n = if ctx.in_multicall {
        count
    } else {
        count.min(BATCH)
    };
    for i in 0..n {
        let va = uop.wrapping_add(u64::from(i) * size);
        if let Err(e) = one(ctx, va) {
            return e;
        }
    }
    if n < count {
        let next = uop.wrapping_add(u64::from(n) * size);
        ctx.continuation(
            nr::GRANT_TABLE_OP,
            [u64::from(cmd), next, u64::from(count - n), 0, 0],
        );
    }
    0
}

fn put_status(ctx: &HypercallCtx<'_, DomainShared>, va: u64, st: i16) -> Result<(), i64> {
    ctx.write_obj(va, &st)
}

/// `GNTTABOP_map_grant_ref`: kxen has no other guest whose grants could be mapped and does
/// not support mapping the caller's own grants (Xen would, through its page tables).
// xen: map_grant_ref: no host/device flag -> bad_gntref; unknown domain -> bad_domain.
fn map_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let mut op = [0u8; MAP_SIZE as usize];
    ctx.copy_from_guest(va, &mut op)?;
    let flags = u32::from_le_bytes([op[8], op[9], op[10], op[11]]);
    let dom = u16::from_le_bytes([op[16], op[17]]);
    let st = if flags & (GNTMAP_DEVICE_MAP | GNTMAP_HOST_MAP) == 0 {
        GNTST_BAD_GNTREF
    } else {
        match lookup_by_id(ctx.domain, dom) {
            // The backend domain grants nothing to guests: every ref is unusable.
            Some(Dom::Backend) => GNTST_GENERAL_ERROR,
            Some(_) => {
                tracing::debug!("grant map of the caller's own grant: not supported by kxen");
                GNTST_GENERAL_ERROR
            }
            None => GNTST_BAD_DOMAIN,
        }
    };
    op[18..20].copy_from_slice(&st.to_le_bytes());
    ctx.copy_to_guest(va, &op)
}

/// `rcu_lock_domain_by_id` (no DOMID_SELF): the caller's real id or the backend domain.
fn lookup_by_id(d: &DomainShared, dom: DomId) -> Option<Dom> {
    if dom == DOMID_SELF {
        None
    } else {
        match lookup_any(d, dom) {
            Dom::Missing => None,
            x => Some(x),
        }
    }
}

/// `GNTTABOP_unmap_grant_ref` / `unmap_and_replace`: no maptrack entries exist.
fn unmap_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let _: [u8; UNMAP_SIZE as usize] = rd(ctx, va)?;
    put_status(ctx, va + UNMAP_STATUS, GNTST_BAD_HANDLE)
}

/// `GNTTABOP_transfer`: a frame that is not the caller's is bad_page; kxen never takes pages
/// away from a guest, so a transfer to any domain fails as one to a missing domain does.
fn transfer_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let mfn: u64 = rd(ctx, va)?;
    let st = if mfn >= ctx.domain.nr_pages {
        GNTST_BAD_PAGE
    } else {
        GNTST_BAD_DOMAIN
    };
    put_status(ctx, va + 16, st)
}

/// One side of a copy, claimed.
struct Buf {
    frame: u64,
    mapping: Option<GrantMapping>,
}

fn claim(
    ctx: &HypercallCtx<'_, DomainShared>,
    u: u64,
    dom: Dom,
    gref: bool,
    write: bool,
) -> Result<Buf, i16> {
    let mem = GuestGrantMem(ctx.ram());
    if gref {
        let r = u as u32;
        match dom {
            Dom::Own => {
                let m = ctx
                    .domain
                    .grant_table
                    .access_for_copy(&mem, r, own_domid(ctx.domain), write)
                    .map_err(|e| e.status())?;
                Ok(Buf {
                    frame: m.frame,
                    mapping: Some(m),
                })
            }
            // The backend domain's table has one frame of invalid entries.
            _ if r >= ENTRIES_PER_FRAME => Err(GNTST_BAD_GNTREF),
            _ => Err(GNTST_GENERAL_ERROR),
        }
    } else if u < ctx.ram().nr_pages() {
        Ok(Buf {
            frame: u,
            mapping: None,
        })
    } else {
        Err(GNTST_BAD_PAGE)
    }
}

fn unclaim(ctx: &HypercallCtx<'_, DomainShared>, b: &Buf) {
    if let Some(m) = &b.mapping {
        let _ = ctx.domain.grant_table.release(&GuestGrantMem(ctx.ram()), m);
    }
}

/// `GNTTABOP_copy` for one element.
// xen: gnttab_copy_one (lock domains, claim source, claim dest, bounds, copy).
fn copy_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let mut op = [0u8; COPY_SIZE as usize];
    ctx.copy_from_guest(va, &mut op)?;
    let u64at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&op[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let u16at = |o: usize| u16::from_le_bytes([op[o], op[o + 1]]);
    let (su, sdom, soff) = (u64at(0), u16at(8), u16at(10));
    let (du, ddom, doff) = (u64at(16), u16at(24), u16at(26));
    let (len, flags) = (u16at(32), u16at(34));
    let st = copy_status(ctx, (su, sdom, soff), (du, ddom, doff), len, flags);
    put_status(ctx, va + 36, st)
}

fn copy_status(
    ctx: &HypercallCtx<'_, DomainShared>,
    src: (u64, DomId, u16),
    dst: (u64, DomId, u16),
    len: u16,
    flags: u16,
) -> i16 {
    let sgref = flags & GNTCOPY_SOURCE_GREF != 0;
    let dgref = flags & GNTCOPY_DEST_GREF != 0;
    let lock = |dom: DomId, gref: bool| -> Result<Dom, i16> {
        // xen: gnttab_copy_lock_domain: only DOMID_SELF may name a frame directly.
        if dom != DOMID_SELF && !gref {
            return Err(GNTST_PERMISSION_DENIED);
        }
        match lookup_any(ctx.domain, dom) {
            Dom::Missing => Err(GNTST_BAD_DOMAIN),
            d => Ok(d),
        }
    };
    let sd = match lock(src.1, sgref) {
        Ok(d) => d,
        Err(s) => return s,
    };
    let dd = match lock(dst.1, dgref) {
        Ok(d) => d,
        Err(s) => return s,
    };
    let s = match claim(ctx, src.0, sd, sgref, false) {
        Ok(b) => b,
        Err(st) => return st,
    };
    let d = match claim(ctx, dst.0, dd, dgref, true) {
        Ok(b) => b,
        Err(st) => {
            unclaim(ctx, &s);
            return st;
        }
    };
    let page = kxen_devices::grant::PAGE_SIZE;
    let st = if u64::from(src.2) + u64::from(len) > page || u64::from(dst.2) + u64::from(len) > page
    {
        GNTST_BAD_COPY_ARG
    } else {
        let mem = ctx.ram().mem();
        let mut buf = vec![0u8; usize::from(len)];
        let from = s.frame * page + u64::from(src.2);
        let to = d.frame * page + u64::from(dst.2);
        match mem
            .read_slice(&mut buf, GuestAddress(from))
            .and_then(|()| mem.write_slice(&buf, GuestAddress(to)))
        {
            Ok(()) => GNTST_OKAY,
            Err(_) => GNTST_GENERAL_ERROR,
        }
    };
    unclaim(ctx, &d);
    unclaim(ctx, &s);
    st
}

/// `GNTTABOP_swap_grant_ref` for one element.
fn swap_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let refs: [u32; 2] = rd(ctx, va)?;
    let st = ctx
        .domain
        .grant_table
        .swap(&GuestGrantMem(ctx.ram()), refs[0], refs[1]);
    put_status(ctx, va + 8, st)
}

/// `GNTTABOP_cache_flush` for one element (x86: no cache maintenance is needed except
/// clean+invalidate, which a VMM's coherent memory gives; invalidate alone is unsupported).
// xen: cache_flush (common/grant_table.c); x86 invalidate_dcache_va_range is -EOPNOTSUPP.
fn cache_flush_one(ctx: &HypercallCtx<'_, DomainShared>, va: u64) -> Result<(), i64> {
    let raw: [u8; CACHE_FLUSH_SIZE as usize] = rd(ctx, va)?;
    let addr = u64::from_le_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    let offset = u32::from(u16::from_le_bytes([raw[8], raw[9]]));
    let length = u32::from(u16::from_le_bytes([raw[10], raw[11]]));
    let op = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    if offset >= 4096
        || length > 4096
        || offset + length > 4096
        || op & !(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN) != 0
    {
        return Err(err(EINVAL));
    }
    if length == 0 || op == 0 {
        return Ok(());
    }
    if op & GNTTAB_CACHE_SOURCE_GREF != 0 {
        return Err(err(EOPNOTSUPP));
    }
    let frame = addr >> 12;
    if !ctx.ram().is_valid_pfn(frame) {
        return Err(err(EINVAL));
    }
    if op == GNTTAB_CACHE_INVAL {
        return Err(err(EOPNOTSUPP));
    }
    Ok(())
}

/// `GNTTABOP_setup_table` (count must be 1).
fn setup_table(ctx: &mut HypercallCtx<'_, DomainShared>, uop: u64, count: u32) -> i64 {
    if count != 1 {
        return err(EINVAL);
    }
    let raw: [u8; SETUP_SIZE as usize] = match rd(ctx, uop) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let dom = u16::from_le_bytes([raw[0], raw[1]]);
    let nr_frames = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let mut fl = [0u8; 8];
    fl.copy_from_slice(&raw[16..24]);
    let frame_list = u64::from_le_bytes(fl);
    if !handle_okay(frame_list, u64::from(nr_frames), 8) {
        return -EFAULT;
    }
    let gt = &ctx.domain.grant_table;
    let st = match lookup_any(ctx.domain, dom) {
        Dom::Missing => GNTST_BAD_DOMAIN,
        Dom::Backend => GNTST_PERMISSION_DENIED,
        Dom::Own => match gt.grow(nr_frames) {
            Err(max) => {
                tracing::debug!(nr_frames, max, "setup_table beyond the maximum");
                GNTST_GENERAL_ERROR
            }
            Ok(_) => {
                let mut st = GNTST_OKAY;
                for i in 0..nr_frames {
                    let f = gt.frame(i).unwrap_or(0);
                    let va = frame_list.wrapping_add(u64::from(i) * 8);
                    if ctx.write_obj(va, &f).is_err() {
                        st = GNTST_BAD_VIRT_ADDR;
                    }
                }
                st
            }
        },
    };
    match put_status(ctx, uop + 8, st) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// `GNTTABOP_query_size` (count must be 1).
fn query_size(ctx: &mut HypercallCtx<'_, DomainShared>, uop: u64, count: u32) -> i64 {
    if count != 1 {
        return err(EINVAL);
    }
    let mut q: [u32; 4] = match rd(ctx, uop) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let dom = q[0] as u16;
    let gt = &ctx.domain.grant_table;
    let st = match lookup_any(ctx.domain, dom) {
        Dom::Missing => GNTST_BAD_DOMAIN,
        Dom::Backend => GNTST_PERMISSION_DENIED,
        Dom::Own => {
            q[1] = gt.nr_frames();
            q[2] = gt.max_frames();
            GNTST_OKAY
        }
    };
    q[3] = (q[3] & 0xffff_0000) | u32::from(st as u16);
    match ctx.write_obj(uop, &q) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// `GNTTABOP_set_version`: kxen is built as Xen with `gnttab=max-ver:1`: version 1 is
/// accepted (a no-op), 2 is -ENOSYS, anything else -EINVAL; the current version (1) is
/// written back in every case.
fn set_version(ctx: &mut HypercallCtx<'_, DomainShared>, uop: u64) -> i64 {
    let v: u32 = match rd(ctx, uop) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let res = match v {
        1 => 0,
        2 => err(ENOSYS),
        _ => err(EINVAL),
    };
    match ctx.write_obj(uop, &ctx.domain.grant_table.version()) {
        Ok(()) => res,
        Err(e) => e,
    }
}

/// `GNTTABOP_get_status_frames`: a v1 table has no status frames.
fn get_status_frames(ctx: &mut HypercallCtx<'_, DomainShared>, uop: u64, count: u32) -> i64 {
    if count != 1 {
        return err(EINVAL);
    }
    let raw: [u8; STATUS_FRAMES_SIZE as usize] = match rd(ctx, uop) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let nr_frames = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let dom = u16::from_le_bytes([raw[4], raw[5]]);
    let st = match lookup_any(ctx.domain, dom) {
        Dom::Missing => GNTST_BAD_DOMAIN,
        Dom::Backend => GNTST_PERMISSION_DENIED,
        Dom::Own if nr_frames > 0 => GNTST_GENERAL_ERROR,
        Dom::Own => GNTST_OKAY,
    };
    match put_status(ctx, uop + 6, st) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// `GNTTABOP_get_version`.
fn get_version(ctx: &mut HypercallCtx<'_, DomainShared>, uop: u64) -> i64 {
    let dom: u16 = match rd(ctx, uop) {
        Ok(d) => d,
        Err(e) => return e,
    };
    match lookup_any(ctx.domain, dom) {
        Dom::Missing => err(ESRCH),
        // xsm_grant_query_size (XSM_TARGET) refuses another domain to a domU.
        Dom::Backend => err(EPERM),
        Dom::Own => match ctx.write_obj(uop + 4, &ctx.domain.grant_table.version()) {
            Ok(()) => 0,
            Err(e) => e,
        },
    }
}

/// `XENMEM_add_to_physmap` for a PV guest: only translated guests have a physmap to add to.
// xen: common/memory.c, XENMEM_add_to_physmap -> xatp_permission_check: !translated -> -EACCES
pub fn add_to_physmap(ctx: &HypercallCtx<'_, DomainShared>, arg: u64) -> i64 {
    let xatp: XenAddToPhysmap = match ctx.read_pod(arg) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if xatp.space == XENMAPSPACE_GMFN_FOREIGN {
        return err(ENOSYS);
    }
    match lookup_any(ctx.domain, xatp.domid) {
        Dom::Missing => err(ESRCH),
        _ => err(EACCES),
    }
}

#[cfg(test)]
mod tests;
