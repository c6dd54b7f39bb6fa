//! ClusterRole aggregation, as upstream's clusterrole-aggregation
//! controller does it: a ClusterRole with an `aggregationRule` holds the
//! rules of every other ClusterRole its selectors match, so `admin`, `edit`
//! and `view` grow with roles labelled `aggregate-to-*` (a CRD's chart
//! adds its kinds to `view` that way).

use crate::runtime::{served, Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::selectors::Selector;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};
use std::sync::Arc;

fn selectors(role: &Value) -> Option<Vec<Selector>> {
    let list = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    Some(
        list.iter()
            .filter_map(|s| Selector::from_label_selector(s).ok())
            .collect(),
    )
}

/// The rules `role` should hold given every ClusterRole (sorted by name),
/// or None when it aggregates nothing or already holds them.
pub fn plan(role: &Value, roles: &[Arc<Value>]) -> Option<Vec<Value>> {
    let selectors = selectors(role)?;
    let mut rules: Vec<Value> = vec![];
    for other in roles {
        if name(other) == name(role) {
            continue;
        }
        let labels = other.pointer("/metadata/labels").and_then(Value::as_object);
        if !selectors.iter().any(|s| s.matches_labels(labels)) {
            continue;
        }
        for r in other["rules"].as_array().into_iter().flatten() {
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
    }
    let current = role["rules"].as_array().cloned().unwrap_or_default();
    (current != rules).then_some(rules)
}

pub struct Controller {
    reg: Arc<Registry>,
    opts: Arc<WriteOptions>,
    roles: Arc<Informer>,
    info: Arc<ResourceInfo>,
    pub queue: WorkQueue,
}

impl Controller {
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let info = served(&reg, "rbac.authorization.k8s.io", "v1", "clusterroles")?;
        Ok(Arc::new(Controller {
            roles: Arc::new(Informer::new(info.key_prefix())),
            info,
            reg,
            opts,
            queue: WorkQueue::default(),
        }))
    }

    /// Any ClusterRole's change may change what an aggregating one holds.
    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let q = self.queue.clone();
        self.roles.start(&self.reg.cache, move |informer, _| {
            for (_, r) in informer.list() {
                if r.pointer("/aggregationRule").is_some_and(|a| !a.is_null()) {
                    q.add(name(&r));
                }
            }
        })?;
        Ok(())
    }

    pub async fn sync(&self, key: &str) -> anyhow::Result<Requeue> {
        let Some(role) = self.roles.get(&self.info.key(None, key)) else {
            return Ok(None);
        };
        let roles: Vec<Arc<Value>> = self.roles.list().into_iter().map(|(_, r)| r).collect();
        let Some(rules) = plan(&role, &roles) else {
            return Ok(None);
        };
        let mut updated = (*role).clone();
        updated["rules"] = json!(rules);
        match self
            .reg
            .update(&self.info, None, key, updated, &self.opts, None)
            .await
        {
            Ok(_) => Ok(None),
            // A newer version is on its way through the informer.
            Err(e) if e.code == 409 || e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
    }

    #[test]
    fn aggregated_roles_hold_the_union_of_what_their_selectors_match() {
        let sel = |l: &str| json!({"clusterRoleSelectors": [{"matchLabels": {l: "true"}}]});
        let mut view = (*role("view", json!({"to-edit": "true"}), json!([]))).clone();
        view["aggregationRule"] = sel("to-view");
        let pods = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let crd = json!({"verbs": ["list"], "apiGroups": ["shop.example"], "resources": ["carts"]});
        let roles = vec![
            role("a", json!({"to-view": "true"}), json!([pods])),
            role("b", json!({"to-view": "true"}), json!([crd, pods])),
            role("c", json!({"other": "true"}), json!([{"verbs": ["*"]}])),
            Arc::new(view.clone()),
        ];
        assert_eq!(plan(&view, &roles), Some(vec![pods.clone(), crd.clone()]));
        view["rules"] = json!([pods, crd]);
        assert_eq!(plan(&view, &roles), None);
        // Without an aggregationRule a role is left alone.
        assert_eq!(plan(&roles[0], &roles), None);
    }
}
