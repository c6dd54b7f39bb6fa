//! `webapp`: the project's test web application, built by build.rs into a
//! static binary (std only, `-C target-feature=+crt-static`) and shipped as
//! the images `kobune.local/webapp:v1` and `kobune.local/webapp:v2`.
//!
//! Environment: `PORT` (default 8080), `WORKERS` (fixed thread pool,
//! default 4), `VERSION` (set by the image), `DRAIN_SECONDS` (default 5),
//! `GRPC_PORT` (the gRPC health server, default 9090; 0 turns it off).
//!
//! Endpoints (GET, HEAD or POST):
//! - `/` -> `webapp <version> <hostname>`
//! - `/version` -> the version
//! - `/healthz` -> 200
//! - `/readyz` -> 200, or 503 when made unready (`/readyz/fail`, undone by
//!   `/readyz/ok`) or while draining
//! - `/metrics` -> Prometheus text: `http_requests_total`,
//!   `webapp_workers`, `webapp_idle_workers`, `webapp_busy_workers`
//!   (the scrape itself is not counted as busy), `webapp_ready`
//! - `/burn?ms=N` burns CPU for N ms; `/sleep?ms=N` holds a worker N ms
//! - `/grpc/fail` and `/grpc/ok` switch the gRPC health status between
//!   `NOT_SERVING` and `SERVING`
//!
//! On `GRPC_PORT` it speaks the gRPC Health Checking Protocol over
//! plaintext HTTP/2 (prior knowledge, as gRPC clients and the kubelet's
//! gRPC probes connect): every request is answered as
//! `grpc.health.v1.Health/Check` (request headers are not decoded) for the
//! services `""` and `"webapp"` (others: `NOT_FOUND`), `SERVING` unless
//! made `NOT_SERVING` or draining.
//!
//! On SIGTERM (or SIGINT) it becomes unready, keeps serving for
//! `DRAIN_SECONDS` (answering `Connection: close`, so keep-alive clients
//! move to other pods while it still serves), then stops taking new
//! requests, lets in-flight ones finish and exits 0.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest accepted request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest accepted request body (read and discarded).
const MAX_BODY: usize = 1 << 20;
/// How long an idle keep-alive connection is kept open.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);
/// Upper bound for /burn and /sleep.
const MAX_HOLD_MS: u64 = 600_000;

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

extern "C" fn on_terminate(_signum: i32) {
    TERMINATED.store(true, Ordering::SeqCst);
}

/// Shared server state: configuration and counters.
pub struct State {
    pub version: String,
    pub hostname: String,
    pub workers: usize,
    pub busy: AtomicUsize,
    pub requests: AtomicU64,
    /// Made unready through /readyz/fail.
    pub unready: AtomicBool,
    /// gRPC health answers NOT_SERVING (through /grpc/fail).
    pub grpc_not_serving: AtomicBool,
    /// SIGTERM received: /readyz answers 503 and responses close their
    /// connections.
    pub draining: AtomicBool,
    /// The drain period is over: no new connections, idle ones closed.
    pub closing: AtomicBool,
}

impl State {
    pub fn new(version: &str, hostname: &str, workers: usize) -> State {
        State {
            version: version.to_string(),
            hostname: hostname.to_string(),
            workers,
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            unready: AtomicBool::new(false),
            grpc_not_serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// HTTP/1.1 or later (keep-alive by default).
    pub http11: bool,
    pub keep_alive: bool,
    pub content_length: usize,
}

/// Why a request head could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Answer with this status and close the connection.
    Status(u16, &'static str),
}

/// Parses one request head from the start of `buf`. `Ok(None)`: more bytes
/// are needed. `Ok(Some((req, n)))`: the head is `n` bytes long.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(ParseError::Status(431, "request header too large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| ParseError::Status(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Status(400, "malformed request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(ParseError::Status(505, "HTTP version not supported")),
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(ParseError::Status(400, "malformed request line"));
    }
    let mut keep_alive = http11;
    let mut content_length = 0usize;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(ParseError::Status(400, "malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ParseError::Status(400, "bad Content-Length"))?;
            if content_length > MAX_BODY {
                return Err(ParseError::Status(413, "request body too large"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Status(
                411,
                "chunked request bodies are not supported",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            http11,
            keep_alive,
            content_length,
        },
        end + 4,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of query parameter `key`.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A response: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn hold_ms(req: &Request) -> Result<u64, Response> {
    match query_param(&req.query, "ms").map(str::parse::<u64>) {
        None => Ok(100),
        Some(Ok(ms)) if ms <= MAX_HOLD_MS => Ok(ms),
        _ => Err(Response::text(
            400,
            format!("ms must be an integer from 0 to {MAX_HOLD_MS}\n"),
        )),
    }
}

/// Burns CPU on this thread for `d`.
fn burn(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while start.elapsed() < d {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    std::hint::black_box(x)
}

/// Answers one request. The caller counts it as busy while this runs.
pub fn handle(req: &Request, st: &State) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    if !matches!(req.method.as_str(), "GET" | "HEAD" | "POST") {
        return Response::text(405, "method not allowed\n");
    }
    match req.path.as_str() {
        "/" => Response::text(200, format!("webapp {} {}\n", st.version, st.hostname)),
        "/version" => Response::text(200, format!("{}\n", st.version)),
        "/healthz" | "/livez" => Response::text(200, "ok\n"),
        "/readyz" => {
            if st.draining.load(Ordering::SeqCst) {
                Response::text(503, "draining\n")
            } else if st.unready.load(Ordering::SeqCst) {
                Response::text(503, "not ready\n")
            } else {
                Response::text(200, "ok\n")
            }
        }
        "/readyz/fail" => {
            st.unready.store(true, Ordering::SeqCst);
            Response::text(200, "now unready\n")
        }
        "/readyz/ok" => {
            st.unready.store(false, Ordering::SeqCst);
            Response::text(200, "now ready\n")
        }
        "/grpc/fail" => {
            st.grpc_not_serving.store(true, Ordering::SeqCst);
            Response::text(200, "gRPC health now NOT_SERVING\n")
        }
        "/grpc/ok" => {
            st.grpc_not_serving.store(false, Ordering::SeqCst);
            Response::text(200, "gRPC health now SERVING\n")
        }
        "/metrics" => {
            // This scrape is not counted as a busy worker.
            let busy = st.busy.load(Ordering::SeqCst).saturating_sub(1);
            let idle = st.workers.saturating_sub(busy);
            let ready = !st.draining.load(Ordering::SeqCst) && !st.unready.load(Ordering::SeqCst);
            let body = format!(
                "# HELP http_requests_total Requests answered since start.\n\
                 # TYPE http_requests_total counter\n\
                 http_requests_total {}\n\
                 # HELP webapp_workers Size of the worker pool.\n\
                 # TYPE webapp_workers gauge\n\
                 webapp_workers {}\n\
                 # HELP webapp_idle_workers Workers not handling a request.\n\
                 # TYPE webapp_idle_workers gauge\n\
                 webapp_idle_workers {idle}\n\
                 # HELP webapp_busy_workers Workers handling a request (this scrape excluded).\n\
                 # TYPE webapp_busy_workers gauge\n\
                 webapp_busy_workers {busy}\n\
                 # HELP webapp_ready Whether /readyz answers 200.\n\
                 # TYPE webapp_ready gauge\n\
                 webapp_ready {}\n",
                st.requests.load(Ordering::Relaxed),
                st.workers,
                u8::from(ready),
            );
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            }
        }
        "/burn" => match hold_ms(req) {
            Ok(ms) => {
                burn(Duration::from_millis(ms));
                Response::text(200, format!("burned {ms} ms\n"))
            }
            Err(r) => r,
        },
        "/sleep" => match hold_ms(req) {
            Ok(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Response::text(200, format!("slept {ms} ms\n"))
            }
            Err(r) => r,
        },
        _ => Response::text(404, "not found\n"),
    }
}

/// Serialises a response. `head_only` (HEAD) leaves out the body but keeps
/// its Content-Length.
pub fn render(resp: &Response, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
    out
}

/// Counts a worker busy for as long as it lives.
struct BusyGuard<'a>(&'a State);

impl<'a> BusyGuard<'a> {
    fn new(st: &'a State) -> Self {
        st.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(st)
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client connection and the bytes read from it but not yet used
/// (pipelined requests).
pub struct Conn<S> {
    pub stream: S,
    pub buf: Vec<u8>,
}

/// Serves the requests of a connection that has input, until none is left
/// buffered. Returns whether the connection stays open (to wait, idle and
/// holding no worker, for its next request).
pub fn serve_ready<S: Read + Write>(conn: &mut Conn<S>, st: &State) -> bool {
    let _busy = BusyGuard::new(st);
    let mut chunk = [0u8; 4096];
    let mut served = false;
    loop {
        if served && conn.buf.is_empty() {
            return true;
        }
        let parsed = match parse_request(&conn.buf) {
            Ok(Some(p)) => p,
            Ok(None) => {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
                continue;
            }
            Err(ParseError::Status(code, msg)) => {
                let resp = Response::text(code, format!("{msg}\n"));
                let _ = conn.stream.write_all(&render(&resp, false, false));
                return false;
            }
        };
        let (req, head_len) = parsed;
        // Read and discard the body.
        let total = head_len + req.content_length;
        while conn.buf.len() < total {
            match conn.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        conn.buf.drain(..total);
        let resp = handle(&req, st);
        // Draining: every answer closes its connection, so clients reconnect
        // (to another endpoint) while this pod still serves, instead of
        // finding their idle keep-alive connection closed at the end.
        let keep_alive = req.keep_alive && !st.draining.load(Ordering::SeqCst);
        if conn
            .stream
            .write_all(&render(&resp, keep_alive, req.method == "HEAD"))
            .and_then(|_| conn.stream.flush())
            .is_err()
        {
            return false;
        }
        if !keep_alive {
            return false;
        }
        served = true;
    }
}

// ---------------------------------------------------------------------------
// gRPC health over HTTP/2 (RFC 9113 framing, RFC 7541 header encoding).

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` values.
pub const GRPC_SERVING: u64 = 1;
pub const GRPC_NOT_SERVING: u64 = 2;

/// The health status of `service`, or a gRPC error (code, message).
pub fn grpc_health(st: &State, service: &str) -> Result<u64, (u32, &'static str)> {
    if !service.is_empty() && service != "webapp" {
        return Err((5, "unknown service"));
    }
    if st.draining.load(Ordering::SeqCst) || st.grpc_not_serving.load(Ordering::SeqCst) {
        Ok(GRPC_NOT_SERVING)
    } else {
        Ok(GRPC_SERVING)
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE's default).
const H2_MAX_FRAME: usize = 16_384;
/// The largest request body kept per stream (a health request is a name).
const H2_MAX_BODY: usize = 16_384;
/// Streams one connection may have open (announced in our SETTINGS).
const H2_MAX_STREAMS: usize = 100;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const PROTOCOL_ERROR: u32 = 1;
const STREAM_CLOSED: u32 = 5;
const FRAME_SIZE_ERROR: u32 = 6;
const REFUSED_STREAM: u32 = 7;

/// One HTTP/2 frame: 9-byte header and payload.
fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the high bits.
fn hpack_int(out: &mut Vec<u8>, n: u32, first: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A header field "literal without indexing" with a new name.
fn hpack_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// `:status: 200` (static table entry 8) and `content-type:
/// application/grpc` (a literal with the static table's name 31).
fn grpc_response_head(out: &mut Vec<u8>) {
    out.push(0x80 | 8);
    hpack_int(out, 4, 0, 31);
    hpack_str(out, "application/grpc");
}

/// Reads a protobuf varint at `*i`.
fn pb_varint(buf: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `service` field (1) of an encoded `HealthCheckRequest`; unknown
/// fields are skipped.
pub fn decode_health_request(msg: &[u8]) -> Option<String> {
    let mut service = String::new();
    let mut i = 0;
    while i < msg.len() {
        let key = pb_varint(msg, &mut i)?;
        let skip = match key & 7 {
            0 => {
                pb_varint(msg, &mut i)?;
                0
            }
            1 => 8,
            2 => {
                let n = usize::try_from(pb_varint(msg, &mut i)?).ok()?;
                if key >> 3 == 1 {
                    let end = i.checked_add(n).filter(|&e| e <= msg.len())?;
                    service = String::from_utf8(msg[i..end].to_vec()).ok()?;
                }
                n
            }
            5 => 4,
            _ => return None,
        };
        i = i.checked_add(skip).filter(|&e| e <= msg.len())?;
    }
    Some(service)
}

/// The frames answering one gRPC request whose body is `body`.
pub fn grpc_answer(st: &State, stream: u32, body: &[u8]) -> Vec<u8> {
    let result = if body.len() < 5 {
        Err((13, "grpc: missing request message"))
    } else if body[0] != 0 {
        Err((12, "grpc: compressed requests are not supported"))
    } else {
        let n = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        match decode_health_request(&body[5..]).filter(|_| n == body.len() - 5) {
            None => Err((13, "grpc: error unmarshalling request")),
            Some(service) => grpc_health(st, &service),
        }
    };
    let mut out = Vec::with_capacity(128);
    let mut block = Vec::with_capacity(64);
    grpc_response_head(&mut block);
    match result {
        Ok(status) => {
            h2_frame(&mut out, HEADERS, END_HEADERS, stream, &block);
            // HealthCheckResponse{status}: field 1, varint (proto3 leaves
            // out the default UNKNOWN = 0).
            let msg: Vec<u8> = if status == 0 {
                vec![]
            } else {
                vec![0x08, status as u8]
            };
            let mut data = vec![0];
            data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            data.extend_from_slice(&msg);
            h2_frame(&mut out, DATA, 0, stream, &data);
            let mut trailers = Vec::with_capacity(16);
            hpack_field(&mut trailers, "grpc-status", "0");
            h2_frame(
                &mut out,
                HEADERS,
                END_HEADERS | END_STREAM,
                stream,
                &trailers,
            );
        }
        Err((code, message)) => {
            // Trailers-only: status and message in the only header block.
            hpack_field(&mut block, "grpc-status", &code.to_string());
            hpack_field(&mut block, "grpc-message", message);
            h2_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &block);
        }
    }
    out
}

/// A frame's payload without its padding (and priority fields, which only
/// HEADERS carries).
fn h2_unpad(flags: u8, kind: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

fn goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    let mut p = (last_stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    h2_frame(out, GOAWAY, 0, 0, &p);
}

/// Serves one HTTP/2 connection (prior knowledge) of gRPC health checks
/// until the client closes it or breaks the protocol.
pub fn serve_grpc<S: Read + Write>(conn: &mut S, st: &State) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    conn.read_exact(&mut preface)?;
    let mut out = Vec::new();
    if &preface != H2_PREFACE {
        goaway(&mut out, 0, PROTOCOL_ERROR);
        return conn.write_all(&out);
    }
    // SETTINGS_MAX_CONCURRENT_STREAMS.
    let mut settings = vec![0, 3];
    settings.extend_from_slice(&(H2_MAX_STREAMS as u32).to_be_bytes());
    h2_frame(&mut out, SETTINGS, 0, 0, &settings);
    conn.write_all(&out)?;
    // Streams whose request is still arriving, and their bodies.
    let mut open: Vec<(u32, Vec<u8>)> = Vec::new();
    // A header block continues in CONTINUATION frames: (stream, ends it).
    let mut continuing: Option<(u32, bool)> = None;
    let mut last_stream = 0u32;
    loop {
        out.clear();
        let mut head = [0u8; 9];
        match conn.read_exact(&mut head) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > H2_MAX_FRAME {
            goaway(&mut out, last_stream, FRAME_SIZE_ERROR);
            return conn.write_all(&out);
        }
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)?;
        if continuing.is_some_and(|(s, _)| kind != CONTINUATION || id != s) {
            goaway(&mut out, last_stream, PROTOCOL_ERROR);
            return conn.write_all(&out);
        }
        // The stream whose request is complete after this frame.
        let mut complete = None;
        match kind {
            DATA => {
                let Some(data) = h2_unpad(flags, kind, &payload).filter(|_| id != 0) else {
                    goaway(&mut out, last_stream, PROTOCOL_ERROR);
                    return conn.write_all(&out);
                };
                let end = flags & END_STREAM != 0;
                if len > 0 {
                    // Give the flow-control window back.
                    let inc = (len as u32).to_be_bytes();
                    h2_frame(&mut out, WINDOW_UPDATE, 0, 0, &inc);
                    if !end {
                        h2_frame(&mut out, WINDOW_UPDATE, 0, id, &inc);
                    }
                }
                match open.iter().position(|(s, _)| *s == id) {
                    None => h2_frame(&mut out, RST_STREAM, 0, id, &STREAM_CLOSED.to_be_bytes()),
                    Some(i) if open[i].1.len() + data.len() > H2_MAX_BODY => {
                        open.remove(i);
                        out.extend(grpc_too_large(id));
                    }
                    Some(i) => {
                        open[i].1.extend_from_slice(data);
                        if end {
                            complete = Some(i);
                        }
                    }
                }
            }
            HEADERS => {
                if h2_unpad(flags, kind, &payload).is_none() || id == 0 {
                    goaway(&mut out, last_stream, PROTOCOL_ERROR);
                    return conn.write_all(&out);
                }
                // The header block itself is not needed (see the module docs).
                let end = flags & END_STREAM != 0;
                if !open.iter().any(|(s, _)| *s == id) {
                    if id.is_multiple_of(2) || id <= last_stream {
                        goaway(&mut out, last_stream, PROTOCOL_ERROR);
                        return conn.write_all(&out);
                    }
                    last_stream = id;
                    open.push((id, Vec::new()));
                }
                if flags & END_HEADERS == 0 {
                    continuing = Some((id, end));
                } else if end {
                    complete = open.iter().position(|(s, _)| *s == id);
                }
            }
            CONTINUATION => {
                let Some((s, end)) = continuing else {
                    goaway(&mut out, last_stream, PROTOCOL_ERROR);
                    return conn.write_all(&out);
                };
                if flags & END_HEADERS != 0 {
                    continuing = None;
                    if end {
                        complete = open.iter().position(|(o, _)| *o == s);
                    }
                }
            }
            RST_STREAM => open.retain(|(s, _)| *s != id),
            SETTINGS if flags & ACK == 0 => {
                if id != 0 || !len.is_multiple_of(6) {
                    goaway(&mut out, last_stream, PROTOCOL_ERROR);
                    return conn.write_all(&out);
                }
                h2_frame(&mut out, SETTINGS, ACK, 0, &[]);
            }
            PING if flags & ACK == 0 => {
                if len != 8 {
                    goaway(&mut out, last_stream, FRAME_SIZE_ERROR);
                    return conn.write_all(&out);
                }
                h2_frame(&mut out, PING, ACK, 0, &payload);
            }
            PUSH_PROMISE => {
                goaway(&mut out, last_stream, PROTOCOL_ERROR);
                return conn.write_all(&out);
            }
            GOAWAY => return Ok(()),
            // PRIORITY, WINDOW_UPDATE, acknowledgements, unknown types.
            _ => {}
        }
        if let Some(i) = complete {
            let (stream, body) = open.remove(i);
            out.extend(grpc_answer(st, stream, &body));
        } else if open.len() > H2_MAX_STREAMS {
            let (stream, _) = open.pop().expect("a stream is open");
            h2_frame(
                &mut out,
                RST_STREAM,
                0,
                stream,
                &REFUSED_STREAM.to_be_bytes(),
            );
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
            conn.flush()?;
        }
    }
}

/// A trailers-only RESOURCE_EXHAUSTED answer to an oversized request.
fn grpc_too_large(stream: u32) -> Vec<u8> {
    let mut block = Vec::with_capacity(64);
    grpc_response_head(&mut block);
    hpack_field(&mut block, "grpc-status", "8");
    hpack_field(
        &mut block,
        "grpc-message",
        "grpc: request message too large",
    );
    let mut out = Vec::new();
    h2_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &block);
    h2_frame(&mut out, RST_STREAM, 0, stream, &0u32.to_be_bytes());
    out
}

/// Connections the gRPC server serves at most at once.
const GRPC_MAX_CONNS: usize = 64;
/// An idle gRPC connection is closed after this long.
const GRPC_IDLE: Duration = Duration::from_secs(30);

/// Accepts gRPC connections on `listener`, one thread each.
fn grpc_server(listener: TcpListener, st: Arc<State>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        if st.closing.load(Ordering::SeqCst) || active.load(Ordering::SeqCst) >= GRPC_MAX_CONNS {
            continue;
        }
        let _ = stream.set_read_timeout(Some(GRPC_IDLE));
        let _ = stream.set_nodelay(true);
        active.fetch_add(1, Ordering::SeqCst);
        let (st, active) = (st.clone(), active.clone());
        std::thread::spawn(move || {
            let _ = serve_grpc(&mut stream, &st);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `struct pollfd` of poll(2).
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 1;

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

/// Connections waiting for their next request, holding no worker; watched
/// by the poller thread, which hands readable ones to the workers.
struct Idle {
    conns: Mutex<Vec<(Conn<TcpStream>, Instant)>>,
    wake: UnixStream,
}

impl Idle {
    fn park(&self, conn: Conn<TcpStream>) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((conn, Instant::now()));
        let _ = (&self.wake).write(&[1]);
    }
}

fn poller(idle: Arc<Idle>, wake: UnixStream, work: mpsc::Sender<Conn<TcpStream>>, st: Arc<State>) {
    let _ = wake.set_nonblocking(true);
    let mut drain = [0u8; 64];
    loop {
        let mut fds = vec![PollFd {
            fd: wake.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        }];
        {
            let conns = idle.conns.lock().unwrap_or_else(|p| p.into_inner());
            fds.extend(conns.iter().map(|(c, _)| PollFd {
                fd: c.stream.as_raw_fd(),
                events: POLLIN,
                revents: 0,
            }));
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs, and
        // only this thread removes (closes) the connections polled.
        let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, 1000) };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        while matches!((&wake).read(&mut drain), Ok(k) if k > 0) {}
        let closing = st.closing.load(Ordering::SeqCst);
        let mut conns = idle.conns.lock().unwrap_or_else(|p| p.into_inner());
        // Workers only append, so the first fds.len()-1 entries are the
        // polled ones; walk them backwards to remove by index.
        for i in (0..fds.len() - 1).rev() {
            let ready = fds[i + 1].revents != 0;
            let stale = conns[i].1.elapsed() > KEEP_ALIVE_IDLE;
            if ready {
                let (c, _) = conns.remove(i);
                if work.send(c).is_err() {
                    return;
                }
            } else if stale || closing {
                conns.remove(i);
            }
        }
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Conn<TcpStream>>>>, idle: Arc<Idle>, st: Arc<State>) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(mut conn) = next else { return };
        if serve_ready(&mut conn, &st) {
            idle.park(conn);
        }
    }
}

#[allow(dead_code)]
fn main() {
    // SAFETY: installs an async-signal-safe handler that only stores an atomic.
    unsafe {
        signal(15, on_terminate as extern "C" fn(i32) as usize);
        signal(2, on_terminate as extern "C" fn(i32) as usize);
    }
    let port: u16 = env_or("PORT", 8080);
    let workers: usize = env_or("WORKERS", 4usize).max(1);
    let drain = Duration::from_secs(env_or("DRAIN_SECONDS", 5u64));
    let version = std::env::var("VERSION").unwrap_or_else(|_| "dev".into());
    let st = Arc::new(State::new(&version, &hostname(), workers));
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webapp: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    let grpc_port: u16 = env_or("GRPC_PORT", 9090);
    if grpc_port != 0 {
        match TcpListener::bind(("0.0.0.0", grpc_port)) {
            Ok(l) => {
                let st = st.clone();
                std::thread::spawn(move || grpc_server(l, st));
            }
            Err(e) => {
                eprintln!("webapp: cannot listen on gRPC port {grpc_port}: {e}");
                std::process::exit(1);
            }
        }
    }
    let (wake_tx, wake_rx) = UnixStream::pair().expect("socketpair");
    let idle = Arc::new(Idle {
        conns: Mutex::new(vec![]),
        wake: wake_tx,
    });
    let (tx, rx) = mpsc::channel::<Conn<TcpStream>>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..workers {
        let (rx, idle, st) = (rx.clone(), idle.clone(), st.clone());
        std::thread::spawn(move || worker(rx, idle, st));
    }
    {
        let (idle, st) = (idle.clone(), st.clone());
        std::thread::spawn(move || poller(idle, wake_rx, tx, st));
    }
    let accept_st = st.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if accept_st.closing.load(Ordering::SeqCst) {
                // Past the drain period: take no new connections.
                drop(conn);
                continue;
            }
            if let Ok(stream) = conn {
                // A client that stalls mid-request frees its worker.
                let _ = stream.set_read_timeout(Some(KEEP_ALIVE_IDLE));
                let _ = stream.set_nodelay(true);
                idle.park(Conn {
                    stream,
                    buf: Vec::new(),
                });
            }
        }
    });
    println!(
        "webapp {version} listening on :{port} with {workers} workers (drain {}s), gRPC health on :{grpc_port}",
        drain.as_secs()
    );
    while !TERMINATED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    st.draining.store(true, Ordering::SeqCst);
    println!("webapp: SIGTERM, unready; serving for {}s", drain.as_secs());
    std::thread::sleep(drain);
    st.closing.store(true, Ordering::SeqCst);
    // Let requests that are in flight (or queued for a worker) finish.
    let mut quiet_since = Instant::now();
    loop {
        if st.busy.load(Ordering::SeqCst) > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(50) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "webapp: drained after {} requests, exiting",
        st.requests.load(Ordering::Relaxed)
    );
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory connection: reads `input`, collects what is written.
    struct Mem {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Mem {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Mem {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn exchange(st: &State, input: &str) -> String {
        let mut c = super::Conn {
            stream: Mem {
                input: std::io::Cursor::new(input.as_bytes().to_vec()),
                output: vec![],
            },
            buf: vec![],
        };
        while serve_ready(&mut c, st) {}
        String::from_utf8(c.stream.output).unwrap()
    }

    fn get(path: &str) -> Request {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: "GET".into(),
            path: p.into(),
            query: q.into(),
            http11: true,
            keep_alive: true,
            content_length: 0,
        }
    }

    /// Frames (type, flags, stream, payload) in `out`.
    fn frames(mut out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = vec![];
        while out.len() >= 9 {
            let len = u32::from_be_bytes([0, out[0], out[1], out[2]]) as usize;
            let id = u32::from_be_bytes([out[5], out[6], out[7], out[8]]);
            v.push((out[3], out[4], id, out[9..9 + len].to_vec()));
            out = &out[9 + len..];
        }
        assert!(out.is_empty());
        v
    }

    fn grpc_request(service: &str) -> Vec<u8> {
        let mut msg = vec![];
        if !service.is_empty() {
            msg.push(0x0a);
            msg.push(service.len() as u8);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut body = vec![0];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        body
    }

    fn grpc_exchange(st: &State, input: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut c = Mem {
            input: std::io::Cursor::new(input.to_vec()),
            output: vec![],
        };
        serve_grpc(&mut c, st).unwrap();
        frames(&c.output)
    }

    #[test]
    fn hpack_integers_and_health_requests() {
        let mut out = vec![];
        hpack_int(&mut out, 5, 0, 10);
        hpack_int(&mut out, 5, 0, 1337);
        hpack_int(&mut out, 4, 0, 31);
        assert_eq!(out, [10, 31, 154, 10, 15, 16]);
        assert_eq!(decode_health_request(&[]), Some(String::new()));
        // An unknown varint field 2 and fixed64 field 3 around the service.
        let msg = [
            0x10, 0x96, 0x01, 0x0a, 2, b'd', b'b', 0x19, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(decode_health_request(&msg), Some("db".into()));
        assert_eq!(decode_health_request(&[0x0a, 5, b'x']), None);
        assert_eq!(decode_health_request(&[0x0b]), None);
    }

    #[test]
    fn grpc_health_over_h2_frames() {
        let st = State::new("v1", "h", 4);
        let mut input = H2_PREFACE.to_vec();
        h2_frame(&mut input, SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
        // Stream 1: overall health, headers and body in separate frames.
        // The header block is not decoded, so any bytes do.
        h2_frame(&mut input, HEADERS, END_HEADERS, 1, &[0x83, 0x86]);
        h2_frame(&mut input, DATA, END_STREAM, 1, &grpc_request(""));
        // Stream 3: "webapp", headers continued, a padded DATA frame.
        h2_frame(&mut input, HEADERS, 0, 3, &[0x83]);
        h2_frame(&mut input, CONTINUATION, END_HEADERS, 3, &[0x86]);
        let mut padded = vec![2];
        padded.extend(grpc_request("webapp"));
        padded.extend([0, 0]);
        h2_frame(&mut input, DATA, END_STREAM | PADDED, 3, &padded);
        h2_frame(&mut input, PING, 0, 0, b"12345678");
        // Stream 5: an unknown service.
        h2_frame(&mut input, HEADERS, END_HEADERS, 5, &[0x83]);
        h2_frame(&mut input, DATA, END_STREAM, 5, &grpc_request("nope"));
        let f = grpc_exchange(&st, &input);
        let head = [&[0x88u8, 0x0f, 0x10, 16][..], b"application/grpc"].concat();
        let mut ok_trailers = vec![0, 11];
        ok_trailers.extend(b"grpc-status");
        ok_trailers.extend([1, b'0']);
        let serving = vec![0, 0, 0, 0, 2, 0x08, 1];
        let inc = 11u32.to_be_bytes().to_vec();
        let mut not_found = head.clone();
        not_found.extend([0, 11]);
        not_found.extend(b"grpc-status");
        not_found.extend([1, b'5', 0, 12]);
        not_found.extend(b"grpc-message");
        not_found.push(15);
        not_found.extend(b"unknown service");
        let want = vec![
            (SETTINGS, 0, 0, vec![0, 3, 0, 0, 0, 100]),
            (SETTINGS, ACK, 0, vec![]),
            (WINDOW_UPDATE, 0, 0, 5u32.to_be_bytes().to_vec()),
            (HEADERS, END_HEADERS, 1, head.clone()),
            (DATA, 0, 1, serving.clone()),
            (HEADERS, END_HEADERS | END_STREAM, 1, ok_trailers.clone()),
            (
                WINDOW_UPDATE,
                0,
                0,
                (grpc_request("webapp").len() as u32 + 3)
                    .to_be_bytes()
                    .to_vec(),
            ),
            (HEADERS, END_HEADERS, 3, head.clone()),
            (DATA, 0, 3, serving.clone()),
            (HEADERS, END_HEADERS | END_STREAM, 3, ok_trailers.clone()),
            (PING, ACK, 0, b"12345678".to_vec()),
            (WINDOW_UPDATE, 0, 0, inc),
            (HEADERS, END_HEADERS | END_STREAM, 5, not_found),
        ];
        assert_eq!(f, want);

        // Made NOT_SERVING over HTTP; draining also answers NOT_SERVING.
        handle(&get("/grpc/fail"), &st);
        let mut input = H2_PREFACE.to_vec();
        h2_frame(&mut input, HEADERS, END_HEADERS, 1, &[0x83]);
        h2_frame(&mut input, DATA, END_STREAM, 1, &grpc_request(""));
        let f = grpc_exchange(&st, &input);
        assert_eq!(f[3].3, [0, 0, 0, 0, 2, 0x08, 2]);
        handle(&get("/grpc/ok"), &st);
        assert_eq!(grpc_health(&st, ""), Ok(GRPC_SERVING));
        st.draining.store(true, Ordering::SeqCst);
        assert_eq!(grpc_health(&st, "webapp"), Ok(GRPC_NOT_SERVING));
    }

    #[test]
    fn grpc_protocol_errors() {
        let st = State::new("v1", "h", 4);
        // Not HTTP/2: GOAWAY(PROTOCOL_ERROR).
        let mut c = Mem {
            input: std::io::Cursor::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            output: vec![],
        };
        serve_grpc(&mut c, &st).unwrap();
        assert_eq!(
            frames(&c.output),
            [(GOAWAY, 0, 0, vec![0, 0, 0, 0, 0, 0, 0, 1])]
        );
        // A compressed message, an empty body, a frame too large.
        let mut input = H2_PREFACE.to_vec();
        h2_frame(&mut input, HEADERS, END_HEADERS, 1, &[0x83]);
        h2_frame(&mut input, DATA, END_STREAM, 1, &[1, 0, 0, 0, 0]);
        h2_frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 3, &[0x83]);
        h2_frame(&mut input, DATA, 0, 5, &vec![0; H2_MAX_FRAME + 1]);
        let f = grpc_exchange(&st, &input);
        let status = |p: &[u8]| {
            let i = find(p, b"grpc-status").expect("grpc-status") + 11;
            let v = &p[i + 1..i + 1 + p[i] as usize];
            std::str::from_utf8(v).unwrap().parse::<u32>().unwrap()
        };
        assert_eq!(
            (f[2].1, f[2].2, status(&f[2].3)),
            (END_HEADERS | END_STREAM, 1, 12)
        );
        assert_eq!((f[3].2, status(&f[3].3)), (3, 13));
        assert_eq!(f[4], (GOAWAY, 0, 0, vec![0, 0, 0, 3, 0, 0, 0, 6]));
    }

    #[test]
    fn parses_heads_incrementally() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let (r, n) = parse_request(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(n, 32);
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/a", "b=1"));
        assert!(r.keep_alive && r.http11);
        let (r, _) = parse_request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let (r, _) = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let (r, _) = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        assert!(matches!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n"),
            Err(ParseError::Status(505, _))
        ));
        assert!(matches!(
            parse_request(b"GARBAGE\r\n\r\n"),
            Err(ParseError::Status(400, _))
        ));
        assert!(matches!(
            parse_request(&vec![b'a'; MAX_HEAD + 1]),
            Err(ParseError::Status(431, _))
        ));
    }

    #[test]
    fn endpoints_answer() {
        let st = State::new("v2", "pod-a", 4);
        assert_eq!(handle(&get("/"), &st).body, "webapp v2 pod-a\n");
        assert_eq!(handle(&get("/version"), &st).body, "v2\n");
        assert_eq!(handle(&get("/healthz"), &st).status, 200);
        assert_eq!(handle(&get("/nope"), &st).status, 404);
        assert_eq!(handle(&get("/readyz"), &st).status, 200);
        handle(&get("/readyz/fail"), &st);
        assert_eq!(handle(&get("/readyz"), &st).status, 503);
        handle(&get("/readyz/ok"), &st);
        assert_eq!(handle(&get("/readyz"), &st).status, 200);
        st.draining.store(true, Ordering::SeqCst);
        let r = handle(&get("/readyz"), &st);
        assert_eq!((r.status, r.body.as_str()), (503, "draining\n"));
        assert_eq!(handle(&get("/burn?ms=abc"), &st).status, 400);
        let t = Instant::now();
        assert_eq!(handle(&get("/burn?ms=30"), &st).body, "burned 30 ms\n");
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn metrics_count_requests_and_busy_workers() {
        let st = State::new("v1", "h", 4);
        handle(&get("/"), &st);
        // Two other requests in flight plus the scrape itself.
        st.busy.store(3, Ordering::SeqCst);
        let m = handle(&get("/metrics"), &st).body;
        assert!(m.contains("\nhttp_requests_total 2\n"), "{m}");
        assert!(m.contains("\nwebapp_idle_workers 2\n"), "{m}");
        assert!(m.contains("\nwebapp_busy_workers 2\n"), "{m}");
        assert!(m.contains("# TYPE http_requests_total counter\n"));
        assert!(m.contains("\nwebapp_ready 1\n"));
    }

    #[test]
    fn keep_alive_pipelining_and_close() {
        let st = State::new("v1", "h", 4);
        let out = exchange(
            &st,
            "GET /version HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /readyz/fail HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
             HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n\
             GET /version HTTP/1.1\r\n\r\n",
        );
        let responses: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
        // The fourth request comes after `Connection: close` and is not answered.
        assert_eq!(responses.len(), 3, "{out}");
        assert!(responses[0].starts_with("200 OK\r\n"));
        assert!(responses[0].contains("Content-Length: 3\r\nConnection: keep-alive\r\n\r\nv1\n"));
        assert!(responses[1].ends_with("now unready\n"));
        assert!(st.unready.load(Ordering::SeqCst));
        // HEAD: the length of the GET body, and no body.
        assert!(responses[2].contains("Content-Length: 12\r\nConnection: close\r\n\r\n"));
        assert!(responses[2].ends_with("\r\n\r\n"));
        assert_eq!(st.busy.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn draining_server_closes_connections_and_bad_requests_close() {
        let st = State::new("v1", "h", 4);
        st.draining.store(true, Ordering::SeqCst);
        let out = exchange(&st, "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
        assert!(out.contains("Connection: close"));
        let st = State::new("v1", "h", 4);
        let out = exchange(
            &st,
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 411 Length Required\r\n"), "{out}");
        assert!(out.contains("Connection: close"));
    }
}
