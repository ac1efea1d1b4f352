//! The direct lane: the replication task writes a new transaction straight
//! to the sockets of a few sessions that wait, caught up, at the log's end —
//! saving the wake-up of each session's task and its turn on the runtime
//! (7–11 µs of a commit → client latency of ~40 µs over the network floor).
//!
//! A session takes a free seat when it streams everything (no read rules,
//! no table subscription) over plain TCP and waits at the log's end; it
//! leaves it with its stream, or when its client stops reading (so that a
//! stuck client does not keep a seat from live ones). Before
//! each wait it **arms** its seat when it has nothing queued, nothing
//! buffered in its cursor and no snapshot or pause; on every wake-up it
//! first **disarms** it, taking back what the lane did. While armed, the
//! session writes nothing to its socket; while disarmed, the lane writes
//! nothing to it: the seat's mutex orders the two writers, so frames never
//! interleave.
//!
//! Invariants:
//! - the lane writes a transaction only if it is the entry at the log index
//!   the session's cursor is to read next (no Relation entry, no older
//!   transaction between), every relation it uses was sent to the session
//!   in its current definition, and the session's token has not expired;
//! - a transaction goes out whole or its unwritten tail (`rest`) is handed
//!   to the session, which queues it before anything else; the lane then
//!   stops writing to that seat until the session arms it again;
//! - the session skips the transactions its cursor yields with a commit LSN
//!   at or below the last one the lane wrote (`written_lsn`): each once;
//! - nothing is written to a session whose user's row was deleted: the
//!   registry sets the session's `revoked` flag before the replication
//!   task delivers the next transaction, and the lane checks it before
//!   each write (a seat taken after the deletion too);
//! - at most [`SEATS`] seats: the replication task spends a bounded time on
//!   them per transaction, and the others are served by their own tasks.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::log::TxnEntry;
use crate::metrics::Metrics;

/// Sessions served by the lane at once.
pub const SEATS: usize = 4;

pub struct DirectLane {
    seats: Mutex<Vec<Arc<Sink>>>,
    /// `seats.len()`, read without the lock by sessions looking for a seat.
    taken: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// A session's place in the lane; leaves it when dropped.
pub struct Seat {
    lane: Arc<DirectLane>,
    sink: Arc<Sink>,
}

struct Sink {
    /// The session's registration flag: set once its user's row is deleted.
    revoked: Arc<AtomicBool>,
    /// A duplicate of the session's socket descriptor (non-blocking).
    socket: TcpStream,
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    armed: Option<Armed>,
    /// Commit LSN of the last transaction the lane wrote (or left in
    /// `rest`) since the session last took over.
    written_lsn: u64,
    /// The tail of the last transaction that the socket did not take.
    rest: Option<Bytes>,
}

/// What the session allows the lane to write.
pub struct Armed {
    /// Log index of the entry the session's cursor reads next.
    pub next_index: u64,
    /// When the session's token expires (with the leeway).
    pub until: Option<Instant>,
    /// Relations whose definition in force the session has sent.
    pub relations: Arc<HashSet<u32>>,
}

/// What the lane did while the seat was armed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Commit LSN of the last transaction written (0: none).
    pub written_lsn: u64,
    /// Unwritten tail of that transaction: goes out before anything else.
    pub rest: Option<Bytes>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectLane {
    pub fn new(metrics: Arc<Metrics>) -> Arc<DirectLane> {
        Arc::new(DirectLane {
            seats: Mutex::new(Vec::with_capacity(SEATS)),
            taken: AtomicUsize::new(0),
            metrics,
        })
    }

    /// A seat for a session writing to `socket`, whose registration's
    /// `revoked` flag is given, if one is free.
    pub fn join(self: &Arc<Self>, revoked: Arc<AtomicBool>, socket: TcpStream) -> Option<Seat> {
        let mut seats = lock(&self.seats);
        if seats.len() >= SEATS {
            return None;
        }
        let sink = Arc::new(Sink {
            revoked,
            socket,
            state: Mutex::new(SinkState::default()),
        });
        seats.push(sink.clone());
        self.taken.store(seats.len(), Ordering::Relaxed);
        Some(Seat {
            lane: self.clone(),
            sink,
        })
    }

    /// Called by the replication task right after appending `txn` at log
    /// index `index`: writes it to every armed seat waiting for exactly that
    /// entry. Never waits: a seat whose session is busy with it is skipped
    /// (the session serves the transaction itself).
    pub fn deliver(&self, index: u64, txn: &TxnEntry) {
        let seats = lock(&self.seats);
        if seats.is_empty() {
            return;
        }
        let mut frame_count = None;
        let mut now = None;
        for sink in seats.iter() {
            let Ok(mut st) = sink.state.try_lock() else {
                continue;
            };
            let Some(armed) = st.armed.as_mut() else {
                continue;
            };
            let expired = armed
                .until
                .is_some_and(|until| *now.get_or_insert_with(Instant::now) >= until);
            if armed.next_index != index
                || expired
                || sink.revoked.load(Ordering::SeqCst)
                || !txn
                    .relation_ids
                    .iter()
                    .all(|id| armed.relations.contains(id))
            {
                st.armed = None;
                continue;
            }
            // Errors (a closed peer, a full buffer) leave everything to the
            // session, whose own write meets them again.
            let wrote = (&sink.socket).write(&txn.frames).unwrap_or(0);
            if wrote == txn.frames.len() {
                armed.next_index = index + 1;
            } else {
                st.armed = None;
                st.rest = Some(txn.frames.slice(wrote..));
            }
            st.written_lsn = txn.commit_lsn;
            let frames = *frame_count.get_or_insert_with(|| txn.frame_count());
            self.metrics.count_sent(frames as u64, txn.frames.len());
            self.metrics.direct_transactions.inc();
        }
    }

    /// Whether a seat looks free (no lock: sessions ask on every turn of
    /// their loop; `join` decides).
    pub fn has_room(&self) -> bool {
        self.seats_taken() < SEATS
    }

    pub fn seats_taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

impl Seat {
    /// Lets the lane write to the session's socket (see the module's
    /// invariants for when a session may).
    pub fn arm(&self, armed: Armed) {
        if !self.sink.revoked.load(Ordering::SeqCst) {
            lock(&self.sink.state).armed = Some(armed);
        }
    }

    /// Stops the lane and returns what it did since the last `disarm`.
    pub fn disarm(&self) -> Taken {
        let mut st = lock(&self.sink.state);
        st.armed = None;
        Taken {
            written_lsn: std::mem::take(&mut st.written_lsn),
            rest: st.rest.take(),
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = lock(&self.lane.seats);
        seats.retain(|s| !Arc::ptr_eq(s, &self.sink));
        self.lane.taken.store(seats.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;
    use crate::protocol::frame::encode_frame;
    use crate::protocol::msg_type::MsgType;
    use crate::protocol::pb;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (server, client)
    }

    fn txn(lsn: u64, rels: Vec<u32>, body_len: usize) -> TxnEntry {
        let frames = encode_frame(
            MsgType::PingResp,
            &pb::PingResp {
                lsn: body_len as u64,
            },
        );
        let mut b = frames.to_vec();
        // Pad to the asked size with more frames of the same kind.
        while b.len() < body_len {
            b.extend_from_slice(&frames);
        }
        TxnEntry {
            commit_lsn: lsn,
            xid: 1,
            commit_time: 0,
            relation_ids: rels,
            changes: 1,
            frames: Bytes::from(b),
        }
    }

    fn armed(next_index: u64, rels: &[u32]) -> Armed {
        Armed {
            next_index,
            until: None,
            relations: Arc::new(rels.iter().copied().collect()),
        }
    }

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    fn lane() -> Arc<DirectLane> {
        DirectLane::new(Arc::new(Metrics::new().unwrap()))
    }

    #[test]
    fn writes_only_the_expected_entry_whole_and_reports_it() {
        let lane = lane();
        let (server, mut client) = pair();
        let seat = lane.join(flag(), server).unwrap();
        let t1 = txn(100, vec![1], 10);
        let t2 = txn(200, vec![1], 10);
        // Not armed: nothing written.
        lane.deliver(5, &t1);
        assert_eq!(seat.disarm(), Taken::default());
        seat.arm(armed(5, &[1]));
        lane.deliver(5, &t1);
        lane.deliver(6, &t2);
        // An entry at another index (a Relation came between) disarms.
        lane.deliver(8, &txn(300, vec![1], 10));
        lane.deliver(9, &txn(400, vec![1], 10));
        assert_eq!(
            seat.disarm(),
            Taken {
                written_lsn: 200,
                rest: None
            }
        );
        let mut got = vec![0u8; t1.frames.len() + t2.frames.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, [&t1.frames[..], &t2.frames[..]].concat());
        assert_eq!(lane.metrics.direct_transactions.get(), 2);
    }

    #[test]
    fn an_unsent_relation_an_expired_token_or_a_deleted_user_stop_the_lane() {
        let lane = lane();
        let (server, _client) = pair();
        let revoked = flag();
        let seat = lane.join(revoked.clone(), server).unwrap();
        seat.arm(armed(1, &[1]));
        lane.deliver(1, &txn(10, vec![1, 2], 10));
        assert_eq!(seat.disarm().written_lsn, 0, "relation 2 not sent");
        seat.arm(Armed {
            until: Some(Instant::now()),
            ..armed(1, &[1])
        });
        lane.deliver(1, &txn(10, vec![1], 10));
        assert_eq!(seat.disarm().written_lsn, 0, "token expired");
        seat.arm(armed(1, &[1]));
        lane.deliver(1, &txn(10, vec![1], 10));
        assert_eq!(seat.disarm().written_lsn, 10, "all well");
        // Deleted while armed: the next transaction is not written.
        seat.arm(armed(2, &[1]));
        revoked.store(true, Ordering::SeqCst);
        lane.deliver(2, &txn(20, vec![1], 10));
        assert_eq!(seat.disarm().written_lsn, 0, "deleted while armed");
        // And a seat never arms again.
        seat.arm(armed(2, &[1]));
        lane.deliver(2, &txn(20, vec![1], 10));
        assert_eq!(seat.disarm().written_lsn, 0, "deleted before arming");
    }

    #[test]
    fn a_full_socket_hands_the_tail_to_the_session_and_stops() {
        let lane = lane();
        let (server, mut client) = pair();
        let seat = lane.join(flag(), server).unwrap();
        // Far more than a socket buffers while the peer does not read.
        let big = txn(10, vec![], 64 << 20);
        seat.arm(armed(1, &[]));
        lane.deliver(1, &big);
        lane.deliver(2, &txn(20, vec![], 10));
        let taken = seat.disarm();
        assert_eq!(taken.written_lsn, 10, "the second was not written");
        let rest = taken.rest.expect("a tail");
        assert!(!rest.is_empty() && rest.len() < big.frames.len());
        let head = big.frames.len() - rest.len();
        assert_eq!(rest, big.frames.slice(head..));
        let mut got = vec![0u8; head];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, big.frames[..head]);
    }

    #[test]
    fn seats_are_bounded_and_freed_on_drop() {
        let lane = lane();
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..SEATS {
            let (s, c) = pair();
            held.push(lane.join(flag(), s).unwrap());
            clients.push(c);
        }
        let (s, _c) = pair();
        assert!(lane.join(flag(), s.try_clone().unwrap()).is_none());
        held.pop();
        assert_eq!(lane.seats_taken(), SEATS - 1);
        assert!(lane.join(flag(), s).is_some());
    }
}
