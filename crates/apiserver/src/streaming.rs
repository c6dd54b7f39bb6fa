//! `pods/exec`, `pods/attach` and `pods/portforward`: as kube-apiserver
//! does with a kubelet whose runtime has its own streaming server, the
//! node's kubelet hands out a one-time URL (CRI `Exec`/`Attach`/
//! `PortForward`) and the client's upgrade request is replayed there; on
//! `101 Switching Protocols` the two connections are spliced untouched
//! (WebSocket channel protocols and SPDY/3.1 alike), and any other answer
//! is passed back so the client can fall back to its next protocol.
//! A node whose agent runs in another process hands out an `https://` URL
//! on the agent itself ([`crate::kubelet_client`]), dialed over TLS with
//! the cluster's bearer token; the agent proxies on to its CRI streaming
//! server with [`proxy_upgrade`].

use crate::http::Body;
use crate::kubelet::{Kubelet, StreamKind};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kobune_apimachinery::ApiError;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to the streaming server (plain TCP or TLS).
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Largest response head accepted from the streaming server.
const MAX_HEAD: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers that make up the upgrade handshake.
const REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
    "origin",
];

/// Response headers of a successful handshake passed back to the client.
const RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// `key=value` pairs of a query string, decoded, in order, repeats kept.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (
                crate::http::percent_decode(k),
                crate::http::percent_decode(v),
            ),
            None => (crate::http::percent_decode(p), String::new()),
        })
        .collect()
}

fn parse_bool(v: &str) -> Result<bool, ApiError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "strconv.ParseBool: parsing {v:?}: invalid syntax"
        ))),
    }
}

/// The session a `pods/{sub}` request asks for, from its query.
pub fn stream_kind(sub: &str, query: &[(String, String)]) -> Result<StreamKind, ApiError> {
    let mut command = vec![];
    let mut ports = vec![];
    let mut container = None;
    let (mut stdin, mut stdout, mut stderr, mut tty) = (false, false, false, false);
    for (k, v) in query {
        match k.as_str() {
            "command" => command.push(v.clone()),
            "container" => container = Some(v.clone()).filter(|c| !c.is_empty()),
            "stdin" => stdin = parse_bool(v)?,
            "stdout" => stdout = parse_bool(v)?,
            "stderr" => stderr = parse_bool(v)?,
            "tty" => tty = parse_bool(v)?,
            "ports" => {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    let port: i32 = p.trim().parse().map_err(|_| {
                        ApiError::bad_request(format!("unable to parse {p:?} as a port"))
                    })?;
                    if !(1..=65535).contains(&port) {
                        return Err(ApiError::bad_request(format!(
                            "port {port} must be > 0 and < 65536"
                        )));
                    }
                    ports.push(port);
                }
            }
            _ => {}
        }
    }
    if sub != "portforward" && !(stdin || stdout || stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    Ok(match sub {
        "exec" => StreamKind::Exec {
            command,
            container,
            stdin,
            stdout,
            stderr,
            tty,
        },
        "attach" => StreamKind::Attach {
            container,
            stdin,
            stdout,
            stderr,
            tty,
        },
        _ => StreamKind::PortForward { ports },
    })
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
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

/// A parsed streaming URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `path?query`
    path: String,
}

impl Target {
    fn addr(&self) -> String {
        crate::kubelet_client::authority(&self.host, self.port)
    }
}

/// Splits `http[s]://host:port/path?query`.
fn split_url(url: &str) -> Result<Target, ApiError> {
    let bad = || ApiError::new(500, "InternalError", format!("bad streaming URL {url:?}"));
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("unsupported streaming URL {url:?}"),
            ))
        }
    };
    let auth = uri.authority().ok_or_else(bad)?;
    let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        path,
    })
}

/// A parsed HTTP/1.1 response head.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Head { status, headers })
}

fn upstream_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "InternalError", format!("error dialing backend: {e}"))
}

/// Reads a response head; returns it and any bytes read past it.
async fn read_head(conn: &mut Box<dyn Conn>) -> Result<(Head, Vec<u8>), ApiError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_head(&buf[..end])
                .ok_or_else(|| upstream_error("malformed response from streaming server"))?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(upstream_error("response head too large"));
        }
        let n = tokio::time::timeout(CONNECT_TIMEOUT, conn.read(&mut chunk))
            .await
            .map_err(|_| upstream_error("timed out waiting for the streaming server"))?
            .map_err(upstream_error)?;
        if n == 0 {
            return Err(upstream_error("streaming server closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves an exec/attach/portforward request by proxying its upgrade to
/// the node's streaming server.
pub async fn serve(
    kubelet: Arc<dyn Kubelet>,
    pod: &Value,
    sub: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !is_upgrade(&req) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let query = query_pairs(req.uri().query());
    let kind = stream_kind(sub, &query)?;
    let url = kubelet.stream_url(pod, kind).await?;
    proxy_upgrade(&url, kubelet.stream_token().as_deref(), req).await
}

/// Replays the client's upgrade request at `url` (`http://`, or
/// `https://` with `bearer` as its `Authorization`, the server's
/// certificate not checked, see [`crate::kubelet_client`]) and, on `101`,
/// splices the two connections; any other answer is passed back.
pub async fn proxy_upgrade(
    url: &str,
    bearer: Option<&str>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let target = split_url(url)?;
    let addr = target.addr();
    let mut conn: Box<dyn Conn> = if target.tls {
        Box::new(
            crate::kubelet_client::dial(&target.host, target.port)
                .await
                .map_err(upstream_error)?,
        )
    } else {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| upstream_error(format!("dial tcp {addr}: i/o timeout")))?
            .map_err(|e| upstream_error(format!("dial tcp {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        Box::new(tcp)
    };

    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method(),
        target.path,
        addr
    );
    if let (true, Some(token)) = (target.tls, bearer) {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for name in REQUEST_HEADERS {
        for v in req.headers().get_all(*name) {
            if let Ok(v) = v.to_str() {
                head.push_str(&format!("{name}: {v}\r\n"));
            }
        }
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    conn.write_all(head.as_bytes())
        .await
        .map_err(upstream_error)?;
    let (resp_head, leftover) = read_head(&mut conn).await?;

    if resp_head.status != 101 {
        return Ok(passthrough(resp_head, leftover, conn).await);
    }

    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in &resp_head.headers {
        if RESPONSE_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                resp = resp.header(k, v);
            }
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("stream upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut conn).await;
        let _ = client.shutdown().await;
        let _ = conn.shutdown().await;
    });
    Ok(resp
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response"))
}

/// Passes a refused handshake back to the client (status and body), so it
/// can fall back to its next protocol.
async fn passthrough(head: Head, mut body: Vec<u8>, mut conn: Box<dyn Conn>) -> Response<Body> {
    let want = head
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = head
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked && want.is_none_or(|n| body.len() < n) {
        let limit = want.unwrap_or(MAX_HEAD);
        let mut chunk = [0u8; 4096];
        while body.len() < limit {
            match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        body.truncate(limit);
    }
    if chunked {
        body = Vec::new();
    }
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = Response::builder().status(status);
    if let Some(ct) = head.get("content-type") {
        resp = resp.header(header::CONTENT_TYPE, ct);
    }
    resp.body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        query_pairs(Some(s))
    }

    #[test]
    fn exec_query_keeps_repeated_commands() {
        let k = stream_kind(
            "exec",
            &q("command=sh&command=-c&command=echo+a%20b&container=c&stdout=true&stderr=1&tty=false"),
        )
        .unwrap();
        assert_eq!(
            k,
            StreamKind::Exec {
                command: vec!["sh".into(), "-c".into(), "echo a b".into()],
                container: Some("c".into()),
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false,
            }
        );
        assert!(stream_kind("exec", &q("command=ls")).is_err());
        assert!(stream_kind("attach", &q("stdout=maybe")).is_err());
    }

    #[test]
    fn portforward_ports() {
        assert_eq!(
            stream_kind("portforward", &q("ports=80,8080&ports=9090")).unwrap(),
            StreamKind::PortForward {
                ports: vec![80, 8080, 9090]
            }
        );
        assert_eq!(
            stream_kind("portforward", &q("")).unwrap(),
            StreamKind::PortForward { ports: vec![] }
        );
        assert!(stream_kind("portforward", &q("ports=0")).is_err());
    }

    #[test]
    fn urls_and_heads() {
        let t = split_url("http://127.0.0.1:4321/exec/abc").unwrap();
        assert_eq!(
            (t.tls, t.addr(), t.path.as_str()),
            (false, "127.0.0.1:4321".into(), "/exec/abc")
        );
        let t = split_url("http://[::1]:80/x?y=1").unwrap();
        assert_eq!((t.addr(), t.path.as_str()), ("[::1]:80".into(), "/x?y=1"));
        let t = split_url("https://h/cri/exec/x").unwrap();
        assert_eq!(
            (t.tls, t.addr(), t.path.as_str()),
            (true, "h:443".into(), "/cri/exec/x")
        );
        assert!(split_url("ftp://h/x").is_err());
        let h = parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: v4.channel.k8s.io").unwrap();
        assert_eq!(h.status, 101);
        assert_eq!(h.get("sec-websocket-protocol"), Some("v4.channel.k8s.io"));
        assert!(parse_head(b"garbage").is_none());
    }
}
