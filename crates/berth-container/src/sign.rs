//! Hook signatures (SPEC §4): `sha256:<hex>` of the content, or `hmac-sha256:<hex>` under
//! a site key.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A site key for keyed signatures.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is readable by others than its owner, so the key is not secret.
    #[error("key file {path}: readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds fewer than 16 bytes.
    #[error("key file {path}: too short ({len} bytes); a key holds at least 16 bytes, e.g. from: head -c 32 /dev/urandom | base64 > {path}")]
    Short {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

impl Key {
    /// Reads a key file; its content without surrounding blanks is the key.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let raw = std::fs::read(path).map_err(io_err)?;
        let key = raw.trim_ascii().to_vec();
        if key.len() < 16 {
            return Err(KeyError::Short {
                path: path.to_path_buf(),
                len: key.len(),
            });
        }
        Ok(Key(key))
    }

    /// A key from bytes, for tests and benchmarks.
    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }
}

/// What a signature string in a configuration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// `sha256:<64 hex>`.
    Sha256([u8; 32]),
    /// `hmac-sha256:<64 hex>`.
    HmacSha256([u8; 32]),
    /// Decimal digits, as other products print: not ours, must be re-signed.
    Foreign(String),
    /// Anything else.
    Unknown(String),
}

impl Signature {
    /// Classifies a signature as written.
    pub fn parse(s: &str) -> Signature {
        let digest = |hex_part: &str| {
            let mut out = [0u8; 32];
            (hex_part.len() == 64 && hex::decode_to_slice(hex_part, &mut out).is_ok())
                .then_some(out)
        };
        if let Some(d) = s.strip_prefix("sha256:").and_then(digest) {
            Signature::Sha256(d)
        } else if let Some(d) = s.strip_prefix("hmac-sha256:").and_then(digest) {
            Signature::HmacSha256(d)
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            Signature::Foreign(s.to_string())
        } else {
            Signature::Unknown(s.to_string())
        }
    }

    /// Whether this signature needs the site key.
    pub fn is_keyed(&self) -> bool {
        matches!(self, Signature::HmacSha256(_))
    }
}

fn sha256_reader(mut r: impl Read) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn hmac_reader(mut r: impl Read, key: &Key) -> io::Result<[u8; 32]> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("hmac takes keys of any length");
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        m.update(&buf[..n]);
    }
    Ok(m.finalize().into_bytes().into())
}

/// The signature of a file's content: keyed when a key is given.
pub fn sign_file(path: &Path, key: Option<&Key>) -> io::Result<String> {
    let f = File::open(path)?;
    sign_reader(f, key)
}

/// The signature of some content.
pub fn sign_reader(r: impl Read, key: Option<&Key>) -> io::Result<String> {
    Ok(match key {
        None => format!("sha256:{}", hex::encode(sha256_reader(r)?)),
        Some(k) => format!("hmac-sha256:{}", hex::encode(hmac_reader(r, k)?)),
    })
}

/// Why content does not match a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The content's digest differs.
    #[error("signature mismatch")]
    Differs,
    /// A keyed signature, but no key was given to check it.
    #[error("signature is keyed (hmac-sha256) but no key was given; pass --key KEYFILE")]
    NoKey,
    /// A plain signature where the site key requires a keyed one.
    #[error("plain sha256 signature, but this host holds the site key and takes only keyed signatures for root hooks")]
    NotKeyed,
    /// A decimal signature from another product.
    #[error("signature {0:?} is in another product's format (decimal), not berth's")]
    Foreign(String),
    /// Not a signature at all.
    #[error("signature {0:?} is not a berth signature (sha256:<hex> or hmac-sha256:<hex>)")]
    Unknown(String),
}

/// Checks content against a signature. `require_keyed` refuses plain signatures (for root
/// hooks on a host that holds the site key).
pub fn verify_reader(
    r: impl Read,
    signature: &str,
    key: Option<&Key>,
    require_keyed: bool,
) -> Result<Result<(), Mismatch>, io::Error> {
    let sig = Signature::parse(signature);
    let ok = |want: [u8; 32], got: [u8; 32]| {
        // Constant time is not needed for a digest the attacker can compute, but it costs
        // nothing.
        let diff = want
            .iter()
            .zip(got.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff == 0 {
            Ok(())
        } else {
            Err(Mismatch::Differs)
        }
    };
    Ok(match sig {
        Signature::Sha256(_) if require_keyed => Err(Mismatch::NotKeyed),
        Signature::Sha256(want) => ok(want, sha256_reader(r)?),
        Signature::HmacSha256(want) => match key {
            None => Err(Mismatch::NoKey),
            Some(k) => ok(want, hmac_reader(r, k)?),
        },
        Signature::Foreign(s) => Err(Mismatch::Foreign(s)),
        Signature::Unknown(s) => Err(Mismatch::Unknown(s)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            sign_reader(&b""[..], None).unwrap(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 4231 test case 2
        let k = Key::from_bytes(b"Jefe");
        assert_eq!(
            sign_reader(&b"what do ya want for nothing?"[..], Some(&k)).unwrap(),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn classifies_table() {
        let h = "a".repeat(64);
        assert!(matches!(
            Signature::parse(&format!("sha256:{h}")),
            Signature::Sha256(_)
        ));
        assert!(matches!(
            Signature::parse(&format!("hmac-sha256:{h}")),
            Signature::HmacSha256(_)
        ));
        assert_eq!(
            Signature::parse("1234567890"),
            Signature::Foreign("1234567890".into())
        );
        assert!(matches!(
            Signature::parse("sha256:abc"),
            Signature::Unknown(_)
        ));
        assert!(matches!(
            Signature::parse(&format!("sha256:{}", "z".repeat(64))),
            Signature::Unknown(_)
        ));
        assert!(matches!(Signature::parse("md5:xx"), Signature::Unknown(_)));
    }

    #[test]
    fn verifies_table() {
        let k = Key::from_bytes(b"0123456789abcdef");
        let plain = sign_reader(&b"x"[..], None).unwrap();
        let keyed = sign_reader(&b"x"[..], Some(&k)).unwrap();
        let other = Key::from_bytes(b"fedcba9876543210");
        let v = |content: &[u8], sig: &str, key: Option<&Key>, req: bool| {
            verify_reader(content, sig, key, req).unwrap()
        };
        assert_eq!(v(b"x", &plain, None, false), Ok(()));
        assert_eq!(v(b"y", &plain, None, false), Err(Mismatch::Differs));
        assert_eq!(v(b"x", &plain, Some(&k), true), Err(Mismatch::NotKeyed));
        assert_eq!(v(b"x", &keyed, Some(&k), true), Ok(()));
        assert_eq!(v(b"x", &keyed, Some(&other), true), Err(Mismatch::Differs));
        assert_eq!(v(b"x", &keyed, None, false), Err(Mismatch::NoKey));
        assert_eq!(
            v(b"x", "42", None, false),
            Err(Mismatch::Foreign("42".into()))
        );
    }
}
