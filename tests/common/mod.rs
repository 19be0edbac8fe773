//! Helpers for end-to-end tests: run the real `plexus` binary on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use plexus_client::{Client, ClientConfig};
use plexus_proto::{Consistency, Op, ReadOp, Reply, Request};

pub mod docker;
pub mod systemd;
pub mod workload;

pub const BIN: &str = env!("CARGO_BIN_EXE_plexus");

/// A `plexus up` child process.
pub struct Up {
    pub child: Child,
    pub dir: PathBuf,
}

/// A base port unlikely to collide with other tests running at the same time: below the kernel's
/// ephemeral range (32768 and up by default), where sockets bound to port 0 could take it.
pub fn base_port(salt: u16) -> u16 {
    20_000
        + ((std::process::id() as u16)
            .wrapping_mul(7)
            .wrapping_add(salt.wrapping_mul(97)))
            % 12_000
}

/// Starts `plexus up` and waits for its `ready` line.
pub fn up(dir: &Path, extra: &[&str], ready_within: Duration) -> Up {
    let mut child = Command::new(BIN)
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn plexus up");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[up] {line}");
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(ready_within).is_err() {
        let _ = child.kill();
        panic!(
            "plexus up did not print ready within {ready_within:?}; node logs are in {}",
            dir.display()
        );
    }
    Up {
        child,
        dir: dir.to_path_buf(),
    }
}

impl Up {
    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        signal(self.child.id(), "TERM");
        let status = self.child.wait().expect("wait plexus up");
        assert!(status.success(), "plexus up exited with {status}");
    }
}

/// How long a test that failed waits for its cluster to stop before killing `plexus up`.
const STOP_ON_PANIC_WAIT: Duration = Duration::from_secs(30);

/// A test that panics with its cluster up still stops it: left running, the nodes would keep
/// the test's output pipe open and hang whatever reads it (CI included).
impl Drop for Up {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        signal(self.child.id(), "TERM");
        let deadline = std::time::Instant::now() + STOP_ON_PANIC_WAIT;
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// A node process a test started itself; killed on drop, so a test that fails before stopping it
/// leaves nothing running (a leaked node kept its CPU share through later benchmarks).
pub struct NodeProcess(pub Child);

impl NodeProcess {
    /// SIGTERM, then wait for the exit; its status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(self.0.id(), "TERM");
        self.0.wait().expect("wait for the node")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts one node process from the cluster directory.
pub fn start_node(dir: &Path, id: u64) -> NodeProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node-{id}/node.log")))
        .expect("open node log");
    Command::new(BIN)
        .arg("node")
        .arg("--config")
        .arg(dir.join(format!("node-{id}/node.toml")))
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .map(NodeProcess)
        .expect("spawn node")
}

pub async fn client(dir: &Path) -> Client {
    let cfg = ClientConfig::load(&dir.join("client.toml")).expect("load client.toml");
    Client::connect(cfg).await.expect("connect")
}

/// Reads `op` from the replica on the node at `addr`, without a read index.
pub async fn stale_read_at(client: &Client, addr: &str, shard: u32, op: ReadOp) -> Option<Reply> {
    let req = Request {
        shard,
        consistency: Consistency::Stale,
        session: None,
        op: Op::Read(op),
    };
    match client.call_at(addr, req).await {
        Ok(Ok(r)) => Some(r),
        _ => None,
    }
}

/// Node `id`'s metrics text, fetched over HTTP from the `metrics_addr` in its node.toml.
pub fn scrape_metrics(dir: &Path, id: u64) -> String {
    use std::io::{Read, Write};
    let cfg = plexus_actors::NodeConfig::load(&dir.join(format!("node-{id}/node.toml"))).expect("load node.toml");
    let addr = cfg.metrics_addr.expect("plexus up gives every node a metrics_addr");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the metrics answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer
}
