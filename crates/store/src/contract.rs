//! The behaviour every backend must show; run against each of them.

use crate::{EventKind, Store, StoreError};
use std::time::Duration;

/// The next change (progress notifications are skipped).
async fn next(rx: &mut crate::WatchStream) -> crate::Event {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("watch event within 5s")
            .expect("watch open")
            .expect("watch ok");
        if ev.kind != EventKind::Progress {
            return ev;
        }
    }
}

/// Exercises the store under keys beginning with `p` (unique per run).
pub async fn run(store: &dyn Store, p: &str) {
    let k = |s: &str| format!("{p}{s}");
    let r0 = store.current_revision().await.unwrap();

    let r1 = store.create(&k("pods/a"), b"a1".to_vec()).await.unwrap();
    assert!(r1 > r0, "revisions increase");
    assert_eq!(
        store.create(&k("pods/a"), b"x".to_vec()).await,
        Err(StoreError::AlreadyExists)
    );
    let got = store.get(&k("pods/a")).await.unwrap().unwrap();
    assert_eq!(
        (&*got.value, got.create_revision, got.mod_revision),
        (&b"a1"[..], r1, r1)
    );

    // Compare-and-swap on the mod revision.
    match store.update(&k("pods/a"), b"stale".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict(Some(cur))) => assert_eq!(cur.mod_revision, r1),
        other => panic!("expected conflict, got {other:?}"),
    }
    let r2 = store
        .update(&k("pods/a"), b"a2".to_vec(), r1)
        .await
        .unwrap();
    assert!(r2 > r1);
    assert_eq!(
        store.update(&k("pods/zz"), b"x".to_vec(), 1).await,
        Err(StoreError::NotFound)
    );

    // Prefix ranges do not leak into sibling prefixes.
    let r3 = store.create(&k("pods/b"), b"b1".to_vec()).await.unwrap();
    store.create(&k("podsX/c"), b"c1".to_vec()).await.unwrap();
    let (kvs, rev) = store.list(&k("pods/")).await.unwrap();
    assert_eq!(
        kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![k("pods/a"), k("pods/b")]
    );
    assert!(rev >= r3);

    // Deletes check the expected revision and report the delete revision.
    assert!(matches!(
        store.delete(&k("pods/b"), Some(r3 - 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let r4 = store.delete(&k("pods/b"), Some(r3)).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(store.get(&k("pods/b")).await.unwrap(), None);
    assert_eq!(
        store.delete(&k("pods/b"), None).await,
        Err(StoreError::NotFound)
    );

    // A watch replays history after a revision, then streams live events.
    let mut w = store.watch(&k("pods/"), r1).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.key.as_str(), e.kv.mod_revision),
        (EventKind::Put, k("pods/a").as_str(), r2)
    );
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Put, r3));
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, &*e.kv.value),
        (EventKind::Delete, r4, &b"b1"[..])
    );
    let r5 = store.create(&k("pods/c"), b"c".to_vec()).await.unwrap();
    store.create(&k("other/x"), b"x".to_vec()).await.unwrap();
    let r6 = store
        .update(&k("pods/c"), b"c2".to_vec(), r5)
        .await
        .unwrap();
    let e = next(&mut w).await;
    assert_eq!(e.kv.mod_revision, r5);
    let e = next(&mut w).await;
    assert_eq!(
        e.kv.mod_revision, r6,
        "events outside the prefix are not delivered"
    );

    // Concurrent writers each get a distinct revision.
    let keys: Vec<String> = (0..20).map(|i| k(&format!("many/{i}"))).collect();
    let handles = keys
        .iter()
        .enumerate()
        .map(|(i, key)| store.create(key, vec![i as u8]));
    let mut revs: Vec<i64> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 20);

    // Compaction removes history; watching from before it fails.
    store.compact(r4).await.unwrap();
    assert!(store.compacted_revision().await.unwrap() >= r4 - 1);
    match store.watch(&k("pods/"), r1).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(5), w.recv()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => panic!("expected compacted, got {other:?}"),
        },
        Err(e) => panic!("expected compacted, got {e:?}"),
    }
    let mut w = store.watch(&k("pods/"), r5).await.unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, r6);
}
