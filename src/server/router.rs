//! Routing filtered transactions to the sessions that read them, so that a
//! change costs about the sessions it goes to, not every session.
//!
//! A session with a stream filter (read rules or a `tables` subscription)
//! first reads the log through its own cursor. Once that cursor has yielded
//! everything in the log it *joins* the router: from then on it wakes only
//! when a transaction holds something it may read, and takes it, already
//! filtered, from its mailbox. The router is one task following the log:
//!
//! - sessions with the same view key (view_id + subscription) form a group:
//!   one filter evaluation per group, its `Bytes` shared by the members;
//! - per relation, an index from the (column, text) pairs the groups' rules
//!   compare to the groups (see [`Route`]): a transaction's candidate groups
//!   come from looking up its rows' values, plus the groups that read every
//!   row of a relation, plus every reader of a truncated relation;
//! - only candidates are filtered (exactly), and only non-empty results are
//!   delivered.
//!
//! Invariants: a member receives, in log order, every Relation entry and
//! every transaction after its join position that is readable to it, each
//! once (a member joined behind the router's position drops what it already
//! had, by commit LSN). A member whose mailbox passes [`MAILBOX_MAX_BYTES`]
//! is evicted: it gets everything up to the eviction position, then reads
//! through its own cursor again (where `CLIENT_MAX_LAG_BYTES` applies) and
//! may rejoin. The router never waits for a session.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::log::{Cursor, Entry, Log, LogError, RelationEntry, TxnEntry};
use crate::metrics::Metrics;
use crate::rules::filter::filter_routed;
use crate::rules::route::Route;
use crate::rules::{FilterCache, Filtered, RelFilter, Subscription, View};

/// Filtered bytes a member may have waiting before it is evicted to its
/// own cursor.
pub const MAILBOX_MAX_BYTES: usize = 1 << 20;

/// What a member takes from its mailbox.
#[derive(Debug)]
pub enum Routed {
    Relation(Arc<RelationEntry>),
    Txn {
        commit_lsn: u64,
        filtered: Arc<Filtered>,
    },
    /// No longer a member: everything readable up to and including commit
    /// LSN `after` was delivered before this; continue from a cursor.
    Evicted {
        after: u64,
    },
}

#[derive(Default)]
struct Inbox {
    items: VecDeque<Routed>,
    bytes: usize,
    evicted: Option<u64>,
}

#[derive(Default)]
pub struct Mailbox {
    inbox: Mutex<Inbox>,
    notify: Notify,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a relation definition (never bounded: they are few).
    fn push_relation(&self, rel: Arc<RelationEntry>) {
        self.lock().items.push_back(Routed::Relation(rel));
        self.notify.notify_one();
    }

    /// Queues a transaction of `bytes` unless that would pass the bound (a
    /// first item always fits); whether it was queued.
    fn offer(&self, item: Routed, bytes: usize) -> bool {
        let mut b = self.lock();
        if !b.items.is_empty() && b.bytes + bytes > MAILBOX_MAX_BYTES {
            return false;
        }
        b.items.push_back(item);
        b.bytes += bytes;
        drop(b);
        self.notify.notify_one();
        true
    }

    fn evict(&self, after: u64) {
        self.lock().evicted = Some(after);
        self.notify.notify_one();
    }

    /// The next item; waits. Cancel-safe: an item is only removed when
    /// returned.
    pub async fn next(&self) -> Routed {
        loop {
            {
                let mut b = self.lock();
                if let Some(item) = b.items.pop_front() {
                    if let Routed::Txn { filtered, .. } = &item {
                        b.bytes -= filtered.frames.as_ref().map_or(0, Bytes::len);
                    }
                    return item;
                }
                if let Some(after) = b.evicted.take() {
                    return Routed::Evicted { after };
                }
            }
            self.notify.notified().await;
        }
    }

    /// Filtered bytes waiting.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// A session's membership; leaving is dropping it.
pub struct Member {
    router: Arc<Router>,
    id: u64,
    pub mailbox: Arc<Mailbox>,
}

impl Member {
    /// The member's resumable position, given `taken`, the last commit it
    /// took from its mailbox (or its join position): past every transaction
    /// the router has routed when nothing waits in the mailbox (the router
    /// fills mailboxes under the lock under which it advances), else `taken`.
    pub fn position(&self, taken: u64) -> u64 {
        let routed = self.router.lock().lsn;
        let b = self.mailbox.lock();
        if b.items.is_empty() && b.evicted.is_none() {
            routed.max(taken)
        } else {
            taken
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.router.lock().leave(self.id) {
            self.router.metrics.routed_sessions.dec();
        }
    }
}

struct Group {
    key: Arc<str>,
    view: Arc<View>,
    sub: Subscription,
    rels: HashMap<u32, Arc<RelFilter>>,
    routes: HashMap<u32, Route>,
    members: Vec<(u64, Arc<Mailbox>)>,
}

/// One relation's routing index.
#[derive(Default)]
struct RelRoutes {
    /// Groups that may read any row.
    all: Vec<u64>,
    /// Column position → cell text → groups.
    by_value: HashMap<usize, HashMap<Box<[u8]>, Vec<u64>>>,
    /// Groups that read the relation at all (truncates go to them).
    readers: Vec<u64>,
}

struct State {
    started: bool,
    /// Log index of the next entry the router processes.
    next_index: u64,
    /// Commit LSN of the last transaction processed.
    lsn: u64,
    in_force: HashMap<u32, Arc<RelationEntry>>,
    groups: HashMap<u64, Group>,
    by_key: HashMap<Arc<str>, u64>,
    member_group: HashMap<u64, u64>,
    index: HashMap<u32, RelRoutes>,
    next_id: u64,
}

/// See the module documentation.
pub struct Router {
    log: Log,
    cache: Arc<FilterCache>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// `next_index` of the state, for a lock-free "not yet" on join.
    next_index: AtomicU64,
}

impl Router {
    pub fn new(log: Log, cache: Arc<FilterCache>, metrics: Arc<Metrics>) -> Arc<Router> {
        Arc::new(Router {
            log,
            cache,
            metrics,
            state: Mutex::new(State {
                started: false,
                next_index: 0,
                lsn: 0,
                in_force: HashMap::new(),
                groups: HashMap::new(),
                by_key: HashMap::new(),
                member_group: HashMap::new(),
                index: HashMap::new(),
                next_id: 1,
            }),
            next_index: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins a session whose cursor has yielded everything before log index
    /// `at` (last commit `lsn`), with view key `key`. `None`: the router is
    /// ahead of that position; keep reading the cursor and try again.
    pub fn join(
        self: &Arc<Self>,
        at: u64,
        lsn: u64,
        key: &Arc<str>,
        view: &Arc<View>,
        sub: &Subscription,
    ) -> Option<Member> {
        // Lock-free "not yet" (0 until started, so never refused then).
        if self.next_index.load(Ordering::Acquire) > at {
            return None;
        }
        let mut st = self.lock();
        if !st.started {
            self.start(&mut st, lsn);
        }
        if !st.started || st.next_index > at {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        let gid = match st.by_key.get(key) {
            Some(&g) => g,
            None => {
                let gid = st.next_id;
                st.next_id += 1;
                let mut g = Group {
                    key: key.clone(),
                    view: view.clone(),
                    sub: sub.clone(),
                    rels: HashMap::new(),
                    routes: HashMap::new(),
                    members: Vec::new(),
                };
                let defs: Vec<Arc<RelationEntry>> = st.in_force.values().cloned().collect();
                for rel in &defs {
                    g.set_relation(rel);
                }
                st.index_add(gid, &g.routes);
                st.by_key.insert(key.clone(), gid);
                st.groups.insert(gid, g);
                gid
            }
        };
        let mailbox = Arc::new(Mailbox::default());
        // The definitions in force at the router's position come first.
        for rel in st.in_force.values() {
            mailbox.push_relation(rel.clone());
        }
        if let Some(g) = st.groups.get_mut(&gid) {
            g.members.push((id, mailbox.clone()));
        }
        st.member_group.insert(id, gid);
        self.metrics.routed_sessions.inc();
        Some(Member {
            router: self.clone(),
            id,
            mailbox,
        })
    }

    /// Starts following the log after commit `lsn`.
    fn start(self: &Arc<Self>, st: &mut State, lsn: u64) {
        let cursor = match self.log.cursor(lsn) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "router: cannot open the log here; the session keeps its cursor");
                return;
            }
        };
        // Relations in force at `lsn` are yielded by the cursor first; its
        // index is where the entries after them start.
        st.started = true;
        st.lsn = lsn;
        st.next_index = cursor.next_index();
        self.next_index.store(st.next_index, Ordering::Release);
        let me = self.clone();
        tokio::spawn(async move { me.run(cursor).await });
    }

    async fn run(self: Arc<Self>, mut cursor: Cursor) {
        loop {
            // Entries in the cache are yielded without waiting: behind by
            // a burst, one poll would route all of it while the sessions
            // it fills (and the replication reader, when they share a
            // worker) wait. One unit of the task's budget per entry: it
            // yields after at most 128.
            tokio::task::coop::consume_budget().await;
            match cursor.next().await {
                Ok(entry) => {
                    let next = cursor.next_index();
                    let mut st = self.lock();
                    match entry {
                        Entry::Relation(rel) => st.on_relation(rel),
                        Entry::Txn(txn) => {
                            let n = st.on_txn(&self.cache, &txn);
                            self.evicted(n);
                        }
                    }
                    if next > st.next_index {
                        st.next_index = next;
                        self.next_index.store(next, Ordering::Release);
                    }
                }
                Err(LogError::BehindWindow { .. }) => {
                    // Cannot happen while the router keeps up with appends;
                    // members go back to their own cursors (which report
                    // BEHIND_WINDOW if they really are), the router restarts
                    // at the end.
                    let end = self.log.end_lsn();
                    let mut st = self.lock();
                    let n = st.evict_all();
                    self.evicted(n);
                    match self.log.cursor(end) {
                        Ok(c) => {
                            cursor = c;
                            st.lsn = end;
                            st.in_force.clear();
                            st.next_index = cursor.next_index();
                            self.next_index.store(st.next_index, Ordering::Release);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "router stopped");
                            st.started = false;
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !matches!(e, LogError::Closed) {
                        tracing::error!(error = %e, "router: log read failed; sessions continue from their own cursors");
                    }
                    let mut st = self.lock();
                    let n = st.evict_all();
                    self.evicted(n);
                    // Joins are refused from now on.
                    st.next_index = u64::MAX;
                    self.next_index.store(u64::MAX, Ordering::Release);
                    return;
                }
            }
        }
    }

    fn evicted(&self, n: usize) {
        if n > 0 {
            self.metrics.routed_sessions.sub(n as i64);
            self.metrics.router_evictions.inc_by(n as u64);
        }
    }
}

impl Group {
    /// Recomputes this group's filter and route for a (new) definition.
    fn set_relation(&mut self, rel: &RelationEntry) {
        match RelFilter::from_frame(&rel.frame, &self.view, &self.sub) {
            Some(f) => {
                self.routes.insert(rel.relation_id, Route::of(&f));
                self.rels.insert(rel.relation_id, Arc::new(f));
            }
            None => {
                self.routes.remove(&rel.relation_id);
                self.rels.remove(&rel.relation_id);
            }
        }
    }
}

impl State {
    fn index_add(&mut self, gid: u64, routes: &HashMap<u32, Route>) {
        for (&rel, route) in routes {
            self.index_add_rel(gid, rel, route);
        }
    }

    fn index_add_rel(&mut self, gid: u64, rel: u32, route: &Route) {
        if *route == Route::Nothing {
            return;
        }
        let r = self.index.entry(rel).or_default();
        match route {
            Route::Nothing => {}
            Route::All => r.all.push(gid),
            Route::Values(v) => {
                for (col, text) in v {
                    r.by_value
                        .entry(*col)
                        .or_default()
                        .entry(text.clone())
                        .or_default()
                        .push(gid);
                }
            }
        }
        r.readers.push(gid);
    }

    fn index_remove_rel(&mut self, gid: u64, rel: u32, route: &Route) {
        let Some(r) = self.index.get_mut(&rel) else {
            return;
        };
        match route {
            Route::Nothing => return,
            Route::All => r.all.retain(|&g| g != gid),
            Route::Values(v) => {
                for (col, text) in v {
                    if let Some(m) = r.by_value.get_mut(col) {
                        if let Some(gs) = m.get_mut(text) {
                            gs.retain(|&g| g != gid);
                            if gs.is_empty() {
                                m.remove(text);
                            }
                        }
                        if m.is_empty() {
                            r.by_value.remove(col);
                        }
                    }
                }
            }
        }
        r.readers.retain(|&g| g != gid);
        if r.readers.is_empty() {
            self.index.remove(&rel);
        }
    }

    /// Removes member `id`; whether it was one.
    fn leave(&mut self, id: u64) -> bool {
        let Some(gid) = self.member_group.remove(&id) else {
            return false;
        };
        let Some(g) = self.groups.get_mut(&gid) else {
            return true;
        };
        g.members.retain(|(m, _)| *m != id);
        if g.members.is_empty() {
            if let Some(g) = self.groups.remove(&gid) {
                for (rel, route) in &g.routes {
                    self.index_remove_rel(gid, *rel, route);
                }
                self.by_key.remove(&g.key);
            }
        }
        true
    }

    /// Evicts every member; how many.
    fn evict_all(&mut self) -> usize {
        let lsn = self.lsn;
        let n = self.member_group.len();
        for g in self.groups.values() {
            for (_, m) in &g.members {
                m.evict(lsn);
            }
        }
        self.groups.clear();
        self.by_key.clear();
        self.member_group.clear();
        self.index.clear();
        n
    }

    fn on_relation(&mut self, rel: Arc<RelationEntry>) {
        self.in_force.insert(rel.relation_id, rel.clone());
        let gids: Vec<u64> = self.groups.keys().copied().collect();
        for gid in gids {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let old = g.routes.get(&rel.relation_id).cloned();
            g.set_relation(&rel);
            let new = g.routes.get(&rel.relation_id).cloned();
            for (_, m) in &g.members {
                m.push_relation(rel.clone());
            }
            if old != new {
                if let Some(r) = old {
                    self.index_remove_rel(gid, rel.relation_id, &r);
                }
                if let Some(r) = new {
                    self.index_add_rel(gid, rel.relation_id, &r);
                }
            }
        }
    }

    /// Routes one transaction; returns how many members were evicted.
    fn on_txn(&mut self, cache: &FilterCache, txn: &Arc<TxnEntry>) -> usize {
        let after = self.lsn;
        self.lsn = txn.commit_lsn;
        if self.groups.is_empty() {
            return 0;
        }
        let Some(parsed) = cache.parsed(txn) else {
            return 0;
        };
        let mut cand: Vec<u64> = Vec::new();
        for rel in parsed.relations() {
            let Some(r) = self.index.get(&rel) else {
                continue;
            };
            cand.extend_from_slice(&r.all);
            for (&col, groups_by_text) in &r.by_value {
                let values = parsed.index(rel, col);
                if values.len() <= groups_by_text.len() {
                    for text in values.keys() {
                        if let Some(gs) = groups_by_text.get(text) {
                            cand.extend_from_slice(gs);
                        }
                    }
                } else {
                    for (text, gs) in groups_by_text {
                        if values.contains_key(text) {
                            cand.extend_from_slice(gs);
                        }
                    }
                }
            }
        }
        for rel in parsed.truncated() {
            if let Some(r) = self.index.get(&rel) {
                cand.extend_from_slice(&r.readers);
            }
        }
        cand.sort_unstable();
        cand.dedup();
        let mut evicted: Vec<u64> = Vec::new();
        for gid in cand {
            let Some(g) = self.groups.get(&gid) else {
                continue;
            };
            // Computed once for the group and shared; not cached (members
            // take it from their mailboxes).
            let f = filter_routed(txn, &parsed, &|id| g.rels.get(&id).cloned());
            let Some(len) = f.frames.as_ref().map(Bytes::len) else {
                continue;
            };
            let f = Arc::new(f);
            for (id, m) in &g.members {
                let item = Routed::Txn {
                    commit_lsn: txn.commit_lsn,
                    filtered: f.clone(),
                };
                if !m.offer(item, len) {
                    m.evict(after);
                    evicted.push(*id);
                }
            }
        }
        for id in &evicted {
            self.leave(*id);
        }
        evicted.len()
    }
}
