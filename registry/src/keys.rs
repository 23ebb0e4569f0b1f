//! P-256 keys: generation, storage (hex of the 32-byte scalar, mode 0600) and SEC1 encoding.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use zeroize::Zeroizing;

pub use p256::ecdsa::{SigningKey, VerifyingKey};

use crate::{Error, Result};

/// A fresh random P-256 signing key (OS randomness).
pub fn generate() -> SigningKey {
    SigningKey::random(&mut OsRng)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

/// Save `key` as the hex of its 32-byte scalar. The file is created with mode 0600 next to its
/// final name, flushed to disk and then linked into place, so a crash leaves either no file or a
/// complete one. An existing file is never overwritten ([`Error::Conflict`]).
pub fn save_signing_key(path: &Path, key: &SigningKey) -> Result<()> {
    if path.exists() {
        return Err(Error::Conflict(format!(
            "key file {} already exists",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io(format!("{} is not a file name", path.display())))?;
    let mut suffix = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut suffix);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));

    let scalar = Zeroizing::new(key.to_bytes());
    let text = Zeroizing::new(hex::encode(&scalar[..]));
    let write = || -> std::io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("writing key file", &tmp, e));
    }
    // hard_link fails if the destination exists: an atomic "rename without overwrite".
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Conflict(format!(
                "key file {} already exists",
                path.display()
            )))
        }
        Err(e) => return Err(io_err("installing key file", path, e)),
    }
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Load a key written by [`save_signing_key`].
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let mut f = fs::File::open(path).map_err(|e| io_err("opening key file", path, e))?;
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)
        .map_err(|e| io_err("reading key file", path, e))?;
    let hex_str = text.trim();
    if hex_str.len() != 64 {
        return Err(Error::Encoding(format!(
            "key file {} does not hold a 32-byte hex scalar",
            path.display()
        )));
    }
    let mut scalar = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_str, scalar.as_mut_slice())
        .map_err(|_| Error::Encoding(format!("key file {} is not valid hex", path.display())))?;
    SigningKey::from_slice(scalar.as_slice()).map_err(|_| {
        Error::Encoding(format!(
            "key file {} does not hold a valid P-256 scalar",
            path.display()
        ))
    })
}

/// SEC1 uncompressed encoding (0x04 || X || Y).
pub fn public_key_bytes(key: &VerifyingKey) -> [u8; 65] {
    let point = key.to_encoded_point(false);
    let mut out = [0u8; 65];
    let b = point.as_bytes();
    if b.len() == 65 {
        out.copy_from_slice(b);
    }
    out
}

/// Parse a SEC1 public key (uncompressed or compressed); the identity point is refused.
pub fn verifying_key_from_bytes(b: &[u8]) -> Result<VerifyingKey> {
    VerifyingKey::from_sec1_bytes(b)
        .map_err(|_| Error::Encoding("not a valid SEC1 P-256 public key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authority.key");
        let k = generate();
        save_signing_key(&path, &k).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = load_signing_key(&path).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        assert!(matches!(
            save_signing_key(&path, &generate()),
            Err(Error::Conflict(_))
        ));
        // no stray temporary files
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::write(&p, "zz").unwrap();
        assert!(load_signing_key(&p).is_err());
        fs::write(&p, "00".repeat(32)).unwrap();
        assert!(load_signing_key(&p).is_err()); // zero scalar
        assert!(load_signing_key(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn sec1_roundtrip() {
        let k = generate();
        let b = public_key_bytes(k.verifying_key());
        assert_eq!(b[0], 4);
        assert_eq!(&verifying_key_from_bytes(&b).unwrap(), k.verifying_key());
        assert!(verifying_key_from_bytes(&b[..64]).is_err());
    }
}
