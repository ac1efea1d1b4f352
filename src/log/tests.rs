//! Tests of the whole log (tempdirs, no Postgres).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::format::txn_record_len;
use super::*;

fn ident() -> LogIdentity {
    LogIdentity {
        system_id: "7400000000000000001".into(),
        timeline: 1,
        database: "app".into(),
        slot: "pgsat".into(),
    }
}

fn opts(window: u64, cache: u64, segment: Option<u64>) -> LogOptions {
    LogOptions {
        window_max_bytes: window,
        window_max_age: None,
        cache_max_bytes: cache,
        segment_max_bytes: segment,
    }
}

fn txn(lsn: u64, rels: &[u32], n: usize) -> TxnEntry {
    let mut frames = format!("txn-{lsn}-").into_bytes();
    frames.resize(n.max(frames.len()), b'x');
    TxnEntry {
        commit_lsn: lsn,
        xid: lsn as u32,
        commit_time: now_micros(),
        relation_ids: rels.to_vec(),
        changes: 1,
        frames: Bytes::from(frames),
    }
}

fn rel(id: u32, version: u32) -> RelationEntry {
    RelationEntry {
        relation_id: id,
        frame: Bytes::from(format!("rel-{id}-v{version}")),
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

async fn next(c: &mut Cursor) -> Result<Entry, LogError> {
    tokio::time::timeout(DEADLINE, c.next())
        .await
        .expect("cursor did not yield before the deadline")
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads until the cursor has yielded the txn `until` (inclusive).
async fn read_until(c: &mut Cursor, until: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    if c.lsn() >= until {
        return out;
    }
    loop {
        let e = next(c).await.expect("cursor error");
        let done = matches!(&e, Entry::Txn(t) if t.commit_lsn >= until);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn disk_bytes(dir: &Path) -> u64 {
    seg_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Log with relation 1 v1, txns 10,20,..,(n*10), relation 1 v2 + relation 2
/// before txn DDL_AT, every txn using the relations then in force.
const DDL_AT: u64 = 1000;

fn fill(log: &Log, n: u64, size: usize) {
    log.append_relation(rel(1, 1)).unwrap();
    for i in 1..=n {
        let lsn = i * 10;
        if lsn == DDL_AT {
            log.append_relation(rel(1, 2)).unwrap();
            log.append_relation(rel(2, 1)).unwrap();
        }
        let rels: &[u32] = if lsn >= DDL_AT { &[1, 2] } else { &[1] };
        assert!(log.append_txn(txn(lsn, rels, size)).unwrap());
    }
}

/// Checks what a cursor from `after` yields up to `end`: relations in force
/// first, then exactly the txns after it, each preceded by the definitions it uses.
fn check_stream(after: u64, end: u64, entries: &[Entry]) {
    let mut known: BTreeMap<u32, Bytes> = BTreeMap::new();
    let mut expect = (after / 10 + 1) * 10;
    for e in entries {
        match e {
            Entry::Relation(r) => {
                known.insert(r.relation_id, r.frame.clone());
            }
            Entry::Txn(t) => {
                assert_eq!(t.commit_lsn, expect, "after {after}: wrong txn order");
                assert!(t.frames.starts_with(format!("txn-{expect}-").as_bytes()));
                let v = if t.commit_lsn >= DDL_AT { 2 } else { 1 };
                assert_eq!(
                    known.get(&1).map(|b| b.as_ref()),
                    Some(format!("rel-1-v{v}").as_bytes()),
                    "after {after}: txn {} sees the wrong definition of relation 1",
                    t.commit_lsn
                );
                for id in &t.relation_ids {
                    assert!(known.contains_key(id), "relation {id} unknown before use");
                }
                expect += 10;
            }
        }
    }
    assert_eq!(expect, end + 10, "after {after}: txns missing");
}

async fn check_all_positions(log: &Log, n: u64, step: usize) {
    let end = n * 10;
    for after in (0..=end).step_by(step) {
        let mut c = log.cursor(after).unwrap();
        let entries = read_until(&mut c, end).await;
        check_stream(after, end, &entries);
        assert_eq!(c.lsn(), end);
        assert_eq!(c.offset(), log.head_offset(), "after {after}: offset");
    }
}

#[tokio::test]
async fn append_and_read_back_from_every_position_disk_and_cache() {
    for cache in [1 << 10, 64 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), &ident(), opts(1 << 30, cache, Some(4096))).unwrap();
        assert!(log.is_new());
        fill(&log, 200, 300);
        assert_eq!(log.end_lsn(), 2000);
        log.flush().await.unwrap();
        assert_eq!(log.durable_lsn(), 2000);
        assert!(seg_files(dir.path()).len() > 10, "several segments");
        let st = log.stats();
        assert_eq!(st.window_txns, 200);
        if cache < 4096 {
            assert!(st.cache_bytes <= cache, "{st:?}");
        }
        // every 10: every txn position; 5: positions between txns
        check_all_positions(&log, 200, 5).await;
        log.close();
    }
}

#[tokio::test]
async fn reopen_after_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 10, Some(4096))).unwrap();
    fill(&log, 150, 200);
    let head = log.head_offset();
    log.close();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 10, Some(4096))).unwrap();
    assert!(!log.is_new());
    assert_eq!(log.end_lsn(), 1500);
    assert_eq!(log.durable_lsn(), 1500);
    assert_eq!(log.head_offset(), head);
    assert!(
        !log.append_txn(txn(1500, &[1], 10)).unwrap(),
        "dedupe survives reopen"
    );
    check_all_positions(&log, 150, 10).await;
    // Appending after reopen continues the same log; relations in force are kept.
    assert!(log.append_txn(txn(1510, &[1, 2], 100)).unwrap());
    let mut c = log.cursor(1500).unwrap();
    let e = read_until(&mut c, 1510).await;
    check_stream(1500, 1510, &e);
    assert_eq!(e.len(), 3, "two relations then the txn: {e:?}");
}

#[tokio::test]
async fn torn_tail_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
    fill(&log, 5, 20);
    log.close();
    let files = seg_files(dir.path());
    let last = files.last().unwrap().clone();
    let full = std::fs::read(&last).unwrap();
    let rec = txn_record_len(&txn(50, &[1], 20)) as usize;
    let last_start = full.len() - rec;
    for cut in last_start..full.len() {
        std::fs::write(&last, &full[..cut]).unwrap();
        let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
        assert_eq!(log.end_lsn(), 40, "cut at {cut}");
        assert_eq!(std::fs::metadata(&last).unwrap().len() as usize, last_start);
        let mut c = log.cursor(0).unwrap();
        check_stream(0, 40, &read_until(&mut c, 40).await);
        log.close();
    }
    // Garbage after the last whole record is cut as well.
    let mut garbage = full.clone();
    garbage.extend_from_slice(&[0xA5; 100]);
    std::fs::write(&last, &garbage).unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
    assert_eq!(log.end_lsn(), 50);
    assert_eq!(std::fs::metadata(&last).unwrap().len() as usize, full.len());
}

#[tokio::test]
async fn corruption_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, Some(4096))).unwrap();
    fill(&log, 100, 200);
    log.close();
    let files = seg_files(dir.path());
    assert!(files.len() > 3);
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(victim, &bytes).unwrap();
    match Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, Some(4096))) {
        Err(LogError::Corrupt { segment, .. }) => assert_eq!(&segment, victim),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("corrupt log opened"),
    }
}

#[tokio::test]
async fn corruption_read_by_a_cursor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 10, Some(4096))).unwrap();
    fill(&log, 100, 200);
    log.flush().await.unwrap();
    let files = seg_files(dir.path());
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 50;
    bytes[at] ^= 0xFF;
    std::fs::write(victim, &bytes).unwrap();
    let mut c = log.cursor(0).unwrap();
    let err = loop {
        match next(&mut c).await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn lock_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    match Log::open(dir.path(), &ident(), LogOptions::default()) {
        Err(e @ LogError::Locked { .. }) => {
            assert!(e.to_string().contains("another pgsat process"))
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("second open of a locked log succeeded"),
    }
    log.append_txn(txn(10, &[], 10)).unwrap();
    log.close();
    let mut other = ident();
    other.system_id = "7999".into();
    match Log::open(dir.path(), &other, LogOptions::default()) {
        Err(e @ LogError::ForeignLog { .. }) => {
            let m = e.to_string();
            assert!(m.contains("system identifier") && m.contains("7999"), "{m}");
            assert!(m.contains(&dir.path().display().to_string()), "{m}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("foreign log opened"),
    }
    let mut other = ident();
    other.slot = "other".into();
    assert!(matches!(
        Log::open(dir.path(), &other, LogOptions::default()),
        Err(LogError::ForeignLog { .. })
    ));
    // A timeline change (promotion) is accepted.
    let mut promoted = ident();
    promoted.timeline = 2;
    let log = Log::open(dir.path(), &promoted, LogOptions::default()).unwrap();
    assert_eq!(log.end_lsn(), 10);
}

#[tokio::test]
async fn retention_with_a_64k_window() {
    let dir = tempfile::tempdir().unwrap();
    let window = 64 << 10;
    let o = opts(window, 16 << 10, None);
    let seg_max = o.segment_max();
    assert_eq!(seg_max, 8 << 10);
    let log = Log::open(dir.path(), &ident(), o.clone()).unwrap();
    log.append_relation(rel(1, 1)).unwrap();
    let mut early = log.cursor(0).unwrap();
    let mut sizes = std::collections::VecDeque::new();
    let mut got = Vec::new();
    for i in 1..=1000u64 {
        let t = txn(i * 10, &[1], 500 + (i as usize * 37) % 700);
        sizes.push_back((t.commit_lsn, t.size()));
        assert!(log.append_txn(t).unwrap());
        let st = log.stats();
        assert!(st.window_bytes <= window, "{st:?}");
        // Exactness: the window holds as many newest txns as fit.
        let mut sum = 0;
        let mut fit = 0;
        for (_, s) in sizes.iter().rev() {
            if sum + s > window {
                break;
            }
            sum += s;
            fit += 1;
        }
        assert_eq!(st.window_txns, fit, "window not exact at txn {i}");
        assert_eq!(st.window_bytes, sum);
        if i <= 20 {
            if let Ok(Entry::Txn(t)) = next(&mut early).await {
                got.push(t.commit_lsn);
            }
        }
    }
    log.flush().await.unwrap();
    let st = log.stats();
    let header = 200;
    let disk = disk_bytes(dir.path());
    assert!(
        disk <= window + seg_max + header * st.segments,
        "disk {disk} > window + one segment ({st:?})"
    );
    // The early cursor fell behind: BehindWindow, never a silent skip.
    let err = loop {
        match next(&mut early).await {
            Ok(Entry::Txn(t)) => got.push(t.commit_lsn),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::BehindWindow { .. }), "{err}");
    for w in got.windows(2) {
        assert_eq!(w[1], w[0] + 10);
    }
    assert!(matches!(log.cursor(10), Err(LogError::BehindWindow { .. })));
    // A cursor at the window's start gets every retained txn.
    let start = log.start_lsn();
    let mut c = log.cursor(start).unwrap();
    let e = read_until(&mut c, 10_000).await;
    let txns = e.iter().filter(|e| matches!(e, Entry::Txn(_))).count() as u64;
    assert_eq!(txns, st.window_txns);
    assert!(
        matches!(e[0], Entry::Relation(_)),
        "relation of a dropped segment first"
    );
    // Same window after a reopen.
    log.close();
    let log = Log::open(dir.path(), &ident(), o).unwrap();
    assert_eq!(log.start_lsn(), start);
    assert_eq!(log.stats().window_bytes, st.window_bytes);
}

#[tokio::test]
async fn window_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(1 << 30, 1 << 20, None);
    o.window_max_age = Some(Duration::from_secs(3600));
    let log = Log::open(dir.path(), &ident(), o).unwrap();
    let hour = 3_600_000_000i64;
    for i in 1..=5u64 {
        let mut t = txn(i * 10, &[], 50);
        t.commit_time = now_micros() - 2 * hour;
        log.append_txn(t).unwrap();
    }
    assert_eq!(
        log.start_lsn(),
        50,
        "old txns are out of the window at once"
    );
    log.append_txn(txn(60, &[], 50)).unwrap();
    assert_eq!(log.start_lsn(), 50);
    assert_eq!(log.stats().window_txns, 1);
    assert!(matches!(log.cursor(40), Err(LogError::BehindWindow { .. })));
}

#[tokio::test]
async fn mark_gap_and_set_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
    assert!(log.is_new());
    log.set_start(5).unwrap();
    assert_eq!((log.start_lsn(), log.end_lsn()), (5, 5));
    assert!(matches!(log.cursor(4), Err(LogError::BehindWindow { .. })));
    for i in 1..=10 {
        log.append_txn(txn(i * 10, &[], 50)).unwrap();
    }
    let mut waiting = log.cursor(100).unwrap();
    let mut behind = log.cursor(50).unwrap();
    read_until(&mut behind, 100).await;
    log.mark_gap(1000).unwrap();
    assert_eq!((log.start_lsn(), log.end_lsn()), (1000, 1000));
    assert!(log.durable_lsn() >= 1000);
    assert!(matches!(
        log.cursor(500),
        Err(LogError::BehindWindow { .. })
    ));
    assert!(!log.append_txn(txn(999, &[], 50)).unwrap());
    let mut c = log.cursor(1000).unwrap();
    log.append_txn(txn(1010, &[], 50)).unwrap();
    match next(&mut c).await.unwrap() {
        Entry::Txn(t) => assert_eq!(t.commit_lsn, 1010),
        e => panic!("unexpected {e:?}"),
    }
    // Cursors before the gap are never carried across it.
    assert!(matches!(
        next(&mut waiting).await,
        Err(LogError::BehindWindow { .. })
    ));
    assert!(matches!(
        next(&mut behind).await,
        Err(LogError::BehindWindow { .. })
    ));
    log.mark_gap(500).unwrap(); // no-op: not ahead
    log.close();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
    assert_eq!(log.start_lsn(), 1000);
    assert_eq!(log.end_lsn(), 1010);
}

#[tokio::test]
async fn cache_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cache = 256 << 10;
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, cache, None)).unwrap();
    let mut c = log.cursor(0).unwrap();
    for i in 1..=400u64 {
        log.wait_for_room().await;
        log.append_txn(txn(i * 10, &[], 20_000)).unwrap();
        let st = log.stats();
        assert!(
            st.cache_bytes <= cache + UNSYNCED_MAX_BYTES + 21_000,
            "{st:?}"
        );
    }
    log.flush().await.unwrap();
    let st = log.stats();
    assert!(st.cache_bytes <= cache, "{st:?}");
    assert!(st.cache_txns < 15);
    // The cursor that stayed at 0 reads the 8 MB back from disk.
    let e = read_until(&mut c, 4000).await;
    assert_eq!(e.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cursors_wait_and_are_woken() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, None)).unwrap();
    log.append_txn(txn(10, &[], 10)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = log.cursor(10).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut lsns = Vec::new();
            while lsns.len() < 100 {
                if let Entry::Txn(t) = next(&mut c).await.unwrap() {
                    lsns.push(t.commit_lsn);
                }
            }
            lsns
        }));
    }
    let writer = log.clone();
    tokio::spawn(async move {
        for i in 2..=101u64 {
            writer.append_txn(txn(i * 10, &[], 100)).unwrap();
            tokio::task::yield_now().await;
        }
    });
    let want: Vec<u64> = (2..=101).map(|i| i * 10).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
}

#[tokio::test]
async fn dedupe_on_commit_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    assert!(log.append_txn(txn(10, &[], 10)).unwrap());
    assert!(log.append_txn(txn(20, &[], 10)).unwrap());
    assert!(!log.append_txn(txn(15, &[], 10)).unwrap());
    assert!(!log.append_txn(txn(20, &[], 10)).unwrap());
    assert!(log.append_txn(txn(30, &[], 10)).unwrap());
    assert_eq!(log.stats().window_txns, 3);
    // Same relation definition twice is one entry.
    log.append_relation(rel(1, 1)).unwrap();
    log.append_relation(rel(1, 1)).unwrap();
    let mut c = log.cursor(30).unwrap();
    log.append_txn(txn(40, &[1], 10)).unwrap();
    let e = read_until(&mut c, 40).await;
    assert_eq!(e.len(), 2);
}

#[tokio::test]
async fn durable_only_after_fsync_and_crash_before_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    log.append_txn(txn(10, &[], 100)).unwrap();
    log.flush().await.unwrap();
    assert_eq!(log.durable_lsn(), 10);
    log.faults().hold_fsync.store(true, Ordering::SeqCst);
    let written = log.faults().written.load(Ordering::SeqCst);
    log.append_txn(txn(20, &[], 100)).unwrap();
    wait_until("the batch written", || {
        log.faults().written.load(Ordering::SeqCst) > written
    })
    .await;
    assert_eq!(log.end_lsn(), 20);
    assert_eq!(log.durable_lsn(), 10, "durable before fsync");
    // Readers see it at once (from the cache).
    let mut c = log.cursor(10).unwrap();
    assert!(matches!(next(&mut c).await.unwrap(), Entry::Txn(t) if t.commit_lsn == 20));
    let mut w = log.watch_durable();
    log.faults().hold_fsync.store(false, Ordering::SeqCst);
    tokio::time::timeout(DEADLINE, w.wait_for(|v| *v == 20))
        .await
        .unwrap()
        .unwrap();

    // Crash between write and fsync: the writer dies; what reached the file is
    // recovered whole on reopen, nothing after it.
    log.faults().hold_fsync.store(true, Ordering::SeqCst);
    log.faults().crash.store(true, Ordering::SeqCst);
    log.append_txn(txn(30, &[], 100)).unwrap();
    drop(c);
    wait_until("writer gone", || {
        log.faults().written.load(Ordering::SeqCst) > written + 1
    })
    .await;
    assert_eq!(log.durable_lsn(), 20);
    drop(log);
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    assert_eq!(log.end_lsn(), 30, "written (page cache) record recovered");
    let mut c = log.cursor(0).unwrap();
    let e = read_until(&mut c, 30).await;
    assert_eq!(e.len(), 3);
}

#[tokio::test]
async fn enospc_marks_unhealthy_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    log.append_txn(txn(10, &[], 100)).unwrap();
    log.flush().await.unwrap();
    assert!(log.healthy());
    log.faults().fail_io.store(true, Ordering::SeqCst);
    for i in 2..=20 {
        log.append_txn(txn(i * 10, &[], 1000)).unwrap();
    }
    wait_until("unhealthy", || !log.healthy()).await;
    assert!(!log.stats().healthy);
    assert_eq!(log.durable_lsn(), 10);
    // Readers are still served from memory.
    let mut c = log.cursor(10).unwrap();
    assert_eq!(read_until(&mut c, 200).await.len(), 19);
    log.faults().fail_io.store(false, Ordering::SeqCst);
    let mut w = log.watch_durable();
    tokio::time::timeout(DEADLINE, w.wait_for(|v| *v == 200))
        .await
        .unwrap()
        .unwrap();
    assert!(log.healthy());
    log.close();
    let log = Log::open(dir.path(), &ident(), LogOptions::default()).unwrap();
    let mut c = log.cursor(0).unwrap();
    let e = read_until(&mut c, 200).await;
    let lsns: Vec<u64> = e
        .iter()
        .filter_map(|e| match e {
            Entry::Txn(t) => Some(t.commit_lsn),
            _ => None,
        })
        .collect();
    assert_eq!(lsns, (1..=20).map(|i| i * 10).collect::<Vec<_>>());
}

/// Throughput sanity: 10k txns × ~20 KiB (1M rows of ~200 bytes) through
/// append + group commit. Prints the rate; run with `--ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn throughput_10k_txns_of_20k() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 64 << 20, None)).unwrap();
    let frames = Bytes::from(vec![b'x'; 20_000]);
    let start = Instant::now();
    for i in 1..=10_000u64 {
        log.wait_for_room().await;
        log.append_txn(TxnEntry {
            commit_lsn: i * 100,
            xid: i as u32,
            commit_time: 0,
            relation_ids: vec![1],
            changes: 100,
            frames: frames.clone(),
        })
        .unwrap();
    }
    log.flush().await.unwrap();
    let el = start.elapsed();
    let mb = 10_000.0 * 20_000.0 / 1e6;
    println!(
        "log throughput: 10k txns / 1M rows / {mb:.0} MB durable in {el:?}: {:.0} rows/s, {:.0} MB/s",
        1e6 / el.as_secs_f64(),
        mb / el.as_secs_f64()
    );
}

#[tokio::test]
async fn passed_is_monotonic_and_lsn_before_time_finds_older_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), &ident(), opts(1 << 30, 1 << 20, Some(4096))).unwrap();
    log.set_start(100).unwrap();
    let mut w = log.watch_passed();
    assert_eq!(log.passed_lsn(), 0);
    log.set_passed(500);
    assert!(w.has_changed().unwrap());
    w.borrow_and_update();
    log.set_passed(400);
    assert_eq!(log.passed_lsn(), 500);
    assert!(!w.has_changed().unwrap());
    let now = now_micros();
    for (i, lsn) in [200u64, 300, 400].iter().enumerate() {
        let mut t = txn(*lsn, &[], 10);
        t.commit_time = now - 30_000_000 + i as i64 * 10_000_000; // -30 s, -20 s, -10 s
        assert!(log.append_txn(t).unwrap());
    }
    assert_eq!(log.lsn_before_time(now - 40_000_000), 100); // before all: start
    assert_eq!(log.lsn_before_time(now - 25_000_000), 200);
    assert_eq!(log.lsn_before_time(now - 15_000_000), 300);
    assert_eq!(log.lsn_before_time(now), 400);
    log.close();
}
