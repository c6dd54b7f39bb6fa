//! The kubelet API of a node agent running in its own process (`kobune
//! agent`): the API server reaches what lives on the node (container
//! logs, exec/attach/port-forward streams, resource usage) over HTTPS, as
//! kube-apiserver reaches a kubelet on port 10250. The client is
//! `kobune_apiserver::kubelet_client::HttpKubelet`, which documents the
//! wire protocol; this side serves it around any [`Kubelet`].
//!
//! - TLS with a self-signed certificate made at start (rcgen); the API
//!   server does not check it, as kube-apiserver without
//!   `--kubelet-certificate-authority` does not.
//! - Every path but `/healthz` needs `Authorization: Bearer TOKEN` (the
//!   cluster's token); anything else gets a 401 `Status`.
//! - The pod objects come in the request bodies (the API server has just
//!   read them), so the agent needs no lookup of its own.
//! - The CRI streaming server listens on the agent's loopback, so
//!   `POST /streamURL` answers with a one-time `/cri/...` path on this
//!   server; a request there (within a minute) is replayed at the CRI URL
//!   and, on `101`, spliced to it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kobune_apimachinery::ApiError;
use kobune_apiserver::http::{error_response, Body};
use kobune_apiserver::kubelet::{Kubelet, StreamKind};
use kobune_apiserver::kubelet_client::parse_logs_path;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest request body (a pod object), as the API server's limit.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How long a `/cri/...` path handed out stays usable (containerd's
/// streaming tokens expire after a minute too).
const STREAM_PATH_TTL: Duration = Duration::from_secs(60);

struct State {
    token: String,
    kubelet: Arc<dyn Kubelet>,
    /// `/cri/...` path -> (CRI streaming URL, when it was handed out)
    streams: Mutex<HashMap<String, (String, Instant)>>,
}

/// Serves the kubelet API for `kubelet` on `listener` until the returned
/// task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    kubelet: std::sync::Arc<dyn kobune_apiserver::kubelet::Kubelet>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "the kubelet API needs a token");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&listener)?));
    let state = Arc::new(State {
        token,
        kubelet,
        streams: Mutex::default(),
    });
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("kubelet API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(t)) => t,
                    _ => return,
                };
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }))
}

/// A self-signed serving certificate for this host and the listener's address.
fn tls_config(listener: &tokio::net::TcpListener) -> anyhow::Result<rustls::ServerConfig> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(addr) = listener.local_addr() {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let key = rcgen::generate_simple_self_signed(names)?;
    let chain = vec![CertificateDer::from(key.cert.der().to_vec())];
    let pkey = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, pkey)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("valid response")
}

/// A response body fed by a channel of chunks (a log as it grows).
struct ChunkBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| kobune_apiserver::auth::from_token(t.trim(), &state.token).is_some())
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return Response::builder()
            .status(StatusCode::OK)
            .body(Full::new(Bytes::from_static(b"ok")).boxed())
            .expect("valid response");
    }
    if !authorized(state, &req) {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    match route(state, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, p) if p.starts_with("/containerLogs/") => {
            let (ns, name, opts) = parse_logs_path(p, req.uri().query())?;
            let pod = read_json(req).await?;
            let meta = |f: &str| pod["metadata"][f].as_str().unwrap_or_default().to_string();
            if meta("namespace") != ns || meta("name") != name {
                return Err(ApiError::bad_request(format!(
                    "the pod in the body is not {ns}/{name}"
                )));
            }
            let rx = state.kubelet.logs(&pod, opts).await?;
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(ChunkBody(rx).boxed())
                .expect("valid response"))
        }
        (Method::POST, "/streamURL") => {
            let body = read_json(req).await?;
            let kind: StreamKind = serde_json::from_value(body["stream"].clone())
                .map_err(|e| ApiError::bad_request(format!("bad stream: {e}")))?;
            if !body["pod"].is_object() {
                return Err(ApiError::bad_request("the body has no pod"));
            }
            let url = state.kubelet.stream_url(&body["pod"], kind).await?;
            let served = stream_path(&url)?;
            let now = Instant::now();
            let mut streams = state.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.retain(|_, (_, at)| now.duration_since(*at) < STREAM_PATH_TTL);
            streams.insert(served.clone(), (url, now));
            Ok(json_response(200, &json!({ "path": served })))
        }
        (_, p) if p.starts_with("/cri/") => {
            let key = match req.uri().query() {
                Some(q) => format!("{p}?{q}"),
                None => p.to_string(),
            };
            let found = state
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
                .filter(|(_, at)| at.elapsed() < STREAM_PATH_TTL);
            let Some((url, _)) = found else {
                return Err(ApiError::new(404, "NotFound", "unknown or expired stream"));
            };
            kobune_apiserver::streaming::proxy_upgrade(&url, None, req).await
        }
        (Method::GET, "/stats/summary") => {
            let usage = state.kubelet.stats().await;
            let v = serde_json::to_value(&usage)
                .map_err(|e| ApiError::internal(format!("encoding stats: {e}")))?;
            Ok(json_response(200, &v))
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource {path:?}"),
        )),
    }
}

/// The `/cri/...` path that stands for a CRI streaming URL.
fn stream_path(url: &str) -> Result<String, ApiError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| ApiError::internal(format!("bad streaming URL {url:?}")))?;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Ok(format!("/cri{pq}"))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new(413, "RequestEntityTooLarge", e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use kobune_apiserver::kubelet::{ContainerUsage, LogOptions, NodeUsage, PodUsage};
    use kobune_apiserver::kubelet_client::HttpKubelet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    const TOKEN: &str = "s3cret-token";

    /// A node whose log is three lines (and, when followed, a fourth once
    /// the test opens the gate), whose streams go to `cri`, and whose
    /// usage is fixed.
    struct Fake {
        cri: String,
        usage: NodeUsage,
        gate: Mutex<Option<oneshot::Receiver<()>>>,
        left: Mutex<Option<oneshot::Sender<()>>>,
        seen: Mutex<Vec<(Value, LogOptions)>>,
    }

    #[async_trait]
    impl Kubelet for Fake {
        async fn logs(
            &self,
            pod: &Value,
            opts: LogOptions,
        ) -> Result<mpsc::Receiver<Bytes>, ApiError> {
            self.seen.lock().unwrap().push((pod.clone(), opts.clone()));
            if opts.container.as_deref() == Some("missing") {
                return Err(ApiError::bad_request(
                    "container missing is not valid for pod p",
                ));
            }
            let lines = ["one\n", "two\n", "three\n"];
            let skip = match opts.tail_lines {
                Some(n) => lines.len().saturating_sub(n.max(0) as usize),
                None => 0,
            };
            let (tx, rx) = mpsc::channel(4);
            tx.send(Bytes::from(lines[skip..].concat())).await.unwrap();
            if opts.follow {
                let gate = self.gate.lock().unwrap().take();
                let left = self.left.lock().unwrap().take();
                tokio::spawn(async move {
                    if let Some(g) = gate {
                        let _ = g.await;
                    }
                    if tx.send(Bytes::from_static(b"four\n")).await.is_err() {
                        return;
                    }
                    // Follows end when the client leaves.
                    tx.closed().await;
                    if let Some(l) = left {
                        let _ = l.send(());
                    }
                });
            }
            Ok(rx)
        }

        async fn stream_url(&self, pod: &Value, kind: StreamKind) -> Result<String, ApiError> {
            if pod["metadata"]["name"] == "gone" {
                let mut e = ApiError::new(404, "NotFound", "pods \"gone\" not found");
                e.name = Some("gone".into());
                e.kind = Some("pods".into());
                return Err(e);
            }
            let StreamKind::Exec { command, .. } = kind else {
                return Err(ApiError::bad_request("only exec here"));
            };
            Ok(format!("{}/exec/{}", self.cri, command.join("-")))
        }

        async fn stats(&self) -> Option<NodeUsage> {
            Some(self.usage.clone())
        }
    }

    fn usage() -> NodeUsage {
        let ts = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        NodeUsage {
            timestamp: ts,
            window: Duration::from_millis(10_250),
            cpu_nanocores: 123_456_789,
            memory_working_set_bytes: 42 << 20,
            pods: vec![PodUsage {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u-1".into(),
                timestamp: ts,
                window: Duration::from_secs(10),
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    cpu_nanocores: 5_000_000,
                    memory_working_set_bytes: 1 << 20,
                }],
            }],
        }
    }

    /// A stand-in for containerd's streaming server: answers an upgrade
    /// of `/exec/...` with 101 (telling the path in a header), then echoes.
    async fn cri_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut head = vec![];
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if c.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let upgrade = head.to_ascii_lowercase().contains("upgrade: spdy/3.1");
                    let leaked_token = head.contains(TOKEN);
                    if !path.starts_with("/exec/") || !upgrade || leaked_token {
                        let _ = c
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
                            .await;
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Path: {path}\r\n\r\n"
                    );
                    c.write_all(resp.as_bytes()).await.unwrap();
                    let (mut r, mut w) = c.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        format!("http://{addr}")
    }

    struct Setup {
        fake: Arc<Fake>,
        client: HttpKubelet,
        port: u16,
        gate: Option<oneshot::Sender<()>>,
        left: Option<oneshot::Receiver<()>>,
        _server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            self._server.abort();
        }
    }

    async fn setup() -> Setup {
        let (gate_tx, gate_rx) = oneshot::channel();
        let (left_tx, left_rx) = oneshot::channel();
        let fake = Arc::new(Fake {
            cri: cri_server().await,
            usage: usage(),
            gate: Mutex::new(Some(gate_rx)),
            left: Mutex::new(Some(left_tx)),
            seen: Mutex::default(),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = serve(l, TOKEN.into(), fake.clone()).await.unwrap();
        Setup {
            client: HttpKubelet::new("n1", "127.0.0.1", port, TOKEN),
            fake,
            port,
            gate: Some(gate_tx),
            left: Some(left_rx),
            _server: server,
        }
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"namespace": "ns1", "name": name, "uid": "u-1"},
               "spec": {"containers": [{"name": "c"}]}})
    }

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> Option<Bytes> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a chunk or the end in time")
    }

    #[tokio::test]
    async fn logs_with_tail_lines_and_follow() {
        let mut s = setup().await;
        let o = LogOptions {
            container: Some("c".into()),
            tail_lines: Some(2),
            timestamps: true,
            ..Default::default()
        };
        let mut rx = s.client.logs(&pod("p"), o.clone()).await.unwrap();
        let mut all = vec![];
        while let Some(b) = next(&mut rx).await {
            all.extend_from_slice(&b);
        }
        assert_eq!(all, b"two\nthree\n");
        let (seen_pod, seen_opts) = s.fake.seen.lock().unwrap()[0].clone();
        assert_eq!(seen_pod, pod("p"));
        assert_eq!(seen_opts, o);

        // Followed: the first chunk arrives before the log grows, the next
        // once it does, and the agent sees the client leave.
        let o = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut rx = s.client.logs(&pod("p"), o).await.unwrap();
        assert_eq!(next(&mut rx).await.unwrap(), "one\ntwo\nthree\n");
        s.gate.take().unwrap().send(()).unwrap();
        assert_eq!(next(&mut rx).await.unwrap(), "four\n");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), s.left.take().unwrap())
            .await
            .expect("the follow ends when the client leaves")
            .unwrap();
    }

    #[tokio::test]
    async fn errors_pass_through_with_their_code() {
        let s = setup().await;
        let o = LogOptions {
            container: Some("missing".into()),
            ..Default::default()
        };
        let e = s.client.logs(&pod("p"), o).await.unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (
                400,
                "BadRequest",
                "container missing is not valid for pod p"
            )
        );
        let exec = StreamKind::Exec {
            command: vec!["ls".into()],
            container: None,
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let e = s.client.stream_url(&pod("gone"), exec).await.unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
        assert_eq!(e.name.as_deref(), Some("gone"));
        assert_eq!(e.kind.as_deref(), Some("pods"));
        let e = s
            .client
            .stream_url(&pod("p"), StreamKind::PortForward { ports: vec![80] })
            .await
            .unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (400, "only exec here"));
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_401() {
        let s = setup().await;
        let bad = HttpKubelet::new("n1", "127.0.0.1", s.port, "not-the-token");
        let e = bad
            .logs(&pod("p"), LogOptions::default())
            .await
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
        assert_eq!(bad.stats().await, None);
        assert!(s.fake.seen.lock().unwrap().is_empty());

        // Without any Authorization header, straight over TLS.
        let tls = kobune_apiserver::kubelet_client::dial("127.0.0.1", s.port)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = |p: &str| {
            Request::get(p)
                .header(header::HOST, "x")
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let resp = send.send_request(get("/stats/summary")).await.unwrap();
        assert_eq!(resp.status(), 401);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["code"].as_u64()),
            (Some("Status"), Some(401))
        );
        let resp = send.send_request(get("/healthz")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn stats_round_trip() {
        let s = setup().await;
        assert_eq!(s.client.stats().await, Some(usage()));
        // A node that is not listening yields no stats, and in time.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = l.local_addr().unwrap().port();
        drop(l);
        let gone = HttpKubelet::new("n2", "127.0.0.1", closed, TOKEN);
        assert_eq!(gone.stats().await, None);
        let e = gone
            .logs(&pod("p"), LogOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, 503);
        assert!(e.message.contains("n2"), "{}", e.message);
    }

    /// The whole exec path: a client's upgrade to an API server
    /// (`streaming::serve` with the `HttpKubelet`), on to the agent's
    /// one-time `/cri/...` path, on to the CRI streaming server, and the
    /// bytes echoed back through all three.
    #[tokio::test]
    async fn exec_stream_is_proxied_through_the_agent() {
        let s = setup().await;
        let exec = StreamKind::Exec {
            command: vec!["sh".into(), "x".into()],
            container: Some("c".into()),
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let url = s.client.stream_url(&pod("p"), exec).await.unwrap();
        assert_eq!(url, format!("https://127.0.0.1:{}/cri/exec/sh-x", s.port));

        // A stand-in API server on plain HTTP/1.1.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = l.local_addr().unwrap();
        let kubelet: Arc<dyn Kubelet> =
            Arc::new(HttpKubelet::new("n1", "127.0.0.1", s.port, TOKEN));
        let api_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let kubelet = kubelet.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let kubelet = kubelet.clone();
                        async move {
                            let r =
                                kobune_apiserver::streaming::serve(kubelet, &pod("p"), "exec", req)
                                    .await;
                            Ok::<_, Infallible>(r.unwrap_or_else(|e| error_response(&e)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });

        let mut c = TcpStream::connect(api).await.unwrap();
        c.write_all(
            b"POST /api/v1/namespaces/ns1/pods/p/exec?command=echo&command=hi&stdin=true&stdout=true HTTP/1.1\r\n\
              Host: api\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = vec![];
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut b).await.unwrap(), 1, "{head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        c.write_all(b"ping over three hops").await.unwrap();
        let mut echo = [0u8; 20];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"ping over three hops");
        api_task.abort();
    }

    #[tokio::test]
    async fn stream_paths_are_one_time() {
        let s = setup().await;
        let exec = StreamKind::Exec {
            command: vec!["once".into()],
            container: None,
            stdin: false,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let url = s.client.stream_url(&pod("p"), exec).await.unwrap();
        let path = url
            .split_once(&format!(":{}", s.port))
            .unwrap()
            .1
            .to_string();
        let upgrade = |bearer: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
                 Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let status_of = |req: String| async move {
            let mut tls = kobune_apiserver::kubelet_client::dial("127.0.0.1", s.port)
                .await
                .unwrap();
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 12];
            tls.read_exact(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[9..12]).to_string()
        };
        assert_eq!(status_of(upgrade("wrong")).await, "401");
        assert_eq!(status_of(upgrade(TOKEN)).await, "101");
        assert_eq!(status_of(upgrade(TOKEN)).await, "404");
    }
}
