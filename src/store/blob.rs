//! Content-addressed blobs (tables, logs, manifests) behind a trait: a
//! local directory store and an in-memory fake.
//!
//! A blob is named by the SHA-256 of its bytes, so it never changes once
//! written. Every read checks the bytes against the name, because a served
//! blob that does not match its digest would silently poison every cache
//! entry built on top of it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::plan::digest::Digest;

/// Temp files untouched for this long may belong to a crashed writer; they
/// are removed at `open` unless a live writer still holds their lock. The
/// lock is what protects a live writer (however long it is idle); the age
/// only covers the instant between creating a temp file and locking it,
/// and file systems without locks, where nothing is removed.
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// The buffer used to stream blobs through SHA-256: large enough that the
/// per-read overhead disappears next to the hashing itself.
const HASH_BUF: usize = 1 << 20;

/// What can go wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    Missing(Digest),
    #[error(
        "blob {digest} is corrupt: the bytes of {} do not hash to its name, so it will not be \
         used. It is left in place for inspection; delete it ({}) and the next run \
         recomputes it if it is a table",
        path.display(),
        remove_command(path)
    )]
    Corrupt { digest: Digest, path: PathBuf },
    #[error("blob store: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// How to delete a damaged blob: a file, or an object in a bucket.
fn remove_command(path: &Path) -> String {
    match path.to_str().filter(|p| p.starts_with("s3://")) {
        Some(url) => format!("`aws s3 rm '{url}'`"),
        None => format!("`rm -f '{}'`", path.display()),
    }
}

impl BlobError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
        let what = what.into();
        move |source| BlobError::Io { what, source }
    }
}

/// A store of immutable blobs named by their digest.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` and returns their digest; storing the same bytes
    /// again is a no-op.
    fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError>;
    /// A writer for a blob too large to hold in memory; the bytes are
    /// hashed as they are written.
    fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// The bytes of a blob, verified against its digest.
    fn get(&self, digest: &Digest) -> Result<Vec<u8>, BlobError>;
    /// Verifies a blob (streaming, in constant memory) and returns a local
    /// path a reader or a child process may open. For the local store this
    /// is the blob's own file: open it read-only and never write to it.
    fn open_verified(&self, digest: &Digest) -> Result<PathBuf, BlobError>;
    /// A reader of the blob's bytes that verifies them as they stream
    /// past, in constant memory: the read that reaches the end fails with
    /// [`io::ErrorKind::InvalidData`] if they do not hash to the name, so
    /// a consumer must treat what it already got as unverified until then.
    fn reader(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, BlobError> {
        Ok(Box::new(io::Cursor::new(self.get(digest)?)))
    }
    /// Reads the whole blob and checks it against its name, in constant
    /// memory (`fsck` of a shared store).
    fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        let mut reader = self.reader(digest)?;
        match io::copy(&mut reader, &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(BlobError::Corrupt {
                digest: *digest,
                path: self.local_path(digest).unwrap_or_default(),
            }),
            Err(e) => Err(BlobError::Io {
                what: format!("cannot read blob {digest}"),
                source: e,
            }),
        }
    }
    /// Whether the blob is present (not verified: a read will check it).
    fn contains(&self, digest: &Digest) -> bool;
    /// The blob's local file, unverified, when the store has one: the
    /// caller verifies it through the stat-keyed digest memo, so a blob
    /// read by many nodes is hashed once, not once per reader.
    fn local_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }
    /// When the blob was last written, where the store can tell without a
    /// request: gc keeps a doomed blob written again after its listing.
    /// By default the local file's modification time.
    fn stored_at(&self, digest: &Digest) -> Option<SystemTime> {
        let path = self.local_path(digest)?;
        fs::metadata(path).and_then(|m| m.modified()).ok()
    }
    /// Every stored blob with its size and when it was stored, for
    /// garbage collection. Names that are not digests are skipped.
    fn list(&self) -> Result<Vec<BlobInfo>, BlobError>;
    /// Removes a blob; removing one that is not there is not an error.
    fn delete(&self, digest: &Digest) -> Result<(), BlobError>;
}

/// One stored blob, as [`BlobStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was stored (its file's modification time).
    pub stored_at: SystemTime,
}

/// A blob being written. It exists in the store only after `finish`;
/// dropping the writer discards what was written.
pub trait BlobWriter: Write + Send {
    /// Makes the blob durable and visible, and returns its digest.
    fn finish(self: Box<Self>) -> Result<Digest, BlobError>;
}

/// Streams a reader through SHA-256; returns the digest and the byte count.
pub fn digest_reader(mut reader: impl Read) -> io::Result<(Digest, u64)> {
    thread_local! {
        // One buffer per thread, zeroed once: most blobs are a few KiB,
        // and zeroing a fresh buffer per blob cost more than hashing them.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 128 << 10]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((Digest(hasher.finalize().into()), total))
    })
}

/// Hashes what passes through it; at the end of the stream it fails
/// unless the bytes hash to the expected digest.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    /// Where the bytes come from, for the error.
    origin: PathBuf,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, origin: PathBuf) -> VerifyingReader<R> {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            origin,
            done: false,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        self.done = true;
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BlobError::Corrupt {
                    digest: self.expected,
                    path: self.origin.clone(),
                },
            ));
        }
        Ok(0)
    }
}

// ---------------------------------------------------------------------------
// The local store

/// Blobs in a directory:
///
/// ```text
/// root/sha256/ab/cd/abcd…(64 hex digits)   one file per blob
/// root/tmp/                                 writes in progress
/// ```
///
/// Two levels of two hex digits keep directories small (65 536 leaves)
/// even with millions of blobs. `tmp/` sits under the same root so the
/// final rename never crosses a file system. Blobs may hold PHI: files
/// are 0400 once complete (0600 while written), directories 0700.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Opens (creating if needed) the store at `root`, and removes temp
    /// files left behind by writers that crashed.
    pub fn open(root: &Path) -> Result<LocalBlobStore, BlobError> {
        let store = LocalBlobStore {
            root: root.to_path_buf(),
        };
        for dir in [store.root.clone(), store.objects_dir(), store.tmp_dir()] {
            private_dir(&dir)?;
        }
        store.remove_stale_temps();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.objects_dir()
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(hex)
    }

    fn objects_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Best effort: removes the temp files of writers that are gone (see
    /// [`is_orphan_temp`]).
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_orphan_temp(&path) {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Checks a blob's bytes against its name without loading it.
    fn verify_file(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        let path = self.blob_path(digest);
        let file = open_blob(&path, digest)?;
        let (actual, _) = digest_reader(file).map_err(BlobError::io(format!(
            "cannot read blob {digest} at {}",
            path.display()
        )))?;
        if actual != *digest {
            return Err(BlobError::Corrupt {
                digest: *digest,
                path,
            });
        }
        Ok(path)
    }
}

fn open_blob(path: &Path, digest: &Digest) -> Result<File, BlobError> {
    File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BlobError::Missing(*digest)
        } else {
            BlobError::io(format!("cannot open blob {digest} at {}", path.display()))(e)
        }
    })
}

impl BlobStore for LocalBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest = Digest::of(bytes);
        // The final path only ever appears through a rename of a complete,
        // fsynced file, so its existence means the blob is whole.
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(BlobError::io(format!("cannot write blob {digest}")))?;
        w.finish()
    }

    fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        let dir = self.tmp_dir();
        let tmp = tempfile::Builder::new()
            // The pid tells a later open that a crashed writer's file is
            // garbage at once (see `is_orphan_temp`).
            .prefix(&format!("blob-{}-", std::process::id()))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(BlobError::io(format!(
                "cannot create a temp file in {}",
                dir.display()
            )))?;
        // Tells `remove_stale_temps` in other processes that this file is
        // live. Where the file system cannot lock, only the age rule
        // protects the file, which is still correct for short writes.
        let _ = tmp.as_file().try_lock();
        Ok(Box::new(LocalBlobWriter {
            store: self.clone(),
            out: BufWriter::with_capacity(256 * 1024, tmp),
            hasher: Sha256::new(),
        }))
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.blob_path(digest);
        let mut file = open_blob(&path, digest)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(BlobError::io(format!(
            "cannot read blob {digest} at {}",
            path.display()
        )))?;
        if Digest::of(&bytes) != *digest {
            return Err(BlobError::Corrupt {
                digest: *digest,
                path,
            });
        }
        Ok(bytes)
    }

    fn open_verified(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        self.verify_file(digest)
    }

    fn reader(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, BlobError> {
        let path = self.blob_path(digest);
        let file = open_blob(&path, digest)?;
        Ok(Box::new(VerifyingReader::new(
            io::BufReader::with_capacity(HASH_BUF, file),
            *digest,
            path,
        )))
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.blob_path(digest);
        p.is_file().then_some(p)
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let mut out = Vec::new();
        let read = |dir: &Path| {
            fs::read_dir(dir).map_err(BlobError::io(format!("cannot list {}", dir.display())))
        };
        for top in read(&self.objects_dir())? {
            let top = top.map_err(BlobError::io("cannot list the blob store"))?;
            if !top.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for mid in read(&top.path())? {
                let mid = mid.map_err(BlobError::io("cannot list the blob store"))?;
                if !mid.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                for leaf in read(&mid.path())? {
                    let leaf = leaf.map_err(BlobError::io("cannot list the blob store"))?;
                    let Some(digest) = leaf
                        .file_name()
                        .to_str()
                        .and_then(|n| format!("sha256:{n}").parse().ok())
                    else {
                        continue;
                    };
                    // Gone since the listing (another gc): skip it.
                    let Ok(meta) = leaf.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    out.push(BlobInfo {
                        digest,
                        size: meta.len(),
                        stored_at: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::io(format!("cannot delete {}", path.display()))(
                e,
            )),
        }
    }
}

/// Writes to a temp file in `root/tmp`, hashing on the way; `finish`
/// fsyncs it and renames it to its content address. Dropping the writer
/// drops the `NamedTempFile`, which deletes the temp file.
struct LocalBlobWriter {
    store: LocalBlobStore,
    out: BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
}

impl Write for LocalBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        // Hash exactly what was accepted, so a short write cannot make the
        // digest disagree with the file.
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter for LocalBlobWriter {
    fn finish(self: Box<Self>) -> Result<Digest, BlobError> {
        let LocalBlobWriter { store, out, hasher } = *self;
        let digest = Digest(hasher.finalize().into());
        let tmp = out
            .into_inner()
            .map_err(|e| BlobError::io(format!("cannot write blob {digest}"))(e.into_error()))?;
        let target = store.blob_path(&digest);
        // Even when a file already sits at the address it is replaced: the
        // bytes are the same if it is intact, and if it was damaged this is
        // the repair. Readers holding the old inode are not disturbed.
        tmp.as_file()
            .sync_all()
            .map_err(BlobError::io(format!("cannot sync blob {digest}")))?;
        // Read-only (command actions get blob paths as their inputs) and
        // private to the owner: blobs may hold PHI.
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(BLOB_MODE))
            .map_err(BlobError::io(format!("cannot protect blob {digest}")))?;
        let dir = target
            .parent()
            .expect("a blob path always has a parent directory")
            .to_path_buf();
        create_dir_durable(&dir, &store.objects_dir())?;
        tmp.persist(&target).map_err(|e| {
            BlobError::io(format!(
                "cannot move blob {digest} into {}",
                target.display()
            ))(e.error)
        })?;
        // The rename is durable only once its directory is synced.
        sync_dir(&dir)?;
        Ok(digest)
    }
}

/// Creates `dir` (below `base`, which exists) and syncs each parent whose
/// entries changed, so the new directories survive a crash with the blob.
fn create_dir_durable(dir: &Path, base: &Path) -> Result<(), BlobError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while cur != base && !cur.is_dir() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(DIR_MODE).create(d)
        };
        match made {
            Ok(()) => {}
            // Another writer made it first; that is fine.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BlobError::io(format!("cannot create {}", d.display()))(e)),
        }
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Whether a temp file belongs to a writer that is gone: no live writer
/// holds its lock, and either the process named in it (`blob-<pid>-…`)
/// no longer exists or nobody has written to it for a minute. The lock
/// protects a live writer however long it is idle; the age (or a live
/// pid) covers the instant between creating a temp file and locking it.
/// Where the file system cannot lock, nothing is an orphan.
pub fn is_orphan_temp(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let old = meta.modified().is_ok_and(|t| {
        SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age > STALE_TEMP_AGE)
    });
    let writer_gone = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("blob-"))
        .and_then(|n| n.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
        });
    (old || writer_gone) && file.try_lock().is_ok()
}

/// The mode of a complete blob file.
pub const BLOB_MODE: u32 = 0o400;
/// The mode of every directory of the store.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` mode 0700, or tightens it to 0700 if it is looser.
fn private_dir(dir: &Path) -> Result<(), BlobError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(BlobError::io(format!("cannot create {}", dir.display())))?;
    let meta =
        fs::metadata(dir).map_err(BlobError::io(format!("cannot read {}", dir.display())))?;
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(BlobError::io(
            format!("cannot make {} private", dir.display()),
        ))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobError::io(format!(
            "cannot sync directory {}",
            dir.display()
        )))
}

// ---------------------------------------------------------------------------
// The in-memory fake

/// A stored blob of the fake: its bytes and when they were stored.
#[derive(Clone)]
struct MemBlob {
    bytes: Arc<Vec<u8>>,
    stored_at: SystemTime,
}

impl MemBlob {
    fn new(bytes: Vec<u8>) -> MemBlob {
        MemBlob {
            bytes: Arc::new(bytes),
            stored_at: SystemTime::now(),
        }
    }
}

type BlobMap = HashMap<Digest, MemBlob>;

/// An in-memory blob store for tests.
///
/// `open_verified` is supported: it verifies the bytes, then writes them
/// once to a temp directory the store owns (deleted with the store), so
/// code that hands paths to SQLite or a child process can be tested too.
/// `tamper` replaces a blob's bytes to simulate corruption.
#[derive(Default)]
pub struct MemBlobStore {
    // Shared with live writers, which outlive the `&self` that made them.
    blobs: Arc<Mutex<BlobMap>>,
    files: Mutex<Option<tempfile::TempDir>>,
}

impl std::fmt::Debug for MemBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBlobStore")
            .field("blobs", &self.len())
            .finish()
    }
}

impl MemBlobStore {
    pub fn new() -> MemBlobStore {
        MemBlobStore::default()
    }

    /// How many blobs are stored.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the bytes stored under `digest` without renaming them,
    /// as a flipped bit on disk would.
    pub fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        self.map().insert(*digest, MemBlob::new(bytes));
    }

    /// Pretends the blob was stored at `when`, for tests of ages.
    pub fn backdate(&self, digest: &Digest, when: SystemTime) {
        if let Some(blob) = self.map().get_mut(digest) {
            blob.stored_at = when;
        }
    }

    /// A lock poisoned by a panicking test thread still guards a
    /// consistent map (every update is a single insert), so it is reused.
    fn map(&self) -> MutexGuard<'_, BlobMap> {
        lock_map(&self.blobs)
    }

    fn verified(&self, digest: &Digest) -> Result<Arc<Vec<u8>>, BlobError> {
        let bytes = self
            .map()
            .get(digest)
            .map(|b| Arc::clone(&b.bytes))
            .ok_or(BlobError::Missing(*digest))?;
        if Digest::of(&bytes) != *digest {
            return Err(BlobError::Corrupt {
                digest: *digest,
                path: PathBuf::from(format!("<memory>/{}", digest.hex())),
            });
        }
        Ok(bytes)
    }
}

impl BlobStore for MemBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest = Digest::of(bytes);
        store_repairing(&mut self.map(), digest, || bytes.to_vec());
        Ok(digest)
    }

    fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(MemBlobWriter {
            blobs: Arc::clone(&self.blobs),
            bytes: Vec::new(),
        }))
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        Ok(self.verified(digest)?.as_ref().clone())
    }

    fn open_verified(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        let bytes = self.verified(digest)?;
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("sluice-memblobs-")
                .tempdir()
                .map_err(BlobError::io("cannot create a temp directory"))?;
            *files = Some(dir);
        }
        let dir = files
            .as_ref()
            .expect("the directory was created just above")
            .path();
        let path = dir.join(digest.hex());
        // Written once under the lock; the bytes were verified above, and
        // a tampered blob fails before reaching here.
        if !path.is_file() {
            fs::write(&path, bytes.as_slice())
                .map_err(BlobError::io(format!("cannot write {}", path.display())))?;
        }
        Ok(path)
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.map().contains_key(digest)
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        Ok(self
            .map()
            .iter()
            .map(|(digest, blob)| BlobInfo {
                digest: *digest,
                size: blob.bytes.len() as u64,
                stored_at: blob.stored_at,
            })
            .collect())
    }

    fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        self.map().remove(digest);
        Ok(())
    }
}

/// Stores the bytes unless intact ones are there already; replaces
/// damaged ones, as the local store's rename does.
fn store_repairing(map: &mut BlobMap, digest: Digest, bytes: impl FnOnce() -> Vec<u8>) {
    let intact = map
        .get(&digest)
        .is_some_and(|b| Digest::of(b.bytes.as_slice()) == digest);
    if !intact {
        map.insert(digest, MemBlob::new(bytes()));
    }
}

fn lock_map(blobs: &Mutex<BlobMap>) -> MutexGuard<'_, BlobMap> {
    blobs.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Collects the bytes; the blob appears at `finish`, as in the real store.
struct MemBlobWriter {
    blobs: Arc<Mutex<BlobMap>>,
    bytes: Vec<u8>,
}

impl Write for MemBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for MemBlobWriter {
    fn finish(self: Box<Self>) -> Result<Digest, BlobError> {
        let MemBlobWriter { blobs, bytes } = *self;
        let digest = Digest::of(&bytes);
        store_repairing(&mut lock_map(&blobs), digest, || bytes);
        Ok(digest)
    }
}

/// The contract every implementation keeps (the S3 store runs it too).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn check_contract(store: &dyn BlobStore) {
    let d = store.put(b"a,b\n1,2\n").unwrap();
    assert_eq!(d, Digest::of(b"a,b\n1,2\n"));
    assert!(store.contains(&d));
    assert_eq!(store.get(&d).unwrap(), b"a,b\n1,2\n");
    assert_eq!(store.put(b"a,b\n1,2\n").unwrap(), d, "put is idempotent");

    let mut w = store.writer().unwrap();
    for chunk in [&b"x\n"[..], b"1\n", b"2\n"] {
        w.write_all(chunk).unwrap();
    }
    let streamed = w.finish().unwrap();
    assert_eq!(streamed, Digest::of(b"x\n1\n2\n"));
    assert_eq!(store.get(&streamed).unwrap(), b"x\n1\n2\n");
    let path = store.open_verified(&streamed).unwrap();
    assert_eq!(fs::read(path).unwrap(), b"x\n1\n2\n");

    let empty = store.writer().unwrap().finish().unwrap();
    assert_eq!(empty, Digest::of(b""));
    assert_eq!(store.get(&empty).unwrap(), b"");

    let absent = Digest::of(b"never stored");
    assert!(!store.contains(&absent));
    assert!(matches!(store.get(&absent), Err(BlobError::Missing(d)) if d == absent));
    assert!(matches!(
        store.open_verified(&absent),
        Err(BlobError::Missing(_))
    ));

    let mut dropped = store.writer().unwrap();
    dropped.write_all(b"half a table").unwrap();
    drop(dropped);
    assert!(!store.contains(&Digest::of(b"half a table")));

    let mut listed: Vec<(Digest, u64)> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    listed.sort();
    let mut expected = vec![(d, 8), (streamed, 6), (empty, 0)];
    expected.sort();
    assert_eq!(
        listed, expected,
        "list names every blob once, with its size"
    );
    store.delete(&d).unwrap();
    assert!(!store.contains(&d));
    assert!(matches!(store.get(&d), Err(BlobError::Missing(_))));
    store.delete(&d).unwrap();
    assert_eq!(store.list().unwrap().len(), 2, "delete removes one blob");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, LocalBlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        (dir, store)
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn local_store_keeps_the_contract() {
        let (_dir, store) = local();
        check_contract(&store);
    }

    #[test]
    fn mem_store_keeps_the_contract() {
        check_contract(&MemBlobStore::new());
    }

    #[test]
    fn layout_is_two_levels_of_hex_and_identical_content_shares_one_file() {
        let (_dir, store) = local();
        let d = store.put(b"same").unwrap();
        let hex = d.hex();
        let expected = store
            .root()
            .join("sha256")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex);
        assert_eq!(store.blob_path(&d), expected);
        assert!(expected.is_file());

        let mut w = store.writer().unwrap();
        w.write_all(b"sa").unwrap();
        w.write_all(b"me").unwrap();
        assert_eq!(w.finish().unwrap(), d);
        store.put(b"same").unwrap();
        assert_eq!(files_under(&store.root().join("sha256")), vec![expected]);
        assert!(files_under(&store.root().join("tmp")).is_empty());
    }

    #[test]
    fn a_flipped_byte_is_corrupt_and_never_served() {
        let (_dir, store) = local();
        let d = store.put(b"patient_id\n1\n2\n").unwrap();
        let path = store.blob_path(&d);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, &bytes).unwrap();

        for err in [
            store.get(&d).unwrap_err(),
            store.open_verified(&d).unwrap_err(),
        ] {
            match &err {
                BlobError::Corrupt { digest, path: p } => {
                    assert_eq!(*digest, d);
                    assert_eq!(*p, path);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&d.to_string()), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(
                msg.contains(&format!("rm -f '{}'", path.display())),
                "{msg}"
            );
        }
        // Not deleted automatically: the evidence stays for the admin.
        assert!(path.is_file());

        // Once removed as the message says, the blob can be stored again.
        fs::remove_file(&path).unwrap();
        assert!(!store.contains(&d));
        store.put(b"patient_id\n1\n2\n").unwrap();
        assert_eq!(store.get(&d).unwrap(), b"patient_id\n1\n2\n");
    }

    #[test]
    fn a_dropped_writer_leaves_no_blob_and_no_temp_file() {
        let (_dir, store) = local();
        let mut w = store.writer().unwrap();
        w.write_all(&vec![7u8; 600 * 1024]).unwrap();
        w.flush().unwrap();
        assert_eq!(files_under(&store.root().join("tmp")).len(), 1);
        drop(w);
        assert!(files_under(&store.root().join("tmp")).is_empty());
        assert!(files_under(&store.root().join("sha256")).is_empty());
    }

    #[test]
    fn open_removes_stale_temps_but_not_live_ones() {
        let (_dir, store) = local();
        let tmp = store.root().join("tmp");
        let old = SystemTime::now() - Duration::from_secs(2 * 60 * 60);

        let stale = tmp.join("blob-crashed.tmp");
        fs::write(&stale, b"partial").unwrap();
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();

        // A live writer idle for over an hour keeps its file: it holds the lock.
        let mut live = store.writer().unwrap();
        live.write_all(b"slow query").unwrap();
        live.flush().unwrap();
        let live_path = files_under(&tmp).into_iter().find(|p| *p != stale).unwrap();
        File::options()
            .write(true)
            .open(&live_path)
            .unwrap()
            .set_modified(old)
            .unwrap();

        let fresh = tmp.join("blob-fresh.tmp");
        fs::write(&fresh, b"just started").unwrap();
        // A writer that is gone (no such pid) left this a moment ago.
        let dead = tmp.join("blob-999999999-abc.tmp");
        fs::write(&dead, b"killed mid-write").unwrap();
        assert!(is_orphan_temp(&dead));
        assert!(!is_orphan_temp(&fresh));

        LocalBlobStore::open(store.root()).unwrap();
        assert!(!stale.exists());
        assert!(!dead.exists());
        assert!(live_path.exists());
        assert!(fresh.exists());
        let d = live.finish().unwrap();
        assert_eq!(store.get(&d).unwrap(), b"slow query");
    }

    #[test]
    fn verification_streams_a_blob_larger_than_the_buffer() {
        let (_dir, store) = local();
        let big: Vec<u8> = (0..3 * HASH_BUF + 17).map(|i| (i % 251) as u8).collect();
        let mut w = store.writer().unwrap();
        for chunk in big.chunks(100_000) {
            w.write_all(chunk).unwrap();
        }
        let d = w.finish().unwrap();
        assert_eq!(d, Digest::of(&big));
        store.open_verified(&d).unwrap();
        let (again, len) = digest_reader(&big[..]).unwrap();
        assert_eq!((again, len), (d, big.len() as u64));
    }

    #[test]
    fn the_reader_streams_verified_bytes_and_fails_at_the_end_on_damage() {
        let (_dir, store) = local();
        let big: Vec<u8> = (0..2 * HASH_BUF + 5).map(|i| (i % 241) as u8).collect();
        let d = store.put(&big).unwrap();
        // Read in small pieces: never more than the caller's buffer at once.
        let mut r = store.reader(&d).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= buf.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, big);

        let path = store.blob_path(&d);
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut r = store.reader(&d).unwrap();
        let mut sink = Vec::new();
        let err = io::copy(&mut r, &mut sink).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(matches!(
            store.reader(&Digest::of(b"absent")),
            Err(BlobError::Missing(_))
        ));
        // The in-memory store verifies before it serves.
        let mem = MemBlobStore::new();
        let m = mem.put(b"ok").unwrap();
        let mut out = Vec::new();
        mem.reader(&m).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ok");
        mem.tamper(&m, b"no".to_vec());
        assert!(matches!(mem.reader(&m), Err(BlobError::Corrupt { .. })));
    }

    #[test]
    fn blobs_are_owner_read_only_in_private_directories() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = local();
        let d = store.put(b"phi").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&store.blob_path(&d)), BLOB_MODE);
        for dir in [
            store.root().to_path_buf(),
            store.root().join("sha256"),
            store.root().join("tmp"),
            store.blob_path(&d).parent().unwrap().to_path_buf(),
            store
                .blob_path(&d)
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf(),
        ] {
            assert_eq!(mode(&dir), DIR_MODE, "{}", dir.display());
        }
        // A looser existing root is tightened at open.
        fs::set_permissions(store.root(), fs::Permissions::from_mode(0o755)).unwrap();
        LocalBlobStore::open(store.root()).unwrap();
        assert_eq!(mode(store.root()), DIR_MODE);
    }

    #[test]
    fn mem_store_detects_tampering_and_serves_paths() {
        let store = MemBlobStore::new();
        let d = store.put(b"ok").unwrap();
        let path = store.open_verified(&d).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"ok");
        store.tamper(&d, b"no".to_vec());
        assert!(matches!(store.get(&d), Err(BlobError::Corrupt { .. })));
        assert!(matches!(
            store.open_verified(&d),
            Err(BlobError::Corrupt { .. })
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn stores_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LocalBlobStore>();
        assert_send_sync::<MemBlobStore>();
        assert_send_sync::<Arc<dyn BlobStore>>();
    }
}
