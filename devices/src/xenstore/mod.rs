//! An in-process xenstored: the store (tree, permissions, transactions, watches, quotas), one
//! [`Connection`] per guest domain, and the ring transport.
//!
//! Protocol: xen docs/misc/xenstore.txt and public/io/xs_wire.h. The host (the VMM) acts as
//! dom0 through the direct methods ([`Xenstore::write`], [`Xenstore::read`], ...); guests talk
//! through their ring page ([`Xenstore::service_ring`]) or a byte stream ([`Xenstore::feed`]).
//!
//! Use from the VMM:
//! 1. at build time, [`Xenstore::new_for_pv_domu`] (the libxl layout, the guest connected
//!    and introduced) and [`Xenstore::init_ring`] on the guest's xenstore page;
//! 2. on each event-channel kick from the guest, [`Xenstore::service_ring`]; if the report
//!    says `notify`, signal the guest's xenstore event channel;
//! 3. after host-side changes ([`Xenstore::request_shutdown`], [`Xenstore::write`]),
//!    [`Xenstore::flush_ring`] to deliver the watch events they caused (notify if it moved
//!    bytes);
//! 4. `--xenstore-dump`: [`Xenstore::dump`].
//!
//! Everything a guest sends is hostile: malformed requests get an error string reply,
//! quota overruns `ENOSPC`/`E2BIG`, and wire violations (a payload length above 4096, ring
//! indices that cannot be right) stop the connection as xenstored does, without panicking.

mod ops;
pub mod ring;
pub mod tree;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use tracing::{debug, warn};

use crate::console::RingPage;
use ops::{watch_match, Fire, OpCtx, TxLog};
pub use ring::BadIndices;
pub use tree::{canonicalize, domain_path, Access, DomId, Node, Perm, Perms, Tree};
pub use wire::{Header, Message, MessageReader, MsgType, WireError, XsError, PAYLOAD_MAX};

/// Per-domain limits (xenstored defaults, tools/xenstored/core.c `quota_*`). Dom0 is exempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`quota_nb_entry_per_domain`, 1000).
    pub entries_per_domain: usize,
    /// Watches per connection (`quota_nb_watch_per_domain`, 128).
    pub watches_per_domain: usize,
    /// Open transactions per connection (`quota_max_transaction`, 10).
    pub transactions_per_domain: usize,
    /// Bytes of a node's value (`quota_max_entry_size`, 2048).
    pub node_size: usize,
    /// Permission entries per node (`quota_nb_perms_per_node`, 5).
    pub perms_per_node: usize,
    /// Nodes one transaction may access (`quota_trans_nodes`, 1024).
    pub transaction_nodes: usize,
    /// Bytes of output (replies and watch events) queued for a guest that does not consume
    /// them; watch events beyond this are dropped (kxen's bound, in the spirit of xenstored's
    /// per-domain memory quota).
    pub max_queued_output: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            entries_per_domain: 1000,
            watches_per_domain: 128,
            transactions_per_domain: 10,
            node_size: 2048,
            perms_per_node: 5,
            transaction_nodes: 1024,
            max_queued_output: 1 << 20,
        }
    }
}

/// While this much output is queued, a connection's further requests stay in its ring
/// (flow control, like xenstored's limit on outstanding requests).
pub const OUTPUT_PAUSE: usize = 8192;

/// Request bytes consumed per [`Xenstore::service_ring`] call at most, so a guest refilling
/// its ring concurrently cannot keep the VMM busy forever.
pub const MAX_BYTES_PER_SERVICE: usize = 64 * 1024;

/// Errors of the xenstore transport.
#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    /// No connection for this domain.
    #[error("no xenstore connection for domain {0}")]
    NoConnection(DomId),
    /// The ring page accessor failed.
    #[error("xenstore ring access failed: {0}")]
    Page(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The guest violated the wire protocol; the connection is no longer served.
    #[error("domain {domid} violated the xenstore protocol: {err}")]
    Protocol {
        /// The domain.
        domid: DomId,
        /// What it did.
        err: WireError,
    },
    /// The guest's ring indices are impossible; the connection is no longer served.
    #[error("domain {domid} xenstore ring has invalid indices (cons {:#x}, prod {:#x})", .bad.cons, .bad.prod)]
    BadIndices {
        /// The domain.
        domid: DomId,
        /// The indices.
        bad: BadIndices,
    },
    /// The connection was stopped earlier after a protocol violation.
    #[error("domain {0} xenstore connection is stopped after a protocol violation")]
    Stopped(DomId),
    /// A host-side operation failed with a xenstore error.
    #[error("xenstore: {0}")]
    Xs(#[from] XsError),
}

fn page_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> XenstoreError {
    XenstoreError::Page(Box::new(e))
}

/// A registered watch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    /// Absolute path or special `@` name.
    path: String,
    /// The token, echoed in events.
    token: Vec<u8>,
    /// Registered with a relative path: events report paths relative to the domain home.
    relative: bool,
}

#[derive(Debug, Clone)]
struct Transaction {
    tree: Tree,
    log: TxLog,
    fires: Vec<Fire>,
}

/// One guest domain's connection: request parsing, queued output, watches, transactions.
#[derive(Debug)]
pub struct Connection {
    domid: DomId,
    reader: MessageReader,
    out: VecDeque<u8>,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Transaction>,
    next_tx: u32,
    stopped: Option<WireError>,
    dropped_events: u64,
}

impl Connection {
    fn new(domid: DomId) -> Connection {
        Connection {
            domid,
            reader: MessageReader::new(),
            out: VecDeque::new(),
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            stopped: None,
            dropped_events: 0,
        }
    }

    /// The domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Bytes of replies and events waiting to go to the guest.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Number of registered watches.
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Number of open transactions.
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// Watch events dropped because the guest did not consume its output.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The protocol violation that stopped this connection, if any.
    pub fn stopped(&self) -> Option<WireError> {
        self.stopped
    }

    fn push(&mut self, m: &Message) {
        self.out.extend(m.to_bytes());
    }

    fn reset(&mut self) {
        let domid = self.domid;
        *self = Connection::new(domid);
    }
}

/// What [`Xenstore::service_ring`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingReport {
    /// Requests handled.
    pub requests: usize,
    /// Bytes written to the response ring.
    pub output_bytes: usize,
    /// The guest should be notified (ring space freed or data produced, or a reconnect done).
    pub notify: bool,
}

/// The reason written to `control/shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `poweroff`.
    Poweroff,
    /// `reboot`.
    Reboot,
    /// `suspend`.
    Suspend,
    /// `halt`.
    Halt,
}

impl ShutdownRequest {
    /// The string the guest reads.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownRequest::Poweroff => "poweroff",
            ShutdownRequest::Reboot => "reboot",
            ShutdownRequest::Suspend => "suspend",
            ShutdownRequest::Halt => "halt",
        }
    }
}

/// What the toolstack knows about a PV domU, for [`Xenstore::new_for_pv_domu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvDomuInfo {
    /// Domain id (not 0).
    pub domid: DomId,
    /// Domain name.
    pub name: String,
    /// UUID string, used for `/vm/<uuid>`.
    pub uuid: String,
    /// Memory target in KiB (`memory/target`).
    pub target_kib: u64,
    /// Maximum memory in KiB (`memory/static-max`).
    pub max_kib: u64,
    /// vCPUs the domain may have (`cpu/<n>` entries).
    pub max_vcpus: u32,
    /// vCPUs online at boot (`cpu/<n>/availability` = `online` for `n` below this).
    pub online_vcpus: u32,
    /// Event channel of the xenstore ring (`store/port`).
    pub store_port: u32,
    /// MFN of the xenstore ring (`store/ring-ref`).
    pub store_mfn: u64,
    /// Event channel of the console ring (`console/port`).
    pub console_port: u32,
    /// MFN of the console ring (`console/ring-ref`).
    pub console_mfn: u64,
}

impl PvDomuInfo {
    /// A domain with `vcpus` vCPUs online and target = max memory.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        domid: DomId,
        name: &str,
        memory_kib: u64,
        vcpus: u32,
        store_port: u32,
        store_mfn: u64,
        console_port: u32,
        console_mfn: u64,
    ) -> PvDomuInfo {
        PvDomuInfo {
            domid,
            name: name.to_owned(),
            uuid: format!("00000000-0000-0000-0000-{:012x}", domid),
            target_kib: memory_kib,
            max_kib: memory_kib,
            max_vcpus: vcpus,
            online_vcpus: vcpus,
            store_port,
            store_mfn,
            console_port,
            console_mfn,
        }
    }
}

/// libxl's `LIBXL_XENCONSOLE_LIMIT`, written to `console/limit`.
pub const XENCONSOLE_LIMIT: u64 = 1_048_576;

/// The store and its connections.
#[derive(Debug)]
pub struct Xenstore {
    tree: Tree,
    gen: u64,
    conns: BTreeMap<DomId, Connection>,
    introduced: BTreeSet<DomId>,
    quotas: Quotas,
}

impl Default for Xenstore {
    fn default() -> Self {
        Self::new()
    }
}

fn ok_reply() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse_u32(b: &[u8]) -> Result<u32, XsError> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return Err(XsError::EINVAL);
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsError::EINVAL)
}

/// One NUL-terminated argument.
fn one_arg(payload: &[u8]) -> Result<&[u8], XsError> {
    match wire::split_strings(payload).as_deref() {
        Some([a]) => Ok(a),
        _ => Err(XsError::EINVAL),
    }
}

/// Escape a value for [`Xenstore::dump`].
fn escape(v: &[u8]) -> String {
    let mut s = String::new();
    for &b in v {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

impl Xenstore {
    /// A store with `/`, `/local`, `/local/domain` and `/vm`, all dom0's, and the default
    /// quotas.
    pub fn new() -> Xenstore {
        Self::with_quotas(Quotas::default())
    }

    /// As [`Xenstore::new`] with other quotas.
    pub fn with_quotas(quotas: Quotas) -> Xenstore {
        let mut xs = Xenstore {
            tree: Tree::new(),
            gen: 0,
            conns: BTreeMap::new(),
            introduced: BTreeSet::new(),
            quotas,
        };
        for p in ["/local/domain", "/vm", "/tool/xenstored"] {
            // Host writes of valid paths cannot fail.
            let _ = xs.mkdir(p);
        }
        xs
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// A store holding what a toolstack (libxl) writes for a PV domU, with a connection for
    /// it, the domain introduced.
    ///
    /// Layout and permissions follow libxl (tools/libs/light/libxl_create.c
    /// `libxl__domain_make`, libxl_dom.c `libxl__build_post`): the domain's home and the
    /// `cpu`, `memory`, `device`, `control`, `store`, `console` entries are dom0's with read
    /// access for the guest (`n0 r<id>`); `control/shutdown`, `control/feature-*`,
    /// `control/sysrq`, `device/suspend/event-channel`, `data`, `drivers`, `feature`, `attr`
    /// and `error` are owned by the guest (`n<id>`).
    pub fn new_for_pv_domu(info: &PvDomuInfo) -> Result<Xenstore, XenstoreError> {
        let mut xs = Xenstore::new();
        xs.populate_pv_domu(info)?;
        Ok(xs)
    }

    /// Write the libxl entries for a PV domU into this store (see
    /// [`Xenstore::new_for_pv_domu`]), connect and introduce it.
    pub fn populate_pv_domu(&mut self, info: &PvDomuInfo) -> Result<(), XenstoreError> {
        let id = info.domid;
        if id == 0 {
            return Err(XsError::EINVAL.into());
        }
        let dom = domain_path(id);
        let vm = format!("/vm/{}", info.uuid);
        let ro = Perms::owner_readable_by(0, id);
        let rw = Perms::owner(id);
        self.mkdir(&dom)?;
        self.set_perms(&dom, ro.clone())?;
        self.mkdir(&vm)?;
        self.set_perms(&vm, ro.clone())?;
        self.write(&format!("{vm}/uuid"), info.uuid.as_bytes())?;
        self.write(&format!("{vm}/name"), info.name.as_bytes())?;
        // Read-only directories (libxl "roperm"); entries below inherit.
        for d in ["cpu", "memory", "device", "control", "store", "console"] {
            self.mkdir(&format!("{dom}/{d}"))?;
        }
        // Guest-writable nodes (libxl "rwperm").
        for d in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "device/suspend/event-channel",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            let p = format!("{dom}/{d}");
            self.mkdir(&p)?;
            self.set_perms(&p, rw.clone())?;
        }
        let mut ents: Vec<(String, String)> = vec![
            ("vm".into(), vm.clone()),
            ("name".into(), info.name.clone()),
            ("domid".into(), id.to_string()),
            ("memory/static-max".into(), info.max_kib.to_string()),
            ("memory/target".into(), info.target_kib.to_string()),
            // A PV domain has no emulated video memory.
            ("memory/videoram".into(), "0".into()),
            ("store/port".into(), info.store_port.to_string()),
            ("store/ring-ref".into(), info.store_mfn.to_string()),
            ("console/port".into(), info.console_port.to_string()),
            ("console/ring-ref".into(), info.console_mfn.to_string()),
            ("console/limit".into(), XENCONSOLE_LIMIT.to_string()),
            ("console/type".into(), "xenconsoled".into()),
            (
                "control/platform-feature-multiprocessor-suspend".into(),
                "1".into(),
            ),
            (
                "control/platform-feature-xs_reset_watches".into(),
                "1".into(),
            ),
        ];
        for n in 0..info.max_vcpus {
            let state = if n < info.online_vcpus {
                "online"
            } else {
                "offline"
            };
            ents.push((format!("cpu/{n}/availability"), state.into()));
        }
        for (k, v) in ents {
            self.write(&format!("{dom}/{k}"), v.as_bytes())?;
        }
        self.connect(id);
        self.introduce_domain(id);
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Host (dom0) access.

    fn host_ctx(&mut self) -> OpCtx<'_> {
        OpCtx {
            tree: &mut self.tree,
            log: None,
            gen: &mut self.gen,
            domid: 0,
            quotas: &self.quotas,
            fires: Vec::new(),
        }
    }

    fn host_op<T>(
        &mut self,
        path: &str,
        f: impl FnOnce(&mut OpCtx<'_>, &str) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let path = canonicalize(0, path.as_bytes())?;
        let mut ctx = self.host_ctx();
        let r = f(&mut ctx, &path);
        let fires = std::mem::take(&mut ctx.fires);
        self.fire_all(&fires);
        r
    }

    /// Read a node's value as dom0.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        self.tree.get(path).map(|n| n.value.as_slice())
    }

    /// A node (value, permissions, generation).
    pub fn node(&self, path: &str) -> Option<&Node> {
        self.tree.get(path)
    }

    /// Children of a node, sorted.
    pub fn directory(&self, path: &str) -> Option<Vec<String>> {
        self.tree.get(path).map(|_| {
            self.tree
                .children(path)
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
    }

    /// Write a node as dom0 (creating missing parents), firing watches.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.host_op(path, |c, p| c.write(p, value, false))
    }

    /// Create a node if missing, as dom0.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.host_op(path, |c, p| c.write(p, b"", true))
    }

    /// Remove a node and its descendants, as dom0.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.host_op(path, |c, p| c.rm(p))
    }

    /// Set a node's permissions, as dom0.
    pub fn set_perms(&mut self, path: &str, perms: Perms) -> Result<(), XsError> {
        self.host_op(path, |c, p| c.set_perms(p, perms))
    }

    /// Ask a guest to shut down: write `control/shutdown` in its home (the guest's watch on
    /// it fires).
    pub fn request_shutdown(&mut self, domid: DomId, req: ShutdownRequest) -> Result<(), XsError> {
        let p = format!("{}/control/shutdown", domain_path(domid));
        self.write(&p, req.as_str().as_bytes())
    }

    /// Mark a domain introduced and fire `@introduceDomain`.
    pub fn introduce_domain(&mut self, domid: DomId) {
        self.introduced.insert(domid);
        self.fire_special("@introduceDomain");
    }

    /// Forget a domain: drop its connection and fire `@releaseDomain`.
    pub fn release_domain(&mut self, domid: DomId) {
        self.introduced.remove(&domid);
        self.conns.remove(&domid);
        self.fire_special("@releaseDomain");
    }

    /// Whether a domain is introduced.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.introduced.contains(&domid)
    }

    /// The whole tree, one node per line: `path = "value" (perms)`, like
    /// `xenstore-ls -f -p`. Non-printable bytes are escaped as `\xNN`.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (p, n) in self.tree.iter() {
            let _ = writeln!(s, "{p} = \"{}\" ({})", escape(&n.value), n.perms);
        }
        s
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    // ---------------------------------------------------------------------------------
    // Connections.

    /// Create (or reset) the connection of a domain. Domain 0 is the privileged domain.
    pub fn connect(&mut self, domid: DomId) {
        self.conns.insert(domid, Connection::new(domid));
    }

    /// A domain's connection.
    pub fn connection(&self, domid: DomId) -> Option<&Connection> {
        self.conns.get(&domid)
    }

    /// Handle one complete request from `domid`, queueing the reply (and any watch events).
    pub fn handle_message(&mut self, domid: DomId, msg: &Message) -> Result<(), XenstoreError> {
        if !self.conns.contains_key(&domid) {
            return Err(XenstoreError::NoConnection(domid));
        }
        let h = msg.header;
        let mut fires = Vec::new();
        let mut initial: Option<(Vec<u8>, Vec<u8>)> = None;
        let result = self.dispatch(domid, msg, &mut fires, &mut initial);
        let ty = MsgType::from_u32(h.ty).unwrap_or(MsgType::Error);
        let reply = match result {
            Ok(payload) if payload.len() <= PAYLOAD_MAX => {
                Message::new(ty, h.req_id, h.tx_id, payload)
            }
            // xenstored: a reply that does not fit the payload limit is E2BIG.
            Ok(_) => error_msg(h, XsError::E2BIG),
            Err(e) => {
                debug!(
                    domid,
                    ty = h.ty,
                    err = e.as_str(),
                    "xenstore request failed"
                );
                error_msg(h, e)
            }
        };
        if let Some(c) = self.conns.get_mut(&domid) {
            c.push(&reply);
            if let Some((path, token)) = initial {
                // xenstore.txt: a watch fires once right after it is set.
                let mut p = path;
                p.push(0);
                p.extend_from_slice(&token);
                p.push(0);
                c.push(&Message::new(MsgType::WatchEvent, 0, 0, p));
            }
        }
        self.fire_all(&fires);
        Ok(())
    }

    /// Feed request bytes from `domid` as a stream (for transports other than the ring):
    /// complete requests are handled as they arrive. Returns the bytes consumed, which is
    /// less than `data.len()` while [`OUTPUT_PAUSE`] bytes of output wait.
    pub fn feed(&mut self, domid: DomId, mut data: &[u8]) -> Result<usize, XenstoreError> {
        let mut used = 0;
        while !data.is_empty() {
            let conn = self
                .conns
                .get_mut(&domid)
                .ok_or(XenstoreError::NoConnection(domid))?;
            if conn.stopped.is_some() {
                return Err(XenstoreError::Stopped(domid));
            }
            if conn.out.len() >= OUTPUT_PAUSE {
                break;
            }
            let (n, m) = match conn.reader.feed(data) {
                Ok(r) => r,
                Err(err) => {
                    conn.stopped = Some(err);
                    warn!(domid, %err, "xenstore connection stopped");
                    return Err(XenstoreError::Protocol { domid, err });
                }
            };
            used += n;
            data = &data[n..];
            if let Some(m) = m {
                self.handle_message(domid, &m)?;
            }
        }
        Ok(used)
    }

    /// Take up to `max` bytes of queued output for `domid`.
    pub fn take_output(&mut self, domid: DomId, max: usize) -> Vec<u8> {
        match self.conns.get_mut(&domid) {
            Some(c) => {
                let n = max.min(c.out.len());
                c.out.drain(..n).collect()
            }
            None => Vec::new(),
        }
    }

    /// Prepare a fresh ring page before the guest starts: advertise the server features
    /// (reconnection, error field) and mark it connected with no error.
    pub fn init_ring<P: RingPage>(page: &P) -> Result<(), XenstoreError> {
        page.write_u32(
            ring::SERVER_FEATURES_OFFSET,
            ring::XENSTORE_SERVER_FEATURE_RECONNECTION | ring::XENSTORE_SERVER_FEATURE_ERROR,
        )
        .map_err(page_err)?;
        page.write_u32(ring::ERROR_OFFSET, ring::XENSTORE_ERROR_NONE)
            .map_err(page_err)?;
        page.write_u32(ring::CONNECTION_OFFSET, ring::XENSTORE_CONNECTED)
            .map_err(page_err)
    }

    /// Serve a guest's ring page: handle a reconnect request, consume and handle the
    /// requests in `req` (pausing while too much output waits), then move queued output into
    /// `rsp`. Invalid indices or a wire violation stop the connection and set the ring's
    /// `error` field.
    pub fn service_ring<P: RingPage>(
        &mut self,
        domid: DomId,
        page: &P,
    ) -> Result<RingReport, XenstoreError> {
        let mut rep = RingReport::default();
        if !self.conns.contains_key(&domid) {
            return Err(XenstoreError::NoConnection(domid));
        }
        // xs_wire.h: the guest sets connection = XENSTORE_RECONNECT to ask for a reset; the
        // server drops the connection's state, resets the ring and sets it back to CONNECTED.
        if page.read_u32(ring::CONNECTION_OFFSET).map_err(page_err)? == ring::XENSTORE_RECONNECT {
            if let Some(c) = self.conns.get_mut(&domid) {
                c.reset();
            }
            for off in [
                ring::REQ_CONS_OFFSET,
                ring::REQ_PROD_OFFSET,
                ring::RSP_CONS_OFFSET,
                ring::RSP_PROD_OFFSET,
                ring::ERROR_OFFSET,
            ] {
                page.write_u32(off, 0).map_err(page_err)?;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            page.write_u32(ring::CONNECTION_OFFSET, ring::XENSTORE_CONNECTED)
                .map_err(page_err)?;
            rep.notify = true;
        }
        let mut budget = MAX_BYTES_PER_SERVICE;
        // Alternate between taking requests and emitting output, so a guest whose requests
        // wait behind a full output queue makes progress within one call. Every round moves
        // at least one byte; request bytes are bounded by the budget and output by what they
        // produce.
        loop {
            let consumed = self.consume_requests(domid, page, &mut budget, &mut rep)?;
            let (n, notify) = self.flush_ring(domid, page)?;
            rep.output_bytes += n;
            rep.notify |= notify;
            if (consumed == 0 && n == 0) || budget == 0 {
                break;
            }
        }
        Ok(rep)
    }

    /// Take and handle requests from the ring until it is empty, [`OUTPUT_PAUSE`] bytes of
    /// output wait, or `budget` is spent. Returns the bytes consumed.
    fn consume_requests<P: RingPage>(
        &mut self,
        domid: DomId,
        page: &P,
        budget: &mut usize,
        rep: &mut RingReport,
    ) -> Result<usize, XenstoreError> {
        let mut consumed = 0;
        loop {
            let conn = self
                .conns
                .get_mut(&domid)
                .ok_or(XenstoreError::NoConnection(domid))?;
            if conn.stopped.is_some() {
                return Err(XenstoreError::Stopped(domid));
            }
            if conn.out.len() >= OUTPUT_PAUSE || *budget == 0 {
                return Ok(consumed);
            }
            let (cons, avail) = match ring::req_avail(page).map_err(page_err)? {
                Ok(v) => v,
                Err(bad) => return Err(self.stop_ring(domid, page, bad)),
            };
            if avail == 0 {
                return Ok(consumed);
            }
            let n = avail.min(conn.reader.wanted()).min(*budget);
            let mut buf = [0u8; ring::RING_SIZE];
            let chunk = &mut buf[..n];
            ring::req_consume(page, cons, chunk).map_err(page_err)?;
            *budget -= n;
            consumed += n;
            rep.notify = true;
            match conn.reader.feed(chunk) {
                Ok((_, Some(m))) => {
                    rep.requests += 1;
                    self.handle_message(domid, &m)?;
                }
                Ok((_, None)) => {}
                Err(err) => {
                    conn.stopped = Some(err);
                    warn!(domid, %err, "xenstore connection stopped");
                    page.write_u32(ring::ERROR_OFFSET, ring::XENSTORE_ERROR_PROTO)
                        .map_err(page_err)?;
                    return Err(XenstoreError::Protocol { domid, err });
                }
            }
        }
    }

    /// Move queued output (replies, watch events) for `domid` into its response ring.
    /// Returns the bytes moved and whether the guest should be notified.
    pub fn flush_ring<P: RingPage>(
        &mut self,
        domid: DomId,
        page: &P,
    ) -> Result<(usize, bool), XenstoreError> {
        let conn = self
            .conns
            .get_mut(&domid)
            .ok_or(XenstoreError::NoConnection(domid))?;
        if conn.stopped.is_some() {
            return Err(XenstoreError::Stopped(domid));
        }
        if conn.out.is_empty() {
            return Ok((0, false));
        }
        let (prod, space) = match ring::rsp_space(page).map_err(page_err)? {
            Ok(v) => v,
            Err(bad) => return Err(self.stop_ring(domid, page, bad)),
        };
        let n = space.min(conn.out.len());
        if n == 0 {
            return Ok((0, false));
        }
        let data: Vec<u8> = conn.out.iter().take(n).copied().collect();
        ring::rsp_produce(page, prod, &data).map_err(page_err)?;
        conn.out.drain(..n);
        Ok((n, true))
    }

    fn stop_ring<P: RingPage>(&mut self, domid: DomId, page: &P, bad: BadIndices) -> XenstoreError {
        if let Some(c) = self.conns.get_mut(&domid) {
            c.stopped = Some(WireError::RingIndices);
        }
        warn!(
            domid,
            cons = bad.cons,
            prod = bad.prod,
            "xenstore ring indices invalid"
        );
        if let Err(e) = page.write_u32(ring::ERROR_OFFSET, ring::XENSTORE_ERROR_RINGIDX) {
            return page_err(e);
        }
        XenstoreError::BadIndices { domid, bad }
    }

    // ---------------------------------------------------------------------------------
    // Watches.

    fn fire_special(&mut self, name: &str) {
        // Special nodes belong to dom0 with no access for others: only dom0 hears them.
        self.fire_all(&[Fire {
            path: name.to_owned(),
            exact: false,
            perms: vec![Perms::owner(0)],
        }]);
    }

    fn fire_all(&mut self, fires: &[Fire]) {
        let max = self.quotas.max_queued_output;
        for f in fires {
            for c in self.conns.values_mut() {
                if c.stopped.is_some() || !f.perms.iter().any(|p| p.access_for(c.domid).can_read())
                {
                    continue;
                }
                let home = domain_path(c.domid);
                let mut events = Vec::new();
                for w in &c.watches {
                    if !watch_match(&w.path, f) {
                        continue;
                    }
                    let path = f.path.as_str();
                    let shown = if w.relative {
                        path.strip_prefix(&home)
                            .map(|r| r.strip_prefix('/').unwrap_or(r))
                            .unwrap_or(path)
                    } else {
                        path
                    };
                    let mut p = strz(shown);
                    p.extend_from_slice(&w.token);
                    p.push(0);
                    // xenstored does not send events longer than the payload limit.
                    if p.len() > PAYLOAD_MAX {
                        continue;
                    }
                    events.push(Message::new(MsgType::WatchEvent, 0, 0, p));
                }
                for e in events {
                    if c.out.len() + wire::HEADER_SIZE + e.payload.len() > max {
                        c.dropped_events += 1;
                        warn!(
                            domid = c.domid,
                            "xenstore watch event dropped: output queue full"
                        );
                        continue;
                    }
                    c.push(&e);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Request dispatch.

    fn dispatch(
        &mut self,
        domid: DomId,
        msg: &Message,
        fires: &mut Vec<Fire>,
        initial: &mut Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<u8>, XsError> {
        use MsgType::*;
        let h = msg.header;
        let pl = msg.payload.as_slice();
        let privileged = domid == 0;
        // xenstored order: unknown (or server-only) type ENOSYS, then privileged-only types
        // EACCES, then an unknown transaction ENOENT (WATCH and UNWATCH ignore tx_id).
        let ty = match MsgType::from_u32(h.ty) {
            None | Some(WatchEvent | Error | Restrict) => return Err(XsError::ENOSYS),
            Some(t) => t,
        };
        let priv_only = matches!(
            ty,
            Control | Introduce | Release | IsDomainIntroduced | Resume | SetTarget
        );
        if priv_only && !privileged {
            return Err(XsError::EACCES);
        }
        if h.tx_id != 0
            && !matches!(ty, Watch | Unwatch)
            && !self
                .conns
                .get(&domid)
                .is_some_and(|c| c.txs.contains_key(&h.tx_id))
        {
            return Err(XsError::ENOENT);
        }
        match ty {
            Read | Directory | DirectoryPart | GetPerms | Write | Mkdir | Rm | SetPerms => {
                self.node_request(domid, ty, h.tx_id, pl, fires)
            }
            Watch => {
                let (path, token, relative) = self.watch_args(domid, pl)?;
                let conn = self.conns.get_mut(&domid).ok_or(XsError::EIO)?;
                if conn
                    .watches
                    .iter()
                    .any(|w| w.path == path && w.token == token)
                {
                    return Err(XsError::EEXIST);
                }
                // xenstored quota: watches per domain (quota_nb_watch_per_domain) -> E2BIG.
                if !privileged && conn.watches.len() >= self.quotas.watches_per_domain {
                    return Err(XsError::E2BIG);
                }
                let raw = wire::split_strings(pl).and_then(|v| v.first().map(|s| s.to_vec()));
                conn.watches.push(self::Watch {
                    path,
                    token: token.clone(),
                    relative,
                });
                *initial = Some((raw.unwrap_or_default(), token));
                Ok(ok_reply())
            }
            Unwatch => {
                let (path, token, _) = self.watch_args(domid, pl)?;
                let conn = self.conns.get_mut(&domid).ok_or(XsError::EIO)?;
                let i = conn
                    .watches
                    .iter()
                    .position(|w| w.path == path && w.token == token)
                    .ok_or(XsError::ENOENT)?;
                conn.watches.remove(i);
                Ok(ok_reply())
            }
            TransactionStart => {
                // xenstored: no transaction inside a transaction.
                if h.tx_id != 0 {
                    return Err(XsError::EBUSY);
                }
                let conn = self.conns.get_mut(&domid).ok_or(XsError::EIO)?;
                // xenstored quota: transactions per domain (quota_max_transaction) -> ENOSPC.
                if !privileged && conn.txs.len() >= self.quotas.transactions_per_domain {
                    return Err(XsError::ENOSPC);
                }
                let mut id = conn.next_tx;
                while id == 0 || conn.txs.contains_key(&id) {
                    id = id.wrapping_add(1);
                }
                conn.next_tx = id.wrapping_add(1);
                conn.txs.insert(
                    id,
                    Transaction {
                        tree: self.tree.clone(),
                        log: TxLog::default(),
                        fires: Vec::new(),
                    },
                );
                Ok(strz(&id.to_string()))
            }
            TransactionEnd => {
                let arg = one_arg(pl)?;
                let commit = match arg {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsError::EINVAL),
                };
                if h.tx_id == 0 {
                    return Err(XsError::ENOENT);
                }
                let conn = self.conns.get_mut(&domid).ok_or(XsError::EIO)?;
                let tx = conn.txs.remove(&h.tx_id).ok_or(XsError::ENOENT)?;
                if commit {
                    self.commit(domid, tx, fires)?;
                }
                Ok(ok_reply())
            }
            GetDomainPath => {
                let id = parse_u32(one_arg(pl)?)?;
                let id = DomId::try_from(id).map_err(|_| XsError::EINVAL)?;
                Ok(strz(&domain_path(id)))
            }
            IsDomainIntroduced => {
                if !privileged {
                    return Err(XsError::EACCES);
                }
                let id = parse_u32(one_arg(pl)?)?;
                let yes = DomId::try_from(id).is_ok_and(|d| self.introduced.contains(&d));
                Ok(if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            Introduce => {
                if !privileged {
                    return Err(XsError::EACCES);
                }
                // "<domid>\0<mfn>\0<port>\0"
                let args = wire::split_strings(pl).ok_or(XsError::EINVAL)?;
                let [d, _mfn, _port] = args.as_slice() else {
                    return Err(XsError::EINVAL);
                };
                let id = DomId::try_from(parse_u32(d)?).map_err(|_| XsError::EINVAL)?;
                if id == 0 {
                    return Err(XsError::EINVAL);
                }
                if !self.conns.contains_key(&id) {
                    self.connect(id);
                }
                self.introduced.insert(id);
                fires.push(Fire {
                    path: "@introduceDomain".into(),
                    exact: false,
                    perms: vec![Perms::owner(0)],
                });
                Ok(ok_reply())
            }
            Release => {
                if !privileged {
                    return Err(XsError::EACCES);
                }
                let id = DomId::try_from(parse_u32(one_arg(pl)?)?).map_err(|_| XsError::EINVAL)?;
                if id == 0 {
                    return Err(XsError::EINVAL);
                }
                if !self.introduced.remove(&id) {
                    return Err(XsError::ENOENT);
                }
                self.conns.remove(&id);
                fires.push(Fire {
                    path: "@releaseDomain".into(),
                    exact: false,
                    perms: vec![Perms::owner(0)],
                });
                Ok(ok_reply())
            }
            // Not supported by kxen, even for dom0.
            Resume | SetTarget | Control => Err(XsError::ENOSYS),
            ResetWatches => {
                // xenstored: drops the connection's watches and transactions.
                let conn = self.conns.get_mut(&domid).ok_or(XsError::EIO)?;
                conn.watches.clear();
                conn.txs.clear();
                Ok(ok_reply())
            }
            WatchEvent | Error | Restrict => Err(XsError::ENOSYS),
        }
    }

    /// Parse WATCH/UNWATCH arguments: `(absolute path or @name, token, relative)`.
    fn watch_args(&self, domid: DomId, pl: &[u8]) -> Result<(String, Vec<u8>, bool), XsError> {
        let args = wire::split_strings(pl).ok_or(XsError::EINVAL)?;
        let [path, token] = args.as_slice() else {
            return Err(XsError::EINVAL);
        };
        if path.first() == Some(&b'@') {
            // Special watches: any "@" name, length-limited like a relative path.
            if path.len() > wire::REL_PATH_MAX {
                return Err(XsError::EINVAL);
            }
            let s = std::str::from_utf8(path).map_err(|_| XsError::EINVAL)?;
            return Ok((s.to_owned(), token.to_vec(), false));
        }
        let relative = path.first() != Some(&b'/');
        Ok((canonicalize(domid, path)?, token.to_vec(), relative))
    }

    fn node_request(
        &mut self,
        domid: DomId,
        ty: MsgType,
        tx_id: u32,
        pl: &[u8],
        fires: &mut Vec<Fire>,
    ) -> Result<Vec<u8>, XsError> {
        use MsgType::*;
        let args = wire::split_strings(pl);
        // WRITE is "<path>\0<value>" where the value runs to the end and is not terminated.
        let (raw_path, rest): (&[u8], Vec<&[u8]>) = if ty == Write {
            let i = pl.iter().position(|&b| b == 0).ok_or(XsError::EINVAL)?;
            (&pl[..i], vec![&pl[i + 1..]])
        } else {
            let a = args.ok_or(XsError::EINVAL)?;
            let (first, rest) = a.split_first().ok_or(XsError::EINVAL)?;
            (first, rest.to_vec())
        };
        // Special "@" names are watch-only here (xenstored: not valid node names).
        if raw_path.first() == Some(&b'@') {
            return Err(XsError::EINVAL);
        }
        let path = canonicalize(domid, raw_path)?;
        let Xenstore {
            tree,
            gen,
            conns,
            quotas,
            ..
        } = self;
        let (tree, log, tx_fires) = if tx_id == 0 {
            (tree, None, None)
        } else {
            let tx = conns
                .get_mut(&domid)
                .and_then(|c| c.txs.get_mut(&tx_id))
                .ok_or(XsError::ENOENT)?;
            // xenstored quota: nodes accessed per transaction (quota_trans_nodes) -> ENOSPC.
            if domid != 0 && tx.log.observed.len() >= quotas.transaction_nodes {
                return Err(XsError::ENOSPC);
            }
            (&mut tx.tree, Some(&mut tx.log), Some(&mut tx.fires))
        };
        let mut ctx = OpCtx {
            tree,
            log,
            gen,
            domid,
            quotas,
            fires: Vec::new(),
        };
        let r = match (ty, rest.as_slice()) {
            (Read, []) => ctx.read(&path),
            (Directory, []) => ctx.directory(&path).map(|names| {
                let mut v = Vec::new();
                for n in names {
                    v.extend_from_slice(n.as_bytes());
                    v.push(0);
                }
                v
            }),
            (DirectoryPart, [off]) => {
                let off = parse_u32(off)? as usize;
                let names = ctx.directory(&path)?;
                directory_part(ctx.gen_of(&path), &names, off)
            }
            (GetPerms, []) => ctx.get_perms(&path).map(|p| p.to_wire()),
            (Write, [value]) => ctx.write(&path, value, false).map(|_| ok_reply()),
            (Mkdir, []) => ctx.write(&path, b"", true).map(|_| ok_reply()),
            (Rm, []) => ctx.rm(&path).map(|_| ok_reply()),
            (SetPerms, list) if !list.is_empty() => {
                let entries = list
                    .iter()
                    .map(|s| Perm::parse(s))
                    .collect::<Result<Vec<_>, _>>()?;
                let perms = Perms::new(entries).ok_or(XsError::EINVAL)?;
                ctx.set_perms(&path, perms).map(|_| ok_reply())
            }
            _ => Err(XsError::EINVAL),
        };
        let new_fires = std::mem::take(&mut ctx.fires);
        match tx_fires {
            // Inside a transaction, watches fire at commit.
            Some(tf) => tf.extend(new_fires),
            None => fires.extend(new_fires),
        }
        r
    }

    /// Commit a transaction: `EAGAIN` if any node it accessed changed since, else apply its
    /// changes with fresh generations and queue its watch events.
    fn commit(
        &mut self,
        domid: DomId,
        tx: Transaction,
        fires: &mut Vec<Fire>,
    ) -> Result<(), XsError> {
        for (p, g) in &tx.log.observed {
            if self.tree.get(p).map(|n| n.gen) != *g {
                return Err(XsError::EAGAIN);
            }
        }
        if domid != 0 {
            // The entry quota was checked against the transaction's snapshot; check the
            // net change against the store as it is now.
            let owned = |t: &Tree, p: &str| t.get(p).is_some_and(|n| n.perms.owner_id() == domid);
            let added = tx
                .log
                .changed
                .iter()
                .filter(|p| owned(&tx.tree, p) && !owned(&self.tree, p))
                .count();
            let removed = tx
                .log
                .changed
                .iter()
                .filter(|p| !owned(&tx.tree, p) && owned(&self.tree, p))
                .count();
            let now = self.tree.count_owned(domid);
            if (now + added).saturating_sub(removed) > self.quotas.entries_per_domain {
                return Err(XsError::ENOSPC);
            }
        }
        // Removals first, then (re)insertions parents-first (sorted paths put a parent
        // before its descendants).
        for p in &tx.log.changed {
            if tx.tree.get(p).is_none() {
                self.tree.remove_one(p);
            }
        }
        for p in &tx.log.changed {
            if let Some(n) = tx.tree.get(p) {
                self.gen += 1;
                let mut n = n.clone();
                n.gen = self.gen;
                self.tree.insert(p.clone(), n);
            }
        }
        fires.extend(tx.fires);
        Ok(())
    }
}

fn error_msg(h: Header, e: XsError) -> Message {
    Message::new(MsgType::Error, h.req_id, h.tx_id, strz(e.as_str()))
}

/// DIRECTORY_PART reply (xenstore.txt, xenstored `send_directory_part`): the node's
/// generation, then as many whole NUL-terminated child names from byte `off` of the full
/// list as fit the payload; one more NUL marks that the list is complete (an offset at or
/// past the end gives just that NUL).
fn directory_part(gen: u64, names: &[String], off: usize) -> Result<Vec<u8>, XsError> {
    let mut v = strz(&gen.to_string());
    // Room for the names, keeping one byte for the end marker.
    let limit = PAYLOAD_MAX - 1;
    let mut pos = 0usize;
    let mut complete = true;
    for n in names {
        let end = pos + n.len() + 1;
        if end > off {
            // An offset inside a name hands out the name's tail, as xenstored does.
            let part = &n.as_bytes()[off.saturating_sub(pos)..];
            if v.len() + part.len() + 1 > limit {
                complete = false;
                break;
            }
            v.extend_from_slice(part);
            v.push(0);
        }
        pos = end;
    }
    if complete {
        v.push(0);
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
