//! The Kubernetes API server: HTTPS with client-certificate and token
//! authentication in front of the generic [`registry`], which reads through
//! the watch [`cache`] and writes to a [`kobune_store::Store`].

// ApiError mirrors the wire Status (about 160 bytes); errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod audit;
pub mod auth;
pub mod binding;
pub mod cache;
pub mod conversion;
pub mod discovery;
pub mod eviction;
pub mod http;
pub mod kubelet;
pub mod kubelet_client;
pub mod metrics;
pub mod openapi;
pub mod openapi_pb;
pub mod pki;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod serviceaccount;
pub mod strategy;
pub mod streaming;
pub mod table;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kobune_store::Store;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub use registry::Registry;

pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tls_sans: Vec<String>,
    pub token: Option<String>,
    pub service_cidr: String,
    pub datastore_endpoint: String,
    /// Events kept for watches resuming from a resourceVersion.
    pub watch_cache_size: usize,
    /// Where to write the audit log, if anywhere.
    pub audit: Option<audit::Config>,
    /// What new pods tolerate of not-ready and unreachable nodes.
    pub default_tolerations: admission::DefaultTolerations,
}

pub struct ApiServer {
    pub registry: Arc<Registry>,
    /// Node agents the API server forwards log (and later exec) requests to.
    pub kubelets: Arc<kubelet::Kubelets>,
    pub pki: Arc<pki::Pki>,
    state: Arc<http::ApiState>,
    tls: Arc<rustls::ServerConfig>,
    listen: SocketAddr,
}

/// Parses `10.43.0.0/16`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, bits) = s.split_once('/').context("CIDR needs a /prefix")?;
    let bits: u8 = bits.parse().context("CIDR prefix")?;
    anyhow::ensure!(
        (8..=30).contains(&bits),
        "CIDR prefix must be between /8 and /30"
    );
    Ok((ip.parse().context("CIDR address")?, bits))
}

fn tls_config(pki: &pki::Pki) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

impl ApiServer {
    /// Opens the store, loads the cache and PKI, and creates the default objects.
    pub async fn new(cfg: &Config, store: Arc<dyn Store>) -> Result<ApiServer> {
        let pki = Arc::new(pki::Pki::ensure(
            &cfg.data_dir.join("tls"),
            &cfg.tls_sans,
            cfg.token.as_deref(),
        )?);
        let cache = cache::Cache::start(store.clone(), cfg.watch_cache_size)
            .await
            .map_err(|e| anyhow::anyhow!("starting watch cache: {e}"))?;
        let resources = Arc::new(resources::Resources::new());
        let registry = Arc::new(Registry {
            store: store.clone(),
            cache,
            resources: resources.clone(),
            service_cidr: parse_cidr(&cfg.service_cidr)?,
            service_accounts: Some(Arc::new(serviceaccount::ServiceAccounts::load_or_create(
                &cfg.data_dir.join("tls"),
                &pki.ca_cert_pem,
            )?)),
            default_tolerations: cfg.default_tolerations,
        });
        let kubelets = Arc::new(kubelet::Kubelets::default());
        let state = Arc::new(http::ApiState {
            kubelets: kubelets.clone(),
            registry: registry.clone(),
            resources,
            openapi: openapi::OpenApi::default(),
            admin_token: pki.token.clone(),
            server_address: cfg.listen.to_string(),
            audit: cfg.audit.as_ref().map(audit::Auditor::start).transpose()?,
        });
        let tls = Arc::new(tls_config(&pki)?);
        let server = ApiServer {
            registry,
            kubelets,
            pki,
            state,
            tls,
            listen: cfg.listen,
        };
        server.bootstrap().await?;
        server.follow_crds();
        kobune_store::spawn_compactor(store, std::time::Duration::from_secs(300), 10_000);
        Ok(server)
    }

    /// Default namespaces, RBAC policy and the `kubernetes` Service, as a
    /// fresh cluster has.
    async fn bootstrap(&self) -> Result<()> {
        let reg = &self.registry;
        let ns = reg
            .resources
            .find("", "v1", "namespaces")
            .expect("built in");
        let opts = registry::WriteOptions {
            field_manager: Some("kobune".into()),
            ..Default::default()
        };
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match reg.create(&ns, None, obj, &opts).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => anyhow::bail!("creating namespace {name}: {e}"),
            }
        }
        for (plural, obj) in rbac::bootstrap_policy() {
            let info = reg
                .resources
                .find(rbac::GROUP, "v1", plural)
                .expect("built in");
            match reg.create(&info, None, obj.clone(), &opts).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                    let existing = reg.get(&info, None, name).await?;
                    match rbac::reconcile_default(&existing, &obj) {
                        rbac::Reconcile::Keep => {}
                        rbac::Reconcile::Update(v) => {
                            tracing::info!(%plural, %name, "adding what the default policy grants");
                            reg.update(&info, None, name, v, &opts, None).await?;
                        }
                        rbac::Reconcile::Recreate => {
                            tracing::info!(%plural, %name, "replacing a default binding whose roleRef differs");
                            reg.delete(&info, None, name, &Default::default()).await?;
                            reg.create(&info, None, obj, &opts).await?;
                        }
                    }
                }
                Err(e) => anyhow::bail!("creating the default {plural}: {e}"),
            }
        }
        let svc = reg.resources.find("", "v1", "services").expect("built in");
        let obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": reg.kubernetes_service_ip(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.listen.port()}]}
        });
        match reg.create(&svc, Some("default"), obj, &opts).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => anyhow::bail!("creating the kubernetes service: {e}"),
        }
        Ok(())
    }

    /// Publishes `ip` and the API port as the `kubernetes` Service's
    /// endpoints (Endpoints and EndpointSlice), as kube-apiserver's
    /// endpoint reconciler does with its advertise address, so pods reach
    /// the API at `kubernetes.default.svc`.
    pub async fn publish_endpoints(&self, ip: std::net::Ipv4Addr) -> Result<()> {
        let reg = &self.registry;
        let port = self.listen.port();
        let opts = registry::WriteOptions {
            field_manager: Some("kobune".into()),
            ..Default::default()
        };
        let labels = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
            "subsets": [{"addresses": [{"ip": ip.to_string()}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
        });
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        });
        for (group, plural, want, fields) in [
            ("", "endpoints", endpoints, &["subsets"][..]),
            (
                "discovery.k8s.io",
                "endpointslices",
                slice,
                &["endpoints", "ports"][..],
            ),
        ] {
            let info = reg
                .resources
                .find(group, "v1", plural)
                .context("built in")?;
            match reg.get(&info, Some("default"), "kubernetes").await {
                Ok(old) if fields.iter().all(|f| old[*f] == want[*f]) => {}
                Ok(old) => {
                    let mut obj = want;
                    obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                    reg.update(&info, Some("default"), "kubernetes", obj, &opts, None)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("updating {plural} default/kubernetes: {e}")
                        })?;
                }
                Err(e) if e.code == 404 => {
                    reg.create(&info, Some("default"), want, &opts)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("creating {plural} default/kubernetes: {e}")
                        })?;
                }
                Err(e) => anyhow::bail!("reading {plural} default/kubernetes: {e}"),
            }
        }
        Ok(())
    }

    /// Serves the versions of established CRDs as they come and go.
    fn follow_crds(&self) {
        let reg = self.registry.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let prefix = "/registry/apiextensions.k8s.io/customresourcedefinitions/".to_string();
        if reg.cache.spawn_forward(prefix.clone(), tx).is_err() {
            return;
        }
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let (crds, _) = reg.cache.list(&prefix, None);
                let crds: Vec<_> = crds.into_iter().map(|(_, v)| v).collect();
                reg.resources.set_crds(&crds);
            }
        });
    }

    /// Accepts connections until the process ends.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(target: "kobune_apiserver::tls", %peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| auth::from_certificate(c.as_ref()));
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let user = user.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::handle(state, req, user, peer).await,
                        )
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }
}
