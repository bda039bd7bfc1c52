//! File hashes used to identify models in infotext.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The full sha256 of a file as 64 lowercase hex digits, read in 1 MiB blocks.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The `Model hash` of infotext: the first 10 hex digits of the file's sha256
/// (AUTOMATIC1111's `CheckpointInfo.shorthash`).
pub fn model_hash(path: impl AsRef<Path>) -> Result<String> {
    let mut h = sha256_file(path)?;
    h.truncate(10);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_content() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("sd-core-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join("abc.bin");
        std::fs::write(&path, b"abc").map_err(|e| Error::io(&path, e))?;
        assert_eq!(
            sha256_file(&path)?,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(model_hash(&path)?, "ba7816bf8f");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            model_hash(dir.join("missing")),
            Err(Error::FileNotFound { .. })
        ));
        Ok(())
    }
}
