//! Patch strategy metadata of built-in types: what upstream declares with
//! `patchStrategy`, `patchMergeKey`, `listType` and `listMapKeys` struct
//! tags. The typed model lacks it; [`crate::schema`] adds it to the
//! OpenAPI definitions, where strategic merge and apply read it.
//!
//! The table follows the struct tags of the upstream API types (core/v1,
//! apps/v1, batch/v1, networking/v1, rbac/v1, policy/v1, autoscaling/v2,
//! discovery/v1, storage/v1, meta/v1 and apiextensions/v1) for the fields
//! that exist in the typed model. Lists absent from it are atomic for
//! apply and replaced by strategic merge, as upstream treats untagged lists.

/// Metadata of one property of one definition.
pub struct PatchMeta {
    pub definition: &'static str,
    pub field: &'static str,
    pub strategy: Option<&'static str>,
    pub merge_key: Option<&'static str>,
    pub list_type: Option<&'static str>,
    pub list_map_keys: &'static [&'static str],
}

const fn meta(
    definition: &'static str,
    field: &'static str,
    strategy: Option<&'static str>,
    merge_key: Option<&'static str>,
    list_type: Option<&'static str>,
    list_map_keys: &'static [&'static str],
) -> PatchMeta {
    PatchMeta {
        definition,
        field,
        strategy,
        merge_key,
        list_type,
        list_map_keys,
    }
}

/// `patchStrategy=merge`, `patchMergeKey=keys[0]`, `listType=map` keyed by `keys`.
const fn keyed(
    definition: &'static str,
    field: &'static str,
    keys: &'static [&'static str],
) -> PatchMeta {
    meta(
        definition,
        field,
        Some("merge"),
        Some(keys[0]),
        Some("map"),
        keys,
    )
}

/// As [`keyed`], with `patchStrategy=merge,retainKeys`.
const fn keyed_retain(
    definition: &'static str,
    field: &'static str,
    keys: &'static [&'static str],
) -> PatchMeta {
    meta(
        definition,
        field,
        Some("merge,retainKeys"),
        Some(keys[0]),
        Some("map"),
        keys,
    )
}

/// `listType=map` without a patch strategy (strategic merge replaces it).
const fn list_map(
    definition: &'static str,
    field: &'static str,
    keys: &'static [&'static str],
) -> PatchMeta {
    meta(definition, field, None, None, Some("map"), keys)
}

const fn atomic(definition: &'static str, field: &'static str) -> PatchMeta {
    meta(definition, field, None, None, Some("atomic"), &[])
}

const fn set(definition: &'static str, field: &'static str) -> PatchMeta {
    meta(definition, field, None, None, Some("set"), &[])
}

/// A set of scalars that strategic merge unions (`patchStrategy=merge`).
const fn merge_set(definition: &'static str, field: &'static str) -> PatchMeta {
    meta(definition, field, Some("merge"), None, Some("set"), &[])
}

const fn retain_keys(definition: &'static str, field: &'static str) -> PatchMeta {
    meta(definition, field, Some("retainKeys"), None, None, &[])
}

const fn replace(definition: &'static str, field: &'static str) -> PatchMeta {
    meta(definition, field, Some("replace"), None, None, &[])
}

pub static ENTRIES: &[PatchMeta] = &[
    // meta/v1
    keyed(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        &["uid"],
    ),
    merge_set(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
    ),
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "managedFields",
    ),
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
        "matchExpressions",
    ),
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement",
        "values",
    ),
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.StatusDetails",
        "causes",
    ),
    // apiextensions/v1
    atomic(
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionSpec",
        "versions",
    ),
    list_map(
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        "conditions",
        &["type"],
    ),
    atomic(
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        "storedVersions",
    ),
    atomic("io.k8s.api.core.v1.PersistentVolumeSpec", "accessModes"),
    atomic("io.k8s.api.core.v1.PersistentVolumeSpec", "mountOptions"),
    atomic(
        "io.k8s.api.core.v1.PersistentVolumeClaimSpec",
        "accessModes",
    ),
    atomic(
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "accessModes",
    ),
    keyed(
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        &["type"],
    ),
    atomic("io.k8s.api.core.v1.RBDVolumeSource", "monitors"),
    atomic("io.k8s.api.core.v1.RBDPersistentVolumeSource", "monitors"),
    atomic("io.k8s.api.core.v1.CephFSVolumeSource", "monitors"),
    atomic(
        "io.k8s.api.core.v1.CephFSPersistentVolumeSource",
        "monitors",
    ),
    atomic("io.k8s.api.core.v1.SecretVolumeSource", "items"),
    atomic("io.k8s.api.core.v1.SecretProjection", "items"),
    atomic("io.k8s.api.core.v1.ISCSIVolumeSource", "portals"),
    atomic("io.k8s.api.core.v1.ISCSIPersistentVolumeSource", "portals"),
    atomic("io.k8s.api.core.v1.FCVolumeSource", "targetWWNs"),
    atomic("io.k8s.api.core.v1.FCVolumeSource", "wwids"),
    atomic("io.k8s.api.core.v1.ConfigMapVolumeSource", "items"),
    atomic("io.k8s.api.core.v1.ConfigMapProjection", "items"),
    atomic("io.k8s.api.core.v1.ProjectedVolumeSource", "sources"),
    atomic("io.k8s.api.core.v1.HTTPGetAction", "httpHeaders"),
    atomic("io.k8s.api.core.v1.ExecAction", "command"),
    atomic("io.k8s.api.core.v1.Capabilities", "add"),
    atomic("io.k8s.api.core.v1.Capabilities", "drop"),
    list_map(
        "io.k8s.api.core.v1.ResourceRequirements",
        "claims",
        &["name"],
    ),
    atomic("io.k8s.api.core.v1.Container", "command"),
    atomic("io.k8s.api.core.v1.Container", "args"),
    keyed(
        "io.k8s.api.core.v1.Container",
        "ports",
        &["containerPort", "protocol"],
    ),
    atomic("io.k8s.api.core.v1.Container", "envFrom"),
    keyed("io.k8s.api.core.v1.Container", "env", &["name"]),
    atomic("io.k8s.api.core.v1.Container", "resizePolicy"),
    keyed(
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        &["mountPath"],
    ),
    keyed(
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        &["devicePath"],
    ),
    keyed(
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        &["mountPath"],
    ),
    keyed(
        "io.k8s.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        &["name"],
    ),
    list_map(
        "io.k8s.api.core.v1.ResourceStatus",
        "resources",
        &["resourceID"],
    ),
    atomic(
        "io.k8s.api.core.v1.LinuxContainerUser",
        "supplementalGroups",
    ),
    atomic("io.k8s.api.core.v1.NodeSelector", "nodeSelectorTerms"),
    atomic("io.k8s.api.core.v1.NodeSelectorTerm", "matchExpressions"),
    atomic("io.k8s.api.core.v1.NodeSelectorTerm", "matchFields"),
    atomic("io.k8s.api.core.v1.NodeSelectorRequirement", "values"),
    atomic(
        "io.k8s.api.core.v1.TopologySelectorTerm",
        "matchLabelExpressions",
    ),
    atomic(
        "io.k8s.api.core.v1.TopologySelectorLabelRequirement",
        "values",
    ),
    atomic(
        "io.k8s.api.core.v1.PodAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ),
    atomic(
        "io.k8s.api.core.v1.PodAffinity",
        "preferredDuringSchedulingIgnoredDuringExecution",
    ),
    atomic(
        "io.k8s.api.core.v1.PodAntiAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ),
    atomic(
        "io.k8s.api.core.v1.PodAntiAffinity",
        "preferredDuringSchedulingIgnoredDuringExecution",
    ),
    atomic("io.k8s.api.core.v1.PodAffinityTerm", "namespaces"),
    atomic("io.k8s.api.core.v1.PodAffinityTerm", "matchLabelKeys"),
    atomic("io.k8s.api.core.v1.PodAffinityTerm", "mismatchLabelKeys"),
    atomic(
        "io.k8s.api.core.v1.NodeAffinity",
        "preferredDuringSchedulingIgnoredDuringExecution",
    ),
    keyed_retain("io.k8s.api.core.v1.PodSpec", "volumes", &["name"]),
    keyed("io.k8s.api.core.v1.PodSpec", "initContainers", &["name"]),
    keyed("io.k8s.api.core.v1.PodSpec", "containers", &["name"]),
    keyed(
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        &["name"],
    ),
    keyed("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", &["name"]),
    atomic("io.k8s.api.core.v1.PodSpec", "tolerations"),
    keyed("io.k8s.api.core.v1.PodSpec", "hostAliases", &["ip"]),
    atomic("io.k8s.api.core.v1.PodSpec", "readinessGates"),
    keyed(
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        &["topologyKey", "whenUnsatisfiable"],
    ),
    keyed("io.k8s.api.core.v1.PodSpec", "schedulingGates", &["name"]),
    keyed_retain("io.k8s.api.core.v1.PodSpec", "resourceClaims", &["name"]),
    atomic(
        "io.k8s.api.core.v1.TopologySpreadConstraint",
        "matchLabelKeys",
    ),
    atomic("io.k8s.api.core.v1.HostAlias", "hostnames"),
    atomic(
        "io.k8s.api.core.v1.PodSecurityContext",
        "supplementalGroups",
    ),
    atomic("io.k8s.api.core.v1.PodSecurityContext", "sysctls"),
    atomic("io.k8s.api.core.v1.PodDNSConfig", "nameservers"),
    atomic("io.k8s.api.core.v1.PodDNSConfig", "searches"),
    atomic("io.k8s.api.core.v1.PodDNSConfig", "options"),
    atomic("io.k8s.api.core.v1.EphemeralContainer", "command"),
    atomic("io.k8s.api.core.v1.EphemeralContainer", "args"),
    keyed(
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        &["containerPort", "protocol"],
    ),
    atomic("io.k8s.api.core.v1.EphemeralContainer", "envFrom"),
    keyed("io.k8s.api.core.v1.EphemeralContainer", "env", &["name"]),
    atomic("io.k8s.api.core.v1.EphemeralContainer", "resizePolicy"),
    keyed(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        &["mountPath"],
    ),
    keyed(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        &["devicePath"],
    ),
    keyed("io.k8s.api.core.v1.PodStatus", "conditions", &["type"]),
    meta(
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Some("merge"),
        Some("ip"),
        Some("atomic"),
        &[],
    ),
    keyed("io.k8s.api.core.v1.PodStatus", "podIPs", &["ip"]),
    atomic("io.k8s.api.core.v1.PodStatus", "initContainerStatuses"),
    atomic("io.k8s.api.core.v1.PodStatus", "containerStatuses"),
    atomic("io.k8s.api.core.v1.PodStatus", "ephemeralContainerStatuses"),
    keyed_retain(
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        &["name"],
    ),
    keyed(
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        &["type"],
    ),
    keyed("io.k8s.api.core.v1.ServiceStatus", "conditions", &["type"]),
    atomic("io.k8s.api.core.v1.LoadBalancerStatus", "ingress"),
    atomic("io.k8s.api.core.v1.LoadBalancerIngress", "ports"),
    keyed(
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        &["port", "protocol"],
    ),
    atomic("io.k8s.api.core.v1.ServiceSpec", "clusterIPs"),
    atomic("io.k8s.api.core.v1.ServiceSpec", "externalIPs"),
    atomic("io.k8s.api.core.v1.ServiceSpec", "loadBalancerSourceRanges"),
    atomic("io.k8s.api.core.v1.ServiceSpec", "ipFamilies"),
    keyed("io.k8s.api.core.v1.ServiceAccount", "secrets", &["name"]),
    atomic("io.k8s.api.core.v1.ServiceAccount", "imagePullSecrets"),
    atomic("io.k8s.api.core.v1.Endpoints", "subsets"),
    atomic("io.k8s.api.core.v1.EndpointSubset", "addresses"),
    atomic("io.k8s.api.core.v1.EndpointSubset", "notReadyAddresses"),
    atomic("io.k8s.api.core.v1.EndpointSubset", "ports"),
    merge_set("io.k8s.api.core.v1.NodeSpec", "podCIDRs"),
    atomic("io.k8s.api.core.v1.NodeSpec", "taints"),
    keyed("io.k8s.api.core.v1.NodeStatus", "conditions", &["type"]),
    keyed("io.k8s.api.core.v1.NodeStatus", "addresses", &["type"]),
    atomic("io.k8s.api.core.v1.NodeStatus", "images"),
    atomic("io.k8s.api.core.v1.NodeStatus", "volumesInUse"),
    atomic("io.k8s.api.core.v1.NodeStatus", "volumesAttached"),
    atomic("io.k8s.api.core.v1.NodeStatus", "runtimeHandlers"),
    atomic("io.k8s.api.core.v1.ContainerImage", "names"),
    atomic("io.k8s.api.core.v1.NamespaceSpec", "finalizers"),
    keyed(
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        &["type"],
    ),
    atomic("io.k8s.api.core.v1.LimitRangeSpec", "limits"),
    atomic("io.k8s.api.core.v1.ResourceQuotaSpec", "scopes"),
    atomic("io.k8s.api.core.v1.ScopeSelector", "matchExpressions"),
    atomic(
        "io.k8s.api.core.v1.ScopedResourceSelectorRequirement",
        "values",
    ),
    keyed(
        "io.k8s.api.core.v1.ComponentStatus",
        "conditions",
        &["type"],
    ),
    atomic("io.k8s.api.core.v1.DownwardAPIVolumeSource", "items"),
    atomic("io.k8s.api.core.v1.DownwardAPIProjection", "items"),
    atomic("io.k8s.api.apps.v1.StatefulSetSpec", "volumeClaimTemplates"),
    keyed(
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        &["type"],
    ),
    retain_keys("io.k8s.api.apps.v1.DeploymentSpec", "strategy"),
    keyed(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        &["type"],
    ),
    keyed(
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        &["type"],
    ),
    keyed(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        &["type"],
    ),
    atomic(
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerSpec",
        "metrics",
    ),
    atomic("io.k8s.api.autoscaling.v2.HPAScalingRules", "policies"),
    atomic(
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "currentMetrics",
    ),
    keyed(
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "conditions",
        &["type"],
    ),
    set(
        "io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement",
        "values",
    ),
    atomic(
        "io.k8s.api.batch.v1.PodFailurePolicyRule",
        "onPodConditions",
    ),
    atomic("io.k8s.api.batch.v1.PodFailurePolicy", "rules"),
    atomic("io.k8s.api.batch.v1.SuccessPolicy", "rules"),
    meta(
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("atomic"),
        &[],
    ),
    set("io.k8s.api.batch.v1.UncountedTerminatedPods", "succeeded"),
    set("io.k8s.api.batch.v1.UncountedTerminatedPods", "failed"),
    atomic("io.k8s.api.batch.v1.CronJobStatus", "active"),
    atomic("io.k8s.api.discovery.v1.EndpointSlice", "endpoints"),
    atomic("io.k8s.api.discovery.v1.EndpointSlice", "ports"),
    set("io.k8s.api.discovery.v1.Endpoint", "addresses"),
    atomic("io.k8s.api.discovery.v1.EndpointHints", "forZones"),
    atomic("io.k8s.api.discovery.v1.EndpointHints", "forNodes"),
    atomic("io.k8s.api.networking.v1.NetworkPolicySpec", "ingress"),
    atomic("io.k8s.api.networking.v1.NetworkPolicySpec", "egress"),
    atomic("io.k8s.api.networking.v1.NetworkPolicySpec", "policyTypes"),
    atomic("io.k8s.api.networking.v1.NetworkPolicyIngressRule", "ports"),
    atomic("io.k8s.api.networking.v1.NetworkPolicyIngressRule", "from"),
    atomic("io.k8s.api.networking.v1.NetworkPolicyEgressRule", "ports"),
    atomic("io.k8s.api.networking.v1.NetworkPolicyEgressRule", "to"),
    atomic("io.k8s.api.networking.v1.IPBlock", "except"),
    atomic("io.k8s.api.networking.v1.IngressSpec", "tls"),
    atomic("io.k8s.api.networking.v1.IngressSpec", "rules"),
    atomic("io.k8s.api.networking.v1.IngressTLS", "hosts"),
    atomic(
        "io.k8s.api.networking.v1.IngressLoadBalancerStatus",
        "ingress",
    ),
    atomic(
        "io.k8s.api.networking.v1.IngressLoadBalancerIngress",
        "ports",
    ),
    atomic("io.k8s.api.networking.v1.HTTPIngressRuleValue", "paths"),
    atomic("io.k8s.api.networking.v1.ServiceCIDRSpec", "cidrs"),
    keyed(
        "io.k8s.api.networking.v1.ServiceCIDRStatus",
        "conditions",
        &["type"],
    ),
    replace("io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector"),
    keyed(
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        &["type"],
    ),
    atomic("io.k8s.api.rbac.v1.PolicyRule", "verbs"),
    atomic("io.k8s.api.rbac.v1.PolicyRule", "apiGroups"),
    atomic("io.k8s.api.rbac.v1.PolicyRule", "resources"),
    atomic("io.k8s.api.rbac.v1.PolicyRule", "resourceNames"),
    atomic("io.k8s.api.rbac.v1.PolicyRule", "nonResourceURLs"),
    atomic("io.k8s.api.rbac.v1.Role", "rules"),
    atomic("io.k8s.api.rbac.v1.RoleBinding", "subjects"),
    atomic("io.k8s.api.rbac.v1.ClusterRole", "rules"),
    atomic("io.k8s.api.rbac.v1.AggregationRule", "clusterRoleSelectors"),
    atomic("io.k8s.api.rbac.v1.ClusterRoleBinding", "subjects"),
    atomic("io.k8s.api.storage.v1.StorageClass", "mountOptions"),
    atomic("io.k8s.api.storage.v1.StorageClass", "allowedTopologies"),
    set(
        "io.k8s.api.storage.v1.CSIDriverSpec",
        "volumeLifecycleModes",
    ),
    atomic("io.k8s.api.storage.v1.CSIDriverSpec", "tokenRequests"),
    keyed("io.k8s.api.storage.v1.CSINodeSpec", "drivers", &["name"]),
    atomic("io.k8s.api.storage.v1.CSINodeDriver", "topologyKeys"),
];

/// Structs upstream marks `+structType=atomic`: apply owns and replaces
/// them as a whole.
pub static ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.api.core.v1.EndpointAddress",
    "io.k8s.api.core.v1.EndpointPort",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.ScopeSelector",
    "io.k8s.api.networking.v1.ServiceBackendPort",
    "io.k8s.api.rbac.v1.Subject",
    "io.k8s.api.rbac.v1.RoleRef",
    "io.k8s.api.discovery.v1.EndpointPort",
];

/// Map-valued properties upstream marks `+mapType=atomic`, as
/// `(definition, field)`.
pub static ATOMIC_MAPS: &[(&str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "nodeSelector"),
    ("io.k8s.api.core.v1.ReplicationControllerSpec", "selector"),
    ("io.k8s.api.core.v1.ServiceSpec", "selector"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{definitions, SchemaNode};

    #[test]
    fn every_entry_names_a_known_property() {
        let defs = definitions();
        let mut missing = vec![];
        // Definitions of kinds the server does not serve are not generated;
        // their entries wait for them. Known definitions must have the field.
        for m in ENTRIES {
            let Some(d) = defs.get(m.definition) else {
                continue;
            };
            if d.get("properties").and_then(|p| p.get(m.field)).is_none() {
                missing.push(format!("{}.{}", m.definition, m.field));
            }
        }
        for (name, f) in ATOMIC_MAPS {
            let Some(d) = defs.get(*name) else { continue };
            if d.get("properties").and_then(|p| p.get(*f)).is_none() {
                missing.push(format!("{name}.{f}"));
            }
        }
        let pod = SchemaNode::definition(defs, "io.k8s.api.core.v1.Pod").unwrap();
        let ports = pod
            .field("spec")
            .unwrap()
            .schema
            .field("containers")
            .unwrap()
            .schema
            .items()
            .unwrap();
        let ports = ports.field("ports").unwrap();
        assert_eq!(ports.list_map_keys(), ["containerPort", "protocol"]);
        assert_eq!(ports.patch_merge_key(), Some("containerPort"));
        assert!(defs.contains_key(ATOMIC_STRUCTS[0]));
        assert!(
            missing.is_empty(),
            "unknown definitions or properties: {missing:#?}"
        );
    }
}
