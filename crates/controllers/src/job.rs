//! The Job controller, as upstream's: runs pods until `spec.completions`
//! succeed (NonIndexed, or Indexed with one success per completion index),
//! at most `spec.parallelism` at a time, failing the Job past its
//! `backoffLimit` or `activeDeadlineSeconds`. Terminated pods are counted
//! through the `batch.kubernetes.io/job-tracking` finalizer and
//! `status.uncountedTerminatedPods`, as upstream does, so a pod deleted after
//! it finished is still counted exactly once. Finished Jobs with
//! `ttlSecondsAfterFinished` are deleted when it expires.
//!
//! [`plan`] decides over a snapshot; [`Controller::sync`] carries it out.

use crate::replicaset::Expectations;
use crate::runtime::{Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::cache::CacheEvent;
use kobune_apiserver::registry::{now_rfc3339, DeleteOptions, PatchKind, Registry, WriteOptions};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub const COMPONENT: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const LEGACY_JOB_NAME: &str = "job-name";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const DEFAULT_BACKOFF_LIMIT: i64 = 6;
const MAX_CREATES_PER_SYNC: usize = 500;

// ---------------------------------------------------------------------------
// Pure helpers

pub fn is_indexed(job: &Value) -> bool {
    job.pointer("/spec/completionMode").and_then(Value::as_str) == Some("Indexed")
}

pub fn completions(job: &Value) -> Option<i64> {
    job.pointer("/spec/completions").and_then(Value::as_i64)
}

pub fn parallelism(job: &Value) -> i64 {
    job.pointer("/spec/parallelism")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0)
}

pub fn suspended(job: &Value) -> bool {
    job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true)
}

/// The condition `ty` is True.
pub fn has_condition(o: &Value, ty: &str) -> bool {
    conditions(o)
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

/// Complete or Failed.
pub fn finished(job: &Value) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// When the Job finished (the Complete/Failed condition's transition time).
pub fn finish_time(job: &Value) -> Option<f64> {
    conditions(job)
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(parse_time)
}

pub fn pod_index(pod: &Value) -> Option<i64> {
    annotation(pod, COMPLETION_INDEX)
        .or_else(|| {
            pod.pointer("/metadata/labels")
                .and_then(|l| l.get(COMPLETION_INDEX))
                .and_then(Value::as_str)
        })
        .and_then(|s| s.parse().ok())
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// How a pod ended, if it did: a pod deleted before succeeding counts as failed.
pub fn terminal(pod: &Value) -> Option<bool> {
    match phase(pod) {
        "Succeeded" => Some(true),
        "Failed" => Some(false),
        _ if deleting(pod) => Some(false),
        _ => None,
    }
}

pub fn has_finalizer(pod: &Value) -> bool {
    pod.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|f| f == TRACKING_FINALIZER))
}

/// Parses "1,3-5" into indexes.
pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as upstream's completedIndexes ("1,3-5").
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut parts: Vec<String> = vec![];
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn uncounted(job: &Value, kind: &str) -> Vec<String> {
    job.pointer(&format!("/status/uncountedTerminatedPods/{kind}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What one sync of a Job should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Terminated pods still holding the tracking finalizer (counted by this sync).
    pub untrack: Vec<Arc<Value>>,
    /// New pods: their completion index (None for NonIndexed).
    pub create: Vec<Option<i64>>,
    /// Active pods to delete.
    pub delete: Vec<Arc<Value>>,
    /// The new status.
    pub status: Value,
    /// Conditions added by this sync: (type, reason, message) for events.
    pub finished: Option<(&'static str, &'static str, String)>,
    pub requeue: Requeue,
}

fn cond(ty: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": ty, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now, "lastTransitionTime": now})
}

/// Plans one sync over the Job's pods (those it controls). `may_create`:
/// expectations are satisfied. The uncounted pods this sync untracks are
/// counted in the planned status right away.
pub fn plan(job: &Value, pods: &[Arc<Value>], may_create: bool, now: f64) -> Plan {
    let mut p = Plan::default();
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let now_s = chrono::DateTime::from_timestamp(now as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(now_rfc3339);
    let indexed = is_indexed(job);
    let want = completions(job);
    let mut succeeded = i64_at(job, "/status/succeeded");
    let mut failed = i64_at(job, "/status/failed");
    let mut done_idx = job
        .pointer("/status/completedIndexes")
        .and_then(Value::as_str)
        .map(parse_indexes)
        .unwrap_or_default();
    // Count what finished (and what an earlier sync recorded as uncounted).
    let mut counted: BTreeSet<String> = uncounted(job, "succeeded")
        .into_iter()
        .chain(uncounted(job, "failed"))
        .collect();
    for uid_s in uncounted(job, "succeeded") {
        succeeded += 1;
        if indexed {
            if let Some(i) = pods
                .iter()
                .find(|x| uid(x) == uid_s)
                .and_then(|x| pod_index(x))
            {
                done_idx.insert(i);
            }
        }
    }
    failed += uncounted(job, "failed").len() as i64;
    for pod in pods {
        if !has_finalizer(pod) || counted.contains(uid(pod)) {
            continue;
        }
        match terminal(pod) {
            Some(true) => {
                succeeded += 1;
                if let Some(i) = pod_index(pod).filter(|_| indexed) {
                    done_idx.insert(i);
                }
            }
            Some(false) => failed += 1,
            None => continue,
        }
        counted.insert(uid(pod).to_string());
        p.untrack.push(pod.clone());
    }
    if indexed {
        let n = want.unwrap_or(0);
        done_idx.retain(|&i| i >= 0 && i < n);
        succeeded = done_idx.len() as i64;
    }
    let active: Vec<Arc<Value>> = pods
        .iter()
        .filter(|x| terminal(x).is_none())
        .cloned()
        .collect();
    let ready = active.iter().filter(|x| pod_ready(x)).count();
    let mut conds = conditions(job);
    let already_finished = finished(job);
    let is_suspended = suspended(job);

    if status.get("startTime").is_none() && !is_suspended && !already_finished {
        status["startTime"] = json!(now_s);
    }
    let start = status
        .get("startTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let complete = match want {
        Some(n) => succeeded >= n,
        None => succeeded > 0 && active.is_empty(),
    };
    let backoff = job
        .pointer("/spec/backoffLimit")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let deadline = job
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64);
    if !already_finished {
        if complete {
            conds = set_condition(
                &conds,
                cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    &now_s,
                ),
            );
            conds = set_condition(
                &conds,
                cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    &now_s,
                ),
            );
            status["completionTime"] = json!(now_s);
            p.finished = Some(("Complete", "Completed", "Job completed".into()));
        } else if failed > backoff {
            let msg = "Job has reached the specified backoff limit";
            conds = set_condition(
                &conds,
                cond("FailureTarget", "BackoffLimitExceeded", msg, &now_s),
            );
            conds = set_condition(&conds, cond("Failed", "BackoffLimitExceeded", msg, &now_s));
            p.finished = Some(("Failed", "BackoffLimitExceeded", msg.into()));
        } else if let (Some(d), Some(s), false) = (deadline, start, is_suspended) {
            if s + d as f64 <= now {
                let msg = "Job was active longer than specified deadline";
                conds = set_condition(
                    &conds,
                    cond("FailureTarget", "DeadlineExceeded", msg, &now_s),
                );
                conds = set_condition(&conds, cond("Failed", "DeadlineExceeded", msg, &now_s));
                p.finished = Some(("Failed", "DeadlineExceeded", msg.into()));
            } else {
                p.requeue = Some(Duration::from_secs_f64(s + d as f64 - now + 0.05));
            }
        }
        // Suspended condition follows spec.suspend.
        let was = has_condition(job, "Suspended");
        if p.finished.is_none() && is_suspended && !was {
            conds = set_condition(
                &conds,
                cond("Suspended", "JobSuspended", "Job suspended", &now_s),
            );
        } else if !is_suspended && was {
            let mut c = cond("Suspended", "JobResumed", "Job resumed", &now_s);
            c["status"] = json!("False");
            conds = set_condition(&conds, c);
            status["startTime"] = json!(now_s);
        }
    }
    let finishing = already_finished || p.finished.is_some();
    if finishing && p.finished.as_ref().is_some_and(|f| f.0 == "Failed")
        || (already_finished && !has_condition(job, "Complete"))
        || is_suspended
    {
        p.delete = active.iter().filter(|x| !deleting(x)).cloned().collect();
    } else if !finishing && may_create && !deleting(job) {
        let running = active.len() as i64;
        let par = parallelism(job);
        if indexed {
            let n = want.unwrap_or(0);
            let busy: BTreeSet<i64> = active.iter().filter_map(|x| pod_index(x)).collect();
            let room = (par - running).max(0) as usize;
            p.create = (0..n)
                .filter(|i| !done_idx.contains(i) && !busy.contains(i))
                .take(room.min(MAX_CREATES_PER_SYNC))
                .map(Some)
                .collect();
        } else {
            let target = match want {
                Some(n) => par.min(n - succeeded),
                None if succeeded > 0 => 0,
                None => par,
            }
            .max(0);
            if running < target {
                p.create = vec![None; ((target - running) as usize).min(MAX_CREATES_PER_SYNC)];
            } else if running > target {
                let mut extra: Vec<Arc<Value>> =
                    active.iter().filter(|x| !deleting(x)).cloned().collect();
                extra.sort_by(|a, b| crate::replicaset::deletion_order(a, b));
                p.delete = extra
                    .into_iter()
                    .take((running - target) as usize)
                    .collect();
            }
        }
    }
    status["active"] = json!(active.iter().filter(|x| !deleting(x)).count());
    status["ready"] = json!(ready);
    status["terminating"] = json!(active.iter().filter(|x| deleting(x)).count());
    if status["terminating"] == 0 {
        status.as_object_mut().map(|m| m.remove("terminating"));
    }
    for (k, v) in [("succeeded", succeeded), ("failed", failed)] {
        if v > 0 {
            status[k] = json!(v);
        } else if let Some(m) = status.as_object_mut() {
            m.remove(k);
        }
    }
    if indexed {
        let s = format_indexes(&done_idx);
        status["completedIndexes"] = json!(s);
    }
    status["uncountedTerminatedPods"] = json!({});
    if conds.is_empty() {
        status.as_object_mut().map(|m| m.remove("conditions"));
    } else {
        status["conditions"] = json!(conds);
    }
    p.status = status;
    p
}

/// The Job's pod for a completion index (None: NonIndexed).
pub fn pod_for(job: &Value, index: Option<i64>) -> Value {
    let t = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = json!({
        "generateName": match index {
            Some(i) => format!("{}-{i}-", name(job)),
            None => format!("{}-", name(job)),
        },
        "namespace": namespace(job),
        "ownerReferences": [controller_owner_ref("batch/v1", "Job", job)],
        "finalizers": [TRACKING_FINALIZER],
        "labels": {},
    });
    for k in ["labels", "annotations"] {
        if let Some(v) = t
            .pointer(&format!("/metadata/{k}"))
            .filter(|v| v.is_object())
        {
            meta[k] = v.clone();
        }
    }
    if let Some(f) = t.pointer("/metadata/finalizers").and_then(Value::as_array) {
        let mut all = f.clone();
        all.push(json!(TRACKING_FINALIZER));
        meta["finalizers"] = json!(all);
    }
    for (k, v) in [
        (CONTROLLER_UID, uid(job)),
        (LEGACY_CONTROLLER_UID, uid(job)),
        (JOB_NAME, name(job)),
        (LEGACY_JOB_NAME, name(job)),
    ] {
        meta["labels"][k] = json!(v);
    }
    let mut spec = t.get("spec").cloned().unwrap_or(json!({}));
    if let Some(i) = index {
        if !meta.get("annotations").is_some_and(Value::is_object) {
            meta["annotations"] = json!({});
        }
        meta["annotations"][COMPLETION_INDEX] = json!(i.to_string());
        meta["labels"][COMPLETION_INDEX] = json!(i.to_string());
        if spec.get("hostname").is_none() {
            spec["hostname"] = json!(format!("{}-{i}", name(job)));
        }
        let env = json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": format!("metadata.annotations['{COMPLETION_INDEX}']")}}});
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if !c.get("env").is_some_and(Value::is_array) {
                        c["env"] = json!([]);
                    }
                    let e = c["env"].as_array_mut().unwrap();
                    if !e.iter().any(|x| x["name"] == "JOB_COMPLETION_INDEX") {
                        e.push(env.clone());
                    }
                }
            }
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The Job with its selector and template labels defaulted (None: nothing to do).
pub fn defaulted(job: &Value) -> Option<Value> {
    if job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let labels = job.pointer("/spec/template/metadata/labels");
    let has = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(uid(job));
    if job.pointer("/spec/selector").is_some_and(|s| !s.is_null()) && has(CONTROLLER_UID) {
        return None;
    }
    let mut j = job.clone();
    if j.pointer("/spec/selector").is_none_or(|s| s.is_null()) {
        j["spec"]["selector"] = json!({"matchLabels": {CONTROLLER_UID: uid(job)}});
    }
    if !j["spec"]["template"].is_object() {
        j["spec"]["template"] = json!({});
    }
    if !j["spec"]["template"]["metadata"].is_object() {
        j["spec"]["template"]["metadata"] = json!({});
    }
    if !j["spec"]["template"]["metadata"]["labels"].is_object() {
        j["spec"]["template"]["metadata"]["labels"] = json!({});
    }
    let l = &mut j["spec"]["template"]["metadata"]["labels"];
    l[CONTROLLER_UID] = json!(uid(job));
    l[LEGACY_CONTROLLER_UID] = json!(uid(job));
    l[JOB_NAME] = json!(name(job));
    l[LEGACY_JOB_NAME] = json!(name(job));
    Some(j)
}

// ---------------------------------------------------------------------------
// The controller

pub struct Controller {
    pub reg: Arc<Registry>,
    pub opts: Arc<WriteOptions>,
    pub job_info: Arc<ResourceInfo>,
    pub pod_info: Arc<ResourceInfo>,
    pub jobs: Arc<Informer>,
    pub pods: Arc<Informer>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
}

fn owner_key(pod: &Value) -> Option<String> {
    let r = controller_ref(pod)?;
    (r.get("kind").and_then(Value::as_str) == Some("Job")
        && r.get("apiVersion").and_then(Value::as_str) == Some("batch/v1"))
    .then(|| {
        format!(
            "{}/{}",
            namespace(pod),
            r.get("name").and_then(Value::as_str).unwrap_or_default()
        )
    })
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let find = |g: &str, p: &str| crate::runtime::served(&reg, g, "v1", p);
        let (job_info, pod_info) = (find("batch", "jobs")?, find("", "pods")?);
        Ok(Arc::new(Controller {
            jobs: Arc::new(Informer::new(job_info.key_prefix())),
            pods: Arc::new(
                Informer::new(pod_info.key_prefix()).with_index(BY_CONTROLLER, index_controller),
            ),
            reg,
            opts,
            job_info,
            pod_info,
            queue: WorkQueue::default(),
            expectations: Expectations::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let c = self.clone();
        self.jobs.start(&self.reg.cache, move |_, ev| {
            c.expectations.on_owner_event(&c.queue, ev)
        })?;
        let c = self.clone();
        self.pods
            .start(&self.reg.cache, move |_, ev| c.on_pod_event(ev))?;
        Ok(())
    }

    fn on_pod_event(&self, ev: &CacheEvent) {
        let Some(owner) = owner_key(&ev.object) else {
            return;
        };
        self.expectations.observe_pod(&owner, ev);
        self.queue.add(owner);
    }

    async fn event(&self, job: &Value, ty: &str, reason: &str, msg: &str) {
        record_event(
            &self.reg,
            &self.opts,
            COMPONENT,
            job,
            ("batch/v1", "Job"),
            ty,
            reason,
            msg,
        )
        .await;
    }

    async fn remove_finalizer(&self, pod: &Value) -> anyhow::Result<()> {
        let fins: Vec<Value> = pod
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != TRACKING_FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": meta_str(pod, "resourceVersion")}});
        match self
            .reg
            .patch(
                &self.pod_info,
                Some(namespace(pod)),
                name(pod),
                PatchKind::Merge,
                &patch,
                &self.opts,
                None,
            )
            .await
        {
            Err(e) if e.code == 404 => Ok(()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    async fn write_status(&self, job: &Value, status: Value) -> anyhow::Result<Value> {
        let mut j = job.clone();
        j["status"] = status;
        Ok(self
            .reg
            .update(
                &self.job_info,
                Some(namespace(job)),
                name(job),
                j,
                &self.opts,
                Some("status"),
            )
            .await?
            .object)
    }

    /// Removes tracking finalizers of a finished or deleted Job's pods.
    async fn release_pods(&self, pods: &[Arc<Value>]) -> anyhow::Result<()> {
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            self.remove_finalizer(p).await?;
        }
        Ok(())
    }

    /// One reconcile of the Job `namespace/name`.
    pub async fn sync(self: &Arc<Self>, key: &str) -> anyhow::Result<Requeue> {
        let Some((ns, n)) = key.split_once('/') else {
            return Ok(None);
        };
        let Some(job) = self.jobs.get(&self.job_info.key(Some(ns), n)) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let pods: Vec<Arc<Value>> = self.pods.objects_by_index(BY_CONTROLLER, uid(&job));
        if deleting(&job) {
            self.release_pods(&pods).await?;
            return Ok(None);
        }
        if let Some(j) = defaulted(&job) {
            match self
                .reg
                .update(&self.job_info, Some(ns), n, j, &self.opts, None)
                .await
            {
                Err(e) if e.code == 404 || e.code == 409 => {}
                r => {
                    r?;
                }
            }
            return Ok(None); // the update brings us back
        }
        let now = now_secs();
        if finished(&job) {
            // Count what is left, release the rest, then the TTL.
            let p = plan(&job, &pods, false, now);
            let mut job = (*job).clone();
            if !p.untrack.is_empty() {
                let mut st = p.status.clone();
                st["uncountedTerminatedPods"] = uncounted_of(&p.untrack);
                job = self
                    .write_status(&job, job_status_pending(&job, st))
                    .await?;
            }
            for d in &p.delete {
                self.delete_pod(&job, d).await;
            }
            self.release_pods(&pods).await?;
            if job.get("status") != Some(&p.status) {
                match self.write_status(&job, p.status.clone()).await {
                    Err(e) => tracing::debug!("job status: {e}"),
                    Ok(j) => job = j,
                }
            }
            return self.ttl(&job, now).await;
        }
        let p = plan(&job, &pods, self.expectations.satisfied(key), now);
        let mut job = (*job).clone();
        // Record terminated pods as uncounted, drop their finalizers, then count them.
        if !p.untrack.is_empty() {
            let mut st = job.get("status").cloned().unwrap_or(json!({}));
            if !st.is_object() {
                st = json!({});
            }
            st["uncountedTerminatedPods"] = uncounted_of(&p.untrack);
            job = self.write_status(&job, st).await?;
            for pod in &p.untrack {
                self.remove_finalizer(pod).await?;
            }
        }
        for d in &p.delete {
            self.delete_pod(&job, d).await;
        }
        let mut failure = None;
        if !p.create.is_empty() {
            self.expectations.expect(key, p.create.len(), vec![]);
            let mut left = p.create.len();
            for idx in &p.create {
                left -= 1;
                let pod = pod_for(&job, *idx);
                match self
                    .reg
                    .create(&self.pod_info, Some(ns), pod, &self.opts)
                    .await
                {
                    Ok(r) => {
                        let msg = format!("Created pod: {}", name(&r.object));
                        self.event(&job, "Normal", "SuccessfulCreate", &msg).await;
                    }
                    Err(e) => {
                        self.expectations.lower_adds(key, 1 + left);
                        self.event(
                            &job,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {}", e.message),
                        )
                        .await;
                        failure = Some(e.message.clone());
                        break;
                    }
                }
            }
        }
        if job.get("status") != Some(&p.status) {
            job = self.write_status(&job, p.status.clone()).await?;
        }
        if let Some((ty, reason, msg)) = &p.finished {
            let level = if *ty == "Complete" {
                "Normal"
            } else {
                "Warning"
            };
            self.event(&job, level, reason, msg).await;
            self.release_pods(&pods).await.ok();
            return self.ttl(&job, now).await;
        }
        if let Some(e) = failure {
            anyhow::bail!("{e}");
        }
        Ok(p.requeue)
    }

    async fn delete_pod(&self, job: &Value, pod: &Value) {
        let del = DeleteOptions {
            precondition_uid: Some(uid(pod).to_string()),
            ..Default::default()
        };
        if self
            .reg
            .delete(&self.pod_info, Some(namespace(pod)), name(pod), &del)
            .await
            .is_ok()
        {
            let msg = format!("Deleted pod: {}", name(pod));
            self.event(job, "Normal", "SuccessfulDelete", &msg).await;
        }
    }

    async fn ttl(&self, job: &Value, now: f64) -> anyhow::Result<Requeue> {
        let Some(ttl) = job
            .pointer("/spec/ttlSecondsAfterFinished")
            .and_then(Value::as_i64)
        else {
            return Ok(None);
        };
        let at = finish_time(job).unwrap_or(now) + ttl as f64;
        if at > now {
            return Ok(Some(Duration::from_secs_f64(at - now + 0.05)));
        }
        let del = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: Some(uid(job).to_string()),
            ..Default::default()
        };
        match self
            .reg
            .delete(&self.job_info, Some(namespace(job)), name(job), &del)
            .await
        {
            Err(e) if e.code == 404 || e.code == 409 => Ok(None),
            r => r.map(|_| None).map_err(Into::into),
        }
    }
}

fn uncounted_of(pods: &[Arc<Value>]) -> Value {
    let (mut s, mut f) = (vec![], vec![]);
    for p in pods {
        match terminal(p) {
            Some(true) => s.push(json!(uid(p))),
            _ => f.push(json!(uid(p))),
        }
    }
    json!({"succeeded": s, "failed": f})
}

/// The Job's current status with `st`'s uncounted pods (a first write).
fn job_status_pending(job: &Value, st: Value) -> Value {
    let mut cur = job.get("status").cloned().unwrap_or(json!({}));
    if !cur.is_object() {
        cur = json!({});
    }
    cur["uncountedTerminatedPods"] = st["uncountedTerminatedPods"].clone();
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(completions: Option<i64>, parallelism: i64, indexed: bool) -> Value {
        let mut j = json!({"metadata": {"name": "pi", "namespace": "d", "uid": "j1"},
            "spec": {"parallelism": parallelism, "backoffLimit": 1,
                     "template": {"spec": {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}}});
        if let Some(c) = completions {
            j["spec"]["completions"] = json!(c);
        }
        if indexed {
            j["spec"]["completionMode"] = json!("Indexed");
        }
        j
    }

    fn pod(name: &str, phase: &str, index: Option<i64>) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"),
            "finalizers": [TRACKING_FINALIZER], "creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": phase}});
        if let Some(i) = index {
            p["metadata"]["annotations"] = json!({COMPLETION_INDEX: i.to_string()});
        }
        Arc::new(p)
    }

    #[test]
    fn indexes_round_trip() {
        let s = parse_indexes("0,2-4,7");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&s), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn creates_up_to_parallelism_and_completes() {
        let now = now_secs();
        let j = job(Some(3), 2, false);
        let p = plan(&j, &[], true, now);
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.status["active"], 0);
        assert!(p.status["startTime"].is_string());
        // Two succeeded: one more, counted from the finalized pods.
        let pods = [pod("a", "Succeeded", None), pod("b", "Succeeded", None)];
        let p = plan(&j, &pods, true, now);
        assert_eq!(p.untrack.len(), 2);
        assert_eq!(p.status["succeeded"], 2);
        assert_eq!(p.create.len(), 1);
        // Third done: Complete with SuccessCriteriaMet first.
        let mut j2 = j.clone();
        j2["status"] = json!({"succeeded": 2, "startTime": "2024-01-01T00:00:00Z"});
        let p = plan(&j2, &[pod("c", "Succeeded", None)], true, now);
        assert_eq!(p.status["succeeded"], 3);
        let conds = p.status["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["type"], "SuccessCriteriaMet");
        assert_eq!(conds[1]["type"], "Complete");
        assert!(p.status["completionTime"].is_string());
        assert_eq!(p.finished.unwrap().1, "Completed");
        assert!(p.create.is_empty());
    }

    #[test]
    fn backoff_limit_fails_and_deletes_active() {
        let j = job(Some(3), 2, false);
        let pods = [
            pod("a", "Failed", None),
            pod("b", "Failed", None),
            pod("c", "Running", None),
        ];
        let p = plan(&j, &pods, true, now_secs());
        assert_eq!(p.status["failed"], 2);
        assert_eq!(p.finished.as_ref().unwrap().1, "BackoffLimitExceeded");
        assert!(get_condition(p.status["conditions"].as_array().unwrap(), "Failed").is_some());
        assert_eq!(p.delete.len(), 1);
        assert!(p.create.is_empty());
    }

    #[test]
    fn deadline_and_suspend() {
        let now = now_secs();
        let mut j = job(Some(1), 1, false);
        j["spec"]["activeDeadlineSeconds"] = json!(10);
        j["status"] = json!({"startTime": chrono::DateTime::from_timestamp(now as i64 - 20, 0).unwrap().to_rfc3339()});
        let p = plan(&j, &[pod("a", "Running", None)], true, now);
        assert_eq!(p.finished.unwrap().1, "DeadlineExceeded");
        assert_eq!(p.delete.len(), 1);
        let mut j = job(Some(1), 1, false);
        j["spec"]["suspend"] = json!(true);
        let p = plan(&j, &[pod("a", "Running", None)], true, now);
        assert!(p.create.is_empty() && p.delete.len() == 1);
        assert!(p.status.get("startTime").is_none());
        assert!(get_condition(p.status["conditions"].as_array().unwrap(), "Suspended").is_some());
    }

    #[test]
    fn indexed_jobs_fill_missing_indexes() {
        let j = job(Some(4), 2, true);
        let pods = [pod("a", "Succeeded", Some(0)), pod("b", "Running", Some(2))];
        let p = plan(&j, &pods, true, now_secs());
        assert_eq!(p.create, vec![Some(1)]);
        assert_eq!(p.status["completedIndexes"], "0");
        assert_eq!(p.status["succeeded"], 1);
        let pod = pod_for(&j, Some(3));
        assert_eq!(pod["metadata"]["generateName"], "pi-3-");
        assert_eq!(pod["metadata"]["annotations"][COMPLETION_INDEX], "3");
        assert_eq!(pod["spec"]["hostname"], "pi-3");
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(pod["metadata"]["labels"][JOB_NAME], "pi");
        assert_eq!(pod["metadata"]["finalizers"][0], TRACKING_FINALIZER);
    }

    #[test]
    fn selector_defaults_to_controller_uid() {
        let j = defaulted(&job(Some(1), 1, false)).unwrap();
        assert_eq!(j["spec"]["selector"]["matchLabels"][CONTROLLER_UID], "j1");
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"][LEGACY_JOB_NAME],
            "pi"
        );
        assert!(defaulted(&j).is_none());
        let mut m = job(Some(1), 1, false);
        m["spec"]["manualSelector"] = json!(true);
        assert!(defaulted(&m).is_none());
    }
}
