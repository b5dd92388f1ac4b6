//! Xen event channels, 2-level ABI, as a pure state machine.
//!
//! [`EventChannels`] is the hypervisor side of one guest's event channels: the port table
//! (xen: common/event_channel.c), the per-vCPU VIRQ-to-port map, and the port ends owned by
//! kxen's in-process *backend domain* (the console and xenstore backends, which a PV domU sees
//! as domain 0, as with Xen's toolstack defaults). It never touches guest memory directly: the
//! 2-level pending/mask bitmaps and the per-vCPU `evtchn_pending_sel` / `evtchn_upcall_pending`
//! words are reached through [`SharedInfoAccess`] (xen: common/event_2l.c), which the VMM
//! implements with atomic operations on guest memory ([`SharedInfoWords`] does it over a slice
//! of `AtomicU64` laid out as the shared info page; [`SharedInfoMem`] owns one, for tests).
//!
//! Every guest-reachable operation returns Xen's errno on misuse and never panics. Operations
//! that may require the VMM to act return [`Effects`]: [`Effect::Kick`] (a vCPU got a new
//! upcall pending, or was polling a port that became pending: wake it / force an exit so the
//! event is delivered) and the backend notifications ([`Effect::Backend`] etc.) the VMM
//! routes to its device models. `SCHEDOP_poll`'s event side is here too
//! ([`EventChannels::poll_start`]).
//!
//! Locking: operations that only raise events (`send`, `unmask`, `raise_virq`,
//! `notify_guest`, polling) take `&self` and are safe to run concurrently with each other and
//! with the guest (everything they change is atomic); the others take `&mut self`. A VMM
//! typically keeps the table in an `RwLock`.
//!
//! [`EventChannels::do_event_channel_op`] is the whole `HYPERVISOR_event_channel_op` handler
//! minus guest memory access: the caller copies the argument struct in, dispatches, and copies
//! it back out.
//!
//! Simplifications against Xen: the port space is always the full 2-level range (Xen grows it
//! in buckets, so a high never-allocated port gives `-EINVAL` there where kxen treats it as
//! free); no PIRQs (a PV domU without IRQ permissions gets `-EPERM`); no FIFO ABI (`-ENOSYS`,
//! which makes Linux fall back to 2-level, as under QEMU's Xen emulation); no XSM beyond the
//! default "a domU may only act on itself" rule; `EVTCHNOP_reset` is not preemptible.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use xen_abi::arch::Pod;
use xen_abi::errno::Errno;
use xen_abi::event_channel::{
    self as ec, port_word_bit, virq_is_per_vcpu, EvtchnAllocUnbound, EvtchnBindInterdomain,
    EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnPort,
    EvtchnReset, EvtchnSend, EvtchnStatus, EvtchnUnmask, NR_EVENT_CHANNELS, NR_VIRQS,
};
use xen_abi::mmu::{DomId, DOMID_FIRST_RESERVED, DOMID_SELF};
use xen_abi::shared_info as si;

/// The guest's domain id unless configured otherwise (the first domU).
pub const DEFAULT_GUEST_DOMID: DomId = 1;
/// The backend domain's id unless configured otherwise: Xen's toolstack allocates the console
/// and xenstore channels with remote domain 0 (`console_domid` / `store_domid` default 0).
pub const DEFAULT_BACKEND_DOMID: DomId = 0;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 4096;

const NR_PORTS: usize = NR_EVENT_CHANNELS as usize;
const NR_VIRQS_USIZE: usize = NR_VIRQS as usize;

// ---------------------------------------------------------------------------------------------
// Shared memory access
// ---------------------------------------------------------------------------------------------

/// The two 2-level bitmaps of the shared info page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bitmap {
    /// `shared_info.evtchn_pending`.
    Pending,
    /// `shared_info.evtchn_mask`.
    Mask,
}

/// Atomic access to the event channel words the guest shares with the hypervisor.
///
/// `word` is an index into a 64-word bitmap and `bit` a bit of that word (callers in this
/// module always pass `word < 64`, `bit < 64`; implementations must still not panic on other
/// values). Every operation must be a single atomic read-modify-write (x86 `lock bts`/`btr`
/// or equivalent) on guest-shared memory, because the guest updates the same words
/// concurrently without taking any lock. The order of calls is the protocol (xen:
/// event_2l.c): implementations must not reorder them (x86 locked operations are full
/// barriers; `SeqCst` atomics are).
///
/// A vCPU without a `vcpu_info` the implementation can reach should behave as Xen's dummy
/// `vcpu_info`: setters report the bit as previously clear, so the caller reports a kick.
pub trait SharedInfoAccess {
    /// Whether `bit` of `map[word]` is set.
    fn test_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool;
    /// Set `bit` of `map[word]`; returns whether it was already set.
    fn test_and_set_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool;
    /// Clear `bit` of `map[word]`; returns whether it was set.
    fn test_and_clear_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool;
    /// Set bit `word` of `vcpu_info[vcpu].evtchn_pending_sel`; returns whether it was set.
    fn pending_sel_test_and_set(&self, vcpu: u32, word: usize) -> bool;
    /// Set bit 0 of `vcpu_info[vcpu].evtchn_upcall_pending`; returns whether it was set.
    fn upcall_pending_test_and_set(&self, vcpu: u32) -> bool;
    /// Whether `vcpu_info[vcpu].evtchn_upcall_mask` is non-zero (events "disabled").
    fn upcall_mask(&self, vcpu: u32) -> bool;
    /// Whether `vcpu_info[vcpu].evtchn_upcall_pending` is non-zero.
    fn upcall_pending(&self, vcpu: u32) -> bool;

    /// Xen's `local_events_need_delivery`: an upcall is pending and not masked.
    fn events_need_delivery(&self, vcpu: u32) -> bool {
        self.upcall_pending(vcpu) && !self.upcall_mask(vcpu)
    }
}

// Word positions in a shared info page viewed as `u64`s.
const PENDING_WORD0: usize = si::EVTCHN_PENDING_OFFSET / 8;
const MASK_WORD0: usize = si::EVTCHN_MASK_OFFSET / 8;
const VCPU_INFO_WORDS: usize = core::mem::size_of::<si::VcpuInfo>() / 8;
const UPCALL_WORD: usize = si::UPCALL_PENDING_OFFSET / 8;
const UPCALL_PENDING_SHIFT: u32 = (si::UPCALL_PENDING_OFFSET % 8 * 8) as u32;
const UPCALL_MASK_SHIFT: u32 = (si::UPCALL_MASK_OFFSET % 8 * 8) as u32;
const PENDING_SEL_WORD: usize = si::PENDING_SEL_OFFSET / 8;
/// `u64` words a [`SharedInfoWords`] needs: the whole `struct shared_info`.
pub const SHARED_INFO_WORDS: usize = core::mem::size_of::<si::SharedInfo>() / 8;
const _: () = assert!(si::EVTCHN_PENDING_OFFSET & 7 == 0 && si::EVTCHN_MASK_OFFSET & 7 == 0);
const _: () = assert!(si::PENDING_SEL_OFFSET & 7 == 0 && VCPU_INFO_WORDS * 8 == 64);
const _: () = assert!(si::UPCALL_PENDING_OFFSET / 8 == si::UPCALL_MASK_OFFSET / 8);
const _: () = assert!(si::EVTCHN_BITMAP_WORDS == NR_PORTS / 64);

/// [`SharedInfoAccess`] over a shared info page seen as `u64` atomics (little-endian x86
/// layout of `struct shared_info`). Only the 32 legacy `vcpu_info` slots are reachable; other
/// vCPUs behave as described on [`SharedInfoAccess`].
///
/// Besides the trait, it offers the guest's side of the protocol (mask, unmask, consume), used
/// by tests and simulations and handy for a VMM deciding whether to deliver an upcall.
#[derive(Clone, Copy, Debug)]
pub struct SharedInfoWords<'a> {
    words: &'a [AtomicU64],
}

impl<'a> SharedInfoWords<'a> {
    /// A view over `words`; `None` if it is shorter than [`SHARED_INFO_WORDS`].
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() >= SHARED_INFO_WORDS).then_some(SharedInfoWords { words })
    }

    fn bitmap_word(&self, map: Bitmap, word: usize) -> Option<&AtomicU64> {
        if word >= si::EVTCHN_BITMAP_WORDS {
            return None;
        }
        let base = match map {
            Bitmap::Pending => PENDING_WORD0,
            Bitmap::Mask => MASK_WORD0,
        };
        self.words.get(base + word)
    }

    fn vcpu_word(&self, vcpu: u32, word: usize) -> Option<&AtomicU64> {
        let off = si::vcpu_info_offset(usize::try_from(vcpu).ok()?)?;
        self.words.get(off / 8 + word)
    }

    fn port_word(&self, map: Bitmap, port: EvtchnPort) -> Option<(&AtomicU64, u64)> {
        let (w, b) = port_word_bit(port)?;
        Some((self.bitmap_word(map, w)?, 1u64 << b))
    }

    /// Guest side: whether `port` is pending.
    pub fn is_pending(&self, port: EvtchnPort) -> bool {
        self.port_word(Bitmap::Pending, port)
            .is_some_and(|(w, m)| w.load(Ordering::SeqCst) & m != 0)
    }

    /// Guest side: whether `port` is masked.
    pub fn is_masked(&self, port: EvtchnPort) -> bool {
        self.port_word(Bitmap::Mask, port)
            .is_some_and(|(w, m)| w.load(Ordering::SeqCst) & m != 0)
    }

    /// Guest side: mask `port` (Linux `mask_evtchn`: `sync_set_bit` on `evtchn_mask`).
    pub fn mask(&self, port: EvtchnPort) {
        if let Some((w, m)) = self.port_word(Bitmap::Mask, port) {
            w.fetch_or(m, Ordering::SeqCst);
        }
    }

    /// Guest side: clear `port`'s mask bit only (no re-raise; compare
    /// [`EventChannels::unmask`]).
    pub fn clear_mask(&self, port: EvtchnPort) {
        if let Some((w, m)) = self.port_word(Bitmap::Mask, port) {
            w.fetch_and(!m, Ordering::SeqCst);
        }
    }

    /// Guest side: clear `port`'s pending bit; returns whether it was set.
    pub fn test_and_clear_pending(&self, port: EvtchnPort) -> bool {
        self.port_word(Bitmap::Pending, port)
            .is_some_and(|(w, m)| w.fetch_and(!m, Ordering::SeqCst) & m != 0)
    }

    /// `evtchn_pending[word]` (0 for `word >= 64`).
    pub fn pending_word(&self, word: usize) -> u64 {
        self.bitmap_word(Bitmap::Pending, word)
            .map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// `evtchn_mask[word]` (0 for `word >= 64`).
    pub fn mask_word(&self, word: usize) -> u64 {
        self.bitmap_word(Bitmap::Mask, word)
            .map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// `vcpu_info[vcpu].evtchn_pending_sel` (0 for an unreachable vCPU).
    pub fn pending_sel(&self, vcpu: u32) -> u64 {
        self.vcpu_word(vcpu, PENDING_SEL_WORD)
            .map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// Guest side: atomically take (exchange with 0) `evtchn_pending_sel`.
    pub fn take_pending_sel(&self, vcpu: u32) -> u64 {
        self.vcpu_word(vcpu, PENDING_SEL_WORD)
            .map_or(0, |w| w.swap(0, Ordering::SeqCst))
    }

    /// Write the `evtchn_upcall_pending` byte (the guest clears it before scanning).
    pub fn set_upcall_pending(&self, vcpu: u32, pending: bool) {
        self.set_byte(vcpu, UPCALL_PENDING_SHIFT, pending);
    }

    /// Write the `evtchn_upcall_mask` byte.
    pub fn set_upcall_mask(&self, vcpu: u32, masked: bool) {
        self.set_byte(vcpu, UPCALL_MASK_SHIFT, masked);
    }

    fn set_byte(&self, vcpu: u32, shift: u32, on: bool) {
        if let Some(w) = self.vcpu_word(vcpu, UPCALL_WORD) {
            // One atomic transition of the whole word, so the byte never passes through a
            // value it was not meant to have.
            let m = 0xffu64 << shift;
            let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
                Some((x & !m) | (u64::from(on) << shift))
            });
        }
    }

    /// Guest side: one pass of the Linux-style 2-level upcall handler for `vcpu`: clear
    /// `upcall_pending`, take `pending_sel`, and for every selected word hand each pending,
    /// unmasked port for which `mine(port)` holds to `handle` after clearing its pending bit.
    /// Repeats while the upcall became pending again. Returns the number of ports handled.
    pub fn guest_upcall(
        &self,
        vcpu: u32,
        mut mine: impl FnMut(EvtchnPort) -> bool,
        mut handle: impl FnMut(EvtchnPort),
    ) -> usize {
        let mut n = 0;
        loop {
            self.set_upcall_pending(vcpu, false);
            let mut sel = self.take_pending_sel(vcpu);
            while sel != 0 {
                let w = sel.trailing_zeros() as usize;
                sel &= sel - 1;
                let mut bits = self.pending_word(w) & !self.mask_word(w);
                while bits != 0 {
                    let b = bits.trailing_zeros();
                    bits &= bits - 1;
                    let port = (w as u32) * 64 + b;
                    if mine(port) && self.test_and_clear_pending(port) {
                        handle(port);
                        n += 1;
                    }
                }
            }
            if !self.upcall_pending(vcpu) {
                return n;
            }
        }
    }
}

impl SharedInfoAccess for SharedInfoWords<'_> {
    fn test_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_word(map, word), 1u64.checked_shl(bit)) {
            (Some(w), Some(m)) => w.load(Ordering::SeqCst) & m != 0,
            _ => false,
        }
    }

    fn test_and_set_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_word(map, word), 1u64.checked_shl(bit)) {
            (Some(w), Some(m)) => w.fetch_or(m, Ordering::SeqCst) & m != 0,
            _ => false,
        }
    }

    fn test_and_clear_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        match (self.bitmap_word(map, word), 1u64.checked_shl(bit)) {
            (Some(w), Some(m)) => w.fetch_and(!m, Ordering::SeqCst) & m != 0,
            _ => false,
        }
    }

    fn pending_sel_test_and_set(&self, vcpu: u32, word: usize) -> bool {
        let bit = u32::try_from(word).ok().and_then(|w| 1u64.checked_shl(w));
        match (self.vcpu_word(vcpu, PENDING_SEL_WORD), bit) {
            (Some(w), Some(m)) => w.fetch_or(m, Ordering::SeqCst) & m != 0,
            _ => false,
        }
    }

    fn upcall_pending_test_and_set(&self, vcpu: u32) -> bool {
        // xen: vcpu_mark_events_pending tests and sets bit 0 of the byte.
        let m = 1u64 << UPCALL_PENDING_SHIFT;
        self.vcpu_word(vcpu, UPCALL_WORD)
            .is_some_and(|w| w.fetch_or(m, Ordering::SeqCst) & m != 0)
    }

    fn upcall_mask(&self, vcpu: u32) -> bool {
        self.vcpu_word(vcpu, UPCALL_WORD)
            .is_some_and(|w| (w.load(Ordering::SeqCst) >> UPCALL_MASK_SHIFT) & 0xff != 0)
    }
    fn upcall_pending(&self, vcpu: u32) -> bool {
        self.vcpu_word(vcpu, UPCALL_WORD)
            .is_some_and(|w| (w.load(Ordering::SeqCst) >> UPCALL_PENDING_SHIFT) & 0xff != 0)
    }
}

/// An in-memory shared info page (one 4 KiB page of `AtomicU64`), for tests and simulations.
#[derive(Debug)]
pub struct SharedInfoMem {
    words: Box<[AtomicU64]>,
}

impl Default for SharedInfoMem {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl SharedInfoMem {
    /// An all-zero page (every port unmasked, every vCPU's upcalls enabled).
    pub fn zeroed() -> Self {
        SharedInfoMem {
            words: (0..512).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The start-of-day page Xen gives a PV guest: zero, with every `vcpu_info`'s upcall mask
    /// set (xen: `SharedInfo::start_of_day`).
    pub fn start_of_day() -> Self {
        let m = Self::zeroed();
        for v in 0..si::XEN_LEGACY_MAX_VCPUS as u32 {
            m.view().set_upcall_mask(v, true);
        }
        m
    }

    /// The page as [`SharedInfoWords`].
    pub fn view(&self) -> SharedInfoWords<'_> {
        SharedInfoWords { words: &self.words }
    }

    /// The page's bytes (a snapshot), laid out as `struct shared_info` plus padding.
    pub fn snapshot(&self) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|w| w.load(Ordering::SeqCst).to_le_bytes())
            .collect()
    }
}

impl SharedInfoAccess for SharedInfoMem {
    fn test_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        self.view().test_bit(map, word, bit)
    }
    fn test_and_set_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        self.view().test_and_set_bit(map, word, bit)
    }
    fn test_and_clear_bit(&self, map: Bitmap, word: usize, bit: u32) -> bool {
        self.view().test_and_clear_bit(map, word, bit)
    }
    fn pending_sel_test_and_set(&self, vcpu: u32, word: usize) -> bool {
        self.view().pending_sel_test_and_set(vcpu, word)
    }
    fn upcall_pending_test_and_set(&self, vcpu: u32) -> bool {
        self.view().upcall_pending_test_and_set(vcpu)
    }
    fn upcall_mask(&self, vcpu: u32) -> bool {
        SharedInfoAccess::upcall_mask(&self.view(), vcpu)
    }
    fn upcall_pending(&self, vcpu: u32) -> bool {
        self.view().upcall_pending(vcpu)
    }
}

// ---------------------------------------------------------------------------------------------
// Port table
// ---------------------------------------------------------------------------------------------

/// A port number in kxen's backend domain (what the guest sees as the remote port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendPort(pub u32);

/// The other end of an interdomain channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteEnd {
    /// A port of kxen's backend domain.
    Backend(BackendPort),
    /// Another port of the guest itself (interdomain binding to `DOMID_SELF`).
    Loopback(EvtchnPort),
}

/// The state of a guest port (xen: `ECS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not in use.
    Free,
    /// Never allocatable (port 0).
    Reserved,
    /// Allocated, waiting for `remote_dom` to bind to it.
    Unbound {
        /// The domain allowed to bind.
        remote_dom: DomId,
    },
    /// Connected.
    Interdomain(RemoteEnd),
    /// Bound to a VIRQ.
    Virq(u32),
    /// Bound for inter-processor interrupts.
    Ipi,
}

/// A guest port: its state and the vCPU it notifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// State.
    pub state: PortState,
    /// vCPU notified when the port is raised (`notify_vcpu_id`).
    pub vcpu: u32,
}

const FREE: PortInfo = PortInfo {
    state: PortState::Free,
    vcpu: 0,
};

/// State of a backend-domain port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendChan {
    /// Waiting for the guest to bind (remote domain = the guest).
    Unbound,
    /// Connected to this guest port.
    Connected(EvtchnPort),
}

/// Something the VMM must do after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Wake this vCPU: an upcall became pending for it (wake it if blocked, make it deliver
    /// the event if running), or it polled (`SCHEDOP_poll`) a port that became pending. The
    /// VMM's wake must not be lost if it comes before the vCPU actually sleeps (token
    /// semantics, like `std::thread::park`).
    Kick(u32),
    /// The guest notified this backend port.
    Backend(BackendPort),
    /// The guest bound a port to this (previously unbound) backend port.
    BackendConnected {
        /// The backend end.
        backend: BackendPort,
        /// The guest's new port.
        guest: EvtchnPort,
    },
    /// The guest closed its end; the backend port is unbound again (the guest may rebind).
    BackendDisconnected(BackendPort),
}

const INLINE_EFFECTS: usize = 4;

/// The effects of one operation. Holds four without allocating, enough for every operation
/// but `EVTCHNOP_reset` of many backend channels and raises waking many pollers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    inline: [Option<Effect>; INLINE_EFFECTS],
    more: Vec<Effect>,
}

impl Effects {
    /// No effects.
    pub const fn new() -> Self {
        Effects {
            inline: [None; INLINE_EFFECTS],
            more: Vec::new(),
        }
    }

    /// Append an effect.
    pub fn push(&mut self, e: Effect) {
        if let Some(slot) = self.inline.iter_mut().find(|s| s.is_none()) {
            *slot = Some(e);
        } else {
            self.more.push(e);
        }
    }

    /// The effects in order.
    pub fn iter(&self) -> impl Iterator<Item = Effect> + '_ {
        self.inline
            .iter()
            .flatten()
            .copied()
            .chain(self.more.iter().copied())
    }

    /// Number of effects.
    pub fn len(&self) -> usize {
        self.inline.iter().flatten().count() + self.more.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    /// Whether `e` is among them.
    pub fn contains(&self, e: Effect) -> bool {
        self.iter().any(|x| x == e)
    }

    /// The vCPUs to kick.
    pub fn kicks(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().filter_map(|e| match e {
            Effect::Kick(v) => Some(v),
            _ => None,
        })
    }

    fn extend(&mut self, other: Effects) {
        for e in other.iter() {
            self.push(e);
        }
    }
}

/// Invalid [`EvtchnConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvtchnError {
    /// The vCPU count is 0 or above [`MAX_VCPUS`].
    #[error("invalid vCPU count {0} (1..={MAX_VCPUS})")]
    VcpuCount(u32),
    /// A domain id is reserved (`>= DOMID_FIRST_RESERVED`).
    #[error("domain id {0:#x} is reserved")]
    ReservedDomid(DomId),
    /// The guest and the backend domain have the same id.
    #[error("guest and backend domain share domain id {0}")]
    SameDomid(DomId),
}

/// How the event channel state is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvtchnConfig {
    /// vCPUs of the guest.
    pub nr_vcpus: u32,
    /// The guest's domain id.
    pub domid: DomId,
    /// The backend domain's id as the guest sees it.
    pub backend_domid: DomId,
}

impl EvtchnConfig {
    /// `nr_vcpus` vCPUs, default domain ids.
    pub const fn new(nr_vcpus: u32) -> Self {
        EvtchnConfig {
            nr_vcpus,
            domid: DEFAULT_GUEST_DOMID,
            backend_domid: DEFAULT_BACKEND_DOMID,
        }
    }
}

/// Which domain a `domid_t` argument names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dom {
    Guest,
    Backend,
}

/// One guest's event channels (2-level ABI). See the module documentation.
#[derive(Debug)]
pub struct EventChannels {
    domid: DomId,
    backend_domid: DomId,
    nr_vcpus: u32,
    ports: Vec<PortInfo>,
    /// Per vCPU, VIRQ -> port (0 = unbound). Global VIRQs live in vCPU 0's row, as in Xen.
    virq_to_port: Vec<[EvtchnPort; NR_VIRQS_USIZE]>,
    backend: BTreeMap<u32, BackendChan>,
    /// Per vCPU, what it polls in `SCHEDOP_poll`: 0 = not polling, [`POLL_ANY`], or port + 1.
    polling: Vec<AtomicU64>,
    /// vCPUs with a non-zero `polling` word (fast path for raises).
    nr_polling: AtomicUsize,
}

const POLL_ANY: u64 = u64::MAX;

/// Most ports one `SCHEDOP_poll` may name (xen: do_poll's "fairly arbitrary limit").
pub const MAX_POLL_PORTS: usize = 128;

/// What [`EventChannels::poll_start`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// A polled port is pending, or an upcall needs delivery: return 0 without blocking.
    Ready,
    /// Block the vCPU until a [`Effect::Kick`] for it, its timeout, or any other wake; then
    /// call [`EventChannels::poll_stop`].
    Blocked,
}

fn read_arg<T: Pod>(arg: &[u8]) -> Result<T, Errno> {
    T::read_from_prefix(arg).ok_or(Errno::EFAULT)
}

fn write_arg<T: Pod>(v: &T, arg: &mut [u8]) -> Result<(), Errno> {
    v.write_to_prefix(arg).ok_or(Errno::EFAULT)
}

impl EventChannels {
    /// Fresh state: every port free except the reserved port 0 (xen: evtchn_init).
    pub fn new(cfg: EvtchnConfig) -> Result<Self, EvtchnError> {
        if cfg.nr_vcpus == 0 || cfg.nr_vcpus > MAX_VCPUS {
            return Err(EvtchnError::VcpuCount(cfg.nr_vcpus));
        }
        for d in [cfg.domid, cfg.backend_domid] {
            if d >= DOMID_FIRST_RESERVED {
                return Err(EvtchnError::ReservedDomid(d));
            }
        }
        if cfg.domid == cfg.backend_domid {
            return Err(EvtchnError::SameDomid(cfg.domid));
        }
        let mut ports = vec![FREE; NR_PORTS];
        ports[0].state = PortState::Reserved;
        Ok(EventChannels {
            domid: cfg.domid,
            backend_domid: cfg.backend_domid,
            nr_vcpus: cfg.nr_vcpus,
            ports,
            virq_to_port: vec![[0; NR_VIRQS_USIZE]; cfg.nr_vcpus as usize],
            backend: BTreeMap::new(),
            polling: (0..cfg.nr_vcpus).map(|_| AtomicU64::new(0)).collect(),
            nr_polling: AtomicUsize::new(0),
        })
    }

    /// The guest's domain id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The backend domain's id.
    pub fn backend_domid(&self) -> DomId {
        self.backend_domid
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    /// A port's state and vCPU; `None` out of range.
    pub fn port(&self, port: EvtchnPort) -> Option<PortInfo> {
        self.ports.get(port as usize).copied()
    }

    /// The port bound to `virq` for `vcpu` (global VIRQs: `vcpu` 0), if any.
    pub fn virq_port(&self, vcpu: u32, virq: u32) -> Option<EvtchnPort> {
        let p = *self.virq_to_port.get(vcpu as usize)?.get(virq as usize)?;
        (p != 0).then_some(p)
    }

    /// The guest port connected to a backend port, if connected.
    pub fn backend_peer(&self, bp: BackendPort) -> Option<EvtchnPort> {
        match self.backend.get(&bp.0)? {
            BackendChan::Connected(p) => Some(*p),
            BackendChan::Unbound => None,
        }
    }

    fn lookup_dom(&self, dom: DomId) -> Result<Dom, Errno> {
        // xen: rcu_lock_domain_by_any_id — DOMID_SELF names the caller.
        if dom == DOMID_SELF || dom == self.domid {
            Ok(Dom::Guest)
        } else if dom == self.backend_domid {
            Ok(Dom::Backend)
        } else {
            Err(Errno::ESRCH)
        }
    }

    /// A `dom` argument checked with XSM_TARGET: a domU may only name itself.
    fn target_self(&self, dom: DomId) -> Result<(), Errno> {
        match self.lookup_dom(dom)? {
            Dom::Guest => Ok(()),
            Dom::Backend => Err(Errno::EPERM),
        }
    }

    fn vcpu_exists(&self, vcpu: u32) -> bool {
        vcpu < self.nr_vcpus
    }

    fn info(&self, port: EvtchnPort) -> Result<PortInfo, Errno> {
        self.port(port).ok_or(Errno::EINVAL)
    }

    fn get_free_port(&self) -> Result<EvtchnPort, Errno> {
        // xen: get_free_port — lowest free port, -ENOSPC when none.
        self.ports
            .iter()
            .position(|p| p.state == PortState::Free)
            .map(|p| p as EvtchnPort)
            .ok_or(Errno::ENOSPC)
    }

    fn set(&mut self, port: EvtchnPort, info: PortInfo) {
        if let Some(p) = self.ports.get_mut(port as usize) {
            *p = info;
        }
    }

    /// Raise `port` on its notified vCPU (xen: evtchn_2l_set_pending).
    fn set_pending(&self, port: EvtchnPort, mem: &impl SharedInfoAccess, fx: &mut Effects) {
        let (Some((w, b)), Some(info)) = (port_word_bit(port), self.port(port)) else {
            return;
        };
        // Already pending: the earlier raise did (or will do) the notification.
        if mem.test_and_set_bit(Bitmap::Pending, w, b) {
            return;
        }
        // Masked: stays pending; unmask re-raises. Selector already set: the guest will scan
        // this word anyway.
        if !mem.test_bit(Bitmap::Mask, w, b) && !mem.pending_sel_test_and_set(info.vcpu, w) {
            // xen: vcpu_mark_events_pending kicks only when upcall_pending goes 0 -> 1.
            if !mem.upcall_pending_test_and_set(info.vcpu) {
                fx.push(Effect::Kick(info.vcpu));
            }
        }
        // xen: evtchn_check_pollers — a newly pending port wakes vCPUs polling it (or polling
        // several ports) even while it is masked.
        self.wake_pollers(port, fx);
    }

    fn wake_pollers(&self, port: EvtchnPort, fx: &mut Effects) {
        if self.nr_polling.load(Ordering::SeqCst) == 0 {
            return;
        }
        let want = u64::from(port) + 1;
        for (vcpu, word) in self.polling.iter().enumerate() {
            let w = word.load(Ordering::SeqCst);
            if (w == POLL_ANY || w == want)
                && word
                    .compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                self.nr_polling.fetch_sub(1, Ordering::SeqCst);
                let kick = Effect::Kick(vcpu as u32);
                if !fx.contains(kick) {
                    fx.push(kick);
                }
            }
        }
    }

    /// `SCHEDOP_poll` for `vcpu` on `ports` (already copied in by the caller; an empty list
    /// polls for any event). Registers the vCPU as a poller first, then checks, so a raise
    /// racing with this call either is seen here or kicks the vCPU (xen: do_poll). Returns
    /// [`PollOutcome::Ready`] if an upcall needs delivery or a port is pending; `-EINVAL` for
    /// more than [`MAX_POLL_PORTS`] ports, a port out of range, or a vCPU that does not exist.
    pub fn poll_start(
        &self,
        vcpu: u32,
        ports: &[EvtchnPort],
        mem: &impl SharedInfoAccess,
    ) -> Result<PollOutcome, Errno> {
        if ports.len() > MAX_POLL_PORTS {
            return Err(Errno::EINVAL);
        }
        let word = self.polling.get(vcpu as usize).ok_or(Errno::EINVAL)?;
        if word.swap(POLL_ANY, Ordering::SeqCst) == 0 {
            self.nr_polling.fetch_add(1, Ordering::SeqCst);
        }
        // xen: local_events_need_delivery — upcall pending and not masked.
        let mut ready = mem.events_need_delivery(vcpu);
        for &port in ports {
            if ready {
                break;
            }
            let Some((w, b)) = port_word_bit(port) else {
                self.poll_stop(vcpu);
                return Err(Errno::EINVAL);
            };
            ready = mem.test_bit(Bitmap::Pending, w, b);
        }
        if ready {
            self.poll_stop(vcpu);
            return Ok(PollOutcome::Ready);
        }
        if let [port] = ports {
            // Narrow the wake condition to the single port; a raise of another port that
            // already woke us (word now 0) must not be undone.
            let _ = word.compare_exchange(
                POLL_ANY,
                u64::from(*port) + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        Ok(PollOutcome::Blocked)
    }

    /// End `vcpu`'s poll (timeout, or woken); returns whether it was still registered (false
    /// when a raise already woke it).
    pub fn poll_stop(&self, vcpu: u32) -> bool {
        let Some(word) = self.polling.get(vcpu as usize) else {
            return false;
        };
        if word.swap(0, Ordering::SeqCst) != 0 {
            self.nr_polling.fetch_sub(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Whether `vcpu` is registered as polling.
    pub fn is_polling(&self, vcpu: u32) -> bool {
        self.polling
            .get(vcpu as usize)
            .is_some_and(|w| w.load(Ordering::SeqCst) != 0)
    }

    /// Free a port: clear its pending bit and reset its binding to vCPU 0 (xen: evtchn_free).
    fn free(&mut self, port: EvtchnPort, mem: &impl SharedInfoAccess) {
        if let Some((w, b)) = port_word_bit(port) {
            mem.test_and_clear_bit(Bitmap::Pending, w, b);
        }
        self.set(port, FREE);
    }

    // ----- guest operations (xen: common/event_channel.c) -----

    /// `EVTCHNOP_alloc_unbound`: a new port that `remote_dom` may bind to. `dom` must name the
    /// guest (`DOMID_SELF` or its id): `-EPERM` for the backend domain, `-ESRCH` otherwise.
    pub fn alloc_unbound(&mut self, dom: DomId, remote_dom: DomId) -> Result<EvtchnPort, Errno> {
        self.target_self(dom)?;
        let port = self.get_free_port()?;
        // xen: a remote of DOMID_SELF is stored as the caller's id.
        let remote_dom = if remote_dom == DOMID_SELF {
            self.domid
        } else {
            remote_dom
        };
        self.set(
            port,
            PortInfo {
                state: PortState::Unbound { remote_dom },
                vcpu: 0,
            },
        );
        Ok(port)
    }

    /// `EVTCHNOP_bind_interdomain`: connect a new local port to `remote_port` of `remote_dom`
    /// (the backend domain, or the guest itself), which must be unbound and offered to the
    /// guest. The new port is raised at once, as Xen does to cover notifications lost while the
    /// remote end was unbound.
    pub fn bind_interdomain(
        &mut self,
        remote_dom: DomId,
        remote_port: u32,
        mem: &impl SharedInfoAccess,
    ) -> Result<(EvtchnPort, Effects), Errno> {
        let dom = self.lookup_dom(remote_dom)?;
        let lport = self.get_free_port()?;
        let mut fx = Effects::new();
        let remote = match dom {
            Dom::Guest => {
                let r = self.info(remote_port)?;
                if r.state
                    != (PortState::Unbound {
                        remote_dom: self.domid,
                    })
                {
                    return Err(Errno::EINVAL);
                }
                self.set(
                    remote_port,
                    PortInfo {
                        state: PortState::Interdomain(RemoteEnd::Loopback(lport)),
                        vcpu: r.vcpu,
                    },
                );
                RemoteEnd::Loopback(remote_port)
            }
            Dom::Backend => {
                match self.backend.get_mut(&remote_port) {
                    Some(c @ BackendChan::Unbound) => *c = BackendChan::Connected(lport),
                    _ => return Err(Errno::EINVAL),
                }
                fx.push(Effect::BackendConnected {
                    backend: BackendPort(remote_port),
                    guest: lport,
                });
                RemoteEnd::Backend(BackendPort(remote_port))
            }
        };
        self.set(
            lport,
            PortInfo {
                state: PortState::Interdomain(remote),
                vcpu: 0,
            },
        );
        self.set_pending(lport, mem, &mut fx);
        Ok((lport, fx))
    }

    /// `EVTCHNOP_bind_virq`. `-EINVAL`: unknown VIRQ, or a global VIRQ on a vCPU other than 0;
    /// `-ENOENT`: no such vCPU; `-EEXIST`: already bound on that vCPU.
    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> Result<EvtchnPort, Errno> {
        if virq >= NR_VIRQS {
            return Err(Errno::EINVAL);
        }
        if !virq_is_per_vcpu(virq) && vcpu != 0 {
            return Err(Errno::EINVAL);
        }
        if !self.vcpu_exists(vcpu) {
            return Err(Errno::ENOENT);
        }
        if self.virq_port(vcpu, virq).is_some() {
            return Err(Errno::EEXIST);
        }
        let port = self.get_free_port()?;
        self.set(
            port,
            PortInfo {
                state: PortState::Virq(virq),
                vcpu,
            },
        );
        if let Some(slot) = self
            .virq_to_port
            .get_mut(vcpu as usize)
            .and_then(|row| row.get_mut(virq as usize))
        {
            *slot = port;
        }
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`: a port that notifies `vcpu` (`-ENOENT` if it does not exist).
    pub fn bind_ipi(&mut self, vcpu: u32) -> Result<EvtchnPort, Errno> {
        if !self.vcpu_exists(vcpu) {
            return Err(Errno::ENOENT);
        }
        let port = self.get_free_port()?;
        self.set(
            port,
            PortInfo {
                state: PortState::Ipi,
                vcpu,
            },
        );
        Ok(port)
    }

    /// `EVTCHNOP_bind_pirq`: kxen guests are domUs with no physical IRQ access; Xen refuses
    /// with `-EPERM` (`pirq_access_permitted`), after `-EINVAL` for a PIRQ beyond the domain's
    /// range, which kxen does not model.
    pub fn bind_pirq(&mut self, _pirq: u32, _flags: u32) -> Result<EvtchnPort, Errno> {
        Err(Errno::EPERM)
    }

    /// `EVTCHNOP_close`. `-EINVAL` for a port out of range, free or reserved. Closing one end
    /// of an interdomain channel leaves the other end unbound, waiting for a rebind; for a
    /// backend end that yields [`Effect::BackendDisconnected`].
    pub fn close(
        &mut self,
        port: EvtchnPort,
        mem: &impl SharedInfoAccess,
    ) -> Result<Effects, Errno> {
        let info = self.info(port)?;
        let mut fx = Effects::new();
        match info.state {
            PortState::Free | PortState::Reserved => return Err(Errno::EINVAL),
            PortState::Unbound { .. } | PortState::Ipi => {}
            PortState::Virq(virq) => {
                // Global VIRQs are recorded on vCPU 0 whatever vCPU they notify.
                let row = if virq_is_per_vcpu(virq) { info.vcpu } else { 0 };
                if let Some(slot) = self
                    .virq_to_port
                    .get_mut(row as usize)
                    .and_then(|r| r.get_mut(virq as usize))
                {
                    if *slot == port {
                        *slot = 0;
                    }
                }
            }
            PortState::Interdomain(RemoteEnd::Loopback(peer)) => {
                if let Some(p) = self.ports.get_mut(peer as usize) {
                    p.state = PortState::Unbound {
                        remote_dom: self.domid,
                    };
                }
            }
            PortState::Interdomain(RemoteEnd::Backend(bp)) => {
                if let Some(c) = self.backend.get_mut(&bp.0) {
                    *c = BackendChan::Unbound;
                }
                fx.push(Effect::BackendDisconnected(bp));
            }
        }
        self.free(port, mem);
        Ok(fx)
    }

    /// `EVTCHNOP_send`: notify the remote end (interdomain), raise the port itself (IPI), or
    /// drop silently (unbound). `-EINVAL` for other states and ports out of range.
    pub fn send(&self, port: EvtchnPort, mem: &impl SharedInfoAccess) -> Result<Effects, Errno> {
        let info = self.info(port)?;
        let mut fx = Effects::new();
        match info.state {
            PortState::Interdomain(RemoteEnd::Backend(bp)) => fx.push(Effect::Backend(bp)),
            PortState::Interdomain(RemoteEnd::Loopback(peer)) => {
                self.set_pending(peer, mem, &mut fx)
            }
            PortState::Ipi => self.set_pending(port, mem, &mut fx),
            PortState::Unbound { .. } => {}
            PortState::Free | PortState::Reserved | PortState::Virq(_) => {
                return Err(Errno::EINVAL)
            }
        }
        Ok(fx)
    }

    /// `EVTCHNOP_status` of one of the guest's ports (`dom` as for
    /// [`EventChannels::alloc_unbound`]). Fills `status`, `vcpu` and the union of `st`.
    pub fn status(&self, st: &mut EvtchnStatus) -> Result<(), Errno> {
        self.target_self(st.dom)?;
        let info = self.info(st.port)?;
        // xen: the union is left untouched for closed and IPI ports.
        st.status = match info.state {
            PortState::Free | PortState::Reserved => ec::EVTCHNSTAT_CLOSED,
            PortState::Unbound { remote_dom } => {
                st.set_unbound(remote_dom);
                ec::EVTCHNSTAT_UNBOUND
            }
            PortState::Interdomain(RemoteEnd::Backend(bp)) => {
                st.set_interdomain(self.backend_domid, bp.0);
                ec::EVTCHNSTAT_INTERDOMAIN
            }
            PortState::Interdomain(RemoteEnd::Loopback(p)) => {
                st.set_interdomain(self.domid, p);
                ec::EVTCHNSTAT_INTERDOMAIN
            }
            PortState::Virq(v) => {
                st.set_irq(v);
                ec::EVTCHNSTAT_VIRQ
            }
            PortState::Ipi => ec::EVTCHNSTAT_IPI,
        };
        st.vcpu = info.vcpu;
        Ok(())
    }

    /// `EVTCHNOP_bind_vcpu`: change the vCPU a port notifies. As in Xen, allowed for unbound
    /// and interdomain ports and global VIRQs; `-EINVAL` for per-vCPU VIRQs, IPIs (their vCPU
    /// is fixed at bind time), free/reserved ports and ports out of range; `-ENOENT` for a
    /// vCPU that does not exist (checked first). Already-pending events stay where they were
    /// signalled; later ones go to the new vCPU.
    pub fn bind_vcpu(&mut self, port: EvtchnPort, vcpu: u32) -> Result<(), Errno> {
        if !self.vcpu_exists(vcpu) {
            return Err(Errno::ENOENT);
        }
        let info = self.info(port)?;
        match info.state {
            PortState::Virq(v) if !virq_is_per_vcpu(v) => {}
            PortState::Unbound { .. } | PortState::Interdomain(_) => {}
            _ => return Err(Errno::EINVAL),
        }
        self.set(port, PortInfo { vcpu, ..info });
        Ok(())
    }

    /// `EVTCHNOP_unmask`: clear the mask bit and, if the port is pending, re-raise it on its
    /// vCPU (xen: evtchn_2l_unmask). `-EINVAL` out of range; any state is accepted.
    pub fn unmask(&self, port: EvtchnPort, mem: &impl SharedInfoAccess) -> Result<Effects, Errno> {
        let info = self.info(port)?;
        let mut fx = Effects::new();
        let Some((w, b)) = port_word_bit(port) else {
            return Err(Errno::EINVAL);
        };
        if mem.test_and_clear_bit(Bitmap::Mask, w, b)
            && mem.test_bit(Bitmap::Pending, w, b)
            && !mem.pending_sel_test_and_set(info.vcpu, w)
            && !mem.upcall_pending_test_and_set(info.vcpu)
        {
            fx.push(Effect::Kick(info.vcpu));
        }
        Ok(fx)
    }

    /// `EVTCHNOP_reset` of the guest (`dom` as for [`EventChannels::alloc_unbound`]): close
    /// every open port (xen: evtchn_reset).
    pub fn reset(&mut self, dom: DomId, mem: &impl SharedInfoAccess) -> Result<Effects, Errno> {
        self.target_self(dom)?;
        Ok(self.close_all(mem))
    }

    /// Close every open port (reset, or domain teardown).
    pub fn close_all(&mut self, mem: &impl SharedInfoAccess) -> Effects {
        let mut fx = Effects::new();
        for port in 1..NR_EVENT_CHANNELS {
            if matches!(
                self.ports[port as usize].state,
                PortState::Free | PortState::Reserved
            ) {
                continue;
            }
            if let Ok(f) = self.close(port, mem) {
                fx.extend(f);
            }
        }
        fx
    }

    /// The `HYPERVISOR_event_channel_op` handler: `arg` holds the argument struct copied in
    /// from the guest (at least [`ec::arg_size`]`(cmd)` bytes, else `-EFAULT`); on success the
    /// outputs (allocated port, status) are written back into it for the caller to copy out.
    /// Unknown commands and the FIFO ABI give `-ENOSYS`.
    pub fn do_event_channel_op(
        &mut self,
        cmd: u32,
        arg: &mut [u8],
        caller_vcpu: u32,
        mem: &impl SharedInfoAccess,
    ) -> Result<Effects, Errno> {
        let size = match cmd {
            ec::EVTCHNOP_INIT_CONTROL | ec::EVTCHNOP_EXPAND_ARRAY | ec::EVTCHNOP_SET_PRIORITY => {
                return Err(Errno::ENOSYS)
            }
            _ => ec::arg_size(cmd).ok_or(Errno::ENOSYS)?,
        };
        let arg = arg.get_mut(..size).ok_or(Errno::EFAULT)?;
        let none = Effects::new;
        let res = match cmd {
            ec::EVTCHNOP_ALLOC_UNBOUND => {
                let mut a: EvtchnAllocUnbound = read_arg(arg)?;
                a.port = self.alloc_unbound(a.dom, a.remote_dom)?;
                write_arg(&a, arg).map(|_| none())
            }
            ec::EVTCHNOP_BIND_INTERDOMAIN => {
                let mut a: EvtchnBindInterdomain = read_arg(arg)?;
                let (port, fx) = self.bind_interdomain(a.remote_dom, a.remote_port, mem)?;
                a.local_port = port;
                write_arg(&a, arg).map(|_| fx)
            }
            ec::EVTCHNOP_BIND_VIRQ => {
                let mut a: EvtchnBindVirq = read_arg(arg)?;
                a.port = self.bind_virq(a.virq, a.vcpu)?;
                write_arg(&a, arg).map(|_| none())
            }
            ec::EVTCHNOP_BIND_IPI => {
                let mut a: EvtchnBindIpi = read_arg(arg)?;
                a.port = self.bind_ipi(a.vcpu)?;
                write_arg(&a, arg).map(|_| none())
            }
            ec::EVTCHNOP_BIND_PIRQ => {
                let mut a: EvtchnBindPirq = read_arg(arg)?;
                a.port = self.bind_pirq(a.pirq, a.flags)?;
                write_arg(&a, arg).map(|_| none())
            }
            ec::EVTCHNOP_CLOSE => {
                let a: EvtchnClose = read_arg(arg)?;
                self.close(a.port, mem)
            }
            ec::EVTCHNOP_SEND => {
                let a: EvtchnSend = read_arg(arg)?;
                self.send(a.port, mem)
            }
            ec::EVTCHNOP_STATUS => {
                let mut a: EvtchnStatus = read_arg(arg)?;
                self.status(&mut a)?;
                write_arg(&a, arg).map(|_| none())
            }
            ec::EVTCHNOP_BIND_VCPU => {
                let a: EvtchnBindVcpu = read_arg(arg)?;
                self.bind_vcpu(a.port, a.vcpu).map(|_| none())
            }
            ec::EVTCHNOP_UNMASK => {
                let a: EvtchnUnmask = read_arg(arg)?;
                self.unmask(a.port, mem)
            }
            ec::EVTCHNOP_RESET => {
                let a: EvtchnReset = read_arg(arg)?;
                self.reset(a.dom, mem)
            }
            _ => Err(Errno::ENOSYS),
        };
        if let Err(e) = res {
            tracing::debug!(
                op = ec::name(cmd).unwrap_or("?"),
                vcpu = caller_vcpu,
                errno = e.name(),
                "event_channel_op failed"
            );
        }
        res
    }

    // ----- VMM side: VIRQs and the backend domain -----

    /// Raise `virq` towards the guest: a per-vCPU VIRQ on `vcpu`'s binding, a global one on
    /// its (vCPU 0 row) binding and whatever vCPU that port notifies (xen:
    /// send_guest_vcpu_virq / send_guest_global_virq). Unbound VIRQs are dropped, as are
    /// out-of-range `virq`/`vcpu`.
    pub fn raise_virq(&self, vcpu: u32, virq: u32, mem: &impl SharedInfoAccess) -> Effects {
        let mut fx = Effects::new();
        let row = if virq_is_per_vcpu(virq) { vcpu } else { 0 };
        if let Some(port) = self.virq_port(row, virq) {
            self.set_pending(port, mem, &mut fx);
        }
        fx
    }

    fn backend_free_port(&self) -> Result<u32, Errno> {
        // Backend port 0 is reserved as in every Xen domain.
        (1..NR_EVENT_CHANNELS)
            .find(|p| !self.backend.contains_key(p))
            .ok_or(Errno::ENOSPC)
    }

    /// Toolstack step: a guest port left unbound for the backend domain (what
    /// `xc_evtchn_alloc_unbound(guest, backend)` does for the console and xenstore channels).
    pub fn alloc_unbound_for_backend(&mut self) -> Result<EvtchnPort, Errno> {
        self.alloc_unbound(DOMID_SELF, self.backend_domid)
    }

    /// The backend binds a new backend port to the guest's unbound `guest_port` (dom0's
    /// `EVTCHNOP_bind_interdomain`). `-EINVAL` unless the port is unbound for the backend.
    /// As Xen raises the binder's new port, the backend should check its ring once.
    pub fn backend_bind_interdomain(
        &mut self,
        guest_port: EvtchnPort,
    ) -> Result<BackendPort, Errno> {
        let info = self.info(guest_port)?;
        if info.state
            != (PortState::Unbound {
                remote_dom: self.backend_domid,
            })
        {
            return Err(Errno::EINVAL);
        }
        let bp = self.backend_free_port()?;
        self.backend.insert(bp, BackendChan::Connected(guest_port));
        self.set(
            guest_port,
            PortInfo {
                state: PortState::Interdomain(RemoteEnd::Backend(BackendPort(bp))),
                ..info
            },
        );
        Ok(BackendPort(bp))
    }

    /// Both steps at once: a guest port connected to a new backend port (for start_info's
    /// `store_evtchn` / `console.domU.evtchn`; on a fresh table the first two calls give
    /// guest ports 1 and 2).
    pub fn connect_backend(&mut self) -> Result<(EvtchnPort, BackendPort), Errno> {
        let port = self.alloc_unbound_for_backend()?;
        match self.backend_bind_interdomain(port) {
            Ok(bp) => Ok((port, bp)),
            Err(e) => {
                self.set(port, FREE);
                Err(e)
            }
        }
    }

    /// The backend offers an unbound port for the guest to bind with
    /// `EVTCHNOP_bind_interdomain(backend_domid, port)`.
    pub fn backend_alloc_unbound(&mut self) -> Result<BackendPort, Errno> {
        let bp = self.backend_free_port()?;
        self.backend.insert(bp, BackendChan::Unbound);
        Ok(BackendPort(bp))
    }

    /// The backend closes its port; a connected guest port becomes unbound (remote = the
    /// backend domain), as Xen's close does to the other end. `-EINVAL` for an unknown port.
    pub fn backend_close(&mut self, bp: BackendPort) -> Result<(), Errno> {
        match self.backend.remove(&bp.0) {
            None => Err(Errno::EINVAL),
            Some(BackendChan::Unbound) => Ok(()),
            Some(BackendChan::Connected(p)) => {
                let backend_domid = self.backend_domid;
                if let Some(info) = self.ports.get_mut(p as usize) {
                    info.state = PortState::Unbound {
                        remote_dom: backend_domid,
                    };
                }
                Ok(())
            }
        }
    }

    /// The backend notifies its port: raise the connected guest port. Dropped silently while
    /// unbound; `-EINVAL` for an unknown backend port.
    pub fn notify_guest(
        &self,
        bp: BackendPort,
        mem: &impl SharedInfoAccess,
    ) -> Result<Effects, Errno> {
        let mut fx = Effects::new();
        match self.backend.get(&bp.0) {
            None => return Err(Errno::EINVAL),
            Some(BackendChan::Unbound) => {}
            Some(BackendChan::Connected(p)) => self.set_pending(*p, mem, &mut fx),
        }
        Ok(fx)
    }

    /// Check the table's internal consistency (used by tests; not meaningful while other
    /// threads raise events): port 0 alone is reserved, free ports notify vCPU 0, every vCPU
    /// exists, interdomain ends pair up, the VIRQ map and the VIRQ ports agree both ways, and
    /// the poller count is right. Returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.ports.len() != NR_PORTS {
            return Err("port table size".into());
        }
        for (i, p) in self.ports.iter().enumerate() {
            let port = i as EvtchnPort;
            if (p.state == PortState::Reserved) != (port == 0) {
                return Err(format!("port {port}: reserved state {:?}", p.state));
            }
            if !self.vcpu_exists(p.vcpu) {
                return Err(format!("port {port}: vcpu {} does not exist", p.vcpu));
            }
            match p.state {
                PortState::Free if p.vcpu != 0 => {
                    return Err(format!("free port {port} bound to vcpu {}", p.vcpu))
                }
                PortState::Interdomain(RemoteEnd::Loopback(q))
                    if q == port
                        || self.port(q).map(|x| x.state)
                            != Some(PortState::Interdomain(RemoteEnd::Loopback(port))) =>
                {
                    return Err(format!(
                        "port {port}: loopback peer {q} does not point back"
                    ));
                }
                PortState::Interdomain(RemoteEnd::Backend(bp))
                    if self.backend.get(&bp.0) != Some(&BackendChan::Connected(port)) =>
                {
                    return Err(format!("port {port}: backend {bp:?} does not point back"));
                }
                PortState::Virq(v)
                    if self.virq_port(if virq_is_per_vcpu(v) { p.vcpu } else { 0 }, v)
                        != Some(port) =>
                {
                    return Err(format!("virq port {port} ({v}) missing from the map"));
                }
                _ => {}
            }
        }
        for (vcpu, row) in self.virq_to_port.iter().enumerate() {
            for (virq, &port) in row.iter().enumerate() {
                if port == 0 {
                    continue;
                }
                let virq = virq as u32;
                let ok = match self.port(port) {
                    Some(PortInfo {
                        state: PortState::Virq(v),
                        vcpu: pv,
                    }) => {
                        v == virq
                            && if virq_is_per_vcpu(virq) {
                                pv as usize == vcpu
                            } else {
                                vcpu == 0
                            }
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "virq map vcpu {vcpu} virq {virq} -> port {port} stale"
                    ));
                }
            }
        }
        let polling = self
            .polling
            .iter()
            .filter(|w| w.load(Ordering::SeqCst) != 0)
            .count();
        if polling != self.nr_polling.load(Ordering::SeqCst) {
            return Err(format!("{polling} vcpus polling, counter says otherwise"));
        }
        for (&bp, c) in &self.backend {
            if bp == 0 || bp >= NR_EVENT_CHANNELS {
                return Err(format!("backend port {bp} out of range"));
            }
            if let BackendChan::Connected(p) = *c {
                if self.port(p).map(|x| x.state)
                    != Some(PortState::Interdomain(RemoteEnd::Backend(BackendPort(bp))))
                {
                    return Err(format!("backend port {bp} -> guest port {p} not connected"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
