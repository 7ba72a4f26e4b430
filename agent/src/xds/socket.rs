//! The Unix socket Envoy reaches the agent on: a private directory, a socket only its owner can
//! connect to, and a stale socket from an earlier run cleared away first.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::XdsError;

/// Mode of the socket's directory: only the agent's user may enter it.
const DIR_MODE: u32 = 0o700;
/// Mode of the socket: only the agent's user (and so Envoy, run as the same user) may connect.
const SOCKET_MODE: u32 = 0o600;
/// The sticky bit marks directories shared between users, such as `/tmp`.
const STICKY_BIT: u32 = 0o1000;
/// `sun_path` holds 108 bytes on Linux, the terminating NUL included.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Binds the xDS socket at `socket`.
///
/// The directory is created with mode 0700 (an existing one is set to 0700), a stale socket left
/// by an earlier run is removed (only a socket nobody answers on, never another kind of file),
/// and the socket is set to 0600. Must be called within a Tokio runtime.
pub fn bind(socket: &Path) -> Result<UnixListener, XdsError> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(XdsError::PathTooLong {
            path: socket.to_path_buf(),
            len,
            max: MAX_SOCKET_PATH_LEN,
        });
    }
    let dir = match socket.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    make_private_dir(dir)?;
    remove_stale(socket)?;
    let listener = UnixListener::bind(socket).map_err(|source| XdsError::Bind {
        path: socket.to_path_buf(),
        source,
    })?;
    restrict(socket, SOCKET_MODE)?;
    Ok(listener)
}

/// Creates `dir` (and its parents) as 0700, or brings an existing one to 0700.
fn make_private_dir(dir: &Path) -> Result<(), XdsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| XdsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let metadata = fs::metadata(dir).map_err(|source| XdsError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    // Making `/tmp` (or any directory other users share) 0700 would break the machine, and
    // nothing in it would be private anyway.
    if metadata.permissions().mode() & STICKY_BIT != 0 {
        return Err(XdsError::SharedDirectory {
            path: dir.to_path_buf(),
        });
    }
    restrict(dir, DIR_MODE)
}

/// Removes a socket left at `socket` by an agent that is gone.
fn remove_stale(socket: &Path) -> Result<(), XdsError> {
    let metadata = match fs::symlink_metadata(socket) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(XdsError::Inspect {
                path: socket.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(XdsError::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    // A socket that accepts a connection belongs to a live agent: taking it over would cut that
    // agent's Envoy off.
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(XdsError::InUse {
            path: socket.to_path_buf(),
        });
    }
    fs::remove_file(socket).map_err(|source| XdsError::RemoveStale {
        path: socket.to_path_buf(),
        source,
    })
}

fn restrict(path: &Path, mode: u32) -> Result<(), XdsError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
        XdsError::Permissions {
            path: PathBuf::from(path),
            source,
        }
    })
}
