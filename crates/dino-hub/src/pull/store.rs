//! The cache on disk: hashing, the `.sha256` sidecar that remembers a verification, atomic
//! installs (`*.part` → fsync → rename → fsync the folder) and the per-entry lock.
//!
//! Invariant: a path a caller asks for only ever appears by `rename` of a complete, verified,
//! synced file or folder, so readers never need the lock.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

/// Name of the marker written inside a pulled folder before it is renamed into place.
pub(crate) const DIR_MARKER: &str = ".dino-pull";

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// (inner writer, lower-case hex sha256, bytes written)
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// sha256 of a file, advancing `bar` by the bytes read.
pub(crate) fn sha256_file(path: &Path, bar: &ProgressBar) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hex(&hasher.finalize()))
}

fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
}

/// (size, mtime in ns since the epoch) — what the sidecar pins.
fn stamp(file: &Path) -> io::Result<(u64, u128)> {
    let meta = fs::metadata(file)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// True if `file`'s sidecar says it hashes to `sha256` and its size and mtime are unchanged since.
pub(crate) fn sidecar_says_verified(file: &Path, sha256: &str) -> bool {
    let Ok(text) = fs::read_to_string(sidecar_path(file)) else {
        return false;
    };
    let Ok((size, mtime)) = stamp(file) else {
        return false;
    };
    let mut it = text.split_whitespace();
    it.next() == Some(sha256)
        && it.next() == Some(size.to_string().as_str())
        && it.next() == Some(mtime.to_string().as_str())
}

/// Record that `file` (as it is now) hashes to `sha256`. Written atomically: readers run unlocked.
pub(crate) fn write_sidecar(file: &Path, sha256: &str) -> Result<()> {
    let (size, mtime) = stamp(file).with_context(|| format!("stat {}", file.display()))?;
    let side = sidecar_path(file);
    let tmp = side.with_extension(format!("sha256.tmp{}", std::process::id()));
    fs::write(&tmp, format!("{sha256} {size} {mtime}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &side).with_context(|| format!("renaming to {}", side.display()))?;
    Ok(())
}

pub(crate) fn remove_sidecar(file: &Path) {
    let _ = fs::remove_file(sidecar_path(file));
}

fn sync_dir(dir: &Path) {
    // Best effort: not every platform or file system allows opening or syncing a folder.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Move a complete, verified `part` file to `dest`: fsync, rename, fsync the folder, sidecar.
pub(crate) fn install_file(part: &Path, dest: &Path, sha256: &str) -> Result<()> {
    File::open(part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", part.display()))?;
    remove_sidecar(dest);
    fs::rename(part, dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    write_sidecar(dest, sha256)
}

/// Move a complete folder `part_dir` to `dest`, replacing an older folder there.
pub(crate) fn install_dir(part_dir: &Path, dest: &Path) -> Result<()> {
    for entry in fs::read_dir(part_dir)? {
        let path = entry?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    sync_dir(part_dir);
    if dest.exists() {
        let old = dest.with_extension(format!("old{}", std::process::id()));
        fs::rename(dest, &old).with_context(|| format!("moving aside {}", dest.display()))?;
        fs::rename(part_dir, dest)
            .with_context(|| format!("renaming {} to {}", part_dir.display(), dest.display()))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(part_dir, dest)
            .with_context(|| format!("renaming {} to {}", part_dir.display(), dest.display()))?;
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Remove a file or folder if it exists; errors other than "not found" are reported.
pub(crate) fn remove_path(path: &Path) -> io::Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An exclusive lock on one entry of the cache, held while it is fetched; released on drop.
pub(crate) struct EntryLock {
    _file: File,
}

pub(crate) fn lock_entry(cache_dir: &Path, name: &str) -> Result<EntryLock> {
    let dir = cache_dir.join(".locks");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(EntryLock { _file: file })
}
