//! Service account tokens, as kube-apiserver issues and checks them: ES256
//! JWTs signed with the cluster's service-account key
//! (`TLS_DIR/service-account.key`), bound to a ServiceAccount and
//! optionally to a Pod, Secret or Node. `TokenRequest` (the
//! `serviceaccounts/token` subresource, behind `kubectl create token` and
//! the kubelet's projected token volumes) issues them; bearer
//! authentication accepts one while everything it is bound to still exists
//! with the same uid.

use crate::auth::UserInfo;
use crate::registry::Registry;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kobune_apimachinery::{at, ApiError, Cause};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The issuer, and the audience the API server accepts (upstream's
/// defaults for `--service-account-issuer` and `--api-audiences`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Where a pod's token, CA and namespace are mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap in every namespace holding the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Token lifetime when a request names none; the shortest allowed.
pub const DEFAULT_EXPIRATION: i64 = 3600;
pub const MIN_EXPIRATION: i64 = 600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim: what the token is bound to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bindings {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Bindings,
}

/// The cluster's service account machinery: the signing key and the CA
/// that pods are given to verify the API server.
pub struct ServiceAccounts {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    pub root_ca_pem: String,
    /// Claims of tokens whose signature was checked, by the token's
    /// SHA-256: a pod's client sends the same token with every request.
    verified: std::sync::Mutex<HashMap<[u8; 32], Claims>>,
}

/// Verified tokens remembered at most (expired ones go first).
const VERIFIED_MAX: usize = 4096;

impl ServiceAccounts {
    /// Loads `dir/service-account.key`, creating it on first start.
    pub fn load_or_create(dir: &Path, root_ca_pem: &str) -> anyhow::Result<ServiceAccounts> {
        let path = dir.join("service-account.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(_) => {
                let key = rcgen::KeyPair::generate()?;
                crate::pki::write_private(&path, &key.serialize_pem())?;
                key.serialize_pem()
            }
        };
        let key = rcgen::KeyPair::from_pem(&pem)?;
        let public = key.public_key_pem();
        use sha2::Digest;
        let digest = sha2::Sha256::digest(rcgen::PublicKeyData::der_bytes(&key));
        let key_id =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest);
        Ok(ServiceAccounts {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_ec_pem(public.as_bytes())?,
            key_id,
            root_ca_pem: root_ca_pem.to_string(),
            verified: Default::default(),
        })
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The claims of a token this cluster signed for the API's audience,
    /// if it has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let live = |c: &Claims| c.nbf <= now && now < c.exp;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key).filter(|c| live(c)) {
            return Some(c.clone());
        }
        let claims = self.check_signature(token)?;
        if cache.len() >= VERIFIED_MAX {
            cache.retain(|_, c| live(c));
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(key, claims.clone());
        Some(claims)
    }

    fn check_signature(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[ISSUER]);
        v.validate_nbf = true;
        v.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// The user of a service account token, as upstream names it.
pub fn user_of(ns: &str, name: &str) -> UserInfo {
    UserInfo {
        username: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    }
}

fn current_uid(reg: &Registry, plural: &str, ns: Option<&str>, name: &str) -> Option<String> {
    let info = reg.resources.find("", "v1", plural)?;
    let obj = reg.cache.get(&info.key(ns, name))?;
    at(&obj, "/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The user a bearer token stands for, when it is a valid service account
/// token whose ServiceAccount (and bound object) still exist.
pub fn authenticate(reg: &Registry, token: &str) -> Option<UserInfo> {
    let sa = reg.service_accounts.as_ref()?;
    if token.matches('.').count() != 2 {
        return None;
    }
    let claims = sa.verify(token)?;
    let b = &claims.kubernetes;
    let ns = b.namespace.as_str();
    let live = |plural: &str, ns: Option<&str>, r: &ObjectRef| {
        current_uid(reg, plural, ns, &r.name).as_deref() == Some(r.uid.as_str())
    };
    let bound_ok = live("serviceaccounts", Some(ns), &b.serviceaccount)
        && b.pod.as_ref().is_none_or(|p| live("pods", Some(ns), p))
        && b.secret
            .as_ref()
            .is_none_or(|s| live("secrets", Some(ns), s))
        && b.node.as_ref().is_none_or(|n| live("nodes", None, n));
    bound_ok.then(|| user_of(ns, &b.serviceaccount.name))
}

/// `POST .../serviceaccounts/NAME/token`: a `TokenRequest` answered with a
/// signed token in its status.
pub fn request_token(
    reg: &Registry,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let Some(sa) = reg.service_accounts.as_ref() else {
        return Err(ApiError::internal(
            "this server has no service account signing key",
        ));
    };
    let invalid = |causes| ApiError::invalid("TokenRequest", "authentication.k8s.io", name, causes);
    let sa_uid = current_uid(reg, "serviceaccounts", Some(ns), name)
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => v.as_i64().unwrap_or(0),
    };
    if expiration < MIN_EXPIRATION {
        return Err(invalid(vec![Cause::new(
            "FieldValueInvalid",
            "spec.expirationSeconds",
            format!("Invalid value: {expiration}: may not specify a duration less than 10 minutes"),
        )]));
    }
    if expiration > 1 << 32 {
        return Err(invalid(vec![Cause::new(
            "FieldValueTooLong",
            "spec.expirationSeconds",
            format!(
                "Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
            ),
        )]));
    }
    let mut audiences = kobune_apimachinery::str_list(spec.get("audiences"));
    if audiences.is_empty() {
        audiences.push(ISSUER.to_string());
    }
    let mut bindings = Bindings {
        namespace: ns.to_string(),
        serviceaccount: ObjectRef {
            name: name.to_string(),
            uid: sa_uid,
        },
        pod: None,
        secret: None,
        node: None,
    };
    if let Some(r) = spec.get("boundObjectRef").filter(|r| r.is_object()) {
        let kind = r["kind"].as_str().unwrap_or_default();
        let bound = r["name"].as_str().unwrap_or_default();
        let (plural, scope) = match kind {
            "Pod" => ("pods", Some(ns)),
            "Secret" => ("secrets", Some(ns)),
            "Node" => ("nodes", None),
            _ => {
                return Err(invalid(vec![Cause::new(
                    "FieldValueNotSupported",
                    "spec.boundObjectRef.kind",
                    format!(
                    "Unsupported value: {kind:?}: supported values: \"Pod\", \"Secret\", \"Node\""
                ),
                )]))
            }
        };
        let uid = current_uid(reg, plural, scope, bound)
            .ok_or_else(|| ApiError::not_found(plural, "", bound))?;
        if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty()) {
            if want != uid {
                return Err(ApiError::conflict(
                    plural,
                    "",
                    bound,
                    &format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
        }
        let o = Some(ObjectRef {
            name: bound.to_string(),
            uid,
        });
        match kind {
            "Pod" => bindings.pod = o,
            "Secret" => bindings.secret = o,
            _ => bindings.node = o,
        }
    }
    let now = chrono::Utc::now();
    let exp = now + chrono::Duration::seconds(expiration);
    let claims = Claims {
        iss: ISSUER.into(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        aud: audiences.clone(),
        exp: exp.timestamp(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        kubernetes: bindings,
    };
    let token = sa
        .sign(&claims)
        .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()}
    }))
}

/// The ServiceAccount admission plugin's mutation of a new pod:
/// `serviceAccountName` defaults to `default`, and unless the pod or its
/// ServiceAccount turns automounting off, a `kube-api-access-*` projected
/// volume (token, CA, namespace) is mounted read-only at [`MOUNT_PATH`] in
/// every container that does not mount something there already.
pub fn admit_pod(reg: &Registry, pod: &mut Value, ns: &str) {
    let spec = &mut pod["spec"];
    if !spec.is_object() {
        return;
    }
    let name = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["serviceAccount"].as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    if reg.service_accounts.is_none() || spec["automountServiceAccountToken"] == json!(false) {
        return;
    }
    let sa = reg
        .resources
        .find("", "v1", "serviceaccounts")
        .and_then(|i| reg.cache.get(&i.key(Some(ns), &name)));
    if spec["automountServiceAccountToken"].is_null()
        && sa.is_some_and(|s| s["automountServiceAccountToken"] == json!(false))
    {
        return;
    }
    let mounted = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT_PATH))
    };
    let volume = format!("kube-api-access-{}", crate::registry::random_suffix());
    let mut used = false;
    for field in ["initContainers", "containers"] {
        for c in spec[field].as_array_mut().into_iter().flatten() {
            if mounted(c) || !c.is_object() {
                continue;
            }
            let m = json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH});
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
            used = true;
        }
    }
    if !used {
        return;
    }
    let v = json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}});
    match spec["volumes"].as_array_mut() {
        Some(vs) => vs.push(v),
        None => spec["volumes"] = json!([v]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> (tempfile::TempDir, ServiceAccounts) {
        let dir = tempfile::tempdir().unwrap();
        let sa = ServiceAccounts::load_or_create(dir.path(), "CA").unwrap();
        (dir, sa)
    }

    fn claims(exp_in: i64, aud: &str) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:ns:default".into(),
            aud: vec![aud.into()],
            exp: now + exp_in,
            iat: now,
            nbf: now,
            kubernetes: Bindings {
                namespace: "ns".into(),
                serviceaccount: ObjectRef {
                    name: "default".into(),
                    uid: "u1".into(),
                },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_our_key_and_audience() {
        let (dir, sa) = accounts();
        let good = claims(600, ISSUER);
        let token = sa.sign(&good).unwrap();
        assert_eq!(sa.verify(&token), Some(good));
        // The key persists: a restart verifies tokens issued before it.
        let again = ServiceAccounts::load_or_create(dir.path(), "CA").unwrap();
        assert!(again.verify(&token).is_some());
        assert!(sa.verify(&sa.sign(&claims(-5, ISSUER)).unwrap()).is_none());
        assert!(sa
            .verify(&sa.sign(&claims(600, "vault")).unwrap())
            .is_none());
        let (_d, other) = accounts();
        assert!(other.verify(&token).is_none());
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 3, 'x');
        assert!(sa.verify(&tampered).is_none());
    }

    #[test]
    fn verified_tokens_are_remembered_while_valid() {
        let (_d, sa) = accounts();
        let good = claims(600, ISSUER);
        let token = sa.sign(&good).unwrap();
        assert!(sa.verify(&token).is_some());
        assert_eq!(sa.verified.lock().unwrap().len(), 1);
        // A remembered entry is what the next request gets...
        let key = *sa.verified.lock().unwrap().keys().next().unwrap();
        sa.verified.lock().unwrap().get_mut(&key).unwrap().iat -= 1;
        assert_eq!(sa.verify(&token).unwrap().iat, good.iat - 1);
        // ...until it is past its expiry: then the token is checked again.
        sa.verified.lock().unwrap().get_mut(&key).unwrap().exp -= 1200;
        assert_eq!(sa.verify(&token), Some(good));
        // Refused tokens are not remembered.
        assert!(sa.verify(&sa.sign(&claims(-5, ISSUER)).unwrap()).is_none());
        assert_eq!(sa.verified.lock().unwrap().len(), 1);
    }
}
