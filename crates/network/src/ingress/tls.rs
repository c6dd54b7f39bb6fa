//! Serving certificates chosen by SNI: the `kubernetes.io/tls` Secrets
//! named in the served Ingresses' `spec.tls`, and a generated self-signed
//! certificate for every other host.

use super::routes::host_matches;
use base64::Engine;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::sync::{Arc, RwLock};

/// Certificates by host pattern (exact or `*.domain`), first match wins.
#[derive(Debug, Default)]
pub struct CertTable {
    pub entries: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertTable {
    pub fn find(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.to_ascii_lowercase();
        // Exact names before wildcards.
        self.entries
            .iter()
            .find(|(p, _)| !p.starts_with("*.") && *p == host)
            .or_else(|| self.entries.iter().find(|(p, _)| host_matches(p, &host)))
            .map(|(_, c)| c.clone())
    }
}

#[derive(Debug)]
pub struct Resolver {
    pub table: RwLock<Arc<CertTable>>,
    pub fallback: Arc<CertifiedKey>,
}

impl Resolver {
    pub fn new() -> anyhow::Result<Resolver> {
        Ok(Resolver {
            table: RwLock::default(),
            fallback: Arc::new(self_signed()?),
        })
    }

    pub fn set(&self, t: CertTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
    }

    pub fn for_host(&self, host: Option<&str>) -> Arc<CertifiedKey> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        host.and_then(|h| t.find(h))
            .unwrap_or_else(|| self.fallback.clone())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_host(hello.server_name()))
    }
}

/// The default certificate, as ingress-nginx's "Fake Certificate".
fn self_signed() -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_string()])?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Kobune Ingress Controller Default Certificate",
    );
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Loads a `kubernetes.io/tls` Secret's `tls.crt` chain and `tls.key`.
pub fn from_secret(secret: &Value) -> Result<CertifiedKey, String> {
    let ty = secret
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ty != "kubernetes.io/tls" {
        return Err(format!("has type {ty:?}, not kubernetes.io/tls"));
    }
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let b64 = secret
            .pointer(&format!("/data/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("has no {k}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{k}: {e}"))
    };
    let crt = field("tls.crt")?;
    let key = field("tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(ck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(host: &str) -> Value {
        let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        let b = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        json!({"type": "kubernetes.io/tls", "data": {
            "tls.crt": b(c.cert.pem()), "tls.key": b(c.signing_key.serialize_pem())}})
    }

    #[test]
    fn certificates_by_sni() {
        let r = Resolver::new().unwrap();
        let a = Arc::new(from_secret(&secret("a.example.com")).unwrap());
        let w = Arc::new(from_secret(&secret("*.example.com")).unwrap());
        r.set(CertTable {
            entries: vec![
                ("*.example.com".into(), w.clone()),
                ("a.example.com".into(), a.clone()),
            ],
        });
        assert!(Arc::ptr_eq(&r.for_host(Some("A.example.com")), &a));
        assert!(Arc::ptr_eq(&r.for_host(Some("b.example.com")), &w));
        assert!(Arc::ptr_eq(&r.for_host(Some("other.org")), &r.fallback));
        assert!(Arc::ptr_eq(&r.for_host(None), &r.fallback));
        let mut bad = secret("x");
        bad["type"] = json!("Opaque");
        assert!(from_secret(&bad).unwrap_err().contains("Opaque"));
        let mut mismatched = secret("x");
        mismatched["data"]["tls.key"] = secret("y")["data"]["tls.key"].clone();
        assert!(from_secret(&mismatched).is_err());
    }
}
