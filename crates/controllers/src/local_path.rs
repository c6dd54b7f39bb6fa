//! Local persistent volumes, as k3s ships them: a default StorageClass
//! `local-path` (provisioner `rancher.io/local-path`, volumeBindingMode
//! WaitForFirstConsumer, reclaimPolicy Delete) and a controller that plays
//! both the PV controller's and the provisioner's parts for it:
//!
//! - claims without `storageClassName` get the default class: on create
//!   (the registry's DefaultStorageClass admission) and, for claims made
//!   before a default existed, here (upstream's retroactive assignment);
//! - a claim of the class is provisioned once a pod using it is scheduled
//!   (WaitForFirstConsumer; Immediate claims at once): a PersistentVolume
//!   `pvc-<claim uid>` whose `hostPath` is a directory under the storage
//!   root (`DATA/storage`), with node affinity to the pod's node and a
//!   `claimRef`; then claim and volume are bound both ways (`volumeName`,
//!   phase Bound);
//! - when the claim goes, a volume with reclaimPolicy Delete is deleted
//!   with its directory; Retain leaves it Released.
//!
//! The node agent mounts a claim by resolving it with [`claim_path`].

use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::{DeleteOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CLASS: &str = "local-path";
pub const PROVISIONER: &str = "rancher.io/local-path";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const COMPONENT: &str = "persistentvolume-controller";
/// Index: `namespace/claim` -> pods using that claim.
const BY_CLAIM: &str = "claim";

/// The names of the claims a pod's volumes use.
pub fn claim_names(pod: &Value) -> impl Iterator<Item = &str> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
        })
}

/// The claims a pod's volumes name, as `namespace/claim`.
pub fn pod_claims(pod: &Value) -> Vec<String> {
    let ns = namespace(pod);
    claim_names(pod).map(|c| format!("{ns}/{c}")).collect()
}

/// The default StorageClass, created at startup if missing.
pub fn default_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// Creates the default StorageClass unless it exists.
pub async fn ensure_default_class(reg: &Registry, opts: &WriteOptions) -> anyhow::Result<()> {
    let info = reg
        .resources
        .find("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| anyhow::anyhow!("storageclasses not served"))?;
    match reg.create(&info, None, default_class(), opts).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The host directory of a bound claim's volume (for the node agent).
pub fn claim_path(reg: &Registry, ns: &str, claim: &str) -> Result<String, String> {
    let find = |g: &str, p: &str| {
        reg.resources
            .find(g, "v1", p)
            .ok_or_else(|| format!("{p} not served"))
    };
    let pvc = reg
        .get_cached(&*find("", "persistentvolumeclaims")?, Some(ns), claim)
        .map_err(|_| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let volume = pvc
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if volume.is_empty() || pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
        return Err(format!("persistentvolumeclaim \"{claim}\" is not bound"));
    }
    let pv = reg
        .get_cached(&*find("", "persistentvolumes")?, None, volume)
        .map_err(|_| format!("persistentvolume \"{volume}\" not found"))?;
    pv.pointer("/spec/hostPath/path")
        .or_else(|| pv.pointer("/spec/local/path"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("persistentvolume \"{volume}\" has no local or hostPath source"))
}

/// The newest class marked default, as upstream picks it.
pub fn pick_default(classes: &[Arc<Value>]) -> Option<String> {
    classes
        .iter()
        .filter(|c| annotation(c, DEFAULT_CLASS_ANNOTATION) == Some("true"))
        .max_by(|a, b| {
            meta_str(a, "creationTimestamp")
                .cmp(meta_str(b, "creationTimestamp"))
                .then(name(b).cmp(name(a)))
        })
        .map(|c| name(c).to_string())
}

/// The PersistentVolume provisioned for a claim on `node` (None: no affinity).
pub fn volume_for(pvc: &Value, class: &Value, root: &Path, node: Option<&str>) -> Value {
    let pv_name = format!("pvc-{}", uid(pvc));
    let dir = root.join(format!("{pv_name}_{}_{}", namespace(pvc), name(pvc)));
    let storage = pvc
        .pointer("/spec/resources/requests/storage")
        .cloned()
        .unwrap_or(json!("1Gi"));
    let modes = pvc
        .pointer("/spec/accessModes")
        .cloned()
        .filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
        .unwrap_or(json!(["ReadWriteOnce"]));
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": class.get("reclaimPolicy").and_then(Value::as_str).unwrap_or("Delete"),
            "storageClassName": name(class),
            "volumeMode": "Filesystem",
            "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace(pvc),
                         "name": name(pvc), "uid": uid(pvc)},
        },
    });
    if let Some(n) = node {
        pv["metadata"]["annotations"]["local.path.provisioner/selected-node"] = json!(n);
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}});
    }
    pv
}

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub root: PathBuf,
    pub pvc_info: Arc<ResourceInfo>,
    pub pv_info: Arc<ResourceInfo>,
    pub claims: Arc<Informer>,
    pub volumes: Arc<Informer>,
    pub classes: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub queue: WorkQueue,
}

fn index_claims(pod: &Value) -> Vec<String> {
    pod_claims(pod)
}

impl Controller {
    pub fn new(
        reg: Arc<Registry>,
        opts: Arc<WriteOptions>,
        root: PathBuf,
    ) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (pvc_info, pv_info, sc_info, pod_info) = (
            find("", "persistentvolumeclaims")?,
            find("", "persistentvolumes")?,
            find("storage.k8s.io", "storageclasses")?,
            find("", "pods")?,
        );
        Ok(Arc::new(Controller {
            claims: Arc::new(Informer::new(pvc_info.key_prefix())),
            volumes: Arc::new(Informer::new(pv_info.key_prefix())),
            classes: Arc::new(Informer::new(sc_info.key_prefix())),
            pods: Arc::new(Informer::new(pod_info.key_prefix()).with_index(BY_CLAIM, index_claims)),
            reg,
            opts,
            root,
            pvc_info,
            pv_info,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.classes.start(&self.reg.cache, move |_, _| {
            for (_, pvc) in c.claims.list() {
                if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
                    c.queue.add(format!("pvc/{}", ns_key(&pvc)));
                }
            }
        })?;
        let c = self.clone();
        self.claims.start(&self.reg.cache, move |_, ev| {
            c.queue.add(format!("pvc/{}", ns_key(&ev.object)));
            if let Some(v) = ev
                .object
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
            {
                c.queue.add(format!("pv/{v}"));
            }
        })?;
        let c = self.clone();
        self.volumes.start(&self.reg.cache, move |_, ev| {
            c.queue.add(format!("pv/{}", name(&ev.object)))
        })?;
        let c = self.clone();
        self.pods.start(&self.reg.cache, move |_, ev| {
            let node = |p: &Value| {
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            if ev.prev.as_deref().map(node) == Some(node(&ev.object)) {
                return;
            }
            for claim in pod_claims(&ev.object) {
                c.queue.add(format!("pvc/{claim}"));
            }
        })?;
        Ok(())
    }

    async fn event(&self, pvc: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            pvc,
            ("v1", "PersistentVolumeClaim"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        match key.split_once('/') {
            Some(("pvc", k)) => self.sync_claim(k).await,
            Some(("pv", k)) => self.sync_volume(k).await,
            _ => Ok(None),
        }
    }

    async fn sync_claim(&self, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(pvc) = self.claims.get(&self.pvc_info.key(Some(ns), n)) else {
            return Ok(None);
        };
        if deleting(&pvc) {
            return Ok(None);
        }
        let classes: Vec<Arc<Value>> = self.classes.list().into_iter().map(|(_, c)| c).collect();
        let class_name = match pvc.pointer("/spec/storageClassName") {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => return Ok(None),
            _ => {
                // Retroactive default class assignment.
                if let Some(d) = pick_default(&classes) {
                    let patch = json!({"spec": {"storageClassName": d}});
                    self.patch_claim(ns, n, &patch).await?;
                }
                return Ok(None);
            }
        };
        let volume = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !volume.is_empty() {
            // Bound (or being bound): the claim's status follows the volume.
            let Some(pv) = self.volumes.get(&self.pv_info.key(None, volume)) else {
                return Ok(None);
            };
            if pv.pointer("/spec/claimRef/uid").and_then(Value::as_str) == Some(uid(&pvc)) {
                self.mark_bound(&pvc, &pv).await?;
            }
            return Ok(None);
        }
        let Some(class) = classes.iter().find(|c| name(c) == class_name).cloned() else {
            return Ok(None);
        };
        if class.get("provisioner").and_then(Value::as_str) != Some(PROVISIONER) {
            return Ok(None);
        }
        let wait =
            class.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer");
        let node = annotation(&pvc, SELECTED_NODE)
            .map(str::to_string)
            .or_else(|| {
                self.pods
                    .by_index(BY_CLAIM, key)
                    .into_iter()
                    .filter_map(|(_, p)| {
                        p.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .find(|n| !n.is_empty())
            });
        if wait && node.is_none() {
            if !self.pods.by_index(BY_CLAIM, key).is_empty() {
                return Ok(None); // a consumer exists; binding follows its scheduling
            }
            self.event(
                &pvc,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(None);
        }
        let pv = volume_for(&pvc, &class, &self.root, node.as_deref());
        let pv_name = name(&pv).to_string();
        if let Some(dir) = pv.pointer("/spec/hostPath/path").and_then(Value::as_str) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        }
        match self.reg.create(&self.pv_info, None, pv, &self.opts).await {
            Ok(_) => {
                let msg = format!("Successfully provisioned volume {pv_name}");
                self.event(&pvc, "Normal", "ProvisioningSucceeded", &msg)
                    .await;
            }
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let mut annotations = json!({
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes",
            "volume.beta.kubernetes.io/storage-provisioner": PROVISIONER,
            "volume.kubernetes.io/storage-provisioner": PROVISIONER,
        });
        if let Some(n) = &node {
            annotations[SELECTED_NODE] = json!(n);
        }
        let patch = json!({"metadata": {"annotations": annotations, "resourceVersion": meta_str(&pvc, "resourceVersion")},
                           "spec": {"volumeName": pv_name}});
        // The claim's next event finishes the binding, whatever this gives.
        let _ = self.patch_claim(ns, n, &patch).await;
        Ok(None)
    }

    /// A merge patch of the claim `ns/n`.
    async fn patch_claim(
        &self,
        ns: &str,
        n: &str,
        patch: &Value,
    ) -> Result<kobune_apiserver::registry::WriteResult, kobune_apimachinery::ApiError> {
        self.reg
            .patch(
                &self.pvc_info,
                Some(ns),
                n,
                PatchKind::Merge,
                patch,
                &self.opts,
                None,
            )
            .await
    }

    /// Sets the claim's and the volume's phase to Bound.
    async fn mark_bound(&self, pvc: &Value, pv: &Value) -> anyhow::Result<()> {
        if pv.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            let mut v = pv.clone();
            v["status"] = json!({"phase": "Bound"});
            match self
                .reg
                .update(&self.pv_info, None, name(pv), v, &self.opts, Some("status"))
                .await
            {
                Ok(_) | Err(_) => {}
            }
        }
        if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            let mut c = pvc.clone();
            c["status"] = json!({
                "phase": "Bound",
                "accessModes": pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
                "capacity": pv.pointer("/spec/capacity").cloned().unwrap_or(json!({})),
            });
            match self
                .reg
                .update(
                    &self.pvc_info,
                    Some(namespace(pvc)),
                    name(pvc),
                    c,
                    &self.opts,
                    Some("status"),
                )
                .await
            {
                Err(e) if e.code != 404 && e.code != 409 => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// A volume whose claim is gone: Delete removes it and its directory, Retain releases it.
    async fn sync_volume(&self, n: &str) -> anyhow::Result<Requeue> {
        let Some(pv) = self.volumes.get(&self.pv_info.key(None, n)) else {
            return Ok(None);
        };
        if deleting(&pv) {
            return Ok(None);
        }
        let Some(cr) = pv.pointer("/spec/claimRef") else {
            return Ok(None);
        };
        let ns = cr
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let claim = cr.get("name").and_then(Value::as_str).unwrap_or_default();
        let pvc = self.claims.get(&self.pvc_info.key(Some(ns), claim));
        let claim_uid = cr.get("uid").and_then(Value::as_str);
        if let Some(pvc) = &pvc {
            if claim_uid.is_none_or(|u| u == uid(pvc)) {
                if pvc.pointer("/spec/volumeName").and_then(Value::as_str) == Some(n) {
                    self.mark_bound(pvc, &pv).await?;
                }
                return Ok(None);
            }
        }
        // The claim is gone: reclaim.
        let ours = annotation(&pv, "pv.kubernetes.io/provisioned-by") == Some(PROVISIONER);
        let policy = pv
            .pointer("/spec/persistentVolumeReclaimPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Retain");
        if policy == "Delete" && ours {
            if let Some(dir) = pv.pointer("/spec/hostPath/path").and_then(Value::as_str) {
                let dir = Path::new(dir);
                if dir.starts_with(&self.root) && dir.exists() {
                    std::fs::remove_dir_all(dir)?;
                }
            }
            let del = DeleteOptions {
                precondition_uid: Some(uid(&pv).to_string()),
                ..Default::default()
            };
            match self.reg.delete(&self.pv_info, None, n, &del).await {
                Err(e) if e.code != 404 && e.code != 409 => return Err(e.into()),
                _ => {}
            }
        } else if pv.pointer("/status/phase").and_then(Value::as_str) != Some("Released") {
            let mut v = (*pv).clone();
            v["status"] = json!({"phase": "Released"});
            let _ = self
                .reg
                .update(&self.pv_info, None, n, v, &self.opts, Some("status"))
                .await;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_class_and_provisioned_volume() {
        let older = Arc::new(
            json!({"metadata": {"name": "old", "creationTimestamp": "2024-01-01T00:00:00Z",
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}}),
        );
        let newer = Arc::new(
            json!({"metadata": {"name": "new", "creationTimestamp": "2024-02-01T00:00:00Z",
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}}),
        );
        let plain = Arc::new(
            json!({"metadata": {"name": "plain", "creationTimestamp": "2024-03-01T00:00:00Z"}}),
        );
        assert_eq!(
            pick_default(&[older.clone(), newer, plain.clone()]).as_deref(),
            Some("new")
        );
        assert_eq!(pick_default(&[plain]), None);

        let pvc = json!({"metadata": {"name": "data-web-0", "namespace": "d", "uid": "abc"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}});
        let pv = volume_for(&pvc, &default_class(), Path::new("/s"), Some("n1"));
        assert_eq!(pv["metadata"]["name"], "pvc-abc");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/s/pvc-abc_d_data-web-0");
        assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(pv["spec"]["storageClassName"], CLASS);
        assert_eq!(pv["spec"]["claimRef"]["uid"], "abc");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"][0],
            "n1"
        );
        let pod = json!({"metadata": {"namespace": "d"}, "spec": {"volumes": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "data-web-0"}}, {"name": "b", "emptyDir": {}}]}});
        assert_eq!(pod_claims(&pod), ["d/data-web-0"]);
    }
}
