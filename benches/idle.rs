//! Idle scale: 10,000 authenticated idle sessions on one pgsat; proxy RSS
//! per session = (VmRSS after − VmRSS before) / N from /proc/<pid>/status.
//!
//! The clients run in a separate process (this binary re-executed with
//! `PGSAT_BENCH_CHILD=idle`, soft RLIMIT_NOFILE raised to the hard limit):
//! raw TCP clients that send AuthReq, wait for AuthResp and then hold the
//! connection without sending anything. pgsat gets MAX_CONNECTIONS = N + 100
//! (default 10,000) and a long AUTH_TIMEOUT is irrelevant: sessions are
//! authenticated. "Before" is measured after 200 sessions were opened and
//! closed (one-time allocations are not attributed to sessions). Then every
//! session sends StartReplicationReq{lsn: 0} and the RSS is taken again
//! (idle *streaming* sessions, informative). Target ≤ 8 KiB per
//! authenticated idle session.
//!
//! `TLS=1`: pgsat serves TLS (a throwaway CA and certificate) and every
//! client completes a TLS handshake first: the RSS per TLS session.
//!
//! Run: `cargo bench --bench idle` (SESSIONS=… to change, TLS=1).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::light;
use common::{proc_status_kib, ChildProc, CHILD_ENV};
use pgsat::client::connection::Io;
use support::pgsat::insecure_token;
use support::PgServer;

fn main() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("idle") {
        return client_process();
    }
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let pg = PgServer::start();
    common::bench_schema(
        &pg,
        "CREATE TABLE idle_t (id bigserial PRIMARY KEY, note text)",
        "idle_t",
    );
    let data_dir = tempfile::tempdir().expect("data dir");
    let tls = (std::env::var("TLS").as_deref() == Ok("1")).then(common::BenchTls::new);
    let env = tls.as_ref().map(|t| t.env().to_vec()).unwrap_or_default();
    let pgsat = common::start_pgsat(&pg, data_dir.path(), Some(n as u64), &env);
    let pid = pgsat.pid();
    let token = insecure_token("bench", 24 * 3600);
    // The child's 4th argument: the CA file when TLS, else "-".
    let ca_arg = tls
        .as_ref()
        .map_or("-".to_string(), |t| t.ca_file.display().to_string());
    pg.execute("INSERT INTO idle_t (note) VALUES ('before')");

    // Warm-up: 200 sessions opened, authenticated, started and closed.
    {
        let mut warm = ChildProc::spawn(
            "idle",
            &[
                pgsat.tcp.to_string(),
                "200".into(),
                token.clone(),
                ca_arg.clone(),
            ],
        );
        assert!(warm.recv().starts_with("ready"));
        warm.send("start");
        assert!(warm.recv().starts_with("started"));
        warm.send("exit");
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = proc_status_kib(pid, "VmRSS");

    let mut child = ChildProc::spawn(
        "idle",
        &[pgsat.tcp.to_string(), n.to_string(), token, ca_arg],
    );
    let t = Instant::now();
    let ready = child.recv();
    let connect_secs = t.elapsed().as_secs_f64();
    assert!(ready.starts_with("ready"), "client process: {ready}");
    std::thread::sleep(Duration::from_secs(2));
    let after_auth = proc_status_kib(pid, "VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);

    child.send("start");
    let started = child.recv();
    assert!(started.starts_with("started"), "client process: {started}");
    std::thread::sleep(Duration::from_secs(2));
    let after_start = proc_status_kib(pid, "VmRSS");
    let hwm = proc_status_kib(pid, "VmHWM");

    let per = |a: u64| (a as f64 - before as f64) * 1024.0 / n as f64 / 1024.0;
    println!(
        "idle sessions: {n}{} (clients in a separate process; machine: 2 cores, shared)",
        if tls.is_some() { ", TLS" } else { "" }
    );
    println!("  {ready} in {connect_secs:.1} s; pgsat fds open: {fds}");
    println!(
        "  pgsat RSS before:                      {:>8.1} MiB",
        before as f64 / 1024.0
    );
    println!(
        "  after {n} authenticated idle sessions: {:>8.1} MiB  → {:.2} KiB per session (target ≤ 8 KiB)",
        after_auth as f64 / 1024.0,
        per(after_auth)
    );
    println!(
        "  after each also started replication:  {:>8.1} MiB  → {:.2} KiB per session (idle streaming)",
        after_start as f64 / 1024.0,
        per(after_start)
    );
    println!(
        "  pgsat peak RSS (VmHWM):                {:>8.1} MiB",
        hwm as f64 / 1024.0
    );
    child.send("exit");
    drop(child);
    drop(pgsat);
}

fn client_process() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: std::net::SocketAddr = args[0].parse().expect("addr");
    let n: usize = args[1].parse().expect("sessions");
    let token = args[2].clone();
    let tls = match args[3].as_str() {
        "-" => None,
        ca => Some(
            pgsat::client::tls::connector(Some(std::path::Path::new(ca))).expect("TLS connector"),
        ),
    };
    let limit = common::raise_nofile();
    assert!(
        limit as usize > n + 64,
        "RLIMIT_NOFILE {limit} too low for {n} sessions"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use futures::StreamExt;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let auth = light::auth_frame(&token);
        // At most 256 handshakes in flight.
        let results: Vec<Result<Box<dyn Io>, String>> = futures::stream::iter(0..n)
            .map(|_| {
                let auth = auth.clone();
                let tls = tls.clone();
                async move {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    s.set_nodelay(true).ok();
                    let mut s: Box<dyn Io> = match &tls {
                        Some(c) => Box::new(
                            pgsat::client::tls::handshake(c, "localhost", s)
                                .await
                                .map_err(|e| e.to_string())?,
                        ),
                        None => Box::new(s),
                    };
                    s.write_all(&auth).await.map_err(|e| e.to_string())?;
                    // TLS may keep written bytes until flushed.
                    s.flush().await.map_err(|e| e.to_string())?;
                    let (ty, body) = read_frame(&mut s).await?;
                    if ty != light::AUTH_RESP {
                        return Err(format!(
                            "expected AuthResp, got frame type {ty}: {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    Ok(s)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let mut streams = Vec::with_capacity(n);
        let mut errors = std::collections::BTreeMap::<String, usize>::new();
        for r in results {
            match r {
                Ok(s) => streams.push(s),
                Err(e) => *errors.entry(e).or_default() += 1,
            }
        }
        assert!(errors.is_empty(), "sessions failed: {errors:?}");
        println!("ready: {} sessions authenticated", streams.len());
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut lines = stdin.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "start" => {
                    let start = light::start_frame();
                    let mut failed = 0;
                    for chunk in streams.chunks_mut(256) {
                        let res = futures::future::join_all(chunk.iter_mut().map(|s| {
                            let start = start.clone();
                            async move {
                                s.write_all(&start).await.map_err(|e| e.to_string())?;
                                s.flush().await.map_err(|e| e.to_string())?;
                                read_frame_type(s).await
                            }
                        }))
                        .await;
                        failed += res
                            .iter()
                            .filter(|r| !matches!(r, Ok(light::START_RESP)))
                            .count();
                    }
                    println!("started: {} sessions, {failed} failed", streams.len());
                }
                _ => break,
            }
        }
        // Keep the read side referenced until exit.
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(1), streams[0].read(&mut b)).await;
    });
    std::process::exit(0);
}

/// Reads one whole frame, returns its type.
async fn read_frame_type(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<u8, String> {
    Ok(read_frame(s).await?.0)
}

/// Reads one whole frame: its type and body.
async fn read_frame(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<(u8, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 1 << 20 {
        return Err(format!("frame length {len}"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((body[0], body[1..].to_vec()))
}
