//! The embedded backend: SQLite in WAL mode with `synchronous=FULL`, so a
//! write is on disk before it is acknowledged.
//!
//! One writer thread owns the write connection and commits queued writes in
//! groups (one fsync per group). Current values live in `kv`; every change is
//! also appended to `log`, keyed by revision, which is what watches replay
//! and what compaction trims. Watchers get events pushed after each commit:
//! nothing polls.

use crate::{Event, EventKind, KeyValue, Result, Store, StoreError, WatchItem, WatchStream};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

const MAX_GROUP: usize = 512;

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<i64>>,
}

struct Watcher {
    prefix: String,
    /// Events at or below this revision were already sent from the log.
    sent_up_to: i64,
    tx: mpsc::UnboundedSender<WatchItem>,
}

struct Shared {
    revision: AtomicI64,
    compacted: AtomicI64,
    watchers: Mutex<Vec<Watcher>>,
}

pub struct SqliteStore {
    writer: std_mpsc::Sender<Request>,
    reader: Arc<Mutex<Connection>>,
    shared: Arc<Shared>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(unavailable)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-16000;",
    )
    .map_err(unavailable)?;
    Ok(conn)
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\u{10ffff}".to_string()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = connect(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY, key TEXT NOT NULL, deleted INTEGER NOT NULL, value BLOB NOT NULL, create_rev INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);",
        )
        .map_err(unavailable)?;
        let get = |name: &str| -> Result<i64> {
            conn.query_row("SELECT value FROM meta WHERE name = ?", [name], |r| {
                r.get(0)
            })
            .map_err(unavailable)
        };
        let shared = Arc::new(Shared {
            revision: AtomicI64::new(get("revision")?),
            compacted: AtomicI64::new(get("compacted")?),
            watchers: Mutex::new(vec![]),
        });
        let reader = Arc::new(Mutex::new(connect(path)?));
        let (tx, rx) = std_mpsc::channel::<Request>();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_shared))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            writer: tx,
            reader,
            shared,
        })
    }

    async fn submit(&self, op: Op) -> Result<i64> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Request { op, reply })
            .map_err(|_| unavailable("writer stopped"))?;
        rx.await.map_err(|_| unavailable("writer stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }
}

fn row_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    let value: Vec<u8> = r.get(1)?;
    Ok(KeyValue {
        key: r.get(0)?,
        value: value.into(),
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
    })
}

fn current(tx: &rusqlite::Transaction<'_>, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    tx.prepare_cached("SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?")?
        .query_row([key], row_kv)
        .optional()
}

/// Applies one op inside the group's transaction. Failed checks write nothing.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: Op,
    rev: &mut i64,
    events: &mut Vec<Event>,
) -> rusqlite::Result<Result<i64>> {
    let log = |rev: i64, key: &str, deleted: bool, value: &[u8], create_rev: i64| {
        tx.prepare_cached(
            "INSERT INTO log (rev, key, deleted, value, create_rev) VALUES (?, ?, ?, ?, ?)",
        )?
        .execute(params![rev, key, deleted, value, create_rev])
    };
    match op {
        Op::Create { key, value } => {
            if current(tx, &key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists));
            }
            *rev += 1;
            tx.prepare_cached(
                "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?)",
            )?
            .execute(params![key, value, *rev, *rev])?;
            log(*rev, &key, false, &value, *rev)?;
            let kv = KeyValue {
                key,
                value: value.into(),
                create_revision: *rev,
                mod_revision: *rev,
            };
            events.push(Event {
                kind: EventKind::Put,
                kv,
            });
            Ok(Ok(*rev))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(cur) = current(tx, &key)? else {
                return Ok(Err(StoreError::NotFound));
            };
            if cur.mod_revision != expected {
                return Ok(Err(StoreError::Conflict(Some(cur))));
            }
            *rev += 1;
            tx.prepare_cached("UPDATE kv SET value = ?, mod_rev = ? WHERE key = ?")?
                .execute(params![value, *rev, key])?;
            log(*rev, &key, false, &value, cur.create_revision)?;
            let kv = KeyValue {
                key,
                value: value.into(),
                create_revision: cur.create_revision,
                mod_revision: *rev,
            };
            events.push(Event {
                kind: EventKind::Put,
                kv,
            });
            Ok(Ok(*rev))
        }
        Op::Delete { key, expected } => {
            let Some(cur) = current(tx, &key)? else {
                return Ok(Err(StoreError::NotFound));
            };
            if expected.is_some_and(|e| e != cur.mod_revision) {
                return Ok(Err(StoreError::Conflict(Some(cur))));
            }
            *rev += 1;
            tx.prepare_cached("DELETE FROM kv WHERE key = ?")?
                .execute([&key])?;
            log(*rev, &key, true, &cur.value, cur.create_revision)?;
            let kv = KeyValue {
                mod_revision: *rev,
                ..cur
            };
            events.push(Event {
                kind: EventKind::Delete,
                kv,
            });
            Ok(Ok(*rev))
        }
        Op::Compact { revision } => {
            let target = revision.min(*rev - 1);
            tx.prepare_cached("DELETE FROM log WHERE rev <= ?")?
                .execute([target])?;
            tx.prepare_cached("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'")?
                .execute([target])?;
            Ok(Ok(*rev))
        }
    }
}

fn writer_loop(mut conn: Connection, rx: std_mpsc::Receiver<Request>, shared: Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let start_rev = shared.revision.load(Ordering::SeqCst);
        let mut rev = start_rev;
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut compacted = None;
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for req in batch.drain(..) {
                if let Op::Compact { revision } = req.op {
                    compacted = Some(revision.min(rev - 1));
                }
                let res = apply(&tx, req.op, &mut rev, &mut events)?;
                replies.push((req.reply, res));
            }
            if rev != start_rev {
                tx.prepare_cached("UPDATE meta SET value = ? WHERE name = 'revision'")?
                    .execute([rev])?;
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                shared.revision.store(rev, Ordering::SeqCst);
                if let Some(c) = compacted {
                    shared.compacted.fetch_max(c, Ordering::SeqCst);
                }
                publish(&shared, &events);
                for (reply, res) in replies {
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!("sqlite commit failed: {e}");
                for (reply, _) in replies {
                    let _ = reply.send(Err(unavailable(&e)));
                }
                for req in batch {
                    let _ = req.reply.send(Err(unavailable(&e)));
                }
            }
        }
    }
}

fn publish(shared: &Shared, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    let mut watchers = shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
    watchers.retain(|w| {
        for ev in events {
            if ev.kv.mod_revision > w.sent_up_to
                && ev.kv.key.starts_with(&w.prefix)
                && w.tx.send(Ok(ev.clone())).is_err()
            {
                return false;
            }
        }
        !w.tx.is_closed()
    });
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?")?
                .query_row([key], row_kv)
                .optional()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let (start, end) = (prefix.to_string(), prefix_end(prefix));
        self.read(move |c| {
            c.execute_batch("BEGIN")?;
            let res = (|| {
                let rev: i64 = c.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
                let kvs = c
                    .prepare_cached(
                        "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                    )?
                    .query_map([&start, &end], row_kv)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((kvs, rev))
            })();
            c.execute_batch("COMMIT")?;
            res
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        self.submit(Op::Create {
            key: key.to_string(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64> {
        self.submit(Op::Update {
            key: key.to_string(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
        self.submit(Op::Delete {
            key: key.to_string(),
            expected,
        })
        .await
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (start, end) = (prefix.to_string(), prefix_end(prefix));
        let shared = self.shared.clone();
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Registering under the watchers lock, after reading the log,
            // means no event is missed; `sent_up_to` drops the ones read twice.
            let mut watchers = shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut last = after;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, create_rev, rev, deleted FROM log WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, start, end], |r| {
                    let deleted: bool = r.get(4)?;
                    Ok((row_kv(r)?, deleted))
                })
                .map_err(unavailable)?;
            for row in rows {
                let (kv, deleted) = row.map_err(unavailable)?;
                last = kv.mod_revision;
                let kind = if deleted { EventKind::Delete } else { EventKind::Put };
                let _ = tx.send(Ok(Event { kind, kv }));
            }
            watchers.push(Watcher { prefix: start, sent_up_to: last, tx });
            Ok(())
        })
        .await
        .map_err(unavailable)??;
        Ok(rx)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        crate::contract::run(&store, "/t/").await;
    }

    #[tokio::test]
    async fn survives_reopen_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let rev = {
            let store = SqliteStore::open(&path).unwrap();
            store.create("/a", b"1".to_vec()).await.unwrap();
            store.create("/b", b"2".to_vec()).await.unwrap()
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.current_revision().await.unwrap(), rev);
        let next = store.create("/c", b"3".to_vec()).await.unwrap();
        assert_eq!(next, rev + 1);
        let (kvs, _) = store.list("/").await.unwrap();
        assert_eq!(kvs.len(), 3);
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
    }
}
