//! The xenstore tree: nodes with values, permissions and generation counts, keyed by absolute
//! path, plus path and permission-string rules (docs/misc/xenstore.txt).

use std::collections::BTreeMap;

use super::wire::{XsError, ABS_PATH_MAX, REL_PATH_MAX};

/// A domain id (`domid_t`).
pub type DomId = u16;

/// One access right (xenstore.txt: `n` none, `r` read, `w` write, `b` both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// No access.
    None,
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    Both,
}

impl Access {
    /// Whether this right includes reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this right includes writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }

    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One permission entry, `<letter><domid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: DomId,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parse `n0`, `r5`, ... (xenstore.txt: a letter then a decimal domid).
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&l, num) = s.split_first().ok_or(XsError::EINVAL)?;
        let access = match l {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(XsError::EINVAL),
        };
        if num.is_empty() || num.len() > 5 || !num.iter().all(u8::is_ascii_digit) {
            return Err(XsError::EINVAL);
        }
        let v: u32 = num.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        let domid = DomId::try_from(v).map_err(|_| XsError::EINVAL)?;
        Ok(Perm { domid, access })
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list. The first entry names the owner, and its access is what every
/// domain not listed later gets; later entries grant specific domains (xenstore.txt).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// A list from entries; `None` if empty.
    pub fn new(entries: Vec<Perm>) -> Option<Perms> {
        (!entries.is_empty()).then_some(Perms(entries))
    }

    /// Owned by `owner`, no access for others.
    pub fn owner(owner: DomId) -> Perms {
        Perms(vec![Perm {
            domid: owner,
            access: Access::None,
        }])
    }

    /// Owned by `owner`, readable by `reader` (libxl's "roperm": `n0 r<domid>`).
    pub fn owner_readable_by(owner: DomId, reader: DomId) -> Perms {
        Perms(vec![
            Perm {
                domid: owner,
                access: Access::None,
            },
            Perm {
                domid: reader,
                access: Access::Read,
            },
        ])
    }

    /// The owner.
    pub fn owner_id(&self) -> DomId {
        self.0[0].domid
    }

    /// The entries.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// The access `domid` has: dom0 and the owner have full access; otherwise the first
    /// entry naming `domid`, else the owner entry's access (the default for others).
    pub fn access_for(&self, domid: DomId) -> Access {
        if domid == 0 || domid == self.owner_id() {
            return Access::Both;
        }
        self.0[1..]
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.0[0].access, |p| p.access)
    }

    /// The same list with a different owner (what an unprivileged domain creating a node gets).
    pub fn with_owner(&self, owner: DomId) -> Perms {
        let mut v = self.0.clone();
        v[0].domid = owner;
        Perms(v)
    }

    /// The wire form: each entry NUL-terminated.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in &self.0 {
            v.extend_from_slice(p.to_string().as_bytes());
            v.push(0);
        }
        v
    }
}

impl std::fmt::Display for Perms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The value (arbitrary bytes).
    pub value: Vec<u8>,
    /// The permissions.
    pub perms: Perms,
    /// Generation count: changes whenever the node's value, permissions or children change.
    pub gen: u64,
}

/// `/local/domain/<domid>`, a domain's home.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Whether `c` may appear in a node name (xenstore.txt: alphanumerics and `-/_@`).
fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Turn a client path into an absolute, validated one. Relative paths resolve under the
/// connection's home `/local/domain/<domid>`. Rules (xenstored `is_valid_nodename`): starts
/// with `/` after resolution, no trailing `/` (except the root), no `//`, only valid
/// characters, at most [`ABS_PATH_MAX`] bytes, and for unprivileged domains at most
/// [`REL_PATH_MAX`] bytes below `/local/domain/<id>/`.
pub fn canonicalize(domid: DomId, raw: &[u8]) -> Result<String, XsError> {
    if raw.is_empty() || raw.len() > ABS_PATH_MAX {
        return Err(XsError::EINVAL);
    }
    let abs = if raw[0] == b'/' {
        raw.to_vec()
    } else {
        let mut v = domain_path(domid).into_bytes();
        v.push(b'/');
        v.extend_from_slice(raw);
        v
    };
    if abs.len() > ABS_PATH_MAX
        || !abs.iter().all(|&c| valid_char(c))
        || (abs.len() > 1 && abs.last() == Some(&b'/'))
        || abs.windows(2).any(|w| w == b"//")
    {
        return Err(XsError::EINVAL);
    }
    // All bytes are ASCII here.
    let s = String::from_utf8(abs).map_err(|_| XsError::EINVAL)?;
    if domid != 0 && local_len(&s) > REL_PATH_MAX {
        return Err(XsError::EINVAL);
    }
    Ok(s)
}

/// Length of the part of `path` below `/local/domain/<id>/`, or the whole length.
fn local_len(path: &str) -> usize {
    if let Some(rest) = path.strip_prefix("/local/domain/") {
        if let Some(slash) = rest.find('/') {
            if rest[..slash].bytes().all(|c| c.is_ascii_digit()) && slash > 0 {
                return rest.len() - slash - 1;
            }
        }
    }
    path.len()
}

/// The parent of an absolute path other than `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The prefix every descendant of `path` starts with.
fn child_prefix(path: &str) -> String {
    if path == "/" {
        "/".to_owned()
    } else {
        format!("{path}/")
    }
}

/// Whether `path` is `base` or below it.
pub fn is_at_or_below(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes()[base.len()] == b'/')
}

/// The tree: nodes by absolute path. The root always exists.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// A tree holding only `/`, owned by dom0 with no access for others.
    pub fn new() -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_owned(),
            Node {
                value: Vec::new(),
                perms: Perms::owner(0),
                gen: 0,
            },
        );
        Tree { nodes }
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Mutable node at `path`.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Insert or replace a node; the caller guarantees the parent exists.
    pub fn insert(&mut self, path: String, node: Node) {
        self.nodes.insert(path, node);
    }

    /// Remove one node (not its descendants).
    pub fn remove_one(&mut self, path: &str) -> Option<Node> {
        self.nodes.remove(path)
    }

    /// Names of the direct children of `path`, sorted.
    pub fn children(&self, path: &str) -> Vec<&str> {
        let prefix = child_prefix(path);
        self.nodes
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.as_str())
            .take_while(|k| k.starts_with(prefix.as_str()))
            .filter_map(|k| {
                let name = &k[prefix.len()..];
                (!name.is_empty() && !name.contains('/')).then_some(name)
            })
            .collect()
    }

    /// Paths of `path` and all its descendants (parents before children).
    pub fn subtree(&self, path: &str) -> Vec<String> {
        if path == "/" {
            return self.nodes.keys().cloned().collect();
        }
        let prefix = child_prefix(path);
        let mut v: Vec<String> = Vec::new();
        if self.nodes.contains_key(path) {
            v.push(path.to_owned());
        }
        v.extend(
            self.nodes
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(prefix.as_str()))
                .cloned(),
        );
        v
    }

    /// The deepest existing node at or above `path`.
    pub fn nearest_existing<'a>(&self, mut path: &'a str) -> &'a str {
        while path != "/" && !self.nodes.contains_key(path) {
            path = parent(path);
        }
        path
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of nodes owned by `domid`.
    pub fn count_owned(&self, domid: DomId) -> usize {
        self.nodes
            .values()
            .filter(|n| n.perms.owner_id() == domid)
            .count()
    }

    /// All nodes in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_the_domain_home() {
        assert_eq!(
            canonicalize(3, b"device").unwrap(),
            "/local/domain/3/device"
        );
        assert_eq!(canonicalize(3, b"/vm").unwrap(), "/vm");
        assert_eq!(canonicalize(0, b"/").unwrap(), "/");
    }

    #[test]
    fn malformed_paths_are_einval() {
        for p in [
            &b""[..],
            b"/a/",
            b"/a//b",
            b"/a b",
            b"/a\xff",
            b"a/",
            b"/a.b",
        ] {
            assert_eq!(canonicalize(1, p), Err(XsError::EINVAL), "{p:?}");
        }
        let long = vec![b'a'; ABS_PATH_MAX];
        assert_eq!(canonicalize(0, &long), Err(XsError::EINVAL));
        let mut abs = b"/".to_vec();
        abs.extend(vec![b'a'; ABS_PATH_MAX - 1]);
        assert!(canonicalize(0, &abs).is_ok());
    }

    #[test]
    fn unprivileged_relative_path_is_limited_to_rel_path_max() {
        let ok = vec![b'a'; REL_PATH_MAX];
        assert!(canonicalize(1, &ok).is_ok());
        let long = vec![b'a'; REL_PATH_MAX + 1];
        assert_eq!(canonicalize(1, &long), Err(XsError::EINVAL));
        // dom0 is not subject to the relative quota.
        assert!(canonicalize(0, &[b"/local/domain/1/"[..].to_vec(), long].concat()).is_ok());
    }

    #[test]
    fn perm_strings_parse_and_print() {
        assert_eq!(
            Perm::parse(b"r5").unwrap(),
            Perm {
                domid: 5,
                access: Access::Read
            }
        );
        assert_eq!(Perm::parse(b"b65535").unwrap().to_string(), "b65535");
        for bad in [&b""[..], b"r", b"x1", b"r65536", b"r-1", b"r1a", b"r123456"] {
            assert_eq!(Perm::parse(bad), Err(XsError::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn access_owner_dom0_listed_and_default() {
        let p = Perms::new(vec![
            Perm {
                domid: 5,
                access: Access::Read,
            },
            Perm {
                domid: 7,
                access: Access::Write,
            },
            Perm {
                domid: 8,
                access: Access::None,
            },
        ])
        .unwrap();
        assert_eq!(p.access_for(5), Access::Both);
        assert_eq!(p.access_for(0), Access::Both);
        assert_eq!(p.access_for(7), Access::Write);
        assert_eq!(p.access_for(8), Access::None);
        assert_eq!(p.access_for(9), Access::Read);
        assert_eq!(p.to_string(), "r5,w7,n8");
    }

    #[test]
    fn children_and_subtree_do_not_leak_siblings_with_common_prefix() {
        let mut t = Tree::new();
        let n = || Node {
            value: vec![],
            perms: Perms::owner(0),
            gen: 0,
        };
        for p in ["/a", "/a/b", "/a/b/c", "/ab", "/a-"] {
            t.insert(p.into(), n());
        }
        assert_eq!(t.children("/"), vec!["a", "a-", "ab"]);
        assert_eq!(t.children("/a"), vec!["b"]);
        assert_eq!(t.subtree("/a"), vec!["/a", "/a/b", "/a/b/c"]);
        assert_eq!(t.nearest_existing("/a/b/x/y"), "/a/b");
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
    }
}
