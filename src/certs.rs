//! `plexus certs`: the cluster CA and node certificates, as PEM files.

use std::path::Path;

use plexus_net::certs::{make_ca, make_node_cert, CertKey};

use crate::cli::{CertsCmd, CliResult};

/// Writes `name.pem` and `name-key.pem` (the key readable by the owner only).
pub fn write_pair(dir: &Path, name: &str, ck: &CertKey) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &ck.cert_pem).map_err(|e| format!("write {}: {e}", cert.display()))?;
    std::fs::write(&key, &ck.key_pem).map_err(|e| format!("write {}: {e}", key.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", key.display()))?;
    Ok(())
}

/// Reads `name.pem` and `name-key.pem` from `dir`.
pub fn read_pair(dir: &Path, name: &str) -> CliResult<CertKey> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()));
    Ok(CertKey {
        cert_pem: read(dir.join(format!("{name}.pem")))?,
        key_pem: read(dir.join(format!("{name}-key.pem")))?,
    })
}

pub fn run(cmd: CertsCmd) -> CliResult {
    match cmd {
        CertsCmd::Ca { out, name } => {
            if out.join("ca.pem").exists() {
                return Err(format!(
                    "{} already holds a CA; refusing to overwrite it",
                    out.display()
                ));
            }
            let ca = make_ca(&name).map_err(|e| e.to_string())?;
            write_pair(&out, "ca", &ca)?;
            println!("wrote {0}/ca.pem and {0}/ca-key.pem", out.display());
        }
        CertsCmd::Node { ca_dir, id, san, out } => {
            let ca = read_pair(&ca_dir, "ca")?;
            let node = make_node_cert(&ca, id, &san).map_err(|e| e.to_string())?;
            let name = format!("node-{id}");
            write_pair(&out, &name, &node)?;
            let same_dir = out.canonicalize().ok() == ca_dir.canonicalize().ok();
            if !same_dir {
                std::fs::copy(ca_dir.join("ca.pem"), out.join("ca.pem")).map_err(|e| format!("copy ca.pem: {e}"))?;
            }
            println!("wrote {0}/{name}.pem, {0}/{name}-key.pem and {0}/ca.pem", out.display());
        }
    }
    Ok(())
}
