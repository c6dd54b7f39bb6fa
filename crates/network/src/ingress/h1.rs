//! The HTTP/1.1 fast path of the Ingress proxy: plain GET and HEAD requests
//! without a body (what most Ingress traffic is) are parsed with httparse,
//! rewritten in one buffer and sent over a pooled keep-alive connection to
//! the endpoint, and the answer is passed back in the same task: no request
//! or header maps, no channel to a connection task, one write each way for
//! small answers. Everything else (other methods, bodies, Upgrade, HTTP/1.0,
//! HTTP/2, unmatched hosts, redirects, backends without endpoints) is handed,
//! with the bytes already read, to the general hyper path for the rest of the
//! connection.

use super::Controller;
use bytes::{Buf, BytesMut};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest request or response head taken by the fast path.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Idle upstream connections kept per endpoint.
const POOL_PER_ENDPOINT: usize = 64;
/// Idle upstream connections older than this are closed, not reused.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Headers that are not forwarded (hop-by-hop ones, and the ones the proxy
/// sets itself).
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
const REPLACED: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
];

/// A stream that first yields bytes already read from it: how a connection
/// whose first request the fast path declined is passed on to hyper.
pub struct Rewind<S> {
    pre: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(pre: BytesMut, inner: S) -> Rewind<S> {
        Rewind { pre, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An upstream HTTP/1.1 connection and the bytes read from it but not used.
struct Upstream {
    tcp: TcpStream,
    buf: BytesMut,
    since: Instant,
}

/// A cheap hasher for the maps looked up on every request (endpoint
/// addresses, backends): their keys come from the cluster's own objects,
/// not from clients, so SipHash's resistance to chosen keys buys nothing.
#[derive(Default)]
pub struct FastHasher(u64);

/// A HashMap with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        for b in chunks.remainder() {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Idle keep-alive connections to endpoints.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<FastMap<SocketAddr, Vec<Upstream>>>,
}

impl Pool {
    fn take(&self, ep: SocketAddr) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&ep)?;
        while let Some(u) = list.pop() {
            if u.since.elapsed() < POOL_IDLE {
                return Some(u);
            }
        }
        None
    }

    /// Closes idle connections to endpoints no backend has any more, and
    /// those idle for too long.
    pub fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|ep, list| {
            list.retain(|u| u.since.elapsed() < POOL_IDLE);
            live.contains(ep) && !list.is_empty()
        });
    }

    fn put(&self, ep: SocketAddr, mut u: Upstream) {
        u.since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(ep).or_default();
        if list.len() < POOL_PER_ENDPOINT {
            list.push(u);
        }
    }
}

async fn connect(ep: SocketAddr) -> io::Result<Upstream> {
    let tcp = tokio::time::timeout(super::proxy::CONNECT_TIMEOUT, TcpStream::connect(ep))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(Upstream {
        tcp,
        buf: BytesMut::with_capacity(8 * 1024),
        since: Instant::now(),
    })
}

/// What the fast path did with a connection.
pub enum Outcome {
    /// The connection is finished (closed by the client, or an error).
    Done,
    /// A request the fast path does not take: serve the rest of the
    /// connection (starting with these bytes) with hyper.
    Fallback(BytesMut),
}

/// A request the fast path takes (its head, rewritten for upstream, is in
/// the connection's head buffer).
struct Plan<'s> {
    head_only: bool,
    close: bool,
    endpoints: &'s [SocketAddr],
    backend: &'s super::routes::Backend,
    timeout: Duration,
}

fn is_token(list: &[u8], token: &str) -> bool {
    list.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a header is hop-by-hop: listed, or named by a Connection header.
fn hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    // Most headers are none of them: their length alone says so.
    let listed = matches!(name.len(), 2 | 7 | 10 | 16 | 17 | 18)
        && HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h));
    listed
        || named.iter().any(|c| {
            c.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

/// The X-Forwarded-* headers that are the same for every request of a
/// client connection (all but X-Forwarded-Host), built once per connection.
fn forwarded(conn: &super::proxy::Conn) -> Vec<u8> {
    let ip = conn.remote.ip();
    format!(
        "x-forwarded-for: {ip}\r\nx-real-ip: {ip}\r\nx-forwarded-proto: {}\r\nx-forwarded-port: {}\r\n",
        if conn.https { "https" } else { "http" },
        conn.port
    )
    .into_bytes()
}

/// Decides whether the fast path takes a parsed request, and if so builds
/// the upstream head in `head` (`fwd` is the connection's [`forwarded`]).
/// None: hand the request to hyper.
fn plan<'s>(
    req: &httparse::Request<'_, '_>,
    snap: &'s super::Snapshot,
    conn: &super::proxy::Conn,
    fwd: &[u8],
    head: &mut Vec<u8>,
) -> Option<Plan<'s>> {
    let method = req.method?;
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let target = req.path?;
    if req.version != Some(1) || !target.starts_with('/') {
        return None;
    }
    let mut authority: Option<&[u8]> = None;
    let mut connection: Vec<&[u8]> = vec![];
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if authority.is_some() {
                return None;
            }
            authority = Some(h.value);
        } else if n.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if n.eq_ignore_ascii_case("connection") {
            connection.push(h.value);
        }
    }
    let authority = std::str::from_utf8(authority?).ok()?.trim();
    let close = connection.iter().any(|c| is_token(c, "close"));
    let host = super::proxy::host_part(authority);
    // Lowercase already (as browsers and most clients send it): no copy.
    let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (backend, ingress) = snap.routes.find(&host, path)?;
    if !conn.https && ingress.settings.ssl_redirect && ingress.has_tls_for(&host) {
        return None;
    }
    let endpoints = match snap.upstreams.get(backend) {
        Some(Ok(e)) if !e.is_empty() => e.as_slice(),
        _ => return None,
    };
    head.clear();
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if REPLACED.iter().any(|r| h.name.eq_ignore_ascii_case(r))
            || h.name.eq_ignore_ascii_case("content-length")
            || hop_by_hop(h.name, &connection)
        {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"host: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\nx-forwarded-host: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(fwd);
    head.extend_from_slice(b"\r\n");
    Some(Plan {
        head_only,
        close,
        endpoints,
        backend,
        timeout: ingress.settings.read_timeout,
    })
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes (then the client connection closes too).
    Close,
}

/// A parsed upstream response head (what goes to the client is in the
/// connection's output buffer) and how the body is framed.
struct RespHead {
    framing: Framing,
    keep_alive: bool,
    len: usize,
}

/// Parses a response head in `buf`: Ok(None) when incomplete, Ok(Some(_))
/// for a final response (1xx ones are skipped by the caller), Err when
/// malformed. The head for the client (without the final empty line) is
/// written to `out`.
fn parse_response(
    buf: &[u8],
    head_only: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(u16, Option<RespHead>)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let code = resp.code.ok_or(())?;
    if code == 101 {
        // Switching protocols without having asked to.
        return Err(());
    }
    if (100..200).contains(&code) {
        return Ok(Some((code, None)));
    }
    let mut connection: Vec<&[u8]> = vec![];
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.push(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(());
            }
        }
    }
    let framing = if head_only || code == 204 || code == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let keep_alive = resp.version == Some(1)
        && !connection.iter().any(|c| is_token(c, "close"))
        && framing != Framing::Close;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes three-digit codes only.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name, &connection) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(Some((
        code,
        Some(RespHead {
            framing,
            keep_alive,
            len,
        }),
    )))
}

/// Finds the end of a chunked body in a stream of bytes.
#[derive(Debug, Default)]
struct ChunkScan {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions, up to the line end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkScan {
    /// Consumes bytes; Ok(Some(n)) when the body ends after `n` of them.
    fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size.checked_mul(16).ok_or(())? + d;
                    }
                    b';' | b' ' | b'\t' => self.state = Ext,
                    b'\r' => self.state = SizeLf,
                    _ => return Err(()),
                },
                Ext => {
                    if b == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = (self.size as usize).min(bytes.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Size;
                }
                TrailerStart => {
                    self.state = if b == b'\r' { EndLf } else { TrailerLine };
                }
                TrailerLine => {
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

fn simple(code: u16, reason: &str, msg: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{msg}\n",
        msg.len() + 1,
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Sends the head and reads the final response head. Err(true): nothing
/// came back (the request may be sent again); Err(false): a broken answer.
async fn exchange(
    u: &mut Upstream,
    head: &[u8],
    head_only: bool,
    out: &mut Vec<u8>,
) -> Result<RespHead, bool> {
    u.tcp.write_all(head).await.map_err(|_| true)?;
    let mut got_any = false;
    loop {
        if u.buf.is_empty() {
            match u.tcp.read_buf(&mut u.buf).await {
                Ok(0) | Err(_) => return Err(!got_any),
                Ok(_) => got_any = true,
            }
        }
        match parse_response(&u.buf, head_only, out) {
            Ok(Some((_, Some(h)))) => return Ok(h),
            Ok(Some((_, None))) => {
                // An interim 1xx answer: skip its head, wait for the final one.
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut r = httparse::Response::new(&mut headers);
                if let Ok(httparse::Status::Complete(n)) = r.parse(&u.buf) {
                    u.buf.advance(n);
                }
                continue;
            }
            Ok(None) if u.buf.len() > MAX_HEAD => return Err(false),
            Ok(None) => {}
            Err(()) => return Err(false),
        }
        match u.tcp.read_buf(&mut u.buf).await {
            Ok(0) | Err(_) => return Err(!got_any),
            Ok(_) => got_any = true,
        }
    }
}

/// Serves requests on a client connection for as long as they suit the
/// fast path.
pub(super) async fn serve<S>(ctl: &Controller, io: &mut S, conn: super::proxy::Conn) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Per connection, reused by every request: the upstream request head,
    // the client's response head, and the X-Forwarded-* lines.
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut timer = None;
    let fwd = forwarded(&conn);
    let mut draining = ctl.draining.subscribe();
    let mut served = 0u64;
    loop {
        // A whole request head, parsed once and planned from.
        let mut snap = None;
        let (head_len, planned) = loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let s = snap.insert(ctl.snapshot());
                        break (n, plan(&req, s, &conn, &fwd, &mut head));
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                    _ => return Outcome::Fallback(buf),
                }
            }
            // Draining, a kept-alive connection waiting for its next
            // request is closed; a new one still gets its first answered.
            let read = if buf.is_empty() && served > 0 {
                tokio::select! {
                    r = io.read_buf(&mut buf) => Some(r),
                    _ = draining.wait_for(|d| *d) => None,
                }
            } else {
                Some(io.read_buf(&mut buf).await)
            };
            let Some(read) = read else {
                let _ = io.shutdown().await;
                return Outcome::Done;
            };
            match read {
                Ok(0) if buf.is_empty() => return Outcome::Done,
                Ok(0) | Err(_) => return Outcome::Fallback(buf),
                Ok(_) => {}
            }
        };
        let Some(mut p) = planned else {
            return Outcome::Fallback(buf);
        };
        // Draining: this answer is the connection's last.
        p.close |= ctl.is_draining();
        served += 1;
        buf.advance(head_len);
        match forward(ctl, io, &p, &head, &mut out, &mut timer).await {
            Ok(true) if !p.close => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Done;
            }
        }
    }
}

/// `fut`'s output, or None once `after` has passed. `timer` is one timer
/// per client connection, re-armed only when it fires before this call's
/// deadline or is set later than it: not a timer registered and removed
/// for every request, as `tokio::time::timeout` would.
async fn within<F: std::future::Future>(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    after: Duration,
    fut: F,
) -> Option<F::Output> {
    use std::future::Future as _;
    let deadline = tokio::time::Instant::now() + after;
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if t.deadline() > deadline {
        t.as_mut().reset(deadline);
    }
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        // Fired for an earlier request's deadline: re-armed for this one
        // (and polled again, so that it wakes this task).
        while t.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() + Duration::from_millis(1) >= deadline {
                return Poll::Ready(None);
            }
            t.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// One request: Ok(true) when the client connection can carry on.
async fn forward<S>(
    ctl: &Controller,
    io: &mut S,
    p: &Plan<'_>,
    head: &[u8],
    out: &mut Vec<u8>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let n = p.endpoints.len();
    let start = ctl.next_index(p.backend, n);
    let mut last_error = String::new();
    for i in 0..n.min(3) {
        let ep = p.endpoints[(start + i) % n];
        // A pooled connection the endpoint closed meanwhile fails before
        // any answer: the request goes again over a fresh one.
        let mut pooled = ctl.pool.take(ep);
        loop {
            let reused = pooled.is_some();
            let mut u = match pooled.take() {
                Some(u) => u,
                None => match connect(ep).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!("ingress: connecting to {ep} for {}: {e}", p.backend);
                        last_error = format!("connecting to {ep}: {e}");
                        break;
                    }
                },
            };
            match within(timer, p.timeout, exchange(&mut u, head, p.head_only, out)).await {
                // Draining: the answer says the connection closes after it.
                Some(Ok(h)) => {
                    let close = p.close || ctl.is_draining();
                    return relay(ctl, io, ep, u, h, out, close).await;
                }
                Some(Err(true)) if reused => continue,
                Some(Err(_)) => {
                    last_error = format!("upstream {ep}: connection closed before the response");
                    break;
                }
                None => {
                    let msg = format!(
                        "504 Gateway Timeout: upstream {ep} of service {} did not answer within {}s",
                        p.backend,
                        p.timeout.as_secs()
                    );
                    let close = p.close || ctl.is_draining();
                    io.write_all(&simple(504, "Gateway Timeout", &msg, close))
                        .await?;
                    return Ok(!close);
                }
            }
        }
    }
    let msg = format!("502 Bad Gateway: service {}: {last_error}", p.backend);
    let close = p.close || ctl.is_draining();
    io.write_all(&simple(502, "Bad Gateway", &msg, close))
        .await?;
    Ok(!close)
}

/// Passes the response head and body to the client; the upstream
/// connection goes back to the pool when the answer ended cleanly.
async fn relay<S>(
    ctl: &Controller,
    io: &mut S,
    ep: SocketAddr,
    mut u: Upstream,
    h: RespHead,
    out: &mut Vec<u8>,
    close: bool,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    u.buf.advance(h.len);
    if close || h.framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let client_ok = !close && h.framing != Framing::Close;
    match h.framing {
        Framing::Length(mut left) => {
            // Head and as much body as is here, in one write.
            let n = (left as usize).min(u.buf.len());
            out.extend_from_slice(&u.buf[..n]);
            u.buf.advance(n);
            left -= n as u64;
            io.write_all(out).await?;
            while left > 0 {
                match u.tcp.read_buf(&mut u.buf).await {
                    Ok(0) | Err(_) => return Ok(false),
                    Ok(_) => {}
                }
                let n = (left as usize).min(u.buf.len());
                io.write_all(&u.buf[..n]).await?;
                u.buf.advance(n);
                left -= n as u64;
            }
        }
        Framing::Chunked => {
            let mut scan = ChunkScan::default();
            let pending = out;
            loop {
                let done = match scan.scan(&u.buf) {
                    Ok(d) => d,
                    Err(()) => return Ok(false),
                };
                let n = done.unwrap_or(u.buf.len());
                pending.extend_from_slice(&u.buf[..n]);
                u.buf.advance(n);
                io.write_all(pending).await?;
                pending.clear();
                if done.is_some() {
                    break;
                }
                match u.tcp.read_buf(&mut u.buf).await {
                    Ok(0) | Err(_) => return Ok(false),
                    Ok(_) => {}
                }
            }
        }
        Framing::Close => {
            let n = u.buf.len();
            out.extend_from_slice(&u.buf[..n]);
            u.buf.clear();
            io.write_all(out).await?;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                match u.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => io.write_all(&chunk[..n]).await?,
                }
            }
            return Ok(false);
        }
    }
    // Anything beyond the answer means the upstream is confused: drop it.
    if h.keep_alive && u.buf.is_empty() {
        ctl.pool.put(ep, u);
    }
    Ok(client_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_they_should() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut s = ChunkScan::default();
        assert_eq!(s.scan(body), Ok(Some(body.len() - 4)));
        // Byte by byte gives the same end.
        let mut s = ChunkScan::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = s.scan(std::slice::from_ref(b)).unwrap() {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        let mut s = ChunkScan::default();
        assert_eq!(s.scan(b"0\r\n\r\n"), Ok(Some(5)));
        let mut s = ChunkScan::default();
        assert_eq!(s.scan(b"3\r\nabc"), Ok(None));
        assert_eq!(s.scan(b"X"), Err(()));
    }

    #[test]
    fn response_heads_are_framed_and_cleaned() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\nabc";
        let mut out = vec![];
        let (code, h) = parse_response(raw, false, &mut out).unwrap().unwrap();
        let h = h.unwrap();
        assert_eq!(code, 200);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(h.len, raw.len() - 3);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Kept: 1\r\n"
        );
        let (_, h) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            &mut out,
        )
        .unwrap()
        .unwrap();
        let h = h.unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(String::from_utf8_lossy(&out).ends_with("transfer-encoding: chunked\r\n"));
        let (_, h) = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            true,
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.unwrap().framing, Framing::Length(0), "HEAD has no body");
        let (_, h) = parse_response(b"HTTP/1.0 404 Gone\r\n\r\n", false, &mut out)
            .unwrap()
            .unwrap();
        let h = h.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "HTTP/1.1 404 Gone\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        assert_eq!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false, &mut out)
                .unwrap()
                .unwrap()
                .0,
            100
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, &mut out)
                .unwrap()
                .is_none()
        );
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
            &mut out
        )
        .is_err());
    }

    /// The upstream head: the client's end-to-end headers, Host as sent,
    /// the X-Forwarded-* set replacing the client's own; hop-by-hop ones and
    /// those a Connection header names dropped. Requests the fast path does
    /// not take are declined.
    #[test]
    fn request_heads_are_planned_and_rewritten() {
        use super::super::routes::{Backend, PortRef, RouteTable};
        use serde_json::json;
        use std::sync::Arc;
        let ing = Arc::new(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"rules": [
            {"host": "shop.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        );
        let backend = Backend {
            namespace: "shop".into(),
            service: "web".into(),
            port: PortRef::Number(80),
        };
        let ep: SocketAddr = "10.42.0.7:8080".parse().unwrap();
        let snap = super::super::Snapshot {
            routes: RouteTable::build(&[ing]),
            upstreams: [(backend.clone(), Ok(Arc::new(vec![ep])))]
                .into_iter()
                .collect(),
        };
        let conn = super::super::proxy::Conn {
            remote: "192.0.2.9:5555".parse().unwrap(),
            https: false,
            port: 8081,
        };
        let fwd = forwarded(&conn);
        let mut head = b"stale".to_vec();
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: Shop.Example.com:8081\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        let p = plan(&req, &snap, &conn, &fwd, &mut head).expect("taken");
        assert!(!p.head_only && !p.close);
        assert_eq!(p.endpoints, &[ep]);
        assert_eq!(p.backend, &backend);
        assert_eq!(
            String::from_utf8_lossy(&head),
            "GET /a?b=1 HTTP/1.1\r\nX-Kept: yes\r\nhost: Shop.Example.com:8081\r\n\
             x-forwarded-host: Shop.Example.com:8081\r\nx-forwarded-for: 192.0.2.9\r\n\
             x-real-ip: 192.0.2.9\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8081\r\n\r\n"
        );
        for declined in [
            &b"POST / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: shop.example.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(declined).unwrap().is_complete());
            assert!(
                plan(&req, &snap, &conn, &fwd, &mut head).is_none(),
                "{}",
                String::from_utf8_lossy(declined)
            );
        }
        let raw = b"HEAD / HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        let p = plan(&req, &snap, &conn, &fwd, &mut head).expect("taken");
        assert!(p.head_only && p.close);
        assert!(head.starts_with(b"HEAD / HTTP/1.1\r\nhost: shop.example.com\r\n"));
    }

    #[test]
    fn pool_hands_back_connections_per_endpoint() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let pool = Pool::default();
            assert!(pool.take(a).is_none());
            let u = connect(a).await.unwrap();
            let local = u.tcp.local_addr().unwrap();
            pool.put(a, u);
            assert!(pool.take(b).is_none());
            let u = pool.take(a).expect("pooled");
            assert_eq!(u.tcp.local_addr().unwrap(), local);
            assert!(pool.take(a).is_none());
            pool.put(a, u);
            pool.retain(&[b].into_iter().collect());
            assert!(pool.take(a).is_none(), "endpoint gone: closed");
        });
    }

    /// The per-connection timer: a slow future times out after its own
    /// duration, even when the timer was first armed for a later deadline
    /// or fired early for an earlier one; fast ones complete.
    #[tokio::test]
    async fn one_timer_per_connection_times_out_each_request() {
        let ms = Duration::from_millis;
        let mut timer = None;
        let t0 = Instant::now();
        assert!(within(&mut timer, ms(300), tokio::time::sleep(ms(10_000)))
            .await
            .is_none());
        assert!(
            (ms(299)..ms(2000)).contains(&t0.elapsed()),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(within(&mut timer, ms(300), async { 7 }).await, Some(7));
        // A shorter deadline than the one armed.
        let t0 = Instant::now();
        assert!(within(&mut timer, ms(100), tokio::time::sleep(ms(10_000)))
            .await
            .is_none());
        assert!(
            (ms(99)..ms(1000)).contains(&t0.elapsed()),
            "{:?}",
            t0.elapsed()
        );
        // Armed for 100 ms by an earlier request: fires early, re-armed.
        let _ = within(&mut timer, ms(100), async {}).await;
        tokio::time::sleep(ms(50)).await;
        let t0 = Instant::now();
        assert!(within(&mut timer, ms(300), tokio::time::sleep(ms(10_000)))
            .await
            .is_none());
        assert!(
            (ms(299)..ms(2000)).contains(&t0.elapsed()),
            "{:?}",
            t0.elapsed()
        );
        let quick = tokio::time::sleep(ms(50));
        assert!(within(&mut timer, ms(300), quick).await.is_some());
    }

    #[test]
    fn hop_by_hop_names() {
        let named: Vec<&[u8]> = vec![b"keep-alive, X-Private"];
        assert!(hop_by_hop("x-private", &named));
        assert!(hop_by_hop("Upgrade", &[]));
        assert!(!hop_by_hop("x-kept", &named));
        assert!(is_token(b"Keep-Alive, close", "close"));
    }

    #[tokio::test]
    async fn rewind_yields_the_buffered_bytes_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(BytesMut::from(&b"GET / "[..]), a);
        b.write_all(b"HTTP/1.1\r\n").await.unwrap();
        drop(b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "GET / HTTP/1.1\r\n");
    }
}
