//! Server-side Table printing: the columns and cells `kubectl get` shows.
//!
//! Built-in kinds follow upstream's `pkg/printers/internalversion` (always
//! generated "wide": columns with priority 1 are only shown by
//! `kubectl get -o wide`). Kinds without a printer get the generic table
//! (Name, Created At). Custom resources use their additional printer
//! columns, evaluated as simple JSONPath, or Name and Age.

use crate::resource::ResourceInfo;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// One column definition of a Table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
}

/// Column definitions for a resource: built-ins by plural and group,
/// custom resources from their printer columns, the generic table otherwise.
pub fn columns(info: &ResourceInfo) -> Vec<Column> {
    match printer(info) {
        Printer::Custom => {
            let mut cols = vec![Spec("Name", S, 0, D::Name).column()];
            if info.printer_columns.is_empty() {
                cols.push(Column {
                    name: "Age".into(),
                    type_: "date".into(),
                    format: String::new(),
                    description: doc(META, "creationTimestamp"),
                    priority: 0,
                });
            }
            cols.extend(info.printer_columns.iter().map(|c| Column {
                name: c.name.clone(),
                type_: c.type_.clone(),
                format: c.format.clone(),
                description: c.description.clone(),
                priority: c.priority,
            }));
            cols
        }
        p => specs(p).iter().map(Spec::column).collect(),
    }
}

/// The `columnDefinitions` JSON array of a Table.
pub fn column_definitions(info: &ResourceInfo) -> Value {
    Value::Array(
        columns(info)
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

/// One row's cells for an object, in [`columns`] order; `now` is the
/// reference time for ages.
pub fn cells(info: &ResourceInfo, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let o = obj;
    let name = || json!(text(o, &["metadata", "name"]));
    let age = || json!(age(o, now));
    match printer(info) {
        Printer::Pod => pod_cells(o, now),
        Printer::PodTemplate => {
            let (names, images) = containers(o, &["template", "spec", "containers"]);
            vec![
                name(),
                json!(names),
                json!(images),
                json!(format_labels(get(o, &["template", "metadata", "labels"]))),
            ]
        }
        Printer::PodDisruptionBudget => {
            let bound = |f: &str| {
                get(o, &["spec", f])
                    .map(int_or_string)
                    .unwrap_or_else(|| "N/A".into())
            };
            vec![
                name(),
                json!(bound("minAvailable")),
                json!(bound("maxUnavailable")),
                json!(int(o, &["status", "disruptionsAllowed"])),
                age(),
            ]
        }
        Printer::ReplicationController => {
            let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
            vec![
                name(),
                json!(replicas(o)),
                json!(int(o, &["status", "replicas"])),
                json!(int(o, &["status", "readyReplicas"])),
                age(),
                json!(names),
                json!(images),
                json!(format_labels(get(o, &["spec", "selector"]))),
            ]
        }
        Printer::ReplicaSet => {
            let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
            vec![
                name(),
                json!(replicas(o)),
                json!(int(o, &["status", "replicas"])),
                json!(int(o, &["status", "readyReplicas"])),
                age(),
                json!(names),
                json!(images),
                json!(format_label_selector(get(o, &["spec", "selector"]))),
            ]
        }
        Printer::DaemonSet => {
            let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
            let st = |f: &str| json!(int(o, &["status", f]));
            vec![
                name(),
                st("desiredNumberScheduled"),
                st("currentNumberScheduled"),
                st("numberReady"),
                st("updatedNumberScheduled"),
                st("numberAvailable"),
                json!(format_labels(get(
                    o,
                    &["spec", "template", "spec", "nodeSelector"]
                ))),
                age(),
                json!(names),
                json!(images),
                json!(format_label_selector(get(o, &["spec", "selector"]))),
            ]
        }
        Printer::Job => job_cells(o, now),
        Printer::CronJob => {
            let last = match get(o, &["status", "lastScheduleTime"]) {
                Some(t) if !t.is_null() => since(t.as_str(), now),
                _ => "<none>".into(),
            };
            let suspend = match get(o, &["spec", "suspend"]).and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let tmpl = ["spec", "jobTemplate", "spec"];
            let (names, images) = containers(
                o,
                &[tmpl[0], tmpl[1], tmpl[2], "template", "spec", "containers"],
            );
            vec![
                name(),
                json!(text(o, &["spec", "schedule"])),
                json!(opt_text(o, &["spec", "timeZone"]).unwrap_or("<none>")),
                json!(suspend),
                json!(arr(o, &["status", "active"]).len()),
                json!(last),
                age(),
                json!(names),
                json!(images),
                json!(format_label_selector(get(
                    o,
                    &[tmpl[0], tmpl[1], tmpl[2], "selector"]
                ))),
            ]
        }
        Printer::Service => service_cells(o, now),
        Printer::Ingress => {
            let rules = arr(o, &["spec", "rules"]);
            let mut hosts: Vec<&str> = vec![];
            let mut more = false;
            for rule in rules {
                if hosts.len() == 3 {
                    more = true;
                }
                let host = text(rule, &["host"]);
                if !more && !host.is_empty() {
                    hosts.push(host);
                }
            }
            let hosts = match (hosts.is_empty(), more) {
                (true, _) => "*".to_string(),
                (false, true) => format!("{} + {} more...", hosts.join(","), rules.len() - 3),
                (false, false) => hosts.join(","),
            };
            let ports = if arr(o, &["spec", "tls"]).is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name(),
                json!(opt_text(o, &["spec", "ingressClassName"]).unwrap_or("<none>")),
                json!(hosts),
                json!(load_balancer(o)),
                json!(ports),
                age(),
            ]
        }
        Printer::IngressClass => {
            let parameters = match get(o, &["spec", "parameters"]).filter(|p| p.is_object()) {
                Some(p) => {
                    let mut s = text(p, &["kind"]).to_string();
                    if let Some(g) = opt_text(p, &["apiGroup"]) {
                        s = format!("{s}.{g}");
                    }
                    format!("{s}/{}", text(p, &["name"]))
                }
                None => "<none>".into(),
            };
            vec![
                name(),
                json!(text(o, &["spec", "controller"])),
                json!(parameters),
                age(),
            ]
        }
        Printer::StatefulSet => {
            let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
            let ready = format!("{}/{}", int(o, &["status", "readyReplicas"]), replicas(o));
            vec![name(), json!(ready), age(), json!(names), json!(images)]
        }
        Printer::Endpoints => vec![name(), json!(format_endpoints(o)), age()],
        Printer::EndpointSlice => {
            let ports: Vec<String> = arr(o, &["ports"])
                .iter()
                .map(|p| {
                    match (
                        get(p, &["port"]).and_then(Value::as_i64),
                        opt_text(p, &["name"]),
                    ) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(n)) => n.to_string(),
                        (None, None) => "*".to_string(),
                    }
                })
                .collect();
            let addrs: Vec<String> = arr(o, &["endpoints"])
                .iter()
                .flat_map(|e| {
                    arr(e, &["addresses"])
                        .iter()
                        .map(|a| a.as_str().unwrap_or_default().to_string())
                })
                .collect();
            vec![
                name(),
                json!(text(o, &["addressType"])),
                json!(list_with_more(&ports, 3)),
                json!(list_with_more(&addrs, 3)),
                age(),
            ]
        }
        Printer::Node => node_cells(o, now),
        Printer::Event => event_cells(o, info.group == "events.k8s.io", now),
        Printer::Namespace => vec![name(), json!(text(o, &["status", "phase"])), age()],
        Printer::Secret => vec![
            name(),
            json!(text(o, &["type"])),
            json!(len(o, &["data"])),
            age(),
        ],
        Printer::ServiceAccount => vec![name(), json!(arr(o, &["secrets"]).len()), age()],
        Printer::ConfigMap => vec![
            name(),
            json!(len(o, &["data"]) + len(o, &["binaryData"])),
            age(),
        ],
        Printer::PersistentVolume => {
            let claim = match get(o, &["spec", "claimRef"]).filter(|c| c.is_object()) {
                Some(c) => format!("{}/{}", text(c, &["namespace"]), text(c, &["name"])),
                None => String::new(),
            };
            let class = annotation(o, "volume.beta.kubernetes.io/storage-class")
                .unwrap_or_else(|| text(o, &["spec", "storageClassName"]));
            vec![
                name(),
                json!(quantity(get(o, &["spec", "capacity", "storage"]))),
                json!(access_modes(arr(o, &["spec", "accessModes"]))),
                json!(text(o, &["spec", "persistentVolumeReclaimPolicy"])),
                json!(terminating_or(o, text(o, &["status", "phase"]))),
                json!(claim),
                json!(class),
                json!(opt_text(o, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
                json!(text(o, &["status", "reason"])),
                age(),
                json!(opt_text(o, &["spec", "volumeMode"]).unwrap_or("<unset>")),
            ]
        }
        Printer::PersistentVolumeClaim => {
            let bound = !text(o, &["spec", "volumeName"]).is_empty();
            let (capacity, modes) = if bound {
                (
                    quantity(get(o, &["status", "capacity", "storage"])),
                    access_modes(arr(o, &["status", "accessModes"])),
                )
            } else {
                (String::new(), String::new())
            };
            let class = annotation(o, "volume.beta.kubernetes.io/storage-class")
                .unwrap_or_else(|| text(o, &["spec", "storageClassName"]));
            vec![
                name(),
                json!(terminating_or(o, text(o, &["status", "phase"]))),
                json!(text(o, &["spec", "volumeName"])),
                json!(capacity),
                json!(modes),
                json!(class),
                json!(opt_text(o, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
                age(),
                json!(opt_text(o, &["spec", "volumeMode"]).unwrap_or("<unset>")),
            ]
        }
        Printer::Deployment => {
            let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
            let ready = format!("{}/{}", int(o, &["status", "readyReplicas"]), replicas(o));
            let selector = match get(o, &["spec", "selector"]) {
                Some(s) if !s.is_null() => selector_string(s).unwrap_or_else(|| "<invalid>".into()),
                _ => String::new(),
            };
            vec![
                name(),
                json!(ready),
                json!(int(o, &["status", "updatedReplicas"])),
                json!(int(o, &["status", "availableReplicas"])),
                age(),
                json!(names),
                json!(images),
                json!(selector),
            ]
        }
        Printer::HorizontalPodAutoscaler => {
            let reference = format!(
                "{}/{}",
                text(o, &["spec", "scaleTargetRef", "kind"]),
                text(o, &["spec", "scaleTargetRef", "name"])
            );
            let min = get(o, &["spec", "minReplicas"])
                .and_then(Value::as_i64)
                .map_or_else(|| "<unset>".to_string(), |m| m.to_string());
            vec![
                name(),
                json!(reference),
                json!(hpa_targets(o)),
                json!(min),
                json!(int(o, &["spec", "maxReplicas"])),
                json!(int(o, &["status", "currentReplicas"])),
                age(),
            ]
        }
        Printer::NetworkPolicy => {
            // A NetworkPolicy's podSelector is never nil: absent means empty.
            let sel = get(o, &["spec", "podSelector"])
                .filter(|s| !s.is_null())
                .cloned()
                .unwrap_or_else(|| json!({}));
            vec![name(), json!(format_label_selector(Some(&sel))), age()]
        }
        Printer::RoleBinding => {
            let role_ref = format!(
                "{}/{}",
                text(o, &["roleRef", "kind"]),
                text(o, &["roleRef", "name"])
            );
            let (mut users, mut groups, mut sas) = (vec![], vec![], vec![]);
            for s in arr(o, &["subjects"]) {
                let n = text(s, &["name"]).to_string();
                match text(s, &["kind"]) {
                    "ServiceAccount" => sas.push(format!("{}/{n}", text(s, &["namespace"]))),
                    "User" => users.push(n),
                    "Group" => groups.push(n),
                    _ => {}
                }
            }
            vec![
                name(),
                json!(role_ref),
                age(),
                json!(users.join(", ")),
                json!(groups.join(", ")),
                json!(sas.join(", ")),
            ]
        }
        Printer::Lease => vec![name(), json!(text(o, &["spec", "holderIdentity"])), age()],
        Printer::StorageClass => {
            let mut n = text(o, &["metadata", "name"]).to_string();
            let is_default = |k: &str| annotation(o, k) == Some("true");
            if is_default("storageclass.kubernetes.io/is-default-class")
                || is_default("storageclass.beta.kubernetes.io/is-default-class")
            {
                n.push_str(" (default)");
            }
            vec![
                json!(n),
                json!(text(o, &["provisioner"])),
                json!(opt_text(o, &["reclaimPolicy"]).unwrap_or("Delete")),
                json!(opt_text(o, &["volumeBindingMode"]).unwrap_or("Immediate")),
                json!(get(o, &["allowVolumeExpansion"])
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                age(),
            ]
        }
        Printer::ControllerRevision => {
            let owner = arr(o, &["metadata", "ownerReferences"])
                .iter()
                .find(|r| get(r, &["controller"]).and_then(Value::as_bool) == Some(true));
            let controller = match owner {
                Some(r) => {
                    let api_version = text(r, &["apiVersion"]);
                    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
                    let kind = text(r, &["kind"]);
                    let name = text(r, &["name"]);
                    match (group.is_empty(), kind.is_empty()) {
                        (true, true) => name.to_string(),
                        (true, false) => format!("{}/{name}", kind.to_lowercase()),
                        (false, _) => {
                            format!("{}.{}/{name}", kind.to_lowercase(), group.to_lowercase())
                        }
                    }
                }
                None => "<none>".into(),
            };
            vec![
                name(),
                json!(controller),
                json!(int(o, &["revision"])),
                age(),
            ]
        }
        Printer::ResourceQuota => {
            let hard = get(o, &["status", "hard"]).and_then(Value::as_object);
            let mut keys: Vec<&String> = hard.map(|h| h.keys().collect()).unwrap_or_default();
            keys.sort();
            let (mut requests, mut limits) = (vec![], vec![]);
            for k in keys {
                let used = quantity(get(o, &["status", "used", k]));
                let h = quantity(hard.and_then(|h| h.get(k)));
                let entry = format!("{k}: {used}/{h}");
                let mut pieces = k.split('.');
                if pieces.next() == Some("limits") && pieces.next().is_some() {
                    limits.push(entry);
                } else {
                    requests.push(entry);
                }
            }
            vec![
                name(),
                age(),
                json!(requests.join(", ")),
                json!(limits.join(", ")),
            ]
        }
        Printer::PriorityClass => vec![
            name(),
            json!(int(o, &["value"])),
            json!(get(o, &["globalDefault"])
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age(),
            json!(text(o, &["preemptionPolicy"])),
        ],
        Printer::Default => {
            let created = parse_time(opt_text(o, &["metadata", "creationTimestamp"])).map_or_else(
                || "0001-01-01T00:00:00Z".to_string(),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
            vec![name(), json!(created)]
        }
        Printer::Custom => {
            let mut out = vec![name()];
            if info.printer_columns.is_empty() {
                out.push(age());
            }
            for c in &info.printer_columns {
                out.push(custom_cell(o, &c.json_path, &c.type_, now));
            }
            out
        }
    }
}

/// A duration the way `k8s.io/apimachinery/pkg/util/duration.HumanDuration`
/// renders it: `5s`, `3m2s`, `10m`, `2h5m`, `2d3h`, `1y30d`, `<invalid>`.
pub fn human_duration(d: Duration) -> String {
    // Truncates toward zero like Go's int(d.Seconds()).
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

// ---------------------------------------------------------------------------
// Column definitions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Printer {
    Pod,
    PodTemplate,
    PodDisruptionBudget,
    ReplicationController,
    ReplicaSet,
    DaemonSet,
    Job,
    CronJob,
    Service,
    Ingress,
    IngressClass,
    StatefulSet,
    Endpoints,
    EndpointSlice,
    Node,
    Event,
    Namespace,
    Secret,
    ServiceAccount,
    ConfigMap,
    PersistentVolume,
    PersistentVolumeClaim,
    Deployment,
    HorizontalPodAutoscaler,
    NetworkPolicy,
    RoleBinding,
    Lease,
    StorageClass,
    ControllerRevision,
    ResourceQuota,
    PriorityClass,
    /// Generic table: Name, Created At.
    Default,
    /// Custom resource: Name plus printer columns (or Age).
    Custom,
}

fn printer(info: &ResourceInfo) -> Printer {
    use Printer::*;
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => Pod,
        ("", "podtemplates") => PodTemplate,
        ("policy", "poddisruptionbudgets") => PodDisruptionBudget,
        ("", "replicationcontrollers") => ReplicationController,
        ("apps", "replicasets") => ReplicaSet,
        ("apps", "daemonsets") => DaemonSet,
        ("apps", "statefulsets") => StatefulSet,
        ("apps", "deployments") => Deployment,
        ("apps", "controllerrevisions") => ControllerRevision,
        ("batch", "jobs") => Job,
        ("batch", "cronjobs") => CronJob,
        ("", "services") => Service,
        ("networking.k8s.io", "ingresses") => Ingress,
        ("networking.k8s.io", "ingressclasses") => IngressClass,
        ("networking.k8s.io", "networkpolicies") => NetworkPolicy,
        ("", "endpoints") => Endpoints,
        ("discovery.k8s.io", "endpointslices") => EndpointSlice,
        ("", "nodes") => Node,
        ("", "events") | ("events.k8s.io", "events") => Event,
        ("", "namespaces") => Namespace,
        ("", "secrets") => Secret,
        ("", "serviceaccounts") => ServiceAccount,
        ("", "configmaps") => ConfigMap,
        ("", "persistentvolumes") => PersistentVolume,
        ("", "persistentvolumeclaims") => PersistentVolumeClaim,
        ("", "resourcequotas") => ResourceQuota,
        ("autoscaling", "horizontalpodautoscalers") => HorizontalPodAutoscaler,
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => RoleBinding,
        ("coordination.k8s.io", "leases") => Lease,
        ("storage.k8s.io", "storageclasses") => StorageClass,
        ("scheduling.k8s.io", "priorityclasses") => PriorityClass,
        _ if info.definition.is_none() || !info.printer_columns.is_empty() => Custom,
        _ => Default,
    }
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const CORE: &str = "io.k8s.api.core.v1.";
const APPS: &str = "io.k8s.api.apps.v1.";
const BATCH: &str = "io.k8s.api.batch.v1.";

/// Where a column's description comes from.
#[derive(Clone, Copy)]
enum D {
    /// ObjectMeta's `name`; the column also gets format `name`.
    Name,
    /// ObjectMeta's `creationTimestamp`.
    Age,
    /// A field's description in the OpenAPI definitions (prefix + kind, field).
    Doc(&'static str, &'static str, &'static str),
    Text(&'static str),
}

struct Spec(&'static str, &'static str, i64, D);

impl Spec {
    fn column(&self) -> Column {
        let Spec(name, type_, priority, d) = *self;
        let (format, description) = match d {
            D::Name => ("name", doc(META, "name")),
            D::Age => ("", doc(META, "creationTimestamp")),
            D::Doc(prefix, kind, field) => ("", doc(&format!("{prefix}{kind}"), field)),
            D::Text(t) => ("", t.to_string()),
        };
        Column {
            name: name.into(),
            type_: type_.into(),
            format: format.into(),
            description,
            priority,
        }
    }
}

/// The description of one field of an OpenAPI definition, or "".
fn doc(definition: &str, field: &str) -> String {
    crate::schema::definitions()
        .get(definition)
        .and_then(|d| d.get("properties"))
        .and_then(|p| p.get(field))
        .and_then(|f| f.get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

const S: &str = "string";
const I: &str = "integer";
const B: &str = "boolean";
const CONTAINERS: D = D::Text("Names of each container in the template.");
const IMAGES: D = D::Text("Images referenced by each container in the template.");

fn specs(p: Printer) -> &'static [Spec] {
    use D::*;
    match p {
        Printer::Pod => &[
            Spec("Name", S, 0, Name),
            Spec("Ready", S, 0, Text("The aggregate readiness state of this pod for accepting traffic.")),
            Spec("Status", S, 0, Text("The aggregate status of the containers in this pod.")),
            Spec(
                "Restarts",
                S,
                0,
                Text("The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            ),
            Spec("Age", S, 0, Age),
            Spec("IP", S, 1, Doc(CORE, "PodStatus", "podIP")),
            Spec("Node", S, 1, Doc(CORE, "PodSpec", "nodeName")),
            Spec("Nominated Node", S, 1, Doc(CORE, "PodStatus", "nominatedNodeName")),
            Spec("Readiness Gates", S, 1, Doc(CORE, "PodSpec", "readinessGates")),
        ],
        Printer::PodTemplate => &[
            Spec("Name", S, 0, Name),
            Spec("Containers", S, 0, CONTAINERS),
            Spec("Images", S, 0, IMAGES),
            Spec("Pod Labels", S, 0, Text("The labels for the pod template.")),
        ],
        Printer::PodDisruptionBudget => &[
            Spec("Name", S, 0, Name),
            Spec("Min Available", S, 0, Text("The minimum number of pods that must be available.")),
            Spec("Max Unavailable", S, 0, Text("The maximum number of pods that may be unavailable.")),
            Spec("Allowed Disruptions", I, 0, Text("Calculated number of pods that may be disrupted at this time.")),
            Spec("Age", S, 0, Age),
        ],
        Printer::ReplicationController => &[
            Spec("Name", S, 0, Name),
            Spec("Desired", I, 0, Doc(CORE, "ReplicationControllerSpec", "replicas")),
            Spec("Current", I, 0, Doc(CORE, "ReplicationControllerStatus", "replicas")),
            Spec("Ready", I, 0, Doc(CORE, "ReplicationControllerStatus", "readyReplicas")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(CORE, "ReplicationControllerSpec", "selector")),
        ],
        Printer::ReplicaSet => &[
            Spec("Name", S, 0, Name),
            Spec("Desired", I, 0, Doc(APPS, "ReplicaSetSpec", "replicas")),
            Spec("Current", I, 0, Doc(APPS, "ReplicaSetStatus", "replicas")),
            Spec("Ready", I, 0, Doc(APPS, "ReplicaSetStatus", "readyReplicas")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(APPS, "ReplicaSetSpec", "selector")),
        ],
        Printer::DaemonSet => &[
            Spec("Name", S, 0, Name),
            Spec("Desired", I, 0, Doc(APPS, "DaemonSetStatus", "desiredNumberScheduled")),
            Spec("Current", I, 0, Doc(APPS, "DaemonSetStatus", "currentNumberScheduled")),
            Spec("Ready", I, 0, Doc(APPS, "DaemonSetStatus", "numberReady")),
            Spec("Up-to-date", I, 0, Doc(APPS, "DaemonSetStatus", "updatedNumberScheduled")),
            Spec("Available", I, 0, Doc(APPS, "DaemonSetStatus", "numberAvailable")),
            Spec("Node Selector", S, 0, Doc(CORE, "PodSpec", "nodeSelector")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(APPS, "DaemonSetSpec", "selector")),
        ],
        Printer::Job => &[
            Spec("Name", S, 0, Name),
            Spec("Status", S, 0, Text("Status of the job.")),
            Spec("Completions", S, 0, Doc(BATCH, "JobStatus", "succeeded")),
            Spec("Duration", S, 0, Text("Time required to complete the job.")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(BATCH, "JobSpec", "selector")),
        ],
        Printer::CronJob => &[
            Spec("Name", S, 0, Name),
            Spec("Schedule", S, 0, Doc(BATCH, "CronJobSpec", "schedule")),
            Spec("Timezone", S, 0, Doc(BATCH, "CronJobSpec", "timeZone")),
            Spec("Suspend", B, 0, Doc(BATCH, "CronJobSpec", "suspend")),
            Spec("Active", I, 0, Doc(BATCH, "CronJobStatus", "active")),
            Spec("Last Schedule", S, 0, Doc(BATCH, "CronJobStatus", "lastScheduleTime")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(BATCH, "JobSpec", "selector")),
        ],
        Printer::Service => &[
            Spec("Name", S, 0, Name),
            Spec("Type", S, 0, Doc(CORE, "ServiceSpec", "type")),
            Spec("Cluster-IP", S, 0, Doc(CORE, "ServiceSpec", "clusterIP")),
            Spec("External-IP", S, 0, Doc(CORE, "ServiceSpec", "externalIPs")),
            Spec("Port(s)", S, 0, Doc(CORE, "ServiceSpec", "ports")),
            Spec("Age", S, 0, Age),
            Spec("Selector", S, 1, Doc(CORE, "ServiceSpec", "selector")),
        ],
        Printer::Ingress => &[
            Spec("Name", S, 0, Name),
            Spec(
                "Class",
                S,
                0,
                Text("The name of the IngressClass resource that should be used for additional configuration"),
            ),
            Spec("Hosts", S, 0, Text("Hosts that incoming requests are matched against before the ingress rule")),
            Spec("Address", S, 0, Text("Address is a list containing ingress points for the load-balancer")),
            Spec("Ports", S, 0, Text("Ports of TLS configurations that open")),
            Spec("Age", S, 0, Age),
        ],
        Printer::IngressClass => &[
            Spec("Name", S, 0, Name),
            Spec("Controller", S, 0, Text("Controller that is responsible for handling this class")),
            Spec("Parameters", S, 0, Text("A reference to a resource with additional parameters")),
            Spec("Age", S, 0, Age),
        ],
        Printer::StatefulSet => &[
            Spec("Name", S, 0, Name),
            Spec("Ready", S, 0, Text("Number of the pod with ready state")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
        ],
        Printer::Endpoints => &[
            Spec("Name", S, 0, Name),
            Spec("Endpoints", S, 0, Doc(CORE, "Endpoints", "subsets")),
            Spec("Age", S, 0, Age),
        ],
        Printer::EndpointSlice => &[
            Spec("Name", S, 0, Name),
            Spec("AddressType", S, 0, Doc("io.k8s.api.discovery.v1.", "EndpointSlice", "addressType")),
            Spec("Ports", S, 0, Doc("io.k8s.api.discovery.v1.", "EndpointSlice", "ports")),
            Spec("Endpoints", S, 0, Doc("io.k8s.api.discovery.v1.", "EndpointSlice", "endpoints")),
            Spec("Age", S, 0, Age),
        ],
        Printer::Node => &[
            Spec("Name", S, 0, Name),
            Spec("Status", S, 0, Text("The status of the node")),
            Spec("Roles", S, 0, Text("The roles of the node")),
            Spec("Age", S, 0, Age),
            Spec("Version", S, 0, Doc(CORE, "NodeSystemInfo", "kubeletVersion")),
            Spec("Internal-IP", S, 1, Doc(CORE, "NodeStatus", "addresses")),
            Spec("External-IP", S, 1, Doc(CORE, "NodeStatus", "addresses")),
            Spec("OS-Image", S, 1, Doc(CORE, "NodeSystemInfo", "osImage")),
            Spec("Kernel-Version", S, 1, Doc(CORE, "NodeSystemInfo", "kernelVersion")),
            Spec("Container-Runtime", S, 1, Doc(CORE, "NodeSystemInfo", "containerRuntimeVersion")),
        ],
        Printer::Event => &[
            Spec("Last Seen", S, 0, Doc(CORE, "Event", "lastTimestamp")),
            Spec("Type", S, 0, Doc(CORE, "Event", "type")),
            Spec("Reason", S, 0, Doc(CORE, "Event", "reason")),
            Spec("Object", S, 0, Doc(CORE, "Event", "involvedObject")),
            Spec("Subobject", S, 1, Doc(CORE, "ObjectReference", "fieldPath")),
            Spec("Source", S, 1, Doc(CORE, "Event", "source")),
            Spec("Message", S, 0, Doc(CORE, "Event", "message")),
            Spec("First Seen", S, 1, Doc(CORE, "Event", "firstTimestamp")),
            Spec("Count", S, 1, Doc(CORE, "Event", "count")),
            Spec("Name", S, 1, Name),
        ],
        Printer::Namespace => &[
            Spec("Name", S, 0, Name),
            Spec("Status", S, 0, Text("The status of the namespace")),
            Spec("Age", S, 0, Age),
        ],
        Printer::Secret => &[
            Spec("Name", S, 0, Name),
            Spec("Type", S, 0, Doc(CORE, "Secret", "type")),
            Spec("Data", S, 0, Doc(CORE, "Secret", "data")),
            Spec("Age", S, 0, Age),
        ],
        Printer::ServiceAccount => &[
            Spec("Name", S, 0, Name),
            Spec("Secrets", S, 0, Doc(CORE, "ServiceAccount", "secrets")),
            Spec("Age", S, 0, Age),
        ],
        Printer::ConfigMap => &[
            Spec("Name", S, 0, Name),
            Spec("Data", S, 0, Doc(CORE, "ConfigMap", "data")),
            Spec("Age", S, 0, Age),
        ],
        Printer::PersistentVolume => &[
            Spec("Name", S, 0, Name),
            Spec("Capacity", S, 0, Doc(CORE, "PersistentVolumeSpec", "capacity")),
            Spec("Access Modes", S, 0, Doc(CORE, "PersistentVolumeSpec", "accessModes")),
            Spec("Reclaim Policy", S, 0, Doc(CORE, "PersistentVolumeSpec", "persistentVolumeReclaimPolicy")),
            Spec("Status", S, 0, Doc(CORE, "PersistentVolumeStatus", "phase")),
            Spec("Claim", S, 0, Doc(CORE, "PersistentVolumeSpec", "claimRef")),
            Spec("StorageClass", S, 0, Text("StorageClass of the pv")),
            Spec("VolumeAttributesClass", S, 0, Text("VolumeAttributesClass of the pv")),
            Spec("Reason", S, 0, Doc(CORE, "PersistentVolumeStatus", "reason")),
            Spec("Age", S, 0, Age),
            Spec("VolumeMode", S, 1, Doc(CORE, "PersistentVolumeSpec", "volumeMode")),
        ],
        Printer::PersistentVolumeClaim => &[
            Spec("Name", S, 0, Name),
            Spec("Status", S, 0, Doc(CORE, "PersistentVolumeClaimStatus", "phase")),
            Spec("Volume", S, 0, Doc(CORE, "PersistentVolumeClaimSpec", "volumeName")),
            Spec("Capacity", S, 0, Doc(CORE, "PersistentVolumeClaimStatus", "capacity")),
            Spec("Access Modes", S, 0, Doc(CORE, "PersistentVolumeClaimStatus", "accessModes")),
            Spec("StorageClass", S, 0, Text("StorageClass of the pvc")),
            Spec("VolumeAttributesClass", S, 0, Text("VolumeAttributesClass of the pvc")),
            Spec("Age", S, 0, Age),
            Spec("VolumeMode", S, 1, Doc(CORE, "PersistentVolumeClaimSpec", "volumeMode")),
        ],
        Printer::Deployment => &[
            Spec("Name", S, 0, Name),
            Spec("Ready", S, 0, Text("Number of the pod with ready state")),
            Spec("Up-to-date", S, 0, Doc(APPS, "DeploymentStatus", "updatedReplicas")),
            Spec("Available", S, 0, Doc(APPS, "DeploymentStatus", "availableReplicas")),
            Spec("Age", S, 0, Age),
            Spec("Containers", S, 1, CONTAINERS),
            Spec("Images", S, 1, IMAGES),
            Spec("Selector", S, 1, Doc(APPS, "DeploymentSpec", "selector")),
        ],
        Printer::HorizontalPodAutoscaler => &[
            Spec("Name", S, 0, Name),
            Spec(
                "Reference",
                S,
                0,
                Doc("io.k8s.api.autoscaling.v2.", "HorizontalPodAutoscalerSpec", "scaleTargetRef"),
            ),
            Spec("Targets", S, 0, Doc("io.k8s.api.autoscaling.v2.", "HorizontalPodAutoscalerSpec", "metrics")),
            Spec("MinPods", S, 0, Doc("io.k8s.api.autoscaling.v2.", "HorizontalPodAutoscalerSpec", "minReplicas")),
            Spec("MaxPods", S, 0, Doc("io.k8s.api.autoscaling.v2.", "HorizontalPodAutoscalerSpec", "maxReplicas")),
            Spec(
                "Replicas",
                S,
                0,
                Doc("io.k8s.api.autoscaling.v2.", "HorizontalPodAutoscalerStatus", "currentReplicas"),
            ),
            Spec("Age", S, 0, Age),
        ],
        Printer::NetworkPolicy => &[
            Spec("Name", S, 0, Name),
            Spec("Pod-Selector", S, 0, Doc("io.k8s.api.networking.v1.", "NetworkPolicySpec", "podSelector")),
            Spec("Age", S, 0, Age),
        ],
        Printer::RoleBinding => &[
            Spec("Name", S, 0, Name),
            Spec("Role", S, 0, Doc("io.k8s.api.rbac.v1.", "RoleBinding", "roleRef")),
            Spec("Age", S, 0, Age),
            Spec("Users", S, 1, Text("Users in the roleBinding")),
            Spec("Groups", S, 1, Text("Groups in the roleBinding")),
            Spec("ServiceAccounts", S, 1, Text("ServiceAccounts in the roleBinding")),
        ],
        Printer::Lease => &[
            Spec("Name", S, 0, Name),
            Spec("Holder", S, 0, Doc("io.k8s.api.coordination.v1.", "LeaseSpec", "holderIdentity")),
            Spec("Age", S, 0, Age),
        ],
        Printer::StorageClass => &[
            Spec("Name", S, 0, Name),
            Spec("Provisioner", S, 0, Doc("io.k8s.api.storage.v1.", "StorageClass", "provisioner")),
            Spec("ReclaimPolicy", S, 0, Doc("io.k8s.api.storage.v1.", "StorageClass", "reclaimPolicy")),
            Spec("VolumeBindingMode", S, 0, Doc("io.k8s.api.storage.v1.", "StorageClass", "volumeBindingMode")),
            Spec(
                "AllowVolumeExpansion",
                S,
                0,
                Doc("io.k8s.api.storage.v1.", "StorageClass", "allowVolumeExpansion"),
            ),
            Spec("Age", S, 0, Age),
        ],
        Printer::ControllerRevision => &[
            Spec("Name", S, 0, Name),
            Spec("Controller", S, 0, Text("Controller of the object")),
            Spec("Revision", S, 0, Doc(APPS, "ControllerRevision", "revision")),
            Spec("Age", S, 0, Age),
        ],
        Printer::ResourceQuota => &[
            Spec("Name", S, 0, Name),
            Spec("Age", S, 0, Age),
            Spec(
                "Request",
                S,
                0,
                Text("Request represents a minimum amount of cpu/memory that a container may consume."),
            ),
            Spec(
                "Limit",
                S,
                0,
                Text("Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
            ),
        ],
        Printer::PriorityClass => &[
            Spec("Name", S, 0, Name),
            Spec("Value", I, 0, Doc("io.k8s.api.scheduling.v1.", "PriorityClass", "value")),
            Spec("Global-Default", B, 0, Doc("io.k8s.api.scheduling.v1.", "PriorityClass", "globalDefault")),
            Spec("Age", S, 0, Age),
            Spec("PreemptionPolicy", S, 0, Doc("io.k8s.api.scheduling.v1.", "PriorityClass", "preemptionPolicy")),
        ],
        Printer::Default | Printer::Custom => &[Spec("Name", S, 0, Name), Spec("Created At", "date", 0, Age)],
    }
}

// ---------------------------------------------------------------------------
// Object access

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}

/// A string field, or "" when absent.
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or_default()
}

/// A string field that is present (as a string).
fn opt_text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path)
        .and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
        .unwrap_or(0)
}

fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Number of entries of a map field.
fn len(v: &Value, path: &[&str]) -> usize {
    get(v, path).and_then(Value::as_object).map_or(0, Map::len)
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    get(o, &["metadata", "annotations", key]).and_then(Value::as_str)
}

/// `spec.replicas`, which API defaulting sets to 1.
fn replicas(o: &Value) -> i64 {
    get(o, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `translateTimestampSince`: a human age, or `<unknown>` for no timestamp.
fn since(ts: Option<&str>, now: DateTime<Utc>) -> String {
    match parse_time(ts.filter(|s| !s.is_empty())) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn age(o: &Value, now: DateTime<Utc>) -> String {
    since(opt_text(o, &["metadata", "creationTimestamp"]), now)
}

/// PVs and PVCs being deleted show Terminating.
fn terminating_or<'a>(o: &Value, phase: &'a str) -> &'a str {
    match get(o, &["metadata", "deletionTimestamp"]) {
        Some(t) if !t.is_null() => "Terminating",
        _ => phase,
    }
}

/// A resource.Quantity as text (kept in the form it was written).
fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".into(),
    }
}

fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Container names and images, comma-separated.
fn containers(o: &Value, path: &[&str]) -> (String, String) {
    let cs = arr(o, path);
    let names: Vec<&str> = cs.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| text(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

/// `labels.FormatLabels`: sorted `k=v` pairs, or `<none>`.
fn format_labels(m: Option<&Value>) -> String {
    let Some(m) = m.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".into();
    };
    let mut pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// `metav1.FormatLabelSelector`: the selector string, `<none>` when empty.
fn format_label_selector(sel: Option<&Value>) -> String {
    match sel.filter(|s| !s.is_null()) {
        None => "<none>".into(),
        Some(s) => match selector_string(s) {
            None => "<error>".into(),
            Some(s) if s.is_empty() => "<none>".into(),
            Some(s) => s,
        },
    }
}

/// `LabelSelectorAsSelector(sel).String()`: requirements sorted by key,
/// set values sorted. `None` for an invalid operator.
fn selector_string(sel: &Value) -> Option<String> {
    let mut reqs: Vec<(String, String)> = vec![];
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = text(e, &["key"]).to_string();
        let mut values: Vec<&str> = arr(e, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        values.dedup();
        let s = match text(e, &["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key, s));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(
        reqs.into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Joins at most `max` items, with ` + N more...`, `<unset>` when empty.
fn list_with_more(items: &[String], max: usize) -> String {
    if items.len() > max {
        return format!("{} + {} more...", items[..max].join(","), items.len() - max);
    }
    if items.is_empty() {
        return "<unset>".into();
    }
    items.join(",")
}

/// `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, s)| *s)
    .collect::<Vec<_>>()
    .join(",")
}

/// Load-balancer ingress points (IP, else hostname), sorted and unique.
fn load_balancer(o: &Value) -> String {
    let set: BTreeSet<&str> = arr(o, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            let ip = text(i, &["ip"]);
            let host = text(i, &["hostname"]);
            if !ip.is_empty() {
                Some(ip)
            } else if !host.is_empty() {
                Some(host)
            } else {
                None
            }
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------
// Per-kind cells

fn pod_cells(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let status = get(o, &["status"]).unwrap_or(&Value::Null);
    let phase = text(status, &["phase"]);
    let mut reason = match text(status, &["reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    let conditions = arr(status, &["conditions"]);
    if conditions
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let condition_true = |t: &str| {
        conditions
            .iter()
            .find(|c| text(c, &["type"]) == t)
            .is_some_and(|c| text(c, &["status"]) == "True")
    };

    let init_specs = arr(o, &["spec", "initContainers"]);
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, &["name"]) == name && text(c, &["restartPolicy"]) == "Always")
    };
    let mut total = arr(o, &["spec", "containers"]).len();
    total += init_specs
        .iter()
        .filter(|c| text(c, &["restartPolicy"]) == "Always")
        .count();

    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last_restart: Option<DateTime<Utc>> = None;
    let last_terminated =
        |c: &Value| parse_time(opt_text(c, &["lastState", "terminated", "finishedAt"]));
    let later = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };

    let init_statuses = arr(status, &["initContainerStatuses"]);
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        let count = int(c, &["restartCount"]);
        restarts += count;
        last_restart = later(last_restart, last_terminated(c));
        let is_sidecar = restartable(text(c, &["name"]));
        if is_sidecar {
            sidecar_restarts += count;
            sidecar_last_restart = later(sidecar_last_restart, last_terminated(c));
        }
        let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
        let waiting_reason = text(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if is_sidecar && get(c, &["started"]).and_then(Value::as_bool) == Some(true) {
            if get(c, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(t) = terminated {
            match text(t, &["reason"]) {
                "" if int(t, &["signal"]) != 0 => format!("Init:Signal:{}", int(t, &["signal"])),
                "" => format!("Init:ExitCode:{}", int(t, &["exitCode"])),
                r => format!("Init:{r}"),
            }
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true("Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in arr(status, &["containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            last_restart = later(last_restart, last_terminated(c));
            let waiting_reason = text(c, &["state", "waiting", "reason"]);
            let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match text(t, &["reason"]) {
                    "" if int(t, &["signal"]) != 0 => format!("Signal:{}", int(t, &["signal"])),
                    "" => format!("ExitCode:{}", int(t, &["exitCode"])),
                    r => r.to_string(),
                };
            } else if get(c, &["ready"]).and_then(Value::as_bool) == Some(true)
                && get(c, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true("Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = get(o, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null());
    if deleting && text(status, &["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };

    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let ip = arr(status, &["podIPs"])
        .first()
        .map(|p| text(p, &["ip"]))
        .unwrap_or_default();
    let gates = arr(o, &["spec", "readinessGates"]);
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| {
                let t = text(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| text(c, &["type"]) == t)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(text(o, &["metadata", "name"])),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        json!(age(o, now)),
        json!(or_none(ip)),
        json!(or_none(text(o, &["spec", "nodeName"]))),
        json!(or_none(text(status, &["nominatedNodeName"]))),
        json!(gates_cell),
    ]
}

fn job_cells(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let succeeded = int(o, &["status", "succeeded"]);
    let completions = match get(o, &["spec", "completions"]).and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(o, &["spec", "parallelism"]) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_time(opt_text(o, &["status", "startTime"]));
    let done = parse_time(opt_text(o, &["status", "completionTime"]));
    let duration = match (start, done) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now - s),
        (Some(s), Some(d)) => human_duration(d - s),
    };
    let conditions = arr(o, &["status", "conditions"]);
    let has = |t: &str| {
        conditions
            .iter()
            .find(|c| text(c, &["type"]) == t)
            .is_some_and(|c| text(c, &["status"]) == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if get(o, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null()) {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (names, images) = containers(o, &["spec", "template", "spec", "containers"]);
    vec![
        json!(text(o, &["metadata", "name"])),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(o, &["spec", "selector"]))),
    ]
}

fn service_cells(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let svc_type = text(o, &["spec", "type"]);
    let cluster_ip = arr(o, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| opt_text(o, &["spec", "clusterIP"]).filter(|s| !s.is_empty()))
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = arr(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" if !external_ips.is_empty() => external_ips.join(","),
        "ClusterIP" | "NodePort" => "<none>".into(),
        "LoadBalancer" => {
            let lb = load_balancer(o);
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = if lb.is_empty() {
                    vec![]
                } else {
                    lb.split(',').collect()
                };
                all.extend(external_ips);
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".into()
            }
        }
        "ExternalName" => text(o, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let protocol = opt_text(p, &["protocol"]).unwrap_or("TCP");
            match int(p, &["nodePort"]) {
                n if n > 0 => format!("{port}:{n}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(text(o, &["metadata", "name"])),
        json!(svc_type),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        json!(age(o, now)),
        json!(format_labels(get(o, &["spec", "selector"]))),
    ]
}

/// `formatEndpoints`: up to three `ip:port` entries and a `+ N more...` tail.
fn format_endpoints(o: &Value) -> String {
    let subsets = arr(o, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let max = 3;
    let mut list: Vec<String> = vec![];
    let mut count = 0;
    let mut add = |s: String, list: &mut Vec<String>| {
        if list.len() < max {
            list.push(s);
        }
        count += 1;
    };
    for ss in subsets {
        let addrs = arr(ss, &["addresses"]);
        let ports = arr(ss, &["ports"]);
        if ports.is_empty() {
            for a in addrs {
                add(text(a, &["ip"]).to_string(), &mut list);
            }
        } else {
            for p in ports {
                let port = int(p, &["port"]);
                for a in addrs {
                    let ip = text(a, &["ip"]);
                    let hp = if ip.contains(':') {
                        format!("[{ip}]:{port}")
                    } else {
                        format!("{ip}:{port}")
                    };
                    add(hp, &mut list);
                }
            }
        }
    }
    let ret = list.join(",");
    if count > max {
        format!("{ret} + {} more...", count - max)
    } else {
        ret
    }
}

fn node_cells(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status: Vec<String> = vec![];
    if let Some(c) = arr(o, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| text(c, &["type"]) == "Ready")
    {
        status.push(if text(c, &["status"]) == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if get(o, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = get(o, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };
    let address = |t: &str| {
        arr(o, &["status", "addresses"])
            .iter()
            .find(|a| text(a, &["type"]) == t)
            .map_or("<none>", |a| text(a, &["address"]))
            .to_string()
    };
    let info = |f: &str| match text(o, &["status", "nodeInfo", f]) {
        "" => "<unknown>".to_string(),
        s => s.to_string(),
    };
    vec![
        json!(text(o, &["metadata", "name"])),
        json!(status.join(",")),
        json!(roles),
        json!(age(o, now)),
        json!(text(o, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// Core/v1 and events.k8s.io/v1 events share one printer; the latter's
/// fields carry other names.
fn event_cells(o: &Value, new_api: bool, now: DateTime<Utc>) -> Vec<Value> {
    let f = |core: &'static str, events: &'static str| if new_api { events } else { core };
    let ts = |k: &str| opt_text(o, &[k]).filter(|s| !s.is_empty());
    let first = match ts(f("firstTimestamp", "deprecatedFirstTimestamp")) {
        Some(t) => since(Some(t), now),
        None => since(ts("eventTime"), now),
    };
    let mut last = match ts(f("lastTimestamp", "deprecatedLastTimestamp")) {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int(o, &[f("count", "deprecatedCount")]);
    match get(o, &["series"]).filter(|s| s.is_object()) {
        Some(series) => {
            last = since(opt_text(series, &["lastObservedTime"]), now);
            count = int(series, &["count"]);
        }
        None if count == 0 => count = 1,
        None => {}
    }
    let involved = get(o, &[f("involvedObject", "regarding")]).unwrap_or(&Value::Null);
    let kind = text(involved, &["kind"]).to_lowercase();
    let target = match text(involved, &["name"]) {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let source = get(o, &[f("source", "deprecatedSource")]).unwrap_or(&Value::Null);
    let component = match text(source, &["component"]) {
        "" => text(o, &[f("reportingComponent", "reportingController")]),
        c => c,
    };
    let instance = match text(source, &["host"]) {
        "" => text(o, &["reportingInstance"]),
        h => h,
    };
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(text(o, &["type"])),
        json!(text(o, &["reason"])),
        json!(target),
        json!(text(involved, &["fieldPath"])),
        json!(source),
        json!(text(o, &[f("message", "note")]).trim()),
        json!(first),
        json!(count),
        json!(text(o, &["metadata", "name"])),
    ]
}

/// The TARGETS cell: `cpu: 20%/50%`, at most two metrics then `+ N more...`.
/// Takes autoscaling/v2 objects and, without `spec.metrics`, the v1 shape.
fn hpa_targets(o: &Value) -> String {
    let specs = arr(o, &["spec", "metrics"]);
    if specs.is_empty() {
        return match get(o, &["spec", "targetCPUUtilizationPercentage"]).and_then(Value::as_i64) {
            Some(target) => {
                let current = get(o, &["status", "currentCPUUtilizationPercentage"])
                    .and_then(Value::as_i64)
                    .map_or_else(|| "<unknown>".to_string(), |c| format!("{c}%"));
                format!("cpu: {current}/{target}%")
            }
            None => "<none>".into(),
        };
    }
    let statuses = arr(o, &["status", "currentMetrics"]);
    // A quantity pointer printed by Go: `<nil>` when unset.
    let q = |v: Option<&Value>| match v {
        Some(v) if !v.is_null() => quantity(Some(v)),
        _ => "<nil>".to_string(),
    };
    let unknown = || "<unknown>".to_string();
    let mut list: Vec<String> = vec![];
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        let st = |src: &str| status.and_then(|s| s.get(src)).filter(|s| s.is_object());
        let typ = text(spec, &["type"]);
        let entry = match typ {
            "External" | "Object" => {
                let src = if typ == "External" {
                    "external"
                } else {
                    "object"
                };
                let target = get(spec, &[src, "target"]).unwrap_or(&Value::Null);
                match get(target, &["averageValue"]).filter(|v| !v.is_null()) {
                    Some(avg) => {
                        let current = st(src)
                            .and_then(|s| get(s, &["current", "averageValue"]))
                            .filter(|v| !v.is_null())
                            .map_or_else(unknown, |v| quantity(Some(v)));
                        format!("{current}/{} (avg)", quantity(Some(avg)))
                    }
                    None => {
                        let current =
                            st(src).map_or_else(unknown, |s| q(get(s, &["current", "value"])));
                        format!("{current}/{}", q(get(target, &["value"])))
                    }
                }
            }
            "Pods" => {
                let current =
                    st("pods").map_or_else(unknown, |s| q(get(s, &["current", "averageValue"])));
                format!(
                    "{current}/{}",
                    q(get(spec, &["pods", "target", "averageValue"]))
                )
            }
            "Resource" | "ContainerResource" => {
                let src = if typ == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let name = text(spec, &[src, "name"]);
                let target = get(spec, &[src, "target"]).unwrap_or(&Value::Null);
                match get(target, &["averageValue"]).filter(|v| !v.is_null()) {
                    Some(avg) => {
                        let current = st(src)
                            .map_or_else(unknown, |s| q(get(s, &["current", "averageValue"])));
                        format!("{name}: {current}/{}", quantity(Some(avg)))
                    }
                    None => {
                        let current = st(src)
                            .and_then(|s| get(s, &["current", "averageUtilization"]))
                            .and_then(Value::as_i64)
                            .map_or_else(unknown, |u| format!("{u}%"));
                        let target = get(target, &["averageUtilization"])
                            .and_then(Value::as_i64)
                            .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                        format!("{name}: {current}/{target}")
                    }
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    let max = 2;
    if list.len() > max {
        let more = list.len() - max;
        return format!("{} + {more} more...", list[..max].join(", "));
    }
    list.join(", ")
}

// ---------------------------------------------------------------------------
// Custom resource columns

/// One additional printer column's cell, typed as upstream's CRD table
/// convertor does; `null` when the path finds nothing.
fn custom_cell(o: &Value, path: &str, type_: &str, now: DateTime<Utc>) -> Value {
    let Some(steps) = parse_jsonpath(path) else {
        return Value::Null;
    };
    let Some(v) = eval_jsonpath(o, &steps).into_iter().next() else {
        return Value::Null;
    };
    match (type_, v) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Array(_) | Value::Object(_)) => json!(v.to_string()),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map_or_else(|| json!(n.as_f64().unwrap_or(0.0) as i64), |i| json!(i)),
        ("number", Value::Number(n)) => json!(n),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => match parse_time(Some(s)) {
            Some(t) => json!(human_duration(now - t)),
            None => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    /// `[?(@.a.b)]` or `[?(@.a.b == literal)]` (also `!=`).
    Filter(Vec<String>, Option<(bool, Value)>),
}

/// Parses the JSONPath subset printer columns use: `.a.b`, `[0]`, `[*]`,
/// `['key']`, and `[?(@.type=="Ready")]` filters. Braces and `$` are optional.
fn parse_jsonpath(p: &str) -> Option<Vec<Step>> {
    let mut p = p.trim();
    if let Some(inner) = p.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        p = inner.trim();
    }
    p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut steps = vec![];
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let close = find_bracket_end(&chars, i)?;
                let inner: String = chars[i + 1..close].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = close + 1;
            }
            _ => {
                // A path without a leading dot (`status.phase`).
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    name.push(chars[i]);
                    i += 1;
                }
                steps.push(Step::Field(name));
            }
        }
    }
    Some(steps)
}

/// The index of the `]` closing the bracket opened at `start`, skipping quotes.
fn find_bracket_end(chars: &[char], start: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for (j, &c) in chars.iter().enumerate().skip(start) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Step::Index(n));
    }
    if let Some(q) = unquote(inner) {
        return Some(Step::Field(q));
    }
    let expr = inner
        .strip_prefix('?')?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .trim();
    let (lhs, cmp) = match (expr.find("=="), expr.find("!=")) {
        (Some(i), _) => (&expr[..i], Some((true, &expr[i + 2..]))),
        (None, Some(i)) => (&expr[..i], Some((false, &expr[i + 2..]))),
        _ => (expr, None),
    };
    let path = lhs.trim().strip_prefix('@')?;
    let fields: Vec<String> = path
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let cmp = cmp.map(|(eq, lit)| {
        let lit = lit.trim();
        let v = match unquote(lit) {
            Some(s) => Value::String(s),
            None => serde_json::from_str(lit).unwrap_or_else(|_| Value::String(lit.to_string())),
        };
        (eq, v)
    });
    Some(Step::Filter(fields, cmp))
}

fn unquote(s: &str) -> Option<String> {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return Some(inner.to_string());
        }
    }
    None
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn eval_jsonpath<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut cur = vec![root];
    for step in steps {
        let mut next = vec![];
        for v in cur {
            match step {
                Step::Field(name) => {
                    if let Some(x) = v.get(name.as_str()) {
                        next.push(x);
                    }
                }
                Step::Index(n) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x);
                        }
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(path, cmp) => {
                    for item in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                        let field = path.iter().try_fold(item, |c, k| c.get(k.as_str()));
                        let keep = match (field, cmp) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(f), Some((eq, lit))) => values_equal(f, lit) == *eq,
                        };
                        if keep {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{builtins, PrinterColumn, Scope};

    fn info(group: &str, plural: &str) -> ResourceInfo {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            .unwrap()
    }

    fn now() -> DateTime<Utc> {
        parse_time(Some("2024-05-01T12:00:00Z")).unwrap()
    }

    fn names(info: &ResourceInfo) -> Vec<(String, i64)> {
        columns(info)
            .into_iter()
            .map(|c| (c.name, c.priority))
            .collect()
    }

    fn shown(info: &ResourceInfo) -> Vec<String> {
        columns(info)
            .into_iter()
            .filter(|c| c.priority == 0)
            .map(|c| c.name.to_uppercase())
            .collect()
    }

    #[test]
    fn human_duration_cases() {
        let s = Duration::seconds;
        assert_eq!(human_duration(s(-5)), "<invalid>");
        assert_eq!(human_duration(Duration::milliseconds(-1500)), "0s");
        assert_eq!(human_duration(s(0)), "0s");
        assert_eq!(human_duration(s(5)), "5s");
        assert_eq!(human_duration(s(119)), "119s");
        assert_eq!(human_duration(s(120)), "2m");
        assert_eq!(human_duration(s(182)), "3m2s");
        assert_eq!(human_duration(s(600)), "10m");
        assert_eq!(human_duration(s(179 * 60 + 59)), "179m");
        assert_eq!(human_duration(s(3 * 3600)), "3h");
        assert_eq!(human_duration(s(3 * 3600 + 5 * 60)), "3h5m");
        assert_eq!(human_duration(s(8 * 3600 + 5 * 60)), "8h");
        assert_eq!(human_duration(s(47 * 3600)), "47h");
        assert_eq!(human_duration(s(51 * 3600)), "2d3h");
        assert_eq!(human_duration(s(72 * 3600)), "3d");
        assert_eq!(human_duration(s(10 * 86400 + 3600)), "10d");
        assert_eq!(human_duration(s(730 * 86400)), "2y");
        assert_eq!(human_duration(s(760 * 86400)), "2y30d");
        assert_eq!(human_duration(s(9 * 365 * 86400)), "9y");
    }

    #[test]
    fn every_builtin_has_cells_matching_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2024-05-01T11:00:00Z"}});
        for r in builtins() {
            let cols = columns(&r);
            let row = cells(&r, &obj, now());
            assert_eq!(cols.len(), row.len(), "{}", r.plural);
            assert_eq!(column_definitions(&r).as_array().unwrap().len(), cols.len());
            let name_idx = cols.iter().position(|c| c.format == "name").unwrap();
            assert_eq!(row[name_idx], json!("x"), "{}", r.plural);
        }
    }

    #[test]
    fn column_sets() {
        assert_eq!(
            shown(&info("", "pods")),
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        );
        assert_eq!(
            names(&info("", "pods"))[5..]
                .iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>(),
            ["IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(
            shown(&info("", "services")),
            [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE"
            ]
        );
        assert_eq!(
            shown(&info("", "events")),
            ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        );
        assert_eq!(
            shown(&info("events.k8s.io", "events")),
            shown(&info("", "events"))
        );
        assert_eq!(
            shown(&info("", "nodes")),
            ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        );
        assert_eq!(
            shown(&info("apps", "deployments")),
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        );
        assert_eq!(
            shown(&info("apps", "replicasets")),
            ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
        );
        assert_eq!(
            shown(&info("apps", "daemonsets")),
            [
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE"
            ]
        );
        assert_eq!(
            shown(&info("batch", "jobs")),
            ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
        );
        assert_eq!(
            shown(&info("batch", "cronjobs")),
            [
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE"
            ]
        );
        assert_eq!(
            shown(&info("autoscaling", "horizontalpodautoscalers")),
            [
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE"
            ]
        );
        assert_eq!(shown(&info("", "limitranges")), ["NAME", "CREATED AT"]);
        assert_eq!(
            shown(&info("rbac.authorization.k8s.io", "clusterroles")),
            ["NAME", "CREATED AT"]
        );
        assert_eq!(
            shown(&info("apiextensions.k8s.io", "customresourcedefinitions")),
            ["NAME", "CREATED AT"]
        );
        assert_eq!(
            shown(&info("storage.k8s.io", "storageclasses")),
            [
                "NAME",
                "PROVISIONER",
                "RECLAIMPOLICY",
                "VOLUMEBINDINGMODE",
                "ALLOWVOLUMEEXPANSION",
                "AGE"
            ]
        );
        let name = &columns(&info("", "pods"))[0];
        assert_eq!(
            (name.type_.as_str(), name.format.as_str()),
            ("string", "name")
        );
        assert!(
            name.description
                .starts_with("Name must be unique within a namespace."),
            "{}",
            name.description
        );
        let created = &columns(&info("", "limitranges"))[1];
        assert_eq!(created.type_, "date");
        assert!(created
            .description
            .starts_with("CreationTimestamp is a timestamp"));
        let defs = column_definitions(&info("", "services"));
        assert_eq!(defs[6]["name"], "Selector");
        assert_eq!(defs[6]["priority"], 1);
        assert_eq!(defs[6]["format"], "");
        assert!(!defs[1]["description"].as_str().unwrap().is_empty());
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": status,
        })
    }

    fn pod_row(o: &Value) -> Vec<Value> {
        cells(&info("", "pods"), o, now())
    }

    #[test]
    fn pod_running_and_restarts() {
        let running = |restarts: i64| {
            json!({
                "ready": true, "restartCount": restarts, "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:55:00Z"}}
            })
        };
        let o = pod(json!({
            "phase": "Running",
            "podIPs": [{"ip": "10.0.0.5"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [running(2), running(3)]
        }));
        let row = pod_row(&o);
        assert_eq!(
            row[..5],
            [
                json!("web"),
                json!("2/2"),
                json!("Running"),
                json!("5 (5m ago)"),
                json!("5m")
            ]
        );
        assert_eq!(
            row[5..],
            [
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );

        let o = pod(json!({"phase": "Pending"}));
        assert_eq!(
            pod_row(&o)[1..4],
            [json!("0/2"), json!("Pending"), json!("0")]
        );
    }

    #[test]
    fn pod_waiting_reasons_and_completed() {
        let o = pod(json!({
            "phase": "Running",
            "containerStatuses": [
                {"ready": true, "restartCount": 0, "state": {"running": {}}},
                {"ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]
        }));
        assert_eq!(
            pod_row(&o)[1..4],
            [json!("1/2"), json!("CrashLoopBackOff"), json!("4")]
        );

        let o = pod(json!({
            "phase": "Succeeded",
            "containerStatuses": [{"ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
        }));
        assert_eq!(pod_row(&o)[2], json!("Completed"));

        let o = pod(json!({
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "signal": 0}}}]
        }));
        assert_eq!(pod_row(&o)[2], json!("ExitCode:137"));
    }

    #[test]
    fn pod_init_and_terminating() {
        let mut o = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "state": {"running": {}}}
            ],
            "containerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}]
        }));
        o["spec"]["initContainers"] = json!([{"name": "i1"}, {"name": "i2"}, {"name": "i3"}]);
        assert_eq!(pod_row(&o)[2], json!("Init:1/3"));

        o["status"]["initContainerStatuses"][1]["state"] =
            json!({"waiting": {"reason": "ImagePullBackOff"}});
        assert_eq!(pod_row(&o)[2], json!("Init:ImagePullBackOff"));

        o["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 2}});
        assert_eq!(pod_row(&o)[2], json!("Init:ExitCode:2"));

        let mut o = pod(json!({"phase": "Running"}));
        o["metadata"]["deletionTimestamp"] = json!("2024-05-01T12:00:00Z");
        assert_eq!(pod_row(&o)[2], json!("Terminating"));
        o["status"]["phase"] = json!("Succeeded");
        assert_eq!(pod_row(&o)[2], json!("Succeeded"));
    }

    #[test]
    fn pod_sidecar_counts_as_container() {
        let mut o = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "state": {"running": {}}}],
            "containerStatuses": [
                {"ready": true, "state": {"running": {}}},
                {"ready": true, "state": {"running": {}}}
            ]
        }));
        o["spec"]["initContainers"] = json!([{"name": "proxy", "restartPolicy": "Always"}]);
        assert_eq!(pod_row(&o)[1..3], [json!("3/3"), json!("Running")]);
    }

    #[test]
    fn service_ports_and_external_ips() {
        let svc = |spec: Value, status: Value| {
            let o = json!({"metadata": {"name": "s"}, "spec": spec, "status": status});
            cells(&info("", "services"), &o, now())
        };
        let row = svc(
            json!({"type": "ClusterIP", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "protocol": "TCP"}],
                   "selector": {"b": "2", "a": "1"}}),
            json!({}),
        );
        assert_eq!(
            row[1..5],
            [
                json!("ClusterIP"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80/TCP")
            ]
        );
        assert_eq!(row[5], json!("<unknown>"));
        assert_eq!(row[6], json!("a=1,b=2"));

        let row = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.11",
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}),
            json!({}),
        );
        assert_eq!(
            row[2..5],
            [
                json!("10.96.0.11"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP")
            ]
        );
        assert_eq!(row[6], json!("<none>"));

        let row = svc(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.0.0.1"], "ports": []}),
            json!({}),
        );
        assert_eq!(row[3..5], [json!("<pending>"), json!("<none>")]);
        let row = svc(
            json!({"type": "LoadBalancer", "externalIPs": ["5.6.7.8"]}),
            json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "lb.example"}]}}),
        );
        assert_eq!(row[3], json!("1.2.3.4,lb.example,5.6.7.8"));
        let row = svc(
            json!({"type": "ExternalName", "externalName": "db.example"}),
            json!({}),
        );
        assert_eq!(row[3], json!("db.example"));
    }

    #[test]
    fn deployment_columns() {
        let o = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-04-29T09:00:00Z"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}, {"name": "side", "image": "busybox"}]}}
            },
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let row = cells(&info("apps", "deployments"), &o, now());
        assert_eq!(
            row,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("2d3h"),
                json!("nginx,side"),
                json!("nginx:1.25,busybox"),
                json!("app=web,env in (dev,prod)"),
            ]
        );
        let o = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        assert_eq!(
            cells(&info("apps", "deployments"), &o, now())[1],
            json!("0/1")
        );
    }

    #[test]
    fn workloads_and_misc() {
        let rs = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {}}, "status": {"replicas": 2, "readyReplicas": 1}});
        let row = cells(&info("apps", "replicasets"), &rs, now());
        assert_eq!(row[1..4], [json!(2), json!(2), json!(1)]);
        assert_eq!(row[7], json!("<none>"));

        let job = json!({
            "metadata": {"name": "j"},
            "spec": {"completions": 3},
            "status": {"succeeded": 3, "startTime": "2024-05-01T11:00:00Z", "completionTime": "2024-05-01T11:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}
        });
        assert_eq!(
            cells(&info("batch", "jobs"), &job, now())[1..4],
            [json!("Complete"), json!("3/3"), json!("42s")]
        );
        let job = json!({"metadata": {"name": "j"}, "spec": {"parallelism": 2}, "status": {"startTime": "2024-05-01T11:59:00Z"}});
        assert_eq!(
            cells(&info("batch", "jobs"), &job, now())[1..4],
            [json!("Running"), json!("0/1 of 2"), json!("60s")]
        );

        let cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false},
                        "status": {"active": [{}], "lastScheduleTime": "2024-05-01T11:58:00Z"}});
        assert_eq!(
            cells(&info("batch", "cronjobs"), &cj, now())[1..6],
            [
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("2m")
            ]
        );

        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.31.0"},
                       "addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
        });
        let row = cells(&info("", "nodes"), &node, now());
        assert_eq!(
            row[1..3],
            [
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,worker")
            ]
        );
        assert_eq!(
            row[4..7],
            [json!("v1.31.0"), json!("192.168.0.2"), json!("<none>")]
        );
        assert_eq!(row[7], json!("<unknown>"));

        let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::3"}, {"ip": "10.0.0.4"}],
                        "ports": [{"port": 8080}]}]});
        assert_eq!(
            cells(&info("", "endpoints"), &ep, now())[1],
            json!("10.0.0.1:8080,10.0.0.2:8080,[fd00::3]:8080 + 1 more...")
        );
        let ep = json!({"metadata": {"name": "e"}});
        assert_eq!(
            cells(&info("", "endpoints"), &ep, now())[1],
            json!("<none>")
        );

        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        assert_eq!(cells(&info("", "configmaps"), &cm, now())[1], json!(3));

        let rb = json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
                        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "namespace": "ns", "name": "sa"},
                                     {"kind": "User", "name": "bob"}]});
        let row = cells(
            &info("rbac.authorization.k8s.io", "clusterrolebindings"),
            &rb,
            now(),
        );
        assert_eq!(row[1], json!("ClusterRole/view"));
        assert_eq!(row[3..], [json!("alice, bob"), json!(""), json!("ns/sa")]);

        let cr = json!({"metadata": {"name": "ds-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "controller": true}]}, "revision": 4});
        assert_eq!(
            cells(&info("apps", "controllerrevisions"), &cr, now())[1..3],
            [json!("daemonset.apps/ds"), json!(4)]
        );

        let lr =
            json!({"metadata": {"name": "l", "creationTimestamp": "2024-05-01T11:00:00+00:00"}});
        assert_eq!(
            cells(&info("", "limitranges"), &lr, now()),
            vec![json!("l"), json!("2024-05-01T11:00:00Z")]
        );

        let q = json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"},
                       "used": {"pods": "3", "requests.cpu": "500m"}}});
        assert_eq!(
            cells(&info("", "resourcequotas"), &q, now())[2..],
            [
                json!("pods: 3/10, requests.cpu: 500m/1"),
                json!("limits.cpu: 0/2")
            ]
        );
    }

    #[test]
    fn events_both_apis() {
        let core = json!({
            "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{a}"},
            "type": "Normal", "reason": "Pulled", "message": " pulled \n",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:59:00Z", "count": 3
        });
        let row = cells(&info("", "events"), &core, now());
        assert_eq!(
            row,
            vec![
                json!("60s"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web"),
                json!("spec.containers{a}"),
                json!("kubelet, n1"),
                json!("pulled"),
                json!("10m"),
                json!(3),
                json!("web.1"),
            ]
        );
        let new = json!({
            "metadata": {"name": "web.2"},
            "regarding": {"kind": "Deployment", "name": "web"},
            "type": "Warning", "reason": "Failed", "note": "boom",
            "reportingController": "ctrl", "eventTime": "2024-05-01T11:58:00.000000Z"
        });
        let row = cells(&info("events.k8s.io", "events"), &new, now());
        assert_eq!(
            row[..4],
            [
                json!("2m"),
                json!("Warning"),
                json!("Failed"),
                json!("deployment/web")
            ]
        );
        assert_eq!(
            row[5..9],
            [json!("ctrl"), json!("boom"), json!("2m"), json!(1)]
        );
    }

    #[test]
    fn hpa_targets_v1_and_v2() {
        let v2 = json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 20}}}]}
        });
        let hpa = info("autoscaling", "horizontalpodautoscalers");
        assert_eq!(
            cells(&hpa, &v2, now())[1..6],
            [
                json!("Deployment/web"),
                json!("cpu: 20%/50%"),
                json!("1"),
                json!(5),
                json!(2)
            ]
        );
        let mut unknown = v2.clone();
        unknown["status"] = json!({});
        assert_eq!(cells(&hpa, &unknown, now())[2], json!("cpu: <unknown>/50%"));
        let mut many = v2.clone();
        let m = json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}});
        many["spec"]["metrics"] = json!([v2["spec"]["metrics"][0], m, m]);
        assert_eq!(
            cells(&hpa, &many, now())[2],
            json!("cpu: 20%/50%, memory: <unknown>/100Mi + 1 more...")
        );
        let v1 = json!({"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3,
                        "targetCPUUtilizationPercentage": 80}, "status": {"currentCPUUtilizationPercentage": 12}});
        assert_eq!(
            cells(&hpa, &v1, now())[2..4],
            [json!("cpu: 12%/80%"), json!("<unset>")]
        );
        let none = json!({"metadata": {"name": "h"}, "spec": {}});
        assert_eq!(cells(&hpa, &none, now())[2], json!("<none>"));
    }

    #[test]
    fn storage_class_default_marker() {
        let sc = json!({
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"
        });
        let row = cells(&info("storage.k8s.io", "storageclasses"), &sc, now());
        assert_eq!(
            row[..5],
            [
                json!("standard (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
        let plain =
            json!({"metadata": {"name": "fast"}, "provisioner": "p", "allowVolumeExpansion": true});
        let row = cells(&info("storage.k8s.io", "storageclasses"), &plain, now());
        assert_eq!(
            row[..5],
            [
                json!("fast"),
                json!("p"),
                json!("Delete"),
                json!("Immediate"),
                json!(true)
            ]
        );
    }

    #[test]
    fn volumes() {
        let pv = json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": "ns", "name": "c"}, "storageClassName": "sc"},
                        "status": {"phase": "Bound"}});
        let row = cells(&info("", "persistentvolumes"), &pv, now());
        assert_eq!(
            row[1..9],
            [
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("Retain"),
                json!("Bound"),
                json!("ns/c"),
                json!("sc"),
                json!("<unset>"),
                json!("")
            ]
        );
        let pvc = json!({"metadata": {"name": "c"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}});
        let row = cells(&info("", "persistentvolumeclaims"), &pvc, now());
        assert_eq!(
            row[1..6],
            [json!("Pending"), json!(""), json!(""), json!(""), json!("")]
        );
    }

    fn custom(columns: Vec<PrinterColumn>) -> ResourceInfo {
        ResourceInfo {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            scope: Scope::Namespaced,
            short_names: vec![],
            categories: vec![],
            subresources: vec![],
            stored: true,
            storage: "example.com/widgets".into(),
            definition: None,
            scale: None,
            crd_schema: None,
            printer_columns: columns,
            preserve_unknown: false,
            schema_fn: None,
        }
    }

    fn pc(name: &str, type_: &str, path: &str, priority: i64) -> PrinterColumn {
        PrinterColumn {
            name: name.into(),
            type_: type_.into(),
            format: String::new(),
            description: String::new(),
            priority,
            json_path: path.into(),
        }
    }

    #[test]
    fn custom_resource_columns() {
        let r = custom(vec![
            pc(
                "Ready",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].status",
                0,
            ),
            pc("Replicas", "integer", ".spec.replicas", 0),
            pc("Image", "string", ".spec.containers[0].image", 1),
            pc("Ports", "string", ".spec.ports", 1),
            pc("Enabled", "boolean", ".spec.enabled", 0),
            pc("Missing", "string", ".spec.nothing", 0),
            pc("Age", "date", ".metadata.creationTimestamp", 0),
        ]);
        let o = json!({
            "metadata": {"name": "w", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"replicas": 3, "containers": [{"image": "nginx"}], "ports": [80, 443], "enabled": true},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}
        });
        assert_eq!(
            cells(&r, &o, now()),
            vec![
                json!("w"),
                json!("True"),
                json!(3),
                json!("nginx"),
                json!("[80,443]"),
                json!(true),
                Value::Null,
                json!("60m"),
            ]
        );
        let cols = columns(&r);
        assert_eq!(cols[0].format, "name");
        assert_eq!(cols.len(), 8);
        assert_eq!(cols[3].priority, 1);

        let bare = custom(vec![]);
        let cols = columns(&bare);
        assert_eq!(
            cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["Name", "Age"]
        );
        assert_eq!(cells(&bare, &o, now()), vec![json!("w"), json!("60m")]);
    }

    #[test]
    fn jsonpath_forms() {
        let o = json!({"a": {"b.c": [{"k": 1, "v": "one"}, {"k": 2, "v": "two"}]}});
        let first = |p: &str| {
            eval_jsonpath(&o, &parse_jsonpath(p).unwrap())
                .into_iter()
                .next()
                .cloned()
        };
        assert_eq!(first("{.a['b.c'][1].v}"), Some(json!("two")));
        assert_eq!(first(".a.b\\.c[-1].k"), Some(json!(2)));
        assert_eq!(first("$.a['b.c'][?(@.k == 1)].v"), Some(json!("one")));
        assert_eq!(first(".a['b.c'][?(@.v!='one')].k"), Some(json!(2)));
        assert_eq!(first(".a['b.c'][*].v"), Some(json!("one")));
        assert_eq!(first(".a.nope"), None);
    }
}
