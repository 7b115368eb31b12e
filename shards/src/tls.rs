//! The TLS certificate quiche needs to accept connections.
//!
//! Peers are authenticated by the Noise static keys, not by this certificate, so by default
//! a self-signed certificate is generated at start and written (mode 0600) into a private
//! directory that is removed when the [`TlsFiles`] value is dropped.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why the certificate could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// Writing the generated files failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A user-supplied file does not exist or is not readable.
    #[error("{what} file {path}: {source}")]
    Missing {
        /// "certificate" or "key".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Paths of the PEM certificate chain and private key handed to quiche.
#[derive(Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    owned_dir: Option<PathBuf>,
}

impl TlsFiles {
    /// Uses files the operator provides; checks they are readable now for a clear error.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
        std::fs::File::open(cert).map_err(|source| TlsError::Missing {
            what: "certificate",
            path: cert.to_path_buf(),
            source,
        })?;
        std::fs::File::open(key).map_err(|source| TlsError::Missing {
            what: "key",
            path: key.to_path_buf(),
            source,
        })?;
        Ok(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            owned_dir: None,
        })
    }

    /// Generates a self-signed certificate for `localhost` into a fresh private directory.
    pub fn self_signed() -> Result<TlsFiles, TlsError> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!(
            "qme-tls-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| TlsError::Io {
                path: dir.clone(),
                source,
            })?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            owned_dir: Some(dir),
        };
        write_private(&files.cert, ck.cert.pem().as_bytes())?;
        write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())?;
        Ok(files)
    }

    /// The certificate path as a string for quiche.
    pub fn cert_str(&self) -> String {
        self.cert.to_string_lossy().into_owned()
    }

    /// The key path as a string for quiche.
    pub fn key_str(&self) -> String {
        self.key.to_string_lossy().into_owned()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_files_exist_and_are_removed() {
        let dir;
        {
            let t = TlsFiles::self_signed().unwrap();
            assert!(
                std::fs::read_to_string(&t.cert)
                    .unwrap()
                    .contains("BEGIN CERTIFICATE")
            );
            assert!(
                std::fs::read_to_string(&t.key)
                    .unwrap()
                    .contains("PRIVATE KEY")
            );
            dir = t.cert.parent().unwrap().to_path_buf();
        }
        assert!(!dir.exists());
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let e = TlsFiles::from_files(Path::new("/nonexistent/c.pem"), Path::new("/x")).unwrap_err();
        assert!(
            e.to_string()
                .contains("certificate file /nonexistent/c.pem")
        );
    }
}
