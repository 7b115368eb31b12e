//! Static X25519 identities (Noise static keys) and the peer ids derived from them.
//!
//! Every node and client owns one static key pair. Peers are authenticated by the Noise XX
//! handshake ([`crate::handshake`]) over the QUIC session stream, never by TLS, so this key
//! pair *is* the identity of a process. A [`PeerId`] is a short, stable name for a public
//! key: the first 16 bytes of `SHA-256("qme peer id v1" || public_key)`.
//!
//! Identity file format (UTF-8 text, written with mode `0600`):
//!
//! ```text
//! # qme identity v1
//! private=<64 lowercase hex chars>
//! public=<64 lowercase hex chars>
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; both keys are required and must
//! match each other. A file readable or writable by group or other is refused.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::Zeroizing;

use crate::wire::PeerId;

/// The Noise protocol name of every handshake. XX because neither side knows the other's
/// static key in advance; both learn and authenticate it during the handshake. Identities
/// are key pairs of its DH function (X25519), which is why the name lives here.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Domain separation prefix of the peer id hash, so a peer id can never collide with any
/// other SHA-256 use of the same public key.
pub const PEER_ID_CONTEXT: &[u8] = b"qme peer id v1";

/// First line written to identity files; it documents the format version for humans.
pub const FILE_HEADER: &str = "# qme identity v1";

/// Identity files larger than this are refused before parsing (a real one is ~160 bytes),
/// so pointing `--identity` at a huge file cannot exhaust memory.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Why an identity could not be created, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be opened, read, written or synced.
    #[error("identity file {}: {source}", path.display())]
    Io {
        /// The identity file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is not in the `# qme identity v1` format. `line` is 1-based; 0 means the
    /// problem concerns the file as a whole (for example a missing key).
    #[error("identity file {}: line {line}: {why}", path.display())]
    Malformed {
        /// The identity file.
        path: PathBuf,
        /// 1-based line number, or 0 for the whole file.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The public key is not the one derived from the private key.
    #[error("identity public key does not match its private key")]
    KeyMismatch,
    /// The file can be accessed by group or other; a private key must be owner-only.
    #[error(
        "identity file {} has mode {mode:04o}, which lets group/other access the private key; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The identity file.
        path: PathBuf,
        /// The permission bits found (`st_mode & 0o777`).
        mode: u32,
    },
    /// [`Identity::save_new`] refuses to overwrite an existing file.
    #[error("identity file {} already exists (refusing to overwrite it)", path.display())]
    AlreadyExists {
        /// The identity file.
        path: PathBuf,
    },
    /// The Noise library could not provide X25519 or generate a key.
    #[error("noise key operation failed: {0}")]
    Noise(String),
}

/// A static X25519 key pair: the long-term identity of a node or client.
///
/// The private key is zeroized on drop and never printed by `Debug`.
///
/// ```
/// use shards::identity::{peer_id_of, Identity};
/// let id = Identity::generate()?;
/// let same = Identity::from_private(*id.private_key())?;
/// assert_eq!(same.public_key(), id.public_key());
/// assert_eq!(id.peer_id().0, peer_id_of(id.public_key()).0);
/// assert!(!format!("{id:?}").contains(&hex::encode(id.private_key())));
/// # Ok::<(), shards::identity::IdentityError>(())
/// ```
#[derive(Clone)]
pub struct Identity {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &hex::encode(self.public))
            .field("private", &"<redacted>")
            .finish()
    }
}

/// Derives the X25519 public key of `private` with snow's own curve implementation (the
/// same code that will later use the key in handshakes).
fn derive_public(private: &[u8; 32]) -> Result<[u8; 32], IdentityError> {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .ok_or_else(|| IdentityError::Noise("X25519 is not available in snow".into()))?;
    dh.set(private);
    let public: [u8; 32] = dh
        .pubkey()
        .try_into()
        .map_err(|_| IdentityError::Noise("unexpected X25519 public key length".into()))?;
    // Overwrite the private key copy held by snow's Dh object before it is dropped.
    dh.set(&[0u8; 32]);
    Ok(public)
}

/// The peer id of a static public key: first 16 bytes of
/// `SHA-256("qme peer id v1" || public)`. A free function because the handshake learns the
/// remote's public key, not its [`Identity`].
pub fn peer_id_of(public: &[u8; 32]) -> PeerId {
    let mut h = Sha256::new();
    h.update(PEER_ID_CONTEXT);
    h.update(public);
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    PeerId(id)
}

impl Identity {
    /// Generates a fresh random key pair (for ephemeral clients, tests and `keygen`).
    ///
    /// Fails only if the OS random source or snow's X25519 implementation is unavailable.
    pub fn generate() -> Result<Identity, IdentityError> {
        let params = NOISE_PARAMS
            .parse()
            .map_err(|e: snow::Error| IdentityError::Noise(e.to_string()))?;
        let kp = snow::Builder::new(params)
            .generate_keypair()
            .map_err(|e| IdentityError::Noise(e.to_string()))?;
        let private = Zeroizing::new(kp.private);
        let public = kp.public;
        let private: [u8; 32] = private
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Noise("unexpected private key length".into()))?;
        let public: [u8; 32] = public
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Noise("unexpected public key length".into()))?;
        Ok(Identity {
            private: Zeroizing::new(private),
            public,
        })
    }

    /// Builds an identity from a private key alone, deriving the public key. Any 32 bytes
    /// are a valid X25519 private key (clamping happens inside the curve operation).
    pub fn from_private(private: [u8; 32]) -> Result<Identity, IdentityError> {
        let private = Zeroizing::new(private);
        let public = derive_public(&private)?;
        Ok(Identity { private, public })
    }

    /// Builds an identity from both halves, as stored in a file, and checks that `public`
    /// really belongs to `private` so a corrupted or hand-edited file cannot make us
    /// announce one identity while proving another.
    pub fn from_keys(private: [u8; 32], public: [u8; 32]) -> Result<Identity, IdentityError> {
        let id = Identity::from_private(private)?;
        if id.public != public {
            return Err(IdentityError::KeyMismatch);
        }
        Ok(id)
    }

    /// The static public key (what the remote side learns in the handshake).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The static private key, needed to configure the Noise handshake. Handle with care:
    /// do not log or copy it into non-zeroizing storage.
    pub fn private_key(&self) -> &[u8; 32] {
        &self.private
    }

    /// This identity's peer id (see [`peer_id_of`]).
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.public)
    }

    /// Reads an identity file. Refuses files that group/other can access, files that are
    /// not in the documented format (with the offending line number) and key pairs whose
    /// halves do not match.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // fstat the opened file, not the path, so the check applies to what we read.
        let meta = file.metadata().map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut raw = Zeroizing::new(Vec::new());
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut raw)
            .map_err(io_err)?;
        let malformed = |line: usize, why: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            line,
            why: why.to_string(),
        };
        if raw.len() as u64 > MAX_FILE_LEN {
            return Err(malformed(0, "file is too large to be an identity file"));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| malformed(0, "file is not UTF-8"))?;

        let mut private: Option<Zeroizing<[u8; 32]>> = None;
        let mut public: Option<[u8; 32]> = None;
        for (idx, line) in text.lines().enumerate() {
            let lineno = idx + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| malformed(lineno, "expected `private=<hex>` or `public=<hex>`"))?;
            let slot = match key.trim() {
                "private" => {
                    if private.is_some() {
                        return Err(malformed(lineno, "duplicate `private` line"));
                    }
                    let mut buf = Zeroizing::new([0u8; 32]);
                    decode_key(value.trim(), &mut buf)
                        .map_err(|why| malformed(lineno, &format!("private key: {why}")))?;
                    private = Some(buf);
                    continue;
                }
                "public" => &mut public,
                other => {
                    return Err(malformed(
                        lineno,
                        &format!("unknown key `{}`", other.escape_debug()),
                    ));
                }
            };
            if slot.is_some() {
                return Err(malformed(lineno, "duplicate `public` line"));
            }
            let mut buf = [0u8; 32];
            decode_key(value.trim(), &mut buf)
                .map_err(|why| malformed(lineno, &format!("public key: {why}")))?;
            *slot = Some(buf);
        }
        let private = private.ok_or_else(|| malformed(0, "missing `private=` line"))?;
        let public = public.ok_or_else(|| malformed(0, "missing `public=` line"))?;
        Identity::from_keys(*private, public)
    }

    /// Writes the identity file with mode `0600`, overwriting any existing file (its mode
    /// is reset to `0600` too), and fsyncs it so a crash cannot leave a truncated key.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true).mode(0o600);
        self.write_with(path, &opts)
    }

    /// Like [`Identity::save`] but fails with [`IdentityError::AlreadyExists`] if the file
    /// exists, so `keygen --out` never destroys an existing identity by accident.
    pub fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true).mode(0o600);
        self.write_with(path, &opts)
    }

    fn write_with(&self, path: &Path, opts: &OpenOptions) -> Result<(), IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                IdentityError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                io_err(e)
            }
        })?;
        // `mode` only applies when the file is created; tighten a pre-existing file too.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
        let text = Zeroizing::new(format!(
            "{FILE_HEADER}\nprivate={}\npublic={}\n",
            Zeroizing::new(hex::encode(*self.private)).as_str(),
            hex::encode(self.public)
        ));
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        // Best effort: make the directory entry durable as well.
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// The identity for a process: `None` gives a fresh ephemeral identity (nothing is
    /// written); an existing file is loaded; a missing file is generated and saved with
    /// [`Identity::save_new`], so the next start reuses it.
    pub fn load_or_generate(path: Option<&Path>) -> Result<Identity, IdentityError> {
        let Some(path) = path else {
            return Identity::generate();
        };
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let id = Identity::generate()?;
                match id.save_new(path) {
                    Ok(()) => Ok(id),
                    // Someone else created it meanwhile: use theirs.
                    Err(IdentityError::AlreadyExists { .. }) => Identity::load(path),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

/// Decodes exactly 64 hex digits into `out` (either case is accepted when reading).
fn decode_key(value: &str, out: &mut [u8; 32]) -> Result<(), String> {
    if value.len() != 64 {
        return Err(format!("expected 64 hex digits, found {}", value.len()));
    }
    hex::decode_to_slice(value, out).map_err(|e| format!("invalid hex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir().join(format!(
                "qme-identity-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn fixed() -> Identity {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        Identity::from_private(k).unwrap()
    }

    #[test]
    fn round_trip_and_mode() {
        let dir = TempDir::new("rt");
        let path = dir.file("id.key");
        let id = Identity::generate().unwrap();
        id.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE_HEADER));
        assert!(text.contains(&format!("public={}", hex::encode(id.public_key()))));
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.private_key(), id.private_key());
        assert_eq!(back.peer_id().0, id.peer_id().0);

        // save overwrites, and tightens a loose pre-existing mode.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let other = Identity::generate().unwrap();
        other.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            Identity::load(&path).unwrap().public_key(),
            other.public_key()
        );

        // save_new refuses to overwrite.
        match id.save_new(&path) {
            Err(IdentityError::AlreadyExists { .. }) => {}
            r => panic!("expected AlreadyExists, got {r:?}"),
        }
        let fresh = dir.file("new.key");
        id.save_new(&fresh).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn insecure_permissions_refused() {
        let dir = TempDir::new("perm");
        let path = dir.file("id.key");
        fixed().save(&path).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            match Identity::load(&path) {
                Err(IdentityError::InsecurePermissions { mode: m, .. }) => assert_eq!(m, mode),
                r => panic!("mode {mode:o}: expected InsecurePermissions, got {r:?}"),
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Identity::load(&path).is_ok());
    }

    #[test]
    fn malformed_refused_with_line_number() {
        let dir = TempDir::new("bad");
        let path = dir.file("id.key");
        let id = fixed();
        let good_priv = hex::encode(id.private_key());
        let good_pub = hex::encode(id.public_key());
        let cases: Vec<(String, usize)> = vec![
            (
                format!("# c\nprivate={good_priv}\npublic=zz{}\n", &good_pub[2..]),
                3,
            ),
            (format!("# c\n\nprivate=1234\npublic={good_pub}\n"), 3),
            (format!("private={good_priv}\nnonsense\n"), 2),
            (format!("private={good_priv}\nsecret=00\n"), 2),
            (format!("private={good_priv}\nprivate={good_priv}\n"), 2),
            (format!("private={good_priv}\n"), 0),
            (format!("public={good_pub}\n"), 0),
        ];
        for (text, want_line) in cases {
            write_mode(&path, &text, 0o600);
            match Identity::load(&path) {
                Err(IdentityError::Malformed { line, why, .. }) => {
                    assert_eq!(line, want_line, "{text:?}: {why}")
                }
                r => panic!("{text:?}: expected Malformed, got {r:?}"),
            }
        }
        // Binary garbage is reported, not panicked on.
        fs::write(&path, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Malformed { line: 0, .. })
        ));
        // Uppercase hex and CRLF line endings are tolerated when reading.
        write_mode(
            &path,
            &format!(
                "private={}\r\npublic={}\r\n",
                good_priv.to_uppercase(),
                good_pub
            ),
            0o600,
        );
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
    }

    #[test]
    fn key_mismatch_refused() {
        let dir = TempDir::new("mismatch");
        let path = dir.file("id.key");
        let a = fixed();
        let b = Identity::generate().unwrap();
        write_mode(
            &path,
            &format!(
                "{FILE_HEADER}\nprivate={}\npublic={}\n",
                hex::encode(a.private_key()),
                hex::encode(b.public_key())
            ),
            0o600,
        );
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::KeyMismatch)
        ));
        assert!(matches!(
            Identity::from_keys(*a.private_key(), *b.public_key()),
            Err(IdentityError::KeyMismatch)
        ));
        assert!(Identity::from_keys(*a.private_key(), *a.public_key()).is_ok());
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = TempDir::new("missing");
        match Identity::load(&dir.file("nope")) {
            Err(IdentityError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            r => panic!("expected Io, got {r:?}"),
        }
    }

    #[test]
    fn load_or_generate_creates_then_reuses() {
        let dir = TempDir::new("log");
        let path = dir.file("id.key");
        let a = Identity::load_or_generate(Some(&path)).unwrap();
        assert!(path.exists());
        let b = Identity::load_or_generate(Some(&path)).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let e1 = Identity::load_or_generate(None).unwrap();
        let e2 = Identity::load_or_generate(None).unwrap();
        assert_ne!(e1.public_key(), e2.public_key());
    }

    #[test]
    fn generated_public_matches_derivation() {
        for _ in 0..8 {
            let id = Identity::generate().unwrap();
            let d = Identity::from_private(*id.private_key()).unwrap();
            assert_eq!(d.public_key(), id.public_key());
        }
    }

    #[test]
    fn debug_redacts_private_key() {
        let id = fixed();
        let s = format!("{id:?}");
        assert!(!s.contains(&hex::encode(id.private_key())));
        assert!(s.contains(&hex::encode(id.public_key())));
        assert!(s.contains("redacted"));
    }

    /// Pinned test vector (also published in docs/PROTOCOL.md): private key bytes
    /// 0x01..=0x20.
    #[test]
    fn peer_id_test_vector() {
        let id = fixed();
        assert_eq!(
            hex::encode(id.private_key()),
            "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
        );
        assert_eq!(hex::encode(id.public_key()), PINNED_PUBLIC);
        assert_eq!(hex::encode(id.peer_id().0), PINNED_PEER_ID);
        assert_eq!(hex::encode(peer_id_of(id.public_key()).0), PINNED_PEER_ID);
    }

    // Cross-checked with Python `cryptography` (X25519) and `hashlib` (SHA-256).
    const PINNED_PUBLIC: &str = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c";
    const PINNED_PEER_ID: &str = "8b8558cd294043e0ab553ec7c40907c3";
}
