//! TLS configuration for the node's QUIC endpoint.
//!
//! One rustls server configuration serves both ALPNs: client certificates are
//! verified against the cluster CA when presented and optional at the TLS layer,
//! because application clients authenticate with a token instead; the endpoint
//! then refuses peer-ALPN connections without a certificate. A certificate from
//! another CA fails the handshake itself. Dialing peers present the node
//! certificate and verify the remote against the same CA under `SERVER_NAME`.
//! This module builds configurations; it does not open sockets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::endpoint::NetLimits;
use crate::error::NetError;

/// The PEM material a node needs: the cluster CA certificate and its own certificate and key.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// This node's certificate (optionally followed by its chain), PEM.
    pub cert_pem: String,
    /// This node's private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    // The key never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

/// What `TlsMaterial::from_pem_files` calls each file in its errors.
const CA_CERT: &str = "cluster CA certificate";
const NODE_CERT: &str = "node certificate";
const NODE_KEY: &str = "node key";

impl TlsMaterial {
    /// Reads the three PEM files (for example those `certs::write_pem_files` wrote) and checks they parse.
    /// An error names the file and what it should hold, so an operator sees which one is
    /// missing, unreadable (a key that the service's user may not read) or not what it claims.
    pub fn from_pem_files(ca_cert: &Path, node_cert: &Path, node_key: &Path) -> Result<Self, NetError> {
        let file = |what: &'static str, path: &Path, reason: String| NetError::File {
            what,
            path: path.to_path_buf(),
            reason,
        };
        let read = |what, path: &Path| std::fs::read_to_string(path).map_err(|e| file(what, path, e.to_string()));
        let m = Self {
            ca_pem: read(CA_CERT, ca_cert)?,
            cert_pem: read(NODE_CERT, node_cert)?,
            key_pem: read(NODE_KEY, node_key)?,
        };
        parse_certs(&m.ca_pem).map_err(|e| file(CA_CERT, ca_cert, e.to_string()))?;
        parse_certs(&m.cert_pem).map_err(|e| file(NODE_CERT, node_cert, e.to_string()))?;
        parse_key(&m.key_pem).map_err(|e| file(NODE_KEY, node_key, e.to_string()))?;
        Ok(m)
    }
}

/// The crypto provider every configuration here uses: ring, chosen explicitly so that the
/// process-wide default (which depends on which features other crates enable) never matters.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM string; an empty result is an error.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(NetError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// Parses the first private key in a PEM string.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, NetError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| NetError::Pem(format!("private key: {e}")))
}

/// A root store holding the cluster CA.
pub fn ca_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| NetError::Tls(format!("ca certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn tls_err(e: impl std::fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

/// The QUIC transport settings shared by both sides of a connection.
pub(crate) fn transport(bidi_streams_max: u32, limits: &NetLimits) -> Result<TransportConfig, NetError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams_max));
    // Nothing in the protocol uses unidirectional streams or datagrams: refuse them.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    let idle = IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms)).map_err(tls_err)?;
    t.max_idle_timeout(Some(idle));
    t.initial_rtt(Duration::from_millis(limits.initial_rtt_ms));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.udp_payload_bytes_max);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// The server configuration: both ALPNs, optional-but-verified client certificates.
pub(crate) fn server_config(tls: &TlsMaterial, transport: TransportConfig) -> Result<quinn::ServerConfig, NetError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(ca_roots(&tls.ca_pem)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&tls.cert_pem)?, parse_key(&tls.key_pem)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![plexus_proto::ALPN_PEER.to_vec(), plexus_proto::ALPN_CLIENT.to_vec()];
    let quic = QuicServerConfig::try_from(cfg).map_err(tls_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// The configuration a node dials peers with: its own certificate, the CA as the only root, peer ALPN.
pub(crate) fn peer_client_config(
    tls: &TlsMaterial,
    transport: TransportConfig,
) -> Result<quinn::ClientConfig, NetError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(ca_roots(&tls.ca_pem)?)
        .with_client_auth_cert(parse_certs(&tls.cert_pem)?, parse_key(&tls.key_pem)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![plexus_proto::ALPN_PEER.to_vec()];
    let quic = QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// The certificate chain a connection's peer presented, if any.
pub(crate) fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// The node id in the leaf certificate a connection's peer presented, if any.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Option<u64> {
    let chain = peer_chain(conn)?;
    crate::certs::node_id_from_cert_der(chain.first()?)
}

/// The ALPN protocol a connection negotiated, if any.
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{make_ca, make_node_cert, write_pem_files};

    #[test]
    fn material_loads_from_files_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("load").unwrap();
        let node = make_node_cert(&ca, 3, &[]).unwrap();
        let (ca_crt, _) = write_pem_files(dir.path(), "ca", &ca).unwrap();
        let (crt, key) = write_pem_files(dir.path(), "node-3", &node).unwrap();
        let m = TlsMaterial::from_pem_files(&ca_crt, &crt, &key).unwrap();
        assert_eq!(m.ca_pem, ca.cert_pem);
        assert_eq!(m.cert_pem, node.cert_pem);
        assert_eq!(m.key_pem, node.key_pem);
        // A key where a certificate belongs: the error names the file and its role.
        let err = TlsMaterial::from_pem_files(&key, &crt, &key).unwrap_err();
        assert!(matches!(&err, NetError::File { what: CA_CERT, path, .. } if *path == key));
        assert_eq!(
            err.to_string(),
            format!(
                "cluster CA certificate {}: invalid pem: no certificate found",
                key.display()
            )
        );
        // A missing key file: named too, with the OS's reason.
        let gone = dir.path().join("gone-key.pem");
        let err = TlsMaterial::from_pem_files(&ca_crt, &crt, &gone)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("node key {}: ", gone.display())), "{err}");
        assert!(err.contains("No such file"), "{err}");
        assert!(matches!(parse_certs("garbage"), Err(NetError::Pem(m)) if m == "no certificate found"));
    }
}
