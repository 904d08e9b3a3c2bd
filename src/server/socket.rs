//! Binding the Unix socket: a stale socket is replaced only if nobody listens
//! on it; the socket gets its configured mode and group before it serves.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "{path}: another process is listening on this socket (is another kms-sidecar running?)"
    )]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: group `{group}` does not exist")]
    NoSuchGroup { path: PathBuf, group: String },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Binds `path` with `mode` (and `group`), replacing a stale socket file.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, BindError> {
    let io = |what: &'static str| {
        move |source| BindError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(BindError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing stale socket");
                    std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
                }
            }
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting the path")(e)),
    }
    // Nobody but us may connect before the mode is set.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old_umask);
    let listener = listener.map_err(io("binding"))?;
    if let Some(group) = group {
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| BindError::NoSuchGroup {
                    path: path.to_path_buf(),
                    group: group.to_owned(),
                })?
                .gid
                .as_raw(),
        };
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("setting the group"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode"))?;
    Ok(listener)
}

/// What tells one socket file from another at the same path.
pub type SocketId = (u64, u64);

/// The device and inode of the socket at `path`, if a socket is there.
pub fn socket_id(path: &Path) -> Option<SocketId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Binds `path` again after another process removed or replaced the
/// sidecar's socket: whatever file is there now (another process's socket
/// included) is removed first.
pub fn take_over(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, BindError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BindError::Io {
                path: path.to_path_buf(),
                what: "removing what replaced the socket",
                source,
            });
        }
    }
    bind(path, mode, group)
}

/// Raises the soft open-file limit to the hard limit, so that thousands of
/// connections do not run out of descriptors.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}
