//! The listeners and the forwarding: HTTP/1.1 and HTTP/2 (ALPN) from
//! clients, HTTP/1.1 to the upstream pods over pooled connections, with
//! round robin over the ready endpoints, a retry on another endpoint when
//! an idempotent request cannot connect or loses its connection before a
//! response, X-Forwarded-* headers, body size limits, read timeouts and
//! Upgrade (WebSocket) passthrough.

use super::routes::Matched;
use super::Controller;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn client() -> Client {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
    conn.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(conn)
}

/// What a connection knows about itself.
#[derive(Clone, Copy)]
pub(super) struct Conn {
    pub(super) remote: SocketAddr,
    pub(super) https: bool,
    pub(super) port: u16,
}

/// Accepts connections until the controller drains.
pub async fn serve(ctl: Arc<Controller>, listener: tokio::net::TcpListener, https: bool) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let acceptor = https.then(|| {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(ctl.certs.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let mut draining = ctl.draining.subscribe();
    // Counted, so a drain waits until this loop has stopped accepting.
    let _accepting = ctl.in_flight.enter();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = draining.wait_for(|d| *d) => return,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("ingress accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            remote,
            https,
            port,
        };
        let ctl = ctl.clone();
        let acceptor = acceptor.clone();
        let busy = ctl.in_flight.enter();
        tokio::spawn(async move {
            let _busy = busy;
            match acceptor {
                Some(acc) => {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await
                    {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            serve_conn(ctl, TokioIo::new(tls), conn).await;
                        } else {
                            serve_h1(ctl, tls, conn).await;
                        }
                    }
                }
                None => serve_h1(ctl, tcp, conn).await,
            }
        });
    }
}

/// The HTTP/1.1 fast path first; hyper for whatever it declines.
async fn serve_h1<S>(ctl: Arc<Controller>, mut io: S, conn: Conn)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match super::h1::serve(&ctl, &mut io, conn).await {
        super::h1::Outcome::Done => {}
        super::h1::Outcome::Fallback(pre) => {
            serve_conn(ctl, TokioIo::new(super::h1::Rewind::new(pre, io)), conn).await
        }
    }
}

async fn serve_conn<I>(ctl: Arc<Controller>, io: I, conn: Conn)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut draining = ctl.draining.subscribe();
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = answered.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (ctl, done) = (ctl.clone(), done.clone());
        async move {
            let http1 = req.version() < Version::HTTP_2;
            let mut resp = handle(&ctl, req, conn).await;
            // Draining: an HTTP/1 answer says the connection closes after it.
            if http1 && ctl.is_draining() {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(served);
    tokio::select! {
        biased;
        _ = served.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    // Draining: a connection that has not answered a request yet (the one
    // it was handed over for, or a new HTTP/2 one) answers one first, then
    // it finishes what is in flight and closes.
    while !answered.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::select! {
            biased;
            _ = served.as_mut() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `host[:port]` → host (lowercase, brackets kept for IPv6).
pub fn strip_port(authority: &str) -> String {
    host_part(authority).to_ascii_lowercase()
}

/// `host[:port]` → host as written (brackets kept for IPv6).
pub fn host_part(authority: &str) -> &str {
    let a = authority.trim();
    if a.starts_with('[') {
        a.split_inclusive(']').next().unwrap_or(a)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => a,
        }
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in HOP_BY_HOP.iter().copied().map(String::from).chain(named) {
        h.remove(n.as_str());
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The headers sent upstream: the client's end-to-end headers, Host as the
/// client sent it, and the X-Forwarded-* set (the client's own are
/// replaced, as ingress-nginx does by default).
fn upstream_headers(req: &Request<Incoming>, authority: &str, conn: Conn) -> HeaderMap {
    let mut h = req.headers().clone();
    strip_hop_by_hop(&mut h);
    // The body is read before it is forwarded, so 100-continue is answered here.
    h.remove(header::EXPECT);
    let ip = conn.remote.ip().to_string();
    let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(&mut h, "host", authority);
    set(&mut h, "x-forwarded-for", &ip);
    set(&mut h, "x-real-ip", &ip);
    set(
        &mut h,
        "x-forwarded-proto",
        if conn.https { "https" } else { "http" },
    );
    set(&mut h, "x-forwarded-host", authority);
    set(&mut h, "x-forwarded-port", &conn.port.to_string());
    h
}

fn from_upstream(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Clients get this proxy's HTTP version, whatever the upstream spoke.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

async fn handle(ctl: &Controller, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let host = strip_port(&authority);
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let snap = ctl.snapshot();
    let Some(Matched { backend, ingress }) = snap.routes.lookup(&host, &path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("404 Not Found: no Ingress rule matches host {host:?} and path {path:?}"),
        );
    };
    if !conn.https && ingress.settings.ssl_redirect && ingress.has_tls_for(&host) {
        let port = ctl.https_port();
        let location = if port == 443 {
            format!("https://{host}{path_and_query}")
        } else {
            format!("https://{host}:{port}{path_and_query}")
        };
        let mut r = text(
            StatusCode::PERMANENT_REDIRECT,
            format!("redirecting to {location}"),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let endpoints = match snap.upstreams.get(&backend) {
        Some(Ok(e)) => e.clone(),
        None => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("503 Service Unavailable: service {backend} is not resolved yet"),
            )
        }
        Some(Err(u)) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("503 Service Unavailable: {}", u.message),
            )
        }
    };
    let headers = upstream_headers(&req, &authority, conn);
    let start = ctl.next_index(&backend, endpoints.len());
    let timeout = ingress.settings.read_timeout;
    if is_upgrade(&req) {
        return upgrade(req, endpoints[start], headers, &path_and_query, timeout).await;
    }
    let method = req.method().clone();
    let limit = ingress.settings.body_limit;
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 Request Entity Too Large: the body exceeds {} bytes (annotation kobune.io/proxy-body-size on ingress {}/{})",
                limit.unwrap_or_default(),
                ingress.namespace,
                ingress.name
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if let (Some(l), Some(d)) = (limit, declared) {
        if d > l {
            linger(body);
            return too_large();
        }
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    if limit.is_some_and(|l| (buf.len() + data.len()) as u64 > l) {
                        linger(body);
                        return too_large();
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("400 Bad Request: reading the request body: {e}"),
                )
            }
        }
    }
    let bytes = Bytes::from(buf);
    let attempts = if idempotent(&method) {
        endpoints.len().min(3)
    } else {
        1
    };
    let mut last_error = String::new();
    for i in 0..attempts {
        let ep = endpoints[(start + i) % endpoints.len()];
        let mut up = Request::new(Full::new(bytes.clone()));
        *up.method_mut() = method.clone();
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = headers.clone();
        match format!("http://{ep}{path_and_query}").parse() {
            Ok(uri) => *up.uri_mut() = uri,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}")),
        }
        match tokio::time::timeout(timeout, ctl.client.request(up)).await {
            Ok(Ok(resp)) => return from_upstream(resp),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!("ingress: connecting to {ep} for {backend}: {e:?}");
                last_error = format!("connecting to {ep}: {e}");
            }
            // The connection broke before a response head (e.g. a pod that
            // is shutting down closed it): like nginx's proxy_next_upstream
            // error, an idempotent request is tried on the next endpoint.
            Ok(Err(e)) if idempotent(&method) => {
                tracing::debug!("ingress: upstream {ep} for {backend}: {e:?}");
                last_error = format!("upstream {ep}: {e}");
            }
            Ok(Err(e)) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("502 Bad Gateway: upstream {ep} of service {backend}: {e}"),
                )
            }
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "504 Gateway Timeout: upstream {ep} of service {backend} did not answer within {}s",
                        timeout.as_secs()
                    ),
                )
            }
        }
    }
    text(
        StatusCode::BAD_GATEWAY,
        format!("502 Bad Gateway: service {backend}: {last_error}"),
    )
}

/// Reads and discards the rest of a rejected body for a while (nginx's
/// lingering close), so the client, still sending, gets to read the answer
/// instead of a connection reset.
fn linger(mut body: Incoming) {
    const MAX: usize = 64 << 20;
    tokio::spawn(async move {
        let mut seen = 0usize;
        let drain = async {
            while let Some(Ok(f)) = body.frame().await {
                seen += f.data_ref().map_or(0, |d| d.len());
                if seen > MAX {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

const LINGER: Duration = Duration::from_secs(30);

/// Passes an Upgrade request (WebSocket and the like) to one endpoint and,
/// once it switches protocols, copies bytes both ways.
async fn upgrade(
    mut req: Request<Incoming>,
    ep: SocketAddr,
    mut headers: HeaderMap,
    path_and_query: &str,
    timeout: Duration,
) -> Response<Body> {
    let bad_gateway = |e: String| {
        text(
            StatusCode::BAD_GATEWAY,
            format!("502 Bad Gateway: upstream {ep}: {e}"),
        )
    };
    for name in [header::UPGRADE, header::CONNECTION] {
        if let Some(v) = req.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let client_side = hyper::upgrade::on(&mut req);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(ep)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return bad_gateway(e.to_string()),
        Err(_) => return bad_gateway("connect timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => return bad_gateway(e.to_string()),
        };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut up = Request::new(Empty::new());
    *up.method_mut() = req.method().clone();
    *up.headers_mut() = headers;
    match path_and_query.parse() {
        Ok(uri) => *up.uri_mut() = uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}")),
    }
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return bad_gateway(e.to_string()),
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("504 Gateway Timeout: upstream {ep} did not answer the upgrade"),
            )
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return from_upstream(resp);
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        if let (Ok(c), Ok(u)) = tokio::join!(client_side, upstream_side) {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_hop_by_hop_headers() {
        assert_eq!(strip_port("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("shop.example.com"), "shop.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        assert!(idempotent(&Method::GET) && !idempotent(&Method::POST));
    }
}
