//! The local read-through cache of a remote blob store: a
//! [`LocalBlobStore`] directory (same layout, same 0700/0400 modes) kept
//! under a size bound by evicting the least recently used blobs.
//!
//! The cache hands out paths that SQLite and child processes open, and it
//! cannot know when they are done with them. On Unix an unlinked file
//! stays readable by whoever already opened it, so the only danger is a
//! path handed out but not yet opened: a blob used within the last
//! `min_idle` (an hour by default, the default node timeout) is never
//! evicted. The bound is therefore soft while more than it is in use.
//!
//! "Used" is the file's modification time, set on each use (at most once
//! a minute per blob), so every process sharing the directory sees the
//! others' uses; each process keeps its own index of sizes.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use super::blob::{BlobError, BlobStore, LocalBlobStore};
use crate::plan::digest::Digest;

/// The default size bound: room for a working set of tables on a worker.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;

/// Blobs used more recently than this are never evicted (see the module
/// documentation).
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(3600);

/// A use is written to the file's mtime at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An eviction pass frees down to this fraction of the bound, so that
/// passes (which sort the index) are not run on every new blob.
const LOW_WATER: f64 = 0.9;

/// A bounded directory of verified copies of remote blobs.
#[derive(Debug)]
pub struct BlobCache {
    store: LocalBlobStore,
    limit: u64,
    min_idle: Duration,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    used: SystemTime,
}

impl Index {
    fn insert(&mut self, digest: Digest, entry: Entry) {
        if let Some(old) = self.entries.insert(digest, entry) {
            self.total -= old.size;
        }
        self.total += entry.size;
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some(old) = self.entries.remove(digest) {
            self.total -= old.size;
        }
    }
}

impl BlobCache {
    /// Opens (creating) the cache at `root`, indexes what it holds, and
    /// trims it to `limit` bytes.
    pub fn open(root: &Path, limit: u64, min_idle: Duration) -> Result<BlobCache, BlobError> {
        let store = LocalBlobStore::open(root)?;
        let mut index = Index::default();
        for blob in store.list()? {
            index.insert(
                blob.digest,
                Entry {
                    size: blob.size,
                    used: blob.stored_at,
                },
            );
        }
        let cache = BlobCache {
            store,
            limit,
            min_idle,
            index: Mutex::new(index),
        };
        cache.evict(None);
        Ok(cache)
    }

    /// The directory store behind the cache: writers spool into it and
    /// reads verify through it.
    pub fn store(&self) -> &LocalBlobStore {
        &self.store
    }

    /// The size bound, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes the cache holds, as this process knows them.
    pub fn size(&self) -> u64 {
        self.lock().total
    }

    /// The cached file of `digest`, unverified, marked as used; `None`
    /// when it is not cached.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.store.blob_path(digest);
        let Ok(meta) = std::fs::metadata(&path) else {
            self.lock().remove(digest);
            return None;
        };
        if !meta.is_file() {
            return None;
        }
        let now = SystemTime::now();
        let mut index = self.lock();
        let stale = index
            .entries
            .get(digest)
            .is_none_or(|e| age(e.used, now) >= TOUCH_EVERY);
        if stale {
            index.insert(
                *digest,
                Entry {
                    size: meta.len(),
                    used: now,
                },
            );
            drop(index);
            touch(&path, now);
        }
        Some(path)
    }

    /// Records a blob that has just landed in the store (written or
    /// downloaded), then evicts others if the cache is over its bound.
    pub fn admit(&self, digest: &Digest) {
        let path = self.store.blob_path(digest);
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        let now = SystemTime::now();
        self.lock().insert(
            *digest,
            Entry {
                size: meta.len(),
                used: now,
            },
        );
        touch(&path, now);
        self.evict(Some(digest));
    }

    /// Drops a blob from the cache (best effort: it is only a copy).
    pub fn remove(&self, digest: &Digest) {
        let _ = self.store.delete(digest);
        self.lock().remove(digest);
    }

    /// Evicts least recently used blobs, never `keep` nor one used within
    /// `min_idle`, until the cache is under its low-water mark.
    fn evict(&self, keep: Option<&Digest>) {
        let mut index = self.lock();
        if index.total <= self.limit {
            return;
        }
        let target = (self.limit as f64 * LOW_WATER) as u64;
        let mut order: Vec<(SystemTime, Digest)> =
            index.entries.iter().map(|(d, e)| (e.used, *d)).collect();
        order.sort();
        let now = SystemTime::now();
        for (used, digest) in order {
            if index.total <= target {
                break;
            }
            if Some(&digest) == keep {
                continue;
            }
            if age(used, now) < self.min_idle {
                // Everything after it was used more recently still.
                break;
            }
            // Another process sharing the directory may have used it since.
            let path = self.store.blob_path(&digest);
            if let Ok(on_disk) = std::fs::metadata(&path).and_then(|m| m.modified())
                && on_disk > used
                && age(on_disk, now) < self.min_idle
            {
                if let Some(e) = index.entries.get_mut(&digest) {
                    e.used = on_disk;
                }
                continue;
            }
            if self.store.delete(&digest).is_ok() {
                index.remove(&digest);
            }
        }
    }

    /// The index stays consistent under a panicking holder (each update
    /// is one insert or remove), so a poisoned lock is reused.
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn age(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Sets the file's mtime, its last use (best effort: the owner may set
/// the times of a read-only file).
fn touch(path: &Path, when: SystemTime) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(when);
    }
}

/// Parses a size such as `10GiB`, `500MiB`, `2GB` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "`{text}` is not a size; write e.g. 10GiB, 500MiB or 2GB"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 10GiB, 500MiB or 2GB"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{text}` is not a size"));
    }
    Ok((value * unit_bytes as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &BlobCache, bytes: &[u8]) -> Digest {
        let d = cache.store().put(bytes).unwrap();
        cache.admit(&d);
        d
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").unwrap_err().contains("10GiB"));
        assert!(parse_size("10 parsecs").is_err());
    }

    #[test]
    fn a_cache_over_its_bound_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(&dir.path().join("c"), 250, Duration::ZERO).unwrap();
        let a = put(&cache, &[1u8; 100]);
        let b = put(&cache, &[2u8; 100]);
        // `a` is used again (its use is older than a minute, so it counts).
        let old = SystemTime::now() - Duration::from_secs(600);
        cache.lock().entries.get_mut(&a).unwrap().used = old;
        cache.lock().entries.get_mut(&b).unwrap().used = old - Duration::from_secs(1);
        assert!(cache.get(&a).is_some());
        let c = put(&cache, &[3u8; 100]);
        assert!(cache.get(&b).is_none(), "b was the least recently used");
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&c).is_some());
        assert_eq!(cache.size(), 200);
        assert!(cache.size() <= cache.limit());
    }

    #[test]
    fn recently_used_blobs_are_kept_even_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(&dir.path().join("c"), 150, Duration::from_secs(3600)).unwrap();
        let a = put(&cache, &[1u8; 100]);
        let b = put(&cache, &[2u8; 100]);
        assert!(cache.get(&a).is_some() && cache.get(&b).is_some());
        assert_eq!(cache.size(), 200);
    }

    #[test]
    fn reopening_indexes_the_directory_and_trims_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let (a, b) = {
            let cache = BlobCache::open(&root, 1 << 20, Duration::ZERO).unwrap();
            let a = put(&cache, &[1u8; 100]);
            let b = put(&cache, &[2u8; 100]);
            (a, b)
        };
        // The older use goes first.
        touch(
            &LocalBlobStore::open(&root).unwrap().blob_path(&a),
            SystemTime::now() - Duration::from_secs(60),
        );
        let cache = BlobCache::open(&root, 150, Duration::ZERO).unwrap();
        assert_eq!(cache.size(), 100);
        assert!(cache.get(&a).is_none());
        assert!(cache.get(&b).is_some());
    }
}
