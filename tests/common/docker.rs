//! A plexus cluster in Docker containers, one node per container, each with its own address on
//! a private bridge network: what loopback processes cannot give a test is cutting one node
//! off the network while it keeps running.
//!
//! The image is built from the test's own `plexus` binary and the shared libraries it links
//! (`ldd`), on `scratch`: this machine has no image registry. Everything the cluster makes
//! (containers, network, image, host firewall rules) is removed when the `DockerCluster` is
//! dropped, panics included, and what a killed test process left is removed by the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use plexus_client::{Client, ClientConfig};

/// Shards of the test cluster: few, so that it is ready in seconds.
pub const SHARDS: u32 = 8;
/// Nodes, one per container.
pub const NODES: u64 = 3;
/// The UDP port every node listens on, inside its own container.
const PORT: u16 = 7401;
/// Every name this harness gives Docker (and every firewall rule's comment) starts with this,
/// then the test process's id.
const PREFIX: &str = "plexus-e2e-";

/// Removes containers, networks, images and firewall rules that an earlier test process left
/// behind (one killed before its `Drop` ran: a CI timeout, say), found by the dead process's id
/// in their names. A live process's resources are left alone, so concurrent runs are safe.
fn remove_leftovers() {
    let dead = |name: &str| {
        let pid = name.strip_prefix(PREFIX).and_then(|rest| rest.split(['-', ':']).next());
        pid.is_some_and(|p| p.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{p}")).exists())
    };
    let lines = |program: &str, args: &[&str]| -> Vec<String> {
        try_run(program, args)
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let filter = format!("name=^{PREFIX}");
    let containers = lines(
        "docker",
        &["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"],
    );
    for c in containers.iter().filter(|n| dead(n)) {
        eprintln!("[docker] removing container {c} left by a dead test process");
        let _ = try_run("docker", &["rm", "--force", "--volumes", c]);
    }
    let networks = lines(
        "docker",
        &["network", "ls", "--filter", &filter, "--format", "{{.Name}}"],
    );
    for n in networks.iter().filter(|n| dead(n)) {
        eprintln!("[docker] removing network {n} left by a dead test process");
        let _ = try_run("docker", &["network", "rm", n]);
    }
    let images = lines("docker", &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    for i in images.iter().filter(|i| i.starts_with(PREFIX) && dead(i)) {
        let _ = try_run("docker", &["image", "rm", "--force", i]);
    }
    for line in lines("iptables", &["-S", "DOCKER-USER"]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let owner = words
            .iter()
            .position(|w| *w == "--comment")
            .and_then(|i| words.get(i + 1));
        if words.first() == Some(&"-A") && owner.is_some_and(|o| dead(o)) {
            eprintln!("[docker] removing firewall rule left by a dead test process: {line}");
            let mut args = vec!["-D"];
            args.extend(&words[1..]);
            let _ = try_run("iptables", &args);
        }
    }
}

/// Runs `program args...` with no input; its output, or why it could not run or failed (with its
/// stderr). Every external command of this harness goes through here.
pub fn try_run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {args:?}: cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker args...`; its output, or a panic naming the command and its stderr.
pub fn docker(args: &[&str]) -> Output {
    try_run("docker", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a Docker Engine answers; the reason when it does not.
pub fn engine() -> Result<String, String> {
    try_run("docker", &["version", "--format", "{{.Server.Version}}"])
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether to run: an engine answers (true), or it does not and the user asked to skip (false).
pub fn engine_or_skip() -> bool {
    match engine() {
        Ok(version) => {
            eprintln!("docker engine {version}");
            true
        }
        Err(why) if std::env::var("PLEXUS_E2E_DOCKER").as_deref() == Ok("skip") => {
            eprintln!("SKIPPED (PLEXUS_E2E_DOCKER=skip): no Docker Engine: {why}");
            false
        }
        Err(why) => panic!("this test needs a running Docker Engine ({why}); PLEXUS_E2E_DOCKER=skip skips it"),
    }
}

/// How a node runs in its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The plexus binary is the container's only process (a `scratch` image); `docker stop`
    /// sends it SIGTERM.
    Scratch,
    /// systemd is PID 1 and runs the node from the repository's unit (`systemd.rs`); the node
    /// is stopped and started with `systemctl`.
    Systemd,
}

/// A running cluster of `NODES` containers.
pub struct DockerCluster {
    pub flavor: Flavor,
    /// Prefix of every name this cluster gives Docker (network, containers, image tag).
    pub name: String,
    pub network: String,
    image: String,
    containers: Vec<String>,
    /// Node `i` (1-based) has address `ips[i - 1]`.
    pub ips: Vec<String>,
    pub dir: PathBuf,
    /// Host firewall rules this cluster added (`iptables` arguments after the chain, before the
    /// target), removed by `heal` and on drop.
    rules: Vec<Vec<String>>,
}

impl DockerCluster {
    /// Builds the image, makes certificates and configs under `dir`, creates the network and
    /// starts one container per node. `tag` tells apart the clusters of one test process.
    pub fn start(dir: &Path, tag: &str) -> Self {
        Self::start_flavor(dir, tag, Flavor::Scratch)
    }

    /// `start`, with nodes run the way `flavor` says.
    pub fn start_flavor(dir: &Path, tag: &str, flavor: Flavor) -> Self {
        remove_leftovers();
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let mut cluster = DockerCluster {
            flavor,
            network: name.clone(),
            image: format!("{name}:test"),
            name,
            containers: Vec::new(),
            ips: Vec::new(),
            dir: dir.to_path_buf(),
            rules: Vec::new(),
        };
        cluster.build_image();
        let prefix = cluster.create_network();
        cluster.ips = (1..=NODES).map(|i| format!("{prefix}.{}", 10 + i)).collect();
        cluster.write_configs();
        for id in 1..=NODES {
            cluster.run_node(id);
        }
        cluster
    }

    fn build_image(&self) {
        let ctx = self.dir.join("image");
        let root = ctx.join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        // Without debug info the context is a tenth of the size; a copy if `strip` is missing.
        let stripped = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(root.join("plexus"))
            .arg(super::BIN)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(super::BIN, root.join("plexus")).unwrap();
        }
        let ldd = try_run("ldd", &[super::BIN]).unwrap_or_else(|e| panic!("{e}"));
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            // `copy` follows symlinks, so the image gets the library itself.
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        if self.flavor == Flavor::Systemd {
            // The base image has the libraries (it is the host's own Debian release).
            return super::systemd::build_node_image(&ctx, &self.image);
        }
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/plexus\"]\n",
        )
        .unwrap();
        docker(&["build", "--quiet", "-t", &self.image, ctx.to_str().unwrap()]);
    }

    /// A private /24 that no other network on this machine uses; returns its first three octets.
    fn create_network(&self) -> String {
        let salt = (std::process::id() as usize).wrapping_add(self.name.bytes().map(usize::from).sum::<usize>());
        let mut last = String::new();
        for attempt in 0..32 {
            let k = (salt + attempt * 37) % 4096;
            let prefix = format!("10.{}.{}", 200 + k / 256 % 50, k % 256);
            let subnet = format!("--subnet={prefix}.0/24");
            match try_run(
                "docker",
                &["network", "create", "--driver", "bridge", &subnet, &self.network],
            ) {
                Ok(_) => return prefix,
                Err(e) => last = e,
            }
        }
        panic!("docker network create: no free /24 found; last error: {last}");
    }

    fn write_configs(&self) {
        let bin = super::BIN;
        let ca = self.dir.join("ca");
        run(Command::new(bin).args(["certs", "ca", "--out"]).arg(&ca));
        let token = format!("e2e-docker-token-{}", std::process::id());
        let peers: String = (1..=NODES)
            .map(|i| format!("[[peers]]\nid = {i}\naddr = \"{}:{PORT}\"\n", self.ips[i as usize - 1]))
            .collect();
        for id in 1..=NODES {
            let conf = self.conf_dir(id);
            run(Command::new(bin)
                .args(["certs", "node", "--ca-dir"])
                .arg(&ca)
                .args(["--id", &id.to_string(), "--san", &self.ips[id as usize - 1], "--out"])
                .arg(&conf));
            std::fs::create_dir_all(self.data_dir(id)).unwrap();
            let toml = format!(
                "node_id = {id}\nlisten = \"0.0.0.0:{PORT}\"\ndata_dir = \"/var/lib/plexus\"\ntoken = \"{token}\"\n\
                 shard_count = {SHARDS}\nreplication = 3\n\
                 [tls]\nca_cert = \"/etc/plexus/ca.pem\"\nnode_cert = \"/etc/plexus/node-{id}.pem\"\n\
                 node_key = \"/etc/plexus/node-{id}-key.pem\"\n{peers}"
            );
            std::fs::write(conf.join("node.toml"), toml).unwrap();
            if self.flavor == Flavor::Systemd {
                super::systemd::share_key_with_service(&conf.join(format!("node-{id}-key.pem")));
            }
        }
        let seeds: Vec<String> = self.ips.iter().map(|ip| format!("\"{ip}:{PORT}\"")).collect();
        std::fs::write(
            self.dir.join("client.toml"),
            format!(
                "seeds = [{}]\nca_cert = \"ca/ca.pem\"\ntoken = \"{token}\"\n",
                seeds.join(", ")
            ),
        )
        .unwrap();
    }

    fn conf_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// The container of node `id`.
    pub fn container(&self, id: u64) -> String {
        format!("{}-node{id}", self.name)
    }

    fn run_node(&mut self, id: u64) {
        let container = self.container(id);
        let conf = format!("{}:/etc/plexus:ro", self.conf_dir(id).display());
        if self.flavor == Flavor::Systemd {
            // The data stays in the container (the unit's StateDirectory), which lives as long
            // as the test: the node is restarted with systemctl, not by recreating it.
            let mut args = vec!["run", "--detach", "--name", &container, "--network", &self.network];
            args.extend(["--ip", &self.ips[id as usize - 1], "--volume", &conf]);
            args.extend(super::systemd::RUN_ARGS);
            args.extend([self.image.as_str(), "/sbin/init"]);
            docker(&args);
            self.containers.push(container);
            return;
        }
        let data = format!("{}:/var/lib/plexus", self.data_dir(id).display());
        docker(&[
            "run",
            "--detach",
            "--name",
            &container,
            "--network",
            &self.network,
            "--ip",
            &self.ips[id as usize - 1],
            "--stop-signal",
            "SIGTERM",
            "--volume",
            &conf,
            "--volume",
            &data,
            &self.image,
            "node",
            "--config",
            "/etc/plexus/node.toml",
        ]);
        self.containers.push(container);
    }

    /// A client of the cluster, once every shard has a leader (bounded by `within`).
    pub async fn ready_client(&self, within: Duration) -> Client {
        let deadline = Instant::now() + within;
        let cfg = ClientConfig::load(&self.dir.join("client.toml")).expect("load client.toml");
        let client = loop {
            match Client::connect(cfg.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[docker] not connected yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("no node of {} answered a client within {within:?}: {e}", self.name),
            }
        };
        loop {
            let mut led = std::collections::BTreeSet::new();
            for id in 1..=NODES {
                if let Ok(st) = client.node_status(&self.addr(id)).await {
                    led.extend(st.shards.iter().filter(|s| s.leader.is_some()).map(|s| s.shard));
                }
            }
            if (0..SHARDS).all(|s| led.contains(&s)) {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "shards without a leader after {within:?}: {:?}; logs: docker logs {}",
                (0..SHARDS).filter(|s| !led.contains(s)).collect::<Vec<_>>(),
                self.container(1)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until node `id` answers and each of its replicas has applied at least what its group's
    /// leader had applied when the node first answered; how long that took. Panics past `within`.
    pub async fn caught_up(&self, client: &Client, id: u64, within: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + within;
        while client.node_status(&self.addr(id)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not come back within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("node {id} answers {:?} after its start", start.elapsed());
        // Each group's applied index at its leader, now (the meta group included).
        let mut targets = BTreeMap::new();
        while targets.len() < SHARDS as usize + 1 {
            for node in 1..=NODES {
                if let Ok(st) = client.node_status(&self.addr(node)).await {
                    for r in st.shards.iter().filter(|r| r.leader == Some(node)) {
                        targets.insert(r.shard, r.applied_index);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "groups without a leader: only {targets:?} have one"
            );
        }
        loop {
            // Groups still behind; `None` while the node does not answer.
            let behind: Option<Vec<u32>> = client.node_status(&self.addr(id)).await.ok().map(|st| {
                st.shards
                    .iter()
                    .filter(|r| r.applied_index < targets.get(&r.shard).copied().unwrap_or(0))
                    .map(|r| r.shard)
                    .collect()
            });
            if behind.as_ref().is_some_and(Vec::is_empty) {
                return start.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "node {id} has not caught up on groups {behind:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts node `id` off the network: its process keeps running with no route to anyone.
    pub fn disconnect(&self, id: u64) {
        docker(&["network", "disconnect", &self.network, &self.container(id)]);
    }

    /// Puts node `id` back on the network at its old address.
    pub fn reconnect(&self, id: u64) {
        docker(&[
            "network",
            "connect",
            "--ip",
            &self.ips[id as usize - 1],
            &self.network,
            &self.container(id),
        ]);
    }

    /// Drops every packet between node `id` and the other nodes, both ways, with host firewall
    /// rules on the bridge (Docker's `DOCKER-USER` chain); the host, and so the test's client,
    /// still reaches every node. A leader cut off this way still answers clients.
    pub fn isolate_from_peers(&mut self, id: u64) {
        let me = self.ips[id as usize - 1].clone();
        for peer in (1..=NODES).filter(|p| *p != id) {
            let other = self.ips[peer as usize - 1].clone();
            for (src, dst) in [(&me, &other), (&other, &me)] {
                // The comment names this process, so a run that was killed before its cleanup
                // can have its rules found and removed by the next (`remove_leftovers`).
                let rule: Vec<String> = ["-s", src, "-d", dst, "-m", "comment", "--comment", &self.owner_tag()]
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                iptables("-I", &rule);
                self.rules.push(rule);
            }
        }
    }

    /// What marks this process's resources: `plexus-e2e-PID`.
    fn owner_tag(&self) -> String {
        format!("{PREFIX}{}", std::process::id())
    }

    /// Removes every rule `isolate_from_peers` added.
    pub fn heal(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            iptables("-D", &rule);
        }
    }

    /// SIGTERMs node `id` and waits (up to 30 s, then SIGKILL) for it to exit; its exit code.
    /// Under systemd that is `systemctl stop`, which waits the unit's `TimeoutStopSec`.
    pub fn stop(&self, id: u64) -> String {
        let c = self.container(id);
        if self.flavor == Flavor::Systemd {
            self.systemctl(id, &["stop", "plexus.service"])
                .unwrap_or_else(|e| panic!("{e}"));
            return self.unit_prop(id, "ExecMainStatus");
        }
        docker(&["stop", "--time", "30", &c]);
        let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", &c]);
        String::from_utf8_lossy(&code.stdout).trim().to_string()
    }

    /// Starts node `id` again: same address, same data. Under systemd `systemctl start`, which
    /// returns once the node has told systemd it serves (`Type=notify`).
    pub fn start_again(&self, id: u64) {
        if self.flavor == Flavor::Systemd {
            self.systemctl(id, &["start", "plexus.service"])
                .unwrap_or_else(|e| panic!("{e}; journal:\n{}", self.journal(id, 20)));
            return;
        }
        docker(&["start", &self.container(id)]);
    }

    /// The client address of node `id`.
    pub fn addr(&self, id: u64) -> String {
        format!("{}:{PORT}", self.ips[id as usize - 1])
    }

    /// SIGTERMs every node and waits for each to exit; returns (node, exit code, log tail) for
    /// every node that did not exit 0.
    pub fn stop_all(&self) -> Vec<(u64, String, String)> {
        let mut bad = Vec::new();
        for id in 1..=NODES {
            let code = self.stop(id);
            if code != "0" {
                bad.push((id, code, self.log_tail(id)));
            }
        }
        bad
    }

    /// The last lines node `id` logged.
    pub fn log_tail(&self, id: u64) -> String {
        if self.flavor == Flavor::Systemd {
            return self.journal(id, 30);
        }
        match try_run("docker", &["logs", "--tail", "30", &self.container(id)]) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e,
        }
    }
}

/// `iptables OP DOCKER-USER RULE... -j DROP`.
fn iptables_drop(op: &str, rule: &[String]) -> Result<Output, String> {
    let mut args = vec![op, "DOCKER-USER"];
    args.extend(rule.iter().map(String::as_str));
    args.extend(["-j", "DROP"]);
    try_run("iptables", &args)
}

/// `iptables_drop`, panicking if it fails (a rule left behind would cut the addresses of a later
/// network that reuses this subnet, so a failure must be loud).
fn iptables(op: &str, rule: &[String]) {
    iptables_drop(op, rule).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs a setup command (certificates); panics with its output if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn plexus");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        // Best effort, errors ignored: a cleanup that panics inside a panic would abort.
        for rule in &self.rules {
            let _ = iptables_drop("-D", rule);
        }
        for c in &self.containers {
            let _ = try_run("docker", &["rm", "--force", "--volumes", c]);
        }
        let _ = try_run("docker", &["network", "rm", &self.network]);
        let _ = try_run("docker", &["image", "rm", "--force", &self.image]);
    }
}
