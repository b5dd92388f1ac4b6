//! Event channels inside the VMM: the guest's port table ([`EventChannels`]) over its real
//! shared_info page, vCPU wake-ups (kicks, `SCHEDOP_block`/`SCHEDOP_poll`), and the in-process
//! backends behind the start-of-day channels (xenstore on port 1, console on port 2).
//!
//! * [`GuestSharedInfo`] implements [`SharedInfoAccess`] with atomic read-modify-writes on
//!   guest RAM (vm-memory's checked atomic references, never raw pointers): the 2-level
//!   pending/mask bitmaps in shared_info, and each vCPU's `vcpu_info` wherever it lives (its
//!   legacy shared_info slot, or where `VCPUOP_register_vcpu_info` moved it).
//! * [`DomainEvents`] lives in [`DomainShared`] (attached once at creation): the table behind
//!   an `RwLock` (raising ops take the read lock), one waker per vCPU, the vCPUs' kickers, the
//!   xenstore and the "backend notified" flags the run loop services.
//! * Upcall delivery itself is in [`crate::trap::bounce_event_callback`] and the run loop.
//!
//! Wake-up protocol (no lost wakeups): a raiser first sets the bits in guest memory
//! (`SeqCst`), then, for an [`Effect::Kick`], sets the target's wake token under its mutex,
//! signals its condvar and kicks its vCPU out of `KVM_RUN`. A blocking vCPU takes the mutex,
//! clears the token, checks guest memory, and only then waits on the condvar (releasing the
//! mutex atomically): a raise between its check and its wait cannot get the mutex before the
//! wait, so it sets the token the waiter sees.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use kxen_devices::console::RingPage;
use kxen_devices::evtchn::{
    BackendPort, Bitmap, Effect, Effects, EventChannels, EvtchnConfig, EvtchnError, PollOutcome,
    SharedInfoAccess,
};
use kxen_devices::xenstore::{PvDomuInfo, ShutdownRequest, Xenstore, XenstoreError};
use thiserror::Error;
use tracing::{debug, info, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};
use xen_abi::errno::Errno;
use xen_abi::event_channel::EvtchnPort;
use xen_abi::shared_info as si;

use crate::domain::{DomainShared, MAX_VCPU_INFO_SLOTS};
use crate::memory::{GuestRam, PAGE_SIZE};
use crate::vcpu::VcpuKicker;

/// Longest single sleep of a blocked vCPU before it re-checks for a shutdown (wake-ups
/// themselves are immediate; this only bounds how long a missed stop could go unnoticed).
pub const BLOCK_SLICE: Duration = Duration::from_millis(100);

/// Size of `struct vcpu_info`.
pub const VCPU_INFO_SIZE: u64 = core::mem::size_of::<si::VcpuInfo>() as u64;

/// Errors attaching event channels to a domain.
#[derive(Debug, Error)]
pub enum EventsError {
    /// The port table could not be created.
    #[error("event channels: {0}")]
    Table(#[from] EvtchnError),
    /// Connecting a start-of-day backend channel failed.
    #[error("connecting the {what} event channel: {err}")]
    Connect {
        /// Which channel.
        what: &'static str,
        /// Xen errno.
        err: Errno,
    },
    /// The channel did not get the port start_info announces.
    #[error("the {what} event channel got port {got}, start_info announces {want}")]
    PortMismatch {
        /// Which channel.
        what: &'static str,
        /// The port allocated.
        got: EvtchnPort,
        /// The port announced.
        want: EvtchnPort,
    },
    /// The xenstore could not be set up.
    #[error("xenstore: {0}")]
    Xenstore(#[from] XenstoreError),
    /// Events were already attached to this domain.
    #[error("event channels already attached")]
    AlreadyAttached,
    /// An unknown shutdown request name.
    #[error("unknown shutdown request {0:?} (poweroff, reboot, suspend, halt)")]
    BadRequest(String),
}

/// A page of guest RAM seen by a ring backend (console, xenstore).
#[derive(Debug, Clone, Copy)]
pub struct GuestRingPage<'a> {
    /// Guest RAM.
    pub ram: &'a GuestRam,
    /// Guest-physical address of the page.
    pub gpa: u64,
}

impl RingPage for GuestRingPage<'_> {
    type Error = vm_memory::GuestMemoryError;
    fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.ram
            .mem()
            .read_slice(buf, GuestAddress(self.gpa.wrapping_add(off as u64)))
    }
    fn write(&self, off: usize, data: &[u8]) -> Result<(), Self::Error> {
        self.ram
            .mem()
            .write_slice(data, GuestAddress(self.gpa.wrapping_add(off as u64)))
    }
    fn read_u32(&self, off: usize) -> Result<u32, Self::Error> {
        let a = self
            .ram
            .mem()
            .get_slice(GuestAddress(self.gpa.wrapping_add(off as u64)), 4)?;
        Ok(a.get_atomic_ref::<AtomicU32>(0)?.load(Ordering::SeqCst))
    }
    fn write_u32(&self, off: usize, v: u32) -> Result<(), Self::Error> {
        let a = self
            .ram
            .mem()
            .get_slice(GuestAddress(self.gpa.wrapping_add(off as u64)), 4)?;
        a.get_atomic_ref::<AtomicU32>(0)?.store(v, Ordering::SeqCst);
        Ok(())
    }
}

/// [`SharedInfoAccess`] over the guest's real shared_info page and `vcpu_info`s.
#[derive(Clone, Copy)]
pub struct GuestSharedInfo<'a> {
    dom: &'a DomainShared,
    ram: &'a GuestRam,
}

// Byte shifts inside the first u64 of a vcpu_info (upcall_pending is byte 0, mask byte 1).
const UPCALL_PENDING_SHIFT: u32 = (si::UPCALL_PENDING_OFFSET * 8) as u32;
const UPCALL_MASK_SHIFT: u32 = (si::UPCALL_MASK_OFFSET * 8) as u32;
const _: () = assert!(si::UPCALL_PENDING_OFFSET < 8 && si::UPCALL_MASK_OFFSET < 8);
const _: () = assert!(si::PENDING_SEL_OFFSET == 8);

impl<'a> GuestSharedInfo<'a> {
    /// The view for `dom`'s guest RAM `ram`.
    pub fn new(dom: &'a DomainShared, ram: &'a GuestRam) -> Self {
        GuestSharedInfo { dom, ram }
    }

    /// Run `f` on the aligned u64 at `gpa` as an atomic; `None` if it is not in guest RAM
    /// or not 8-byte aligned.
    fn with_word<R>(&self, gpa: u64, f: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
        let s = self.ram.mem().get_slice(GuestAddress(gpa), 8).ok()?;
        // vm-memory checks bounds and alignment and hands out a reference to the mapped
        // guest memory: the guest updates the same word concurrently, hence atomics.
        let a = s.get_atomic_ref::<AtomicU64>(0).ok()?;
        Some(f(a))
    }

    fn bitmap_gpa(&self, map: Bitmap, word: usize) -> Option<u64> {
        if word >= si::EVTCHN_BITMAP_WORDS {
            return None;
        }
        let off = match map {
            Bitmap::Pending => si::EVTCHN_PENDING_OFFSET,
            Bitmap::Mask => si::EVTCHN_MASK_OFFSET,
        } + word * 8;
        self.dom
            .shared_info_mfn
            .checked_mul(PAGE_SIZE)?
            .checked_add(off as u64)
    }

    fn vcpu_gpa(&self, vcpu: u32, off: usize) -> Option<u64> {
        self.dom.vcpu_info_base(vcpu)?.checked_add(off as u64)
    }

    fn vcpu_word(&self, vcpu: u32, off: usize) -> u64 {
        self.vcpu_gpa(vcpu, off)
            .and_then(|g| self.with_word(g, |a| a.load(Ordering::SeqCst)))
            .unwrap_or(0)
    }

    /// `evtchn_pending_sel` of `vcpu`.
    pub fn pending_sel(&self, vcpu: u32) -> u64 {
        self.vcpu_word(vcpu, si::PENDING_SEL_OFFSET)
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: EvtchnPort) -> bool {
        xen_abi::event_channel::port_word_bit(port)
            .is_some_and(|(w, b)| self.test_bit(Bitmap::Pending, w, b))
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: EvtchnPort) -> bool {
        xen_abi::event_channel::port_word_bit(port)
            .is_some_and(|(w, b)| self.test_bit(Bitmap::Mask, w, b))
    }

    /// Set or clear `port`'s mask bit (the guest's side; used by tests).
    pub fn set_masked(&self, port: EvtchnPort, masked: bool) {
        if let Some((w, b)) = xen_abi::event_channel::port_word_bit(port) {
            if masked {
                self.test_and_set_bit(Bitmap::Mask, w, b);
            } else {
                self.test_and_clear_bit(Bitmap::Mask, w, b);
            }
        }
    }
}

impl SharedInfoAccess for GuestSharedInfo<'_> {
    fn test_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_gpa(map, word), 1u64.checked_shl(bit)) {
            (Some(g), Some(m)) => self
                .with_word(g, |a| a.load(Ordering::SeqCst) & m != 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    fn test_and_set_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_gpa(map, word), 1u64.checked_shl(bit)) {
            (Some(g), Some(m)) => self
                .with_word(g, |a| a.fetch_or(m, Ordering::SeqCst) & m != 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    fn test_and_clear_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_gpa(map, word), 1u64.checked_shl(bit)) {
            (Some(g), Some(m)) => self
                .with_word(g, |a| a.fetch_and(!m, Ordering::SeqCst) & m != 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    fn pending_sel_test_and_set(&self, vcpu: u32, word: usize) -> bool {
        let m = u32::try_from(word).ok().and_then(|w| 1u64.checked_shl(w));
        match (self.vcpu_gpa(vcpu, si::PENDING_SEL_OFFSET), m) {
            (Some(g), Some(m)) => self
                .with_word(g, |a| a.fetch_or(m, Ordering::SeqCst) & m != 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    fn upcall_pending_test_and_set(&self, vcpu: u32) -> bool {
        // xen: vcpu_mark_events_pending, test-and-set of bit 0 of the upcall_pending byte.
        let m = 1u64 << UPCALL_PENDING_SHIFT;
        self.vcpu_gpa(vcpu, 0)
            .and_then(|g| self.with_word(g, |a| a.fetch_or(m, Ordering::SeqCst) & m != 0))
            .unwrap_or(false)
    }

    fn upcall_mask(&self, vcpu: u32) -> bool {
        (self.vcpu_word(vcpu, 0) >> UPCALL_MASK_SHIFT) & 0xff != 0
    }

    fn upcall_pending(&self, vcpu: u32) -> bool {
        (self.vcpu_word(vcpu, 0) >> UPCALL_PENDING_SHIFT) & 0xff != 0
    }
}

/// A backend end of one of the start-of-day channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendLink {
    /// The guest's port (what start_info announces).
    pub guest: EvtchnPort,
    /// kxen's backend-domain port.
    pub backend: BackendPort,
}

#[derive(Debug, Default)]
struct Waker {
    token: Mutex<bool>,
    cv: Condvar,
}

/// What [`DomainEvents::new`] needs to know about the domain.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Domain id the guest has (1: the first domU).
    pub domid: u16,
    /// Domain name (xenstore `name`).
    pub name: String,
    /// Memory in KiB (xenstore `memory/target`).
    pub memory_kib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Port start_info announces for xenstore.
    pub store_port: EvtchnPort,
    /// Frame of the xenstore ring.
    pub store_mfn: u64,
    /// Port start_info announces for the console.
    pub console_port: EvtchnPort,
    /// Frame of the console ring.
    pub console_mfn: u64,
}

const BACKEND_STORE: u32 = 1;
const BACKEND_CONSOLE: u32 = 2;

/// A domain's event channels, wake-ups and in-process backends. See the module docs.
pub struct DomainEvents {
    ram: GuestRam,
    table: RwLock<EventChannels>,
    wakers: Box<[Waker]>,
    kickers: Mutex<Vec<Option<VcpuKicker>>>,
    /// The xenstore channel (guest port 1).
    pub store: BackendLink,
    /// The console channel (guest port 2).
    pub console: BackendLink,
    backend_pending: AtomicU32,
    xenstore: Mutex<Xenstore>,
    store_gpa: u64,
    domid: u16,
    xs_error_logged: AtomicBool,
}

impl std::fmt::Debug for DomainEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainEvents")
            .field("store", &self.store)
            .field("console", &self.console)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DomainEvents {
    /// The port table with the xenstore and console channels connected to kxen's backends
    /// (`connect_backend` twice: guest ports 1 and 2 on a fresh table, which must match what
    /// start_info announces), and the xenstore populated as libxl does for a PV domU, its
    /// ring page initialised.
    pub fn new(ram: GuestRam, cfg: &EventsConfig) -> Result<Self, EventsError> {
        let mut table = EventChannels::new(EvtchnConfig {
            domid: cfg.domid,
            ..EvtchnConfig::new(cfg.vcpus)
        })?;
        let mut connect = |what: &'static str, want: EvtchnPort| {
            let (guest, backend) = table
                .connect_backend()
                .map_err(|err| EventsError::Connect { what, err })?;
            if guest != want {
                return Err(EventsError::PortMismatch {
                    what,
                    got: guest,
                    want,
                });
            }
            Ok(BackendLink { guest, backend })
        };
        let store = connect("xenstore", cfg.store_port)?;
        let console = connect("console", cfg.console_port)?;
        let info = PvDomuInfo::new(
            cfg.domid,
            &cfg.name,
            cfg.memory_kib,
            cfg.vcpus,
            store.guest,
            cfg.store_mfn,
            console.guest,
            cfg.console_mfn,
        );
        let xenstore = Xenstore::new_for_pv_domu(&info)?;
        let store_gpa = cfg.store_mfn.saturating_mul(PAGE_SIZE);
        Xenstore::init_ring(&GuestRingPage {
            ram: &ram,
            gpa: store_gpa,
        })?;
        Ok(DomainEvents {
            ram,
            table: RwLock::new(table),
            wakers: (0..cfg.vcpus).map(|_| Waker::default()).collect(),
            kickers: Mutex::new(vec![None; cfg.vcpus as usize]),
            store,
            console,
            backend_pending: AtomicU32::new(0),
            xenstore: Mutex::new(xenstore),
            store_gpa,
            domid: cfg.domid,
            xs_error_logged: AtomicBool::new(false),
        })
    }

    /// The port table for reading (raising ops: send, unmask, notify, poll).
    pub fn table(&self) -> RwLockReadGuard<'_, EventChannels> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The port table for changes (bind, close, ...).
    pub fn table_mut(&self) -> RwLockWriteGuard<'_, EventChannels> {
        self.table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> u32 {
        self.wakers.len() as u32
    }

    /// Let kicks for `vcpu` interrupt its `KVM_RUN`.
    pub fn register_kicker(&self, vcpu: u32, k: VcpuKicker) {
        if let Some(slot) = lock(&self.kickers).get_mut(vcpu as usize) {
            *slot = Some(k);
        }
    }

    /// Wake `vcpu`: its wake token (a blocked vCPU returns), and unless it is `from` (the
    /// caller, which checks for events before it returns to the guest anyway) a kick out of
    /// `KVM_RUN` so a running guest takes the upcall promptly.
    pub fn kick(&self, vcpu: u32, from: Option<u32>) {
        if let Some(w) = self.wakers.get(vcpu as usize) {
            *lock(&w.token) = true;
            w.cv.notify_all();
        }
        if from == Some(vcpu) {
            return;
        }
        if let Some(Some(k)) = lock(&self.kickers).get(vcpu as usize) {
            k.kick();
        }
    }

    /// Wake every vCPU (a stop or shutdown request).
    pub fn wake_all(&self) {
        for v in 0..self.nr_vcpus() {
            self.kick(v, None);
        }
    }

    /// Act on an operation's effects: kicks, and notifications of the backends (serviced by
    /// the run loop, [`DomainEvents::take_backend_notifications`]). Call with no table lock
    /// held.
    pub fn apply(&self, fx: &Effects, from: Option<u32>) {
        for e in fx.iter() {
            match e {
                Effect::Kick(v) => self.kick(v, from),
                Effect::Backend(bp) => {
                    let bit = if bp == self.store.backend {
                        BACKEND_STORE
                    } else if bp == self.console.backend {
                        BACKEND_CONSOLE
                    } else {
                        debug!(?bp, "notification of an unknown backend port");
                        0
                    };
                    self.backend_pending.fetch_or(bit, Ordering::SeqCst);
                }
                Effect::BackendConnected { backend, guest } => {
                    debug!(?backend, guest, "guest bound a backend port")
                }
                Effect::BackendDisconnected(bp) => {
                    info!(?bp, "guest closed a backend channel")
                }
            }
        }
    }

    /// Which backends the guest notified since the last call: (xenstore, console).
    pub fn take_backend_notifications(&self) -> (bool, bool) {
        let b = self.backend_pending.swap(0, Ordering::SeqCst);
        (b & BACKEND_STORE != 0, b & BACKEND_CONSOLE != 0)
    }

    /// The xenstore (host side).
    pub fn xenstore(&self) -> MutexGuard<'_, Xenstore> {
        lock(&self.xenstore)
    }

    fn store_page(&self) -> GuestRingPage<'_> {
        GuestRingPage {
            ram: &self.ram,
            gpa: self.store_gpa,
        }
    }
}

impl DomainShared {
    /// The domain's event channels, once attached.
    pub fn events(&self) -> Option<&DomainEvents> {
        self.events.get()
    }

    /// Attach event channels (once, at creation).
    pub fn attach_events(&self, ev: DomainEvents) -> Result<(), EventsError> {
        self.events
            .set(ev)
            .map_err(|_| EventsError::AlreadyAttached)
    }

    /// The shared_info / vcpu_info view over `ram`.
    pub fn shared_info_view<'a>(&'a self, ram: &'a GuestRam) -> GuestSharedInfo<'a> {
        GuestSharedInfo::new(self, ram)
    }

    /// Xen's `local_events_need_delivery` for `vcpu`: upcall pending and not masked.
    pub fn events_need_delivery(&self, ram: &GuestRam, vcpu: u32) -> bool {
        self.shared_info_view(ram).events_need_delivery(vcpu)
    }

    /// Raise a notification from a backend to the guest (console input, xenstore replies)
    /// and act on it.
    pub fn notify_guest(&self, ram: &GuestRam, bp: BackendPort, from: Option<u32>) {
        let Some(ev) = self.events() else { return };
        let fx = ev.table().notify_guest(bp, &self.shared_info_view(ram));
        match fx {
            Ok(fx) => ev.apply(&fx, from),
            Err(e) => debug!(?bp, "notify_guest: {e}"),
        }
    }

    /// Raise `virq` for `vcpu` (per-vCPU VIRQs) or its global binding, and act on it (the
    /// target vCPU is woken / kicked). For the timer: `raise_virq(v, VIRQ_TIMER, None)`
    /// from the timer thread (any thread).
    pub fn raise_virq(&self, vcpu: u32, virq: u32, from: Option<u32>) {
        let Some(ev) = self.events() else { return };
        let fx = ev
            .table()
            .raise_virq(vcpu, virq, &self.shared_info_view(&ev.ram));
        ev.apply(&fx, from);
    }

    /// `VCPUOP_register_vcpu_info`: move `vcpu`'s `vcpu_info` to `offset` in guest frame
    /// `mfn`, with current Xen's checks: `-EINVAL` for an offset of a page or more or a frame
    /// outside guest RAM, `-ENXIO` for an area crossing a page or not 8-byte aligned,
    /// `-EBUSY` once moved, `-ENOENT` for a vCPU that does not exist. The current contents
    /// are copied over and, as Xen does, every selector bit and `upcall_pending` are set so
    /// that no event is lost (the guest sees one spurious upcall once it unmasks).
    // xen: common/domain.c, VCPUOP_register_vcpu_info, map_guest_area, vcpu_info_populate
    // ("mark everything as being pending just to make sure nothing gets lost")
    pub fn register_vcpu_info(
        &self,
        ram: &GuestRam,
        vcpu: u32,
        mfn: u64,
        offset: u32,
    ) -> Result<(), Errno> {
        let nr = self
            .events()
            .map_or(MAX_VCPU_INFO_SLOTS as u32, DomainEvents::nr_vcpus);
        let slot = self
            .vcpu_info_at
            .get(vcpu as usize)
            .filter(|_| vcpu < nr)
            .ok_or(Errno::ENOENT)?;
        let offset = u64::from(offset);
        if offset >= PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        if slot.load(Ordering::Acquire) != 0 {
            return Err(Errno::EBUSY);
        }
        if offset + VCPU_INFO_SIZE > PAGE_SIZE || !offset.is_multiple_of(8) {
            return Err(Errno::ENXIO);
        }
        if mfn >= self.nr_pages {
            return Err(Errno::EINVAL);
        }
        let gpa = mfn * PAGE_SIZE + offset;
        let mut cur = [0u8; VCPU_INFO_SIZE as usize];
        if let Some(old) = self.vcpu_info_base(vcpu) {
            let _ = ram.mem().read_slice(&mut cur, GuestAddress(old));
        } else {
            // No legacy slot: a fresh vcpu_info has events masked.
            cur[si::UPCALL_MASK_OFFSET] = 1;
        }
        cur[si::UPCALL_PENDING_OFFSET] = 1;
        cur[si::PENDING_SEL_OFFSET..si::PENDING_SEL_OFFSET + 8].fill(0xff);
        ram.mem()
            .write_slice(&cur, GuestAddress(gpa))
            .map_err(|_| Errno::EINVAL)?;
        slot.store(gpa, Ordering::Release);
        if let Some(ev) = self.events() {
            ev.kick(vcpu, Some(vcpu));
        }
        Ok(())
    }

    /// Block `vcpu` (`SCHEDOP_block`, or `SCHEDOP_poll` with `ports`) until an event needs
    /// delivery (block), a polled port is pending or any kick (poll), `deadline`, or a stop.
    /// Without attached event channels it naps briefly.
    pub fn block_vcpu(
        &self,
        ram: &GuestRam,
        vcpu: u32,
        ports: Option<&[EvtchnPort]>,
        deadline: Option<Instant>,
    ) -> Result<(), Errno> {
        let Some(ev) = self.events() else {
            std::thread::sleep(Duration::from_millis(1));
            return Ok(());
        };
        let w = ev.wakers.get(vcpu as usize).ok_or(Errno::EINVAL)?;
        // A blocked vCPU runs no guest code: remote TLB flushes need not wait for it.
        let flush = self.smp().map(|s| &s.flush);
        if let Some(f) = flush {
            f.set_idle(vcpu, true);
        }
        let r = self.block_inner(ram, ev, w, vcpu, ports, deadline);
        if let Some(f) = flush {
            f.set_idle(vcpu, false);
        }
        r
    }

    fn block_inner(
        &self,
        ram: &GuestRam,
        ev: &DomainEvents,
        w: &Waker,
        vcpu: u32,
        ports: Option<&[EvtchnPort]>,
        deadline: Option<Instant>,
    ) -> Result<(), Errno> {
        let view = self.shared_info_view(ram);
        let mut tok = lock(&w.token);
        // Every raise that happened before this point is visible in guest memory.
        *tok = false;
        if let Some(p) = ports {
            if ev.table().poll_start(vcpu, p, &view)? == PollOutcome::Ready {
                return Ok(());
            }
        }
        loop {
            if *tok || self.shutdown_reason().is_some() {
                break;
            }
            if ports.is_none() && view.events_need_delivery(vcpu) {
                break;
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left.min(BLOCK_SLICE)
                }
                None => BLOCK_SLICE,
            };
            tok =
                w.cv.wait_timeout(tok, slice)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
        }
        *tok = false;
        drop(tok);
        if ports.is_some() {
            ev.table().poll_stop(vcpu);
        }
        Ok(())
    }

    /// Service the xenstore ring (cheap when idle) and notify the guest if asked to.
    pub fn service_xenstore(&self, ram: &GuestRam, from: Option<u32>) {
        let Some(ev) = self.events() else { return };
        let rep = {
            let mut xs = ev.xenstore();
            xs.service_ring(ev.domid, &ev.store_page())
        };
        match rep {
            Ok(r) if r.notify => self.notify_guest(ram, ev.store.backend, from),
            Ok(_) => {}
            Err(e) => {
                if !ev.xs_error_logged.swap(true, Ordering::Relaxed) {
                    warn!(domain = %self.name, "xenstore ring: {e}");
                }
            }
        }
    }

    /// Ask the guest to shut down the way `xl shutdown` does: write `control/shutdown`
    /// (`poweroff`, `reboot`, `suspend` or `halt`), deliver the watch event into its ring and
    /// notify it. A guest without a watch on it never notices (the caller may stop it hard).
    pub fn request_guest_shutdown(&self, what: &str) -> Result<(), EventsError> {
        let req = match what {
            "poweroff" => ShutdownRequest::Poweroff,
            "reboot" => ShutdownRequest::Reboot,
            "suspend" => ShutdownRequest::Suspend,
            "halt" => ShutdownRequest::Halt,
            other => return Err(EventsError::BadRequest(other.to_string())),
        };
        let Some(ev) = self.events() else {
            return Ok(());
        };
        let moved = {
            let mut xs = ev.xenstore();
            xs.request_shutdown(ev.domid, req)
                .map_err(|e| EventsError::Xenstore(e.into()))?;
            xs.flush_ring(ev.domid, &ev.store_page())
        };
        match moved {
            Ok((_, true)) => self.notify_guest(&ev.ram, ev.store.backend, None),
            Ok(_) => {}
            Err(e) => debug!("xenstore flush after shutdown request: {e}"),
        }
        // A vCPU blocked in SCHEDOP_block re-checks; one running exits and services.
        ev.wake_all();
        Ok(())
    }

    /// Queue keyboard input for the guest and wake vCPU 0, which moves it into the console
    /// ring (or leaves it for `console_io` read) at its next exit and notifies the guest; a
    /// vCPU blocked in `SCHEDOP_block` returns so that this happens promptly.
    pub fn push_console_input(&self, data: &[u8]) {
        {
            let mut c = match self.console.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            c.input.extend(data);
        }
        if let Some(ev) = self.events() {
            ev.kick(0, None);
        }
    }

    /// The xenstore tree, one node per line (`--xenstore-dump`).
    pub fn xenstore_dump(&self) -> Option<String> {
        self.events().map(|ev| ev.xenstore().dump())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::handler_tests::{Guest, SHINFO_MFN, VA};
    use crate::trap::{bounce_event_callback, BounceError};
    use crate::vcpu::{rflags, GuestCs, GuestRegs};
    use xen_abi::errno::{EFAULT, EINVAL, ENOENT};
    use xen_abi::event_channel::{EvtchnAllocUnbound, EVTCHNOP_ALLOC_UNBOUND};
    use xen_abi::negotiate::LaunchMode;
    use xen_abi::pv_vcpu::callback_index;

    const STORE_MFN: u64 = 52;
    const CONSOLE_MFN: u64 = 53;

    /// Domain 1 "t", one vCPU, the store on port 1 and the console on port 2.
    fn config() -> EventsConfig {
        EventsConfig {
            domid: 1,
            name: "t".into(),
            memory_kib: 256,
            vcpus: 1,
            store_port: 1,
            store_mfn: STORE_MFN,
            console_port: 2,
            console_mfn: CONSOLE_MFN,
        }
    }

    fn guest() -> Guest {
        let g = Guest::new(LaunchMode::Unprivileged);
        let ev = DomainEvents::new(g.ram.clone(), &config()).unwrap();
        g.dom.attach_events(ev).unwrap();
        g
    }

    fn word(g: &Guest, gpa: u64) -> u64 {
        g.ram.mem().read_obj(GuestAddress(gpa)).unwrap()
    }

    #[test]
    fn start_of_day_channels_are_ports_1_and_2_and_the_store_is_populated() {
        let g = guest();
        let ev = g.dom.events().unwrap();
        assert_eq!((ev.store.guest, ev.console.guest), (1, 2));
        let t = ev.table();
        assert_eq!(t.backend_peer(ev.store.backend), Some(1));
        assert_eq!(t.backend_peer(ev.console.backend), Some(2));
        drop(t);
        let dump = g.dom.xenstore_dump().unwrap();
        assert!(
            dump.contains("/local/domain/1/store/port = \"1\""),
            "{dump}"
        );
        assert!(
            dump.contains("/local/domain/1/console/port = \"2\""),
            "{dump}"
        );
        assert!(dump.contains("/local/domain/1/name = \"t\""), "{dump}");
        // The ring page was initialised (server features advertised).
        assert_ne!(word(&g, STORE_MFN * PAGE_SIZE + 2064) & 0xffff_ffff, 0);
        assert!(matches!(
            g.dom
                .attach_events(DomainEvents::new(g.ram.clone(), &config()).unwrap()),
            Err(EventsError::AlreadyAttached)
        ));
    }

    #[test]
    fn announced_ports_must_match_the_allocation() {
        let g = Guest::new(LaunchMode::Unprivileged);
        let swapped = EventsConfig {
            store_port: 2,
            console_port: 1,
            ..config()
        };
        let r = DomainEvents::new(g.ram.clone(), &swapped);
        assert!(matches!(
            r,
            Err(EventsError::PortMismatch {
                got: 1,
                want: 2,
                ..
            })
        ));
    }

    #[test]
    fn raising_a_port_sets_xens_bits_in_guest_memory_and_asks_for_a_kick() {
        let g = guest();
        let ev = g.dom.events().unwrap();
        let port = ev.table_mut().bind_ipi(0).unwrap();
        assert_eq!(port, 3);
        let view = g.dom.shared_info_view(&g.ram);
        let fx = ev.table().send(port, &view).unwrap();
        assert!(fx.contains(Effect::Kick(0)));
        let si = SHINFO_MFN * PAGE_SIZE;
        assert_eq!(word(&g, si + 2048), 1 << 3, "evtchn_pending[0]");
        assert_eq!(word(&g, si + 8), 1, "vcpu_info[0].evtchn_pending_sel");
        assert_eq!(
            word(&g, si) & 0xffff,
            0x0101,
            "upcall_pending = 1, mask = 1"
        );
        assert!(!g.dom.events_need_delivery(&g.ram, 0), "masked");
        assert!(g.dom.set_upcall_mask(&g.ram, 0, 0));
        assert!(g.dom.events_need_delivery(&g.ram, 0));
        // Port-level mask: a second port stays pending without touching the selector.
        view.set_masked(5, true);
        let p5 = {
            let mut t = ev.table_mut();
            t.bind_ipi(0).unwrap();
            t.bind_ipi(0).unwrap()
        };
        assert_eq!(p5, 5);
        g.ram.mem().write_obj(0u64, GuestAddress(si + 8)).unwrap();
        assert!(ev.table().send(5, &view).unwrap().is_empty());
        assert!(view.is_pending(5) && view.is_masked(5));
        assert_eq!(view.pending_sel(0), 0);
        assert!(
            ev.table().unmask(5, &view).unwrap().is_empty(),
            "upcall already pending"
        );
        assert_eq!(view.pending_sel(0), 1, "unmask re-raised the word");
    }

    #[test]
    fn register_vcpu_info_validates_and_moves_the_upcall_words() {
        let g = guest();
        let ram = &g.ram;
        let d = &g.dom;
        assert_eq!(d.register_vcpu_info(ram, 0, 20, 4033), Err(Errno::ENXIO));
        assert_eq!(d.register_vcpu_info(ram, 0, 20, 4), Err(Errno::ENXIO));
        assert_eq!(d.register_vcpu_info(ram, 0, 20, 4096), Err(Errno::EINVAL));
        assert_eq!(
            d.register_vcpu_info(ram, 0, g.dom.nr_pages, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            d.register_vcpu_info(ram, 0, u64::MAX, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(d.register_vcpu_info(ram, 1, 20, 64), Err(Errno::ENOENT));
        assert_eq!(d.register_vcpu_info(ram, 0, 20, 4032), Ok(()));
        assert_eq!(
            d.register_vcpu_info(ram, 0, 21, 0),
            Err(Errno::EBUSY),
            "only once"
        );
        let at = 20 * PAGE_SIZE + 4032;
        assert_eq!(d.vcpu_info_base(0), Some(at));
        // Copied (mask 1) and everything marked pending.
        assert_eq!(word(&g, at) & 0xffff, 0x0101);
        assert_eq!(word(&g, at + 8), u64::MAX);
        // Mask and CR2 writes now go there, not to the legacy slot.
        assert!(d.set_upcall_mask(ram, 0, 0));
        assert_eq!(d.upcall_mask(ram, 0), Some(0));
        assert_eq!(word(&g, at) & 0xff00, 0);
        assert_eq!(
            word(&g, SHINFO_MFN * PAGE_SIZE) & 0xff00,
            0x100,
            "legacy untouched"
        );
        assert!(d.set_cr2(ram, 0, 0xdead_0000));
        assert_eq!(word(&g, at + 16), 0xdead_0000);
        assert!(d.events_need_delivery(ram, 0));
        let _ = (EINVAL, ENOENT);
    }

    #[test]
    fn event_channel_op_copies_the_argument_in_and_out_and_compat_is_offset_by_4() {
        let mut g = guest();
        let a = EvtchnAllocUnbound {
            dom: xen_abi::mmu::DOMID_SELF,
            remote_dom: 0,
            port: 0xdead,
        };
        g.put(VA, &a);
        let r = g.call(32, [u64::from(EVTCHNOP_ALLOC_UNBOUND), VA, 0, 0, 0]);
        assert_eq!(r, 0);
        assert_eq!(g.get::<EvtchnAllocUnbound>(VA).port, 3);
        assert_eq!(
            g.call(32, [u64::from(EVTCHNOP_ALLOC_UNBOUND), 0x10, 0, 0, 0]),
            -i64::from(EFAULT)
        );
        assert_eq!(
            g.call(32, [99, VA, 0, 0, 0]),
            -(xen_abi::errno::ENOSYS as i64)
        );
        // Compat: cmd at VA+0x100, the union at +4: port comes back at +8.
        g.put(VA + 0x100, &u32::from(EVTCHNOP_ALLOC_UNBOUND as u16));
        g.put(VA + 0x104, &a);
        assert_eq!(g.call(16, [VA + 0x100, 0, 0, 0, 0]), 0);
        assert_eq!(g.get::<u32>(VA + 0x108), 4);
        // A send to the console port is routed to the console backend.
        g.put(VA + 0x200, &2u32);
        assert_eq!(g.call(32, [4, VA + 0x200, 0, 0, 0]), 0);
        let ev = g.dom.events().unwrap();
        assert_eq!(ev.take_backend_notifications(), (false, true));
        assert_eq!(ev.take_backend_notifications(), (false, false));
    }

    #[test]
    fn event_callback_bounce_is_xens_frame_without_error_code_and_masks_events() {
        const HANDLER: u64 = 0xffff_ffff_8000_5000;
        let mut g = guest();
        g.set_mask(0);
        g.regs = GuestRegs {
            rip: 0xffff_ffff_8000_1234,
            rsp: VA + 0x808,
            rflags: 0x202,
            rcx: 0xc,
            r11: 0xb,
            ..Default::default()
        };
        let before = g.regs;
        let r = bounce_event_callback(
            &g.ram,
            PAGE_SIZE,
            &mut g.pv,
            &g.dom,
            0,
            GuestCs::Long64,
            &mut g.regs,
        );
        assert!(matches!(r, Err(BounceError::NoHandler { .. })));
        assert_eq!(g.regs, before, "no callback: nothing changes");
        g.pv.callbacks[callback_index::EVENT].address = HANDLER;
        let r = bounce_event_callback(
            &g.ram,
            PAGE_SIZE,
            &mut g.pv,
            &g.dom,
            0,
            GuestCs::Long64,
            &mut g.regs,
        );
        assert_eq!(r, Ok(None));
        assert_eq!(g.regs.rip, HANDLER);
        let top = (VA + 0x808) & !0xf;
        assert_eq!(g.regs.rsp, top - 56, "7 words: no error code");
        let f: [u64; 7] = g.get(g.regs.rsp);
        assert_eq!((f[0], f[1], f[2]), (0xc, 0xb, 0xffff_ffff_8000_1234));
        assert_eq!(f[3], 0xe030, "kernel-mode cs, saved mask 0");
        assert_ne!(f[4] & rflags::IF, 0, "IF = events were enabled");
        assert_eq!((f[5], f[6]), (VA + 0x808, 0xe02b));
        assert_eq!(g.mask(), 1, "delivery masks events");
    }

    #[test]
    fn block_sleeps_until_a_kick_from_another_thread_and_poll_honours_its_timeout() {
        let mut g = guest();
        g.set_mask(0);
        let (dom, ram) = (&g.dom, &g.ram);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(150));
                // A backend raises the console port: upcall pending, vCPU 0 kicked.
                let bp = dom.events().unwrap().console.backend;
                dom.notify_guest(ram, bp, None);
            });
            dom.block_vcpu(ram, 0, None, None).unwrap();
        });
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(140), "{waited:?}");
        assert!(dom.events_need_delivery(ram, 0));
        // Pending and unmasked: block returns at once.
        let t0 = Instant::now();
        dom.block_vcpu(ram, 0, None, None).unwrap();
        assert!(t0.elapsed() < Duration::from_millis(50));
        // Poll: a pending port returns at once; another times out; bad ports are refused.
        g.set_mask(1);
        let (dom, ram) = (&g.dom, &g.ram);
        let t0 = Instant::now();
        dom.block_vcpu(ram, 0, Some(&[2]), None).unwrap();
        assert!(t0.elapsed() < Duration::from_millis(50));
        let t0 = Instant::now();
        let deadline = Instant::now() + Duration::from_millis(60);
        dom.block_vcpu(ram, 0, Some(&[7]), Some(deadline)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(55));
        assert_eq!(
            dom.block_vcpu(ram, 0, Some(&[5000]), None),
            Err(Errno::EINVAL)
        );
        assert!(!dom.events().unwrap().table().is_polling(0));
    }

    #[test]
    fn vcpu_op_checks_the_vcpu_first_then_registers_vcpu_info() {
        let mut g = guest();
        let enoent = -i64::from(xen_abi::errno::ENOENT);
        let enosys = -(xen_abi::errno::ENOSYS as i64);
        assert_eq!(g.call(24, [10, 1, 0x1000, 0, 0]), enoent, "no vCPU 1");
        assert_eq!(g.call(24, [99, 7, 0, 0, 0]), enoent);
        assert_eq!(g.call(24, [99, 0, 0, 0, 0]), enosys);
        assert_eq!(
            g.call(24, [10, 0, 0x1000, 0, 0]),
            -i64::from(EFAULT),
            "unmapped argument"
        );
        g.put(VA, &[21u64, 128]);
        assert_eq!(g.call(24, [10, 0, VA, 0, 0]), 0);
        assert_eq!(g.dom.vcpu_info_base(0), Some(21 * PAGE_SIZE + 128));
        assert_eq!(
            g.call(24, [10, 0, VA, 0, 0]),
            -i64::from(xen_abi::errno::EBUSY)
        );
    }

    #[test]
    fn raise_virq_reaches_the_bound_port_and_wakes_the_vcpu() {
        let g = guest();
        let ev = g.dom.events().unwrap();
        let port = ev
            .table_mut()
            .bind_virq(xen_abi::event_channel::VIRQ_TIMER, 0)
            .unwrap();
        let view = g.dom.shared_info_view(&g.ram);
        g.dom
            .raise_virq(0, xen_abi::event_channel::VIRQ_DEBUG, None);
        assert!(!view.is_pending(port), "unbound VIRQ dropped");
        g.dom
            .raise_virq(0, xen_abi::event_channel::VIRQ_TIMER, None);
        assert!(view.is_pending(port));
        assert!(*lock(&ev.wakers[0].token), "vCPU 0 woken");
    }

    #[test]
    fn polite_shutdown_writes_control_shutdown_and_rejects_unknown_requests() {
        let g = guest();
        assert!(matches!(
            g.dom.request_guest_shutdown("explode"),
            Err(EventsError::BadRequest(_))
        ));
        g.dom.request_guest_shutdown("reboot").unwrap();
        let dump = g.dom.xenstore_dump().unwrap();
        assert!(
            dump.contains("/local/domain/1/control/shutdown = \"reboot\""),
            "{dump}"
        );
    }
}
