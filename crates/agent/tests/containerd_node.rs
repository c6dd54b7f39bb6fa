//! The real node agent against a registry on SQLite and our own containerd.
//! Needs root and containerd; skipped without containerd unless CI=1.

use kobune_agent::{start_node, NodeConfig};
use kobune_apiserver::cache::Cache;
use kobune_apiserver::kubelet::{Kubelets, LogOptions};
use kobune_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use kobune_apiserver::resources::Resources;
use kobune_store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn have_containerd() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("containerd").exists()))
        .unwrap_or(false);
    if !found && std::env::var("CI").as_deref() == Ok("1") {
        panic!("containerd is required when CI=1");
    }
    found
}

fn pod_obj(reg: &Registry, ns: &str, name: &str) -> Option<Value> {
    reg.cache
        .get(&format!("/registry/core/pods/{ns}/{name}"))
        .map(|p| (*p).clone())
}

async fn eventually<T>(what: &str, secs: u64, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

async fn create_pod(reg: &Registry, ns: &str, name: &str, container: Value) {
    let info = reg.resources.find("", "v1", "pods").unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "node-t", "terminationGracePeriodSeconds": 2, "containers": [container]}});
    reg.create(&info, Some(ns), pod, &opts()).await.unwrap();
}

async fn read_logs(kubelets: &Kubelets, pod: &Value, o: LogOptions) -> String {
    let mut rx = kubelets.get("node-t").unwrap().logs(pod, o).await.unwrap();
    let mut out = vec![];
    while let Some(b) = rx.recv().await {
        out.extend_from_slice(&b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn http_get(ip: &str, port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pods_on_containerd() {
    if !have_containerd() {
        eprintln!("containerd not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    let ns_info = reg.resources.find("", "v1", "namespaces").unwrap();
    reg.create(
        &ns_info,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}),
        &opts(),
    )
    .await
    .unwrap();
    reg.cache.sync().await.unwrap();
    let kubelets = Arc::new(Kubelets::default());
    let node = start_node(
        reg.clone(),
        kubelets.clone(),
        NodeConfig {
            name: "node-t".into(),
            data_dir: dir.path().join("agent"),
            pod_cidr: "10.42.0.0/24".into(),
            cri_socket: None,
            dns: Default::default(),
        },
        kobune_agent::node::HOST_IP,
    )
    .await
    .unwrap();
    let nodes = reg.resources.find("", "v1", "nodes").unwrap();
    let n = reg.get(&nodes, None, "node-t").await.unwrap();
    assert_eq!(n["spec"]["podCIDR"], "10.42.0.0/24");
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("containerd://"));

    // A web server.
    create_pod(
        &reg,
        "t",
        "web",
        json!({"name": "web", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
               "command": ["sh", "-c", "echo hello from web; exec httpd -f -p 8080 -h /etc"]}),
    )
    .await;
    let p = eventually("web ready", 15, || pod_obj(&reg, "t", "web").filter(ready)).await;
    assert_eq!(p["status"]["phase"], "Running");
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.42.0."), "{ip}");
    let resp = http_get(&ip, 8080, "/passwd").await;
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "{resp}"
    );
    let logs = read_logs(&kubelets, &p, LogOptions::default()).await;
    assert!(logs.contains("hello from web"), "{logs:?}");
    let ts = read_logs(
        &kubelets,
        &p,
        LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert!(ts.contains("Z hello from web"), "{ts:?}");

    // A crashing container: restarted, then CrashLoopBackOff.
    create_pod(
        &reg,
        "t",
        "crash",
        json!({"name": "crash", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
               "command": ["sh", "-c", "echo crash; exit 1"]}),
    )
    .await;
    let p = eventually("crash loop", 20, || {
        pod_obj(&reg, "t", "crash").filter(|p| {
            let c = &p["status"]["containerStatuses"][0];
            c["restartCount"].as_i64().unwrap_or(0) >= 1
                && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    })
    .await;
    let c = &p["status"]["containerStatuses"][0];
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=crash pod=crash_t("),
        "{c}"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    let prev = read_logs(
        &kubelets,
        &p,
        LogOptions {
            previous: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(prev, "crash\n");

    // A missing image with imagePullPolicy Never.
    create_pod(
        &reg,
        "t",
        "missing",
        json!({"name": "m", "image": "example.com/nope:1", "imagePullPolicy": "Never"}),
    )
    .await;
    let events = reg.resources.find("", "v1", "events").unwrap();
    let prefix = reg.prefix(&events, Some("t"));
    eventually("ErrImageNeverPull event", 10, || {
        reg.cache
            .list(&prefix, None)
            .0
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| {
                e["reason"] == "ErrImageNeverPull"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("example.com/nope:1"))
            })
    })
    .await;
    let p = pod_obj(&reg, "t", "missing").unwrap();
    assert_eq!(p["status"]["phase"], "Pending");

    // Deletion with a grace period: httpd ignores SIGTERM as PID 1.
    let pods = reg.resources.find("", "v1", "pods").unwrap();
    let t = Instant::now();
    reg.delete(
        &pods,
        Some("t"),
        "web",
        &DeleteOptions {
            grace_period_seconds: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("web deleted", 10, || {
        pod_obj(&reg, "t", "web").is_none().then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(tokio::net::TcpStream::connect((ip.as_str(), 8080))
        .await
        .is_err());
    node.remove_pods().await;
}
