//! Plumbing every controller shares, as client-go provides it: an
//! [`Informer`] (an indexed in-memory copy of the objects under a key
//! prefix, kept current from the watch cache), a [`WorkQueue`] of keys and
//! [`run_controller`], which drives a reconcile function over that queue.

use kobune_apimachinery::{ApiError, ResourceInfo};
use kobune_apiserver::cache::{Cache, CacheEvent, EventType};
use kobune_apiserver::registry::Registry;
use serde_json::Value;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// The resource `group/version/plural`, or an error naming it when the
/// server does not serve it.
pub fn served(
    reg: &Registry,
    group: &str,
    version: &str,
    plural: &str,
) -> anyhow::Result<Arc<ResourceInfo>> {
    reg.resources
        .find(group, version, plural)
        .ok_or_else(|| anyhow::anyhow!("{plural} not served"))
}

// ---------------------------------------------------------------------------
// Informer

/// Maps an object to the values it is indexed under.
pub type IndexFn = fn(&Value) -> Vec<String>;

#[derive(Default)]
struct IndexState {
    objects: HashMap<String, Arc<Value>>,
    /// index name -> indexed value -> keys
    indices: HashMap<&'static str, HashMap<String, HashSet<String>>>,
}

/// The objects under a key prefix, by key and by any number of indices.
/// Handlers see the index already updated by the event they are given.
pub struct Informer {
    prefix: String,
    indexers: Vec<(&'static str, IndexFn)>,
    state: RwLock<IndexState>,
}

impl Informer {
    pub fn new(prefix: impl Into<String>) -> Informer {
        Informer {
            prefix: prefix.into(),
            indexers: vec![],
            state: RwLock::default(),
        }
    }

    /// Adds an index; call before any object is added.
    pub fn with_index(mut self, name: &'static str, f: IndexFn) -> Informer {
        self.indexers.push((name, f));
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<(String, Arc<Value>)> {
        let mut v: Vec<_> = self
            .read()
            .objects
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The objects an index maps `value` to, in key order.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<(String, Arc<Value>)> {
        let st = self.read();
        let Some(keys) = st.indices.get(index).and_then(|i| i.get(value)) else {
            return vec![];
        };
        let mut v: Vec<_> = keys
            .iter()
            .filter_map(|k| st.objects.get(k).map(|o| (k.clone(), o.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The objects [`Informer::by_index`] finds, without their keys.
    pub fn objects_by_index(&self, index: &str, value: &str) -> Vec<Arc<Value>> {
        self.by_index(index, value)
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// Adds or replaces an object (also how tests build snapshots).
    pub fn upsert(&self, key: impl Into<String>, obj: Value) {
        let key = key.into();
        self.apply(&key, Some(Arc::new(obj)));
    }

    pub fn remove(&self, key: &str) {
        self.apply(key, None);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, key: &str, obj: Option<Arc<Value>>) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let old = match &obj {
            Some(o) => st.objects.insert(key.to_string(), o.clone()),
            None => st.objects.remove(key),
        };
        for (name, f) in &self.indexers {
            let index = st.indices.entry(name).or_default();
            if let Some(old) = &old {
                for v in f(old) {
                    if let Some(keys) = index.get_mut(&v) {
                        keys.remove(key);
                        if keys.is_empty() {
                            index.remove(&v);
                        }
                    }
                }
            }
            if let Some(new) = &obj {
                for v in f(new) {
                    index.entry(v).or_default().insert(key.to_string());
                }
            }
        }
    }

    /// Applies one event (what a [`Source`] other than the cache calls).
    pub fn apply_event(&self, ev: &CacheEvent) {
        match ev.kind {
            EventType::Deleted => self.apply(&ev.key, None),
            _ => self.apply(&ev.key, Some(ev.object.clone())),
        }
    }

    /// Replaces the contents with a fresh listing; returns the differences
    /// as events (synthetic DELETED for what vanished, ADDED for the rest).
    pub fn replace(&self, initial: Vec<Arc<CacheEvent>>) -> Vec<Arc<CacheEvent>> {
        let fresh: HashSet<&str> = initial.iter().map(|e| e.key.as_str()).collect();
        let gone: Vec<(String, Arc<Value>)> = self
            .read()
            .objects
            .iter()
            .filter(|(k, _)| !fresh.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = vec![];
        for (key, last) in gone {
            let ev = Arc::new(CacheEvent {
                kind: EventType::Deleted,
                revision: kobune_apiserver::cache::rv_of(&last),
                key,
                object: last.clone(),
                prev: Some(last),
            });
            self.apply_event(&ev);
            out.push(ev);
        }
        for ev in initial {
            self.apply_event(&ev);
            out.push(ev);
        }
        out
    }

    /// Lists and starts following the cache. When this returns the index
    /// holds everything under the prefix (it has synced) and `handler` has
    /// seen an ADDED event for each object; live events follow in order.
    ///
    /// This subscribes like [`Cache::spawn_forward`] does, but keeps the
    /// initial listing apart so sync is exact, and relists when it falls
    /// too far behind instead of silently missing events.
    pub fn start<H>(
        self: &Arc<Self>,
        cache: &Arc<Cache>,
        handler: H,
    ) -> Result<tokio::task::JoinHandle<()>, ApiError>
    where
        H: Fn(&Informer, &CacheEvent) + Send + Sync + 'static,
    {
        let sub = cache.subscribe(&self.prefix, None)?;
        for ev in self.replace(sub.initial) {
            handler(self, &ev);
        }
        let (mut live, mut after) = (sub.live, sub.after);
        let inf = self.clone();
        let cache = cache.clone();
        Ok(tokio::spawn(async move {
            loop {
                match live.recv().await {
                    Ok(ev) => {
                        if ev.revision > after && ev.key.starts_with(&inf.prefix) {
                            inf.apply_event(&ev);
                            handler(&inf, &ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(prefix = %inf.prefix, "informer lagged by {n} events; relisting");
                        loop {
                            match cache.subscribe(&inf.prefix, None) {
                                Ok(sub) => {
                                    for ev in inf.replace(sub.initial) {
                                        handler(&inf, &ev);
                                    }
                                    live = sub.live;
                                    after = sub.after;
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!("informer relist failed: {e}");
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }))
    }
}

// ---------------------------------------------------------------------------
// Sources

/// What an informer's owner is told of each event.
pub type Handler = Arc<dyn Fn(&Informer, &CacheEvent) + Send + Sync>;

/// Where informers get their objects: the in-process watch [`Cache`], or
/// (in `kobune agent`) list + watch against a remote API server. Code that
/// only reads (the service proxy, NetworkPolicy rules) runs on either.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// Fills `informer` (whose prefix is `resource`'s key prefix) and keeps
    /// it current, calling `handler` for each event; returns once the
    /// informer holds a complete listing.
    async fn follow(
        self: Arc<Self>,
        resource: &ResourceInfo,
        informer: &Arc<Informer>,
        handler: Handler,
    ) -> anyhow::Result<()>;
}

#[async_trait::async_trait]
impl Source for Cache {
    async fn follow(
        self: Arc<Self>,
        _resource: &ResourceInfo,
        informer: &Arc<Informer>,
        handler: Handler,
    ) -> anyhow::Result<()> {
        informer
            .start(&self, move |i, ev| handler(i, ev))
            .map_err(|e| anyhow::anyhow!("following {}: {}", informer.prefix(), e.message))?;
        Ok(())
    }
}

/// The built-in resource served as `group/version/plural`.
pub fn builtin_resource(group: &str, version: &str, plural: &str) -> anyhow::Result<ResourceInfo> {
    kobune_apimachinery::resource::builtin(group, version, plural)
        .ok_or_else(|| anyhow::anyhow!("{plural} is not a built-in resource"))
}

// ---------------------------------------------------------------------------
// Work queue

/// Per-key exponential backoff, as client-go's ItemExponentialFailureRateLimiter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_secs(1000),
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (0-based).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures >= 40 {
            return self.max;
        }
        self.base
            .checked_mul(1u32 << failures.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<String>,
    /// Keys waiting to be processed (queued, or to be requeued when done).
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    shutting_down: bool,
}

/// A queue of keys as client-go's workqueue: a key is queued at most once,
/// is never handed to two workers at the same time (adds while it is being
/// processed are held until `done`), and failed keys come back with
/// per-key exponential backoff.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<QueueInner>,
}

struct QueueInner {
    state: Mutex<QueueState>,
    notify: Notify,
    backoff: Backoff,
}

impl Default for WorkQueue {
    fn default() -> Self {
        WorkQueue::new(Backoff::default())
    }
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> WorkQueue {
        WorkQueue {
            inner: Arc::new(QueueInner {
                state: Mutex::default(),
                notify: Notify::new(),
                backoff,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut st = self.lock();
        if st.shutting_down || !st.dirty.insert(key.clone()) {
            return;
        }
        if st.processing.contains(&key) {
            return; // requeued by done()
        }
        st.queue.push_back(key);
        drop(st);
        self.inner.notify.notify_one();
    }

    /// Adds the key once `delay` has passed.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Adds the key after its backoff, and lengthens the backoff.
    pub fn add_rate_limited(&self, key: impl Into<String>) {
        let key = key.into();
        let delay = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_insert(0);
            let d = self.inner.backoff.delay(*n);
            *n = n.saturating_add(1);
            d
        };
        self.add_after(key, delay);
    }

    /// Clears the key's backoff (after it succeeded).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many times in a row the key has failed.
    pub fn num_requeues(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Keys waiting to be handed out.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next key to process, or None once the queue shuts down.
    /// Call [`WorkQueue::done`] with it afterwards.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        self.inner.notify.notify_one();
                    }
                    return Some(key);
                }
                if st.shutting_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks a key processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut st = self.lock();
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.to_string());
            drop(st);
            self.inner.notify.notify_one();
        }
    }

    /// Stops handing out keys; workers return once the queue is drained.
    pub fn shutdown(&self) {
        self.lock().shutting_down = true;
        self.inner.notify.notify_waiters();
    }
}

// ---------------------------------------------------------------------------
// Controller loop

tokio::task_local! {
    /// How long the key being reconciled rests afterwards (see [`scanned`]).
    static REST: Cell<Duration>;
}

/// Tells the controller loop that this reconcile scanned its objects for
/// `took` (CPU work that grows with the object, such as a ReplicaSet's
/// status over 10,000 pods). Over 5 ms, the key rests three times as long
/// before it runs again, its events coalesced meanwhile, so one large
/// object cannot keep a core busy. Outside a reconcile it does nothing.
pub fn scanned(took: Duration) {
    if let Some(rest) = cooldown(took) {
        let _ = REST.try_with(|r| r.set(r.get().max(rest)));
    }
}

fn cooldown(took: Duration) -> Option<Duration> {
    (took >= Duration::from_millis(5)).then(|| (took * 3).min(Duration::from_secs(1)))
}

/// What a successful reconcile asks for.
pub type Requeue = Option<Duration>;

/// Runs `workers` workers taking keys off `queue` and reconciling them until
/// the queue shuts down. `Ok(None)`: done; `Ok(Some(d))`: look again after
/// `d`; `Err`: retry with the key's backoff. A panicking reconcile counts as
/// an error.
pub async fn run_controller<F, Fut>(
    name: &'static str,
    queue: WorkQueue,
    reconcile: F,
    workers: usize,
) where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Requeue>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut handles = vec![];
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        handles.push(tokio::spawn(async move {
            while let Some(key) = queue.get().await {
                let run = REST.scope(Cell::new(Duration::ZERO), {
                    let fut = reconcile(key.clone());
                    async move { (fut.await, REST.with(Cell::get)) }
                });
                let (result, rest) = match tokio::spawn(run).await {
                    Ok(r) => r,
                    Err(e) => (
                        Err(anyhow::anyhow!("reconcile panicked: {e}")),
                        Duration::ZERO,
                    ),
                };
                match result {
                    Ok(None) => queue.forget(&key),
                    Ok(Some(after)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), after);
                    }
                    Err(e) => {
                        let n = queue.num_requeues(&key);
                        if n < 5 {
                            tracing::debug!(controller = name, %key, "reconcile failed (retry {n}): {e:#}");
                        } else {
                            tracing::warn!(controller = name, %key, "reconcile failed (retry {n}): {e:#}");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                match (!rest.is_zero()).then_some(rest) {
                    None => queue.done(&key),
                    Some(pause) => {
                        // Still "processing": events meanwhile only mark it dirty.
                        let queue = queue.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(pause).await;
                            queue.done(&key);
                        });
                    }
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    tracing::info!(controller = name, "stopped");
}

/// Helpers the controllers' tests share: a real registry on a SQLite store
/// in a temporary directory, and polling until a condition holds.
#[cfg(test)]
pub(crate) mod test_support {
    use kobune_apiserver::cache::Cache;
    use kobune_apiserver::registry::Registry;
    use kobune_apiserver::resources::Resources;
    use kobune_store::Store;
    use std::sync::Arc;
    use std::time::Duration;

    /// A registry over a fresh SQLite store in `dir`.
    pub async fn registry(dir: &std::path::Path) -> Arc<Registry> {
        let store: Arc<dyn Store> =
            Arc::new(kobune_store::sqlite::SqliteStore::open(&dir.join("db.sqlite")).unwrap());
        let cache = Cache::start(store.clone(), kobune_apiserver::cache::DEFAULT_HISTORY)
            .await
            .unwrap();
        Arc::new(Registry {
            store,
            cache,
            resources: Arc::new(Resources::new()),
            service_cidr: ("10.43.0.0".parse().unwrap(), 16),
            service_accounts: None,
            default_tolerations: Default::default(),
        })
    }

    /// Polls `f` every 20ms; panics naming `what` after 15s.
    pub async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn backoff_doubles_from_5ms_to_1000s() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::from_millis(5));
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(10), Duration::from_millis(5 * 1024));
        assert_eq!(b.delay(20), Duration::from_secs(1000));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1000));
    }

    #[tokio::test]
    async fn queue_deduplicates_and_holds_keys_in_processing() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added while processing: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done("b");
        q.done("a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done("a");
        q.shutdown();
        assert_eq!(q.get().await, None);
    }

    #[tokio::test]
    async fn rate_limited_keys_back_off_and_forget_resets() {
        let q = WorkQueue::default();
        q.add_rate_limited("k");
        q.add_rate_limited("k");
        assert_eq!(q.num_requeues("k"), 2);
        let got = tokio::time::timeout(Duration::from_secs(1), q.get())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("k"));
        q.forget("k");
        assert_eq!(q.num_requeues("k"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_keys_rest_and_coalesce_their_events_but_see_the_last_one() {
        assert_eq!(cooldown(Duration::from_millis(1)), None);
        assert_eq!(
            cooldown(Duration::from_millis(20)),
            Some(Duration::from_millis(60))
        );
        assert_eq!(
            cooldown(Duration::from_secs(5)),
            Some(Duration::from_secs(1))
        );
        let q = WorkQueue::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let latest = Arc::new(AtomicUsize::new(0));
        let (s, r, l) = (seen.clone(), runs.clone(), latest.clone());
        tokio::spawn(run_controller(
            "slow",
            q.clone(),
            move |_key: String| {
                let (s, r, l) = (s.clone(), r.clone(), l.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    s.store(l.load(Ordering::SeqCst), Ordering::SeqCst);
                    // A reconcile that scans for 20 ms, then waits on a write.
                    std::thread::sleep(Duration::from_millis(20));
                    scanned(Duration::from_millis(20));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(None)
                }
            },
            2,
        ));
        // 100 events in 400 ms.
        for i in 1..=100 {
            latest.store(i, Ordering::SeqCst);
            q.add("big");
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = runs.load(Ordering::SeqCst);
        // Each run is followed by 60 ms of rest: about 400 / 85 runs, not 16.
        assert!((3..=9).contains(&n), "{n} runs");
        assert_eq!(seen.load(Ordering::SeqCst), 100, "the last event was seen");
        q.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controller_never_runs_a_key_twice_at_once_and_retries_errors() {
        let q = WorkQueue::default();
        let running = Arc::new(Mutex::new(HashSet::<String>::new()));
        let overlap = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (r, o, c) = (running.clone(), overlap.clone(), calls.clone());
        let q2 = q.clone();
        let task = tokio::spawn(run_controller(
            "test",
            q.clone(),
            move |key: String| {
                let (r, o, c, q2) = (r.clone(), o.clone(), c.clone(), q2.clone());
                async move {
                    if !r.lock().unwrap().insert(key.clone()) {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    // Re-add ourselves while running: must not run concurrently.
                    q2.add(key.clone());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    r.lock().unwrap().remove(&key);
                    if n < 3 {
                        anyhow::bail!("transient")
                    }
                    Ok(None)
                }
            },
            4,
        ));
        q.add("x");
        tokio::time::timeout(Duration::from_secs(5), async {
            while calls.load(Ordering::SeqCst) < 8 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        q.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(overlap.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn informer_indexes_follow_updates() {
        fn label(v: &Value) -> Vec<String> {
            v.pointer("/metadata/labels/app")
                .and_then(Value::as_str)
                .map(|s| vec![s.to_string()])
                .unwrap_or_default()
        }
        let inf = Informer::new("/registry/").with_index("app", label);
        inf.upsert("/k1", json!({"metadata": {"labels": {"app": "a"}}}));
        inf.upsert("/k2", json!({"metadata": {"labels": {"app": "a"}}}));
        assert_eq!(inf.by_index("app", "a").len(), 2);
        inf.upsert("/k1", json!({"metadata": {"labels": {"app": "b"}}}));
        assert_eq!(inf.by_index("app", "a").len(), 1);
        assert_eq!(inf.by_index("app", "b")[0].0, "/k1");
        inf.remove("/k2");
        assert!(inf.by_index("app", "a").is_empty());
        assert_eq!(inf.len(), 1);
    }
}
