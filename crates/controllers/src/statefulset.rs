//! The StatefulSet controller, as upstream's: pods with stable names
//! `<set>-<ordinal>` (labels `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index`, hostname = pod name, subdomain =
//! serviceName), one PersistentVolumeClaim per volumeClaimTemplate and
//! ordinal (`<template>-<set>-<ordinal>`, created before the pod and kept
//! on scale-down unless persistentVolumeClaimRetentionPolicy says Delete).
//! OrderedReady creates in ordinal order, each waiting for the previous to
//! be Running and Ready, and removes in reverse; Parallel does both at
//! once. ControllerRevisions (`<set>-<hash>`) hold the template history;
//! pods carry their revision in `controller-revision-hash`. RollingUpdate
//! replaces pods from the highest ordinal down to the partition, one at a
//! time, each waiting for the previous to be Ready; OnDelete leaves that
//! to the user.
//!
//! One sync is the pure [`plan`] over a snapshot, then its actions.

use crate::daemonset::revision_data;
use crate::deployment::template_hash;
use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::EventType;
use kobune_apiserver::registry::{DeleteOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub const COMPONENT: &str = "statefulset-controller";
pub const HASH_LABEL: &str = "controller-revision-hash";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod of set `set`, from its name.
pub fn ordinal(set: &str, pod: &str) -> Option<i64> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty()
        || !rest.bytes().all(|b| b.is_ascii_digit())
        || (rest.len() > 1 && rest.starts_with('0'))
    {
        return None;
    }
    rest.parse().ok()
}

pub fn revision_of(pod: &Value) -> &str {
    pod.pointer("/metadata/labels")
        .and_then(|l| l.get(HASH_LABEL))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn running_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && pod_ready(pod)
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    )
}

/// The claim name of a volumeClaimTemplate for an ordinal.
pub fn claim_name(template: &Value, set: &str, ordinal: i64) -> String {
    format!("{}-{set}-{ordinal}", name(template))
}

pub fn claim_templates(sts: &Value) -> Vec<Value> {
    sts.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// What one sync should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// (ordinal, at the update revision (else the current one)).
    pub create: Vec<(i64, bool)>,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
    pub requeue: Requeue,
}

/// Plans one sync of `sts` over its pods, given its current and update
/// revision names.
pub fn plan(
    sts: &Value,
    pods: &[Arc<Value>],
    current_rev: &str,
    update_rev: &str,
    now: f64,
) -> Plan {
    let mut p = Plan::default();
    let set = name(sts);
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let start = i64_at(sts, "/spec/ordinals/start").max(0);
    let end = start + replicas;
    let parallel = sts
        .pointer("/spec/podManagementPolicy")
        .and_then(Value::as_str)
        == Some("Parallel");
    let strategy = sts
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let partition = if strategy == "RollingUpdate" {
        sts.pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0)
    } else {
        0
    };
    let min_ready = i64_at(sts, "/spec/minReadySeconds");

    // Status over every pod.
    let (mut count, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for pod in pods {
        count += 1;
        if running_ready(pod) {
            ready += 1;
            if pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if !deleting(pod) {
            if revision_of(pod) == current_rev {
                current += 1;
            }
            if revision_of(pod) == update_rev {
                updated += 1;
            }
        }
    }
    let mut current_rev = current_rev.to_string();
    if strategy == "RollingUpdate" && updated == count && ready == count && count == replicas {
        current_rev = update_rev.to_string();
        current = updated;
    }
    let mut st = json!({
        "observedGeneration": i64_at(sts, "/metadata/generation"),
        "replicas": count,
        "readyReplicas": ready,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "currentRevision": current_rev,
        "updateRevision": update_rev,
        "collisionCount": i64_at(sts, "/status/collisionCount"),
    });
    if ready > available && min_ready > 0 {
        p.requeue = Some(std::time::Duration::from_secs(1));
    }
    if deleting(sts) {
        st["replicas"] = json!(count);
        p.status = st;
        return p;
    }

    let mut slots: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
    let mut condemned: Vec<(i64, Arc<Value>)> = vec![];
    for pod in pods {
        match ordinal(set, name(pod)) {
            Some(o) if o >= start && o < end && !slots.contains_key(&o) => {
                slots.insert(o, pod.clone());
            }
            o => condemned.push((o.unwrap_or(i64::MAX), pod.clone())),
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    let healthy =
        |pod: &Value| running_ready(pod) && pod_available(pod, min_ready, now) && !deleting(pod);
    let done = |mut p: Plan, st: Value| {
        p.status = st;
        p
    };

    // Pods in the replica range: replace finished ones, create missing ones.
    for o in start..end {
        match slots.get(&o) {
            None => {
                p.create
                    .push((o, !(strategy == "RollingUpdate" && o < start + partition)));
                if !parallel {
                    return done(p, st);
                }
            }
            Some(pod) if finished(pod) && !deleting(pod) => {
                p.delete.push(pod.clone());
                if !parallel {
                    return done(p, st);
                }
            }
            Some(pod) if !parallel && !healthy(pod) => return done(p, st),
            _ => {}
        }
    }
    // Condemned pods: highest ordinal first; OrderedReady one at a time,
    // and only while every other pod is healthy.
    for (i, (_, pod)) in condemned.iter().enumerate() {
        if deleting(pod) {
            if !parallel {
                return done(p, st);
            }
            continue;
        }
        if !parallel {
            let others_unhealthy = slots.values().any(|x| !healthy(x))
                || condemned.iter().skip(i + 1).any(|(_, x)| !healthy(x));
            if others_unhealthy {
                return done(p, st);
            }
        }
        p.delete.push(pod.clone());
        if !parallel {
            return done(p, st);
        }
    }
    if parallel && (!p.create.is_empty() || !p.delete.is_empty()) {
        return done(p, st);
    }
    // Rolling update: from the highest ordinal down to the partition.
    if strategy == "RollingUpdate" {
        for o in (start + partition..end).rev() {
            let Some(pod) = slots.get(&o) else { break };
            if revision_of(pod) != update_rev && !deleting(pod) {
                p.delete.push(pod.clone());
                break;
            }
            if !healthy(pod) {
                break;
            }
        }
    }
    done(p, st)
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub sts_info: Arc<ResourceInfo>,
    pub pod_info: Arc<ResourceInfo>,
    pub cr_info: Arc<ResourceInfo>,
    pub pvc_info: Arc<ResourceInfo>,
    pub sets: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub revisions: Arc<Informer>,
    pub queue: WorkQueue,
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (sts_info, pod_info, cr_info, pvc_info) = (
            find("apps", "statefulsets")?,
            find("", "pods")?,
            find("apps", "controllerrevisions")?,
            find("", "persistentvolumeclaims")?,
        );
        Ok(Arc::new(Controller {
            sets: Arc::new(Informer::new(sts_info.key_prefix())),
            pods: Arc::new(
                Informer::new(pod_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            revisions: Arc::new(
                Informer::new(cr_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            reg,
            opts,
            sts_info,
            pod_info,
            cr_info,
            pvc_info,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.sets.start(&self.reg.cache, move |_, ev| {
            c.queue.add(ns_key(&ev.object))
        })?;
        let c = self.clone();
        self.pods.start(&self.reg.cache, move |_, ev| {
            if let Some(k) = controller_key(&ev.object, "StatefulSet") {
                c.queue.add(k);
            }
        })?;
        let c = self.clone();
        self.revisions.start(&self.reg.cache, move |_, ev| {
            if ev.kind != EventType::Modified {
                if let Some(k) = controller_key(&ev.object, "StatefulSet") {
                    c.queue.add(k);
                }
            }
        })?;
        Ok(())
    }

    async fn event(&self, sts: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            sts,
            ("apps/v1", "StatefulSet"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    /// Finds or makes the update revision; returns (current revision name
    /// and its template, update revision name). Trims history.
    async fn revisions(
        &self,
        sts: &Value,
        pods: &[Arc<Value>],
    ) -> anyhow::Result<(String, Value, String)> {
        let ns = namespace(sts);
        let collision = sts
            .pointer("/status/collisionCount")
            .and_then(Value::as_i64);
        let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template, collision);
        let data = revision_data(sts);
        let (owned, max) = owned_revisions(&self.revisions, uid(sts));
        let update = match owned.iter().find(|r| r.get("data") == Some(&data)) {
            Some(r) => {
                renumber_revision(&self.reg, &self.cr_info, r, max, &self.opts).await?;
                name(r).to_string()
            }
            None => {
                let rev_name = format!("{}-{hash}", name(sts));
                let cr = new_revision(sts, "StatefulSet", &rev_name, &rev_name, &data, max + 1);
                create_revision(
                    &self.reg,
                    &self.cr_info,
                    &self.sts_info,
                    sts,
                    cr,
                    collision,
                    &self.opts,
                )
                .await?;
                rev_name
            }
        };
        let current_name = sts
            .pointer("/status/currentRevision")
            .and_then(Value::as_str)
            .filter(|c| owned.iter().any(|r| name(r) == *c))
            .unwrap_or(&update)
            .to_string();
        let current_template = owned
            .iter()
            .find(|r| name(r) == current_name)
            .and_then(|r| r.pointer("/data/spec/template").cloned())
            .map(|mut t| {
                t.as_object_mut().map(|m| m.remove("$patch"));
                t
            })
            .unwrap_or(template);
        // History: keep revisionHistoryLimit revisions not in use.
        let limit = sts
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0) as usize;
        let mut in_use: HashSet<&str> = pods.iter().map(|p| revision_of(p)).collect();
        in_use.insert(update.as_str());
        in_use.insert(current_name.as_str());
        let old: Vec<&Arc<Value>> = owned.iter().filter(|r| !in_use.contains(name(r))).collect();
        if old.len() > limit {
            for r in &old[..old.len() - limit] {
                let _ = self
                    .reg
                    .delete(&self.cr_info, Some(ns), name(r), &DeleteOptions::default())
                    .await;
            }
        }
        Ok((current_name, current_template, update))
    }

    fn pod_for(&self, sts: &Value, template: &Value, revision: &str, o: i64) -> Value {
        let set = name(sts);
        let pod_name = format!("{set}-{o}");
        let mut meta = json!({
            "name": pod_name, "namespace": namespace(sts),
            "ownerReferences": [controller_owner_ref("apps/v1", "StatefulSet", sts)],
            "labels": {},
        });
        for k in ["labels", "annotations", "finalizers"] {
            if let Some(v) = template
                .pointer(&format!("/metadata/{k}"))
                .filter(|v| !v.is_null())
            {
                meta[k] = v.clone();
            }
        }
        meta["labels"][HASH_LABEL] = json!(revision);
        meta["labels"][POD_NAME_LABEL] = json!(pod_name);
        meta["labels"][POD_INDEX_LABEL] = json!(o.to_string());
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["hostname"] = json!(pod_name);
        if let Some(svc) = sts
            .pointer("/spec/serviceName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            spec["subdomain"] = json!(svc);
        }
        let claims = claim_templates(sts);
        if !claims.is_empty() {
            let mut vols: Vec<Value> = spec
                .get("volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for t in &claims {
                vols.retain(|v| v["name"] != name(t));
                vols.push(json!({"name": name(t), "persistentVolumeClaim": {"claimName": claim_name(t, set, o)}}));
            }
            spec["volumes"] = json!(vols);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    /// Creates the ordinal's missing claims.
    async fn ensure_claims(&self, sts: &Value, o: i64) -> anyhow::Result<()> {
        let ns = namespace(sts);
        let when_deleted = sts
            .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted")
            .and_then(Value::as_str);
        for t in claim_templates(sts) {
            let claim = claim_name(&t, name(sts), o);
            if self
                .reg
                .get_cached(&self.pvc_info, Some(ns), &claim)
                .is_ok()
            {
                continue;
            }
            let mut labels = t
                .pointer("/metadata/labels")
                .cloned()
                .filter(Value::is_object)
                .unwrap_or(json!({}));
            if let Some(m) = sts
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
            {
                for (k, v) in m {
                    labels[k] = v.clone();
                }
            }
            let mut meta = json!({"name": claim, "namespace": ns, "labels": labels});
            if let Some(a) = t.pointer("/metadata/annotations").filter(|a| a.is_object()) {
                meta["annotations"] = a.clone();
            }
            if when_deleted == Some("Delete") {
                meta["ownerReferences"] =
                    json!([controller_owner_ref("apps/v1", "StatefulSet", sts)]);
            }
            let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                             "spec": t.get("spec").cloned().unwrap_or(json!({}))});
            match self
                .reg
                .create(&self.pvc_info, Some(ns), pvc, &self.opts)
                .await
            {
                Ok(_) => {
                    let msg = format!(
                        "create Claim {claim} Pod {}-{o} in StatefulSet {} success",
                        name(sts),
                        name(sts)
                    );
                    self.event(sts, "Normal", "SuccessfulCreate", &msg).await;
                }
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    let msg = format!(
                        "create Claim {claim} for Pod {}-{o} in StatefulSet {} failed error: {}",
                        name(sts),
                        name(sts),
                        e.message
                    );
                    self.event(sts, "Warning", "FailedCreate", &msg).await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// whenDeleted: the set owns its claims (Delete: garbage collected with
    /// it) or not (Retain); follows changes of the policy.
    async fn sync_claim_owners(&self, sts: &Value) {
        let want = sts
            .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted")
            .and_then(Value::as_str)
            == Some("Delete");
        let ns = namespace(sts);
        let start = i64_at(sts, "/spec/ordinals/start").max(0);
        let end = start
            + sts
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(0);
        for t in claim_templates(sts) {
            for o in start..end {
                let claim = claim_name(&t, name(sts), o);
                let Ok(pvc) = self.reg.get_cached(&self.pvc_info, Some(ns), &claim) else {
                    continue;
                };
                let mut refs: Vec<Value> = pvc
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let has = refs.iter().any(|r| r["uid"] == uid(sts));
                if want == has || deleting(&pvc) {
                    continue;
                }
                if want {
                    refs.push(controller_owner_ref("apps/v1", "StatefulSet", sts));
                } else {
                    refs.retain(|r| r["uid"] != uid(sts));
                }
                let patch = json!({"metadata": {"ownerReferences": refs,
                    "resourceVersion": meta_str(&pvc, "resourceVersion")}});
                if let Err(e) = self
                    .reg
                    .patch(
                        &self.pvc_info,
                        Some(ns),
                        &claim,
                        PatchKind::Merge,
                        &patch,
                        &self.opts,
                        None,
                    )
                    .await
                {
                    tracing::debug!(claim, "updating claim owners: {e}");
                }
            }
        }
    }

    /// whenScaled: Delete: claims of ordinals out of range whose pod is gone.
    async fn delete_scaled_claims(&self, sts: &Value, pods: &[Arc<Value>]) {
        if sts
            .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenScaled")
            .and_then(Value::as_str)
            != Some("Delete")
        {
            return;
        }
        let set = name(sts);
        let ns = namespace(sts);
        let start = i64_at(sts, "/spec/ordinals/start").max(0);
        let end = start
            + sts
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(0);
        let live: HashSet<&str> = pods.iter().map(|p| name(p)).collect();
        let prefix = format!("{}{ns}/", self.pvc_info.key_prefix());
        for t in claim_templates(sts) {
            let tprefix = format!("{}-", name(&t));
            for (_, pvc) in self.reg.cache.list(&prefix, None).0 {
                let Some(rest) = name(&pvc).strip_prefix(&tprefix) else {
                    continue;
                };
                let Some(o) = ordinal(set, rest) else {
                    continue;
                };
                if (o >= start && o < end)
                    || live.contains(format!("{set}-{o}").as_str())
                    || deleting(&pvc)
                {
                    continue;
                }
                let del = DeleteOptions {
                    precondition_uid: Some(uid(&pvc).to_string()),
                    ..Default::default()
                };
                if self
                    .reg
                    .delete(&self.pvc_info, Some(ns), name(&pvc), &del)
                    .await
                    .is_ok()
                {
                    let msg = format!("delete Claim {} in StatefulSet {set} success", name(&pvc));
                    self.event(sts, "Normal", "SuccessfulDelete", &msg).await;
                }
            }
        }
    }

    /// One reconcile of the StatefulSet `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(sts) = self.sets.get(&self.sts_info.key(Some(ns), n)) else {
            return Ok(None);
        };
        let pods: Vec<Arc<Value>> = self.pods.objects_by_index(BY_CONTROLLER, uid(&sts));
        let (current, current_template, update) = if deleting(&sts) {
            let c = sts
                .pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let u = sts
                .pointer("/status/updateRevision")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (c, json!({}), u)
        } else {
            self.revisions(&sts, &pods).await?
        };
        let plan = plan(&sts, &pods, &current, &update, now_secs());
        let mut failure = None;
        for (o, at_update) in &plan.create {
            if let Err(e) = self.ensure_claims(&sts, *o).await {
                failure = Some(e.to_string());
                break;
            }
            let (template, rev) = if *at_update {
                (
                    sts.pointer("/spec/template").cloned().unwrap_or(json!({})),
                    update.as_str(),
                )
            } else {
                (current_template.clone(), current.as_str())
            };
            let pod = self.pod_for(&sts, &template, rev, *o);
            match self
                .reg
                .create(&self.pod_info, Some(ns), pod, &self.opts)
                .await
            {
                Ok(r) => {
                    let msg = format!(
                        "create Pod {} in StatefulSet {n} successful",
                        name(&r.object)
                    );
                    self.event(&sts, "Normal", "SuccessfulCreate", &msg).await;
                }
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    let msg = format!(
                        "create Pod {n}-{o} in StatefulSet {n} failed error: {}",
                        e.message
                    );
                    self.event(&sts, "Warning", "FailedCreate", &msg).await;
                    failure = Some(e.message.clone());
                    break;
                }
            }
        }
        for p in &plan.delete {
            let del = DeleteOptions {
                precondition_uid: Some(uid(p).to_string()),
                ..Default::default()
            };
            if self
                .reg
                .delete(&self.pod_info, Some(ns), name(p), &del)
                .await
                .is_ok()
            {
                let msg = format!("delete Pod {} in StatefulSet {n} successful", name(p));
                self.event(&sts, "Normal", "SuccessfulDelete", &msg).await;
            }
        }
        if !deleting(&sts) {
            self.sync_claim_owners(&sts).await;
            self.delete_scaled_claims(&sts, &pods).await;
        }
        let mut status = sts
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        for (k, v) in plan.status.as_object().unwrap() {
            status[k] = v.clone();
        }
        update_status_if_changed(
            &self.reg,
            &self.sts_info,
            &sts,
            status,
            &self.opts,
            &[404, 409],
        )
        .await?;
        if let Some(e) = failure {
            anyhow::bail!("{e}");
        }
        Ok(plan.requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64, extra: Value) -> Value {
        let mut s = json!({"metadata": {"name": "web", "namespace": "d", "uid": "s1", "generation": 4},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                s["spec"][k] = v.clone();
            }
        }
        s
    }

    fn pod(o: i64, rev: &str, ready: bool) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": format!("web-{o}"), "namespace": "d", "uid": format!("u{o}"),
            "labels": {HASH_LABEL: rev}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
        )
    }

    fn names(v: &[Arc<Value>]) -> Vec<&str> {
        v.iter().map(|p| name(p)).collect()
    }

    #[test]
    fn ordinals_parse() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let now = now_secs();
        let p = plan(&sts(3, json!({})), &[], "r1", "r1", now);
        assert_eq!(p.create, [(0, true)]);
        // web-0 not ready yet: wait.
        let p = plan(&sts(3, json!({})), &[pod(0, "r1", false)], "r1", "r1", now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        let p = plan(&sts(3, json!({})), &[pod(0, "r1", true)], "r1", "r1", now);
        assert_eq!(p.create, [(1, true)]);
        // Parallel: all at once.
        let p = plan(
            &sts(3, json!({"podManagementPolicy": "Parallel"})),
            &[],
            "r1",
            "r1",
            now,
        );
        assert_eq!(p.create, [(0, true), (1, true), (2, true)]);
        assert_eq!(p.status["replicas"], 0);
    }

    #[test]
    fn scale_down_in_reverse_order() {
        let now = now_secs();
        let pods: Vec<_> = (0..4).map(|o| pod(o, "r1", true)).collect();
        let p = plan(&sts(1, json!({})), &pods, "r1", "r1", now);
        assert_eq!(names(&p.delete), ["web-3"]);
        let p = plan(
            &sts(1, json!({"podManagementPolicy": "Parallel"})),
            &pods,
            "r1",
            "r1",
            now,
        );
        assert_eq!(names(&p.delete), ["web-3", "web-2", "web-1"]);
        // An unhealthy pod blocks ordered scale-down.
        let pods2 = vec![pods[0].clone(), pod(1, "r1", false), pods[2].clone()];
        let p = plan(&sts(1, json!({})), &pods2, "r1", "r1", now);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn rolling_update_with_partition() {
        let now = now_secs();
        let pods: Vec<_> = (0..3).map(|o| pod(o, "r1", true)).collect();
        let s = sts(
            3,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
        );
        let p = plan(&s, &pods, "r1", "r2", now);
        assert_eq!(names(&p.delete), ["web-2"]);
        assert_eq!(p.status["updatedReplicas"], 0);
        assert_eq!(p.status["currentReplicas"], 3);
        // web-2 updated but not ready: wait.
        let pods2 = vec![pods[0].clone(), pods[1].clone(), pod(2, "r2", false)];
        let p = plan(&s, &pods2, "r1", "r2", now);
        assert!(p.delete.is_empty());
        // Ready: the partition (2) stops the update at web-1.
        let pods3 = vec![pods[0].clone(), pods[1].clone(), pod(2, "r2", true)];
        let p = plan(&s, &pods3, "r1", "r2", now);
        assert!(p.delete.is_empty());
        assert_eq!(p.status["updatedReplicas"], 1);
        assert_eq!(p.status["currentRevision"], "r1");
        // Pods below the partition are recreated at the current revision.
        let p = plan(&s, &pods3[1..], "r1", "r2", now);
        assert_eq!(p.create, [(0, false)]);
        // Partition 0: the update completes and the current revision follows.
        let all: Vec<_> = (0..3).map(|o| pod(o, "r2", true)).collect();
        let p = plan(&sts(3, json!({})), &all, "r1", "r2", now);
        assert_eq!(p.status["currentRevision"], "r2");
        assert_eq!(p.status["currentReplicas"], 3);
        // OnDelete: nothing is replaced.
        let p = plan(
            &sts(3, json!({"updateStrategy": {"type": "OnDelete"}})),
            &pods,
            "r1",
            "r2",
            now,
        );
        assert!(p.delete.is_empty());
    }
}
