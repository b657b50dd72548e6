//! The console's certificate: one the operator gives (`--cert`, `--key`), or a self-signed
//! one made at first start and kept in the state directory (`tls/cert.pem`, `tls/key.pem`,
//! 0600), as Proxmox VE does until its operator brings a real one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};

/// Where the certificate and key are.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The self-signed pair's place in `state`.
    pub fn in_state(state: &Path) -> CertFiles {
        CertFiles {
            cert: state.join("tls/cert.pem"),
            key: state.join("tls/key.pem"),
        }
    }
}

/// Makes a self-signed certificate for `names` (host names or addresses) at `files` unless
/// both files exist. Returns whether it made one.
pub fn ensure_self_signed(files: &CertFiles, names: Vec<String>) -> Result<bool> {
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    let made = rcgen::generate_simple_self_signed(names).context("make a certificate")?;
    for (path, pem) in [
        (&files.key, made.key_pair.serialize_pem()),
        (&files.cert, made.cert.pem()),
    ] {
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(true)
}

/// The TLS server config of `files` (TLS 1.2 and 1.3, ring's ciphers, HTTP/1.1).
pub fn server_config(files: &CertFiles) -> Result<Arc<rustls::ServerConfig>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", files.cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .with_context(|| format!("{}: no PEM private key", files.key.display()))?;
    // ring, as vmmd's image downloads (rustls 0.23.48 deprecates it for lacking
    // post-quantum key exchange; aws-lc-rs needs cmake and a long C build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::in_state(dir.path());
        assert!(ensure_self_signed(&files, vec!["localhost".into()]).expect("made"));
        let first = std::fs::read(&files.cert).expect("cert");
        assert!(!ensure_self_signed(&files, vec!["localhost".into()]).expect("kept"));
        assert_eq!(std::fs::read(&files.cert).expect("cert"), first);
        server_config(&files).expect("loads");
        std::fs::write(&files.key, "not a key").expect("spoil");
        let e = server_config(&files).expect_err("no key").to_string();
        assert!(e.contains("key.pem"), "{e}");
    }
}
