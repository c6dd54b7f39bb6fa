//! The scheduler and simulated nodes against a real registry on SQLite.

use kobune_apiserver::cache::Cache;
use kobune_apiserver::registry::{DeleteOptions, ListOptions, PatchKind, Registry, WriteOptions};
use kobune_apiserver::resources::Resources;
use kobune_store::Store;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn registry(dir: &std::path::Path) -> Arc<Registry> {
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

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some("test".into()),
        ..Default::default()
    }
}

async fn create_ns(reg: &Registry, name: &str) {
    let info = reg.resources.find("", "v1", "namespaces").unwrap();
    let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    reg.create(&info, None, obj, &opts()).await.unwrap();
    reg.cache.sync().await.unwrap();
}

async fn create_pod(reg: &Registry, ns: &str, name: &str, spec_extra: Value) {
    let info = reg.resources.find("", "v1", "pods").unwrap();
    let mut spec = json!({"containers": [{"name": "app", "image": "nginx:1.27"}]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "t"}}, "spec": spec});
    reg.create(&info, Some(ns), pod, &opts()).await.unwrap();
}

fn pod(reg: &Registry, ns: &str, name: &str) -> Option<Arc<Value>> {
    reg.cache.get(&format!("/registry/core/pods/{ns}/{name}"))
}

fn node_of(reg: &Registry, ns: &str, name: &str) -> Option<String> {
    pod(reg, ns, name)
        .and_then(|p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
}

fn condition(p: &Value, t: &str) -> Option<Value> {
    p.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

async fn eventually(what: &str, secs: u64, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_onto_simulated_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    create_ns(&reg, "default").await;
    kobune_controllers::start(reg.clone()).await.unwrap();
    kobune_agent::start_simulated(reg.clone(), 3, "sim")
        .await
        .unwrap();

    // sim-0 tainted, sim-1 labelled.
    let nodes = reg.resources.find("", "v1", "nodes").unwrap();
    reg.patch(
        &nodes,
        None,
        "sim-0",
        PatchKind::Merge,
        &json!({"spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}}),
        &opts(),
        None,
    )
    .await
    .unwrap();
    reg.patch(
        &nodes,
        None,
        "sim-1",
        PatchKind::Merge,
        &json!({"metadata": {"labels": {"disk": "ssd"}}}),
        &opts(),
        None,
    )
    .await
    .unwrap();
    let leases = reg
        .resources
        .find("coordination.k8s.io", "v1", "leases")
        .unwrap();
    assert!(reg
        .get_cached(&leases, Some("kube-node-lease"), "sim-2")
        .is_ok());

    kobune_scheduler::start(reg.clone()).await.unwrap();

    create_pod(
        &reg,
        "default",
        "ssd",
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    create_pod(
        &reg,
        "default",
        "huge",
        json!({"containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": "64", "memory": "1Gi"}}}]}),
    )
    .await;
    for i in 0..6 {
        create_pod(
            &reg,
            "default",
            &format!("plain-{i}"),
            json!({"containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}),
        )
        .await;
    }
    create_pod(
        &reg,
        "default",
        "other",
        json!({"schedulerName": "someone-else"}),
    )
    .await;

    eventually("pods bound", 15, || {
        node_of(&reg, "default", "ssd").is_some()
            && (0..6).all(|i| node_of(&reg, "default", &format!("plain-{i}")).is_some())
    })
    .await;
    assert_eq!(node_of(&reg, "default", "ssd").as_deref(), Some("sim-1"));
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(&reg, "default", &format!("plain-{i}")).unwrap())
            .or_default() += 1;
    }
    assert!(
        !per_node.contains_key("sim-0"),
        "tainted node used: {per_node:?}"
    );
    assert_eq!(
        per_node.len(),
        2,
        "spread across both untainted nodes: {per_node:?}"
    );
    assert!(
        node_of(&reg, "default", "other").is_none(),
        "another scheduler's pod"
    );

    // The pod that fits nowhere.
    eventually("huge marked unschedulable", 15, || {
        pod(&reg, "default", "huge")
            .and_then(|p| condition(&p, "PodScheduled"))
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "Unschedulable")
    })
    .await;
    let c = condition(&pod(&reg, "default", "huge").unwrap(), "PodScheduled").unwrap();
    let msg = c["message"].as_str().unwrap();
    assert!(msg.starts_with("0/3 nodes are available: "), "{msg}");
    assert!(msg.contains("2 Insufficient cpu"), "{msg}");
    assert!(
        msg.contains("1 node(s) had untolerated taint {dedicated: infra}"),
        "{msg}"
    );
    let events = reg.resources.find("", "v1", "events").unwrap();
    let evs = reg
        .list(&events, Some("default"), &ListOptions::default())
        .await
        .unwrap();
    let failed = evs
        .items
        .iter()
        .find(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == "huge")
        .expect("FailedScheduling event");
    assert_eq!(failed["type"], "Warning");
    assert_eq!(failed["source"]["component"], "default-scheduler");
    assert!(failed["count"].as_i64().unwrap() >= 1);

    // Simulated kubelets run what was bound.
    eventually("pods running and ready", 15, || {
        (0..6).all(|i| {
            pod(&reg, "default", &format!("plain-{i}")).is_some_and(|p| {
                p["status"]["phase"] == "Running"
                    && condition(&p, "Ready").is_some_and(|c| c["status"] == "True")
                    && condition(&p, "PodScheduled").is_some_and(|c| c["status"] == "True")
                    && p["status"]["podIPs"][0]["ip"]
                        .as_str()
                        .is_some_and(|ip| ip.starts_with("10.42."))
            })
        })
    })
    .await;
    let p = pod(&reg, "default", "ssd").unwrap();
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(cs["containerID"]
        .as_str()
        .unwrap()
        .starts_with("simulated://"));
    assert!(p["status"]["podIP"]
        .as_str()
        .unwrap()
        .starts_with("10.42.1."));
    assert_eq!(p["status"]["hostIP"], "10.0.0.2");

    // Deleting a running pod: marked, then removed by the agent.
    let pods = reg.resources.find("", "v1", "pods").unwrap();
    reg.delete(&pods, Some("default"), "plain-0", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("deleted pod removed", 15, || {
        pod(&reg, "default", "plain-0").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_1000_pods_on_100_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    create_ns(&reg, "load").await;
    kobune_agent::start_simulated(reg.clone(), 100, "node")
        .await
        .unwrap();
    let sched = kobune_scheduler::start_scheduler(reg.clone())
        .await
        .unwrap();
    let info = reg.resources.find("", "v1", "pods").unwrap();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (reg, info) = (reg.clone(), info.clone());
        set.spawn(async move {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p-{i}")},
                "spec": {"containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
            reg.create(&info, Some("load"), pod, &opts()).await.unwrap();
        });
        if set.len() >= 32 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    let created = start.elapsed();
    let bound = || {
        reg.cache
            .list("/registry/core/pods/load/", None)
            .0
            .iter()
            .filter(|(_, p)| {
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
            })
            .count()
    };
    eventually("all bound", 120, || bound() == 1000).await;
    let all_bound = start.elapsed();
    eventually("all running", 120, || {
        reg.cache
            .list("/registry/core/pods/load/", None)
            .0
            .iter()
            .filter(|(_, p)| p["status"]["phase"] == "Running")
            .count()
            == 1000
    })
    .await;
    let running = start.elapsed();
    let cluster = sched.cluster.lock().unwrap();
    let max = cluster.nodes.values().map(|n| n.pods.len()).max().unwrap();
    let min = cluster.nodes.values().map(|n| n.pods.len()).min().unwrap();
    let cycles = sched.cycles.load(std::sync::atomic::Ordering::Relaxed);
    let nanos = sched.cycle_nanos.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "throughput: 1000 pods on 100 nodes: created in {created:?}, all bound after {all_bound:?} \
         ({:.0} pods/s), all running after {running:?}; pods per node {min}..{max}; \
         {cycles} scheduling cycles, {} us each on average",
        1000.0 / all_bound.as_secs_f64(),
        nanos / cycles.max(1) / 1000
    );
    assert!(cycles >= 1000);
    assert!(max <= 110);
}
