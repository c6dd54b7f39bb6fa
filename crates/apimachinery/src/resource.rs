//! Which resources the API serves: group, version, kind, plural name, scope,
//! short names, categories and subresources. Built-in kinds come from the
//! typed model (k8s-openapi); custom resources are added at runtime.

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v1 as autoscaling1, autoscaling::v2 as autoscaling2,
    batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl GroupVersionKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Where the scale subresource reads and writes, as JSON paths like
/// `.spec.replicas` (the CRD convention, also used for built-ins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One additional printer column of a custom resource.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served resource (a group/version/plural triple).
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub scope: Scope,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<String>,
    /// False for create-only review kinds that are never stored.
    pub stored: bool,
    /// Storage identity: versions of one resource share it (`autoscaling/horizontalpodautoscalers`).
    pub storage: String,
    /// OpenAPI definition name of the kind (`io.k8s.api.core.v1.Pod`), for built-ins.
    pub definition: Option<String>,
    pub scale: Option<ScalePaths>,
    /// For custom resources: the version's openAPIV3Schema.
    pub crd_schema: Option<Value>,
    pub printer_columns: Vec<PrinterColumn>,
    /// For custom resources: preserve unknown fields at the root (no schema pruning).
    pub preserve_unknown: bool,
    /// Adds the kind's schema (and everything it references) to a generator.
    pub schema_fn: Option<SchemaFn>,
}

/// Registers a built-in kind's OpenAPI schema with a generator.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

impl ResourceInfo {
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
        }
    }
    pub fn api_version(&self) -> String {
        self.gvk().api_version()
    }
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn has_subresource(&self, s: &str) -> bool {
        self.subresources.iter().any(|x| x == s)
    }
    /// The verbs discovery advertises.
    pub fn verbs(&self) -> Vec<&'static str> {
        if !self.stored {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
    /// The cluster-wide list path: `/api/v1/pods`, `/apis/apps/v1/deployments`.
    pub fn list_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }
    /// Storage key prefix for this resource, ending in `/`.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.storage)
    }
    /// Storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => format!("/registry/{}/{ns}/{name}", self.storage),
            _ => format!("/registry/{}/{name}", self.storage),
        }
    }
    /// Group-qualified plural used in messages (`deployments.apps`).
    pub fn qualified(&self) -> String {
        crate::status::qualified(&self.plural, &self.group)
    }
}

trait Describe {
    fn info(
        plural_override: Option<&str>,
        short: &[&str],
        cats: &[&str],
        subs: &[&str],
    ) -> ResourceInfo;
}

impl<T> Describe for T
where
    T: k8s_openapi::Resource + schemars::JsonSchema,
{
    fn info(
        plural_override: Option<&str>,
        short: &[&str],
        cats: &[&str],
        subs: &[&str],
    ) -> ResourceInfo {
        let plural = plural_override.unwrap_or(T::URL_PATH_SEGMENT).to_string();
        let scope = if std::any::type_name::<T::Scope>().ends_with("NamespaceResourceScope") {
            Scope::Namespaced
        } else {
            Scope::Cluster
        };
        let storage_group = if T::GROUP.is_empty() {
            "core"
        } else {
            T::GROUP
        };
        ResourceInfo {
            group: T::GROUP.to_string(),
            version: T::VERSION.to_string(),
            kind: T::KIND.to_string(),
            singular: T::KIND.to_lowercase(),
            plural: plural.clone(),
            scope,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: cats.iter().map(|s| s.to_string()).collect(),
            subresources: subs.iter().map(|s| s.to_string()).collect(),
            stored: true,
            storage: format!("{storage_group}/{plural}"),
            definition: Some(T::schema_name().into_owned()),
            scale: None,
            crd_schema: None,
            printer_columns: vec![],
            preserve_unknown: false,
            schema_fn: Some(|g| g.subschema_for::<T>()),
        }
    }
}

fn replicas_scale(selector: bool) -> Option<ScalePaths> {
    Some(ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: selector.then(|| ".status.selector".into()),
    })
}

fn with_storage(mut r: ResourceInfo, storage: &str) -> ResourceInfo {
    r.storage = storage.to_string();
    r
}

fn create_only(mut r: ResourceInfo) -> ResourceInfo {
    r.stored = false;
    r
}

fn with_scale(mut r: ResourceInfo) -> ResourceInfo {
    r.scale = replicas_scale(true);
    r
}

/// The built-in resource served as `group/version/plural`.
pub fn builtin(group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
    builtins()
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Every built-in resource, in discovery order.
pub fn builtins() -> Vec<ResourceInfo> {
    use k8s_openapi::api::authentication::v1 as authn;
    use k8s_openapi::api::authorization::v1 as authz;
    let all = &["all"];
    vec![
        // core/v1
        core::Namespace::info(None, &["ns"], &[], &["status", "finalize"]),
        core::Pod::info(
            None,
            &["po"],
            all,
            &[
                "status",
                "log",
                "exec",
                "attach",
                "portforward",
                "eviction",
                "binding",
                "ephemeralcontainers",
                "proxy",
            ],
        ),
        core::Service::info(None, &["svc"], all, &["status", "proxy"]),
        core::Endpoints::info(None, &["ep"], &[], &[]),
        core::ConfigMap::info(None, &["cm"], &[], &[]),
        core::Secret::info(None, &[], &[], &[]),
        core::ServiceAccount::info(None, &["sa"], &[], &["token"]),
        core::Event::info(None, &["ev"], &[], &[]),
        core::Node::info(None, &["no"], &[], &["status", "proxy"]),
        core::PersistentVolume::info(None, &["pv"], &[], &["status"]),
        core::PersistentVolumeClaim::info(None, &["pvc"], &[], &["status"]),
        core::LimitRange::info(None, &["limits"], &[], &[]),
        core::ResourceQuota::info(None, &["quota"], &[], &["status"]),
        core::PodTemplate::info(None, &[], &[], &[]),
        with_scale(core::ReplicationController::info(
            None,
            &["rc"],
            all,
            &["status", "scale"],
        )),
        create_only(core::Binding::info(None, &[], &[], &[])),
        // apps/v1
        with_scale(apps::Deployment::info(
            None,
            &["deploy"],
            all,
            &["status", "scale"],
        )),
        with_scale(apps::ReplicaSet::info(
            None,
            &["rs"],
            all,
            &["status", "scale"],
        )),
        apps::DaemonSet::info(None, &["ds"], all, &["status"]),
        with_scale(apps::StatefulSet::info(
            None,
            &["sts"],
            all,
            &["status", "scale"],
        )),
        apps::ControllerRevision::info(None, &[], &[], &[]),
        // batch/v1
        batch::Job::info(None, &[], all, &["status"]),
        batch::CronJob::info(None, &["cj"], all, &["status"]),
        // autoscaling: v2 is the storage version, v1 is converted.
        autoscaling2::HorizontalPodAutoscaler::info(None, &["hpa"], all, &["status"]),
        autoscaling1::HorizontalPodAutoscaler::info(None, &["hpa"], all, &["status"]),
        // networking.k8s.io/v1
        networking::Ingress::info(None, &["ing"], &[], &["status"]),
        networking::IngressClass::info(None, &[], &[], &[]),
        networking::NetworkPolicy::info(None, &["netpol"], &[], &[]),
        // policy/v1
        policy::PodDisruptionBudget::info(None, &["pdb"], &[], &["status"]),
        // coordination.k8s.io/v1
        coordination::Lease::info(None, &[], &[], &[]),
        // discovery.k8s.io/v1
        discovery::EndpointSlice::info(None, &[], &[], &[]),
        // events.k8s.io/v1 shares storage with core events.
        with_storage(events::Event::info(None, &["ev"], &[], &[]), "core/events"),
        // rbac.authorization.k8s.io/v1
        rbac::Role::info(None, &[], &[], &[]),
        rbac::RoleBinding::info(None, &[], &[], &[]),
        rbac::ClusterRole::info(None, &[], &[], &[]),
        rbac::ClusterRoleBinding::info(None, &[], &[], &[]),
        // storage.k8s.io/v1
        storage::StorageClass::info(None, &["sc"], &[], &[]),
        // scheduling.k8s.io/v1
        scheduling::PriorityClass::info(None, &["pc"], &[], &[]),
        // apiextensions.k8s.io/v1
        apiextensions::CustomResourceDefinition::info(None, &["crd", "crds"], &[], &["status"]),
        // review kinds: created, answered, never stored.
        create_only(authz::SelfSubjectAccessReview::info(None, &[], &[], &[])),
        create_only(authz::SelfSubjectRulesReview::info(None, &[], &[], &[])),
        create_only(authz::SubjectAccessReview::info(None, &[], &[], &[])),
        create_only(authz::LocalSubjectAccessReview::info(None, &[], &[], &[])),
        create_only(authn::SelfSubjectReview::info(None, &[], &[], &[])),
        create_only(authn::TokenReview::info(None, &[], &[], &[])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_expected_shape() {
        let all = builtins();
        let pods = all.iter().find(|r| r.plural == "pods").unwrap();
        assert!(pods.namespaced());
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(pods.definition.as_deref(), Some("io.k8s.api.core.v1.Pod"));
        let nodes = all.iter().find(|r| r.plural == "nodes").unwrap();
        assert!(!nodes.namespaced());
        let hpas: Vec<_> = all
            .iter()
            .filter(|r| r.plural == "horizontalpodautoscalers")
            .collect();
        assert_eq!(hpas.len(), 2);
        assert_eq!(hpas[0].storage, hpas[1].storage);
        let deploy = all.iter().find(|r| r.plural == "deployments").unwrap();
        assert_eq!(deploy.qualified(), "deployments.apps");
        assert_eq!(deploy.list_path(), "/apis/apps/v1/deployments");
        assert_eq!(pods.list_path(), "/api/v1/pods");
        let slices = builtin("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(
            slices.key_prefix(),
            "/registry/discovery.k8s.io/endpointslices/"
        );
        assert!(builtin("apps", "v1", "pods").is_none());
    }
}
