//! Deterministic fuzzing of the request-body decoders and of everything that
//! runs on a decoded body (selectors, patches, schema checks, validation and
//! defaulting). Inputs start from valid Kubernetes documents and are mutated
//! at the byte level and at the JSON-value level (type swaps, deletions,
//! insertions), plus schema-guided random objects for every built-in kind.
//!
//! No panics are allowed: every failing input is printed (with its case
//! number and seed) before the test fails. Set `FUZZ_SEED` to explore other
//! inputs and `FUZZ_SCALE` to run more (or fewer) iterations.

use kobune_apimachinery::defaults::apply_defaults;
use kobune_apimachinery::fields::{decode_json, decode_yaml};
use kobune_apimachinery::patch::{json_merge_patch, json_patch, strategic_merge_patch};
use kobune_apimachinery::resource::builtins;
use kobune_apimachinery::schema::{
    definitions, prune_unknown, type_errors, unknown_fields, SchemaNode,
};
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::validation::validate;
use kobune_apimachinery::ResourceInfo;
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

// ---------- a small deterministic PRNG ----------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b6f_6275_6e65)
}

fn iterations(n: usize) -> usize {
    let scale: f64 = std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * scale).max(1.0) as usize
}

// ---------- panic capture ----------

fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Print the panic (and a backtrace if RUST_BACKTRACE is set) once per distinct location.
            default(info);
        }));
    });
}

struct Failures {
    target: &'static str,
    found: Vec<String>,
}

impl Failures {
    fn new(target: &'static str) -> Self {
        quiet_panics();
        Failures {
            target,
            found: vec![],
        }
    }
    /// Runs `f`, recording `describe()` if it panics.
    fn run(&mut self, case: usize, describe: impl Fn() -> String, f: impl FnOnce()) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string panic>".into());
            let input = describe();
            let input: String = input.chars().take(4000).collect();
            self.found.push(format!(
                "[{}] case {case} (seed {}): panic: {msg}\n  input: {input}",
                self.target,
                seed()
            ));
        }
    }
    fn check(self) {
        if !self.found.is_empty() {
            let shown: Vec<_> = self.found.iter().take(10).cloned().collect();
            panic!(
                "{} panicking inputs for {} (first {} shown):\n{}",
                self.found.len(),
                self.target,
                shown.len(),
                shown.join("\n\n")
            );
        }
    }
}

// ---------- corpus ----------

fn corpus() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default", "labels": {"app": "web"}, "annotations": {"a": "b"}}, "data": {"k": "v", "game.properties": "x=1\ny=2"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "a"}}, "spec": {
                    "containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}},
                        "livenessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 10},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "true"]}],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "k", "path": "k"}]}}],
                    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "finalizers": ["x/y"], "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "0b0f2c8e-0000-4000-8000-000000000000", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["sleep", "1"], "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}}}],
                "restartPolicy": "Never", "nodeSelector": {"disk": "ssd"}, "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}], "dnsPolicy": "ClusterFirst",
                "terminationGracePeriodSeconds": 30, "priority": 0, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"a": "b"}}}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}], "clusterIP": "10.43.0.10", "ipFamilies": ["IPv4"], "sessionAffinity": "ClientIP"}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"backoffLimit": 2, "completions": 3, "parallelism": 1, "template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "AAAA", "tls.key": "QUJD"}, "stringData": {"x": "y"}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing"}, "spec": {"ingressClassName": "nginx", "rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}], "tls": [{"hosts": ["a.example.com"], "secretName": "s"}]}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "crb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}}]}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "pvc"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local"}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb"}, "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}}}),
    ]
}

const STRINGS: &[&str] = &[
    "",
    "a",
    "web",
    "nginx",
    "A_B",
    "-bad-",
    "x/y",
    "example.com/x",
    "a.b.c",
    "UPPER",
    "with space",
    "0",
    "1",
    "-1",
    "80",
    "65536",
    "1Gi",
    "500m",
    "1e3",
    "25%",
    "200%",
    "-5%",
    "Always",
    "Never",
    "IfNotPresent",
    "TCP",
    "UDP",
    "SCTP",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "Gt",
    "Lt",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "None",
    "10.43.0.1",
    "10.42.0.0/16",
    "::1",
    "fe80::1%eth0",
    "256.1.1.1",
    "RollingUpdate",
    "Recreate",
    "OnFailure",
    "Prefix",
    "Exact",
    "ImplementationSpecific",
    "*/5 * * * *",
    "* * *",
    "@hourly",
    "61 * * * *",
    "TZ=UTC 0 0 * * *",
    "Etc/UTC",
    "Mars/Phobos",
    "2024-01-01T00:00:00Z",
    "not-a-time",
    "\u{0}",
    "é",
    "😀",
    "\u{202e}",
    "$(VAR)",
    "..",
    "/",
    "~",
    "metadata.name",
    "spec.nodeName",
    "status.podIP",
    "kubernetes.io/hostname",
    "rbac.authorization.k8s.io",
    "ClusterRole",
    "Role",
    "User",
    "Group",
    "ServiceAccount",
    "NoSchedule",
    "NoExecute",
    "Utilization",
    "AverageValue",
    "Resource",
    "cpu",
    "memory",
    "ReadWriteOnce",
    "Filesystem",
    "Block",
    "Orphan",
    "Foreground",
    "Background",
    "apps/v1",
    "v1",
    "Deployment",
    "Pod",
    "RuntimeDefault",
    "Localhost",
    "Unconfined",
    "a=b",
    "a in (b)",
    "!a",
    "0.5",
    "1.5Gi",
    "9223372036854775807",
    "-9223372036854775808",
    "Ki",
    "m",
];

fn long_string(rng: &mut Rng) -> String {
    let n = *rng.pick(&[63usize, 64, 253, 254, 300, 5000]);
    let c = *rng.pick(&['a', '-', '.', 'Z', 'é']);
    std::iter::repeat_n(c, n).collect()
}

fn random_string(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => long_string(rng),
        1 => {
            let n = rng.below(12);
            (0..n)
                .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'))
                .collect()
        }
        2 => format!("{}{}", rng.pick(STRINGS), rng.pick(STRINGS)),
        _ => rng.pick(STRINGS).to_string(),
    }
}

fn random_int(rng: &mut Rng) -> Value {
    let v: i64 = *rng.pick(&[
        0,
        1,
        -1,
        2,
        3,
        10,
        80,
        255,
        1000,
        30080,
        65535,
        65536,
        86400,
        i32::MAX as i64,
        i32::MIN as i64,
        i32::MAX as i64 + 1,
        i64::MAX,
        i64::MIN,
        i64::MAX - 1,
    ]);
    if rng.chance(10) {
        json!(u64::MAX)
    } else {
        json!(v)
    }
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => random_int(rng),
        3 => json!(*rng.pick(&[
            0.5f64,
            -0.0,
            1e300,
            -1e300,
            1.0000001,
            3.0,
            f64::MIN_POSITIVE
        ])),
        _ => json!(random_string(rng)),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    if depth > 4 {
        return random_scalar(rng);
    }
    match rng.below(8) {
        0 => {
            let n = rng.below(4);
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        1 => {
            let n = rng.below(4);
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(random_key(rng), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        2 => deep_nesting(rng),
        _ => random_scalar(rng),
    }
}

fn deep_nesting(rng: &mut Rng) -> Value {
    let depth = rng.below(60) + 1;
    let mut v = random_scalar(rng);
    for _ in 0..depth {
        v = if rng.chance(50) {
            json!([v])
        } else {
            json!({ random_key(rng): v })
        };
    }
    v
}

const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "template",
    "containers",
    "image",
    "ports",
    "containerPort",
    "protocol",
    "replicas",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "env",
    "value",
    "valueFrom",
    "volumes",
    "volumeMounts",
    "mountPath",
    "resources",
    "limits",
    "requests",
    "finalizers",
    "ownerReferences",
    "uid",
    "kind",
    "apiVersion",
    "data",
    "stringData",
    "type",
    "rules",
    "host",
    "http",
    "paths",
    "path",
    "backend",
    "service",
    "port",
    "targetPort",
    "nodePort",
    "clusterIP",
    "clusterIPs",
    "schedule",
    "jobTemplate",
    "strategy",
    "rollingUpdate",
    "maxSurge",
    "maxUnavailable",
    "generateName",
    "resourceVersion",
    "deletionTimestamp",
    "creationTimestamp",
    "managedFields",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "foo",
    "",
    "a.b",
    "x/y",
    "initContainers",
    "tolerations",
    "affinity",
    "subjects",
    "roleRef",
    "versions",
    "names",
    "scope",
    "group",
    "minReplicas",
    "maxReplicas",
    "metrics",
    "target",
];

fn random_key(rng: &mut Rng) -> String {
    if rng.chance(85) {
        rng.pick(KEYS).to_string()
    } else {
        random_string(rng)
    }
}

// ---------- value-level mutation ----------

/// Mutates one random node of `v` (a type swap, deletion, insertion or duplication).
fn mutate_value(rng: &mut Rng, v: &mut Value, depth: usize) {
    let descend = rng.chance(75) && depth < 12;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned().expect("key");
            mutate_value(rng, m.get_mut(&k).expect("value"), depth + 1);
            return;
        }
        Value::Array(a) if descend && !a.is_empty() => {
            let i = rng.below(a.len());
            mutate_value(rng, &mut a[i], depth + 1);
            return;
        }
        _ => {}
    }
    match rng.below(7) {
        0 => *v = random_scalar(rng),
        1 => *v = random_value(rng, depth),
        2 => {
            // Swap the type but keep the content nearby.
            *v = match v.take() {
                Value::Object(m) => Value::Array(m.into_iter().map(|(_, x)| x).collect()),
                Value::Array(a) => a.into_iter().next().unwrap_or(Value::Null),
                Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(json!([s])),
                Value::Number(n) => json!(n.to_string()),
                Value::Bool(b) => json!(b.to_string()),
                Value::Null => json!({}),
            }
        }
        3 => match v {
            Value::Object(m) if !m.is_empty() => {
                let k = m.keys().nth(rng.below(m.len())).cloned().expect("key");
                m.remove(&k);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                a.remove(i);
            }
            _ => *v = Value::Null,
        },
        4 => match v {
            Value::Object(m) => {
                m.insert(random_key(rng), random_value(rng, depth));
            }
            Value::Array(a) => {
                let dup = a.first().cloned().unwrap_or(Value::Null);
                a.push(dup);
            }
            _ => *v = json!({ random_key(rng): v.take() }),
        },
        5 => *v = deep_nesting(rng),
        _ => *v = json!(long_string(rng)),
    }
}

fn mutated_doc(rng: &mut Rng, docs: &[Value]) -> Value {
    let mut v = rng.pick(docs).clone();
    for _ in 0..rng.below(5) + 1 {
        mutate_value(rng, &mut v, 0);
    }
    v
}

// ---------- byte-level mutation ----------

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\\",
    b"\xff",
    b"\xc3",
    b"\xf0\x9f\x98",
    b"\n",
    b"\t",
    b" ",
    b"0x10",
    b"NaN",
    b"Infinity",
    b"18446744073709551616",
    b"\"spec\":{\"replicas\":1,\"replicas\":2}",
    b"\"metadata\":",
    b"/*",
    b"#",
    b"&a",
    b"*a",
    b"!!binary",
    b"---",
    b"- ",
    b"? ",
    b"|",
    b">",
    b"%YAML 1.2",
    b"!!python/object",
    b"<<: *a",
    b"\x00",
];

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.below(6) + 1 {
        let len = bytes.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                bytes.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i).min(16) + 1;
                bytes.drain(i..(i + n).min(len));
            }
            3 => {
                let i = rng.below(len + 1);
                let t = rng.pick(TOKENS);
                bytes.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => {
                // Duplicate a range.
                let i = rng.below(len);
                let n = rng.below(len - i).min(64) + 1;
                let chunk: Vec<u8> = bytes[i..i + n].to_vec();
                let j = rng.below(len + 1);
                bytes.splice(j..j, chunk);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                bytes.truncate(i);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                bytes[i] = *rng.pick(b"{}[]\":,0-9ae\\ \n");
            }
            _ => bytes.push(rng.next() as u8),
        }
    }
}

// ---------- schema-guided generation ----------

fn generate(rng: &mut Rng, node: SchemaNode<'_>, depth: usize) -> Value {
    if rng.chance(4) {
        return random_value(rng, 3); // wrong type, now and then
    }
    if depth > 7 {
        return json!({});
    }
    match node.type_name() {
        Some("object") | None if node.properties().is_some() => {
            let props = node.properties().expect("properties");
            let mut out = Map::new();
            for name in props.keys() {
                if !rng.chance(35) {
                    continue;
                }
                if let Some(f) = node.field(name) {
                    out.insert(name.clone(), generate(rng, f.schema, depth + 1));
                }
            }
            if rng.chance(3) {
                out.insert(random_key(rng), random_value(rng, 2));
            }
            Value::Object(out)
        }
        Some("object") => {
            let mut out = Map::new();
            match node.additional_properties() {
                Some(ap) => {
                    for _ in 0..rng.below(3) {
                        out.insert(random_string(rng), generate(rng, ap, depth + 1));
                    }
                }
                None => {
                    for _ in 0..rng.below(3) {
                        out.insert(random_key(rng), random_value(rng, 2));
                    }
                }
            }
            Value::Object(out)
        }
        Some("array") => match node.items() {
            Some(items) => {
                let n = *rng.pick(&[0usize, 1, 1, 2, 3]);
                Value::Array((0..n).map(|_| generate(rng, items, depth + 1)).collect())
            }
            None => json!([]),
        },
        Some("string") => json!(random_string(rng)),
        Some("integer") => random_int(rng),
        Some("number") => json!(*rng.pick(&[0.0f64, 1.5, -2.0, 1e20])),
        Some("boolean") => json!(rng.chance(50)),
        _ => {
            if rng.chance(50) {
                random_int(rng)
            } else {
                json!(random_string(rng))
            }
        }
    }
}

fn generated_object(rng: &mut Rng, info: &ResourceInfo) -> Value {
    let defs = definitions();
    let mut obj = match info
        .definition
        .as_deref()
        .and_then(|d| SchemaNode::definition(defs, d))
    {
        Some(node) => generate(rng, node, 0),
        None => random_value(rng, 0),
    };
    if let Value::Object(m) = &mut obj {
        if rng.chance(90) {
            m.insert("apiVersion".into(), json!(info.api_version()));
            m.insert("kind".into(), json!(info.kind));
        }
        if rng.chance(80) {
            let meta = m.entry("metadata").or_insert_with(|| json!({}));
            if let Value::Object(meta) = meta {
                if rng.chance(80) {
                    meta.insert(
                        "name".into(),
                        json!(*rng.pick(&["a", "web", "x.y", "Bad_Name", ""])),
                    );
                }
                if info.namespaced() && rng.chance(70) {
                    meta.insert("namespace".into(), json!("default"));
                }
            }
        }
    }
    if rng.chance(30) {
        mutate_value(rng, &mut obj, 0);
    }
    obj
}

fn deployment_schema() -> SchemaNode<'static> {
    SchemaNode::definition(definitions(), "io.k8s.api.apps.v1.Deployment").expect("Deployment")
}

// ---------- targets ----------

#[test]
fn decode_json_never_panics() {
    let mut rng = Rng::new(seed());
    let docs = corpus();
    let mut f = Failures::new("decode_json");
    let mut seeds: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| serde_json::to_vec(d).unwrap())
        .collect();
    seeds.extend(docs.iter().map(|d| serde_json::to_vec_pretty(d).unwrap()));
    seeds.push(br#"{"a":1,"a":{"b":[1,2,{"c":1,"c":2}]},"a":3}"#.to_vec());
    seeds.push(b"[".repeat(200));
    seeds.push(format!("{}1{}", "[".repeat(127), "]".repeat(127)).into_bytes());
    seeds.push(format!("{}1{}", "{\"a\":".repeat(129), "}".repeat(129)).into_bytes());
    seeds.push(br#""\ud800\udc00\ud800" 1e400 -1e400 18446744073709551616"#.to_vec());
    for case in 0..iterations(6000) {
        let mut bytes = rng.pick(&seeds).clone();
        match rng.below(10) {
            0 => {
                bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            }
            1 => {
                bytes = serde_json::to_vec(&mutated_doc(&mut rng, &docs)).unwrap();
            }
            _ => mutate_bytes(&mut rng, &mut bytes),
        }
        let b = bytes.clone();
        f.run(
            case,
            || format!("{:?}", String::from_utf8_lossy(&b)),
            || {
                if let Ok(d) = decode_json(&bytes) {
                    // Whatever decodes must also survive the rest of the pipeline.
                    let _ = serde_json::to_vec(&d.value).unwrap();
                    for p in &d.duplicates {
                        assert!(!p.is_empty() || d.value.is_object());
                    }
                }
            },
        );
    }
    f.check();
}

#[test]
fn decode_yaml_never_panics() {
    let mut rng = Rng::new(seed() ^ 1);
    let docs = corpus();
    let mut f = Failures::new("decode_yaml");
    let mut seeds: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap().into_bytes())
        .collect();
    seeds.push(b"a: &a [1, 2]\nb: *a\nc: {<<: {x: 1}}\n".to_vec());
    seeds.push(b"--- a\n--- b\n".to_vec());
    seeds.push(b"!!binary aGVsbG8=\n".to_vec());
    seeds.push(b"key: !custom {a: 1}\n? [complex, key]\n: v\n".to_vec());
    seeds.push(b"1: one\n2.5: two\ntrue: three\n~: four\n".to_vec());
    // Billion laughs: aliases must not expand without bound.
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ('a'..='h').zip('b'..='i') {
        laughs.push_str(&format!(
            "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    seeds.push(laughs.into_bytes());
    seeds.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes());
    seeds.push(b"a:\n".to_vec());
    for case in 0..iterations(3000) {
        let mut bytes = rng.pick(&seeds).clone();
        if rng.chance(90) {
            mutate_bytes(&mut rng, &mut bytes);
        } else {
            bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        }
        let b = bytes.clone();
        let started = std::time::Instant::now();
        f.run(
            case,
            || format!("{:?}", String::from_utf8_lossy(&b)),
            || {
                if let Ok(v) = decode_yaml(&bytes) {
                    let _ = serde_json::to_vec(&v).unwrap();
                }
            },
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "decode_yaml took {:?} on {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&bytes)
        );
    }
    f.check();
}

const SELECTORS: &[&str] = &[
    "app=web",
    "app==web",
    "app!=web",
    "app",
    "!app",
    "app in (a,b)",
    "app notin (a, b)",
    "tier in ()",
    "a=b,c!=d,e in (f),!g,h",
    "example.com/app=web",
    "app=",
    "x>1",
    "x<10",
    "a=b=c",
    "in in (in)",
    ",",
    "a,,b",
    "metadata.name=web",
    "metadata.namespace!=default",
    "spec.nodeName=",
    "status.phase=Running",
    "a in (b",
    "a)",
    "(a)",
    "=a",
    "!=",
    "a!",
    "a b",
    "a=\\,",
    "a=b\\=c",
    "  app  =  web  ",
    "a==",
    "a=b ,c=d",
];

#[test]
fn selectors_never_panic() {
    let mut rng = Rng::new(seed() ^ 2);
    let mut f = Failures::new("selectors");
    let alphabet: Vec<char> = "abcxyz019=!,() .-_/\\~<>in\u{e9}\u{0}".chars().collect();
    for case in 0..iterations(8000) {
        let s: String = match rng.below(4) {
            0 => (0..rng.below(24)).map(|_| *rng.pick(&alphabet)).collect(),
            1 => {
                let n = rng.below(4) + 1;
                (0..n)
                    .map(|_| rng.pick(SELECTORS).to_string())
                    .collect::<Vec<_>>()
                    .join(*rng.pick(&[",", " ", "", ",,"]))
            }
            _ => {
                let mut b = rng.pick(SELECTORS).as_bytes().to_vec();
                mutate_bytes(&mut rng, &mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        let s2 = s.clone();
        f.run(
            case,
            || format!("{s2:?}"),
            || {
                for sel in [Selector::parse_labels(&s), Selector::parse_fields(&s)]
                    .into_iter()
                    .flatten()
                {
                    let text = sel.to_string_form();
                    let labels = json!({"app": "web", "tier": "a", "x": "5"});
                    let _ = sel.matches_labels(labels.as_object());
                    let _ = sel
                        .matches_with(&|k: &str| (k == "metadata.name").then(|| "web".to_string()));
                    // The printed form parses again.
                    let _ = Selector::parse_labels(&text);
                }
            },
        );
        // Label selectors as objects (matchLabels/matchExpressions).
        let mut sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]});
        mutate_value(&mut rng, &mut sel, 0);
        let sel2 = sel.clone();
        f.run(
            case,
            || sel2.to_string(),
            || {
                if let Ok(s) = Selector::from_label_selector(&sel) {
                    let _ = s.to_string_form();
                }
            },
        );
    }
    f.check();
}

fn random_pointer(rng: &mut Rng, doc: &Value) -> String {
    // Mostly real paths into the document, sometimes extended or broken.
    let mut path = String::new();
    let mut cur = doc;
    for _ in 0..rng.below(6) {
        match cur {
            Value::Object(m) if !m.is_empty() => {
                let (k, v) = m.iter().nth(rng.below(m.len())).expect("entry");
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                cur = v;
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                path.push_str(&format!("/{i}"));
                cur = &a[i];
            }
            _ => break,
        }
    }
    if rng.chance(30) {
        let suffix: &&str = rng.pick(&[
            "/-",
            "/0",
            "/99999999999999999999",
            "/-1",
            "/01",
            "/~",
            "/~2",
            "/",
            "",
            "/new",
            "/a~1b",
            "/ ",
        ]);
        path.push_str(suffix);
    }
    if rng.chance(5) {
        path = rng
            .pick(&["", "/", "x", "~", "//", "/metadata/", "-"])
            .to_string();
    }
    path
}

fn random_json_patch(rng: &mut Rng, doc: &Value) -> Value {
    if rng.chance(5) {
        return random_value(rng, 0);
    }
    let ops: Vec<Value> = (0..rng.below(4) + 1)
        .map(|_| {
            let op = *rng.pick(&[
                "add", "remove", "replace", "move", "copy", "test", "bogus", "",
            ]);
            let mut o = json!({"op": op, "path": random_pointer(rng, doc)});
            if rng.chance(80) {
                o["value"] = if rng.chance(50) {
                    random_value(rng, 1)
                } else {
                    doc.pointer(&random_pointer(rng, doc))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
            }
            if matches!(op, "move" | "copy") || rng.chance(10) {
                o["from"] = json!(random_pointer(rng, doc));
            }
            if rng.chance(10) {
                mutate_value(rng, &mut o, 0);
            }
            o
        })
        .collect();
    Value::Array(ops)
}

#[test]
fn json_patch_never_panics() {
    let mut rng = Rng::new(seed() ^ 3);
    let docs = corpus();
    let mut f = Failures::new("json_patch");
    for case in 0..iterations(5000) {
        let doc = if rng.chance(70) {
            rng.pick(&docs).clone()
        } else {
            mutated_doc(&mut rng, &docs)
        };
        let patch = random_json_patch(&mut rng, &doc);
        let (d, p) = (doc.clone(), patch.clone());
        f.run(
            case,
            || format!("doc: {d}\n  patch: {p}"),
            || {
                let _ = json_patch(&doc, &patch);
            },
        );
    }
    f.check();
}

#[test]
fn merge_patches_never_panic() {
    let mut rng = Rng::new(seed() ^ 4);
    let docs = corpus();
    let schema = deployment_schema();
    let mut f = Failures::new("merge patches");
    for case in 0..iterations(4000) {
        let original = if rng.chance(60) {
            docs[1].clone() // the Deployment
        } else {
            mutated_doc(&mut rng, &docs)
        };
        let mut patch = match rng.below(4) {
            0 => generate(&mut rng, schema, 0),
            1 => random_value(&mut rng, 0),
            _ => mutated_doc(&mut rng, &docs[1..2]),
        };
        if rng.chance(50) {
            // Strategic directives in random places.
            let directive = json!(*rng.pick(&[
                json!({"$patch": "replace"}),
                json!({"$patch": "delete"}),
                json!({"$patch": "merge"}),
                json!({"$patch": "bogus"}),
                json!({"$patch": 1}),
                json!({"$retainKeys": ["replicas", "x"]}),
                json!({"$retainKeys": "replicas"}),
                json!({"$setElementOrder/containers": [{"name": "nginx"}, {"name": "new"}]}),
                json!({"$setElementOrder/containers": [1, null]}),
                json!({"$deleteFromPrimitiveList/finalizers": ["x/y"]}),
                json!({"$deleteFromPrimitiveList/args": "x"}),
                json!([{"$patch": "delete", "name": "nginx"}]),
                json!([{"$patch": "replace"}]),
                json!([{"name": "nginx", "$patch": "merge"}, {"name": null}]),
                json!({"containers": [{"$patch": "delete"}]}),
            ]));
            insert_somewhere(&mut rng, &mut patch, directive);
        }
        let (o, p) = (original.clone(), patch.clone());
        f.run(
            case,
            || format!("original: {o}\n  patch: {p}"),
            || {
                let _ = json_merge_patch(&original, &patch);
                let _ = strategic_merge_patch(&original, &patch, Some(schema));
                let _ = strategic_merge_patch(&original, &patch, None);
            },
        );
    }
    f.check();
}

/// Merges `extra` into a random object (or replaces a random array element) of `v`.
fn insert_somewhere(rng: &mut Rng, v: &mut Value, extra: Value) {
    // Pick a path of containers first, then borrow mutably once.
    let mut pointer = String::new();
    {
        let mut cur: &Value = v;
        for _ in 0..rng.below(6) {
            let next = match cur {
                Value::Object(m) if !m.is_empty() => {
                    let (k, n) = m.iter().nth(rng.below(m.len())).expect("entry");
                    Some((k.replace('~', "~0").replace('/', "~1"), n))
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    Some((i.to_string(), &a[i]))
                }
                _ => None,
            };
            match next {
                Some((seg, n)) if n.is_object() || n.is_array() => {
                    pointer.push('/');
                    pointer.push_str(&seg);
                    cur = n;
                }
                _ => break,
            }
        }
    }
    let cur = v.pointer_mut(&pointer).expect("path exists");
    match (cur, extra) {
        (Value::Object(m), Value::Object(e)) => m.extend(e),
        (Value::Array(a), Value::Array(e)) => a.extend(e),
        (Value::Array(a), e) => a.push(e),
        (Value::Object(m), e) => {
            m.insert("containers".into(), e);
        }
        (c, e) => *c = e,
    }
}

#[test]
fn schema_checks_never_panic() {
    let mut rng = Rng::new(seed() ^ 5);
    let docs = corpus();
    let defs = definitions();
    let infos: Vec<ResourceInfo> = builtins()
        .into_iter()
        .filter(|i| i.definition.is_some())
        .collect();
    let mut f = Failures::new("schema checks");
    for case in 0..iterations(3000) {
        let info = rng.pick(&infos);
        let node = SchemaNode::definition(defs, info.definition.as_deref().unwrap())
            .expect("definition exists");
        let value = if rng.chance(50) {
            generated_object(&mut rng, info)
        } else {
            mutated_doc(&mut rng, &docs)
        };
        let v = value.clone();
        let name = info.definition.clone().unwrap();
        f.run(
            case,
            || format!("{name}: {v}"),
            || {
                let _ = unknown_fields(node, &value);
                let _ = type_errors(node, &value);
                let mut pruned = value.clone();
                prune_unknown(node, &mut pruned);
                // Pruning leaves nothing unknown behind.
                assert!(
                    unknown_fields(node, &pruned).is_empty(),
                    "unknown fields after pruning: {:?}",
                    unknown_fields(node, &pruned)
                );
            },
        );
    }
    f.check();
}

#[test]
fn validation_and_defaults_never_panic() {
    let mut rng = Rng::new(seed() ^ 6);
    let docs = corpus();
    let infos = builtins();
    assert!(!infos.is_empty());
    let mut f = Failures::new("validation/defaults");
    let per_kind = iterations(60).max(1);
    let mut case = 0;
    for info in &infos {
        for i in 0..per_kind {
            case += 1;
            let mut obj = match i % 4 {
                0 | 1 => generated_object(&mut rng, info),
                2 => mutated_doc(&mut rng, &docs),
                _ => {
                    let mut o = rng.pick(&docs).clone();
                    o["apiVersion"] = json!(info.api_version());
                    o["kind"] = json!(info.kind);
                    mutate_value(&mut rng, &mut o, 0);
                    o
                }
            };
            let old = if rng.chance(40) {
                Some(generated_object(&mut rng, info))
            } else {
                None
            };
            let (o, old2) = (obj.clone(), old.clone());
            let what = format!("{}/{} {}", info.group, info.version, info.kind);
            f.run(
                case,
                || format!("{what}: obj {o}\n  old: {old2:?}"),
                || {
                    apply_defaults(info, &mut obj);
                    let _ = validate(info, &obj, None);
                    let _ = validate(info, &obj, old.as_ref());
                    if let Some(old) = &old {
                        let _ = validate(info, old, Some(&obj));
                    }
                },
            );
        }
    }
    f.check();
}

#[test]
fn decoded_garbage_through_the_pipeline() {
    // Bodies that decode (after byte mutation) go through what a create does.
    let mut rng = Rng::new(seed() ^ 7);
    let docs = corpus();
    let infos = builtins();
    let defs = definitions();
    let mut f = Failures::new("pipeline");
    let seeds: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| serde_json::to_vec(d).unwrap())
        .collect();
    let mut ran = 0;
    for case in 0..iterations(6000) {
        let mut bytes = rng.pick(&seeds).clone();
        mutate_bytes(&mut rng, &mut bytes);
        let Ok(d) = decode_json(&bytes) else { continue };
        ran += 1;
        let info = rng.pick(&infos);
        let b = bytes.clone();
        let what = format!("{}/{} {}", info.group, info.version, info.kind);
        f.run(
            case,
            || format!("{what}: {:?}", String::from_utf8_lossy(&b)),
            || {
                let mut obj = d.value;
                if let Some(node) = info
                    .definition
                    .as_deref()
                    .and_then(|n| SchemaNode::definition(defs, n))
                {
                    let _ = unknown_fields(node, &obj);
                    let _ = type_errors(node, &obj);
                    prune_unknown(node, &mut obj);
                }
                apply_defaults(info, &mut obj);
                let _ = validate(info, &obj, None);
            },
        );
    }
    assert!(ran > 0);
    f.check();
}
