//! What every namespace has for its pods' API access, as upstream's
//! serviceaccount and root-ca-cert-publisher controllers keep it: a
//! ServiceAccount named `default`, and the ConfigMap `kube-root-ca.crt`
//! with the cluster CA (`ca.crt`) that pods' token volumes project.

use crate::runtime::{served, Informer, Requeue, WorkQueue};
use crate::workload::*;
use kobune_apimachinery::ResourceInfo;
use kobune_apiserver::registry::{Registry, WriteOptions};
use kobune_apiserver::serviceaccount::ROOT_CA_CONFIGMAP;
use serde_json::{json, Value};
use std::sync::Arc;

pub const DEFAULT_ACCOUNT: &str = "default";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// A change one namespace needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateServiceAccount(Value),
    CreateConfigMap(Value),
    UpdateConfigMap(Value),
}

fn root_ca(ns: &str, ca: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                     "annotations": {"kubernetes.io/description": DESCRIPTION}},
        "data": {"ca.crt": ca}
    })
}

/// What namespace `ns` lacks, given its default ServiceAccount and root CA
/// ConfigMap as they are now. A namespace being deleted gets nothing.
pub fn plan(ns: &Value, account: Option<&Value>, config: Option<&Value>, ca: &str) -> Vec<Action> {
    if deleting(ns) || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return vec![];
    }
    let n = name(ns);
    let mut out = vec![];
    if account.is_none() {
        out.push(Action::CreateServiceAccount(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": DEFAULT_ACCOUNT, "namespace": n}
        })));
    }
    match config {
        None => out.push(Action::CreateConfigMap(root_ca(n, ca))),
        Some(cm) if cm.pointer("/data/ca.crt").and_then(Value::as_str) != Some(ca) => {
            let mut cm = cm.clone();
            cm["data"] = json!({"ca.crt": ca});
            out.push(Action::UpdateConfigMap(cm));
        }
        Some(_) => {}
    }
    out
}

pub struct Controller {
    reg: Arc<Registry>,
    opts: Arc<WriteOptions>,
    ca: String,
    namespaces: Arc<Informer>,
    accounts: Arc<Informer>,
    configs: Arc<Informer>,
    account_info: Arc<ResourceInfo>,
    config_info: Arc<ResourceInfo>,
    pub queue: WorkQueue,
}

impl Controller {
    /// Publishes the CA of the registry's service accounts.
    pub fn new(reg: Arc<Registry>, opts: Arc<WriteOptions>) -> anyhow::Result<Arc<Controller>> {
        let ca = reg
            .service_accounts
            .as_ref()
            .map(|s| s.root_ca_pem.clone())
            .ok_or_else(|| anyhow::anyhow!("no service account machinery"))?;
        let ns_info = served(&reg, "", "v1", "namespaces")?;
        let account_info = served(&reg, "", "v1", "serviceaccounts")?;
        let config_info = served(&reg, "", "v1", "configmaps")?;
        Ok(Arc::new(Controller {
            namespaces: Arc::new(Informer::new(ns_info.key_prefix())),
            accounts: Arc::new(Informer::new(account_info.key_prefix())),
            configs: Arc::new(Informer::new(config_info.key_prefix())),
            account_info,
            config_info,
            reg,
            opts,
            ca,
            queue: WorkQueue::default(),
        }))
    }

    pub fn start_informers(self: &Arc<Self>) -> anyhow::Result<()> {
        let q = self.queue.clone();
        self.namespaces
            .start(&self.reg.cache, move |_, ev| q.add(name(&ev.object)))?;
        // Only our objects matter: the default account and the CA ConfigMap.
        let q = self.queue.clone();
        self.accounts.start(&self.reg.cache, move |_, ev| {
            if name(&ev.object) == DEFAULT_ACCOUNT {
                q.add(namespace(&ev.object));
            }
        })?;
        let q = self.queue.clone();
        self.configs.start(&self.reg.cache, move |_, ev| {
            if name(&ev.object) == ROOT_CA_CONFIGMAP {
                q.add(namespace(&ev.object));
            }
        })?;
        Ok(())
    }

    pub async fn sync(&self, ns: &str) -> anyhow::Result<Requeue> {
        let Some(namespace) = self
            .namespaces
            .get(&format!("{}{ns}", self.namespaces.prefix()))
        else {
            return Ok(None);
        };
        let account = self
            .accounts
            .get(&self.account_info.key(Some(ns), DEFAULT_ACCOUNT));
        let config = self
            .configs
            .get(&self.config_info.key(Some(ns), ROOT_CA_CONFIGMAP));
        for action in plan(&namespace, account.as_deref(), config.as_deref(), &self.ca) {
            let r = match action {
                Action::CreateServiceAccount(o) => {
                    self.reg
                        .create(&self.account_info, Some(ns), o, &self.opts)
                        .await
                }
                Action::CreateConfigMap(o) => {
                    self.reg
                        .create(&self.config_info, Some(ns), o, &self.opts)
                        .await
                }
                Action::UpdateConfigMap(o) => {
                    self.reg
                        .update(
                            &self.config_info,
                            Some(ns),
                            ROOT_CA_CONFIGMAP,
                            o,
                            &self.opts,
                            None,
                        )
                        .await
                }
            };
            match r {
                Ok(_) => {}
                // Already there, or the namespace started terminating.
                Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_gets_its_account_and_current_ca() {
        let ns = json!({"metadata": {"name": "shop"}, "status": {"phase": "Active"}});
        let got = plan(&ns, None, None, "CA1");
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[0], Action::CreateServiceAccount(o) if o["metadata"]["name"] == "default" && o["metadata"]["namespace"] == "shop")
        );
        assert!(matches!(&got[1], Action::CreateConfigMap(o) if o["data"]["ca.crt"] == "CA1"));
        let sa = json!({"metadata": {"name": "default"}});
        let cm = root_ca("shop", "CA1");
        assert!(plan(&ns, Some(&sa), Some(&cm), "CA1").is_empty());
        // A rotated CA (or an edited ConfigMap) is put back.
        assert!(matches!(&plan(&ns, Some(&sa), Some(&cm), "CA2")[..],
            [Action::UpdateConfigMap(o)] if o["data"]["ca.crt"] == "CA2"));
        let gone = json!({"metadata": {"name": "shop", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Terminating"}});
        assert!(plan(&gone, None, None, "CA1").is_empty());
    }
}
