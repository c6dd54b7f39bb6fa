use super::*;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;

fn envelope(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn meta(name: &str, namespace: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        // Go always writes non-pointer fields; mimic that.
        generate_name: Some(String::new()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn config_map() {
    let cm = core::ConfigMap {
        metadata: Some(meta("cm", "default")),
        data: BTreeMap::from([("a".into(), "1".into()), ("empty".into(), String::new())]),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
    assert_eq!(
        json,
        json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "cm", "namespace": "default"},
            "data": {"a": "1", "empty": ""}
        })
    );
}

#[test]
fn secret_binary_data_is_base64() {
    let secret = core::Secret {
        metadata: Some(meta("s", "ns")),
        data: BTreeMap::from([("bin".into(), vec![0u8, 0xff, b'x'])]),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "Secret", &secret)).unwrap();
    assert_eq!(json["data"], json!({"bin": "AP94"}));
    assert_eq!(json["type"], "Opaque");
    assert_eq!(json["metadata"]["name"], "s");
}

#[test]
fn namespace_and_service_account() {
    let ns = core::Namespace {
        metadata: Some(meta("team", "")),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus {
            phase: Some(String::new()),
            ..Default::default()
        }),
    };
    let json = decode(&envelope("v1", "Namespace", &ns)).unwrap();
    assert_eq!(
        json,
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "team"}})
    );
    let sa = core::ServiceAccount {
        metadata: Some(meta("bot", "default")),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "ServiceAccount", &sa)).unwrap();
    assert_eq!(json["automountServiceAccountToken"], false);
}

#[test]
fn deployment() {
    use k8s_pb::api::apps::v1 as apps;
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let container = core::Container {
        name: Some("nginx".into()),
        image: Some("nginx:1.27".into()),
        command: strings(&["nginx", "-g"]),
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        env: vec![core::EnvVar {
            name: Some("FROM".into()),
            value_from: Some(core::EnvVarSource {
                secret_key_ref: Some(core::SecretKeySelector {
                    local_object_reference: Some(core::LocalObjectReference {
                        name: Some("creds".into()),
                    }),
                    key: Some("password".into()),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([(
                "memory".into(),
                k8s_pb::apimachinery::pkg::api::resource::Quantity {
                    string: Some("128Mi".into()),
                },
            )]),
            ..Default::default()
        }),
        termination_message_path: Some("/dev/termination-log".into()),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    };
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            labels: labels.clone(),
            ..meta("web", "default")
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            selector: Some(meta::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: labels.clone(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Always".into()),
                    termination_grace_period_seconds: Some(30),
                    dns_policy: Some("ClusterFirst".into()),
                    security_context: Some(core::PodSecurityContext::default()),
                    scheduler_name: Some("default-scheduler".into()),
                    ..Default::default()
                }),
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
            min_ready_seconds: Some(0),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            replicas: Some(0),
            ready_replicas: Some(0),
            ..Default::default()
        }),
    };
    let json = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
    assert_eq!(json["kind"], "Deployment");
    assert_eq!(json["apiVersion"], "apps/v1");
    assert_eq!(
        json["metadata"],
        json!({"name": "web", "namespace": "default", "labels": {"app": "web"}})
    );
    let spec = &json["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["selector"], json!({"matchLabels": {"app": "web"}}));
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["schedulerName"], "default-scheduler");
    assert!(pod.get("securityContext").is_none());
    assert_eq!(
        pod["containers"],
        json!([{
            "name": "nginx",
            "image": "nginx:1.27",
            "command": ["nginx", "-g"],
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
            "env": [{"name": "FROM", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
            "resources": {"limits": {"memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log",
            "imagePullPolicy": "IfNotPresent"
        }])
    );
    assert!(json.get("status").is_none());
}

#[test]
fn service_and_cluster_role() {
    let svc = core::Service {
        metadata: Some(meta("web", "default")),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: Some("80-8080".into()),
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: None,
                }),
                protocol: Some("TCP".into()),
                ..Default::default()
            }],
            cluster_ip: Some("None".into()),
            r#type: Some("ClusterIP".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "Service", &svc)).unwrap();
    assert_eq!(json["spec"]["clusterIP"], "None");
    assert_eq!(json["spec"]["ports"][0]["targetPort"], 8080);

    use k8s_pb::api::rbac::v1 as rbac;
    let role = rbac::ClusterRole {
        metadata: Some(meta("reader", "")),
        rules: vec![rbac::PolicyRule {
            verbs: strings(&["get"]),
            api_groups: strings(&[""]),
            resources: strings(&["pods"]),
            non_resource_ur_ls: vec![],
            ..Default::default()
        }],
        ..Default::default()
    };
    let json = decode(&envelope(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        &role,
    ))
    .unwrap();
    assert_eq!(
        json["rules"],
        json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
    );
}

#[test]
fn self_subject_access_review() {
    use k8s_pb::api::authorization::v1 as authz;
    let review = authz::SelfSubjectAccessReview {
        metadata: Some(meta("", "")),
        spec: Some(authz::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(authz::ResourceAttributes {
                namespace: Some("default".into()),
                verb: Some("create".into()),
                group: Some(String::new()),
                resource: Some("pods".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(authz::SubjectAccessReviewStatus {
            allowed: Some(false),
            ..Default::default()
        }),
    };
    let json = decode(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &review,
    ))
    .unwrap();
    assert_eq!(
        json,
        json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}
        })
    );

    let rules = authz::SelfSubjectRulesReview {
        spec: Some(authz::SelfSubjectRulesReviewSpec {
            namespace: Some("kube-system".into()),
        }),
        ..Default::default()
    };
    let json = decode(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        &rules,
    ))
    .unwrap();
    assert_eq!(json["spec"], json!({"namespace": "kube-system"}));
}

#[test]
fn token_request() {
    use k8s_pb::api::authentication::v1 as authn;
    let request = authn::TokenRequest {
        metadata: Some(meta("bot", "default")),
        spec: Some(authn::TokenRequestSpec {
            audiences: strings(&["https://kubernetes.default.svc"]),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        status: Some(authn::TokenRequestStatus {
            token: Some(String::new()),
            expiration_timestamp: Some(meta::Time::default()),
        }),
    };
    let json = decode(&envelope(
        "authentication.k8s.io/v1",
        "TokenRequest",
        &request,
    ))
    .unwrap();
    assert_eq!(
        json["spec"],
        json!({"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600})
    );
    assert!(json.get("status").is_none());
}

#[test]
fn delete_options_in_any_group_version() {
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Foreground".into()),
        dry_run: strings(&["All"]),
        ..Default::default()
    };
    for api_version in ["v1", "meta.k8s.io/v1", "apps/v1"] {
        let json = decode(&envelope(api_version, "DeleteOptions", &options)).unwrap();
        assert_eq!(
            json,
            json!({
                "kind": "DeleteOptions",
                "apiVersion": api_version,
                "gracePeriodSeconds": 0,
                "propagationPolicy": "Foreground",
                "dryRun": ["All"]
            })
        );
    }
}

#[test]
fn times_and_durations() {
    use k8s_pb::api::batch::v1 as batch;
    let cron = batch::CronJob {
        metadata: Some(meta::ObjectMeta {
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..meta("nightly", "default")
        }),
        spec: Some(batch::CronJobSpec {
            schedule: Some("0 0 * * *".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let json = decode(&envelope("batch/v1", "CronJob", &cron)).unwrap();
    assert_eq!(
        json["metadata"]["creationTimestamp"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(json["spec"]["schedule"], "0 0 * * *");
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_500_000_000), "1h0m0.5s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
}

#[test]
fn unknown_kind_is_415() {
    let err = decode(&envelope(
        "example.com/v1",
        "Widget",
        &core::ConfigMap::default(),
    ))
    .unwrap_err();
    assert_eq!(err.code, 415);
}

#[test]
fn malformed_input_is_400_without_panicking() {
    assert_eq!(decode(b"").unwrap_err().code, 400);
    assert_eq!(decode(b"{\"kind\":1}").unwrap_err().code, 400);
    assert_eq!(decode(b"k8s\0\xff\xff\xff").unwrap_err().code, 400);

    let cm = core::ConfigMap {
        metadata: Some(meta("cm", "default")),
        data: BTreeMap::from([("a".into(), "1".into())]),
        ..Default::default()
    };
    let good = envelope("v1", "ConfigMap", &cm);
    for cut in 0..good.len() {
        let _ = decode(&good[..cut]);
    }
    // Garbage as the object inside a valid envelope.
    let mut state = 0x1234_5678u32;
    for _ in 0..2000 {
        let len = (state % 40) as usize;
        let raw: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        if let Err(err) = decode(&body) {
            assert_eq!(err.code, 400);
        }
    }
    // Deep nesting is refused, not a stack overflow.
    let mut nested = Vec::new();
    for _ in 0..10_000 {
        let mut outer = vec![0x0a]; // field 1, length-delimited
        let mut len = nested.len() as u64;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                outer.push(byte);
                break;
            }
            outer.push(byte | 0x80);
        }
        outer.extend(nested);
        nested = outer;
    }
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("apiextensions.k8s.io/v1".into()),
            kind: Some("CustomResourceDefinition".into()),
        }),
        raw: Some(nested),
        ..Default::default()
    };
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    let _ = decode(&body);
}

#[test]
fn horizontal_pod_autoscaler_v2() {
    use k8s_pb::api::autoscaling::v2 as hpa;
    let object = hpa::HorizontalPodAutoscaler {
        metadata: Some(meta("web", "default")),
        spec: Some(hpa::HorizontalPodAutoscalerSpec {
            scale_target_ref: Some(hpa::CrossVersionObjectReference {
                kind: Some("Deployment".into()),
                name: Some("web".into()),
                api_version: Some("apps/v1".into()),
            }),
            min_replicas: Some(1),
            max_replicas: Some(5),
            metrics: vec![hpa::MetricSpec {
                r#type: Some("Resource".into()),
                resource: Some(hpa::ResourceMetricSource {
                    name: Some("cpu".into()),
                    target: Some(hpa::MetricTarget {
                        r#type: Some("Utilization".into()),
                        average_utilization: Some(80),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let json = decode(&envelope(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        &object,
    ))
    .unwrap();
    assert_eq!(
        json["spec"],
        json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
            }]
        })
    );
}
