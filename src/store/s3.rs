//! Blobs on an S3-compatible object store (AWS S3, MinIO, Ceph, …), for a
//! team whose workers share one cache, with a bounded local read-through
//! cache on each worker.
//!
//! ```text
//! s3://bucket/prefix/sha256/<hex>          one object per blob
//! <state_dir>/blob-cache/                  verified local copies (LRU)
//! ```
//!
//! Objects are named by the SHA-256 of their bytes, so a put is
//! idempotent: an object already there is left alone, and two workers
//! racing to upload one blob upload the same bytes. Every byte read from
//! the bucket is hashed on its way into the cache and a mismatch is
//! [`BlobError::Corrupt`]; nothing unverified is ever served. A writer
//! spools into the cache directory while hashing, and `finish` uploads
//! that file in parts, so memory stays at a few parts whatever the size.
//!
//! Credentials, region and endpoint come from the usual AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), never from a config file, and
//! never appear in an error.
//!
//! `object_store` is async and [`BlobStore`] is not; it is called from
//! plain threads and from inside the daemon's tokio runtime. The store
//! owns a small runtime of its own: each call is spawned onto it and the
//! caller waits on a std channel, which blocks but never panics the way
//! `block_on` inside a runtime does.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::blob::{BlobError, BlobInfo, BlobStore, BlobWriter};
use super::blob_cache::BlobCache;
use crate::plan::digest::Digest;

/// The default size of an upload part (S3's minimum is 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// Parts in flight at once during an upload: memory is about this many
/// parts plus the one being read.
const PARTS_IN_FLIGHT: usize = 2;

/// S3 allows at most 10 000 parts; parts grow for larger blobs.
const MAX_PARTS: u64 = 9_000;

/// `s3://bucket[/prefix]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<S3Location, String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err("not an s3:// URL".into());
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `-` or `.`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            let ok = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(format!(
                    "the prefix `{prefix}` has a bad part `{segment}` (use letters, digits, \
                     `-`, `_` and `.` between single slashes)"
                ));
            }
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, digest: &Digest) -> ObjectPath {
        ObjectPath::from(format!("{}sha256/{}", self.prefix_slash(), digest.hex()))
    }

    fn objects_prefix(&self) -> ObjectPath {
        ObjectPath::from(format!("{}sha256", self.prefix_slash()))
    }

    fn prefix_slash(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The object's URL, for messages.
    pub fn url_of(&self, digest: &Digest) -> String {
        format!("s3://{}/{}", self.bucket, self.key(digest))
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Knobs of an [`S3BlobStore`].
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The local cache directory (`<state_dir>/blob-cache`).
    pub cache_dir: PathBuf,
    /// Its size bound in bytes.
    pub cache_size: u64,
    /// Blobs used more recently than this stay cached (see `blob_cache`).
    pub cache_min_idle: Duration,
    /// The size of an upload part; blobs up to it go up in one request.
    pub part_size: usize,
}

impl S3Options {
    pub fn new(cache_dir: &Path, cache_size: u64) -> S3Options {
        S3Options {
            cache_dir: cache_dir.to_path_buf(),
            cache_size,
            cache_min_idle: super::blob_cache::DEFAULT_MIN_IDLE,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// Requests made to the bucket, by kind (for tests and figures).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct S3Requests {
    pub gets: u64,
    pub heads: u64,
    pub puts: u64,
    pub parts: u64,
    pub lists: u64,
    pub deletes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    gets: AtomicU64,
    heads: AtomicU64,
    puts: AtomicU64,
    parts: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A [`BlobStore`] on an S3 bucket, with a local read-through cache.
#[derive(Clone)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    s3: Arc<dyn ObjectStore>,
    location: S3Location,
    /// Taken in `drop`: a runtime dropped inside another runtime's
    /// context panics, so it is shut down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    cache: BlobCache,
    part_size: usize,
    counters: Counters,
    /// Credential values, scrubbed from any error text.
    secrets: Vec<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the client: its configuration holds the credentials.
        f.debug_struct("S3BlobStore")
            .field("location", &self.inner.location.to_string())
            .field("cache", &self.inner.cache.store().root())
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// Opens the store with credentials, region and endpoint from the AWS
    /// environment. Nothing is sent to the bucket until the first call.
    pub fn open(location: S3Location, options: &S3Options) -> Result<S3BlobStore, BlobError> {
        S3BlobStore::open_with(AmazonS3Builder::from_env(), location, options)
    }

    /// Opens the store on a configured builder (tests configure one in
    /// code rather than through the process environment).
    pub fn open_with(
        builder: AmazonS3Builder,
        location: S3Location,
        options: &S3Options,
    ) -> Result<S3BlobStore, BlobError> {
        let secrets: Vec<String> = [
            AmazonS3ConfigKey::AccessKeyId,
            AmazonS3ConfigKey::SecretAccessKey,
            AmazonS3ConfigKey::Token,
        ]
        .iter()
        .filter_map(|k| builder.get_config_value(k))
        .filter(|v| v.len() >= 4)
        .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-s3")
            .enable_all()
            .build()
            .map_err(|e| BlobError::Io {
                what: "cannot start the S3 client's runtime".into(),
                source: e,
            })?;
        let handle = runtime.handle().clone();
        let builder = builder
            .with_http_connector(super::s3_http::UreqConnector)
            .with_bucket_name(&location.bucket)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        // Built on the runtime: the HTTP client may want its context.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let _ = tx.send(builder.build());
        });
        let built = rx.recv().map_err(|_| BlobError::Io {
            what: "the S3 client's runtime stopped".into(),
            source: io::Error::other("runtime stopped"),
        })?;
        let s3 = built.map_err(|e| BlobError::Io {
            what: format!("cannot set up the S3 client for {location}"),
            source: io::Error::other(scrub(&e.to_string(), &secrets)),
        })?;
        let cache = BlobCache::open(
            &options.cache_dir,
            options.cache_size,
            options.cache_min_idle,
        )?;
        Ok(S3BlobStore {
            inner: Arc::new(Inner {
                s3: Arc::new(s3),
                location,
                runtime: Some(runtime),
                handle,
                cache,
                part_size: options.part_size.max(5 << 20),
                counters: Counters::default(),
                secrets,
            }),
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.inner.location
    }

    /// The local cache.
    pub fn cache(&self) -> &BlobCache {
        &self.inner.cache
    }

    /// The requests made to the bucket so far.
    pub fn requests(&self) -> S3Requests {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Requests {
            gets: get(&c.gets),
            heads: get(&c.heads),
            puts: get(&c.puts),
            parts: get(&c.parts),
            lists: get(&c.lists),
            deletes: get(&c.deletes),
        }
    }
}

impl Inner {
    /// Runs `fut` on the store's runtime and waits for it from any thread,
    /// inside a tokio runtime or not.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, BlobError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| BlobError::Io {
            what: format!("S3 client for {} stopped", self.location),
            source: io::Error::other("the store's runtime was shut down"),
        })
    }

    /// An S3 failure as a blob error naming the object, with the status
    /// the client reports, and no credential.
    fn error(&self, op: &str, digest: &Digest, e: object_store::Error) -> BlobError {
        match e {
            // A missing bucket is a 404 too, but only a read means "no such blob".
            object_store::Error::NotFound { .. } if op == "GET" => BlobError::Missing(*digest),
            e => BlobError::Io {
                what: format!("{op} {} failed", self.location.url_of(digest)),
                source: io::Error::other(scrub(&e.to_string(), &self.secrets)),
            },
        }
    }

    /// Whether the object is in the bucket (one HEAD).
    fn exists(&self, digest: &Digest) -> Result<bool, BlobError> {
        bump(&self.counters.heads);
        let s3 = Arc::clone(&self.s3);
        let key = self.location.key(digest);
        match self.block(async move { s3.head(&key).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("HEAD", digest, e)),
        }
    }

    /// One PUT that creates the object unless it exists; "it exists" is
    /// success, since the name fixes the bytes.
    fn put_whole(&self, digest: &Digest, bytes: Vec<u8>) -> Result<(), BlobError> {
        bump(&self.counters.puts);
        let s3 = Arc::clone(&self.s3);
        let key = self.location.key(digest);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.block(async move { s3.put_opts(&key, PutPayload::from(bytes), opts).await })? {
            Ok(_)
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(self.error("PUT", digest, e)),
        }
    }

    /// Uploads the cached file of `digest` unless the bucket has it: in
    /// one request when small, else in parts read from the file one at a
    /// time, at most [`PARTS_IN_FLIGHT`] in flight.
    fn upload(&self, digest: &Digest, path: &Path) -> Result<(), BlobError> {
        if self.exists(digest)? {
            return Ok(());
        }
        let io_err = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| BlobError::Io { what, source }
        };
        let mut file = File::open(path).map_err(io_err("cannot open"))?;
        let size = file.metadata().map_err(io_err("cannot read"))?.len();
        let part_size = (self.part_size as u64).max(size.div_ceil(MAX_PARTS));
        if size <= part_size {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .map_err(io_err("cannot read"))?;
            return self.put_whole(digest, bytes);
        }
        bump(&self.counters.puts);
        let s3 = Arc::clone(&self.s3);
        let key = self.location.key(digest);
        let mut upload = self
            .block(async move { s3.put_multipart(&key).await })?
            .map_err(|e| self.error("multipart upload of", digest, e))?;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<object_store::Result<()>>();
        let mut in_flight = 0usize;
        let mut failure: Option<BlobError> = None;
        let wait_one = |in_flight: &mut usize, failure: &mut Option<BlobError>| {
            *in_flight -= 1;
            match done_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(self.error("upload part of", digest, e));
                }
                Err(_) => {
                    failure.get_or_insert(BlobError::Io {
                        what: format!("S3 client for {} stopped", self.location),
                        source: io::Error::other("the store's runtime was shut down"),
                    });
                }
            }
        };
        loop {
            if in_flight >= PARTS_IN_FLIGHT {
                wait_one(&mut in_flight, &mut failure);
            }
            if failure.is_some() {
                break;
            }
            let mut part = Vec::with_capacity(part_size as usize);
            match (&mut file).take(part_size).read_to_end(&mut part) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failure = Some(io_err("cannot read")(e));
                    break;
                }
            }
            bump(&self.counters.parts);
            let fut = upload.put_part(PutPayload::from(part));
            let tx = done_tx.clone();
            self.handle.spawn(async move {
                let _ = tx.send(fut.await);
            });
            in_flight += 1;
        }
        while in_flight > 0 {
            wait_one(&mut in_flight, &mut failure);
        }
        if let Some(e) = failure {
            // Best effort: the bucket would keep the parts otherwise.
            let _ = self.block(async move { upload.abort().await });
            return Err(e);
        }
        match self.block(async move { upload.complete().await })? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error("completing the upload of", digest, e)),
        }
    }

    /// Streams the object into the cache, hashing it on the way; serves
    /// it only if it hashes to its name.
    fn download(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        let mut writer = self.cache.store().writer()?;
        self.stream(digest, |chunk| {
            writer.write_all(chunk).map_err(|e| BlobError::Io {
                what: format!("cannot cache blob {digest}"),
                source: e,
            })
        })?;
        let actual = writer.finish()?;
        if actual != *digest {
            // Stored under its own name, which is not the one asked for.
            self.cache.remove(&actual);
            return Err(self.corrupt(digest));
        }
        self.cache.admit(digest);
        Ok(self.cache.store().blob_path(digest))
    }

    /// Hands the object's bytes to `each` as they arrive (one GET).
    fn stream(
        &self,
        digest: &Digest,
        mut each: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<(), BlobError> {
        bump(&self.counters.gets);
        let s3 = Arc::clone(&self.s3);
        let key = self.location.key(digest);
        // A few chunks in flight between the network and the consumer.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<object_store::Result<_>>(8);
        self.handle.spawn(async move {
            match s3.get(&key).await {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
                Ok(result) => {
                    let mut stream = result.into_stream();
                    while let Some(chunk) = stream.next().await {
                        let failed = chunk.is_err();
                        if tx.send(chunk).await.is_err() || failed {
                            break;
                        }
                    }
                }
            }
        });
        // Not tokio's blocking_recv, which panics inside a runtime.
        while let Some(chunk) = futures::executor::block_on(rx.recv()) {
            each(&chunk.map_err(|e| self.error("GET", digest, e))?)?;
        }
        Ok(())
    }

    fn corrupt(&self, digest: &Digest) -> BlobError {
        BlobError::Corrupt {
            digest: *digest,
            path: PathBuf::from(self.location.url_of(digest)),
        }
    }

    /// The cached file of `digest`, fetched from the bucket if needed;
    /// `verify` hashes a cached copy again (a damaged copy is dropped and
    /// fetched anew).
    fn fetch(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        if self.cache.get(digest).is_some() {
            match self.cache.store().open_verified(digest) {
                Ok(path) => return Ok(path),
                // Only a copy: drop it and fetch the original.
                Err(BlobError::Corrupt { .. } | BlobError::Missing(_)) => self.cache.remove(digest),
                Err(e) => return Err(e),
            }
        }
        self.download(digest)
    }
}

/// Removes credential values from error text.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

impl BlobStore for S3BlobStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let inner = &self.inner;
        let digest = inner.cache.store().put(bytes)?;
        inner.cache.admit(&digest);
        if !inner.exists(&digest)? {
            inner.put_whole(&digest, bytes.to_vec())?;
        }
        Ok(digest)
    }

    fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(S3BlobWriter {
            spool: self.inner.cache.store().writer()?,
            inner: Arc::clone(&self.inner),
        }))
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.inner.fetch(digest)?;
        std::fs::read(&path).map_err(|e| BlobError::Io {
            what: format!("cannot read blob {digest} at {}", path.display()),
            source: e,
        })
    }

    fn open_verified(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        self.inner.fetch(digest)
    }

    fn reader(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, BlobError> {
        if self.inner.cache.get(digest).is_none() {
            self.inner.download(digest)?;
        }
        // Verified again as it streams: the copy may have been damaged.
        self.inner.cache.store().reader(digest)
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.inner.cache.get(digest).is_some() || self.inner.exists(digest).unwrap_or(false)
    }

    /// The object itself, hashed as it streams past, never cached: a
    /// check of the bucket, not of this machine's copy.
    fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        self.inner.stream(digest, |chunk| {
            sha2::Digest::update(&mut hasher, chunk);
            Ok(())
        })?;
        if Digest(sha2::Digest::finalize(hasher).into()) != *digest {
            return Err(self.inner.corrupt(digest));
        }
        Ok(())
    }

    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.inner.cache.get(digest)
    }

    /// Unknown: the local copy is the read cache, whose modification time
    /// is its last use, not a store; and a put of a blob already in the
    /// bucket writes nothing. gc's checks after deleting cover a re-put.
    fn stored_at(&self, _digest: &Digest) -> Option<SystemTime> {
        None
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let inner = &self.inner;
        bump(&inner.counters.lists);
        let s3 = Arc::clone(&inner.s3);
        let prefix = inner.location.objects_prefix();
        let listed = inner.block(async move {
            let mut out = Vec::new();
            let mut stream = s3.list(Some(&prefix));
            while let Some(meta) = stream.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        })?;
        let metas = listed.map_err(|e| BlobError::Io {
            what: format!("cannot list {}/sha256", inner.location),
            source: io::Error::other(scrub(&e.to_string(), &inner.secrets)),
        })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let digest: Digest = format!("sha256:{name}").parse().ok()?;
                (inner.location.key(&digest) == m.location).then(|| BlobInfo {
                    digest,
                    size: m.size,
                    stored_at: SystemTime::from(m.last_modified),
                })
            })
            .collect())
    }

    fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let inner = &self.inner;
        bump(&inner.counters.deletes);
        let s3 = Arc::clone(&inner.s3);
        let key = inner.location.key(digest);
        match inner.block(async move { s3.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(inner.error("DELETE", digest, e)),
        }
        inner.cache.remove(digest);
        Ok(())
    }
}

/// Spools into the cache directory while hashing; `finish` lands the
/// file in the cache under its digest, then uploads it.
struct S3BlobWriter {
    spool: Box<dyn BlobWriter>,
    inner: Arc<Inner>,
}

impl Write for S3BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
    }
}

impl BlobWriter for S3BlobWriter {
    fn finish(self: Box<Self>) -> Result<Digest, BlobError> {
        let S3BlobWriter { spool, inner } = *self;
        let digest = spool.finish()?;
        let path = inner.cache.store().blob_path(&digest);
        if let Err(e) = inner.upload(&digest, &path) {
            // Not in the bucket, so not a blob yet: no cached copy may
            // stand in for it.
            inner.cache.remove(&digest);
            return Err(e);
        }
        inner.cache.admit(&digest);
        Ok(digest)
    }
}

#[cfg(test)]
#[path = "../../tests/cli/moto.rs"]
mod moto;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::moto;
    use super::*;

    fn options(dir: &Path) -> S3Options {
        S3Options::new(&dir.join("blob-cache"), 1 << 30)
    }

    fn builder() -> AmazonS3Builder {
        let m = moto::moto();
        AmazonS3Builder::new()
            .with_http_connector(crate::store::s3_http::UreqConnector)
            .with_endpoint(&m.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing-key-id")
            .with_secret_access_key("testing-secret-key")
    }

    fn open(hint: &str, prefix: &str, options: &S3Options) -> (String, S3BlobStore) {
        let bucket = moto::moto().bucket(hint);
        let location = S3Location {
            bucket: bucket.clone(),
            prefix: prefix.into(),
        };
        (
            bucket,
            S3BlobStore::open_with(builder(), location, options).unwrap(),
        )
    }

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let l = S3Location::parse("s3://team-blobs/sluice/prod/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("team-blobs", "sluice/prod")
        );
        assert_eq!(l.to_string(), "s3://team-blobs/sluice/prod");
        let d = Digest::of(b"x");
        assert_eq!(
            l.url_of(&d),
            format!("s3://team-blobs/sluice/prod/sha256/{}", d.hex())
        );
        let bare = S3Location::parse("s3://bucket").unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(bare.url_of(&d), format!("s3://bucket/sha256/{}", d.hex()));
        for (bad, why) in [
            ("https://bucket/x", "not an s3:// URL"),
            ("s3://", "not a bucket name"),
            ("s3://Bucket_Upper", "not a bucket name"),
            ("s3://ok-bucket/a//b", "bad part"),
            ("s3://ok-bucket/a/../b", "bad part"),
            ("s3://ok-bucket/a b", "bad part"),
        ] {
            let e = S3Location::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn s3_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, store) = open("contract", "team/blobs", &options(dir.path()));
        crate::store::blob::check_contract(&store);
        // Content-addressed keys under the prefix, nothing else.
        let keys = moto::moto().keys(&bucket, "");
        assert_eq!(keys.len(), 2, "{keys:?}");
        for k in keys {
            assert!(k.starts_with("team/blobs/sha256/"), "{k}");
            assert_eq!(k.len(), "team/blobs/sha256/".len() + 64, "{k}");
        }
    }

    #[test]
    fn a_tampered_object_is_refused_by_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, store) = open("tamper", "p", &options(dir.path()));
        let d = store.put(b"patient_id\n1\n2\n").unwrap();
        // Overwritten through the S3 API directly, as a tamperer with
        // write access to the bucket would.
        let s3 = builder().with_bucket_name(&bucket).build().unwrap();
        let key = ObjectPath::from(format!("p/sha256/{}", d.hex()));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(s3.put(&key, PutPayload::from_static(b"patient_id\n1\n3\n")))
            .unwrap();
        // Not from the cache: a worker that never saw the blob.
        store.cache().remove(&d);
        let url = format!("s3://{bucket}/p/sha256/{}", d.hex());
        let check = |err: BlobError| match err {
            BlobError::Corrupt { .. }
                if !err.to_string().contains(&format!("aws s3 rm '{url}'")) =>
            {
                panic!("the message says how to remove the object: {err}")
            }
            BlobError::Corrupt { digest, path } => {
                assert_eq!(digest, d);
                assert_eq!(path, PathBuf::from(&url));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        };
        check(store.get(&d).unwrap_err());
        check(store.open_verified(&d).unwrap_err());
        check(store.reader(&d).err().unwrap());
        assert!(store.cache().get(&d).is_none(), "nothing unverified cached");
        assert_eq!(store.cache().size(), 0);
        assert!(
            store.cache().store().list().unwrap().is_empty(),
            "the tampered bytes were not kept under their own name either"
        );
    }

    #[test]
    fn a_damaged_cached_copy_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_bucket, store) = open("damaged", "", &options(dir.path()));
        let d = store.put(b"a,b\n1,2\n").unwrap();
        let path = store.cache().store().blob_path(&d);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(&path, b"a,b\n1,3\n").unwrap();
        assert_eq!(store.get(&d).unwrap(), b"a,b\n1,2\n");
        assert_eq!(store.requests().gets, 1);
    }

    #[test]
    fn a_large_blob_goes_up_in_parts_from_a_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.part_size = 5 << 20;
        let (bucket, store) = open("multipart", "big", &opts);
        // 3.4 parts, written in small pieces as a node's output is.
        let size = (5 << 20) * 3 + (2 << 20);
        let mut w = store.writer().unwrap();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let piece: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let mut written = 0;
        while written < size {
            let n = piece.len().min(size - written);
            w.write_all(&piece[..n]).unwrap();
            sha2::Digest::update(&mut hasher, &piece[..n]);
            written += n;
        }
        let d = w.finish().unwrap();
        assert_eq!(d, Digest(sha2::Digest::finalize(hasher).into()));
        let r = store.requests();
        assert_eq!((r.puts, r.parts), (1, 4), "{r:?}");
        // The bucket says so too: a multipart object's ETag ends in its part count.
        let head = ureq::head(&format!(
            "{}/{bucket}/big/sha256/{}",
            moto::moto().endpoint,
            d.hex()
        ))
        .call()
        .unwrap();
        let etag = head.headers().get("etag").unwrap().to_str().unwrap();
        assert!(etag.trim_matches('"').ends_with("-4"), "{etag}");
        let len = head
            .headers()
            .get("content-length")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(len, size.to_string());

        // Read back by a worker with an empty cache: verified, whole.
        let other = tempfile::tempdir().unwrap();
        let reader_store =
            S3BlobStore::open_with(builder(), store.location().clone(), &options(other.path()))
                .unwrap();
        let path = reader_store.open_verified(&d).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), size as u64);

        // Uploading it again is one HEAD, no part.
        let mut again = store.writer().unwrap();
        std::io::copy(&mut reader_store.reader(&d).unwrap(), &mut again).unwrap();
        assert_eq!(again.finish().unwrap(), d);
        assert_eq!(store.requests().parts, 4);
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = moto::moto().bucket("https-only");
        let location = S3Location {
            bucket,
            prefix: String::new(),
        };
        let strict = builder().with_allow_http(false);
        let store = S3BlobStore::open_with(strict, location, &options(dir.path())).unwrap();
        let err = store.put(b"patient_id\n1\n").unwrap_err().to_string();
        assert!(err.contains("https") || err.contains("HTTPS"), "{err}");
        assert_eq!(
            moto::moto().keys(&store.location().bucket, ""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_second_read_is_local_and_the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (_bucket, writer) = open("lru", "c", &options(dir.path()));
        let blobs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40_000]).collect();
        let digests: Vec<Digest> = blobs.iter().map(|b| writer.put(b).unwrap()).collect();

        // A worker whose cache holds about two of them.
        let other = tempfile::tempdir().unwrap();
        let mut opts = options(other.path());
        opts.cache_size = 100_000;
        opts.cache_min_idle = Duration::ZERO;
        let reader = S3BlobStore::open_with(builder(), writer.location().clone(), &opts).unwrap();
        assert_eq!(reader.get(&digests[0]).unwrap(), blobs[0]);
        assert_eq!(reader.requests().gets, 1);
        assert_eq!(reader.get(&digests[0]).unwrap(), blobs[0]);
        let p = reader.open_verified(&digests[0]).unwrap();
        assert!(p.starts_with(other.path().join("blob-cache")));
        assert_eq!(reader.local_path(&digests[0]), Some(p));
        let mut out = Vec::new();
        reader
            .reader(&digests[0])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, blobs[0]);
        assert_eq!(reader.requests().gets, 1, "the second reads were local");

        for (d, b) in digests.iter().zip(&blobs) {
            assert_eq!(&reader.get(d).unwrap(), b);
            assert!(
                reader.cache().size() <= 100_000,
                "{}",
                reader.cache().size()
            );
        }
        let on_disk: u64 = reader
            .cache()
            .store()
            .list()
            .unwrap()
            .iter()
            .map(|b| b.size)
            .sum();
        assert!(on_disk <= 100_000, "{on_disk}");
        assert!(on_disk >= 40_000);
        // The last one read is cached; the first was evicted and comes back from S3.
        assert!(reader.local_path(&digests[5]).is_some());
        assert!(reader.local_path(&digests[0]).is_none());
        let before = reader.requests().gets;
        assert_eq!(reader.get(&digests[0]).unwrap(), blobs[0]);
        assert_eq!(reader.requests().gets, before + 1);
    }

    #[test]
    fn concurrent_first_reads_of_one_blob_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_bucket, writer) = open("concurrent", "", &options(dir.path()));
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 199) as u8).collect();
        let d = writer.put(&bytes).unwrap();
        let other = tempfile::tempdir().unwrap();
        let reader =
            S3BlobStore::open_with(builder(), writer.location().clone(), &options(other.path()))
                .unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| reader.get(&d).unwrap()))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), bytes);
            }
        });
        assert!(files_in(&other.path().join("blob-cache/tmp")).is_empty());
        assert_eq!(reader.cache().store().list().unwrap().len(), 1);
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|e| e.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn calls_from_inside_a_tokio_runtime_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (_bucket, store) = open("tokio", "", &options(dir.path()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let s = store.clone();
        let got = rt.block_on(async move {
            // Straight from an async task, as a handler would.
            let d = s.put(b"inside").unwrap();
            s.cache().remove(&d);
            let bytes = s.get(&d).unwrap();
            let listed = s.list().unwrap().len();
            // Dropping the last handle inside the runtime is fine too.
            drop(s);
            (bytes, listed)
        });
        assert_eq!(got, (b"inside".to_vec(), 1));
        let single = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = single.block_on(async { store.put(b"current thread").unwrap() });
        assert!(store.contains(&d));
        let last = store.clone();
        drop(store);
        rt.block_on(async move { drop(last) });
    }

    #[test]
    fn errors_name_the_object_and_the_status_and_never_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let location = S3Location {
            bucket: "no-such-bucket-here".into(),
            prefix: "p".into(),
        };
        let store = S3BlobStore::open_with(builder(), location, &options(dir.path())).unwrap();
        let e = store.put(b"x").unwrap_err().to_string();
        let chain = format!("{e} {:?}", store.put(b"x").unwrap_err());
        assert!(e.contains("s3://no-such-bucket-here/p/sha256/"), "{e}");
        assert!(
            chain.contains("404") || chain.contains("NoSuchBucket"),
            "{chain}"
        );
        assert!(!chain.contains("testing-secret-key"), "{chain}");
        assert!(!chain.contains("testing-key-id"), "{chain}");
        assert!(format!("{store:?}").contains("s3://no-such-bucket-here/p"));
        assert!(!format!("{store:?}").contains("testing-secret-key"));
    }
}

/// Figures for the report: 64 MiB through moto vs the local store, and
/// the memory an upload takes.
/// `cargo test --release --features team --lib s3_figures -- --ignored --nocapture`
#[cfg(test)]
mod figures {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    fn status_kb(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Writes `size` bytes in 64 KiB pieces, never holding more.
    fn write_blob(store: &dyn BlobStore, size: usize) -> Digest {
        let mut piece: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut w = store.writer().unwrap();
        let mut written = 0;
        let mut n = 0u8;
        while written < size {
            piece[0] = n;
            n = n.wrapping_add(1);
            w.write_all(&piece).unwrap();
            written += piece.len();
        }
        w.finish().unwrap()
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --features team --lib s3_figures -- --ignored --nocapture"]
    fn s3_figures() {
        const SIZE: usize = 64 << 20;
        let mb = SIZE as f64 / (1 << 20) as f64;
        let dir = tempfile::tempdir().unwrap();
        let local = super::super::blob::LocalBlobStore::open(&dir.path().join("local")).unwrap();
        let t = Instant::now();
        let d = write_blob(&local, SIZE);
        let local_put = t.elapsed().as_secs_f64();
        let t = Instant::now();
        local.open_verified(&d).unwrap();
        let local_get = t.elapsed().as_secs_f64();

        let m = super::moto::moto();
        let bucket = m.bucket("figures");
        let builder = || {
            AmazonS3Builder::new()
                .with_endpoint(&m.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("k")
                .with_secret_access_key("s")
        };
        let location = S3Location {
            bucket,
            prefix: String::new(),
        };
        let s3 = S3BlobStore::open_with(
            builder(),
            location.clone(),
            &S3Options::new(&dir.path().join("a"), 1 << 30),
        )
        .unwrap();
        // Peak RSS from here on (writing 5 to clear_refs resets VmHWM).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let base = status_kb("VmRSS:");
        let t = Instant::now();
        let d2 = write_blob(&s3, SIZE);
        let s3_put = t.elapsed().as_secs_f64();
        let peak = status_kb("VmHWM:");
        assert_eq!(d, d2);
        let other = S3BlobStore::open_with(
            builder(),
            location,
            &S3Options::new(&dir.path().join("b"), 1 << 30),
        )
        .unwrap();
        let t = Instant::now();
        other.open_verified(&d).unwrap();
        let s3_get = t.elapsed().as_secs_f64();
        let t = Instant::now();
        other.open_verified(&d).unwrap();
        let cached_get = t.elapsed().as_secs_f64();
        eprintln!(
            "64 MiB blob: local put {:.0} MB/s, get {:.0} MB/s; moto put {:.0} MB/s ({:.1}x slower), \
             get {:.0} MB/s ({:.1}x slower), cached get {:.0} MB/s; parts {}; \
             upload peak RSS +{} KiB over {} KiB (part size {} KiB)",
            mb / local_put,
            mb / local_get,
            mb / s3_put,
            s3_put / local_put,
            mb / s3_get,
            s3_get / local_get,
            mb / cached_get,
            s3.requests().parts,
            peak.saturating_sub(base),
            base,
            DEFAULT_PART_SIZE / 1024
        );
    }
}
