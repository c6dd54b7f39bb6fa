//! The etcd backend (v3 API), for clusters that outgrow one machine.
//! Each operation maps to one etcd request; creates, updates and deletes are
//! transactions comparing the key's create or mod revision.

use crate::{Event, EventKind, KeyValue, Result, Store, StoreError, WatchStream};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::mpsc;

pub struct EtcdStore {
    client: Client,
    compacted: AtomicI64,
    /// One per open watch: asks it for a progress notification.
    progress: std::sync::Mutex<Vec<mpsc::UnboundedSender<()>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().into(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or_default()
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(unavailable)?;
        Ok(EtcdStore {
            client,
            compacted: AtomicI64::new(0),
            progress: Default::default(),
        })
    }

    /// Runs a transaction guarded by `cmp`; on failure reads the key back.
    async fn guarded(
        &self,
        key: &str,
        cmp: Compare,
        op: TxnOp,
    ) -> Result<std::result::Result<i64, Option<KeyValue>>> {
        let txn = Txn::new()
            .when(vec![cmp])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(unavailable)?;
        if resp.succeeded() {
            return Ok(Ok(header_rev(resp.header())));
        }
        let cur = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(convert),
            _ => None,
        });
        Ok(Err(cur))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(unavailable)?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        Ok((
            resp.kvs().iter().map(convert).collect(),
            header_rev(resp.header()),
        ))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let cmp = Compare::create_revision(key, CompareOp::Equal, 0);
        match self.guarded(key, cmp, TxnOp::put(key, value, None)).await? {
            Ok(rev) => Ok(rev),
            Err(_) => Err(StoreError::AlreadyExists),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64> {
        let cmp = Compare::mod_revision(key, CompareOp::Equal, expected);
        match self.guarded(key, cmp, TxnOp::put(key, value, None)).await? {
            Ok(rev) => Ok(rev),
            Err(None) => Err(StoreError::NotFound),
            Err(cur) => Err(StoreError::Conflict(cur)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
        let cmp = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        match self.guarded(key, cmp, TxnOp::delete(key, None)).await? {
            Ok(rev) => Ok(rev),
            Err(None) => Err(StoreError::NotFound),
            Err(cur) => Err(StoreError::Conflict(cur)),
        }
    }

    async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .client
            .clone()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(header_rev(resp.header()))
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.compacted.load(Ordering::SeqCst))
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let mut stream = self
            .client
            .clone()
            .watch(prefix, Some(opts))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<()>();
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(progress_tx);
        tokio::spawn(async move {
            let mut last = after;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    Some(()) = progress_rx.recv() => {
                        let _ = stream.request_progress().await;
                        continue;
                    }
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e)));
                        break;
                    }
                };
                if msg.compact_revision() > 0 {
                    let _ = tx.send(Err(StoreError::Compacted {
                        requested: after,
                        compacted: msg.compact_revision(),
                    }));
                    break;
                }
                if msg.canceled() {
                    let _ = tx.send(Err(unavailable(format!(
                        "watch canceled: {}",
                        msg.cancel_reason()
                    ))));
                    break;
                }
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let event = match ev.event_type() {
                        EventType::Put => Event {
                            kind: EventKind::Put,
                            kv: convert(kv),
                        },
                        EventType::Delete => {
                            // A delete carries the previous value when prev_kv was asked for.
                            let mut last = ev.prev_kv().map(convert).unwrap_or_else(|| convert(kv));
                            last.mod_revision = kv.mod_revision();
                            Event {
                                kind: EventKind::Delete,
                                kv: last,
                            }
                        }
                    };
                    last = last.max(event.kv.mod_revision);
                    if tx.send(Ok(event)).is_err() {
                        return;
                    }
                }
                let rev = header_rev(msg.header());
                // The `created` reply precedes replayed history: only real progress notifications count.
                if msg.events().is_empty() && !msg.created() && rev > last {
                    last = rev;
                    let kv = KeyValue {
                        key: String::new(),
                        value: Vec::new().into(),
                        create_revision: 0,
                        mod_revision: rev,
                    };
                    if tx
                        .send(Ok(Event {
                            kind: EventKind::Progress,
                            kv,
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.client.clone().compact(revision, None).await {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn request_progress(&self) -> Result<()> {
        let mut senders = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        senders.retain(|s| s.send(()).is_ok());
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

/// A throwaway single-member etcd for tests, on loopback ports.
#[cfg(test)]
pub(crate) mod testing {
    use std::process::{Child, Command, Stdio};

    pub struct TestEtcd {
        child: Child,
        _dir: tempfile::TempDir,
        pub endpoint: String,
    }

    impl Drop for TestEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[allow(clippy::zombie_processes)] // TestEtcd's Drop kills and waits.
    pub async fn start() -> TestEtcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .args([
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--logger=zap",
                "--log-outputs=stderr",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "etcd must be installed (apt-get install etcd-server) for the etcd backend tests",
            );
        for _ in 0..200 {
            if let Ok(mut c) = etcd_client::Client::connect([&endpoint], None).await {
                if c.status().await.is_ok() {
                    return TestEtcd {
                        child,
                        _dir: dir,
                        endpoint,
                    };
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("etcd did not become ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let etcd = testing::start().await;
        let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .unwrap();
        crate::contract::run(&store, "/t/").await;
    }

    #[tokio::test]
    async fn progress_reports_revisions_moved_by_other_prefixes() {
        let etcd = testing::start().await;
        let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .unwrap();
        let r1 = store.create("/registry/a", b"1".to_vec()).await.unwrap();
        let mut w = store.watch("/registry/", r1).await.unwrap();
        let r2 = store.create("/elsewhere/b", b"2".to_vec()).await.unwrap();
        assert!(r2 > r1);
        store.request_progress().await.unwrap();
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), w.recv())
            .await
            .expect("progress within 5s")
            .unwrap()
            .unwrap();
        assert_eq!((ev.kind, ev.kv.mod_revision), (EventKind::Progress, r2));
    }
}
