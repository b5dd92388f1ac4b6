//! Node operations on a tree, shared by direct requests and transactions.
//!
//! Inside a transaction the tree is the transaction's private copy and every node the
//! transaction looks at is recorded with the generation it had, so the commit can detect
//! conflicts (xenstored: a transaction fails with `EAGAIN` if any node it accessed changed).

use std::collections::{BTreeMap, BTreeSet};

use super::tree::{is_at_or_below, parent, Access, DomId, Node, Perms, Tree};
use super::wire::XsError;
use super::Quotas;

/// What a transaction has seen and changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxLog {
    /// Generation of each accessed node when first accessed (`None` = did not exist).
    pub observed: BTreeMap<String, Option<u64>>,
    /// Paths created, modified or deleted.
    pub changed: BTreeSet<String>,
}

/// A watch trigger produced by a modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fire {
    /// The modified path (absolute or a special `@` path).
    pub path: String,
    /// Only watches on exactly this path hear it (a node removed as part of a subtree);
    /// otherwise watches on the path and its ancestors do.
    pub exact: bool,
    /// The node's permissions (before and after, for a permission change): a watcher that
    /// may read the node under any of them sees the event.
    pub perms: Vec<Perms>,
}

pub(crate) struct OpCtx<'a> {
    pub tree: &'a mut Tree,
    pub log: Option<&'a mut TxLog>,
    pub gen: &'a mut u64,
    pub domid: DomId,
    pub quotas: &'a Quotas,
    pub fires: Vec<Fire>,
}

impl OpCtx<'_> {
    fn next_gen(&mut self) -> u64 {
        *self.gen += 1;
        *self.gen
    }

    fn observe(&mut self, path: &str) {
        if let Some(log) = self.log.as_deref_mut() {
            if !log.observed.contains_key(path) {
                let g = self.tree.get(path).map(|n| n.gen);
                log.observed.insert(path.to_owned(), g);
            }
        }
    }

    fn changed(&mut self, path: &str) {
        if let Some(log) = self.log.as_deref_mut() {
            log.changed.insert(path.to_owned());
        }
    }

    /// Permissions of `path` and of its parent: a watcher that may read either hears about
    /// a change of `path` (xenstored `watch_permitted`).
    fn watch_perms(&self, path: &str, own: Perms) -> Vec<Perms> {
        let mut v = vec![own];
        if path != "/" {
            if let Some(p) = self.tree.get(parent(path)) {
                v.push(p.perms.clone());
            }
        }
        v
    }

    fn privileged(&self) -> bool {
        self.domid == 0
    }

    /// The error for a missing node: `ENOENT` only if the nearest existing ancestor grants
    /// the caller the access it asked for, else `EACCES`, so absence does not leak
    /// (xenstored `errno_from_parents`).
    fn missing(&mut self, path: &str, need: Access) -> XsError {
        let anc = self.tree.nearest_existing(path).to_owned();
        self.observe(&anc);
        match self.tree.get(&anc) {
            Some(n) if !grants(n.perms.access_for(self.domid), need) => XsError::EACCES,
            _ => XsError::ENOENT,
        }
    }

    /// The node at `path` if the caller has `need` on it.
    pub fn node(&mut self, path: &str, need: Access) -> Result<&Node, XsError> {
        self.observe(path);
        if self.tree.get(path).is_none() {
            return Err(self.missing(path, need));
        }
        let domid = self.domid;
        let n = self.tree.get(path).ok_or(XsError::ENOENT)?;
        if grants(n.perms.access_for(domid), need) {
            Ok(n)
        } else {
            Err(XsError::EACCES)
        }
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.node(path, Access::Read)?.value.clone())
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.node(path, Access::Read)?;
        Ok(self
            .tree
            .children(path)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    pub fn gen_of(&self, path: &str) -> u64 {
        self.tree.get(path).map_or(0, |n| n.gen)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<Perms, XsError> {
        Ok(self.node(path, Access::Read)?.perms.clone())
    }

    /// Create `path` (and missing ancestors) or overwrite its value. `mkdir` leaves an
    /// existing node alone.
    pub fn write(&mut self, path: &str, value: &[u8], mkdir: bool) -> Result<(), XsError> {
        // xenstored quota: node size (quota_max_entry_size, 2048 by default).
        if !self.privileged() && value.len() > self.quotas.node_size {
            return Err(XsError::ENOSPC);
        }
        self.observe(path);
        if self.tree.get(path).is_some() {
            let perms = self.node(path, Access::Write)?.perms.clone();
            if mkdir {
                return Ok(());
            }
            let g = self.next_gen();
            if let Some(n) = self.tree.get_mut(path) {
                n.value = value.to_vec();
                n.gen = g;
            }
            self.changed(path);
            let perms = self.watch_perms(path, perms);
            self.fires.push(Fire {
                path: path.to_owned(),
                exact: false,
                perms,
            });
            return Ok(());
        }
        let anc = self.tree.nearest_existing(path).to_owned();
        self.observe(&anc);
        let anc_perms = self.tree.get(&anc).ok_or(XsError::ENOENT)?.perms.clone();
        // Creating needs write access to the nearest existing ancestor.
        if !anc_perms.access_for(self.domid).can_write() {
            return Err(XsError::EACCES);
        }
        // The missing components, top-down.
        let mut missing = Vec::new();
        let mut p = path;
        while p != anc {
            missing.push(p.to_owned());
            p = parent(p);
        }
        missing.reverse();
        // xenstored quota: nodes per domain (quota_nb_entry_per_domain), counted by owner.
        if !self.privileged()
            && self.tree.count_owned(self.domid) + missing.len() > self.quotas.entries_per_domain
        {
            return Err(XsError::ENOSPC);
        }
        // New nodes inherit the parent's permissions; an unprivileged creator owns them.
        let mut perms = anc_perms;
        if !self.privileged() {
            perms = perms.with_owner(self.domid);
        }
        let g = self.next_gen();
        if let Some(n) = self.tree.get_mut(&anc) {
            n.gen = g;
        }
        self.changed(&anc);
        let last = missing.len() - 1;
        for (i, m) in missing.into_iter().enumerate() {
            self.observe(&m);
            let g = self.next_gen();
            let v = if i == last {
                value.to_vec()
            } else {
                Vec::new()
            };
            self.changed(&m);
            self.tree.insert(
                m,
                Node {
                    value: v,
                    perms: perms.clone(),
                    gen: g,
                },
            );
        }
        let perms = self.watch_perms(path, perms);
        self.fires.push(Fire {
            path: path.to_owned(),
            exact: false,
            perms,
        });
        Ok(())
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        if path == "/" {
            return Err(XsError::EINVAL);
        }
        self.observe(path);
        if self.tree.get(path).is_none() {
            // xenstored: removing a missing node is fine if its parent exists.
            let e = self.missing(path, Access::Write);
            let par = parent(path).to_owned();
            self.observe(&par);
            if e == XsError::ENOENT && self.tree.get(&par).is_some() {
                return Ok(());
            }
            return Err(e);
        }
        let perms = self.node(path, Access::Write)?.perms.clone();
        let par = parent(path).to_owned();
        self.observe(&par);
        // xenstored removes bottom-up and fires each removed descendant's exact watches
        // (with that node's permissions), then the watches on the subtree root and above.
        let root_perms = self.watch_perms(path, perms);
        for p in self.tree.subtree(path).into_iter().rev() {
            self.observe(&p);
            self.changed(&p);
            let Some(n) = self.tree.get(&p) else {
                continue;
            };
            let fire_perms = self.watch_perms(&p, n.perms.clone());
            // Children go first, so the parent is still there for its permissions.
            self.tree.remove_one(&p);
            if p != path {
                self.fires.push(Fire {
                    path: p,
                    exact: true,
                    perms: fire_perms,
                });
            }
        }
        let g = self.next_gen();
        if let Some(n) = self.tree.get_mut(&par) {
            n.gen = g;
        }
        self.changed(&par);
        self.fires.push(Fire {
            path: path.to_owned(),
            exact: false,
            perms: root_perms,
        });
        Ok(())
    }

    pub fn set_perms(&mut self, path: &str, perms: Perms) -> Result<(), XsError> {
        // xenstored quota: permissions per node (quota_nb_perms_per_node).
        if !self.privileged() && perms.entries().len() > self.quotas.perms_per_node {
            return Err(XsError::ENOSPC);
        }
        let old = self.node(path, Access::Write)?.perms.clone();
        if !self.privileged() {
            // xenstored: only the owner (or a privileged domain) may set permissions, and
            // an unprivileged owner may not give the node away.
            if self.domid != old.owner_id() {
                return Err(XsError::EACCES);
            }
            if perms.owner_id() != old.owner_id() {
                return Err(XsError::EPERM);
            }
        }
        let g = self.next_gen();
        if let Some(n) = self.tree.get_mut(path) {
            n.perms = perms.clone();
            n.gen = g;
        }
        self.changed(path);
        // Watchers that could read the node before or after the change hear about it.
        self.fires.push(Fire {
            path: path.to_owned(),
            exact: false,
            perms: {
                let mut v = self.watch_perms(path, old);
                v.push(perms);
                v
            },
        });
        Ok(())
    }
}

/// Whether access `a` includes everything in `need`.
fn grants(a: Access, need: Access) -> bool {
    match need {
        Access::None => true,
        Access::Read => a.can_read(),
        Access::Write => a.can_write(),
        Access::Both => a.can_read() && a.can_write(),
    }
}

/// Whether a watch on `watch` hears `fire` (xenstore.txt: a watch fires for changes of its
/// path and of everything below it; special `@` names only match exactly).
pub(crate) fn watch_match(watch: &str, fire: &Fire) -> bool {
    if fire.exact || watch.starts_with('@') || fire.path.starts_with('@') {
        watch == fire.path
    } else {
        is_at_or_below(&fire.path, watch)
    }
}
