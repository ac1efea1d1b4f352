//! Commit → client latency: a client of pgsat against a direct `pgoutput`
//! reader on the same Postgres, in the same run.
//!
//! Commits single-row transactions at a steady rate (default 2,000 measured
//! after 100 warm-up per pass, at 200/s). Two readers, each on its own
//! thread with its own runtime — the direct one and one of pgsat's — stamp a
//! transaction with the local clock when they have it whole, and subtract
//! its commit timestamp (Postgres' clock: same machine, same clock):
//!
//! - direct: pgoutput from its own slot, stamped at the Commit message;
//! - pgsat protocol reader (default): the like of it on pgsat's protocol —
//!   frames off the TCP socket, the OpLog decoded, stamped at its Commit;
//! - pgsat Rust client (`READER=client`): `Event::Transaction` from
//!   `pgsat::client::Client`, which also builds typed rows and events;
//! - pgsat Rust client over TLS (`READER=tls`): pgsat started with
//!   `TLS_CERT_FILE`/`TLS_KEY_FILE` (a throwaway CA and certificate), the
//!   Rust client on `tls://localhost:…`: compare with `READER=client`;
//! - a bare relay (`READER=relay`), the floor for any proxy on this host:
//!   a separate single-threaded process that reads pgoutput from its own
//!   slot and writes each whole transaction's raw messages to one TCP
//!   client (no log, no protocol, no auth); the reader decodes pgoutput and
//!   stamps at Commit. pgsat is not started in this mode, so the machine
//!   runs the same number of processes as with pgsat.
//!
//! One pgsat reader per run: a third reader on two cores slows everyone.
//!
//! **Two passes, one per walsender order.** Postgres wakes its walsenders
//! one after the other in the order of its walsender array after a commit,
//! and on two cores the position decides a large part of the result: with
//! the bare relay, first place gave p50 1.01–1.11× but p99 1.6–3.9×,
//! second place p50 1.24–1.30× and p99 0.44–0.88× (3 runs each, alternating;
//! pgsat alike: 1.15–1.36× / 2.45–3.05× against 1.55–1.75× / 0.80–1.07×). A
//! single order measures the order more than the proxy. So each pass
//! starts afresh (new slots, a new pgsat) with the proxy's walsender first,
//! then the direct reader's (checked in `pg_stat_get_wal_senders()`), and
//! the verdict is on both passes pooled; `FIRST=proxy` or `FIRST=direct`
//! runs one pass.
//!
//! Prints p50/p90/p99/max of both per pass and pooled, and the ratios; the
//! targets (p50 ≤ 1.3×, p99 ≤ 1.5×) measure the server, so the default
//! pgsat reader does what the direct reader does; the Rust client's own
//! work (≈ 10 µs of CPU per transaction more, measured with perf stat) is
//! its own run.
//!
//! Run: `cargo bench --bench latency` (TXNS=… per pass, RATE=… to change,
//! READER=client for the Rust client, READER=tls for it over TLS,
//! READER=relay for the bare relay, FIRST=proxy|direct for one pass;
//! LAT_DUMP=file writes each transaction's LSN, both latencies and its
//! pass).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{quantile, unix_micros, ChildProc, CHILD_ENV};
use pgsat::client::{Client, ClientConfig, Event};
use pgsat::pg::conn::{ConnParams, ReplicationConn};
use pgsat::pg::lsn::PG_EPOCH_OFFSET_MICROS;
use pgsat::pg::pgoutput::{self, PgOutput};
use pgsat::pg::replication::{ReplMessage, ReplicationStream};
use support::pgsat::insecure_token;
use support::PgServer;

const WARMUP: usize = 100;
/// `CHILD_ENV` value that makes this binary the bare relay process.
const RELAY_ROLE: &str = "latency-relay";

/// commit end LSN → latency µs.
type Seen = Arc<Mutex<HashMap<u64, i64>>>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var(CHILD_ENV).as_deref() == Ok(RELAY_ROLE) {
        return relay_process();
    }
    let txns = env_or("TXNS", 2_000) as usize;
    let rate = env_or("RATE", 200);
    let (reader, name) = match std::env::var("READER").as_deref() {
        Ok("client") => (Reader::Client, "pgsat Rust client"),
        Ok("tls") => (Reader::Client, "pgsat Rust client, TLS"),
        Ok("relay") => (Reader::Relay, "bare relay"),
        Ok("protocol") | Err(_) => (Reader::Protocol, "pgsat protocol reader"),
        Ok(other) => panic!("READER={other}: protocol, client, tls or relay"),
    };
    // Whose walsender comes first in Postgres' array (see the header).
    let orders: &[bool] = match std::env::var("FIRST").as_deref() {
        Ok("proxy") => &[false],
        Ok("direct") => &[true],
        Ok("both") | Err(_) => &[false, true],
        Ok(other) => panic!("FIRST={other}: both, proxy or direct"),
    };
    let pg = PgServer::start();
    common::bench_schema(
        &pg,
        "CREATE TABLE lat (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), note text)",
        "lat",
    );
    // READER=tls: a CA, a certificate for localhost, pgsat serving TLS.
    let tls = (std::env::var("READER").as_deref() == Ok("tls")).then(common::BenchTls::new);

    let ms = |us: i64| us as f64 / 1000.0;
    let print = |title: &str, d: &[i64], p: &[i64]| {
        println!("{title}");
        println!("                            p50        p90        p99        max");
        for (who, v) in [("direct pgoutput reader", d), (name, p)] {
            println!(
                "  {who:<24} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms",
                ms(quantile(v, 0.5)),
                ms(quantile(v, 0.9)),
                ms(quantile(v, 0.99)),
                ms(*v.last().unwrap_or(&0))
            );
        }
    };
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let mut all: Vec<(u64, i64, i64, usize)> = Vec::new();
    for (pass, &direct_first) in orders.iter().enumerate() {
        let pairs = run_pass(
            &pg,
            pass,
            reader,
            name,
            direct_first,
            tls.as_ref(),
            txns,
            rate,
        );
        let d = sorted(pairs.iter().map(|x| x.1).collect());
        let p = sorted(pairs.iter().map(|x| x.2).collect());
        let first = if direct_first {
            "the direct reader's"
        } else {
            "the proxy's"
        };
        print(
            &format!(
                "pass {}: {} single-row transactions at {rate}/s, {first} walsender first",
                pass + 1,
                pairs.len()
            ),
            &d,
            &p,
        );
        all.extend(pairs.into_iter().map(|(l, d, p)| (l, d, p, pass + 1)));
    }
    let d = sorted(all.iter().map(|x| x.1).collect());
    let p = sorted(all.iter().map(|x| x.2).collect());
    if orders.len() > 1 {
        print(
            &format!(
                "both passes: {} transactions (each reader's walsender first in one pass)",
                all.len()
            ),
            &d,
            &p,
        );
    }
    let ratio = |q: f64| quantile(&p, q) as f64 / quantile(&d, q).max(1) as f64;
    println!(
        "  ratio {name} / direct: p50 {:.2}× (target ≤ 1.3), p99 {:.2}× (target ≤ 1.5)",
        ratio(0.5),
        ratio(0.99)
    );
    // LAT_DUMP=path: each transaction's commit LSN, both latencies (µs)
    // and its pass, in commit order, to study the tails.
    if let Ok(path) = std::env::var("LAT_DUMP") {
        let lines: String = all
            .iter()
            .map(|(l, d, p, pass)| format!("{l} {d} {p} {pass}\n"))
            .collect();
        std::fs::write(&path, lines).expect("LAT_DUMP");
    }
}

/// One pass on fresh slots (and a fresh pgsat): the readers and the proxy
/// started in the order asked, `txns` measured transactions committed,
/// everything stopped again (no walsender left). Returns (commit LSN,
/// direct µs, proxy µs) of the measured transactions, in commit order.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    pg: &PgServer,
    pass: usize,
    reader: Reader,
    name: &str,
    direct_first: bool,
    tls: Option<&common::BenchTls>,
    txns: usize,
    rate: u64,
) -> Vec<(u64, i64, i64)> {
    let direct_slot = format!("direct{pass}");
    let proxy_slot = format!("proxy{pass}");
    pg.execute(&format!(
        "SELECT pg_create_logical_replication_slot('{direct_slot}', 'pgoutput')"
    ));
    let data_dir = tempfile::tempdir().expect("data dir");
    let tls_env = tls.map(|t| t.env().to_vec()).unwrap_or_default();

    // Each reader on its own thread with its own runtime, until stopped.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut stops = Vec::new();
    let mut spawn = |reader: Reader, target: String, ca: Option<std::path::PathBuf>| -> Seen {
        let seen: Seen = Arc::default();
        let (s, ready) = (seen.clone(), ready_tx.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let slot = direct_slot.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let read = async move {
                    match reader {
                        Reader::Direct => direct_reader(target, slot, s, ready).await,
                        Reader::Protocol => protocol_reader(target, s, ready).await,
                        Reader::Client => client_reader(target, ca, s, ready).await,
                        Reader::Relay => relay_reader(target, s, ready).await,
                    }
                };
                tokio::select! {
                    _ = read => {}
                    _ = stop_rx => {}
                }
            })
        });
        stops.push((stop_tx, thread));
        seen
    };
    let ready = || {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("reader ready")
    };
    let direct = direct_first.then(|| {
        let seen = spawn(Reader::Direct, pg.url(), None);
        ready();
        seen
    });
    // READER=relay: the relay process instead of pgsat.
    let (pgsat, relay) = if matches!(reader, Reader::Relay) {
        pg.execute(&format!(
            "SELECT pg_create_logical_replication_slot('{proxy_slot}', 'pgoutput')"
        ));
        let mut relay = ChildProc::spawn(RELAY_ROLE, &[pg.url(), proxy_slot.clone()]);
        let addr = relay.recv();
        (None, Some((relay, addr)))
    } else {
        let mut env = tls_env.clone();
        env.push(("REPLICATION_SLOT", proxy_slot.as_str()));
        let pgsat = common::start_pgsat(pg, data_dir.path(), None, &env);
        (Some(pgsat), None)
    };
    let direct = direct.unwrap_or_else(|| {
        let seen = spawn(Reader::Direct, pg.url(), None);
        ready();
        seen
    });
    let target = match (&pgsat, &relay) {
        (_, Some((_, addr))) => addr.clone(),
        (Some(p), None) if tls_env.is_empty() && matches!(reader, Reader::Client) => {
            format!("tcp://{}", p.tcp)
        }
        (Some(p), None) if matches!(reader, Reader::Client) => {
            format!("tls://localhost:{}", p.tcp.port())
        }
        (Some(p), None) => p.tcp.to_string(),
        (None, None) => unreachable!("pgsat or the relay runs"),
    };
    let via_proxy = spawn(reader, target, tls.map(|t| t.ca_file.clone()));
    ready();
    // Postgres wakes its walsenders in the order of its array: check that
    // this pass has them in the order it is about.
    let order = pg.execute(
        "SELECT s.slot_name FROM pg_stat_get_wal_senders() WITH ORDINALITY AS w \
         JOIN pg_replication_slots s ON s.active_pid = w.pid ORDER BY w.ordinality",
    );
    let order: Vec<&str> = order.lines().collect();
    let expected = if direct_first {
        [direct_slot.as_str(), proxy_slot.as_str()]
    } else {
        [proxy_slot.as_str(), direct_slot.as_str()]
    };
    assert_eq!(order, expected, "walsender order");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = WARMUP + txns;
    eprintln!(
        "pass {}: committing {total} single-row transactions at {rate}/s ({WARMUP} warm-up)…",
        pass + 1
    );
    let last_lsn = rt.block_on(async {
        let client = pg.client().await;
        let insert = client
            .prepare("INSERT INTO lat (note) VALUES ($1)")
            .await
            .expect("prepare");
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..total {
            tick.tick().await;
            client
                .execute(&insert, &[&format!("row {i}")])
                .await
                .expect("insert");
        }
        let r = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("lsn");
        let lsn: String = r.get(0);
        lsn.parse::<pgsat::pg::lsn::Lsn>().expect("lsn").0
    });

    // Wait until both readers have every transaction.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = direct.lock().unwrap().len();
        let p = via_proxy.lock().unwrap().len();
        if d >= total && p >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readers did not catch up (direct {d}, {name} {p} of {total}; last LSN {last_lsn})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (stop, thread) in stops {
        let _ = stop.send(());
        thread.join().expect("reader thread");
    }
    drop(pgsat);
    drop(relay);
    // No walsender of this pass left for the next one's order.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg
        .execute("SELECT count(*) FROM pg_stat_get_wal_senders()")
        .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "walsenders did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name IN ('{direct_slot}', '{proxy_slot}')"
    ));

    // The transactions both saw, in commit order, minus the warm-up.
    let direct = direct.lock().unwrap().clone();
    let via_proxy = via_proxy.lock().unwrap().clone();
    let mut lsns: Vec<u64> = direct
        .keys()
        .filter(|l| via_proxy.contains_key(l))
        .copied()
        .collect();
    lsns.sort_unstable();
    lsns[WARMUP.min(lsns.len())..]
        .iter()
        .map(|l| (*l, direct[l], via_proxy[l]))
        .collect()
}

/// pgoutput of the bench's publication from `slot`'s position.
async fn start_stream(url: &str, slot: &str) -> ReplicationStream {
    let params = ConnParams::from_url(url).expect("url");
    let conn = ReplicationConn::connect(&params).await.expect("connect");
    conn.start_logical(slot, 0, "pgsat_bench")
        .await
        .expect("start replication")
}

async fn direct_reader(url: String, slot: String, seen: Seen, ready: std::sync::mpsc::Sender<()>) {
    let mut stream = start_stream(&url, &slot).await;
    ready.send(()).ok();
    let mut received = 0u64;
    let mut last_status = Instant::now();
    loop {
        let msg = match stream.recv().await {
            Ok(Some(m)) => m,
            _ => return,
        };
        match msg {
            ReplMessage::XLogData { wal_end, data, .. } => {
                received = received.max(wal_end);
                match pgoutput::decode(&data).expect("pgoutput") {
                    PgOutput::Commit(c) => {
                        let now = unix_micros();
                        let committed = c.commit_time + PG_EPOCH_OFFSET_MICROS;
                        seen.lock().unwrap().insert(c.end_lsn, now - committed);
                        received = received.max(c.end_lsn);
                    }
                    _ => continue,
                }
                if last_status.elapsed() > Duration::from_secs(1) {
                    last_status = Instant::now();
                    let _ = stream
                        .send_status(received, received, received, false)
                        .await;
                }
            }
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                received = received.max(wal_end);
                if reply_requested {
                    let _ = stream
                        .send_status(received, received, received, false)
                        .await;
                }
            }
        }
    }
}

async fn client_reader(
    url: String,
    ca: Option<std::path::PathBuf>,
    seen: Seen,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut config = ClientConfig::with_token(url, insecure_token("bench", 3600));
    config.from_lsn = 0;
    config.tls_ca_file = ca;
    let mut client = Client::connect(config).await.expect("pgsat client");
    ready.send(()).ok();
    loop {
        match client.next_event().await {
            Ok(Event::Transaction(t)) => {
                let now = unix_micros();
                seen.lock().unwrap().insert(t.lsn, now - t.commit_time);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("pgsat client: {e}");
                return;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Reader {
    /// pgoutput straight from Postgres (its own slot).
    Direct,
    /// pgsat's protocol read as a minimal client reads it: frames off the
    /// socket, the OpLog decoded, stamped at its Commit — what the direct
    /// reader does with pgoutput.
    Protocol,
    /// `pgsat::client::Client`: also builds typed rows and events.
    Client,
    /// The bare relay process's stream: u32 length + one pgoutput message.
    Relay,
}

/// The bare relay process (`READER=relay`; arguments: Postgres URL, slot):
/// starts replication, binds a loopback port (printed on stdout), accepts
/// one client, then streams the slot to it,
/// each transaction's pgoutput messages (u32 big-endian length + message)
/// in one write at its Commit. Single-threaded, nothing else on its path:
/// what any proxy between Postgres and a client costs on this host.
fn relay_process() {
    use tokio::io::AsyncWriteExt;
    let url = std::env::args()
        .nth(1)
        .expect("relay: Postgres URL argument");
    let slot = std::env::args().nth(2).expect("relay: slot argument");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Replication first, as pgsat has it running when it is ready (the
        // order of the walsenders is FIRST's business).
        let mut stream = start_stream(&url, &slot).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay bind");
        println!("{}", listener.local_addr().expect("relay address"));
        std::io::Write::flush(&mut std::io::stdout()).expect("stdout");
        let (mut sock, _) = listener.accept().await.expect("relay accept");
        sock.set_nodelay(true).expect("nodelay");
        let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut received = 0u64;
        let mut last_status = Instant::now();
        loop {
            let msg = match stream.recv().await {
                Ok(Some(m)) => m,
                _ => return,
            };
            let reply = match msg {
                ReplMessage::XLogData { wal_end, data, .. } => {
                    received = received.max(wal_end);
                    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
                    out.extend_from_slice(&data);
                    if data.first() != Some(&b'C') {
                        continue;
                    }
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    last_status.elapsed() > Duration::from_secs(1)
                }
                ReplMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    received = received.max(wal_end);
                    reply_requested
                }
            };
            if reply {
                last_status = Instant::now();
                let _ = stream
                    .send_status(received, received, received, false)
                    .await;
            }
        }
    });
}

/// Reads the bare relay's stream and stamps each transaction at its Commit.
async fn relay_reader(addr: String, seen: Seen, ready: std::sync::mpsc::Sender<()>) {
    use tokio::io::AsyncReadExt;
    let mut sock = tokio::net::TcpStream::connect(addr.as_str())
        .await
        .expect("connect to the relay");
    sock.set_nodelay(true).expect("nodelay");
    ready.send(()).ok();
    let mut buf = bytes::BytesMut::with_capacity(64 << 10);
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let now = unix_micros();
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let msg = buf.split_to(4 + len).split_off(4).freeze();
            if let PgOutput::Commit(c) = pgoutput::decode(&msg).expect("pgoutput") {
                let committed = c.commit_time + PG_EPOCH_OFFSET_MICROS;
                seen.lock().unwrap().insert(c.end_lsn, now - committed);
            }
        }
    }
}

async fn protocol_reader(addr: String, seen: Seen, ready: std::sync::mpsc::Sender<()>) {
    use pgsat::protocol::pb::{trans_op::Op, OpLog};
    use pgsat::protocol::MsgType;
    use prost::Message;
    let addr: std::net::SocketAddr = addr.parse().expect("pgsat address");
    let mut c = support::pgsat::RawClient::connect(addr).await;
    c.auth(&insecure_token("bench", 3600)).await;
    c.start(0).await;
    ready.send(()).ok();
    while let Some(f) = c.recv().await {
        if f.ty != MsgType::OpLog as u8 {
            continue;
        }
        let now = unix_micros();
        let log = OpLog::decode(f.body).expect("OpLog");
        for op in log.ops {
            if let Some(Op::Commit(commit)) = op.op {
                seen.lock()
                    .unwrap()
                    .insert(commit.lsn, now - commit.commit_time);
            }
        }
    }
}
