//! The cluster's certificates: a CA made on first start, a serving
//! certificate for the API server's names, and the admin client
//! certificate and bearer token written into the kubeconfig.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    ca_key_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The admin bearer token (also accepted from agents joining with `--token`).
    pub token: String,
}

pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn read_pair(dir: &Path, name: &str) -> Option<(String, String)> {
    let cert = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some((cert, key))
}

fn leaf_params(cn: &str, orgs: &[&str], days: i64) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    let now = time_now();
    p.not_before = now - std::time::Duration::from_secs(3600);
    p.not_after = now + std::time::Duration::from_secs(days as u64 * 86400);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(p)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing. The serving
    /// certificate is re-issued on every start so new `--tls-san`s apply.
    pub fn ensure(dir: &Path, sans: &[String], token: Option<&str>) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let (ca_cert_pem, ca_key_pem) = match read_pair(dir, "ca") {
            Some(p) => p,
            None => {
                let key = KeyPair::generate()?;
                let mut p = CertificateParams::new(Vec::<String>::new())?;
                p.distinguished_name.push(DnType::CommonName, "kobune-ca");
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let now = time_now();
                p.not_before = now - std::time::Duration::from_secs(3600);
                p.not_after = now + std::time::Duration::from_secs(3650 * 86400);
                let cert = p.self_signed(&key)?;
                write_private(&dir.join("ca.key"), &key.serialize_pem())?;
                std::fs::write(dir.join("ca.crt"), cert.pem())?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_key_pem,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            token: String::new(),
        };
        // Serving certificate for every name the server answers to.
        let mut params = leaf_params("kobune-apiserver", &[], 365)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(h.trim().to_string());
        }
        names.extend(sans.iter().cloned());
        names.sort();
        names.dedup();
        params.subject_alt_names = names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let (cert, key) = pki.issue(params)?;
        pki.serving_cert_pem = cert;
        pki.serving_key_pem = key;
        write_private(&dir.join("serving.key"), &pki.serving_key_pem)?;
        std::fs::write(dir.join("serving.crt"), &pki.serving_cert_pem)?;

        let (admin_cert, admin_key) = match read_pair(dir, "admin") {
            Some(p) => p,
            None => {
                let (c, k) = pki.issue_client("admin", &["system:masters"])?;
                write_private(&dir.join("admin.key"), &k)?;
                std::fs::write(dir.join("admin.crt"), &c)?;
                (c, k)
            }
        };
        pki.admin_cert_pem = admin_cert;
        pki.admin_key_pem = admin_key;

        let token_path = dir.join("token");
        pki.token = match (token, std::fs::read_to_string(&token_path)) {
            (Some(t), _) => t.to_string(),
            (None, Ok(t)) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                use rand::Rng;
                let bytes: [u8; 24] = rand::rng().random();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        write_private(&token_path, &pki.token)?;
        Ok(pki)
    }

    fn issue(&self, params: CertificateParams) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `user` in `groups`, signed by the cluster CA.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<(String, String)> {
        let mut params = leaf_params(user, groups, 365)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A kubeconfig for the admin, pointing at `server`.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kobune\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: kobune\n  context:\n    cluster: kobune\n    user: admin\n    namespace: default\ncurrent-context: kobune\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\npreferences: {{}}\n",
            b64(&self.ca_cert_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }
}
