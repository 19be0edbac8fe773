//! Client configuration and its `client.toml` loader.
//!
//! `plexus up` writes `DIR/client.toml`; applications load it with
//! [`ClientConfig::load`] or build a [`ClientConfig`] in code with
//! [`ClientConfig::new`]. This module only reads and validates settings; it
//! opens no sockets and does not parse the CA beyond checking it holds a
//! certificate.
//!
//! ```toml
//! seeds = ["127.0.0.1:7401", "127.0.0.1:7402"]
//! ca_cert = "certs/ca.pem"   # relative to this file's directory, or absolute
//! token = "..."
//! request_timeout_ms = 5000  # optional, as are all the keys below
//! attempt_timeout_ms = 2000
//! connect_timeout_ms = 3000
//! retries_max = 16
//! backoff_base_ms = 20
//! backoff_max_ms = 1000
//! in_flight_max = 1024
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{pem::PemObject, CertificateDer};
use serde::Deserialize;

use crate::error::ClientError;

/// Default overall limit on one request, retries included, in milliseconds.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default limit on one attempt at one node, in milliseconds: a node that is alive but does not
/// answer (hung, cut off) costs this much, not the whole request, before the client tries another.
pub const ATTEMPT_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Default limit on dialling one node (QUIC + TLS + Hello), in milliseconds.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Default number of retries after the first attempt. The backoff delays of 16 retries add up to
/// more than the request timeout, so a request keeps trying through a whole election (a 1-2 s
/// election timeout, more after a split vote) and the timeout is what ends it; the count still
/// stops a loop of instant failures.
pub const RETRIES_MAX_DEFAULT: u32 = 16;
/// Default first backoff delay, in milliseconds.
pub const BACKOFF_BASE_MS_DEFAULT: u64 = 20;
/// Default cap on one backoff delay, in milliseconds.
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 1_000;
/// Default cap on requests in flight per client (matches the server's per-session answer cache).
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1_024;
/// Largest `client.toml` accepted, in bytes; anything bigger is not a config file.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Largest CA file accepted, in bytes.
pub const CA_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most seeds a config may list.
pub const SEEDS_MAX: usize = 1_024;

/// Everything a [`crate::Client`] needs to reach a cluster.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` client addresses of nodes to bootstrap from, tried in order.
    pub seeds: Vec<String>,
    /// PEM of the cluster CA: the only trust anchor for node certificates.
    pub ca_pem: String,
    /// The cluster's client token, sent in `Hello`.
    pub token: String,
    /// Overall limit on one request, retries and backoff included.
    pub request_timeout: Duration,
    /// Limit on one attempt at one node; an attempt past it is retried elsewhere (a write under
    /// the same session sequence number, so it still applies once).
    pub attempt_timeout: Duration,
    /// Limit on dialling one node (QUIC + TLS + Hello).
    pub connect_timeout: Duration,
    /// Retries after the first attempt before giving up.
    pub retries_max: u32,
    /// First backoff delay; it doubles per failure up to `backoff_max`.
    pub backoff_base: Duration,
    /// Cap on one backoff delay.
    pub backoff_max: Duration,
    /// Most requests in flight at once over this client (a semaphore; callers beyond it wait).
    pub in_flight_max: usize,
}

impl fmt::Debug for ClientConfig {
    // The token is a credential: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("seeds", &self.seeds)
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("token", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retries_max", &self.retries_max)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("in_flight_max", &self.in_flight_max)
            .finish()
    }
}

/// The on-disk shape of `client.toml`. Unknown keys are refused so a typo is
/// reported instead of silently falling back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    seeds: Vec<String>,
    ca_cert: PathBuf,
    token: String,
    request_timeout_ms: Option<u64>,
    attempt_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    retries_max: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    in_flight_max: Option<usize>,
}

impl ClientConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(seeds: Vec<String>, ca_pem: String, token: String) -> Self {
        Self {
            seeds,
            ca_pem,
            token,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            attempt_timeout: Duration::from_millis(ATTEMPT_TIMEOUT_MS_DEFAULT),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            retries_max: RETRIES_MAX_DEFAULT,
            backoff_base: Duration::from_millis(BACKOFF_BASE_MS_DEFAULT),
            backoff_max: Duration::from_millis(BACKOFF_MAX_MS_DEFAULT),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
        }
    }

    /// Reads and validates a `client.toml`; a relative `ca_cert` is resolved
    /// against the directory holding the file.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = read_capped(path, CONFIG_FILE_BYTES_MAX)?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| ClientError::Config(format!("{}: {}", path.display(), e.message())))?;
        let ca_path = if file.ca_cert.is_absolute() {
            file.ca_cert.clone()
        } else {
            path.parent().unwrap_or_else(|| Path::new(".")).join(&file.ca_cert)
        };
        let ca_pem = read_capped(&ca_path, CA_FILE_BYTES_MAX)
            .map_err(|e| ClientError::Config(format!("{}: ca_cert: {e}", path.display())))?;
        let mut cfg = ClientConfig::new(file.seeds, ca_pem, file.token);
        if let Some(ms) = file.request_timeout_ms {
            cfg.request_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = file.attempt_timeout_ms {
            cfg.attempt_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = file.connect_timeout_ms {
            cfg.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = file.retries_max {
            cfg.retries_max = n;
        }
        if let Some(ms) = file.backoff_base_ms {
            cfg.backoff_base = Duration::from_millis(ms);
        }
        if let Some(ms) = file.backoff_max_ms {
            cfg.backoff_max = Duration::from_millis(ms);
        }
        if let Some(n) = file.in_flight_max {
            cfg.in_flight_max = n;
        }
        cfg.validate().map_err(|e| match e {
            ClientError::Config(m) => ClientError::Config(format!("{}: {m}", path.display())),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks every value is usable; [`crate::Client::connect`] calls it too.
    pub fn validate(&self) -> Result<(), ClientError> {
        self.validate_settings()?;
        ca_certs(&self.ca_pem)?;
        Ok(())
    }

    /// Checks every value except the TLS material, which only the QUIC transport reads;
    /// [`crate::Client::connect_with`] calls this, since its transport brings its own security.
    pub(crate) fn validate_settings(&self) -> Result<(), ClientError> {
        let bad = |m: String| Err(ClientError::Config(m));
        if self.seeds.is_empty() {
            return bad("seeds: at least one seed address is required".into());
        }
        if self.seeds.len() > SEEDS_MAX {
            return bad(format!(
                "seeds: {} listed, at most {SEEDS_MAX} allowed",
                self.seeds.len()
            ));
        }
        for seed in &self.seeds {
            check_host_port(seed).map_err(|m| ClientError::Config(format!("seeds: {seed:?}: {m}")))?;
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be above zero".into());
        }
        if self.attempt_timeout.is_zero() {
            return bad("attempt_timeout must be above zero".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be above zero".into());
        }
        if self.backoff_base > self.backoff_max {
            return bad(format!(
                "backoff_base {:?} exceeds backoff_max {:?}",
                self.backoff_base, self.backoff_max
            ));
        }
        if self.in_flight_max == 0 {
            return bad("in_flight_max must be above zero".into());
        }
        // tokio's semaphore refuses more permits than this; say so here rather than panic later.
        if self.in_flight_max > tokio::sync::Semaphore::MAX_PERMITS {
            return bad(format!(
                "in_flight_max {} is above {}",
                self.in_flight_max,
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
        Ok(())
    }
}

/// Parses every certificate in `pem`, refusing a PEM with none.
pub(crate) fn ca_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("ca_cert: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Config("ca_cert: no CERTIFICATE section found".into()));
    }
    Ok(certs)
}

/// Checks `s` looks like `host:port` (`[v6]:port` included) without resolving it.
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    port.parse::<u16>().map_err(|_| format!("invalid port {port:?}"))?;
    Ok(())
}

/// Reads a UTF-8 file of at most `bytes_max` bytes.
fn read_capped(path: &Path, bytes_max: u64) -> Result<String, ClientError> {
    let err = |m: String| ClientError::Config(format!("{}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > bytes_max {
        return Err(err(format!(
            "file of {} bytes exceeds the limit of {bytes_max} bytes",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A syntactically valid PEM certificate section; its DER is never parsed as X.509 here.
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_relative_ca_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "certs/ca.pem", PEM);
        let p = write(
            dir.path(),
            "client.toml",
            "seeds = [\"127.0.0.1:7401\", \"localhost:7402\"]\nca_cert = \"certs/ca.pem\"\ntoken = \"t0k\"\n",
        );
        let cfg = ClientConfig::load(&p).unwrap();
        assert_eq!(
            cfg.seeds,
            vec!["127.0.0.1:7401".to_string(), "localhost:7402".to_string()]
        );
        assert_eq!(cfg.ca_pem, PEM);
        assert_eq!(cfg.token, "t0k");
        assert_eq!(cfg.request_timeout, Duration::from_millis(5_000));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(3_000));
        assert_eq!(cfg.retries_max, 16);
        assert_eq!(cfg.backoff_base, Duration::from_millis(20));
        assert_eq!(cfg.backoff_max, Duration::from_millis(1_000));
        assert_eq!(cfg.in_flight_max, 1_024);
    }

    #[test]
    fn loads_absolute_ca_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "elsewhere/ca.pem", PEM);
        let text = format!(
            "seeds = [\"[::1]:7401\"]\nca_cert = {:?}\ntoken = \"x\"\nrequest_timeout_ms = 250\n\
             connect_timeout_ms = 100\nretries_max = 2\nbackoff_base_ms = 1\nbackoff_max_ms = 9\nin_flight_max = 7\n",
            ca.display().to_string()
        );
        let p = write(dir.path(), "conf/client.toml", &text);
        let cfg = ClientConfig::load(&p).unwrap();
        assert_eq!(cfg.seeds, vec!["[::1]:7401".to_string()]);
        assert_eq!(cfg.request_timeout, Duration::from_millis(250));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(100));
        assert_eq!(cfg.retries_max, 2);
        assert_eq!(cfg.backoff_base, Duration::from_millis(1));
        assert_eq!(cfg.backoff_max, Duration::from_millis(9));
        assert_eq!(cfg.in_flight_max, 7);
    }

    fn load_err(toml_text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca.pem", PEM);
        let p = write(dir.path(), "client.toml", toml_text);
        match ClientConfig::load(&p) {
            Err(ClientError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_toml_is_a_clear_error() {
        let m = load_err("seeds = [\"127.0.0.1:1\"\nca_cert = \"ca.pem\"\n");
        assert!(m.contains("client.toml"), "{m}");
        let m = load_err("seeds = [\"127.0.0.1:1\"]\nca_cert = \"ca.pem\"\n");
        assert!(m.contains("missing field `token`"), "{m}");
        let m = load_err("seeds = [\"127.0.0.1:1\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\nretries_mx = 3\n");
        assert!(m.contains("unknown field `retries_mx`"), "{m}");
        let m = load_err("seeds = 5\nca_cert = \"ca.pem\"\ntoken = \"t\"\n");
        assert!(m.contains("invalid type"), "{m}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let m = load_err("seeds = []\nca_cert = \"ca.pem\"\ntoken = \"t\"\n");
        assert!(m.ends_with("seeds: at least one seed address is required"), "{m}");
        let m = load_err("seeds = [\"nohost\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\n");
        assert!(m.ends_with("seeds: \"nohost\": expected host:port"), "{m}");
        let m = load_err("seeds = [\"h:99999\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\n");
        assert!(m.ends_with("seeds: \"h:99999\": invalid port \"99999\""), "{m}");
        let m = load_err("seeds = [\"h:1\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\nrequest_timeout_ms = 0\n");
        assert!(m.ends_with("request_timeout must be above zero"), "{m}");
        let m = load_err("seeds = [\"h:1\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\nin_flight_max = 0\n");
        assert!(m.ends_with("in_flight_max must be above zero"), "{m}");
        let m = load_err("seeds = [\"h:1\"]\nca_cert = \"missing.pem\"\ntoken = \"t\"\n");
        assert!(m.contains("ca_cert") && m.contains("missing.pem"), "{m}");
    }

    #[test]
    fn ca_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca.pem", "not a pem\n");
        let p = write(
            dir.path(),
            "client.toml",
            "seeds = [\"h:1\"]\nca_cert = \"ca.pem\"\ntoken = \"t\"\n",
        );
        match ClientConfig::load(&p) {
            Err(ClientError::Config(m)) => assert!(m.ends_with("ca_cert: no CERTIFICATE section found"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn debug_redacts_token() {
        let cfg = ClientConfig::new(vec!["h:1".into()], PEM.into(), "secret-token".into());
        let s = format!("{cfg:?}");
        assert!(!s.contains("secret-token") && s.contains("<redacted>"), "{s}");
    }
}
