//! Source digests (`@source` files under the data root), memoised by
//! (path, size, mtime, inode) so gigabytes of unchanged data are not
//! re-read on every plan.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::blob::digest_reader;
use super::state::{SourceStat, SqliteState};
use crate::plan::digest::Digest;

/// A file modified this recently is not memoised: file systems keep
/// mtimes at a coarse granularity (up to 2 s on FAT), so a write landing
/// in the same tick as our hash would leave size and mtime unchanged and
/// the memo silently stale. This is git's "racily clean" rule.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("source-digest memo: {0:#}")]
    Memo(anyhow::Error),
}

/// The SHA-256 of the file at `path`: from the memo when its size, mtime
/// and inode are unchanged (without reading it), else by streaming it and
/// memoising the result.
pub fn source_digest(db: &SqliteState, path: &Path) -> Result<Digest, SourceError> {
    source_digest_with(db, path, |file| digest_reader(file).map(|(d, _)| d))
}

/// `source_digest` with the hashing injected, so tests can count reads and
/// modify the file mid-hash.
fn source_digest_with(
    db: &SqliteState,
    path: &Path,
    hash: impl FnOnce(&File) -> io::Result<Digest>,
) -> Result<Digest, SourceError> {
    let started = SystemTime::now();
    // Stat the path before opening it: opening a FIFO would block.
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile);
    }
    let before = stat_of(path, &meta);
    if let Some(stat) = &before
        && let Some(digest) = db.memo_get(stat).map_err(SourceError::Memo)?
    {
        return Ok(digest);
    }
    let file = File::open(path)?;
    let opened = stat_of(path, &file.metadata()?);
    let digest = hash(&file)?;
    let after = stat_of(path, &file.metadata()?);
    // Memoise only what we know we read: the same file (inode) from the
    // first stat to the end of the hash, unchanged throughout, and old
    // enough that a later write must move its mtime.
    if let Some(stat) = before
        && opened.as_ref() == Some(&stat)
        && after.as_ref() == Some(&stat)
        && settled(&stat, started)
    {
        db.memo_put(&stat, &digest).map_err(SourceError::Memo)?;
    }
    Ok(digest)
}

/// The memo key of a file; `None` when its mtime does not fit the i64
/// nanoseconds the memo stores (beyond the years 1677–2262).
fn stat_of(path: &Path, meta: &Metadata) -> Option<SourceStat> {
    let mtime_ns = meta
        .mtime()
        .checked_mul(1_000_000_000)?
        .checked_add(meta.mtime_nsec())?;
    Some(SourceStat {
        path: path.to_path_buf(),
        size: meta.size(),
        mtime_ns,
        inode: meta.ino(),
    })
}

/// Whether the file's mtime is at least `SETTLE` before `started`.
fn settled(stat: &SourceStat, started: SystemTime) -> bool {
    let Some(limit) = started.checked_sub(SETTLE) else {
        return false;
    };
    let limit_ns = match limit.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => return false,
    };
    stat.mtime_ns < limit_ns
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Write;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Writes `bytes` and backdates the file so it counts as settled.
    fn old_file(path: &Path, bytes: &[u8]) -> SystemTime {
        fs::write(path, bytes).unwrap();
        let when = SystemTime::now() - HOUR;
        set_mtime(path, when);
        when
    }

    fn set_mtime(path: &Path, when: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// Overwrites the file in place (same inode, same size) and restores
    /// its mtime: invisible to the memo key, so only a read would notice.
    fn rewrite_in_place(path: &Path, bytes: &[u8], mtime: SystemTime) {
        let mut f = File::options().write(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }

    fn counting<'a>(reads: &'a Cell<u32>) -> impl FnOnce(&File) -> io::Result<Digest> + 'a {
        move |file| {
            reads.set(reads.get() + 1);
            digest_reader(file).map(|(d, _)| d)
        }
    }

    #[test]
    fn a_second_call_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open_in_memory().unwrap();
        let path = dir.path().join("patients.csv");
        let mtime = old_file(&path, b"id\n1\n");
        let reads = Cell::new(0);

        let first = source_digest_with(&db, &path, counting(&reads)).unwrap();
        assert_eq!(first, Digest::of(b"id\n1\n"));
        assert_eq!(reads.get(), 1);
        assert_eq!(
            source_digest_with(&db, &path, counting(&reads)).unwrap(),
            first
        );
        assert_eq!(reads.get(), 1, "the memo was not used");

        // Same size, inode and mtime, different bytes: the public entry
        // point still answers from the memo, so it cannot have read.
        rewrite_in_place(&path, b"id\n2\n", mtime);
        assert_eq!(source_digest(&db, &path).unwrap(), first);
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open_in_memory().unwrap();
        let path = dir.path().join("labs.csv");
        let mtime = old_file(&path, b"a\n1\n");
        let v1 = source_digest(&db, &path).unwrap();

        // Same size, new mtime.
        rewrite_in_place(&path, b"a\n2\n", mtime + Duration::from_secs(1));
        let v2 = source_digest(&db, &path).unwrap();
        assert_eq!(v2, Digest::of(b"a\n2\n"));

        // Same mtime, new size.
        fs::write(&path, b"a\n2\n3\n").unwrap();
        set_mtime(&path, mtime + Duration::from_secs(1));
        assert_eq!(source_digest(&db, &path).unwrap(), Digest::of(b"a\n2\n3\n"));

        // Same size and mtime, new inode (replaced by a rename).
        let other = dir.path().join("labs.new");
        fs::write(&other, b"a\n9\n8\n").unwrap();
        set_mtime(&other, mtime + Duration::from_secs(1));
        fs::rename(&other, &path).unwrap();
        assert_eq!(source_digest(&db, &path).unwrap(), Digest::of(b"a\n9\n8\n"));
        assert_ne!(v1, v2);
    }

    #[test]
    fn a_just_written_file_is_not_memoised() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open_in_memory().unwrap();
        let path = dir.path().join("fresh.csv");
        fs::write(&path, b"x\n").unwrap();
        let reads = Cell::new(0);
        assert_eq!(
            source_digest_with(&db, &path, counting(&reads)).unwrap(),
            Digest::of(b"x\n")
        );
        source_digest_with(&db, &path, counting(&reads)).unwrap();
        assert_eq!(reads.get(), 2);
        let stat = stat_of(&path, &fs::metadata(&path).unwrap()).unwrap();
        assert_eq!(db.memo_get(&stat).unwrap(), None);
    }

    #[test]
    fn a_file_modified_while_hashing_is_not_memoised() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open_in_memory().unwrap();
        let path = dir.path().join("growing.log");
        old_file(&path, b"line 1\n");
        let digest = source_digest_with(&db, &path, |mut file| {
            let d = digest_reader(&mut file).map(|(d, _)| d);
            File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(b"line 2\n")
                .unwrap();
            d
        })
        .unwrap();
        assert_eq!(digest, Digest::of(b"line 1\n"));
        let reads = Cell::new(0);
        let now = source_digest_with(&db, &path, counting(&reads)).unwrap();
        assert_eq!(
            reads.get(),
            1,
            "must re-read, not trust the mid-write digest"
        );
        assert_eq!(now, Digest::of(b"line 1\nline 2\n"));
    }

    #[test]
    fn missing_files_and_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open_in_memory().unwrap();
        let missing = source_digest(&db, &dir.path().join("nope.csv")).unwrap_err();
        assert!(
            matches!(&missing, SourceError::Io(e) if e.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );
        let not_file = source_digest(&db, dir.path()).unwrap_err();
        assert!(matches!(not_file, SourceError::NotAFile));
        assert_eq!(not_file.to_string(), "not a regular file");
    }
}
