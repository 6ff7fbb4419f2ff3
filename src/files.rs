//! Reading a file whose path comes from the spec: a regular file only, never more than a limit.
//!
//! A path in a DRTopology is input from Git. Read naively, a FIFO there blocks a worker thread
//! forever, `/dev/zero` never ends and a 256 MiB file is held whole on every reconcile. So the
//! file is opened non-blocking, checked with `fstat` on the open descriptor (no race with a
//! swap of the path), and read only up to its size and the limit.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The most `encryptionConfigPath` may hold: a real EncryptionConfiguration is a few KiB.
pub const MAX_SPEC_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{field}: cannot read {path}: {reason}")]
    Io { field: String, path: String, reason: String },
    #[error("{field}: {path} is {kind}, not a regular file; point it at the file itself")]
    NotRegular { field: String, path: String, kind: &'static str },
    #[error("{field}: {path} is {size} bytes, more than the limit of {limit}; point it at the encryption config (a few KiB), not at a larger file")]
    TooLarge { field: String, path: String, size: u64, limit: u64 },
    #[error("{field}: reading {path} took longer than {after:?}; is it on a hung network mount?")]
    Timeout { field: String, path: String, after: Duration },
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Option<SystemTime>,
}

fn kind_of(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

/// Opens `path` without blocking (a FIFO with no writer would block `open` itself) and checks
/// the open descriptor: a regular file of at most `limit` bytes.
fn open_checked(field: &str, path: &Path, limit: u64) -> Result<(File, FileStamp), FileError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| FileError::Io { field: field.to_string(), path: shown.clone(), reason: e.to_string() };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = kind_of(meta.file_type()) {
        return Err(FileError::NotRegular { field: field.to_string(), path: shown, kind });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { field: field.to_string(), path: shown, size: meta.len(), limit });
    }
    let stamp = FileStamp { dev: meta.dev(), ino: meta.ino(), size: meta.len(), mtime: meta.modified().ok() };
    Ok((file, stamp))
}

/// The bytes of a regular file of at most `limit` bytes. `field` (e.g.
/// `spec.clusters[0].encryptionConfigPath`) names the spec field in every error.
pub fn read_regular(field: &str, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, _) = open_checked(field, path, limit)?;
    read_at_most(field, path, file, limit)
}

/// Reads at most `limit` bytes, and refuses a file that grew past it since `fstat`.
fn read_at_most(field: &str, path: &Path, file: File, limit: u64) -> Result<Vec<u8>, FileError> {
    let shown = path.display().to_string();
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| FileError::Io { field: field.to_string(), path: shown.clone(), reason: e.to_string() })?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { field: field.to_string(), path: shown, size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

/// sha256 of a spec file, recomputed only when its (device, inode, size, mtime) changes, so a
/// reconcile every few seconds costs one `open` + `fstat`, not a read and a hash.
#[derive(Default)]
pub struct FingerprintCache {
    last: Mutex<Option<(String, FileStamp, String)>>,
}

impl FingerprintCache {
    pub fn fingerprint(&self, field: &str, path: &Path) -> Result<String, FileError> {
        use sha2::Digest;
        let (file, stamp) = open_checked(field, path, MAX_SPEC_FILE_BYTES)?;
        let key = path.display().to_string();
        if let Ok(last) = self.last.lock() {
            if let Some((p, s, sum)) = last.as_ref() {
                if *p == key && *s == stamp {
                    return Ok(sum.clone());
                }
            }
        }
        let bytes = read_at_most(field, path, file, MAX_SPEC_FILE_BYTES)?;
        let sum = hex::encode(sha2::Sha256::digest(&bytes));
        if let Ok(mut last) = self.last.lock() {
            *last = Some((key, stamp, sum.clone()));
        }
        Ok(sum)
    }
}

/// How long one spec file read may take before the reconcile gives up on it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// [`FingerprintCache::fingerprint`] off the async workers and bounded in time: a file on a
/// hung mount costs one blocking thread, never a reconcile worker.
pub async fn fingerprint_bounded(cache: std::sync::Arc<FingerprintCache>, field: String, path: std::path::PathBuf) -> Result<String, FileError> {
    let (f, p) = (field.clone(), path.display().to_string());
    let task = tokio::task::spawn_blocking(move || cache.fingerprint(&field, &path));
    match tokio::time::timeout(READ_TIMEOUT, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(FileError::Io { field: f, path: p, reason: e.to_string() }),
        Err(_) => Err(FileError::Timeout { field: f, path: p, after: READ_TIMEOUT }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "spec.clusters[0].encryptionConfigPath";

    #[test]
    fn a_regular_file_within_the_limit_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("enc.conf");
        std::fs::write(&p, b"kind: EncryptionConfiguration\n").expect("write");
        assert_eq!(read_regular(FIELD, &p, 64).expect("read"), b"kind: EncryptionConfiguration\n");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_field_and_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'x'; 65]).expect("write");
        let e = read_regular(FIELD, &p, 64).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { size: 65, limit: 64, .. }), "{e}");
        assert!(e.to_string().starts_with(FIELD), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.to_str().expect("utf-8")).expect("cstring");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_regular(FIELD, &p, 64));
        });
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("the read of a FIFO returned within 5s");
        assert!(matches!(got, Err(FileError::NotRegular { kind: "a FIFO", .. })), "{got:?}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (path, kind) in [("/dev/zero", "a device"), ("/dev/null", "a device"), ("/tmp", "a directory")] {
            let got = read_regular(FIELD, Path::new(path), 64);
            assert!(matches!(got, Err(FileError::NotRegular { kind: k, .. }) if k == kind), "{path}: {got:?}");
        }
    }

    #[test]
    fn the_fingerprint_is_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("enc.conf");
        std::fs::write(&p, b"one").expect("write");
        let cache = FingerprintCache::default();
        let first = cache.fingerprint(FIELD, &p).expect("fingerprint");
        assert_eq!(cache.fingerprint(FIELD, &p).expect("cached"), first);
        // A new file (new inode, new size) is hashed again.
        let q = dir.path().join("enc.new");
        std::fs::write(&q, b"two!").expect("write");
        std::fs::rename(&q, &p).expect("rename");
        let second = cache.fingerprint(FIELD, &p).expect("fingerprint");
        assert_ne!(second, first);
        use sha2::Digest;
        assert_eq!(second, hex::encode(sha2::Sha256::digest(b"two!")));
    }
}
