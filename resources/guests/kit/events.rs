//! Event channels for kit guests: the vcpu_info moved into the guest's own memory
//! (VCPUOP_register_vcpu_info, as Linux does), the event callback (upcall) entry, EVTCHNOP
//! wrappers, the shared_info page when the VMM lets the guest map it, the console ring and a
//! minimal xenstore client over the xenstore ring.
//!
//! The upcall entry takes Xen's bounce frame without error code (rcx, r11, rip, cs, rflags,
//! rsp, ss), pushes a 0 error code and the pseudo-vector [`UPCALL_VECTOR`], and joins the
//! trap path (`kit_trap_common`), which calls [`upcall`] and returns with HYPERVISOR_iret
//! (restoring the event mask from the frame's IF, as Linux's `xen_iret` does).

#![allow(dead_code)]

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::abi::*;
use super::hypercall::{hypercall2, hypercall3};
use super::rt::Global;
use super::traps::TrapFrame;

/// The pseudo-vector the upcall entry pushes.
pub const UPCALL_VECTOR: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct AllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct BindInterdomain {
    pub remote_dom: u16,
    pub pad: u16,
    pub remote_port: u32,
    pub local_port: u32,
}
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct BindVirq {
    pub virq: u32,
    pub vcpu: u32,
    pub port: u32,
}
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct BindIpi {
    pub vcpu: u32,
    pub port: u32,
}
/// `evtchn_close`, `evtchn_send`, `evtchn_unmask`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PortArg {
    pub port: u32,
}
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Status {
    pub dom: u16,
    pub pad: u16,
    pub port: u32,
    pub status: u32,
    pub vcpu: u32,
    pub u0: u32,
    pub u1: u32,
}
/// `struct evtchn_op` for the compat hypercall: cmd, then the union at offset 4.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CompatOp {
    pub cmd: u32,
    pub u: [u32; 6],
}
#[repr(C)]
pub struct SchedPoll {
    pub ports: u64,
    pub nr_ports: u32,
    pub pad: u32,
    pub timeout: u64,
}

/// `event_channel_op(cmd, arg)` on a kit struct.
pub fn evtchn_op<T>(cmd: u32, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a writable struct of the layout `cmd` expects (the callers pair them).
    unsafe {
        hypercall2(
            HYPERVISOR_EVENT_CHANNEL_OP,
            u64::from(cmd),
            arg as *mut T as u64,
        )
    }
}

/// `event_channel_op(cmd, va)` with a raw pointer (hostile tests).
pub fn evtchn_op_raw(cmd: u32, va: u64) -> i64 {
    // SAFETY: the hypervisor must refuse a bad `va` with -EFAULT without touching the guest.
    unsafe { hypercall2(HYPERVISOR_EVENT_CHANNEL_OP, u64::from(cmd), va) }
}

/// `event_channel_op_compat(op)`.
pub fn evtchn_op_compat(op: &mut CompatOp) -> i64 {
    // SAFETY: `op` is a writable struct evtchn_op.
    unsafe { super::hypercall::hypercall1(HYPERVISOR_EVENT_CHANNEL_OP_COMPAT, op as *mut _ as u64) }
}

pub fn send(port: u32) -> i64 {
    evtchn_op(EVTCHNOP_SEND, &mut PortArg { port })
}
pub fn close(port: u32) -> i64 {
    evtchn_op(EVTCHNOP_CLOSE, &mut PortArg { port })
}
pub fn unmask(port: u32) -> i64 {
    evtchn_op(EVTCHNOP_UNMASK, &mut PortArg { port })
}
pub fn bind_ipi(vcpu: u32) -> Result<u32, i64> {
    let mut a = BindIpi { vcpu, port: 0 };
    match evtchn_op(EVTCHNOP_BIND_IPI, &mut a) {
        0 => Ok(a.port),
        e => Err(e),
    }
}
pub fn bind_virq(virq: u32, vcpu: u32) -> Result<u32, i64> {
    let mut a = BindVirq {
        virq,
        vcpu,
        port: 0,
    };
    match evtchn_op(EVTCHNOP_BIND_VIRQ, &mut a) {
        0 => Ok(a.port),
        e => Err(e),
    }
}
pub fn alloc_unbound(remote_dom: u16) -> Result<u32, i64> {
    let mut a = AllocUnbound {
        dom: DOMID_SELF,
        remote_dom,
        port: 0,
    };
    match evtchn_op(EVTCHNOP_ALLOC_UNBOUND, &mut a) {
        0 => Ok(a.port),
        e => Err(e),
    }
}
pub fn bind_interdomain(remote_dom: u16, remote_port: u32) -> Result<u32, i64> {
    let mut a = BindInterdomain {
        remote_dom,
        pad: 0,
        remote_port,
        local_port: 0,
    };
    match evtchn_op(EVTCHNOP_BIND_INTERDOMAIN, &mut a) {
        0 => Ok(a.local_port),
        e => Err(e),
    }
}
pub fn status(port: u32) -> Result<Status, i64> {
    let mut s = Status {
        dom: DOMID_SELF,
        port,
        ..Default::default()
    };
    match evtchn_op(EVTCHNOP_STATUS, &mut s) {
        0 => Ok(s),
        e => Err(e),
    }
}

/// SCHEDOP_block.
pub fn block() -> i64 {
    // SAFETY: SCHEDOP_block takes no argument.
    unsafe { super::hypercall::sched_op(SCHEDOP_BLOCK, 0) }
}

/// SCHEDOP_poll on `ports` with a timeout in ns (0 = none).
pub fn poll(ports: &[u32], timeout: u64) -> i64 {
    let p = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        pad: 0,
        timeout,
    };
    // SAFETY: `p` names `ports`, readable for its length.
    unsafe { super::hypercall::sched_op(SCHEDOP_POLL, &p as *const SchedPoll as u64) }
}

/// Any cheap hypercall: the hypervisor delivers a pending, unmasked upcall before it
/// returns (Linux's `xen_force_evtchn_callback`).
pub fn force_callback() {
    super::hypercall::xen_version_number();
}

// ---- vcpu_info -----------------------------------------------------------------------

/// The vcpu_info the kit registers: 64 bytes, 64-byte aligned, in the guest's own memory.
#[repr(C, align(64))]
pub struct VcpuInfoArea(pub [AtomicU64; 8]);
pub static VCPU_INFO: VcpuInfoArea = VcpuInfoArea([const { AtomicU64::new(0) }; 8]);

/// Guest frame of a kit virtual address (identity p2m, PADDR_OFFSET 0).
pub fn pfn_of(va: u64) -> u64 {
    (va - VIRT_BASE) >> 12
}

/// `VCPUOP_register_vcpu_info(vcpu, {mfn, offset})`.
pub fn register_vcpu_info_raw(vcpu: u64, mfn: u64, offset: u32) -> i64 {
    let arg: [u64; 2] = [mfn, u64::from(offset)];
    // SAFETY: `arg` is a readable struct vcpu_register_vcpu_info; the area it names is
    // either the kit's VCPU_INFO or one the hypervisor must refuse.
    unsafe {
        hypercall3(
            HYPERVISOR_VCPU_OP,
            VCPUOP_REGISTER_VCPU_INFO,
            vcpu,
            &arg as *const _ as u64,
        )
    }
}

/// Register [`VCPU_INFO`] for vCPU 0.
pub fn register_vcpu_info() -> i64 {
    let va = &VCPU_INFO as *const VcpuInfoArea as u64;
    register_vcpu_info_raw(0, pfn_of(va), (va & 0xfff) as u32)
}

pub fn upcall_pending() -> bool {
    VCPU_INFO.0[0].load(Ordering::SeqCst) & 0xff != 0
}
pub fn upcall_mask() -> bool {
    (VCPU_INFO.0[0].load(Ordering::SeqCst) >> 8) & 0xff != 0
}
pub fn pending_sel() -> u64 {
    VCPU_INFO.0[1].load(Ordering::SeqCst)
}
/// Mask/unmask events for this vCPU (vcpu_info.evtchn_upcall_mask). Unmasking does not
/// deliver by itself: call [`force_callback`] if an upcall is pending, as Linux does.
pub fn set_upcall_mask(masked: bool) {
    if masked {
        VCPU_INFO.0[0].fetch_or(1 << 8, Ordering::SeqCst);
    } else {
        VCPU_INFO.0[0].fetch_and(!(0xff << 8), Ordering::SeqCst);
    }
}

/// Register the upcall entry as the CALLBACKTYPE_event callback.
pub fn register_event_callback() -> i64 {
    extern "C" {
        fn kit_event_entry();
    }
    register_callback(
        CALLBACKTYPE_EVENT,
        0,
        kit_event_entry as *const () as usize as u64,
    )
}

/// `callback_op(CALLBACKOP_register, {ty, flags, address})`: the result. The entry at
/// `address` must take Xen's bounce frame for that callback type.
pub fn register_callback(ty: u16, flags: u16, address: u64) -> i64 {
    let r = CallbackRegister {
        ty,
        flags,
        pad: 0,
        address,
    };
    // SAFETY: `r` is a readable struct callback_register; the hypervisor only records the
    // address, which the callers name as an entry taking Xen's frame.
    unsafe {
        hypercall2(
            HYPERVISOR_CALLBACK_OP,
            CALLBACKOP_REGISTER,
            &r as *const _ as u64,
        )
    }
}

core::arch::global_asm!(
    ".pushsection .text.kit_event, \"ax\"",
    ".globl kit_event_entry",
    "kit_event_entry:",
    "pop %rcx",
    "pop %r11",
    "push $0",
    "push $256",
    "jmp kit_trap_common",
    ".popsection",
    options(att_syntax),
);

// ---- shared_info (when the VMM lets the guest map it) ----------------------------------

#[repr(C, align(4096))]
pub struct PageArea(pub [AtomicU64; 512]);
/// A page whose mapping is replaced by shared_info.
pub static SHINFO: PageArea = PageArea([const { AtomicU64::new(0) }; 512]);
static SHINFO_MAPPED: Global<bool> = Global::new(false);

/// Map shared_info over [`SHINFO`] with HYPERVISOR_update_va_mapping; the result.
pub fn map_shared_info(si: &StartInfo) -> i64 {
    let va = &SHINFO as *const PageArea as u64;
    let pte = (si.shared_info & !0xfff) | 0x67;
    // SAFETY: replaces the mapping of the kit's own SHINFO page, which nothing else uses.
    let rc = unsafe { hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, pte, UVMF_INVLPG) };
    SHINFO_MAPPED.set(rc == 0);
    rc
}

pub fn shared_info_mapped() -> bool {
    SHINFO_MAPPED.get()
}

/// Words of vCPU `vcpu`'s legacy vcpu_info inside the mapped [`SHINFO`] (vcpu % 32).
pub fn shared_vcpu_info(vcpu: usize) -> &'static [AtomicU64] {
    let first = (vcpu % 32) * SHINFO_VCPU_INFO_WORDS;
    &SHINFO.0[first..first + SHINFO_VCPU_INFO_WORDS]
}

fn bit(port: u32) -> (usize, u64) {
    ((port / 64) as usize, 1u64 << (port % 64))
}
pub fn port_pending(port: u32) -> bool {
    let (w, m) = bit(port);
    SHINFO.0[SHINFO_PENDING_WORD0 + w].load(Ordering::SeqCst) & m != 0
}
pub fn mask_port(port: u32, masked: bool) {
    let (w, m) = bit(port);
    if masked {
        SHINFO.0[SHINFO_MASK_WORD0 + w].fetch_or(m, Ordering::SeqCst);
    } else {
        SHINFO.0[SHINFO_MASK_WORD0 + w].fetch_and(!m, Ordering::SeqCst);
    }
}

// ---- the upcall ----------------------------------------------------------------------

pub static UPCALLS: Global<u32> = Global::new(0);
/// OR of every pending_sel taken.
pub static SEL_SEEN: Global<u64> = Global::new(0);
/// Ports 0..63 seen pending (only with shared_info mapped).
pub static PORTS_SEEN: Global<u64> = Global::new(0);
/// The saved upcall mask in the last frame (cs bits 32-39).
pub static LAST_SAVED_MASK: Global<u64> = Global::new(0);
/// Whether the mask was set inside the last upcall.
pub static LAST_MASK_IN_HANDLER: Global<bool> = Global::new(false);

/// Reset the upcall records.
pub fn reset_records() {
    SEL_SEEN.set(0);
    PORTS_SEEN.set(0);
}

/// The upcall handler (called from the trap path for [`UPCALL_VECTOR`]): Linux's 2-level
/// scan. Clears upcall_pending, takes pending_sel and, with shared_info mapped, clears and
/// records each pending unmasked port.
pub fn upcall(frame: &mut TrapFrame) {
    UPCALLS.set(UPCALLS.get() + 1);
    LAST_SAVED_MASK.set((frame.cs >> 32) & 0xff);
    LAST_MASK_IN_HANDLER.set(upcall_mask());
    loop {
        VCPU_INFO.0[0].fetch_and(!0xff, Ordering::SeqCst);
        let mut sel = VCPU_INFO.0[1].swap(0, Ordering::SeqCst);
        SEL_SEEN.set(SEL_SEEN.get() | sel);
        if shared_info_mapped() {
            while sel != 0 {
                let w = sel.trailing_zeros() as usize;
                sel &= sel - 1;
                let bits = SHINFO.0[SHINFO_PENDING_WORD0 + w].load(Ordering::SeqCst)
                    & !SHINFO.0[SHINFO_MASK_WORD0 + w].load(Ordering::SeqCst);
                SHINFO.0[SHINFO_PENDING_WORD0 + w].fetch_and(!bits, Ordering::SeqCst);
                if w == 0 {
                    PORTS_SEEN.set(PORTS_SEEN.get() | bits);
                }
            }
        }
        if !upcall_pending() {
            break;
        }
    }
}

// ---- console ring (public/io/console.h) ------------------------------------------------

const IN_SIZE: u32 = 1024;
const OUT_SIZE: u32 = 2048;

fn u32_at(base: u64, off: u64) -> &'static AtomicU32 {
    // SAFETY: `base` is a ring page of the initial mapping (console or xenstore page,
    // mapped read-write for the guest's lifetime); `off` is an aligned index offset in it.
    unsafe { &*((base + off) as *const AtomicU32) }
}

fn byte_at(base: u64, off: u64) -> *mut u8 {
    (base + off) as *mut u8
}

/// The console page's virtual address.
pub fn console_page(si: &StartInfo) -> u64 {
    VIRT_BASE + si.console_mfn * PAGE_SIZE
}

/// Write `data` into the console output ring (as much as fits); returns bytes written.
pub fn console_ring_write(si: &StartInfo, data: &[u8]) -> usize {
    let p = console_page(si);
    let cons = u32_at(p, 3080).load(Ordering::SeqCst);
    let prod = u32_at(p, 3084).load(Ordering::SeqCst);
    let space = OUT_SIZE - prod.wrapping_sub(cons).min(OUT_SIZE);
    let n = (space as usize).min(data.len());
    for (i, b) in data[..n].iter().enumerate() {
        let idx = prod.wrapping_add(i as u32) & (OUT_SIZE - 1);
        // SAFETY: inside the out ring of the console page (1024 + idx < 3072).
        unsafe { byte_at(p, 1024 + u64::from(idx)).write_volatile(*b) };
    }
    fence(Ordering::SeqCst);
    u32_at(p, 3084).store(prod.wrapping_add(n as u32), Ordering::SeqCst);
    n
}

/// Take up to `buf.len()` bytes of console input; returns the count.
pub fn console_ring_read(si: &StartInfo, buf: &mut [u8]) -> usize {
    let p = console_page(si);
    let cons = u32_at(p, 3072).load(Ordering::SeqCst);
    let prod = u32_at(p, 3076).load(Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let n = (prod.wrapping_sub(cons).min(IN_SIZE) as usize).min(buf.len());
    for (i, b) in buf[..n].iter_mut().enumerate() {
        let idx = cons.wrapping_add(i as u32) & (IN_SIZE - 1);
        // SAFETY: inside the in ring of the console page.
        *b = unsafe { byte_at(p, u64::from(idx)).read_volatile() };
    }
    fence(Ordering::SeqCst);
    u32_at(p, 3072).store(cons.wrapping_add(n as u32), Ordering::SeqCst);
    n
}

// ---- xenstore client (public/io/xs_wire.h) ---------------------------------------------

pub const XS_READ: u32 = 2;
pub const XS_WATCH: u32 = 4;
pub const XS_ERROR: u32 = 16;
pub const XS_WATCH_EVENT: u32 = 15;
const XS_RING: u32 = 1024;

/// Watch events received while waiting for replies.
pub static XS_WATCH_EVENTS: Global<u32> = Global::new(0);
static XS_REQ_ID: Global<u32> = Global::new(0);

fn xs_page(si: &StartInfo) -> u64 {
    VIRT_BASE + si.store_mfn * PAGE_SIZE
}

fn xs_put(si: &StartInfo, data: &[u8]) -> bool {
    let p = xs_page(si);
    let cons = u32_at(p, 2048).load(Ordering::SeqCst);
    let prod = u32_at(p, 2052).load(Ordering::SeqCst);
    if XS_RING - prod.wrapping_sub(cons).min(XS_RING) < data.len() as u32 {
        return false;
    }
    for (i, b) in data.iter().enumerate() {
        let idx = prod.wrapping_add(i as u32) & (XS_RING - 1);
        // SAFETY: inside the request ring of the xenstore page.
        unsafe { byte_at(p, u64::from(idx)).write_volatile(*b) };
    }
    fence(Ordering::SeqCst);
    u32_at(p, 2052).store(prod.wrapping_add(data.len() as u32), Ordering::SeqCst);
    true
}

/// Take one whole message from the response ring into `out`: (type, req_id, payload length).
fn xs_take(si: &StartInfo, out: &mut [u8]) -> Option<(u32, u32, usize)> {
    let p = xs_page(si);
    let cons = u32_at(p, 2056).load(Ordering::SeqCst);
    let prod = u32_at(p, 2060).load(Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let avail = prod.wrapping_sub(cons);
    if avail < 16 || avail > XS_RING {
        return None;
    }
    let rd = |i: u32| {
        let idx = cons.wrapping_add(i) & (XS_RING - 1);
        // SAFETY: inside the response ring of the xenstore page.
        unsafe { byte_at(p, 1024 + u64::from(idx)).read_volatile() }
    };
    let word = |i: u32| u32::from_le_bytes([rd(i), rd(i + 1), rd(i + 2), rd(i + 3)]);
    let (ty, req, len) = (word(0), word(4), word(12));
    if avail < 16 + len {
        return None;
    }
    let n = (len as usize).min(out.len());
    for (i, b) in out[..n].iter_mut().enumerate() {
        *b = rd(16 + i as u32);
    }
    fence(Ordering::SeqCst);
    u32_at(p, 2056).store(cons.wrapping_add(16 + len), Ordering::SeqCst);
    Some((ty, req, n))
}

/// One xenstore request (`args` are NUL-terminated by the caller as the op wants): its
/// reply type and payload length in `out`, or `None` if no reply came (bounded wait with
/// SCHEDOP_poll on the store port, 10 ms at a time).
pub fn xs_request(si: &StartInfo, ty: u32, payload: &[u8], out: &mut [u8]) -> Option<(u32, usize)> {
    let req_id = XS_REQ_ID.get() + 1;
    XS_REQ_ID.set(req_id);
    let mut msg = [0u8; 16 + 256];
    if payload.len() > 256 {
        return None;
    }
    msg[0..4].copy_from_slice(&ty.to_le_bytes());
    msg[4..8].copy_from_slice(&req_id.to_le_bytes());
    msg[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    msg[16..16 + payload.len()].copy_from_slice(payload);
    if !xs_put(si, &msg[..16 + payload.len()]) {
        return None;
    }
    send(si.store_evtchn);
    for _ in 0..500 {
        while let Some((rty, rid, n)) = xs_take(si, out) {
            if rty == XS_WATCH_EVENT {
                XS_WATCH_EVENTS.set(XS_WATCH_EVENTS.get() + 1);
                continue;
            }
            if rid == req_id {
                return Some((rty, n));
            }
        }
        poll(&[si.store_evtchn], 10_000_000);
    }
    None
}

/// Drain watch events already in the response ring (counted in [`XS_WATCH_EVENTS`]).
pub fn xs_drain_watch_events(si: &StartInfo) {
    let mut buf = [0u8; 64];
    while let Some((ty, _, _)) = xs_take(si, &mut buf) {
        if ty == XS_WATCH_EVENT {
            XS_WATCH_EVENTS.set(XS_WATCH_EVENTS.get() + 1);
        }
    }
}
