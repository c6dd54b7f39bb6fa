#![allow(clippy::result_large_err)] // ApiError mirrors the wire Status.
//! Deterministic fuzzing of protobuf request bodies
//! (`application/vnd.kubernetes.protobuf`): valid `k8s\0` envelopes of real
//! objects, mutated at the byte level, with their inner object mutated
//! inside an intact envelope, with the kind swapped so the object is read
//! with the wrong message table, and as random wire-format messages.
//! `decode` must never panic, and every error must be a 400 or a 415.
//! `FUZZ_SEED` / `FUZZ_SCALE` change the inputs and the iteration count.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use kobune_apiserver::protobuf::decode;
use prost::Message;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

const MAGIC: &[u8] = b"k8s\0";

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
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
        .unwrap_or(0x0070_726f_746f)
}

fn iterations(n: usize) -> usize {
    let scale: f64 = std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * scale).max(1.0) as usize
}

fn unknown(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let u = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(u.encode_to_vec());
    out
}

fn object_meta(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        generate_name: Some(String::new()),
        resource_version: Some(String::new()),
        generation: Some(0),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        annotations: BTreeMap::from([("a".into(), "b".into())]),
        creation_timestamp: Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(0),
        }),
        finalizers: vec!["example.com/f".into()],
        managed_fields: vec![meta::ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            operation: Some("Update".into()),
            api_version: Some("v1".into()),
            time: Some(meta::Time {
                seconds: Some(1),
                nanos: Some(5),
            }),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(meta::FieldsV1 {
                raw: Some(br#"{"f:data":{".":{},"f:a":{}}}"#.to_vec()),
            }),
            subresource: Some(String::new()),
        }],
        ..Default::default()
    }
}

/// (apiVersion, kind, encoded object) of valid objects.
fn corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let container = core::Container {
        name: Some("nginx".into()),
        image: Some("nginx:1.27".into()),
        command: vec!["nginx".into(), "-g".into()],
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        env: vec![core::EnvVar {
            name: Some("A".into()),
            value: Some("1".into()),
            ..Default::default()
        }],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([(
                "memory".into(),
                Quantity {
                    string: Some("128Mi".into()),
                },
            )]),
            ..Default::default()
        }),
        liveness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: Some("/".into()),
                    port: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("http".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod_spec = core::PodSpec {
        containers: vec![container],
        restart_policy: Some("Always".into()),
        termination_grace_period_seconds: Some(30),
        node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
        ..Default::default()
    };
    let cm = core::ConfigMap {
        metadata: Some(object_meta("cm")),
        data: BTreeMap::from([("a".into(), "1".into()), ("empty".into(), String::new())]),
        binary_data: BTreeMap::from([("bin".into(), vec![0, 1, 255])]),
        immutable: Some(false),
    };
    let secret = core::Secret {
        metadata: Some(object_meta("s")),
        data: BTreeMap::from([("k".into(), b"v".to_vec())]),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let deployment = apps::Deployment {
        metadata: Some(object_meta("web")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: Some("tier".into()),
                    operator: Some("In".into()),
                    values: vec!["a".into()],
                }],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(object_meta("")),
                spec: Some(pod_spec.clone()),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("25%".into()),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: Some(String::new()),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let pod = core::Pod {
        metadata: Some(object_meta("p")),
        spec: Some(pod_spec),
        status: None,
    };
    let service = core::Service {
        metadata: Some(object_meta("svc")),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: Some("http".into()),
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: None,
                }),
                ..Default::default()
            }],
            selector: BTreeMap::from([("app".into(), "web".into())]),
            r#type: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    };
    let revision = apps::ControllerRevision {
        metadata: Some(object_meta("rev")),
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"template":{"metadata":{"labels":{"a":"b"}}}}}"#.to_vec()),
        }),
        revision: Some(2),
    };
    let delete = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Foreground".into()),
        preconditions: Some(meta::Preconditions {
            uid: Some("u".into()),
            resource_version: Some("1".into()),
        }),
        dry_run: vec!["All".into()],
        ..Default::default()
    };
    let namespace = core::Namespace {
        metadata: Some(object_meta("team")),
        spec: Some(core::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: None,
    };
    vec![
        ("v1", "ConfigMap", cm.encode_to_vec()),
        ("v1", "Secret", secret.encode_to_vec()),
        ("apps/v1", "Deployment", deployment.encode_to_vec()),
        ("v1", "Pod", pod.encode_to_vec()),
        ("v1", "Service", service.encode_to_vec()),
        ("apps/v1", "ControllerRevision", revision.encode_to_vec()),
        ("v1", "DeleteOptions", delete.encode_to_vec()),
        ("apps/v1", "DeleteOptions", delete.encode_to_vec()),
        ("v1", "Namespace", namespace.encode_to_vec()),
    ]
}

const KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "Secret"),
    ("v1", "Namespace"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "ControllerRevision"),
    ("batch/v1", "CronJob"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("meta.k8s.io/v1", "DeleteOptions"),
    ("v1", "Nope"),
    ("", ""),
];

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const INTERESTING: &[&[u8]] = &[
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", // max varint
        b"\xff\xff\xff\xff\x0f",
        b"\x80",
        b"\x00",
        b"\x0a\x00",
        b"\x0a\x7f",
        b"\x12\x04k8s\x00",
        b"\x0b",
        b"\x0c", // groups (unsupported wire types)
        b"\x0e",
        b"\x0f",
        b"\x09\x00\x00",
        b"\x0d\x00",
        b"\xc3\x28", // invalid UTF-8
    ];
    for _ in 0..rng.below(4) + 1 {
        let len = bytes.len();
        match rng.below(6) {
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
                let n = (rng.below(len - i) + 1).min(8);
                bytes.drain(i..i + n);
            }
            3 => {
                let i = rng.below(len + 1);
                let t = rng.pick(INTERESTING);
                bytes.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => {
                bytes.truncate(rng.below(len));
            }
            _ if len > 0 => {
                let i = rng.below(len);
                bytes[i] = rng.next() as u8;
            }
            _ => bytes.push(rng.next() as u8),
        }
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A random but well-formed wire-format message, nested up to `depth`.
fn random_message(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(6) {
        let tag = *rng.pick(&[
            1u64,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            15,
            16,
            100,
            536_870_911,
        ]);
        let wire = *rng.pick(&[0u64, 1, 2, 2, 2, 5]);
        varint(tag << 3 | wire, &mut out);
        match wire {
            0 => varint(
                *rng.pick(&[0, 1, u64::MAX, 1 << 63, 1 << 31, 0x7fff_ffff]),
                &mut out,
            ),
            1 => out.extend(rng.next().to_le_bytes()),
            5 => out.extend((rng.next() as u32).to_le_bytes()),
            _ => {
                let body = match rng.below(4) {
                    0 if depth > 0 => random_message(rng, depth - 1),
                    1 => rng
                        .pick(&[&b"web"[..], b"{\"a\":1}", b"k8s\x00", b"\xff\xfe", b""])
                        .to_vec(),
                    2 => {
                        let (av, k) = *rng.pick(KINDS);
                        unknown(
                            av,
                            k,
                            if depth > 0 {
                                random_message(rng, depth - 1)
                            } else {
                                vec![]
                            },
                        )
                    }
                    _ => (0..rng.below(12)).map(|_| rng.next() as u8).collect(),
                };
                varint(body.len() as u64, &mut out);
                out.extend(body);
            }
        }
    }
    out
}

fn check(case: usize, body: &[u8], failures: &mut Vec<String>) {
    let result = catch_unwind(AssertUnwindSafe(|| decode(body)));
    let problem = match result {
        Ok(Ok(v)) => {
            // What decodes is JSON the rest of the server can serialize.
            match catch_unwind(AssertUnwindSafe(|| serde_json::to_vec(&v).map(|_| ()))) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("decoded value does not serialize: {e}")),
                Err(_) => Some("panic serializing the decoded value".to_string()),
            }
        }
        Ok(Err(e)) if e.code == 400 || e.code == 415 => None,
        Ok(Err(e)) => Some(format!("error with code {}: {e}", e.code)),
        Err(p) => Some(format!(
            "panic: {}",
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        )),
    };
    if let Some(p) = problem {
        let shown: Vec<u8> = body.iter().take(2000).copied().collect();
        failures.push(format!(
            "case {case} (seed {}): {p}\n  body ({} bytes): {:?}",
            seed(),
            body.len(),
            shown
        ));
    }
}

fn finish(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{} failing protobuf bodies (first 10):\n{}",
            failures.len(),
            failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

#[test]
fn valid_envelopes_decode() {
    for (av, kind, raw) in corpus() {
        let v = decode(&unknown(av, kind, raw)).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(v["kind"], kind);
    }
}

#[test]
fn mutated_envelopes_never_panic() {
    let mut rng = Rng::new(seed());
    let corpus = corpus();
    let mut failures = vec![];
    for case in 0..iterations(6000) {
        let (av, kind, raw) = rng.pick(&corpus).clone();
        let body = match rng.below(5) {
            // The whole body, bytes mutated.
            0 => {
                let mut b = unknown(av, kind, raw);
                mutate_bytes(&mut rng, &mut b);
                b
            }
            // The object mutated inside an intact envelope.
            1 | 2 => {
                let mut raw = raw;
                mutate_bytes(&mut rng, &mut raw);
                unknown(av, kind, raw)
            }
            // The object read as another kind.
            3 => {
                let (av2, kind2) = *rng.pick(KINDS);
                let mut raw = raw;
                if rng.chance(50) {
                    mutate_bytes(&mut rng, &mut raw);
                }
                unknown(av2, kind2, raw)
            }
            // Random well-formed messages as any kind.
            _ => {
                let (av2, kind2) = *rng.pick(KINDS);
                unknown(av2, kind2, random_message(&mut rng, 4))
            }
        };
        check(case, &body, &mut failures);
    }
    // Edge cases: empty, magic only, truncated everywhere.
    check(0, b"", &mut failures);
    check(0, MAGIC, &mut failures);
    let (av, kind, raw) = corpus[2].clone();
    let good = unknown(av, kind, raw);
    for cut in 0..good.len() {
        check(cut, &good[..cut], &mut failures);
    }
    finish(failures);
}

#[test]
fn envelope_fields_are_checked() {
    // Content encodings and unknown kinds are 415; garbage type meta is 400 or 415.
    let mut failures = vec![];
    let (_, _, raw) = corpus()[0].clone();
    let mut u = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        }),
        raw: Some(raw),
        content_encoding: Some("gzip".into()),
        content_type: Some(String::new()),
    };
    let mut body = MAGIC.to_vec();
    body.extend(u.encode_to_vec());
    assert_eq!(decode(&body).unwrap_err().code, 415);
    u.content_encoding = None;
    u.type_meta = None;
    let mut body = MAGIC.to_vec();
    body.extend(u.encode_to_vec());
    check(0, &body, &mut failures);
    finish(failures);
}

/// Builds `levels` envelopes, each a ControllerRevision whose `data`
/// (a RawExtension) holds the next envelope.
fn nested_raw_envelopes(levels: usize) -> Vec<u8> {
    let mut body = unknown("v1", "ConfigMap", vec![]);
    for _ in 0..levels {
        let rev = apps::ControllerRevision {
            metadata: None,
            data: Some(RawExtension { raw: Some(body) }),
            revision: None,
        };
        body = unknown("apps/v1", "ControllerRevision", rev.encode_to_vec());
    }
    body
}

/// Runs in a child process (a stack overflow aborts the process): decodes
/// deeply nested RawExtension envelopes on a thread with the stack size of
/// a tokio worker (2 MiB), as the server does.
#[test]
fn nested_raw_extension_child() {
    let Ok(levels) = std::env::var("FUZZ_PROTOBUF_NESTED_LEVELS") else {
        return; // only meaningful when spawned by nested_raw_extensions_are_bounded
    };
    let levels: usize = levels.parse().unwrap();
    let body = nested_raw_envelopes(levels);
    assert!(body.len() < 3 * 1024 * 1024, "{} bytes", body.len());
    let outcome = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || decode(&body).map(|_| ()).map_err(|e| e.code))
        .unwrap()
        .join()
        .unwrap();
    if let Err(code) = outcome {
        assert!(code == 400 || code == 415, "code {code}");
    }
}

#[test]
fn nested_raw_extensions_are_bounded() {
    // A body under the 3 MiB limit can nest RawExtension envelopes (each
    // holding `k8s\0` + another envelope) tens of thousands deep; decoding
    // must refuse or finish, never overflow the stack and kill the server.
    for levels in [50usize, 1_000, 20_000] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "nested_raw_extension_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FUZZ_PROTOBUF_NESTED_LEVELS", levels.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "decoding {levels} nested RawExtension envelopes ({} bytes) crashed the process: {:?}\n{}",
            nested_raw_envelopes(levels).len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
