//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection: several servers sharing one store agree on one holder
//! of `kube-system/kobune-controllers`, and only the holder runs the
//! controllers and the scheduler.
//!
//! The holder renews `renewTime` every [`RETRY_PERIOD`]; every write is a
//! compare-and-swap on the Lease's resourceVersion, so two candidates can
//! never both succeed. A candidate takes the lease over when it is free
//! (no holder: released on shutdown) or when its record has not changed
//! for `leaseDurationSeconds` as measured on the candidate's own clock
//! (client-go's observedTime, immune to clock skew); a takeover counts in
//! `leaseTransitions`. A holder that cannot renew within
//! [`RENEW_DEADLINE`] stops leading.
//!
//! Everything started while leading runs on a dedicated tokio runtime;
//! losing the lease shuts that runtime down, which ends every controller
//! task at once, and the process goes back to being a candidate.

use crate::workload::i64_at;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "kobune-controllers";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// A Lease's MicroTime.
fn micro_time() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What to run while leading (on the leading runtime).
pub type StartFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

#[derive(Default)]
struct Observed {
    /// (holder, resourceVersion) last seen, and when it was first seen.
    record: Option<(String, String)>,
    at: Option<Instant>,
}

/// One candidate.
pub struct Elector {
    reg: Arc<Registry>,
    info: Arc<ResourceInfo>,
    pub identity: String,
    pub lease_duration: Duration,
    opts: WriteOptions,
    observed: Mutex<Observed>,
}

impl Elector {
    pub fn new(reg: Arc<Registry>, identity: &str) -> anyhow::Result<Elector> {
        let info = reg
            .resources
            .find("coordination.k8s.io", "v1", "leases")
            .ok_or_else(|| anyhow::anyhow!("leases not served"))?;
        Ok(Elector {
            reg,
            info,
            identity: identity.to_string(),
            lease_duration: LEASE_DURATION,
            opts: WriteOptions {
                field_manager: Some(crate::FIELD_MANAGER.into()),
                ..Default::default()
            },
            observed: Mutex::default(),
        })
    }

    fn spec(&self, acquire_time: &str, transitions: i64) -> Value {
        json!({
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration.as_secs(),
            "acquireTime": acquire_time,
            "renewTime": micro_time(),
            "leaseTransitions": transitions,
        })
    }

    /// Acquires or renews the lease; true while this candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> anyhow::Result<bool> {
        let ns = Some(LEASE_NAMESPACE);
        let current = match self.reg.get(&self.info, ns, LEASE_NAME).await {
            Ok(l) => l,
            Err(e) if e.code == 404 => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE},
                    "spec": self.spec(&micro_time(), 0),
                });
                return match self.reg.create(&self.info, ns, lease, &self.opts).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let holder = current
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let duration = current
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(self.lease_duration);
        let expired = {
            let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let record = Some((holder.clone(), rv));
            if o.record != record {
                o.record = record;
                o.at = Some(Instant::now());
            }
            o.at.is_some_and(|t| t.elapsed() >= duration)
        };
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = i64_at(&current, "/spec/leaseTransitions");
        let spec = if mine {
            let acquired = current
                .pointer("/spec/acquireTime")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(micro_time);
            self.spec(&acquired, transitions)
        } else {
            self.spec(&micro_time(), transitions + 1)
        };
        let mut lease = current.clone();
        lease["spec"] = spec;
        match self
            .reg
            .update(&self.info, ns, LEASE_NAME, lease, &self.opts, None)
            .await
        {
            Ok(_) => {
                if !mine {
                    tracing::info!(identity = %self.identity, previous = %holder, "acquired the controller lease");
                }
                Ok(true)
            }
            Err(e) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up (when shutting down) so another candidate can
    /// take over at once.
    pub async fn release(&self) {
        let ns = Some(LEASE_NAMESPACE);
        let Ok(mut lease) = self.reg.get(&self.info, ns, LEASE_NAME).await else {
            return;
        };
        if lease
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            != Some(self.identity.as_str())
        {
            return;
        }
        lease["spec"]["holderIdentity"] = Value::Null;
        lease["spec"]["leaseDurationSeconds"] = json!(1);
        lease["spec"]["renewTime"] = json!(micro_time());
        if let Err(e) = self
            .reg
            .update(&self.info, ns, LEASE_NAME, lease, &self.opts, None)
            .await
        {
            tracing::warn!("releasing the controller lease: {e}");
        }
    }
}

/// Leadership, as the rest of the process sees it.
pub struct LeaderHandle {
    pub elector: Arc<Elector>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LeaderHandle {
    /// Stops leading (ending what was started) and releases the lease.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.elector.release().await;
    }
}

struct Term {
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Term {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which async contexts forbid.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Term {
    /// Starts `start` on a fresh runtime and waits for it to return.
    async fn begin(start: &StartFn) -> anyhow::Result<Term> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kobune-leading")
            .enable_all()
            .build()?;
        let fut = start();
        match rt.spawn(fut).await {
            Ok(Ok(())) => Ok(Term { rt: Some(rt) }),
            Ok(Err(e)) => {
                rt.shutdown_background();
                Err(e)
            }
            Err(e) => {
                rt.shutdown_background();
                Err(e.into())
            }
        }
    }

    fn end(self) {
        drop(self);
    }
}

/// Campaigns for the lease and runs `start` while holding it. The first
/// attempt happens before this returns (so an uncontended server starts
/// its controllers as before); the campaign then continues in the
/// background until [`LeaderHandle::shutdown`].
pub async fn start_leading(
    reg: Arc<Registry>,
    identity: &str,
    start: StartFn,
) -> anyhow::Result<Arc<LeaderHandle>> {
    let elector = Arc::new(Elector::new(reg, identity)?);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut term = None;
    match elector.try_acquire_or_renew().await {
        Ok(true) => {
            tracing::info!(identity, "leading: starting controllers");
            term = Some(Term::begin(&start).await?);
        }
        Ok(false) => tracing::info!(identity, "another server leads; waiting for the lease"),
        Err(e) => tracing::warn!("leader election: {e}"),
    }
    let e = elector.clone();
    let task = tokio::spawn(async move {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
                _ = stopped.changed() => break,
            }
            let ok = match e.try_acquire_or_renew().await {
                Ok(ok) => ok,
                Err(err) => {
                    tracing::warn!("leader election: {err}");
                    false
                }
            };
            match (ok, term.is_some()) {
                (true, true) => last_renew = Instant::now(),
                (true, false) => {
                    tracing::info!(identity = %e.identity, "leading: starting controllers");
                    match Term::begin(&start).await {
                        Ok(t) => {
                            term = Some(t);
                            last_renew = Instant::now();
                        }
                        Err(err) => tracing::error!("starting controllers: {err:#}"),
                    }
                }
                (false, true) if last_renew.elapsed() >= RENEW_DEADLINE => {
                    tracing::warn!(identity = %e.identity, "leader election lost: stopping controllers");
                    if let Some(t) = term.take() {
                        t.end();
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = term.take() {
            t.end();
        }
    });
    Ok(Arc::new(LeaderHandle {
        elector,
        stop,
        task: Mutex::new(Some(task)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry(dir: &std::path::Path) -> Arc<Registry> {
        let reg = crate::runtime::test_support::registry(dir).await;
        let info = reg.resources.find("", "v1", "namespaces").unwrap();
        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE}});
        reg.create(&info, None, ns, &WriteOptions::default())
            .await
            .unwrap();
        reg.cache.sync().await.unwrap();
        reg
    }

    async fn get_lease(reg: &Registry) -> Value {
        let info = reg
            .resources
            .find("coordination.k8s.io", "v1", "leases")
            .unwrap();
        reg.get(&info, Some(LEASE_NAMESPACE), LEASE_NAME)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_takeover_after_expiry_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        let mut a = Elector::new(reg.clone(), "a").unwrap();
        let mut b = Elector::new(reg.clone(), "b").unwrap();
        a.lease_duration = Duration::from_millis(1000);
        b.lease_duration = Duration::from_millis(1000);
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(a.try_acquire_or_renew().await.unwrap(), "renews");
        // The lease says 1 s (whole seconds); b sees no change for that long.
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "expired: taken over"
        );
        let lease = get_lease(&reg).await;
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
        b.release().await;
        assert!(
            a.try_acquire_or_renew().await.unwrap(),
            "released: free at once"
        );
        let lease = get_lease(&reg).await;
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        assert_eq!(lease["spec"]["leaseTransitions"], 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_runs_while_leading_stops_with_the_term() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let start: StartFn = Arc::new(move || {
            let t = t.clone();
            Box::pin(async move {
                // Spawned on the leading runtime, like the controllers.
                tokio::spawn(async move {
                    loop {
                        t.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                Ok(())
            })
        });
        let handle = start_leading(reg.clone(), "solo", start).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ticks.load(Ordering::SeqCst) > 0, "started while leading");
        handle.shutdown().await;
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            ticks.load(Ordering::SeqCst) <= after + 1,
            "stopped with the term"
        );
        let lease = get_lease(&reg).await;
        assert!(
            lease["spec"]["holderIdentity"].is_null(),
            "released: {lease}"
        );
        // Another candidate leads at once.
        let other = Elector::new(reg.clone(), "next").unwrap();
        assert!(other.try_acquire_or_renew().await.unwrap());
    }
}
