//! `pgsat dev` as a user runs it: a subprocess that prints where it listens
//! and a token; a client using exactly the printed `pgsat tail` line receives
//! a live demo change; Ctrl-C (SIGINT) ends it with exit 0 within 15 s, and
//! leaves no Postgres process, no listener and no temp dir.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use pgsat::devpg::{process_alive, read_postmaster_pid};

/// A child process killed (SIGKILL) if the test ends while it still runs.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stdout lines of a child, through a channel (so reads have deadlines).
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &Receiver<String>, deadline: Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left).ok()
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn host_port(url: &str, scheme: &str) -> SocketAddr {
    let rest = url
        .strip_prefix(scheme)
        .unwrap_or_else(|| panic!("{url:?} does not start with {scheme}"));
    let hp = rest.split('/').next().unwrap();
    hp.parse()
        .unwrap_or_else(|e| panic!("{hp:?} is not an address: {e}"))
}

fn start_dev(extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsat"));
    cmd.args(["dev", "--write-demo"])
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("WS_LISTEN_ADDR", "127.0.0.1:0")
        .env("HTTP_LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "warn")
        .env_remove("PGSAT_PG_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// The banner: `key: value` lines, then the indented tail line, up to the
/// `demo:` line.
fn read_banner(out: &Receiver<String>) -> (HashMap<String, String>, String) {
    let mut banner: HashMap<String, String> = HashMap::new();
    let mut tail_line = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let (Some(t), true) = (&tail_line, banner.contains_key("demo")) {
            return (banner, String::clone(t));
        }
        let line = next_line(out, deadline).unwrap_or_else(|| {
            panic!("pgsat dev printed no complete banner in time; so far: {banner:?}")
        });
        if line.trim_start().starts_with('/') && line.contains(" tail --url ") {
            tail_line = Some(line.trim().to_string());
        } else if let Some((k, v)) = line.split_once(": ") {
            banner.insert(k.to_string(), v.to_string());
        }
    }
}

#[test]
fn dev_streams_demo_changes_and_ctrl_c_leaves_nothing_behind() {
    let mut dev = Proc(start_dev(&[]).spawn().expect("spawn pgsat dev"));
    let out = lines_of(&mut dev.0);
    let (banner, tail_line) = read_banner(&out);
    let temp_dir = PathBuf::from(&banner["temp dir"]);
    let tcp = host_port(&banner["tcp"], "tcp://");
    let http = host_port(&banner["http"], "http://");
    let pg_port = host_port(
        banner["postgres"].rsplit_once('@').expect("postgres URL").1,
        "",
    );
    assert!(banner["ws"].starts_with("ws://127.0.0.1:") && banner["ws"].ends_with("/ws"));
    assert!(banner.contains_key("token (bob)"));
    // The demo runs with read rules (sql/rules.toml).
    assert!(banner["read rules"].contains("rules.toml"), "{banner:?}");
    let alice = &banner["token (alice)"];
    assert!(
        temp_dir.is_dir(),
        "{} should exist while running",
        temp_dir.display()
    );
    let pg_pid = read_postmaster_pid(&temp_dir.join("data")).expect("postmaster.pid");
    assert!(process_alive(pg_pid));
    assert!(accepts(pg_port) && accepts(tcp) && accepts(http));

    // The printed command is runnable as is: this very binary, the tcp
    // address and alice's token.
    let words: Vec<&str> = tail_line.split_whitespace().collect();
    assert_eq!(
        std::fs::canonicalize(words[0]).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_pgsat")).unwrap()
    );
    assert_eq!(
        &words[1..],
        [
            "tail",
            "--url",
            banner["tcp"].as_str(),
            "--token",
            alice.as_str()
        ]
    );
    let mut tail = Proc(
        Command::new(words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pgsat tail"),
    );
    let txns = lines_of(&mut tail.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let change = loop {
        let line = next_line(&txns, deadline).expect("no demo change reached pgsat tail in 30 s");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("tail printed a non-JSON line {line:?}: {e}"));
        let found = v["changes"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["table"] == "todos" && c["schema"] == "public")
                .cloned()
        });
        if let Some(c) = found {
            break c;
        }
    };
    let op = change["op"].as_str().unwrap();
    assert!(["insert", "update", "delete"].contains(&op), "{change}");
    let row = if op == "delete" {
        &change["old"]
    } else {
        &change["row"]
    };
    let owner = row["owner_id"].as_str().unwrap();
    assert!(owner == "alice" || owner == "bob", "{change}");
    drop(tail);

    // The /readyz health check of the container image agrees it is ready.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/docker/healthcheck.sh");
    let healthy = Command::new("bash")
        .arg(&script)
        .env("HTTP_LISTEN_ADDR", http.to_string())
        .status()
        .expect("run healthcheck");
    assert!(
        healthy.success(),
        "/readyz should answer 200 while streaming"
    );

    // Ctrl-C.
    let pid = i32::try_from(dev.0.id()).unwrap();
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = dev
        .wait_within(Duration::from_secs(15))
        .expect("pgsat dev did not exit within 15 s of SIGINT");
    assert!(status.success(), "exit status {status}");
    let mut rest = Vec::new();
    while let Some(l) = next_line(&out, Instant::now() + Duration::from_secs(2)) {
        rest.push(l);
    }
    assert!(
        rest.iter()
            .any(|l| l == &format!("stopped: removed {}", temp_dir.display())),
        "{rest:?}"
    );

    assert!(!temp_dir.exists(), "{} left behind", temp_dir.display());
    // The postmaster exits right after removing its pid file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pg_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pg_pid), "postmaster {pg_pid} still runs");
    assert!(!accepts(pg_port), "Postgres still accepts on {pg_port}");
    assert!(!accepts(tcp), "pgsat still accepts on {tcp}");
    assert!(!accepts(http), "pgsat HTTP still accepts on {http}");
}

#[test]
fn dev_without_postgres_binaries_names_the_package_and_exits_2() {
    let empty = tempfile::tempdir().unwrap();
    let out = start_dev(&[("PGSAT_PG_BIN", empty.path().to_str().unwrap())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run pgsat dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("apt-get install -y postgresql"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started, nothing printed");
}

/// Even a SIGKILL (no unwinding, no Drop) leaves no cluster and no temp dir:
/// the watchdog child stops Postgres and removes the dir.
#[test]
fn a_killed_dev_still_leaves_nothing_behind() {
    let mut dev = Proc(start_dev(&[]).spawn().expect("spawn pgsat dev"));
    let out = lines_of(&mut dev.0);
    let (banner, _) = read_banner(&out);
    let temp_dir = PathBuf::from(&banner["temp dir"]);
    let pg_pid = read_postmaster_pid(&temp_dir.join("data")).expect("postmaster.pid");
    assert!(process_alive(pg_pid));

    dev.0.kill().expect("SIGKILL pgsat dev");
    let _ = dev.0.wait();

    let deadline = Instant::now() + Duration::from_secs(30);
    while (process_alive(pg_pid) || temp_dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !process_alive(pg_pid),
        "postmaster {pg_pid} outlived pgsat dev"
    );
    assert!(!temp_dir.exists(), "{} left behind", temp_dir.display());
}
