//! The cluster certificate authority and node certificates.
//!
//! `plexus certs` and `plexus up` use this to make a CA per cluster and one
//! certificate per node, signed by it; every node certificate works for both
//! TLS server and client authentication because peers dial each other with it.
//! This module only makes, stores and inspects certificates; building TLS
//! configurations from them is `tls.rs`'s job.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::NetError;

/// The TLS name peers and clients verify: every node cert carries it.
pub const SERVER_NAME: &str = "plexus-node";
/// Prefix of the per-node DNS name; the suffix is the node id in decimal.
pub const NODE_NAME_PREFIX: &str = "plexus-node-";
/// How long a cluster CA stays valid, in days.
pub const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// How long a node certificate stays valid, in days.
pub const NODE_CERT_VALIDITY_DAYS: i64 = 10 * 365;
/// How far back a new certificate's validity starts, in minutes, to tolerate clock skew between nodes.
pub const CLOCK_SKEW_ALLOWANCE_MINUTES: i64 = 60;

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    // The key never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn gen_err(e: rcgen::Error) -> NetError {
    NetError::CertGen(e.to_string())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(CLOCK_SKEW_ALLOWANCE_MINUTES);
    params.not_after = now + Duration::days(days);
}

/// Makes a new self-signed cluster CA named after `cluster_name`.
pub fn make_ca(cluster_name: &str) -> Result<CertKey, NetError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "plexus");
    dn.push(DnType::CommonName, format!("plexus cluster ca {cluster_name}"));
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certificates only, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Node cert signed by the CA. SANs: "plexus-node", "plexus-node-<id>", "localhost", 127.0.0.1 and `extra_sans`
/// (IPs parsed as IP SANs). Usable for both server auth and client auth (peers dial each other with it).
pub fn make_node_cert(ca: &CertKey, node_id: u64, extra_sans: &[String]) -> Result<CertKey, NetError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| NetError::Pem(format!("ca key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| NetError::Pem(format!("ca cert: {e}")))?;
    let node_name = format!("{NODE_NAME_PREFIX}{node_id}");
    let mut sans = vec![
        SERVER_NAME.to_string(),
        node_name.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    for extra in extra_sans {
        if !sans.contains(extra) {
            sans.push(extra.clone());
        }
    }
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .into_iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| NetError::CertGen(format!("subject alternative name {s:?}: {e}"))),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "plexus");
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_CERT_VALIDITY_DAYS);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The node id a certificate names in its "plexus-node-<id>" DNS SAN, if it carries exactly one.
///
/// The input comes from the network: any parse failure is `None`, never a panic.
pub fn node_id_from_cert_der(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => dns.strip_prefix(NODE_NAME_PREFIX)?.parse::<u64>().ok(),
        _ => None,
    });
    let id = ids.next()?;
    // Two different ids in one certificate would make the identity ambiguous: refuse it.
    match ids.next() {
        Some(other) if other != id => None,
        _ => Some(id),
    }
}

/// Paths of the certificate and key files `write_pem_files` writes for `name`.
pub fn pem_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")))
}

/// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem` (the key readable by its owner only, on unix).
pub fn write_pem_files(dir: &Path, name: &str, ck: &CertKey) -> Result<(PathBuf, PathBuf), NetError> {
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = pem_paths(dir, name);
    std::fs::write(&cert_path, &ck.cert_pem)?;
    write_private(&key_path, ck.key_pem.as_bytes())?;
    Ok((cert_path, key_path))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` only applies on creation; tighten a pre-existing file too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Reads back the pair `write_pem_files` wrote for `name`.
pub fn read_pem_files(dir: &Path, name: &str) -> Result<CertKey, NetError> {
    let (cert_path, key_path) = pem_paths(dir, name);
    Ok(CertKey {
        cert_pem: std::fs::read_to_string(cert_path)?,
        key_pem: std::fs::read_to_string(key_path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn node_cert_names_its_node() {
        let ca = make_ca("test").unwrap();
        let node = make_node_cert(&ca, 42, &["10.0.0.7".to_string(), "node7.example".to_string()]).unwrap();
        let d = der(&node.cert_pem);
        assert_eq!(node_id_from_cert_der(&d), Some(42));
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip: [u8; 4] = (*b).try_into().unwrap();
                    format!("ip:{}", std::net::Ipv4Addr::from(ip))
                }
                other => format!("other:{other}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "dns:plexus-node",
                "dns:plexus-node-42",
                "dns:localhost",
                "ip:127.0.0.1",
                "ip:10.0.0.7",
                "dns:node7.example"
            ]
        );
    }

    #[test]
    fn ca_has_no_node_id_and_garbage_is_none() {
        let ca = make_ca("test").unwrap();
        assert_eq!(node_id_from_cert_der(&der(&ca.cert_pem)), None);
        assert_eq!(node_id_from_cert_der(b"not a certificate"), None);
        assert_eq!(node_id_from_cert_der(&[]), None);
    }

    #[test]
    fn bad_ca_pem_is_an_error() {
        let ca = CertKey {
            cert_pem: "nope".into(),
            key_pem: "nope".into(),
        };
        assert!(matches!(make_node_cert(&ca, 1, &[]), Err(NetError::Pem(_))));
    }

    #[test]
    fn pem_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("files").unwrap();
        let (c, k) = write_pem_files(dir.path(), "ca", &ca).unwrap();
        assert_eq!(c, dir.path().join("ca.pem"));
        assert_eq!(k, dir.path().join("ca-key.pem"));
        let back = read_pem_files(dir.path(), "ca").unwrap();
        assert_eq!(back.cert_pem, ca.cert_pem);
        assert_eq!(back.key_pem, ca.key_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(k).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
