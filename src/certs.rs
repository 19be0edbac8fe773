//! `plexus certs`: the cluster CA and node certificates, as PEM files.

use std::path::Path;

use plexus_net::certs::{make_ca, make_node_cert, read_pem_files, write_pem_files, CertKey};

use crate::cli::{CertsCmd, CliResult};

/// Writes `name.pem` and `name-key.pem` (the key readable by the owner only).
pub fn write_pair(dir: &Path, name: &str, ck: &CertKey) -> CliResult {
    write_pem_files(dir, name, ck)
        .map(|_| ())
        .map_err(|e| format!("write {name} certificate in {}: {e}", dir.display()))
}

/// Reads `name.pem` and `name-key.pem` from `dir`.
pub fn read_pair(dir: &Path, name: &str) -> CliResult<CertKey> {
    read_pem_files(dir, name).map_err(|e| format!("read {name} certificate in {}: {e}", dir.display()))
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
