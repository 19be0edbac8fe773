//! `plexus node` refusing to start: each failure names its cause, and the exit status tells a
//! supervisor whether starting it again unchanged could help (1) or not (78, `EX_CONFIG`, which
//! the systemd unit's `RestartPreventExitStatus` keeps from restarting).

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;

/// A one-node config in `dir` (certificates made with `plexus certs`), listening on `listen`.
fn write_node(dir: &Path, listen: &str) -> std::path::PathBuf {
    let ok = |c: &mut Command| assert!(c.status().expect("run plexus certs").success());
    ok(Command::new(BIN).args(["certs", "ca", "--out"]).arg(dir.join("ca")));
    ok(Command::new(BIN)
        .args(["certs", "node", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--id", "1", "--out"])
        .arg(dir.join("node")));
    let config = dir.join("node/node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 1\nlisten = \"{listen}\"\ndata_dir = \"data\"\ntoken = \"startup-test-token-0123\"\n\
             shard_count = 1\nreplication = 1\n\
             [tls]\nca_cert = \"../ca/ca.pem\"\nnode_cert = \"node-1.pem\"\nnode_key = \"node-1-key.pem\"\n\
             [[peers]]\nid = 1\naddr = \"{listen}\"\n"
        ),
    )
    .unwrap();
    config
}

/// Runs `plexus node --config config` to its exit (each case here fails at start-up);
/// its exit code and stderr.
fn run_node(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(config)
        .env("PLEXUS_LOG", "warn")
        .output()
        .expect("run plexus node");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A loopback UDP address that was free a moment ago.
fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

#[test]
fn a_missing_key_is_named_and_not_worth_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node(dir.path(), &free_addr());
    let key = dir.path().join("node/node-1-key.pem");
    std::fs::remove_file(&key).unwrap();
    let (code, stderr) = run_node(&config);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("error: tls: node key {}: ", key.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn a_key_in_place_of_the_ca_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node(dir.path(), &free_addr());
    // The node's key where the CA certificate should be.
    std::fs::copy(dir.path().join("node/node-1-key.pem"), dir.path().join("ca/ca.pem")).unwrap();
    let (code, stderr) = run_node(&config);
    assert_eq!(code, Some(78), "{stderr}");
    // The path as the config names it, resolved against the config's directory.
    let named = dir.path().join("node/../ca/ca.pem");
    assert!(
        stderr.contains(&format!(
            "error: tls: cluster CA certificate {}: invalid pem",
            named.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_config_that_does_not_parse_is_not_worth_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node(dir.path(), &free_addr());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("replication = 1", "replication = \"one\"")).unwrap();
    let (code, stderr) = run_node(&config);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("replication"), "{stderr}");
}

#[test]
fn an_address_in_use_may_be_retried() {
    // A UDP socket held on the port the node is told to listen on.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write_node(dir.path(), &listen);
    let (code, stderr) = run_node(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("error: network:"), "{stderr}");
    drop(held);
}

#[test]
fn a_scoring_model_that_is_not_safetensors_is_named_and_not_worth_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node(dir.path(), &free_addr());
    std::fs::write(dir.path().join("node/model.safetensors"), b"not a model").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("[tls]", "[scoring]\nmodel = \"model.safetensors\"\n[tls]");
    std::fs::write(&config, text).unwrap();
    let (code, stderr) = run_node(&config);
    assert_eq!(code, Some(78), "{stderr}");
    let named = dir.path().join("node/model.safetensors");
    assert!(
        stderr.contains(&format!("error: scoring model {}: ", named.display())),
        "{stderr}"
    );
    assert!(stderr.contains("not safetensors"), "{stderr}");
}
