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

/// Why the secret in `path` may not be used: others can read or write the file, so it is
/// no secret, or they could swap it (`None` when only its owner can).
pub(crate) fn shared_secret_file(path: &Path) -> Result<Option<String>, io::Error> {
    let mode = fs::metadata(path)?.permissions().mode();
    Ok((mode & 0o077 != 0).then(|| {
        format!("can be read or written by others (mode {:o}); run `chmod 600` on it", mode & 0o777)
    }))
}

/// Reads the identity at `path`. A key file others can read is refused.
pub fn load_identity(path: &Path) -> Result<Keypair, VpnError> {
    let shared = shared_secret_file(path).map_err(|e| io_error("read identity file", path, e))?;
    if let Some(why) = shared {
        let source = format!("{} {why}", path.display()).into();
        return Err(VpnError::Other { context: "read identity file", source });
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
        let shared = load_identity(&path).unwrap_err().to_string();
        assert!(shared.contains("read or written by others (mode 644)"), "{shared}");
    }

    #[test]
    fn a_pre_shared_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        fs::write(&path, format!("{}\n", vpn_p2p::PreSharedKey::new([7; 32]))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(crate::membership::load_psk(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let shared = crate::membership::load_psk(&path).unwrap_err().to_string();
        assert!(shared.contains("network.psk_file") && shared.contains("mode 640"), "{shared}");
    }
}
