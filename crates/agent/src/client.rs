//! A small HTTPS client for the Kubernetes API, used by `kobune agent` on
//! another machine: one HTTP/2 connection over TLS (reopened when it
//! breaks), the server verified against the cluster CA given to the agent,
//! requests authenticated with the cluster's bearer token, JSON bodies, and
//! watch streams decoded event by event.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for the response's head (a watch's head comes
/// at once; its events may take as long as they like).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed call: `code` is the HTTP status, 0 when no response came.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl HttpError {
    fn transport(message: impl Into<String>) -> HttpError {
        HttpError {
            code: 0,
            reason: String::new(),
            message: message.into(),
        }
    }

    /// The error a non-2xx response carries (a `Status` body, or its text).
    fn from_response(code: u16, body: &[u8]) -> HttpError {
        let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        HttpError {
            code,
            reason: status["reason"].as_str().unwrap_or_default().to_string(),
            message: status["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(text),
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.reason.as_str()) {
            (0, _) => write!(f, "{}", self.message),
            (c, "") => write!(f, "HTTP {c}: {}", self.message),
            (c, r) => write!(f, "HTTP {c} {r}: {}", self.message),
        }
    }
}

impl std::error::Error for HttpError {}

/// Host and port of an `https://HOST[:PORT][/]` server URL (port 6443 by default).
pub fn parse_server(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("--server must be an https:// URL, got {url:?}"))?;
    let authority = rest.trim_end_matches('/');
    anyhow::ensure!(
        !authority.is_empty() && !authority.contains('/'),
        "--server must be https://HOST[:PORT] without a path, got {url:?}"
    );
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("unterminated IPv6 address in {url:?}"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("bad port {p:?} in {url:?}"))?,
        None => 6443,
    };
    anyhow::ensure!(!host.is_empty(), "no host in {url:?}");
    Ok((host, port))
}

/// An authenticated connection to one API server.
pub struct ApiClient {
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    token: String,
    tls: TlsConnector,
    conn: Slot,
    /// Numbers connections, so a failed one can be dropped from the slot.
    opened: std::sync::atomic::AtomicU64,
}

/// A connection's request handle, with the connection's number.
type Numbered = (u64, SendRequest<Full<Bytes>>);

/// The shared connection.
#[derive(Clone, Default)]
struct Slot(Arc<tokio::sync::Mutex<Option<Numbered>>>);

impl Slot {
    /// Stops handing out connection `id` (a stream on it failed): hyper may
    /// still take requests on a connection that is going away and never
    /// answer them.
    async fn discard(&self, id: u64) {
        let mut slot = self.0.lock().await;
        if slot.as_ref().is_some_and(|(i, _)| *i == id) {
            *slot = None;
        }
    }
}

impl ApiClient {
    /// `ca_pem`: the cluster CA (PEM) the server's certificate must chain to.
    pub fn new(server: &str, token: &str, ca_pem: &[u8]) -> anyhow::Result<ApiClient> {
        let (host, port) = parse_server(server)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| anyhow::anyhow!("reading the CA certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("using the CA certificate: {e}"))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "no PEM certificate in the server CA file"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|_| anyhow::anyhow!("invalid server host name {host:?}"))?,
        };
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(ApiClient {
            host,
            port,
            authority,
            server_name,
            token: token.to_string(),
            tls: TlsConnector::from(Arc::new(cfg)),
            conn: Slot::default(),
            opened: Default::default(),
        })
    }

    /// `https://HOST:PORT`.
    pub fn server(&self) -> String {
        format!("https://{}", self.authority)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let server = self.server();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| HttpError::transport(format!("connecting to {server}: timed out")))?
        .map_err(|e| HttpError::transport(format!("connecting to {server}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| HttpError::transport(format!("TLS handshake with {server}: timed out")))?
        .map_err(|e| {
            HttpError::transport(format!(
                "TLS handshake with {server} failed: {e} (is --server-ca the server's CA, DATA_DIR/tls/ca.crt?)"
            ))
        })?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HttpError::transport(format!(
                "{server} did not negotiate HTTP/2"
            )));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| HttpError::transport(format!("HTTP/2 handshake with {server}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("API server connection closed: {e}");
            }
        });
        Ok(sender)
    }

    async fn sender(&self, fresh: bool) -> Result<Numbered, HttpError> {
        let mut conn = self.conn.0.lock().await;
        if let Some(s) = conn.as_ref().filter(|(_, s)| !fresh && !s.is_closed()) {
            return Ok(s.clone());
        }
        *conn = None;
        tracing::trace!("connecting to {}", self.server());
        let s = self.connect().await?;
        let id = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *conn = Some((id, s.clone()));
        Ok((id, s))
    }

    /// Sends one request; a broken connection is reopened and the request
    /// sent once more.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, HttpError> {
        Ok(self.send_on(method, path, content_type, body).await?.1)
    }

    /// [`ApiClient::send`], also naming the connection it went over.
    async fn send_on(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(u64, Response<Incoming>), HttpError> {
        let mut last = None;
        for attempt in 0..2 {
            let (id, mut sender) =
                match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.sender(attempt > 0)).await {
                    Ok(s) => s?,
                    Err(_) => {
                        return Err(HttpError::transport(format!(
                            "{method} {path}: no connection to {} within {}s",
                            self.server(),
                            (CONNECT_TIMEOUT * 2).as_secs()
                        )))
                    }
                };
            tracing::trace!("{method} {path}: sending (attempt {attempt})");
            let mut req = Request::builder()
                .method(method.clone())
                .uri(format!("https://{}{path}", self.authority))
                .header("authorization", format!("Bearer {}", self.token))
                .header("accept", "application/json")
                .header(
                    "user-agent",
                    concat!("kobune-agent/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| HttpError::transport(format!("building request: {e}")))?;
            let sent = tokio::time::timeout(RESPONSE_TIMEOUT, async {
                sender.ready().await?;
                sender.send_request(req).await
            })
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                self.conn.discard(id).await;
            }
            match sent {
                Ok(Ok(resp)) => return Ok((id, resp)),
                Ok(Err(e)) => last = Some(HttpError::transport(format!("{method} {path}: {e}"))),
                Err(_) => {
                    last = Some(HttpError::transport(format!(
                        "{method} {path}: no response within {}s",
                        RESPONSE_TIMEOUT.as_secs()
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| HttpError::transport("request failed")))
    }

    /// A JSON call: the decoded body of a 2xx response, else the error.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, HttpError> {
        let bytes = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let ct = body.is_some().then_some(content_type);
        let (conn, resp) = self.send_on(method, path, ct, bytes).await?;
        let status = resp.status().as_u16();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.conn.discard(conn).await;
                return Err(HttpError::transport(format!("reading {path}: {e}")));
            }
        };
        if !(200..300).contains(&status) {
            return Err(HttpError::from_response(status, &body));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|e| HttpError::transport(format!("decoding {path}: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, HttpError> {
        self.json(Method::GET, path, "", None).await
    }

    /// Opens a watch (`path` has `watch=true`); events arrive from the stream.
    pub async fn watch(&self, path: &str) -> Result<WatchStream, HttpError> {
        let (conn, resp) = self.send_on(Method::GET, path, None, Bytes::new()).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(HttpError::from_response(status, &body));
        }
        Ok(WatchStream {
            body: resp.into_body(),
            buf: Vec::new(),
            slot: self.conn.clone(),
            conn,
        })
    }
}

/// The events of one watch response, decoded as they arrive.
pub struct WatchStream {
    body: Incoming,
    buf: Vec<u8>,
    slot: Slot,
    conn: u64,
}

/// Takes the first complete JSON value from `buf` (values may be separated
/// by newlines or nothing); `Ok(None)` when more bytes are needed.
pub fn take_event(buf: &mut Vec<u8>) -> Result<Option<Value>, serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => {
            buf.clear();
            Ok(None)
        }
        Some(Ok(v)) => {
            let used = it.byte_offset();
            buf.drain(..used);
            Ok(Some(v))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

impl WatchStream {
    /// The next event, `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<Value, HttpError>> {
        loop {
            match take_event(&mut self.buf) {
                Ok(Some(v)) => return Some(Ok(v)),
                Ok(None) => {}
                Err(e) => return Some(Err(HttpError::transport(format!("bad watch event: {e}")))),
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => {
                    self.slot.discard(self.conn).await;
                    return Some(Err(HttpError::transport(format!("watch: {e}"))));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server("https://127.0.0.1:6444").unwrap(),
            ("127.0.0.1".into(), 6444)
        );
        assert_eq!(
            parse_server("https://k.example/").unwrap(),
            ("k.example".into(), 6443)
        );
        assert_eq!(parse_server("https://[::1]:7").unwrap(), ("::1".into(), 7));
        assert!(parse_server("http://127.0.0.1:6443").is_err());
        assert!(parse_server("https://h:6443/api").is_err());
        assert!(parse_server("https://h:x").is_err());
        assert!(parse_server("https://").is_err());
    }

    #[test]
    fn watch_events_split_across_frames() {
        let mut buf = br#"{"type":"ADDED","object":{"a":1}}
{"type":"MOD"#
            .to_vec();
        let ev = take_event(&mut buf).unwrap().unwrap();
        assert_eq!(ev["object"]["a"], 1);
        assert!(take_event(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"IFIED\",\"object\":{}}\n{\"type\":\"BOOKMARK\"}");
        assert_eq!(take_event(&mut buf).unwrap().unwrap()["type"], "MODIFIED");
        assert_eq!(take_event(&mut buf).unwrap().unwrap()["type"], "BOOKMARK");
        assert!(take_event(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        let mut bad = b"{\"type\": ]".to_vec();
        assert!(take_event(&mut bad).is_err());
    }

    #[test]
    fn errors_carry_the_status() {
        let e = HttpError::from_response(
            401,
            br#"{"kind":"Status","reason":"Unauthorized","message":"Unauthorized","code":401}"#,
        );
        assert_eq!(e.code, 401);
        assert_eq!(e.to_string(), "HTTP 401 Unauthorized: Unauthorized");
        let e = HttpError::from_response(502, b"bad gateway");
        assert_eq!(e.to_string(), "HTTP 502: bad gateway");
    }

    /// A CA and a serving certificate for 127.0.0.1 signed by it (PEM).
    fn pki() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_pem, leaf.pem(), key.serialize_pem())
    }

    /// An HTTP/2 TLS server on 127.0.0.1 that wants `Bearer secret`, answers
    /// GET /ok with JSON and GET /watch with two events in three chunks.
    async fn serve(cert: String, key: String) -> u16 {
        use hyper::body::Frame;
        use rustls_pki_types::PrivateKeyDer;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        type B =
                            http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
                        let full = |s: &'static str| -> B { Full::new(Bytes::from(s)).boxed() };
                        let authorized = req.headers().get("authorization")
                            == Some(&hyper::header::HeaderValue::from_static("Bearer secret"));
                        let resp = if !authorized {
                            Response::builder().status(401).body(full(
                                r#"{"kind":"Status","reason":"Unauthorized","message":"Unauthorized","code":401}"#,
                            ))
                        } else if req.uri().path() == "/watch" {
                            let chunks = [
                                "{\"type\":\"ADDED\",\"object\":{\"n\":",
                                "1}}\n{\"type\":\"DEL",
                                "ETED\",\"object\":{}}\n",
                            ];
                            let frames = futures_frames(
                                chunks
                                    .iter()
                                    .map(|c| Frame::data(Bytes::from(*c)))
                                    .collect(),
                            );
                            Response::builder().status(200).body(frames)
                        } else {
                            Response::builder().status(200).body(full(r#"{"ok":true}"#))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        port
    }

    /// A body sending `frames` one by one.
    fn futures_frames(
        frames: Vec<hyper::body::Frame<Bytes>>,
    ) -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for f in frames {
                let _ = tx.send(Ok(f)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    }

    #[tokio::test]
    async fn talks_to_a_tls_server_with_the_token() {
        let (ca, cert, key) = pki();
        let port = serve(cert, key).await;
        let url = format!("https://127.0.0.1:{port}");
        let c = ApiClient::new(&url, "secret", ca.as_bytes()).unwrap();
        assert_eq!(c.get("/ok").await.unwrap()["ok"], true);
        let mut w = c.watch("/watch").await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap()["object"]["n"], 1);
        assert_eq!(w.next().await.unwrap().unwrap()["type"], "DELETED");
        assert!(w.next().await.is_none());
        let bad = ApiClient::new(&url, "wrong", ca.as_bytes()).unwrap();
        let e = bad.get("/ok").await.unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
        let (other_ca, _, _) = pki();
        let untrusting = ApiClient::new(&url, "secret", other_ca.as_bytes()).unwrap();
        let e = untrusting.get("/ok").await.unwrap_err();
        assert_eq!(e.code, 0);
        assert!(
            e.message.contains("TLS handshake") && e.message.contains("--server-ca"),
            "{e}"
        );
    }

    #[test]
    fn client_needs_a_ca_and_token() {
        assert!(ApiClient::new("https://127.0.0.1:1", "t", b"not a pem").is_err());
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .unwrap()
            .cert
            .pem();
        assert!(ApiClient::new("https://127.0.0.1:1", " ", ca.as_bytes()).is_err());
        let c = ApiClient::new("https://localhost:1/", "t", ca.as_bytes()).unwrap();
        assert_eq!(c.server(), "https://localhost:1");
    }
}
