//! Defaulting of fields users leave out, as upstream does it.
//!
//! Mirrors the `SetDefaults_*` functions of the built-in API groups (and the
//! few fields upstream's registry strategies fill on create, such as a
//! namespace's `kubernetes` finalizer), working on the JSON form of objects.

use crate::resource::ResourceInfo;
use serde_json::{json, Map, Value};

/// Fills defaults in place, as upstream's `SetDefaults_*` do.
pub fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => default_pod(obj),
        ("", "PodTemplate") => {
            if let Some(t) = obj.get_mut("template") {
                default_pod_template(t);
            }
        }
        ("", "ReplicationController") => default_replication_controller(obj),
        ("", "Service") => default_service(obj),
        ("", "Secret") => default_secret(obj),
        ("", "Namespace") => default_namespace(obj),
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pvc_spec(spec);
            }
            let status = ensure_obj(obj, "status");
            set(status, "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let spec = ensure_obj(obj, "spec");
            set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set(spec, "volumeMode", json!("Filesystem"));
            let status = ensure_obj(obj, "status");
            set(status, "phase", json!("Pending"));
        }
        ("", "Endpoints") => {
            for subset in arr_mut(obj, "subsets") {
                for port in arr_mut(subset, "ports") {
                    if let Some(p) = port.as_object_mut() {
                        set(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        ("apps", "Deployment") => default_deployment(obj),
        ("apps", "ReplicaSet") => {
            let spec = ensure_obj(obj, "spec");
            set(spec, "replicas", json!(1));
            copy_template_labels(obj);
            default_template_at(obj);
        }
        ("apps", "DaemonSet") => default_daemon_set(obj),
        ("apps", "StatefulSet") => default_stateful_set(obj),
        ("batch", "Job") => default_job(obj),
        ("batch", "CronJob") => default_cron_job(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => default_hpa(info, obj),
        ("networking.k8s.io", "NetworkPolicy") => default_network_policy(obj),
        ("storage.k8s.io", "StorageClass") => {
            let o = obj.as_object_mut().expect("object");
            set(o, "reclaimPolicy", json!("Delete"));
            set(o, "volumeBindingMode", json!("Immediate"));
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            let o = obj.as_object_mut().expect("object");
            set(o, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => default_binding(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => default_crd(obj),
        _ => {}
    }
}

// ---------- helpers ----------

/// Sets `key` when it is absent or null.
fn set(map: &mut Map<String, Value>, key: &str, v: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {
            map.insert(key.to_string(), v);
        }
        _ => {}
    }
}

/// The object at `key`, created (or replacing a null) when absent.
fn ensure_obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let map = v.as_object_mut().expect("object");
    let slot = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("object")
}

fn arr_mut<'a>(v: &'a mut Value, key: &str) -> std::slice::IterMut<'a, Value> {
    match v.get_mut(key).and_then(Value::as_array_mut) {
        Some(a) => a.iter_mut(),
        None => [].iter_mut(),
    }
}

fn is_unset(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

// ---------- pods ----------

fn default_pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        if spec.is_object() {
            default_pod_spec(spec);
            // Requests default to limits for pods (not for templates).
            for key in ["containers", "initContainers"] {
                for c in arr_mut(spec, key) {
                    default_requests_from_limits(c);
                }
            }
            let s = spec.as_object_mut().expect("object");
            set(s, "enableServiceLinks", json!(true));
        }
    }
}

fn default_requests_from_limits(c: &mut Value) {
    let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    let req = res.entry("requests").or_insert_with(|| json!({}));
    if !req.is_object() {
        *req = json!({});
    }
    let req = req.as_object_mut().expect("object");
    for (k, v) in limits {
        req.entry(k).or_insert(v);
    }
}

/// Pod template defaults (templates of workloads).
fn default_pod_template(t: &mut Value) {
    if !t.is_object() {
        return;
    }
    let spec = ensure_obj(t, "spec");
    let mut spec_v = Value::Object(std::mem::take(spec));
    default_pod_spec(&mut spec_v);
    *ensure_obj(t, "spec") = match spec_v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
}

/// `spec.template` of a workload.
fn default_template_at(obj: &mut Value) {
    if let Some(t) = obj.get_mut("spec").and_then(|s| s.get_mut("template")) {
        default_pod_template(t);
    }
}

fn default_pod_spec(spec: &mut Value) {
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    {
        let s = spec.as_object_mut().expect("object");
        set(s, "dnsPolicy", json!("ClusterFirst"));
        set(s, "restartPolicy", json!("Always"));
        set(s, "securityContext", json!({}));
        set(s, "terminationGracePeriodSeconds", json!(30));
        set(s, "schedulerName", json!("default-scheduler"));
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in arr_mut(spec, key) {
            default_container(c, host_network);
        }
    }
    for v in arr_mut(spec, "volumes") {
        default_volume(v);
    }
}

/// The tag of an image reference; "latest" when neither tag nor digest.
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => Some(tag),
        None => Some("latest"),
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(m) = c.as_object_mut() else { return };
    set(m, "terminationMessagePath", json!("/dev/termination-log"));
    set(m, "terminationMessagePolicy", json!("File"));
    if is_unset(m.get("imagePullPolicy")) {
        let image = m.get("image").and_then(Value::as_str).unwrap_or_default();
        let policy = if image_tag(image) == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        };
        m.insert("imagePullPolicy".into(), json!(policy));
    }
    set(m, "resources", json!({}));
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(p, "protocol", json!("TCP"));
            if host_network && is_unset(p.get("hostPort")) {
                if let Some(cp) = p.get("containerPort").cloned() {
                    p.insert("hostPort".into(), cp);
                }
            }
        }
    }
    if let Some(env) = m.get_mut("env").and_then(Value::as_array_mut) {
        for e in env.iter_mut() {
            if let Some(fr) = e
                .get_mut("valueFrom")
                .and_then(|v| v.get_mut("fieldRef"))
                .and_then(Value::as_object_mut)
            {
                set(fr, "apiVersion", json!("v1"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(Value::as_object_mut) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            default_handler(p);
        }
    }
    if let Some(lc) = m.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lc.get_mut(hook).and_then(Value::as_object_mut) {
                default_handler(h);
            }
        }
    }
}

fn default_handler(h: &mut Map<String, Value>) {
    if let Some(g) = h.get_mut("httpGet").and_then(Value::as_object_mut) {
        set(g, "path", json!("/"));
        set(g, "scheme", json!("HTTP"));
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn default_volume(v: &mut Value) {
    let Some(m) = v.as_object_mut() else { return };
    if !VOLUME_SOURCES.iter().any(|k| !is_unset(m.get(*k))) {
        m.insert("emptyDir".into(), json!({}));
    }
    for key in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(src) = m.get_mut(key).and_then(Value::as_object_mut) {
            set(src, "defaultMode", json!(420));
        }
    }
    if let Some(hp) = m.get_mut("hostPath").and_then(Value::as_object_mut) {
        set(hp, "type", json!(""));
    }
    if let Some(ds) = m
        .get_mut("ephemeral")
        .and_then(|e| e.get_mut("volumeClaimTemplate"))
        .and_then(|t| t.get_mut("spec"))
    {
        default_pvc_spec(ds);
    }
}

// ---------- workloads ----------

fn default_replication_controller(obj: &mut Value) {
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "replicas", json!(1));
        if let Some(l) = &template_labels {
            if spec
                .get("selector")
                .and_then(Value::as_object)
                .is_none_or(|s| s.is_empty())
            {
                spec.insert("selector".into(), l.clone());
            }
        }
    }
    copy_template_labels(obj);
    default_template_at(obj);
}

/// Objects without labels take their template's labels (RC, RS as upstream did; Job).
fn copy_template_labels(obj: &mut Value) {
    let Some(l) = obj.pointer("/spec/template/metadata/labels").cloned() else {
        return;
    };
    if l.as_object().is_none_or(|m| m.is_empty()) {
        return;
    }
    let meta = ensure_obj(obj, "metadata");
    if meta
        .get("labels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.is_empty())
    {
        meta.insert("labels".into(), l);
    }
}

fn default_deployment(obj: &mut Value) {
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "replicas", json!(1));
        set(spec, "revisionHistoryLimit", json!(10));
        set(spec, "progressDeadlineSeconds", json!(600));
        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
        if !strategy.is_object() {
            *strategy = json!({});
        }
        let st = strategy.as_object_mut().expect("object");
        set(st, "type", json!("RollingUpdate"));
        if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
            if !ru.is_object() {
                *ru = json!({});
            }
            let ru = ru.as_object_mut().expect("object");
            set(ru, "maxUnavailable", json!("25%"));
            set(ru, "maxSurge", json!("25%"));
        }
    }
    default_template_at(obj);
}

fn default_daemon_set(obj: &mut Value) {
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "revisionHistoryLimit", json!(10));
        let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
        if !us.is_object() {
            *us = json!({});
        }
        let us = us.as_object_mut().expect("object");
        set(us, "type", json!("RollingUpdate"));
        if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
            if !ru.is_object() {
                *ru = json!({});
            }
            let ru = ru.as_object_mut().expect("object");
            set(ru, "maxUnavailable", json!(1));
            set(ru, "maxSurge", json!(0));
        }
    }
    default_template_at(obj);
}

fn default_stateful_set(obj: &mut Value) {
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "replicas", json!(1));
        set(spec, "podManagementPolicy", json!("OrderedReady"));
        set(spec, "revisionHistoryLimit", json!(10));
        let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
        if !us.is_object() {
            *us = json!({});
        }
        let us = us.as_object_mut().expect("object");
        if is_unset(us.get("type")) {
            us.insert("type".into(), json!("RollingUpdate"));
            set(us, "rollingUpdate", json!({}));
        }
        if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            if let Some(ru) = us.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                set(ru, "partition", json!(0));
            }
        }
        let policy = spec
            .entry("persistentVolumeClaimRetentionPolicy")
            .or_insert_with(|| json!({}));
        if !policy.is_object() {
            *policy = json!({});
        }
        let policy = policy.as_object_mut().expect("object");
        set(policy, "whenDeleted", json!("Retain"));
        set(policy, "whenScaled", json!("Retain"));
    }
    if let Some(spec) = obj.get_mut("spec") {
        for t in arr_mut(spec, "volumeClaimTemplates") {
            if let Some(ts) = t.get_mut("spec") {
                default_pvc_spec(ts);
            }
            if let Some(m) = t.as_object_mut() {
                set(m, "apiVersion", json!("v1"));
                set(m, "kind", json!("PersistentVolumeClaim"));
                let status = m.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    set(s, "phase", json!("Pending"));
                }
            }
        }
    }
    default_template_at(obj);
}

fn default_job(obj: &mut Value) {
    generate_job_selector(obj);
    {
        let spec = ensure_obj(obj, "spec");
        if is_unset(spec.get("completions")) && is_unset(spec.get("parallelism")) {
            spec.insert("completions".into(), json!(1));
            spec.insert("parallelism".into(), json!(1));
        }
        set(spec, "parallelism", json!(1));
        if is_unset(spec.get("backoffLimit")) {
            let limit = if is_unset(spec.get("backoffLimitPerIndex")) {
                6
            } else {
                i32::MAX as i64
            };
            spec.insert("backoffLimit".into(), json!(limit));
        }
        set(spec, "completionMode", json!("NonIndexed"));
        set(spec, "suspend", json!(false));
        let replacement = if is_unset(spec.get("podFailurePolicy")) {
            "TerminatingOrFailed"
        } else {
            "Failed"
        };
        set(spec, "podReplacementPolicy", json!(replacement));
    }
    copy_template_labels(obj);
    default_template_at(obj);
}

/// Upstream's Job strategy generates the selector from the uid on create
/// (unless `manualSelector`); done here when the uid is already assigned.
fn generate_job_selector(obj: &mut Value) {
    let Some(uid) = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return;
    };
    if uid.is_empty() || obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true)
    {
        return;
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let spec = ensure_obj(obj, "spec");
    if !is_unset(spec.get("selector")) {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.is_object() {
        *template = json!({});
    }
    let meta = ensure_obj(template, "metadata");
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("object");
    labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
    labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
    labels.insert("controller-uid".into(), json!(uid));
    labels.insert("job-name".into(), json!(name));
}

fn default_cron_job(obj: &mut Value) {
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "concurrencyPolicy", json!("Allow"));
        set(spec, "suspend", json!(false));
        set(spec, "successfulJobsHistoryLimit", json!(3));
        set(spec, "failedJobsHistoryLimit", json!(1));
    }
    if let Some(t) = obj.pointer_mut("/spec/jobTemplate/spec/template") {
        default_pod_template(t);
    }
}

// ---------- services, config ----------

fn default_service(obj: &mut Value) {
    let spec = ensure_obj(obj, "spec");
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let cfg = spec
                .entry("sessionAffinityConfig")
                .or_insert_with(|| json!({}));
            if !cfg.is_object() {
                *cfg = json!({});
            }
            let cfg = cfg.as_object_mut().expect("object");
            let cip = cfg.entry("clientIP").or_insert_with(|| json!({}));
            if !cip.is_object() {
                *cip = json!({});
            }
            set(
                cip.as_object_mut().expect("object"),
                "timeoutSeconds",
                json!(10800),
            );
        }
        _ => {}
    }
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(p, "protocol", json!("TCP"));
            let unset_target = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset_target {
                if let Some(port) = p.get("port").cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if ty != "ExternalName" {
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        match spec.get("ipFamilies") {
            Some(Value::Array(a)) if !a.is_empty() => {}
            _ => {
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
            }
        }
    }
}

fn default_secret(obj: &mut Value) {
    let o = obj.as_object_mut().expect("object");
    set(o, "type", json!("Opaque"));
    // stringData is write-only: merged into data (base64) as upstream's conversion does.
    if let Some(Value::Object(sd)) = o.remove("stringData") {
        let data = o.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        let data = data.as_object_mut().expect("object");
        for (k, v) in sd {
            let s = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            data.insert(k, json!(base64_encode(s.as_bytes())));
        }
    }
}

/// Standard base64 with padding.
pub(crate) fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn default_namespace(obj: &mut Value) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    {
        let spec = ensure_obj(obj, "spec");
        set(spec, "finalizers", json!(["kubernetes"]));
    }
    {
        let status = ensure_obj(obj, "status");
        set(status, "phase", json!("Active"));
    }
    if !name.is_empty() {
        let meta = ensure_obj(obj, "metadata");
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        labels
            .as_object_mut()
            .expect("object")
            .insert("kubernetes.io/metadata.name".into(), json!(name));
    }
}

fn default_pvc_spec(spec: &mut Value) {
    if let Some(s) = spec.as_object_mut() {
        set(s, "volumeMode", json!("Filesystem"));
    }
}

// ---------- other groups ----------

fn default_hpa(info: &ResourceInfo, obj: &mut Value) {
    let spec = ensure_obj(obj, "spec");
    set(spec, "minReplicas", json!(1));
    if info.version == "v2" {
        let empty = spec
            .get("metrics")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        if empty {
            spec.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
            );
        }
    }
}

fn default_network_policy(obj: &mut Value) {
    let spec = ensure_obj(obj, "spec");
    let empty = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if empty {
        let mut types = vec![json!("Ingress")];
        if spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            types.push(json!("Egress"));
        }
        spec.insert("policyTypes".into(), Value::Array(types));
    }
    for key in ["ingress", "egress"] {
        if let Some(rules) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for rule in rules.iter_mut() {
                if let Some(ports) = rule.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn default_binding(obj: &mut Value) {
    if let Some(r) = obj.get_mut("roleRef").and_then(Value::as_object_mut) {
        if r.get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            r.insert("apiGroup".into(), json!("rbac.authorization.k8s.io"));
        }
    }
    for s in arr_mut(obj, "subjects") {
        let Some(m) = s.as_object_mut() else { continue };
        if m.get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            match m.get("kind").and_then(Value::as_str) {
                Some("User" | "Group") => {
                    m.insert("apiGroup".into(), json!("rbac.authorization.k8s.io"));
                }
                Some("ServiceAccount") => {
                    m.insert("apiGroup".into(), json!(""));
                }
                _ => {}
            }
        }
    }
}

fn default_crd(obj: &mut Value) {
    let spec = ensure_obj(obj, "spec");
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !kind.is_empty() {
            if names
                .get("singular")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names
                .get("listKind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }
    let conv = spec.entry("conversion").or_insert_with(|| json!({}));
    if let Some(c) = conv.as_object_mut() {
        set(c, "strategy", json!("None"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::builtins;

    fn info(group: &str, kind: &str) -> ResourceInfo {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.kind == kind)
            .unwrap()
    }

    #[test]
    fn pod_defaults() {
        let mut pod = json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                     "livenessProbe": {"httpGet": {"port": 80}},
                     "resources": {"limits": {"cpu": "1"}}},
                    {"name": "b", "image": "nginx:1.25"},
                    {"name": "c", "image": "reg:5000/app"},
                    {"name": "d", "image": "nginx@sha256:abcd"},
                    {"name": "e", "image": "nginx:latest"}
                ],
                "volumes": [{"name": "cm", "configMap": {"name": "x"}}, {"name": "s", "secret": {"secretName": "y"}}, {"name": "e"}]
            }
        });
        apply_defaults(&info("", "Pod"), &mut pod);
        let s = &pod["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["schedulerName"], "default-scheduler");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["enableServiceLinks"], true);
        let c = &s["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        let p = &c["livenessProbe"];
        assert_eq!(p["timeoutSeconds"], 1);
        assert_eq!(p["periodSeconds"], 10);
        assert_eq!(p["successThreshold"], 1);
        assert_eq!(p["failureThreshold"], 3);
        assert_eq!(p["httpGet"]["scheme"], "HTTP");
        assert_eq!(p["httpGet"]["path"], "/");
        assert_eq!(s["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(s["containers"][1]["resources"], json!({}));
        assert_eq!(s["containers"][2]["imagePullPolicy"], "Always");
        assert_eq!(s["containers"][3]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(s["containers"][4]["imagePullPolicy"], "Always");
        assert_eq!(s["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(s["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(s["volumes"][2]["emptyDir"], json!({}));
    }

    #[test]
    fn explicit_values_are_kept() {
        let mut pod = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Never"}]}});
        apply_defaults(&info("", "Pod"), &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
    }

    #[test]
    fn deployment_defaults() {
        let mut d =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        apply_defaults(&info("apps", "Deployment"), &mut d);
        let s = &d["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert_eq!(
            s["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(s["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            s["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        // Templates do not get requests copied from limits nor enableServiceLinks.
        assert!(s["template"]["spec"].get("enableServiceLinks").is_none());

        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply_defaults(&info("apps", "Deployment"), &mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn replicaset_daemonset_statefulset_defaults() {
        let mut rs = json!({"spec": {}});
        apply_defaults(&info("apps", "ReplicaSet"), &mut rs);
        assert_eq!(rs["spec"]["replicas"], 1);

        let mut ds = json!({"spec": {}});
        apply_defaults(&info("apps", "DaemonSet"), &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);

        let mut sts =
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}});
        apply_defaults(&info("apps", "StatefulSet"), &mut sts);
        let s = &sts["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            s["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(
            s["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            s["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
    }

    #[test]
    fn job_and_cronjob_defaults() {
        let mut j = json!({"metadata": {"name": "pi"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        apply_defaults(&info("batch", "Job"), &mut j);
        let s = &j["spec"];
        assert_eq!(s["completions"], 1);
        assert_eq!(s["parallelism"], 1);
        assert_eq!(s["backoffLimit"], 6);
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["template"]["spec"]["restartPolicy"], "Always");
        assert!(s.get("selector").is_none());

        let mut j2 = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"parallelism": 3, "template": {}}});
        apply_defaults(&info("batch", "Job"), &mut j2);
        assert!(j2["spec"].get("completions").is_none());
        assert_eq!(j2["spec"]["parallelism"], 3);
        assert_eq!(
            j2["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            j2["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );

        let mut cj = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        apply_defaults(&info("batch", "CronJob"), &mut cj);
        let s = &cj["spec"];
        assert_eq!(s["concurrencyPolicy"], "Allow");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["successfulJobsHistoryLimit"], 3);
        assert_eq!(s["failedJobsHistoryLimit"], 1);
        assert_eq!(
            s["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
        assert!(s["jobTemplate"]["spec"].get("backoffLimit").is_none());
    }

    #[test]
    fn service_defaults() {
        let mut svc =
            json!({"spec": {"ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}});
        apply_defaults(&info("", "Service"), &mut svc);
        let s = &svc["spec"];
        assert_eq!(s["type"], "ClusterIP");
        assert_eq!(s["sessionAffinity"], "None");
        assert_eq!(s["ports"][0]["protocol"], "TCP");
        assert_eq!(s["ports"][0]["targetPort"], 80);
        assert_eq!(s["ports"][1]["targetPort"], "https");
        assert_eq!(s["internalTrafficPolicy"], "Cluster");
        assert_eq!(s["ipFamilyPolicy"], "SingleStack");
        assert_eq!(s["ipFamilies"], json!(["IPv4"]));
        assert!(s.get("externalTrafficPolicy").is_none());

        let mut np = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        apply_defaults(&info("", "Service"), &mut np);
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");

        let mut en = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        apply_defaults(&info("", "Service"), &mut en);
        assert!(en["spec"].get("ipFamilies").is_none());
        assert!(en["spec"].get("internalTrafficPolicy").is_none());
    }

    #[test]
    fn secret_namespace_storage_defaults() {
        let mut sec = json!({"stringData": {"a": "hello"}});
        apply_defaults(&info("", "Secret"), &mut sec);
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"]["a"], "aGVsbG8=");
        assert!(sec.get("stringData").is_none());

        let mut ns = json!({"metadata": {"name": "dev"}});
        apply_defaults(&info("", "Namespace"), &mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "dev"
        );

        let mut pvc = json!({"spec": {}});
        apply_defaults(&info("", "PersistentVolumeClaim"), &mut pvc);
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");

        let mut sc = json!({"provisioner": "x"});
        apply_defaults(&info("storage.k8s.io", "StorageClass"), &mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
    }

    #[test]
    fn hpa_netpol_rbac_defaults() {
        let hpa_v2 = builtins()
            .into_iter()
            .find(|r| r.kind == "HorizontalPodAutoscaler" && r.version == "v2")
            .unwrap();
        let mut h = json!({"spec": {"maxReplicas": 3}});
        apply_defaults(&hpa_v2, &mut h);
        assert_eq!(h["spec"]["minReplicas"], 1);
        assert_eq!(
            h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );

        let mut np = json!({"spec": {"podSelector": {}, "egress": [{}]}});
        apply_defaults(&info("networking.k8s.io", "NetworkPolicy"), &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let mut np2 = json!({"spec": {"podSelector": {}}});
        apply_defaults(&info("networking.k8s.io", "NetworkPolicy"), &mut np2);
        assert_eq!(np2["spec"]["policyTypes"], json!(["Ingress"]));

        let mut rb = json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]});
        apply_defaults(&info("rbac.authorization.k8s.io", "RoleBinding"), &mut rb);
        assert_eq!(rb["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][1]["apiGroup"], "");
    }

    #[test]
    fn base64_matches_standard() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"a"), "YQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
    }
}
