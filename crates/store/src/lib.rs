//! The datastore: a revisioned key-value store with etcd's semantics.
//!
//! Every write gets a cluster-wide, strictly increasing revision. Keys carry
//! the revision that created them and the one that last modified them;
//! updates and deletes are compare-and-swap on the latter. A watch streams
//! every change after a revision, in order, until the history it needs has
//! been compacted away. Two backends implement [`Store`]: [`sqlite`]
//! (embedded, the default) and [`etcd`].

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod sqlite;

/// One stored key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A change. For deletes, `kv` holds the last value and `mod_revision` the
/// revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    /// No change under the prefix: the store has reached `kv.mod_revision`
    /// (writes elsewhere moved the revision on). `kv.key` is empty.
    Progress,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("key already exists")]
    AlreadyExists,
    #[error("key not found")]
    NotFound,
    /// The key's mod revision was not the expected one; carries the current value.
    #[error("revision conflict")]
    Conflict(Option<KeyValue>),
    /// The requested revision is older than the compacted history.
    #[error("required revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a watch yields: an ordered batch of events, or the end of history.
pub type WatchItem = Result<Event>;

/// The receiving end of a watch.
pub type WatchStream = mpsc::UnboundedReceiver<WatchItem>;

/// The contract both backends keep.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys under a prefix, in key order, and the store's revision at that read.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;
    /// Creates a key that must not exist. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;
    /// Replaces a key whose mod revision is `expected`. Returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64>;
    /// Deletes a key, if `expected` is set only at that mod revision. Returns the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64>;
    /// The latest revision.
    async fn current_revision(&self) -> Result<i64>;
    /// The oldest revision a watch may start after.
    async fn compacted_revision(&self) -> Result<i64>;
    /// Every change under `prefix` with a revision greater than `after`, in
    /// order. Fails with [`StoreError::Compacted`] if that history is gone.
    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream>;
    /// Discards history at and before `revision`.
    async fn compact(&self, revision: i64) -> Result<()>;
    /// Asks open watches to report the current revision with a
    /// [`EventKind::Progress`] event, for stores whose revision also moves
    /// with keys outside the watched prefix.
    async fn request_progress(&self) -> Result<()> {
        Ok(())
    }
    /// A short name for logs and benchmarks.
    fn backend(&self) -> &'static str;
}

/// Opens the store named by a k3s-style `--datastore-endpoint`: empty or
/// `sqlite://PATH` for the embedded store, `http(s)://host:port,...` for etcd.
pub async fn open(endpoint: &str, default_sqlite_path: &std::path::Path) -> Result<Arc<dyn Store>> {
    if endpoint.is_empty() {
        return Ok(Arc::new(sqlite::SqliteStore::open(default_sqlite_path)?));
    }
    if let Some(path) = endpoint.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        return Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(
            path,
        ))?));
    }
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        #[cfg(feature = "etcd")]
        {
            let endpoints: Vec<String> =
                endpoint.split(',').map(|s| s.trim().to_string()).collect();
            return Ok(Arc::new(etcd::EtcdStore::connect(&endpoints).await?));
        }
        #[cfg(not(feature = "etcd"))]
        return Err(StoreError::Unavailable(
            "this build has no etcd support".into(),
        ));
    }
    Err(StoreError::Unavailable(format!(
        "unsupported datastore endpoint {endpoint:?}: use sqlite://PATH or http(s)://HOST:2379"
    )))
}

#[cfg(test)]
pub(crate) mod contract;

/// Compacts `store` every `interval`, keeping the last `keep` revisions of
/// history (as kube-apiserver does for etcd), so the log stays bounded.
pub fn spawn_compactor(
    store: Arc<dyn Store>,
    interval: std::time::Duration,
    keep: i64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(interval).await;
            let Ok(rev) = store.current_revision().await else {
                continue;
            };
            let target = rev - keep;
            if target > last {
                match store.compact(target).await {
                    Ok(()) => last = target,
                    Err(e) => tracing::warn!("compaction to {target} failed: {e}"),
                }
            }
        }
    })
}
