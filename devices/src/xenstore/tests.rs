//! Behaviour tests for the in-process xenstored, driven through the wire protocol as a guest
//! would drive it.

use super::ring::*;
use super::*;
use crate::console::MemPage;

const D1: DomId = 1;
const D2: DomId = 2;

fn info(domid: DomId) -> PvDomuInfo {
    PvDomuInfo::new(
        domid,
        &format!("guest{domid}"),
        262_144,
        2,
        1,
        0x1234,
        2,
        0x1235,
    )
}

/// A test harness: a store with domains 1 and 2 (libxl layout) and a dom0 connection.
struct H {
    xs: Xenstore,
    req_id: u32,
    events: BTreeMap<DomId, Vec<(String, Vec<u8>)>>,
}

#[derive(Debug, PartialEq, Eq)]
enum R {
    Ok(Vec<u8>),
    Err(String),
}

impl R {
    fn ok(self) -> Vec<u8> {
        match self {
            R::Ok(v) => v,
            R::Err(e) => panic!("expected success, got {e}"),
        }
    }
    fn err(self) -> String {
        match self {
            R::Err(e) => e,
            R::Ok(v) => panic!("expected error, got {:?}", String::from_utf8_lossy(&v)),
        }
    }
    fn text(self) -> String {
        String::from_utf8(self.ok()).unwrap()
    }
}

fn parse_msgs(mut bytes: &[u8]) -> Vec<Message> {
    let mut r = MessageReader::new();
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let (n, m) = r.feed(bytes).unwrap();
        bytes = &bytes[n..];
        v.extend(m);
    }
    assert!(!r.is_partial(), "output ends inside a message");
    v
}

fn event_parts(m: &Message) -> (String, Vec<u8>) {
    let parts = wire::split_strings(&m.payload).expect("event payload NUL-terminated");
    assert_eq!(parts.len(), 2, "event is path and token");
    (
        String::from_utf8(parts[0].to_vec()).unwrap(),
        parts[1].to_vec(),
    )
}

fn zjoin(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

impl H {
    fn new() -> H {
        Self::with_quotas(Quotas::default())
    }

    fn with_quotas(q: Quotas) -> H {
        let mut xs = Xenstore::with_quotas(q);
        xs.populate_pv_domu(&info(D1)).unwrap();
        xs.populate_pv_domu(&info(D2)).unwrap();
        xs.connect(0);
        H {
            xs,
            req_id: 100,
            events: BTreeMap::new(),
        }
    }

    /// Collect everything queued for `d`; returns the non-event messages.
    fn drain(&mut self, d: DomId) -> Vec<Message> {
        let out = self.xs.take_output(d, usize::MAX);
        let mut replies = Vec::new();
        for m in parse_msgs(&out) {
            if m.msg_type() == Some(MsgType::WatchEvent) {
                self.events.entry(d).or_default().push(event_parts(&m));
            } else {
                replies.push(m);
            }
        }
        replies
    }

    fn raw(&mut self, d: DomId, ty: u32, tx: u32, payload: &[u8]) -> R {
        self.req_id += 1;
        let msg = Message {
            header: Header {
                ty,
                req_id: self.req_id,
                tx_id: tx,
                len: payload.len() as u32,
            },
            payload: payload.to_vec(),
        };
        self.xs.handle_message(d, &msg).unwrap();
        let replies = self.drain(d);
        assert_eq!(replies.len(), 1, "exactly one reply per request");
        let r = &replies[0];
        assert_eq!(r.header.req_id, self.req_id, "req_id echoed");
        assert_eq!(r.header.tx_id, tx, "tx_id echoed");
        if r.msg_type() == Some(MsgType::Error) {
            let s = r.payload.strip_suffix(&[0]).expect("error NUL-terminated");
            R::Err(String::from_utf8(s.to_vec()).unwrap())
        } else {
            assert_eq!(r.header.ty, ty, "reply has the request's type");
            R::Ok(r.payload.clone())
        }
    }

    fn call(&mut self, d: DomId, ty: MsgType, tx: u32, payload: &[u8]) -> R {
        self.raw(d, ty as u32, tx, payload)
    }

    fn read(&mut self, d: DomId, path: &str) -> R {
        self.call(d, MsgType::Read, 0, &zjoin(&[path]))
    }

    fn write(&mut self, d: DomId, tx: u32, path: &str, val: &str) -> R {
        let mut p = zjoin(&[path]);
        p.extend_from_slice(val.as_bytes());
        self.call(d, MsgType::Write, tx, &p)
    }

    fn dir(&mut self, d: DomId, path: &str) -> R {
        self.call(d, MsgType::Directory, 0, &zjoin(&[path]))
    }

    fn watch(&mut self, d: DomId, path: &str, token: &str) -> R {
        self.call(d, MsgType::Watch, 0, &zjoin(&[path, token]))
    }

    fn tx_start(&mut self, d: DomId) -> u32 {
        let v = self.call(d, MsgType::TransactionStart, 0, b"\0").ok();
        std::str::from_utf8(v.strip_suffix(&[0]).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn tx_end(&mut self, d: DomId, tx: u32, commit: bool) -> R {
        self.call(
            d,
            MsgType::TransactionEnd,
            tx,
            if commit { b"T\0" } else { b"F\0" },
        )
    }

    fn take_events(&mut self, d: DomId) -> Vec<(String, String)> {
        self.drain(d);
        self.events
            .remove(&d)
            .unwrap_or_default()
            .into_iter()
            .map(|(p, t)| (p, String::from_utf8(t).unwrap()))
            .collect()
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_owned(), t.to_owned())
}

// ---------------------------------------------------------------------------------------
// Layout written for a PV domU.

#[test]
fn pv_domu_layout_has_libxl_entries_and_permissions() {
    let xs = Xenstore::new_for_pv_domu(&PvDomuInfo {
        online_vcpus: 1,
        ..info(3)
    })
    .unwrap();
    let val = |p: &str| String::from_utf8(xs.read(p).unwrap().to_vec()).unwrap();
    let perms = |p: &str| xs.node(p).unwrap().perms.to_string();
    let d = "/local/domain/3";
    assert_eq!(val(&format!("{d}/name")), "guest3");
    assert_eq!(val(&format!("{d}/domid")), "3");
    assert_eq!(val(&format!("{d}/memory/target")), "262144");
    assert_eq!(val(&format!("{d}/memory/static-max")), "262144");
    assert_eq!(val(&format!("{d}/memory/videoram")), "0");
    assert_eq!(val(&format!("{d}/cpu/0/availability")), "online");
    assert_eq!(val(&format!("{d}/cpu/1/availability")), "offline");
    assert_eq!(val(&format!("{d}/store/port")), "1");
    assert_eq!(val(&format!("{d}/store/ring-ref")), "4660");
    assert_eq!(val(&format!("{d}/console/port")), "2");
    assert_eq!(val(&format!("{d}/console/ring-ref")), "4661");
    assert_eq!(val(&format!("{d}/console/limit")), "1048576");
    assert_eq!(val(&format!("{d}/console/type")), "xenconsoled");
    assert_eq!(
        val(&format!(
            "{d}/control/platform-feature-multiprocessor-suspend"
        )),
        "1"
    );
    assert_eq!(
        val(&format!("{d}/control/platform-feature-xs_reset_watches")),
        "1"
    );
    let vm = val(&format!("{d}/vm"));
    assert!(vm.starts_with("/vm/"));
    assert_eq!(val(&format!("{vm}/name")), "guest3");
    assert_eq!(
        xs.directory(&format!("{d}/device")).unwrap(),
        vec!["suspend"]
    );
    for ro in [
        "",
        "/domid",
        "/name",
        "/cpu",
        "/memory/target",
        "/control",
        "/device",
        "/console/port",
    ] {
        assert_eq!(perms(&format!("{d}{ro}")), "n0,r3", "{ro}");
    }
    for rw in [
        "/control/shutdown",
        "/control/feature-poweroff",
        "/control/sysrq",
        "/device/suspend/event-channel",
        "/data",
        "/drivers",
        "/feature",
        "/attr",
        "/error",
    ] {
        assert_eq!(perms(&format!("{d}{rw}")), "n3", "{rw}");
    }
    assert_eq!(perms("/"), "n0");
    assert!(xs.is_introduced(3));
    assert!(xs.connection(3).is_some());
}

#[test]
fn pv_domu_rejects_domid_zero() {
    assert!(Xenstore::new_for_pv_domu(&info(0)).is_err());
}

#[test]
fn dump_lists_every_node_with_value_and_perms() {
    let mut xs = Xenstore::new_for_pv_domu(&info(1)).unwrap();
    xs.write("/local/domain/1/data/bin", b"a\"b\x01").unwrap();
    let d = xs.dump();
    assert!(
        d.lines()
            .any(|l| l == "/local/domain/1/name = \"guest1\" (n0,r1)"),
        "{d}"
    );
    assert!(
        d.contains("/local/domain/1/data/bin = \"a\\\"b\\x01\" (n1)"),
        "{d}"
    );
    assert_eq!(d.lines().count(), xs.node_count());
}

// ---------------------------------------------------------------------------------------
// Basic operations.

#[test]
fn read_relative_and_absolute_paths() {
    let mut h = H::new();
    assert_eq!(
        h.read(D1, "name").text(),
        "guest1",
        "READ replies carry no NUL"
    );
    assert_eq!(h.read(D1, "/local/domain/1/domid").ok(), b"1");
    assert_eq!(h.read(D1, "nope").err(), "ENOENT");
    assert_eq!(h.read(D1, "a//b").err(), "EINVAL");
    assert_eq!(h.read(D1, "").err(), "EINVAL");
    assert_eq!(h.read(D1, "@releaseDomain").err(), "EINVAL");
    // The path must be NUL-terminated.
    assert_eq!(h.call(D1, MsgType::Read, 0, b"name").err(), "EINVAL");
    assert_eq!(
        h.call(D1, MsgType::Read, 0, b"name\0extra\0").err(),
        "EINVAL"
    );
}

#[test]
fn another_domains_nodes_are_not_readable_or_writable() {
    let mut h = H::new();
    assert_eq!(h.read(D1, "/local/domain/2/name").err(), "EACCES");
    assert_eq!(
        h.write(D1, 0, "/local/domain/2/data/x", "1").err(),
        "EACCES"
    );
    assert_eq!(h.dir(D1, "/local/domain/2").err(), "EACCES");
    // A missing node under an unreadable one does not reveal absence.
    assert_eq!(h.read(D1, "/local/domain/2/nothing").err(), "EACCES");
    assert_eq!(h.dir(D1, "/").err(), "EACCES");
    // dom0 reads everything.
    assert_eq!(h.read(0, "/local/domain/2/name").ok(), b"guest2");
}

#[test]
fn write_creates_guest_owned_nodes_where_allowed() {
    let mut h = H::new();
    assert_eq!(h.write(D1, 0, "data/a/b", "v").ok(), ok());
    assert_eq!(h.read(D1, "data/a/b").ok(), b"v");
    assert_eq!(h.read(D1, "data/a").ok(), b"");
    assert_eq!(
        h.xs.node("/local/domain/1/data/a/b")
            .unwrap()
            .perms
            .to_string(),
        "n1"
    );
    // Overwrite, including an empty value and binary bytes.
    assert_eq!(h.write(D1, 0, "data/a/b", "").ok(), ok());
    assert_eq!(h.read(D1, "data/a/b").ok(), b"");
    // dom0-owned, guest-readable nodes are read-only for the guest.
    assert_eq!(h.write(D1, 0, "name", "evil").err(), "EACCES");
    assert_eq!(h.write(D1, 0, "newtop", "x").err(), "EACCES");
    assert_eq!(
        h.write(D1, 0, "control/platform-feature-xs_reset_watches", "0")
            .err(),
        "EACCES"
    );
    // Guest-owned control/shutdown is writable (the guest acknowledges with "").
    assert_eq!(h.write(D1, 0, "control/shutdown", "").ok(), ok());
    // No NUL separating path and value.
    assert_eq!(h.call(D1, MsgType::Write, 0, b"data/x").err(), "EINVAL");
}

#[test]
fn mkdir_creates_and_accepts_existing() {
    let mut h = H::new();
    assert_eq!(h.call(D1, MsgType::Mkdir, 0, b"data/d\0").ok(), ok());
    assert_eq!(h.read(D1, "data/d").ok(), b"");
    h.write(D1, 0, "data/d", "keep").ok();
    assert_eq!(h.call(D1, MsgType::Mkdir, 0, b"data/d\0").ok(), ok());
    assert_eq!(
        h.read(D1, "data/d").ok(),
        b"keep",
        "mkdir leaves an existing node alone"
    );
    assert_eq!(h.call(D1, MsgType::Mkdir, 0, b"cpu/9\0").err(), "EACCES");
    assert_eq!(h.call(D1, MsgType::Mkdir, 0, b"name\0").err(), "EACCES");
}

#[test]
fn directory_lists_children_and_rejects_oversized_replies() {
    let mut h = H::new();
    for c in ["b", "a", "c"] {
        h.write(D1, 0, &format!("data/{c}"), "").ok();
    }
    h.write(D1, 0, "data/a/deep", "").ok();
    assert_eq!(h.dir(D1, "data").ok(), zjoin(&["a", "b", "c"]));
    assert_eq!(h.dir(D1, "data/b").ok(), b"");
    assert_eq!(h.dir(D1, "data/zz").err(), "ENOENT");
    // 200 children of 40 characters: more than a payload.
    for i in 0..200 {
        h.xs.write(&format!("/local/domain/1/data/big/{i:040}"), b"")
            .unwrap();
    }
    assert_eq!(h.dir(D1, "data/big").err(), "E2BIG");
}

#[test]
fn directory_part_pages_through_a_long_child_list() {
    let mut h = H::new();
    let names: Vec<String> = (0..200).map(|i| format!("{i:040}")).collect();
    for n in &names {
        h.xs.write(&format!("/local/domain/1/data/big/{n}"), b"")
            .unwrap();
    }
    let gen = h.xs.node("/local/domain/1/data/big").unwrap().gen;
    let mut off = 0usize;
    let mut got: Vec<String> = Vec::new();
    let mut replies = 0;
    loop {
        let r = h
            .call(
                D1,
                MsgType::DirectoryPart,
                0,
                &zjoin(&["data/big", &off.to_string()]),
            )
            .ok();
        replies += 1;
        assert!(r.len() <= PAYLOAD_MAX);
        let nul = r.iter().position(|&b| b == 0).unwrap();
        assert_eq!(std::str::from_utf8(&r[..nul]).unwrap(), gen.to_string());
        let body = &r[nul + 1..];
        // A complete list ends with an extra NUL (names are never empty).
        let done = body == [0] || body.ends_with(&[0, 0]);
        let list = if done { &body[..body.len() - 1] } else { body };
        off += list.len();
        got.extend(
            list.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8(s.to_vec()).unwrap()),
        );
        if done {
            break;
        }
        assert!(replies < 10);
    }
    assert_eq!(got, names);
    assert!(
        replies >= 3,
        "200 x 41 bytes need at least two full replies"
    );
    // Past the end: an empty list. An empty directory: likewise.
    let past = h
        .call(
            D1,
            MsgType::DirectoryPart,
            0,
            &zjoin(&["data/big", "999999"]),
        )
        .ok();
    assert_eq!(past, [gen.to_string().as_bytes(), b"\0\0"].concat());
    let empty = h
        .call(D1, MsgType::DirectoryPart, 0, &zjoin(&["attr", "0"]))
        .ok();
    assert!(empty.ends_with(b"\0\0") && empty.len() > 2 && !empty[..empty.len() - 2].contains(&0));
    assert_eq!(
        h.call(D1, MsgType::DirectoryPart, 0, &zjoin(&["data/big"]))
            .err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::DirectoryPart, 0, &zjoin(&["data/big", "x"]))
            .err(),
        "EINVAL"
    );
    // The generation changes when a child is added.
    h.write(D1, 0, "data/big/new", "").ok();
    assert_ne!(h.xs.node("/local/domain/1/data/big").unwrap().gen, gen);
}

#[test]
fn rm_removes_subtrees_and_follows_xenstored_rules() {
    let mut h = H::new();
    h.write(D1, 0, "data/x/y/z", "1").ok();
    assert_eq!(h.call(D1, MsgType::Rm, 0, b"data/x\0").ok(), ok());
    assert_eq!(h.read(D1, "data/x/y/z").err(), "ENOENT");
    assert_eq!(h.read(D1, "data/x").err(), "ENOENT");
    assert_eq!(h.dir(D1, "data").ok(), b"");
    // Missing node with an existing parent: fine. Missing parent: ENOENT.
    assert_eq!(h.call(D1, MsgType::Rm, 0, b"data/x\0").ok(), ok());
    assert_eq!(h.call(D1, MsgType::Rm, 0, b"data/q/r\0").err(), "ENOENT");
    assert_eq!(h.call(0, MsgType::Rm, 0, b"/\0").err(), "EINVAL");
    assert_eq!(h.call(D1, MsgType::Rm, 0, b"name\0").err(), "EACCES");
    // A missing node under a directory the guest may not write: EACCES (xenstored reports
    // ENOENT only when the nearest existing ancestor grants the access asked for).
    assert_eq!(h.call(D1, MsgType::Rm, 0, b"cpu/nothing\0").err(), "EACCES");
    assert_eq!(h.read(D1, "cpu/nothing").err(), "ENOENT");
    assert_eq!(
        h.call(D1, MsgType::Rm, 0, b"/local/domain/2/data\0").err(),
        "EACCES"
    );
    assert!(h.xs.read("/local/domain/2/data").is_some());
}

#[test]
fn perms_get_set_and_grant_other_domains() {
    let mut h = H::new();
    h.write(D1, 0, "data/shared", "hello").ok();
    assert_eq!(
        h.call(D1, MsgType::GetPerms, 0, b"data/shared\0").ok(),
        b"n1\0"
    );
    assert_eq!(h.read(D2, "/local/domain/1/data/shared").err(), "EACCES");
    assert_eq!(
        h.call(
            D1,
            MsgType::SetPerms,
            0,
            &zjoin(&["data/shared", "n1", "r2"])
        )
        .ok(),
        ok()
    );
    assert_eq!(
        h.call(D1, MsgType::GetPerms, 0, b"data/shared\0").ok(),
        zjoin(&["n1", "r2"])
    );
    assert_eq!(h.read(D2, "/local/domain/1/data/shared").ok(), b"hello");
    assert_eq!(
        h.write(D2, 0, "/local/domain/1/data/shared", "x").err(),
        "EACCES"
    );
    // Write access is not ownership: only the owner sets permissions.
    h.call(
        D1,
        MsgType::SetPerms,
        0,
        &zjoin(&["data/shared", "n1", "b2"]),
    )
    .ok();
    assert_eq!(
        h.write(D2, 0, "/local/domain/1/data/shared", "x").ok(),
        ok()
    );
    let grab = zjoin(&["/local/domain/1/data/shared", "n1", "b2", "r3"]);
    assert_eq!(h.call(D2, MsgType::SetPerms, 0, &grab).err(), "EACCES");
    h.write(D1, 0, "data/shared", "hello").ok();
    h.call(
        D1,
        MsgType::SetPerms,
        0,
        &zjoin(&["data/shared", "n1", "r2"]),
    )
    .ok();
    assert_eq!(
        h.call(
            D2,
            MsgType::SetPerms,
            0,
            &zjoin(&["/local/domain/1/data/shared", "b2"])
        )
        .err(),
        "EACCES"
    );
    // Unprivileged domains cannot give nodes away, nor attach too many entries.
    assert_eq!(
        h.call(D1, MsgType::SetPerms, 0, &zjoin(&["data/shared", "n2"]))
            .err(),
        "EPERM"
    );
    assert_eq!(
        h.call(
            D1,
            MsgType::SetPerms,
            0,
            &zjoin(&["data/shared", "n1", "r2", "r3", "r4", "r5", "r6"])
        )
        .err(),
        "ENOSPC"
    );
    assert_eq!(
        h.call(D1, MsgType::SetPerms, 0, &zjoin(&["data/shared", "x1"]))
            .err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::SetPerms, 0, &zjoin(&["data/shared"]))
            .err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::GetPerms, 0, b"/local/domain/2/data\0")
            .err(),
        "EACCES"
    );
    // dom0 may change owners; the new owner then has full access.
    assert_eq!(
        h.call(
            0,
            MsgType::SetPerms,
            0,
            &zjoin(&["/local/domain/1/data/shared", "n2"])
        )
        .ok(),
        ok()
    );
    assert_eq!(
        h.write(D2, 0, "/local/domain/1/data/shared", "mine").ok(),
        ok()
    );
    assert_eq!(h.read(D1, "data/shared").err(), "EACCES");
}

#[test]
fn get_domain_path_answers_any_domain() {
    let mut h = H::new();
    assert_eq!(
        h.call(D1, MsgType::GetDomainPath, 0, b"7\0").ok(),
        b"/local/domain/7\0"
    );
    assert_eq!(
        h.call(D1, MsgType::GetDomainPath, 0, b"x\0").err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::GetDomainPath, 0, b"70000\0").err(),
        "EINVAL"
    );
    assert_eq!(h.call(D1, MsgType::GetDomainPath, 0, b"7").err(), "EINVAL");
}

#[test]
fn privileged_operations_are_denied_to_guests() {
    let mut h = H::new();
    for (ty, pl) in [
        (MsgType::Introduce, &b"5\x0012\x003\0"[..]),
        (MsgType::Release, b"2\0"),
        (MsgType::IsDomainIntroduced, b"2\0"),
        (MsgType::Control, b"print\0hi\0"),
        (MsgType::Resume, b"2\0"),
        (MsgType::SetTarget, b"2\x003\0"),
    ] {
        assert_eq!(h.call(D1, ty, 0, pl).err(), "EACCES", "{ty:?}");
        // Privilege is checked before the transaction id.
        assert_eq!(h.call(D1, ty, 555, pl).err(), "EACCES", "{ty:?}");
    }
    // XS_RESTRICT is obsolete: ENOSYS for everyone.
    assert_eq!(h.call(D1, MsgType::Restrict, 0, b"2\0").err(), "ENOSYS");
    assert_eq!(h.call(0, MsgType::Restrict, 0, b"2\0").err(), "ENOSYS");
}

#[test]
fn dom0_introduce_release_and_special_watches() {
    let mut h = H::new();
    assert_eq!(h.watch(0, "@introduceDomain", "in").ok(), ok());
    assert_eq!(h.watch(0, "@releaseDomain", "out").ok(), ok());
    assert_eq!(h.watch(D1, "@releaseDomain", "g").ok(), ok());
    assert_eq!(h.watch(0, "/", "all").ok(), ok());
    h.take_events(0);
    h.take_events(D1);
    assert_eq!(
        h.call(0, MsgType::IsDomainIntroduced, 0, b"5\0").ok(),
        b"F\0"
    );
    assert_eq!(
        h.call(0, MsgType::Introduce, 0, b"5\x0012\x003\0").ok(),
        ok()
    );
    assert_eq!(
        h.call(0, MsgType::IsDomainIntroduced, 0, b"5\0").ok(),
        b"T\0"
    );
    assert_eq!(h.take_events(0), vec![ev("@introduceDomain", "in")]);
    assert_eq!(h.call(0, MsgType::Release, 0, b"5\0").ok(), ok());
    assert_eq!(h.call(0, MsgType::Release, 0, b"5\0").err(), "ENOENT");
    assert_eq!(
        h.call(0, MsgType::IsDomainIntroduced, 0, b"5\0").ok(),
        b"F\0"
    );
    assert_eq!(h.take_events(0), vec![ev("@releaseDomain", "out")]);
    // Special nodes are dom0's: guests do not hear them.
    assert_eq!(h.take_events(D1), vec![]);
    assert_eq!(h.call(0, MsgType::Introduce, 0, b"5\0").err(), "EINVAL");
    assert_eq!(h.call(0, MsgType::Control, 0, b"print\0").err(), "ENOSYS");
    h.xs.release_domain(D2);
    assert!(h.xs.connection(D2).is_none());
    assert_eq!(h.take_events(0), vec![ev("@releaseDomain", "out")]);
}

#[test]
fn unknown_and_server_only_types_are_enosys() {
    let mut h = H::new();
    assert_eq!(h.raw(D1, 999, 0, b"").err(), "ENOSYS");
    assert_eq!(h.raw(D1, 0xffff, 0, b"").err(), "ENOSYS");
    assert_eq!(
        h.call(D1, MsgType::WatchEvent, 0, b"a\0b\0").err(),
        "ENOSYS"
    );
    assert_eq!(h.call(D1, MsgType::Error, 0, b"EINVAL\0").err(), "ENOSYS");
}

// ---------------------------------------------------------------------------------------
// Watches.

#[test]
fn watch_fires_initially_and_on_create_modify_delete_of_path_and_children() {
    let mut h = H::new();
    assert_eq!(h.watch(D1, "data/w", "tok\u{1}en").ok(), ok());
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w", "tok\u{1}en")],
        "initial event"
    );
    h.write(D1, 0, "data/w", "1").ok();
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w", "tok\u{1}en")],
        "create"
    );
    h.write(D1, 0, "data/w", "2").ok();
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w", "tok\u{1}en")],
        "modify"
    );
    h.write(D1, 0, "data/w/child/grand", "3").ok();
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w/child/grand", "tok\u{1}en")],
        "child"
    );
    h.write(D1, 0, "data/wx", "3").ok();
    assert_eq!(
        h.take_events(D1),
        vec![],
        "a sibling with a common prefix is not a child"
    );
    h.call(D1, MsgType::Rm, 0, b"data/w/child\0").ok();
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w/child", "tok\u{1}en")],
        "child delete"
    );
    h.call(D1, MsgType::Rm, 0, b"data\0").ok();
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/w", "tok\u{1}en")],
        "ancestor delete"
    );
}

#[test]
fn subtree_removal_fires_watches_on_removed_nodes_and_ancestors_only() {
    let mut h = H::new();
    h.write(D1, 0, "data/a/b/c", "").ok();
    h.watch(D1, "data/a/b/c", "c").ok();
    h.watch(D1, "data/a/b/c/none", "none").ok();
    h.watch(D1, "data", "top").ok();
    h.take_events(D1);
    h.call(D1, MsgType::Rm, 0, b"data/a\0").ok();
    let mut evs = h.take_events(D1);
    evs.sort();
    assert_eq!(
        evs,
        vec![ev("data/a", "top"), ev("data/a/b/c", "c")],
        "a watch on a path that never existed stays silent"
    );
}

#[test]
fn watch_and_unwatch_ignore_the_transaction_id() {
    let mut h = H::new();
    assert_eq!(
        h.call(D1, MsgType::Watch, 4242, &zjoin(&["data", "t"]))
            .ok(),
        ok()
    );
    assert_eq!(
        h.call(D1, MsgType::Unwatch, 4242, &zjoin(&["data", "t"]))
            .ok(),
        ok()
    );
}

#[test]
fn absolute_watches_report_absolute_paths() {
    let mut h = H::new();
    h.watch(D1, "/local/domain/1/data", "abs").ok();
    h.take_events(D1);
    h.write(D1, 0, "data/k", "v").ok();
    assert_eq!(h.take_events(D1), vec![ev("/local/domain/1/data/k", "abs")]);
}

#[test]
fn watch_events_respect_read_permission() {
    let mut h = H::new();
    // Domain 2 may watch a path it cannot read, but hears nothing about it.
    assert_eq!(h.watch(D2, "/local/domain/1/data", "spy").ok(), ok());
    h.take_events(D2);
    h.write(D1, 0, "data/secret", "x").ok();
    assert_eq!(h.take_events(D2), vec![]);
    h.call(
        D1,
        MsgType::SetPerms,
        0,
        &zjoin(&["data/secret", "n1", "r2"]),
    )
    .ok();
    h.take_events(D2);
    h.write(D1, 0, "data/secret", "y").ok();
    assert_eq!(
        h.take_events(D2),
        vec![ev("/local/domain/1/data/secret", "spy")]
    );
}

#[test]
fn host_shutdown_request_reaches_the_guests_watch() {
    let mut h = H::new();
    h.watch(D1, "control/shutdown", "sd").ok();
    h.take_events(D1);
    h.xs.request_shutdown(D1, ShutdownRequest::Poweroff)
        .unwrap();
    assert_eq!(h.take_events(D1), vec![ev("control/shutdown", "sd")]);
    assert_eq!(h.read(D1, "control/shutdown").ok(), b"poweroff");
    h.xs.request_shutdown(D1, ShutdownRequest::Reboot).unwrap();
    assert_eq!(h.read(D1, "control/shutdown").ok(), b"reboot");
    assert_eq!(h.take_events(D2), vec![]);
}

#[test]
fn unwatch_stops_events_and_errors_are_reported() {
    let mut h = H::new();
    h.watch(D1, "data", "t1").ok();
    h.watch(D1, "data", "t2").ok();
    assert_eq!(h.watch(D1, "data", "t1").err(), "EEXIST");
    assert_eq!(
        h.watch(D1, "/local/domain/1/data", "t1").err(),
        "EEXIST",
        "same node"
    );
    h.take_events(D1);
    assert_eq!(
        h.call(D1, MsgType::Unwatch, 0, &zjoin(&["data", "t1"]))
            .ok(),
        ok()
    );
    assert_eq!(
        h.call(D1, MsgType::Unwatch, 0, &zjoin(&["data", "t1"]))
            .err(),
        "ENOENT"
    );
    h.write(D1, 0, "data/a", "").ok();
    assert_eq!(h.take_events(D1), vec![ev("data/a", "t2")]);
    assert_eq!(h.call(D1, MsgType::Watch, 0, b"data\0").err(), "EINVAL");
    assert_eq!(
        h.call(D1, MsgType::Watch, 0, &zjoin(&["da ta", "x"])).err(),
        "EINVAL"
    );
}

#[test]
fn reset_watches_drops_watches_and_transactions() {
    let mut h = H::new();
    h.watch(D1, "data", "t").ok();
    let tx = h.tx_start(D1);
    assert_eq!(h.call(D1, MsgType::ResetWatches, 0, b"").ok(), ok());
    let c = h.xs.connection(D1).unwrap();
    assert_eq!((c.watch_count(), c.transaction_count()), (0, 0));
    h.take_events(D1);
    h.write(D1, 0, "data/a", "").ok();
    assert_eq!(h.take_events(D1), vec![]);
    assert_eq!(h.read_tx(D1, tx, "name").err(), "ENOENT");
}

impl H {
    fn read_tx(&mut self, d: DomId, tx: u32, path: &str) -> R {
        self.call(d, MsgType::Read, tx, &zjoin(&[path]))
    }
}

// ---------------------------------------------------------------------------------------
// Transactions.

#[test]
fn transaction_commit_applies_changes_atomically_and_fires_at_commit() {
    let mut h = H::new();
    h.watch(D1, "data", "w").ok();
    h.take_events(D1);
    let tx = h.tx_start(D1);
    assert_ne!(tx, 0);
    assert_eq!(h.write(D1, tx, "data/a", "1").ok(), ok());
    assert_eq!(h.write(D1, tx, "data/b/c", "2").ok(), ok());
    assert_eq!(h.read_tx(D1, tx, "data/a").ok(), b"1");
    assert_eq!(
        h.read(D1, "data/a").err(),
        "ENOENT",
        "invisible outside before commit"
    );
    assert_eq!(h.take_events(D1), vec![], "no events before commit");
    assert_eq!(h.tx_end(D1, tx, true).ok(), ok());
    assert_eq!(h.read(D1, "data/a").ok(), b"1");
    assert_eq!(h.read(D1, "data/b/c").ok(), b"2");
    assert_eq!(
        h.take_events(D1),
        vec![ev("data/a", "w"), ev("data/b/c", "w")]
    );
    assert_eq!(h.xs.connection(D1).unwrap().transaction_count(), 0);
    assert_eq!(
        h.tx_end(D1, tx, true).err(),
        "ENOENT",
        "transaction is gone"
    );
}

#[test]
fn transaction_rm_and_abort() {
    let mut h = H::new();
    h.write(D1, 0, "data/x/y", "1").ok();
    let tx = h.tx_start(D1);
    h.call(D1, MsgType::Rm, tx, b"data/x\0").ok();
    assert_eq!(h.read_tx(D1, tx, "data/x/y").err(), "ENOENT");
    assert_eq!(h.tx_end(D1, tx, false).ok(), ok());
    assert_eq!(h.read(D1, "data/x/y").ok(), b"1", "abort discards");
    let tx = h.tx_start(D1);
    h.call(D1, MsgType::Rm, tx, b"data/x\0").ok();
    assert_eq!(h.tx_end(D1, tx, true).ok(), ok());
    assert_eq!(h.read(D1, "data/x").err(), "ENOENT");
}

#[test]
fn transaction_conflict_is_eagain_at_end() {
    let mut h = H::new();
    h.write(D1, 0, "data/n", "0").ok();
    let tx = h.tx_start(D1);
    assert_eq!(h.read_tx(D1, tx, "data/n").ok(), b"0");
    h.write(D1, tx, "data/n", "tx").ok();
    // Someone else changes the node the transaction read.
    h.xs.write("/local/domain/1/data/n", b"other").unwrap();
    assert_eq!(h.tx_end(D1, tx, true).err(), "EAGAIN");
    assert_eq!(h.read(D1, "data/n").ok(), b"other");
    assert_eq!(h.xs.connection(D1).unwrap().transaction_count(), 0);
    // A read-only dependency also conflicts: creation of a node the transaction saw absent.
    let tx = h.tx_start(D1);
    assert_eq!(h.read_tx(D1, tx, "data/late").err(), "ENOENT");
    h.write(D1, tx, "data/other", "1").ok();
    h.write(D1, 0, "data/late", "x").ok();
    assert_eq!(h.tx_end(D1, tx, true).err(), "EAGAIN");
    // Unrelated changes elsewhere do not conflict.
    let tx = h.tx_start(D1);
    h.write(D1, tx, "data/n", "mine").ok();
    h.write(D2, 0, "data/z", "1").ok();
    assert_eq!(h.tx_end(D1, tx, true).ok(), ok());
    assert_eq!(h.read(D1, "data/n").ok(), b"mine");
}

#[test]
fn concurrent_transactions_adding_siblings_conflict_like_xenstored() {
    let mut h = H::new();
    let t1 = h.tx_start(D1);
    let t2 = h.tx_start(D1);
    h.write(D1, t1, "data/a", "1").ok();
    h.write(D1, t2, "data/b", "1").ok();
    assert_eq!(h.tx_end(D1, t1, true).ok(), ok());
    assert_eq!(
        h.tx_end(D1, t2, true).err(),
        "EAGAIN",
        "the parent's child list changed"
    );
    // The retry succeeds.
    let t2 = h.tx_start(D1);
    h.write(D1, t2, "data/b", "1").ok();
    assert_eq!(h.tx_end(D1, t2, true).ok(), ok());
    assert_eq!(h.dir(D1, "data").ok(), zjoin(&["a", "b"]));
}

#[test]
fn transaction_errors_nested_unknown_bad_arg_and_limit() {
    let mut h = H::new();
    let tx = h.tx_start(D1);
    assert_eq!(
        h.call(D1, MsgType::TransactionStart, tx, b"\0").err(),
        "EBUSY"
    );
    assert_eq!(
        h.call(D1, MsgType::TransactionStart, 777, b"\0").err(),
        "ENOENT"
    );
    assert_eq!(h.read_tx(D1, 777, "name").err(), "ENOENT");
    assert_eq!(
        h.call(D1, MsgType::TransactionEnd, tx, b"X\0").err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::TransactionEnd, tx, b"T").err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(D1, MsgType::TransactionEnd, 0, b"T\0").err(),
        "ENOENT"
    );
    // Another domain cannot use this domain's transaction id.
    assert_eq!(h.read_tx(D2, tx, "name").err(), "ENOENT");
    h.tx_end(D1, tx, false).ok();
    let ids: Vec<u32> = (0..10).map(|_| h.tx_start(D1)).collect();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 10, "ids are distinct");
    assert_eq!(
        h.call(D1, MsgType::TransactionStart, 0, b"\0").err(),
        "ENOSPC"
    );
    h.tx_end(D1, ids[3], false).ok();
    h.tx_start(D1);
    // dom0 is not limited.
    for _ in 0..12 {
        h.tx_start(0);
    }
}

// ---------------------------------------------------------------------------------------
// Quotas.

#[test]
fn quota_entries_per_domain() {
    let mut h = H::with_quotas(Quotas {
        entries_per_domain: 20,
        ..Quotas::default()
    });
    let owned = h.xs.tree.count_owned(D1);
    let mut n = 0;
    loop {
        match h.write(D1, 0, &format!("data/n{n}"), "") {
            R::Ok(_) => n += 1,
            R::Err(e) => {
                assert_eq!(e, "ENOSPC");
                break;
            }
        }
        assert!(n < 100);
    }
    assert_eq!(owned + n, 20);
    // Creating several missing levels at once counts them all.
    h.call(D1, MsgType::Rm, 0, b"data/n0\0").ok();
    assert_eq!(h.write(D1, 0, "data/p/q", "").err(), "ENOSPC");
    assert_eq!(h.write(D1, 0, "data/p", "").ok(), ok());
    // Overwriting does not need a new entry.
    assert_eq!(h.write(D1, 0, "data/p", "again").ok(), ok());
}

#[test]
fn quota_watches_node_size_and_path_length() {
    let mut h = H::new();
    for i in 0..128 {
        assert_eq!(h.watch(D1, "data", &format!("t{i}")).ok(), ok());
    }
    assert_eq!(h.watch(D1, "data", "one-more").err(), "E2BIG");
    let big = "v".repeat(2049);
    assert_eq!(h.write(D1, 0, "data/big", &big).err(), "ENOSPC");
    assert_eq!(h.write(D1, 0, "data/big", &big[..2048]).ok(), ok());
    let long = format!("data/{}", "p".repeat(2048));
    assert_eq!(h.write(D1, 0, &long, "").err(), "EINVAL");
    // dom0 is exempt from the node size quota.
    assert!(h
        .xs
        .write("/local/domain/1/data/big", big.as_bytes())
        .is_ok());
}

#[test]
fn quota_entries_rechecked_at_commit_across_transactions() {
    let mut h = H::with_quotas(Quotas {
        entries_per_domain: 40,
        ..Quotas::default()
    });
    h.write(D1, 0, "data/p1", "").ok();
    h.write(D1, 0, "data/p2", "").ok();
    let room = 40 - h.xs.tree.count_owned(D1);
    assert!(room >= 4);
    // Each transaction fits the quota alone; together they would not.
    let each = room / 2 + 1;
    let t1 = h.tx_start(D1);
    let t2 = h.tx_start(D1);
    for i in 0..each {
        h.write(D1, t1, &format!("data/p1/{i}"), "").ok();
        h.write(D1, t2, &format!("data/p2/{i}"), "").ok();
    }
    assert_eq!(h.tx_end(D1, t2, true).ok(), ok());
    assert_eq!(h.tx_end(D1, t1, true).err(), "ENOSPC");
    assert_eq!(
        h.read(D1, "data/p1/0").err(),
        "ENOENT",
        "nothing of t1 applied"
    );
    assert!(h.xs.tree.count_owned(D1) <= 40);
}

#[test]
fn quota_nodes_per_transaction() {
    let mut h = H::with_quotas(Quotas {
        transaction_nodes: 8,
        ..Quotas::default()
    });
    let tx = h.tx_start(D1);
    let mut n = 0;
    let err = loop {
        match h.read_tx(D1, tx, &format!("cpu/{n}/availability")) {
            R::Ok(_) | R::Err(_) if n > 50 => panic!("no limit"),
            R::Err(e) if e == "ENOSPC" => break e,
            _ => n += 1,
        }
    };
    assert_eq!(err, "ENOSPC");
    assert!(n <= 8, "{n} reads before the limit");
    // Outside the transaction nothing is limited.
    assert_eq!(h.read(D1, "name").ok(), b"guest1");
}

// ---------------------------------------------------------------------------------------
// Stream transport and wire parsing.

fn req_bytes(ty: MsgType, req_id: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
    Message {
        header: Header {
            ty: ty as u32,
            req_id,
            tx_id: tx,
            len: payload.len() as u32,
        },
        payload: payload.to_vec(),
    }
    .to_bytes()
}

#[test]
fn feed_handles_partial_and_concatenated_requests() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let mut stream = req_bytes(MsgType::Read, 1, 0, b"name\0");
    stream.extend(req_bytes(MsgType::Read, 2, 0, b"domid\0"));
    stream.extend(req_bytes(MsgType::Read, 3, 0, b"nope\0"));
    // In awkward pieces: 3 bytes, then 20, then the rest.
    assert_eq!(xs.feed(D1, &stream[..3]).unwrap(), 3);
    assert!(xs.take_output(D1, usize::MAX).is_empty());
    assert_eq!(xs.feed(D1, &stream[3..23]).unwrap(), 20);
    assert_eq!(xs.feed(D1, &stream[23..]).unwrap(), stream.len() - 23);
    let out = parse_msgs(&xs.take_output(D1, usize::MAX));
    let got: Vec<(u32, u32, Vec<u8>)> = out
        .iter()
        .map(|m| (m.header.ty, m.header.req_id, m.payload.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (MsgType::Read as u32, 1, b"guest1".to_vec()),
            (MsgType::Read as u32, 2, b"1".to_vec()),
            (MsgType::Error as u32, 3, b"ENOENT\0".to_vec()),
        ]
    );
}

#[test]
fn oversized_payload_length_stops_the_connection() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let mut h = Header {
        ty: MsgType::Write as u32,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    }
    .to_bytes()
    .to_vec();
    h.extend(vec![b'a'; 100]);
    match xs.feed(D1, &h) {
        Err(XenstoreError::Protocol { domid, err }) => {
            assert_eq!(domid, D1);
            assert_eq!(err, WireError::PayloadTooLong(4097));
        }
        r => panic!("expected a protocol error, got {r:?}"),
    }
    assert!(xs.connection(D1).unwrap().stopped().is_some());
    assert!(matches!(
        xs.feed(D1, &req_bytes(MsgType::Read, 2, 0, b"name\0")),
        Err(XenstoreError::Stopped(D1))
    ));
    assert!(matches!(
        xs.feed(9, b"x"),
        Err(XenstoreError::NoConnection(9))
    ));
}

#[test]
fn feed_pauses_while_output_is_not_consumed() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    xs.write("/local/domain/1/data/v", &[b'x'; 2000]).unwrap();
    let one = req_bytes(MsgType::Read, 1, 0, b"data/v\0");
    let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 20).collect();
    let used = xs.feed(D1, &stream).unwrap();
    assert!(used < stream.len(), "stops taking requests");
    assert!(xs.connection(D1).unwrap().pending_output() >= OUTPUT_PAUSE);
    xs.take_output(D1, usize::MAX);
    let more = xs.feed(D1, &stream[used..]).unwrap();
    assert!(more > 0, "resumes once output is consumed");
}

#[test]
fn watch_events_beyond_the_output_bound_are_dropped() {
    let mut xs = Xenstore::with_quotas(Quotas {
        max_queued_output: 200,
        ..Quotas::default()
    });
    xs.populate_pv_domu(&info(D1)).unwrap();
    xs.feed(D1, &req_bytes(MsgType::Watch, 1, 0, &zjoin(&["data", "t"])))
        .unwrap();
    for i in 0..50 {
        xs.write(&format!("/local/domain/1/data/{i}"), b"").unwrap();
    }
    let c = xs.connection(D1).unwrap();
    assert!(c.pending_output() <= 200);
    assert!(c.dropped_events() > 0);
}

// ---------------------------------------------------------------------------------------
// Ring transport.

/// The guest side of the ring, written independently of the server code.
struct GuestRing {
    page: MemPage,
}

impl GuestRing {
    fn at(req_idx: u32, rsp_idx: u32) -> GuestRing {
        let page = MemPage::new();
        Xenstore::init_ring(&page).unwrap();
        page.write_u32(REQ_CONS_OFFSET, req_idx).unwrap();
        page.write_u32(REQ_PROD_OFFSET, req_idx).unwrap();
        page.write_u32(RSP_CONS_OFFSET, rsp_idx).unwrap();
        page.write_u32(RSP_PROD_OFFSET, rsp_idx).unwrap();
        GuestRing { page }
    }

    fn get(&self, off: usize) -> u32 {
        self.page.read_u32(off).unwrap()
    }

    /// Produce as much of `data` as fits; returns the count.
    fn send(&self, data: &[u8]) -> usize {
        let cons = self.get(REQ_CONS_OFFSET);
        let mut prod = self.get(REQ_PROD_OFFSET);
        let mut n = 0;
        for &b in data {
            if prod.wrapping_sub(cons) as usize == RING_SIZE {
                break;
            }
            self.page
                .write(REQ_OFFSET + (prod as usize % RING_SIZE), &[b])
                .unwrap();
            prod = prod.wrapping_add(1);
            n += 1;
        }
        self.page.write_u32(REQ_PROD_OFFSET, prod).unwrap();
        n
    }

    /// Consume everything in the response ring.
    fn recv(&self) -> Vec<u8> {
        let mut cons = self.get(RSP_CONS_OFFSET);
        let prod = self.get(RSP_PROD_OFFSET);
        let mut v = Vec::new();
        while cons != prod {
            let mut b = [0u8];
            self.page
                .read(RSP_OFFSET + (cons as usize % RING_SIZE), &mut b)
                .unwrap();
            v.push(b[0]);
            cons = cons.wrapping_add(1);
        }
        self.page.write_u32(RSP_CONS_OFFSET, cons).unwrap();
        v
    }
}

/// Send `stream` through the ring, servicing as needed, and collect the output.
fn ring_round_trip(xs: &mut Xenstore, g: &GuestRing, stream: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        sent += g.send(&stream[sent..]);
        xs.service_ring(D1, &g.page).unwrap();
        out.extend(g.recv());
        if sent == stream.len()
            && g.get(REQ_CONS_OFFSET) == g.get(REQ_PROD_OFFSET)
            && xs.connection(D1).unwrap().pending_output() == 0
        {
            xs.service_ring(D1, &g.page).unwrap();
            out.extend(g.recv());
            return out;
        }
    }
    panic!("ring did not drain");
}

#[test]
fn ring_round_trip_with_wrapping_indices_and_large_replies() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    xs.write("/local/domain/1/data/big", &[b'z'; 3000]).unwrap();
    // Indices just below 2^32 and not ring-aligned: data and indices both wrap.
    let g = GuestRing::at(u32::MAX - 6, u32::MAX - 1000);
    let mut stream = Vec::new();
    for i in 0..40 {
        stream.extend(req_bytes(MsgType::Read, i, 0, b"data/big\0"));
        stream.extend(req_bytes(MsgType::Read, 1000 + i, 0, b"name\0"));
    }
    let out = parse_msgs(&ring_round_trip(&mut xs, &g, &stream));
    assert_eq!(out.len(), 80);
    for (i, m) in out.iter().enumerate() {
        let i = i as u32;
        if i.is_multiple_of(2) {
            assert_eq!(m.header.req_id, i / 2);
            assert_eq!(m.payload, vec![b'z'; 3000]);
        } else {
            assert_eq!(m.header.req_id, 1000 + i / 2);
            assert_eq!(m.payload, b"guest1");
        }
    }
    assert_eq!(
        g.get(SERVER_FEATURES_OFFSET),
        XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR
    );
}

#[test]
fn ring_delivers_watch_events_after_host_writes() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let g = GuestRing::at(0, 0);
    let out = ring_round_trip(
        &mut xs,
        &g,
        &req_bytes(MsgType::Watch, 7, 0, &zjoin(&["control/shutdown", "sd"])),
    );
    assert_eq!(parse_msgs(&out).len(), 2, "reply and initial event");
    xs.request_shutdown(D1, ShutdownRequest::Poweroff).unwrap();
    let (n, notify) = xs.flush_ring(D1, &g.page).unwrap();
    assert!(n > 0 && notify);
    let evs = parse_msgs(&g.recv());
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].msg_type(), Some(MsgType::WatchEvent));
    assert_eq!(evs[0].payload, zjoin(&["control/shutdown", "sd"]));
}

#[test]
fn ring_with_impossible_request_indices_is_stopped_with_error_field() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let g = GuestRing::at(0, 0);
    g.page.write_u32(REQ_PROD_OFFSET, 1025).unwrap();
    assert!(matches!(
        xs.service_ring(D1, &g.page),
        Err(XenstoreError::BadIndices {
            domid: D1,
            bad: BadIndices {
                cons: 0,
                prod: 1025
            }
        })
    ));
    assert_eq!(g.get(ERROR_OFFSET), XENSTORE_ERROR_RINGIDX);
    assert!(matches!(
        xs.service_ring(D1, &g.page),
        Err(XenstoreError::Stopped(D1))
    ));
    // The guest asks for a reconnect: state reset, ring usable again.
    g.page
        .write_u32(CONNECTION_OFFSET, XENSTORE_RECONNECT)
        .unwrap();
    let rep = xs.service_ring(D1, &g.page).unwrap();
    assert!(rep.notify);
    assert_eq!(g.get(CONNECTION_OFFSET), XENSTORE_CONNECTED);
    assert_eq!(g.get(ERROR_OFFSET), XENSTORE_ERROR_NONE);
    assert_eq!(g.get(REQ_PROD_OFFSET), 0);
    let out = ring_round_trip(&mut xs, &g, &req_bytes(MsgType::Read, 1, 0, b"domid\0"));
    assert_eq!(parse_msgs(&out)[0].payload, b"1");
}

#[test]
fn ring_with_impossible_response_indices_is_stopped() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let g = GuestRing::at(0, 0);
    g.page.write_u32(RSP_CONS_OFFSET, 5000).unwrap();
    g.send(&req_bytes(MsgType::Read, 1, 0, b"domid\0"));
    assert!(matches!(
        xs.service_ring(D1, &g.page),
        Err(XenstoreError::BadIndices { .. })
    ));
    assert_eq!(g.get(ERROR_OFFSET), XENSTORE_ERROR_RINGIDX);
}

#[test]
fn ring_oversized_length_sets_proto_error() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let g = GuestRing::at(0, 0);
    let mut hdr = Header {
        ty: 2,
        req_id: 1,
        tx_id: 0,
        len: u32::MAX,
    }
    .to_bytes()
    .to_vec();
    hdr.extend([0u8; 64]);
    g.send(&hdr);
    assert!(matches!(
        xs.service_ring(D1, &g.page),
        Err(XenstoreError::Protocol {
            err: WireError::PayloadTooLong(u32::MAX),
            ..
        })
    ));
    assert_eq!(g.get(ERROR_OFFSET), XENSTORE_ERROR_PROTO);
}

#[test]
fn ring_partial_request_waits_for_the_rest() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    let g = GuestRing::at(1020, 0);
    let r = req_bytes(MsgType::Read, 9, 0, b"name\0");
    g.send(&r[..10]);
    let rep = xs.service_ring(D1, &g.page).unwrap();
    assert_eq!((rep.requests, rep.output_bytes), (0, 0));
    assert!(rep.notify, "consumed bytes free ring space");
    g.send(&r[10..]);
    let rep = xs.service_ring(D1, &g.page).unwrap();
    assert_eq!(rep.requests, 1);
    assert_eq!(parse_msgs(&g.recv())[0].payload, b"guest1");
}

#[test]
fn service_ring_for_unknown_domain_is_an_error() {
    let mut xs = Xenstore::new();
    let g = GuestRing::at(0, 0);
    assert!(matches!(
        xs.service_ring(4, &g.page),
        Err(XenstoreError::NoConnection(4))
    ));
}

// ---------------------------------------------------------------------------------------
// Hostile input never panics.

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn arb_path() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"data".to_vec()),
            Just(b"data/a".to_vec()),
            Just(b"data/a/b".to_vec()),
            Just(b"data/b".to_vec()),
            Just(b"name".to_vec()),
            Just(b"/local/domain/2/data/x".to_vec()),
            Just(b"/".to_vec()),
            Just(b"@releaseDomain".to_vec()),
            Just(b"control/shutdown".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn arb_req() -> impl Strategy<Value = (u32, u32, Vec<u8>)> {
        (
            prop_oneof![0u32..24, Just(0xffff), any::<u32>()],
            prop_oneof![Just(0u32), 1u32..4, any::<u32>()],
            prop_oneof![
                (arb_path(), arb_path()).prop_map(|(a, b)| [a, vec![0], b, vec![0]].concat()),
                arb_path().prop_map(|a| [a, vec![0]].concat()),
                (arb_path(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(a, v)| [
                    a,
                    vec![0],
                    v
                ]
                .concat()),
                Just(b"T\0".to_vec()),
                Just(b"F\0".to_vec()),
                Just(b"n1\0".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn random_request_sequences_always_get_one_reply(
            reqs in proptest::collection::vec((0usize..3, arb_req()), 1..60)
        ) {
            let mut xs = Xenstore::with_quotas(Quotas { entries_per_domain: 40, ..Quotas::default() });
            xs.populate_pv_domu(&info(D1)).unwrap();
            xs.populate_pv_domu(&info(D2)).unwrap();
            xs.connect(0);
            for (i, (who, (ty, tx, payload))) in reqs.into_iter().enumerate() {
                let d = [D1, D2, 0][who];
                if xs.connection(d).is_none() {
                    // Released by a random dom0 request.
                    continue;
                }
                let msg = Message {
                    header: Header { ty, req_id: i as u32, tx_id: tx, len: payload.len() as u32 },
                    payload,
                };
                xs.handle_message(d, &msg).unwrap();
                let out = parse_msgs(&xs.take_output(d, usize::MAX));
                let replies: Vec<_> = out.iter().filter(|m| m.msg_type() != Some(MsgType::WatchEvent)).collect();
                prop_assert_eq!(replies.len(), 1);
                prop_assert_eq!(replies[0].header.req_id, i as u32);
                prop_assert!(replies[0].payload.len() <= PAYLOAD_MAX);
                // The root and the domain homes survive whatever guests do.
                prop_assert!(xs.node("/").is_some());
            }
            // Guests never own more than their quota.
            prop_assert!(xs.tree.count_owned(D1) <= 40);
        }

        #[test]
        fn random_bytes_on_the_ring_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            req_idx in any::<u32>(),
            rsp_cons in any::<u32>(),
            rsp_prod in any::<u32>(),
        ) {
            let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
            let g = GuestRing::at(req_idx, 0);
            g.page.write_u32(RSP_CONS_OFFSET, rsp_cons).unwrap();
            g.page.write_u32(RSP_PROD_OFFSET, rsp_prod).unwrap();
            let mut sent = 0;
            for _ in 0..20 {
                sent += g.send(&bytes[sent..]);
                if xs.service_ring(D1, &g.page).is_err() {
                    break;
                }
            }
            // The server only ever produces into a ring whose indices made sense, and never
            // overfills it.
            if g.get(RSP_PROD_OFFSET) != rsp_prod {
                prop_assert!(rsp_prod.wrapping_sub(rsp_cons) as usize <= RING_SIZE);
                let used = g.get(RSP_PROD_OFFSET).wrapping_sub(g.get(RSP_CONS_OFFSET));
                prop_assert!(used as usize <= RING_SIZE);
            }
        }

        #[test]
        fn random_indices_and_contents_never_panic(
            idx in proptest::collection::vec(any::<u32>(), 4),
            fill in any::<u8>(),
        ) {
            let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
            let page = MemPage::new();
            page.write(0, &[fill; 2048]).unwrap();
            for (i, off) in [REQ_CONS_OFFSET, REQ_PROD_OFFSET, RSP_CONS_OFFSET, RSP_PROD_OFFSET].iter().enumerate() {
                page.write_u32(*off, idx[i]).unwrap();
            }
            for _ in 0..3 {
                let _ = xs.service_ring(D1, &page);
            }
        }
    }
}

#[test]
fn watch_fires_for_unreadable_node_under_readable_parent() {
    let mut h = H::new();
    h.xs.write("/local/domain/1/data/hidden", b"1").unwrap();
    h.xs.set_perms("/local/domain/1/data/hidden", Perms::owner(0))
        .unwrap();
    assert_eq!(h.read(D1, "data/hidden").err(), "EACCES");
    h.watch(D1, "data", "w").ok();
    h.take_events(D1);
    // xenstored: the node or its parent must be readable.
    h.xs.write("/local/domain/1/data/hidden", b"2").unwrap();
    assert_eq!(h.take_events(D1), vec![ev("data/hidden", "w")]);
    // Nothing readable at either level: silent.
    h.xs.write("/local/domain/1/data/hidden/deeper", b"x")
        .unwrap();
    assert_eq!(h.take_events(D1), vec![]);
}

/// What a Linux PV guest does with xenstore during boot and on a shutdown request
/// (drivers/xen/xenbus, manage.c, xen-balloon.c), against the libxl layout.
#[test]
fn linux_like_boot_and_shutdown_sequence_succeeds() {
    let mut h = H::new();
    let d = D1;
    assert_eq!(
        h.read(d, "control/platform-feature-xs_reset_watches").ok(),
        b"1"
    );
    assert_eq!(h.call(d, MsgType::ResetWatches, 0, b"").ok(), ok());
    // Frontend bus: watch and list "device".
    assert_eq!(h.watch(d, "device", "FE").ok(), ok());
    assert_eq!(h.dir(d, "device").ok(), zjoin(&["suspend"]));
    assert_eq!(h.dir(d, "device/suspend").ok(), zjoin(&["event-channel"]));
    // manage.c: shutdown and sysrq watches, feature flags.
    assert_eq!(h.watch(d, "control/shutdown", "SD").ok(), ok());
    assert_eq!(h.watch(d, "control/sysrq", "RQ").ok(), ok());
    for f in ["poweroff", "reboot", "suspend"] {
        assert_eq!(
            h.write(d, 0, &format!("control/feature-{f}"), "1").ok(),
            ok()
        );
    }
    // Balloon: target memory.
    assert_eq!(h.watch(d, "memory/target", "BAL").ok(), ok());
    assert_eq!(h.read(d, "memory/target").ok(), b"262144");
    // CPU hotplug watch.
    assert_eq!(h.watch(d, "cpu", "CPU").ok(), ok());
    assert_eq!(h.read(d, "cpu/1/availability").ok(), b"online");
    let initial = h.take_events(d);
    assert_eq!(initial.len(), 5, "one initial event per watch: {initial:?}");

    // The host asks for a poweroff; the guest acknowledges in a transaction.
    h.xs.request_shutdown(d, ShutdownRequest::Poweroff).unwrap();
    assert_eq!(h.take_events(d), vec![ev("control/shutdown", "SD")]);
    let tx = h.tx_start(d);
    assert_eq!(h.read_tx(d, tx, "control/shutdown").ok(), b"poweroff");
    assert_eq!(h.write(d, tx, "control/shutdown", "").ok(), ok());
    assert_eq!(h.tx_end(d, tx, true).ok(), ok());
    assert_eq!(h.take_events(d), vec![ev("control/shutdown", "SD")]);
    assert_eq!(
        h.xs.read("/local/domain/1/control/shutdown"),
        Some(&b""[..])
    );
}

#[test]
fn service_ring_terminates_when_the_guest_does_not_read_replies() {
    let mut xs = Xenstore::new_for_pv_domu(&info(D1)).unwrap();
    xs.write("/local/domain/1/data/big", &[b'z'; 3000]).unwrap();
    let g = GuestRing::at(0, 0);
    let one = req_bytes(MsgType::Read, 1, 0, b"data/big\0");
    let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 60).collect();
    let sent = g.send(&stream);
    let rep = xs.service_ring(D1, &g.page).unwrap();
    assert_eq!(
        rep.output_bytes, RING_SIZE,
        "the response ring is filled once"
    );
    assert!(rep.requests >= 3 && rep.requests < 60, "{rep:?}");
    let pending = xs.connection(D1).unwrap().pending_output();
    assert!(
        (OUTPUT_PAUSE..OUTPUT_PAUSE + 4200).contains(&pending),
        "{pending}"
    );
    assert!(
        g.get(REQ_CONS_OFFSET) < sent as u32,
        "later requests wait in the ring"
    );
    // Nothing changes until the guest reads.
    let again = xs.service_ring(D1, &g.page).unwrap();
    assert_eq!((again.requests, again.output_bytes), (0, 0));
}
