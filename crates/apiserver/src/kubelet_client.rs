//! [`HttpKubelet`]: the [`Kubelet`] of a node whose agent runs in another
//! process (`kobune agent`), reached over HTTPS at the kubelet endpoint the
//! Node publishes. The agent's side is `kobune_agent::kubelet_server`.
//!
//! The wire protocol (every request carries `Authorization: Bearer TOKEN`,
//! the cluster's token; errors come back as a Kubernetes `Status` with the
//! HTTP code, which is passed through as an [`ApiError`]):
//!
//! - `POST /containerLogs/{ns}/{pod}[/{container}]?follow&previous&tailLines&sinceSeconds&timestamps&limitBytes`
//!   with the pod object as the JSON body; the answer is the log text,
//!   streamed as it comes.
//! - `POST /streamURL` with `{"pod": POD, "stream": StreamKind}`; the
//!   answer is `{"path": "/cri/..."}`, a one-time path on the agent that
//!   proxies the upgraded connection to its CRI streaming server (which
//!   listens on the agent's loopback only).
//! - `GET /stats/summary`: the node's [`NodeUsage`] as JSON, or `null`.
//!
//! Connections are HTTP/1.1 over TLS, one per request (log follows and
//! streams hold theirs for their whole life anyway).

use crate::kubelet::{Kubelet, LogOptions, NodeUsage, StreamKind};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response};
use hyper_util::rt::TokioIo;
use kobune_apimachinery::status::Cause;
use kobune_apimachinery::ApiError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Time allowed for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a response head (logs, stream URLs) or a whole stats call.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest error or JSON answer read into memory.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// `host:port`, with IPv6 hosts in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Accepts any server certificate (signatures are still checked, so the
/// handshake itself is sound). kube-apiserver does the same with kubelets
/// when it runs without `--kubelet-certificate-authority`: the kubelet's
/// serving certificate is self-signed and the kubelet is found by the
/// address its Node object publishes; the bearer token is what the
/// kubelet checks.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client for kubelets: HTTP/1.1 by ALPN, no certificate check
/// (see [`AnyServerCert`]).
fn connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(cfg))
        })
        .clone()
}

/// Opens a TLS connection to a kubelet within [`CONNECT_TIMEOUT`].
pub async fn dial(host: &str, port: u16) -> Result<TlsStream<TcpStream>, String> {
    let addr = authority(host, port);
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string())
            .map_err(|_| format!("invalid host name {host:?}"))?,
    };
    let connect = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake with {addr}: {e}"))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
}

/// The error a non-2xx answer carries: its `Status` (code, reason,
/// message, details), else the text of the body.
pub fn status_error(code: u16, body: &[u8]) -> ApiError {
    let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = status["reason"].as_str().unwrap_or_default();
    let message = match status["message"].as_str() {
        Some(m) => m.to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(1024)])
            .trim()
            .to_string(),
    };
    let reason = if reason.is_empty() {
        match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        }
    } else {
        reason
    };
    let mut e = ApiError::new(code, reason, message);
    let d = &status["details"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    e.name = text(&d["name"]);
    e.group = text(&d["group"]);
    e.kind = text(&d["kind"]);
    e.retry_after_seconds = d["retryAfterSeconds"].as_u64().map(|s| s as u32);
    e.causes = d["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Cause {
            reason: c["reason"].as_str().unwrap_or_default().to_string(),
            message: c["message"].as_str().unwrap_or_default().to_string(),
            field: c["field"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    e
}

/// Reads a whole body, up to [`MAX_ANSWER`] bytes.
async fn read_all(mut body: Incoming) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > MAX_ANSWER {
                return Err("answer too large".into());
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The agent's path and query for a log request.
pub fn logs_path(ns: &str, pod: &str, opts: &LogOptions) -> String {
    let mut path = format!(
        "/containerLogs/{}/{}",
        percent_encode(ns),
        percent_encode(pod)
    );
    if let Some(c) = opts.container.as_deref().filter(|c| !c.is_empty()) {
        path.push('/');
        path.push_str(&percent_encode(c));
    }
    let mut q = vec![];
    if opts.follow {
        q.push("follow=true".to_string());
    }
    if opts.previous {
        q.push("previous=true".to_string());
    }
    if opts.timestamps {
        q.push("timestamps=true".to_string());
    }
    if let Some(n) = opts.tail_lines {
        q.push(format!("tailLines={n}"));
    }
    if let Some(n) = opts.since_seconds {
        q.push(format!("sinceSeconds={n}"));
    }
    if let Some(n) = opts.limit_bytes {
        q.push(format!("limitBytes={n}"));
    }
    if !q.is_empty() {
        path.push('?');
        path.push_str(&q.join("&"));
    }
    path
}

/// The inverse of [`logs_path`]: namespace, pod name and options of a log
/// request the agent received (404 for other paths, 400 for bad options).
pub fn parse_logs_path(
    path: &str,
    query: Option<&str>,
) -> Result<(String, String, LogOptions), ApiError> {
    let not_found = || ApiError::new(404, "NotFound", format!("no such path {path:?}"));
    let rest = path.strip_prefix("/containerLogs/").ok_or_else(not_found)?;
    let parts: Vec<String> = rest.split('/').map(crate::http::percent_decode).collect();
    let (ns, pod, container) = match parts.as_slice() {
        [ns, pod] => (ns, pod, None),
        [ns, pod, c] => (ns, pod, Some(c.clone())),
        _ => return Err(not_found()),
    };
    if ns.is_empty() || pod.is_empty() {
        return Err(not_found());
    }
    let mut opts = LogOptions {
        container: container.filter(|c| !c.is_empty()),
        ..Default::default()
    };
    for (k, v) in crate::streaming::query_pairs(query) {
        let flag = || match v.as_str() {
            "" | "1" | "t" | "true" | "True" | "TRUE" => Ok(true),
            "0" | "f" | "false" | "False" | "FALSE" => Ok(false),
            _ => Err(ApiError::bad_request(format!("invalid {k}: {v:?}"))),
        };
        let num = || {
            v.parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))
        };
        match k.as_str() {
            "follow" => opts.follow = flag()?,
            "previous" => opts.previous = flag()?,
            "timestamps" => opts.timestamps = flag()?,
            "tailLines" => opts.tail_lines = num()?,
            "sinceSeconds" => opts.since_seconds = num()?,
            "limitBytes" => opts.limit_bytes = num()?,
            _ => {}
        }
    }
    Ok((ns.clone(), pod.clone(), opts))
}

/// A remote node's kubelet API.
pub struct HttpKubelet {
    node: String,
    host: String,
    port: u16,
    token: String,
}

impl HttpKubelet {
    pub fn new(node: &str, host: &str, port: u16, token: &str) -> HttpKubelet {
        HttpKubelet {
            node: node.to_string(),
            host: host.to_string(),
            port,
            token: token.trim().to_string(),
        }
    }

    /// `https://host:port`
    pub fn base_url(&self) -> String {
        format!("https://{}", authority(&self.host, self.port))
    }

    fn unreachable(&self, method: &Method, path: &str, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "node {:?}: {method} \"{}{path}\": {e}",
                self.node,
                self.base_url()
            ),
        )
    }

    /// Sends one request on a new connection; answers other than 2xx
    /// become their `Status`'s error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, ApiError> {
        let tls = dial(&self.host, self.port)
            .await
            .map_err(|e| self.unreachable(&method, path, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.unreachable(&method, path, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, authority(&self.host, self.port))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ApiError::internal(format!("building kubelet request: {e}")))?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.unreachable(&method, path, "timed out waiting for an answer"))?
            .map_err(|e| self.unreachable(&method, path, e))?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(resp);
        }
        let body = read_all(resp.into_body()).await.unwrap_or_default();
        Err(status_error(code, &body))
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let resp = self.call(method.clone(), path, body).await?;
        let data = read_all(resp.into_body())
            .await
            .map_err(|e| self.unreachable(&method, path, e))?;
        serde_json::from_slice(&data).map_err(|e| {
            ApiError::internal(format!(
                "node {:?}: bad answer to {method} {path}: {e}",
                self.node
            ))
        })
    }
}

fn text<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

#[async_trait]
impl Kubelet for HttpKubelet {
    async fn logs(&self, pod: &Value, opts: LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let path = logs_path(
            text(pod, "/metadata/namespace"),
            text(pod, "/metadata/name"),
            &opts,
        );
        let resp = self.call(Method::POST, &path, Some(pod)).await?;
        let (tx, rx) = mpsc::channel(16);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            // Ends (dropping the connection, which the agent sees) when the
            // log does or as soon as the reader leaves, even while the
            // log is quiet.
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = tx.closed() => break,
                };
                let Some(Ok(frame)) = frame else {
                    break;
                };
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn stream_url(&self, pod: &Value, kind: StreamKind) -> Result<String, ApiError> {
        let body = json!({"pod": pod, "stream": kind});
        let answer = self
            .call_json(Method::POST, "/streamURL", Some(&body))
            .await?;
        let path = answer["path"].as_str().filter(|p| p.starts_with('/'));
        let path = path.ok_or_else(|| {
            ApiError::internal(format!(
                "node {:?}: no stream path in the answer to /streamURL",
                self.node
            ))
        })?;
        Ok(format!("{}{path}", self.base_url()))
    }

    async fn stats(&self) -> Option<NodeUsage> {
        let call = self.call_json(Method::GET, "/stats/summary", None);
        match tokio::time::timeout(STATS_TIMEOUT, call).await {
            Ok(Ok(v)) if v.is_null() => None,
            Ok(Ok(v)) => match serde_json::from_value(v) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::debug!(node = %self.node, "bad stats answer: {e}");
                    None
                }
            },
            Ok(Err(e)) => {
                tracing::debug!(node = %self.node, "stats: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(node = %self.node, "stats: timed out");
                None
            }
        }
    }

    fn stream_token(&self) -> Option<String> {
        Some(self.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_carry_the_options() {
        let o = LogOptions {
            container: Some("c 1".into()),
            follow: true,
            tail_lines: Some(3),
            limit_bytes: Some(10),
            ..Default::default()
        };
        assert_eq!(
            logs_path("ns", "p", &o),
            "/containerLogs/ns/p/c%201?follow=true&tailLines=3&limitBytes=10"
        );
        assert_eq!(
            logs_path("ns", "p", &LogOptions::default()),
            "/containerLogs/ns/p"
        );
        let all = LogOptions {
            container: Some("c/x".into()),
            follow: true,
            previous: true,
            timestamps: true,
            tail_lines: Some(0),
            since_seconds: Some(60),
            limit_bytes: Some(1),
        };
        for o in [o, all, LogOptions::default()] {
            let p = logs_path("ns", "p", &o);
            let (path, query) = match p.split_once('?') {
                Some((a, b)) => (a, Some(b)),
                None => (p.as_str(), None),
            };
            assert_eq!(
                parse_logs_path(path, query).unwrap(),
                ("ns".into(), "p".into(), o)
            );
        }
        assert_eq!(
            parse_logs_path("/containerLogs/ns", None).unwrap_err().code,
            404
        );
        assert_eq!(parse_logs_path("/stats", None).unwrap_err().code, 404);
        let e = parse_logs_path("/containerLogs/ns/p", Some("tailLines=x")).unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn status_bodies_become_errors() {
        let body = br#"{"kind":"Status","status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404}"#;
        let e = status_error(404, body);
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (404, "NotFound", "pods \"x\" not found")
        );
        assert_eq!(e.name.as_deref(), Some("x"));
        let e = status_error(502, b"bad gateway\n");
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (502, "InternalError", "bad gateway")
        );
    }

    #[test]
    fn authorities_bracket_ipv6() {
        assert_eq!(authority("10.0.0.1", 10250), "10.0.0.1:10250");
        assert_eq!(authority("::1", 1), "[::1]:1");
    }
}
