//! Listening sockets that outlive `kobune server`, so a restart (an upgrade,
//! a security fix) does not refuse a single Ingress connection or DNS query.
//!
//! A small keeper process (`kobune listener-keeper`) holds a duplicate of
//! each socket the server's node serves on. While no server runs, new
//! connections wait in the socket's accept queue and DNS queries in its
//! receive queue; the next server takes the same sockets back from the
//! keeper and answers them. The keeper lets go once no server has claimed
//! its sockets for [`HOLD`], or at once on `kobune killall`.
//!
//! The protocol over `DIR/listeners.sock` (mode 0600, same user only) is
//! one byte per message, with the sockets as `SCM_RIGHTS`: a client asks
//! for what the keeper holds (`G`), the keeper hands it over (`H`) and from
//! then on the client owns it; a server hands back each socket it serves on
//! (`A`), which the keeper holds until the next hand-over; `kobune killall`
//! asks it to stop (`S`).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests being served, so that a stop can wait for them: every request
/// holds a handle from [`InFlight::enter`] until it is answered.
#[derive(Clone, Default)]
pub struct InFlight(Arc<()>);

impl InFlight {
    pub fn enter(&self) -> InFlight {
        self.clone()
    }

    /// Waits until no other handle is left, at most `limit`; false if some still are.
    pub async fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Arc::strong_count(&self.0) > 1 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// The keeper's socket, in the server's data directory.
pub const SOCKET: &str = "listeners.sock";
/// How long the keeper holds sockets no server has claimed.
pub const HOLD: Duration = Duration::from_secs(30);
const MAX_FDS: usize = 16;

const GIVE: u8 = b'G';
const HELD: u8 = b'H';
const ADD: u8 = b'A';
const STOP: u8 = b'S';

fn send(s: &UnixStream, tag: u8, fds: &[OwnedFd]) -> io::Result<()> {
    let fds: Vec<_> = fds.iter().take(MAX_FDS).map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many sockets for one message"));
    }
    rustix::net::sendmsg(
        s,
        &[io::IoSlice::new(&[tag])],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// The next message, or None once the peer has closed the connection.
fn recv(s: &UnixStream) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut tag = [0u8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        s,
        &mut [io::IoSliceMut::new(&mut tag)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok((got.bytes == 1).then_some((tag[0], fds)))
}

/// Binds a TCP listener (backlog 1024) or a UDP socket at `addr`, non-blocking.
/// `freebind` allows an address the host does not have yet.
fn bind(addr: SocketAddr, ty: Type, freebind: bool) -> io::Result<Socket> {
    let protocol = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => s.set_freebind_v4(true)?,
            SocketAddr::V6(_) => s.set_freebind_v6(true)?,
        }
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if ty == Type::STREAM {
        s.listen(1024)?;
    }
    Ok(s)
}

/// The server's side: sockets taken back from the keeper, or bound anew and
/// handed to it.
pub struct Listeners {
    keeper: Option<UnixStream>,
    held: Mutex<Vec<Socket>>,
    /// `DIR/listeners.lock`: one server per directory talks to its keeper.
    _lock: Option<std::fs::File>,
}

impl Listeners {
    /// No keeper: every socket is bound anew and closes with the process.
    pub fn unkept() -> Listeners {
        Listeners {
            keeper: None,
            held: Mutex::default(),
            _lock: None,
        }
    }

    /// Takes over what the keeper of `dir` holds, first starting one with
    /// `spawn` if none answers. Fails only if another server uses `dir`.
    /// Without a keeper (logged), sockets are bound anew and close with the
    /// process.
    pub fn kept(dir: &Path, spawn: impl FnOnce() -> io::Result<()>) -> io::Result<Listeners> {
        let lock = server_lock(dir)?.ok_or_else(|| {
            io::Error::other(format!("another kobune server runs on {}", dir.display()))
        })?;
        let mut l = Self::connect(dir, spawn).unwrap_or_else(|e| {
            tracing::warn!(
                "no listener keeper for {} ({e}): Ingress and DNS sockets close while the server restarts",
                dir.display()
            );
            Self::unkept()
        });
        l._lock = Some(lock);
        Ok(l)
    }

    fn connect(dir: &Path, spawn: impl FnOnce() -> io::Result<()>) -> io::Result<Listeners> {
        let path = dir.join(SOCKET);
        let stream = match greet(&path) {
            Ok(s) => s,
            Err(_) => {
                spawn()?;
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    match greet(&path) {
                        Ok(s) => break s,
                        Err(e) if Instant::now() > deadline => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        };
        let (stream, fds) = stream;
        if !fds.is_empty() {
            tracing::info!(
                "listener keeper held {} socket(s) from the previous server",
                fds.len()
            );
        }
        Ok(Listeners {
            keeper: Some(stream),
            held: Mutex::new(fds.into_iter().map(Socket::from).collect()),
            _lock: None,
        })
    }

    /// The socket of type `ty` bound to `addr`: the one the keeper held, or
    /// a new one from [`bind`]. The keeper gets a duplicate to hold.
    pub fn take(&self, addr: SocketAddr, ty: Type, freebind: bool) -> io::Result<Socket> {
        let found = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.iter()
                .position(|s| matches(s, addr, ty))
                .map(|i| held.swap_remove(i))
        };
        let sock = match found {
            Some(s) => {
                tracing::info!("serving on {addr} again ({ty:?}), held while the server was down");
                s.set_nonblocking(true)?;
                s
            }
            None => match bind(addr, ty, freebind) {
                // A held socket on the same port at another address (the
                // bind address changed) is in the way: let it go.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && self.release(addr, ty) => {
                    bind(addr, ty, freebind)?
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e}: another process listens there (a kobune server on another data directory, or the listener keeper it left: `kobune killall --data-dir DIR` closes those)"),
                    ))
                }
                Err(e) => return Err(e),
                Ok(s) => s,
            },
        };
        if let Some(k) = &self.keeper {
            if let Err(e) = sock.try_clone().and_then(|d| send(k, ADD, &[d.into()])) {
                tracing::warn!("handing {addr} to the listener keeper: {e}");
            }
        }
        Ok(sock)
    }

    /// Closes held sockets of `ty` on `addr`'s port; true if there were any.
    fn release(&self, addr: SocketAddr, ty: Type) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let before = held.len();
        held.retain(|s| {
            s.r#type().ok() != Some(ty) || local_addr(s).map(|a| a.port()) != Some(addr.port())
        });
        held.len() < before
    }

    /// Start-up is over: the sockets not taken again (an address the
    /// server no longer serves on) are closed.
    pub fn commit(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for a in held.drain(..).filter_map(|s| local_addr(&s)) {
            tracing::info!("no longer serving on {a}: closed");
        }
    }
}

/// Takes `DIR/listeners.lock`, held by a server for as long as it runs;
/// None if another process holds it.
fn server_lock(dir: &Path) -> io::Result<Option<std::fs::File>> {
    let lock = std::fs::File::create(dir.join("listeners.lock"))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(lock)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a server runs on `dir` (it holds `DIR/listeners.lock`).
pub fn server_running(dir: &Path) -> bool {
    dir.join("listeners.lock").exists() && matches!(server_lock(dir), Ok(None))
}

/// The IP address and port a socket is bound to.
fn local_addr(s: &Socket) -> Option<SocketAddr> {
    s.local_addr().ok()?.as_socket()
}

fn matches(s: &Socket, addr: SocketAddr, ty: Type) -> bool {
    s.r#type().ok() == Some(ty)
        && local_addr(s) == Some(addr)
        && (ty != Type::STREAM || s.is_listener().unwrap_or(false))
}

/// Connects to a keeper and takes what it holds.
fn greet(path: &Path) -> io::Result<(UnixStream, Vec<OwnedFd>)> {
    let s = UnixStream::connect(path)?;
    send(&s, GIVE, &[])?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    match recv(&s)? {
        Some((HELD, fds)) => {
            s.set_read_timeout(None)?;
            Ok((s, fds))
        }
        _ => Err(io::Error::other("the listener keeper did not greet")),
    }
}

/// Asks the keeper of `dir`, if one runs, to close its sockets and exit;
/// returns once it has (true) or when none runs (false).
pub fn stop_keeper(dir: &Path) -> io::Result<bool> {
    let Ok((s, _)) = greet(&dir.join(SOCKET)) else {
        return Ok(false);
    };
    send(&s, STOP, &[])?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // The keeper closes the connection as it exits.
    while recv(&s)?.is_some() {}
    Ok(true)
}

/// The keeper process: holds what servers of `dir` hand it until none has
/// claimed it for `hold`, or until asked to stop.
pub fn keep(dir: &Path, hold: Duration) -> io::Result<()> {
    let path = dir.join(SOCKET);
    if UnixStream::connect(&path).is_ok() {
        return Ok(()); // another keeper serves this directory
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")?.uid()
    };
    let mut held: Vec<OwnedFd> = Vec::new();
    loop {
        if !readable(&listener, hold)? {
            if !held.is_empty() {
                eprintln!(
                    "no server took its {} socket(s) back within {} s: closing them",
                    held.len(),
                    hold.as_secs()
                );
            }
            break;
        }
        let s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("accepting a connection: {e}");
                continue;
            }
        };
        match rustix::net::sockopt::socket_peercred(&s) {
            Ok(cred) if cred.uid.as_raw() == uid => {}
            _ => continue,
        }
        // Only a client that asks in time gets the sockets.
        let asked = s.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
            && matches!(recv(&s), Ok(Some((GIVE, _))));
        if !asked || send(&s, HELD, &held).is_err() || s.set_read_timeout(None).is_err() {
            continue;
        }
        // The client owns them now; a server hands back those it serves on.
        held.clear();
        loop {
            match recv(&s) {
                Ok(Some((ADD, fds))) => held.extend(fds),
                Ok(Some((STOP, _))) => {
                    let _ = std::fs::remove_file(&path);
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break, // the client has gone
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Waits up to `timeout` for a connection to accept.
fn readable(listener: &UnixListener, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).map_err(io::Error::other)?;
    Ok(poll(&mut fds, Some(&timeout))? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn run_keeper(dir: &Path, hold: Duration) -> std::thread::JoinHandle<io::Result<()>> {
        let owned = dir.to_path_buf();
        let t = std::thread::spawn(move || keep(&owned, hold));
        let deadline = Instant::now() + Duration::from_secs(3);
        while greet(&dir.join(SOCKET)).is_err() {
            assert!(Instant::now() < deadline, "keeper did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        t
    }

    fn local(s: &Socket) -> SocketAddr {
        local_addr(s).unwrap()
    }

    /// A connection made while no server runs is accepted by the next one,
    /// on the same socket; an address no longer served is let go.
    #[test]
    fn sockets_outlive_a_server_and_wait_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = run_keeper(dir.path(), Duration::from_secs(10));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();

        let first = Listeners::kept(dir.path(), || Ok(())).unwrap();
        assert!(
            Listeners::kept(dir.path(), || Ok(())).is_err(),
            "one server per directory"
        );
        let tcp = first.take(any, Type::STREAM, false).unwrap();
        let addr = local(&tcp);
        let udp = first.take(any, Type::DGRAM, false).unwrap();
        let udp_addr = local(&udp);
        let gone = first.take(any, Type::STREAM, false).unwrap();
        let gone_addr = local(&gone);
        first.commit();
        drop((tcp, udp, gone, first)); // the server stops

        // While no server runs, a client connects and sends; a query waits.
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"ping").unwrap();
        let asker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        asker.send_to(b"query", udp_addr).unwrap();

        let second = Listeners::kept(dir.path(), || Ok(())).unwrap();
        let tcp = second.take(addr, Type::STREAM, false).unwrap();
        let udp = second.take(udp_addr, Type::DGRAM, false).unwrap();
        second.commit();
        let listener: TcpListener = tcp.into();
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let udp: std::net::UdpSocket = udp.into();
        udp.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"query");

        // The address the second server did not take again is let go.
        let deadline = Instant::now() + Duration::from_secs(3);
        while TcpListener::bind(gone_addr).is_err() {
            assert!(Instant::now() < deadline, "{gone_addr} still held");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(second); // the server stops again
        assert!(stop_keeper(dir.path()).unwrap());
        keeper.join().unwrap().unwrap();
        // Stopped: the sockets are closed.
        drop((listener, conn, udp));
        TcpListener::bind(addr).expect("the keeper's sockets are closed once it stops");
        assert!(!stop_keeper(dir.path()).unwrap());
    }

    /// A socket held for another address on the same port (the bind
    /// address changed) is let go for the new one; a client that does not
    /// ask gets nothing and the sockets stay held.
    #[test]
    fn a_changed_address_takes_the_port_over() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = run_keeper(dir.path(), Duration::from_secs(10));
        let first = Listeners::kept(dir.path(), || Ok(())).unwrap();
        let any = first
            .take("0.0.0.0:0".parse().unwrap(), Type::STREAM, false)
            .unwrap();
        let port = local(&any).port();
        drop((any, first));
        // A stray connection that never asks.
        let stray = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(stray);
        let second = Listeners::kept(dir.path(), || Ok(())).unwrap();
        assert_eq!(second.held.lock().unwrap().len(), 1, "still held");
        let lo: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tcp = second.take(lo, Type::STREAM, false).unwrap();
        assert_eq!(local(&tcp), lo);
        drop((tcp, second));
        assert!(stop_keeper(dir.path()).unwrap());
        keeper.join().unwrap().unwrap();
    }

    /// Unclaimed sockets are closed after the hold time; a server that dies
    /// before it has started leaves the earlier ones held.
    #[test]
    fn unclaimed_sockets_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = run_keeper(dir.path(), Duration::from_millis(300));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = Listeners::kept(dir.path(), || Ok(())).unwrap();
        let tcp = server.take(any, Type::STREAM, false).unwrap();
        let addr = local(&tcp);
        drop((tcp, server)); // dies before commit: still held
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            TcpListener::bind(addr).is_err(),
            "held after a failed start"
        );
        keeper.join().unwrap().unwrap();
        TcpListener::bind(addr).expect("let go after the hold time");
        assert!(!dir.path().join(SOCKET).exists());
    }
}
