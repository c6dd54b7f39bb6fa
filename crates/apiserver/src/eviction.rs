//! The pods/eviction subresource, as upstream's eviction REST: a pod is
//! deleted only if the PodDisruptionBudget covering it allows one more
//! disruption. The budget's `status.disruptionsAllowed` is decremented and
//! the pod recorded in `status.disruptedPods` (optimistic concurrency on
//! the budget, retried on conflict) before the pod is deleted; the
//! disruption controller recomputes the budget once the pod is gone.

use crate::registry::{now_rfc3339, DeleteOptions, Registry, WriteOptions};
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::{ApiError, Cause, ResourceInfo};
use serde_json::{json, Value};

/// Upstream's message when a budget blocks an eviction.
pub const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// Upstream's cap on `status.disruptedPods`.
const MAX_DISRUPTED: usize = 2000;

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn too_many(cause: String) -> ApiError {
    ApiError::too_many_requests(VIOLATION, 0).with_causes(vec![Cause::new(
        "DisruptionBudget",
        "",
        cause,
    )])
}

/// The budgets in `ns` whose selector matches the pod's labels.
pub fn matching_budgets(reg: &Registry, info: &ResourceInfo, pod: &Value) -> Vec<Value> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let prefix = format!("{}{ns}/", info.key_prefix());
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    reg.cache
        .list(&prefix, None)
        .0
        .into_iter()
        .filter(|(_, pdb)| {
            pdb.pointer("/spec/selector")
                .and_then(|s| Selector::from_label_selector(s).ok())
                .is_some_and(|s| !s.is_empty() && s.matches_labels(labels))
        })
        .map(|(_, pdb)| (*pdb).clone())
        .collect()
}

/// Checks the budget and takes one disruption from it (unless dry run).
async fn check_and_decrement(
    reg: &Registry,
    info: &ResourceInfo,
    mut pdb: Value,
    pod_name: &str,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    let name = pdb["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ns = pdb["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for _ in 0..5 {
        let i = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
        if i("/status/observedGeneration") < i("/metadata/generation") {
            return Err(too_many(format!(
                "The disruption budget {name} is still being processed by the server."
            )));
        }
        let allowed = i("/status/disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::forbidden(
                "pods",
                "",
                pod_name,
                "pdb disruptions allowed is negative",
            ));
        }
        let disrupted = pdb
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        if disrupted > MAX_DISRUPTED {
            return Err(ApiError::forbidden(
                "pods",
                "",
                pod_name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many(format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                i("/status/desiredHealthy"),
                i("/status/currentHealthy")
            )));
        }
        if opts.dry_run {
            return Ok(());
        }
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][pod_name] = json!(now_rfc3339());
        match reg
            .update(info, Some(&ns), &name, pdb.clone(), opts, Some("status"))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => {
                pdb = reg.get(info, Some(&ns), &name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        "poddisruptionbudgets",
        "policy",
        &name,
        "the budget kept changing; retry the eviction",
    ))
}

/// Evicts a pod: POST pods/NAME/eviction with an `Eviction` body.
pub async fn evict(
    reg: &Registry,
    pods: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    body: &Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let pod = reg.get(pods, ns, name).await?;
    let mut delete = DeleteOptions {
        dry_run: opts.dry_run,
        grace_period_seconds: body
            .pointer("/deleteOptions/gracePeriodSeconds")
            .and_then(Value::as_i64),
        precondition_uid: pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    if let Some(rv) = body
        .pointer("/deleteOptions/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        delete.precondition_rv = Some(rv.to_string());
    }
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    let terminal = matches!(phase, Some("Succeeded") | Some("Failed"));
    let terminating = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    // Finished or already terminating pods cost no disruption.
    if !terminal && !terminating {
        if let Some(pdbs) = reg.resources.find("policy", "v1", "poddisruptionbudgets") {
            let budgets = matching_budgets(reg, &pdbs, &pod);
            if budgets.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some(pdb) = budgets.into_iter().next() {
                let i = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                let policy = pdb
                    .pointer("/spec/unhealthyPodEvictionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("IfHealthyBudget");
                let unhealthy = !pod_ready(&pod);
                let free = unhealthy
                    && (policy == "AlwaysAllow"
                        || (i("/status/desiredHealthy") > 0
                            && i("/status/currentHealthy") >= i("/status/desiredHealthy")));
                if !free {
                    check_and_decrement(reg, &pdbs, pdb, name, opts).await?;
                }
            }
        }
    }
    reg.delete(pods, ns, name, &delete).await?;
    Ok(kobune_apimachinery::status::success_status(
        name, "", "Eviction", "",
    ))
}
