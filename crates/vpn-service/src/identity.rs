//! The node's identity key file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use vpn_errors::VpnError;
use vpn_p2p::Keypair;

fn io_error(what: &'static str, path: &Path, e: io::Error) -> VpnError {
    VpnError::Other { context: what, source: format!("{}: {e}", path.display()).into() }
}

/// Makes a new Ed25519 identity and writes it to `path` (mode 0600, never over an existing
/// file).
pub fn create_identity(path: &Path) -> Result<Keypair, VpnError> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| VpnError::Other { context: "encode identity", source: Box::new(e) })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("create identity file", path, e))?;
    file.write_all(&bytes).map_err(|e| io_error("write identity file", path, e))?;
    Ok(keypair)
}

/// Reads the identity at `path`. A key file others can read is refused.
pub fn load_identity(path: &Path) -> Result<Keypair, VpnError> {
    let meta = fs::metadata(path).map_err(|e| io_error("read identity file", path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(VpnError::Other {
            context: "read identity file",
            source: format!("{} is readable by others; run `chmod 600` on it", path.display())
                .into(),
        });
    }
    let bytes = fs::read(path).map_err(|e| io_error("read identity file", path, e))?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| VpnError::Other {
        context: "read identity file",
        source: format!("{} is not an identity key: {e}", path.display()).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_identity_loads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let key = create_identity(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_identity(&path).unwrap().public(), key.public());
        assert!(create_identity(&path).is_err(), "an existing key is never overwritten");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        fs::write(&path, b"not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_identity(&path).unwrap_err().to_string().contains("not an identity key"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_identity(&path).unwrap_err().to_string().contains("readable by others"));
    }
}
