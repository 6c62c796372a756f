//! Reading a file the user named without hanging on it: a FIFO (named pipe)
//! blocks `open` until some process writes to it, and a device can stream
//! forever. These wrappers of `std::fs` refuse such special files with an
//! error saying what the path is; regular files, folders (whose error stays
//! the OS's) and links to either behave as `std::fs` does.

use std::fs::FileType;
use std::io;
use std::path::Path;

/// What a file that is neither a regular file nor a folder is.
pub fn special_kind(kind: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    let _ = kind;
    "a special file"
}

/// An error when `path` (links followed) is a special file: a FIFO, a socket
/// or a device. A path that does not exist passes, so that the caller's own
/// read reports it as before.
pub fn refuse_special(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_file() || kind.is_dir() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}, not a regular file", special_kind(&kind)),
    ))
}

/// `std::fs::read`, refusing special files.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    refuse_special(path)?;
    std::fs::read(path)
}

/// `std::fs::read_to_string`, refusing special files.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    refuse_special(path)?;
    std::fs::read_to_string(path)
}

/// `std::fs::File::open`, refusing special files.
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    refuse_special(path)?;
    std::fs::File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("dtx-fs-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.safetensors");
        let _ = std::fs::remove_file(&fifo);
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !status.is_ok_and(|s| s.success()) {
            return; // no mkfifo on this machine
        }
        for err in [
            read(&fifo).unwrap_err(),
            read_to_string(&fifo).unwrap_err(),
            open(&fifo).unwrap_err(),
        ] {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(
                err.to_string()
                    .contains("a FIFO (named pipe), not a regular file"),
                "{err}"
            );
        }
        // a link to it too
        let link = dir.join("link.safetensors");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(read(&link).is_err());
        // regular files, folders and missing files behave as std::fs does
        let file = dir.join("plain.txt");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "x");
        assert_eq!(
            read(&dir).unwrap_err().kind(),
            std::fs::read(&dir).unwrap_err().kind()
        );
        assert_eq!(
            read(&dir.join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
