//! Raw backend baselines: the same number of durable writes, same payload and
//! same client concurrency, without kobune in between.

use crate::{configmap, share, Stats};
use anyhow::{bail, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

fn open(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    Ok(c)
}

fn insert(c: &Connection, key: &str, value: &[u8]) -> Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    c.execute(
        "INSERT INTO kv(key, value) VALUES (?1, ?2)",
        rusqlite::params![key, value],
    )?;
    c.execute_batch("COMMIT")?;
    Ok(())
}

/// `count` one-INSERT transactions on a fresh WAL/synchronous=FULL database
/// from `clients` threads. mode "mutex": one shared connection, a client holds
/// it for its whole transaction (a single writer, no SQLITE_BUSY back-off);
/// mode "conn": a connection per client, contention via busy_timeout.
pub fn sqlite(
    path: &Path,
    clients: usize,
    count: usize,
    payload: usize,
    mode: &str,
) -> Result<Stats> {
    let _ = std::fs::remove_file(path);
    let setup = open(path)?;
    setup.execute_batch("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")?;
    let shared = match mode {
        "mutex" => Some(Arc::new(Mutex::new(setup))),
        "conn" => None,
        other => bail!("--sqlite-raw must be mutex or conn, not {other}"),
    };
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::new();
    for i in 0..clients {
        let n = share(count, clients, i);
        let (barrier, shared) = (barrier.clone(), shared.clone());
        let own = if shared.is_none() {
            Some(open(path)?)
        } else {
            None
        };
        threads.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let rows: Vec<(String, Vec<u8>)> = (0..n)
                .map(|j| {
                    let name = format!("raw-{i}-{j}");
                    (
                        format!("/registry/configmaps/default/{name}"),
                        configmap(&name, payload),
                    )
                })
                .collect();
            barrier.wait();
            let mut lat = Vec::with_capacity(n);
            for (k, v) in rows {
                let t0 = Instant::now();
                match (&shared, &own) {
                    (Some(m), _) => insert(&m.lock().unwrap(), &k, &v)?,
                    (None, Some(c)) => insert(c, &k, &v)?,
                    _ => unreachable!(),
                }
                lat.push(t0.elapsed());
            }
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count);
    for t in threads {
        lat.extend(t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??);
    }
    Ok(Stats::new(lat, start.elapsed()))
}

/// `count` etcd puts of the same payload from `clients` clients, each with
/// its own etcd-client (its own gRPC connection).
pub async fn etcd(
    endpoint: &str,
    clients: usize,
    count: usize,
    payload: usize,
    prefix: &str,
) -> Result<Stats> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(etcd_client::Client::connect([endpoint], None).await?);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let n = share(count, clients, i);
        let rows: Vec<(String, Vec<u8>)> = (0..n)
            .map(|j| {
                let name = format!("raw-{prefix}-{i}-{j}");
                (
                    format!("/bench-raw/configmaps/default/{name}"),
                    configmap(&name, payload),
                )
            })
            .collect();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(n);
            for (k, v) in rows {
                let t0 = Instant::now();
                c.put(k, v, None).await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(Stats::new(lat, start.elapsed()))
}
