//! Reading the config file: a regular file only, of at most
//! [`MAX_FILE_SIZE`] bytes. A FIFO, a device (`/dev/zero`) or a directory at
//! the config path is refused without being read: opening does not wait for
//! a FIFO's writer, and nothing is read past the cap.

use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config file read (a config is a few KiB).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The bytes of the regular file at `path` (symbolic links followed), or
/// why not: the open error, "not a regular file (a FIFO)", "larger than
/// 1 MiB".
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    // Looked at before opening, so that a device is not even opened; and
    // again once open, in case the path changed in between.
    regular(&std::fs::metadata(path)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    regular(&file.metadata()?)?;
    let mut text = Vec::new();
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(text)
}

/// A regular file within the cap, or why not.
fn regular(meta: &Metadata) -> io::Result<()> {
    let kind = meta.file_type();
    let what = match () {
        () if kind.is_file() && meta.len() > MAX_FILE_SIZE => return Err(too_large()),
        () if kind.is_file() => return Ok(()),
        () if kind.is_dir() => "a directory",
        () if kind.is_fifo() => "a FIFO",
        () if kind.is_char_device() => "a character device",
        () if kind.is_block_device() => "a block device",
        () if kind.is_socket() => "a socket",
        () => "of an unknown type",
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({what})"),
    ))
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} MiB", MAX_FILE_SIZE >> 20),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, "keys: {}\n").unwrap();
        assert_eq!(read_file(&ok).unwrap(), b"keys: {}\n");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'#'; (MAX_FILE_SIZE + 1) as usize]).unwrap();
        let cases: [(&Path, &str); 4] = [
            (&fifo, "not a regular file (a FIFO)"),
            (
                Path::new("/dev/zero"),
                "not a regular file (a character device)",
            ),
            (dir.path(), "not a regular file (a directory)"),
            (&huge, "larger than 1 MiB"),
        ];
        for (path, why) in cases {
            let err = read_file(path).unwrap_err().to_string();
            assert_eq!(err, why, "{}", path.display());
        }
    }
}
