//! The watch cache: every object in memory, fed by one store watch, so
//! gets, lists and watches never touch the store. It keeps a window of
//! recent events so watches can resume from a resourceVersion; older ones
//! get 410 Expired, as from a real API server.

use kobune_apimachinery::ApiError;
use kobune_store::{EventKind, KeyValue, Store, StoreError};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// How many recent events a watch can resume from, by default.
pub const DEFAULT_HISTORY: usize = 20_000;
/// How far a live watcher may fall behind before it is closed with 410.
const BROADCAST: usize = 65_536;
pub const ROOT: &str = "/registry/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// How long a read waits for the watch before asking the store for progress.
const PROGRESS_AFTER_MS: u64 = 200;

#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    pub key: String,
    pub revision: i64,
    /// The object after the change (for deletes: its last state, at the delete's revision).
    pub object: Arc<Value>,
    /// The state before; for a modification replayed from store history it may be unknown.
    pub prev: Option<Arc<Value>>,
}

struct State {
    revision: i64,
    /// Events with a revision above this are all in `history`.
    history_start: i64,
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<CacheEvent>>,
}

pub struct Cache {
    history_size: usize,
    state: RwLock<State>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<i64>,
    store: Arc<dyn Store>,
}

fn decode(kv: &KeyValue, revision: i64) -> Option<Value> {
    let mut v: Value = match serde_json::from_slice(&kv.value) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("undecodable object at {}: {e}", kv.key);
            return None;
        }
    };
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
    Some(v)
}

/// A watcher's view: events for keys under a prefix, after a revision.
pub struct Subscription {
    pub initial: Vec<Arc<CacheEvent>>,
    pub live: broadcast::Receiver<Arc<CacheEvent>>,
    /// Live events at or below this revision were already in `initial`.
    pub after: i64,
}

impl Cache {
    /// Lists the store and starts following it.
    pub async fn start(
        store: Arc<dyn Store>,
        history_size: usize,
    ) -> Result<Arc<Cache>, StoreError> {
        let (kvs, rev) = store.list(ROOT).await?;
        let (history, history_start) = Self::load_history(&store, rev, history_size).await;
        let objects = kvs
            .iter()
            .filter_map(|kv| decode(kv, kv.mod_revision).map(|v| (kv.key.clone(), Arc::new(v))))
            .collect();
        let (events, _) = broadcast::channel(BROADCAST);
        let (revision, _) = watch::channel(rev);
        let cache = Arc::new(Cache {
            history_size,
            state: RwLock::new(State {
                revision: rev,
                history_start,
                objects,
                history,
            }),
            events,
            revision,
            store: store.clone(),
        });
        let stream = store.watch(ROOT, rev).await?;
        let c = cache.clone();
        tokio::spawn(async move { c.follow(stream).await });
        Ok(cache)
    }

    /// Reads the store's retained history up to `rev`, so watches can resume
    /// across a restart from a resourceVersion a client saw before it.
    async fn load_history(
        store: &Arc<dyn Store>,
        rev: i64,
        size: usize,
    ) -> (VecDeque<Arc<CacheEvent>>, i64) {
        let compacted = store.compacted_revision().await.unwrap_or(rev);
        let start = compacted.max(rev - size as i64).max(0);
        let mut history = VecDeque::new();
        if start >= rev {
            return (history, rev);
        }
        let mut stream = match store.watch(ROOT, start).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "watch history after {start} unavailable ({e}): watches resume from {rev} on"
                );
                return (history, rev);
            }
        };
        let mut last: std::collections::HashMap<String, Arc<Value>> = Default::default();
        loop {
            let item = match tokio::time::timeout(Duration::from_secs(5), stream.recv()).await {
                Ok(Some(Ok(ev))) => ev,
                outcome => {
                    let why = match outcome {
                        Ok(Some(Err(e))) => e.to_string(),
                        Ok(None) => "the store's watch ended".into(),
                        _ => "no event for 5 s".into(),
                    };
                    tracing::warn!(
                        "loading watch history {start}..{rev} stopped at {} events: {why}; watches resume from {rev} on",
                        history.len()
                    );
                    return (VecDeque::new(), rev);
                }
            };
            let r = item.kv.mod_revision;
            if r > rev {
                break;
            }
            if item.kind == EventKind::Progress {
                if r == rev {
                    break;
                }
                continue;
            }
            if let Some(v) = decode(&item.kv, r) {
                let obj = Arc::new(v);
                let prev = match item.kind {
                    EventKind::Put | EventKind::Progress => {
                        last.insert(item.kv.key.clone(), obj.clone())
                    }
                    EventKind::Delete => last.remove(&item.kv.key),
                };
                let kind = match item.kind {
                    EventKind::Delete => EventType::Deleted,
                    _ if item.kv.create_revision == r => EventType::Added,
                    _ => EventType::Modified,
                };
                history.push_back(Arc::new(CacheEvent {
                    kind,
                    key: item.kv.key.clone(),
                    revision: r,
                    object: obj,
                    prev,
                }));
            }
            if r == rev {
                break;
            }
        }
        (history, start)
    }

    async fn follow(self: Arc<Self>, mut stream: kobune_store::WatchStream) {
        loop {
            while let Some(item) = stream.recv().await {
                match item {
                    Ok(ev) => self.apply(ev),
                    Err(e) => {
                        tracing::warn!("store watch ended: {e}; relisting");
                        break;
                    }
                }
            }
            // The store watch broke: relist, emit the differences, follow again.
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match self.relist().await {
                    Ok(s) => {
                        stream = s;
                        break;
                    }
                    Err(e) => tracing::warn!("relist failed: {e}"),
                }
            }
        }
    }

    async fn relist(&self) -> Result<kobune_store::WatchStream, StoreError> {
        let (kvs, rev) = self.store.list(ROOT).await?;
        let fresh: BTreeMap<String, KeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let r = self.merge_relist(fresh, rev);
        self.revision.send_replace(r);
        self.store.watch(ROOT, rev).await
    }

    /// Applies a fresh listing, emitting events for what changed meanwhile.
    fn merge_relist(&self, fresh: BTreeMap<String, KeyValue>, rev: i64) -> i64 {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = st
            .objects
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(prev) = st.objects.remove(&key) {
                let mut last = (*prev).clone();
                set_rv(&mut last, rev);
                let ev = CacheEvent {
                    kind: EventType::Deleted,
                    key,
                    revision: rev,
                    object: Arc::new(last),
                    prev: Some(prev),
                };
                self.push(&mut st, ev);
            }
        }
        for (key, kv) in fresh {
            let old_rv = st.objects.get(&key).map(|o| rv_of(o));
            if old_rv == Some(kv.mod_revision) {
                continue;
            }
            let Some(v) = decode(&kv, kv.mod_revision) else {
                continue;
            };
            let obj = Arc::new(v);
            let prev = st.objects.insert(key.clone(), obj.clone());
            let kind = if prev.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            };
            self.push(
                &mut st,
                CacheEvent {
                    kind,
                    key,
                    revision: kv.mod_revision.max(rev),
                    object: obj,
                    prev,
                },
            );
        }
        st.revision = st.revision.max(rev);
        st.revision
    }

    fn apply(&self, ev: kobune_store::Event) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let rev = ev.kv.mod_revision;
        if rev <= st.revision {
            return;
        }
        let key = ev.kv.key.clone();
        match ev.kind {
            EventKind::Progress => {}
            EventKind::Put => {
                if let Some(v) = decode(&ev.kv, rev) {
                    let obj = Arc::new(v);
                    let prev = st.objects.insert(key.clone(), obj.clone());
                    let kind = if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    self.push(
                        &mut st,
                        CacheEvent {
                            kind,
                            key,
                            revision: rev,
                            object: obj,
                            prev,
                        },
                    );
                }
            }
            EventKind::Delete => {
                let prev = st.objects.remove(&key);
                let last = prev
                    .as_ref()
                    .map(|p| (**p).clone())
                    .or_else(|| decode(&ev.kv, rev));
                if let Some(mut last) = last {
                    set_rv(&mut last, rev);
                    self.push(
                        &mut st,
                        CacheEvent {
                            kind: EventType::Deleted,
                            key,
                            revision: rev,
                            object: Arc::new(last),
                            prev,
                        },
                    );
                }
            }
        }
        st.revision = rev;
        drop(st);
        self.revision.send_replace(rev);
    }

    fn push(&self, st: &mut State, ev: CacheEvent) {
        let ev = Arc::new(ev);
        st.history.push_back(ev.clone());
        while st.history.len() > self.history_size {
            if let Some(old) = st.history.pop_front() {
                st.history_start = old.revision;
            }
        }
        let _ = self.events.send(ev);
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the cache has seen `rev` (read-your-writes).
    pub async fn wait_for(&self, rev: i64) -> Result<(), ApiError> {
        let mut rx = self.revision.subscribe();
        let done = matches!(
            tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|r| *r >= rev)).await,
            Ok(Ok(_))
        );
        match done {
            true => Ok(()),
            _ => Err(ApiError::timeout(format!(
                "Too large resource version: {rev}, current: {}",
                self.revision()
            ))),
        }
    }

    /// Waits until the cache holds everything the store has acknowledged.
    pub async fn sync(&self) -> Result<i64, ApiError> {
        let rev = self
            .store
            .current_revision()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if self.revision() < rev {
            // Events under our prefix arrive within milliseconds. Only when
            // writes outside it moved a shared store's revision, ask the
            // watch to confirm how far it has got: etcd before 3.4.24 may
            // send that confirmation ahead of events still queued on the
            // stream, so it must not be asked for on every busy read.
            let mut rx = self.revision.subscribe();
            let quick = matches!(
                tokio::time::timeout(
                    Duration::from_millis(PROGRESS_AFTER_MS),
                    rx.wait_for(|r| *r >= rev),
                )
                .await,
                Ok(Ok(_))
            );
            if !quick {
                let _ = self.store.request_progress().await;
            }
        }
        self.wait_for(rev).await?;
        Ok(rev.max(self.revision()))
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .objects
            .get(key)
            .cloned()
    }

    /// Objects with keys under `prefix` starting after `start` (exclusive), in key order.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> (Vec<(String, Arc<Value>)>, i64) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let lower = match start_after {
            Some(s) if s >= prefix => std::ops::Bound::Excluded(s.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let items = st
            .objects
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (items, st.revision)
    }

    /// Subscribes to changes under `prefix`: from now with synthetic ADDED
    /// events for what exists (`from` = None), or replaying after `from`.
    pub fn subscribe(&self, prefix: &str, from: Option<i64>) -> Result<Subscription, ApiError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let live = self.events.subscribe();
        let initial = match from {
            None => st
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| {
                    Arc::new(CacheEvent {
                        kind: EventType::Added,
                        key: k.clone(),
                        revision: rv_of(v),
                        object: v.clone(),
                        prev: None,
                    })
                })
                .collect(),
            Some(rev) => {
                if rev < st.history_start {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rev} ({})",
                        st.history_start
                    )));
                }
                st.history
                    .iter()
                    .filter(|e| e.revision > rev && e.key.starts_with(prefix))
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            initial,
            live,
            after: st.revision,
        })
    }

    /// The in-memory store behind this cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Forwards matching events to a channel; used by in-process informers.
    pub fn spawn_forward(
        self: &Arc<Self>,
        prefix: String,
        tx: mpsc::UnboundedSender<Arc<CacheEvent>>,
    ) -> Result<(), ApiError> {
        let sub = self.subscribe(&prefix, None)?;
        tokio::spawn(async move {
            for e in sub.initial {
                if tx.send(e).is_err() {
                    return;
                }
            }
            let mut live = sub.live;
            loop {
                match live.recv().await {
                    Ok(e) if e.revision > sub.after || !e.key.starts_with(&prefix) => {
                        if e.key.starts_with(&prefix) && tx.send(e).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("informer lagged by {n} events")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(())
    }
}

pub fn rv_of(v: &Value) -> i64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}
