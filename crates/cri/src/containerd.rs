//! A private, supervised containerd (config, CNI network, process), or a
//! connection to an existing CRI runtime.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::Cri;
use crate::images::PAUSE_IMAGE;

/// The pod network: one host bridge, host-local IPAM over `pod_cidr`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CniConfig {
    /// The pod CIDR of this node, e.g. `10.42.0.0/24`. The bridge gets the
    /// first address and is the pods' default gateway.
    pub pod_cidr: String,
    /// The Linux bridge name (at most 15 characters), e.g. `kobune0`.
    pub bridge: String,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            pod_cidr: "10.42.0.0/24".into(),
            bridge: "kobune0".into(),
        }
    }
}

/// How long `start` waits for the CRI `Version` call to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A containerd that answers CRI: either ours (spawned, supervised and
/// killed on drop) or an existing one (`connect_existing`).
pub struct Containerd {
    socket: PathBuf,
    data_dir: Option<PathBuf>,
    supervisor: Option<Supervisor>,
}

struct Supervisor {
    state: Arc<Mutex<SupState>>,
    thread: Option<JoinHandle<()>>,
}

struct SupState {
    child: Option<Child>,
    stopping: bool,
    restarts: u32,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("socket", &self.socket)
            .field("data_dir", &self.data_dir)
            .field("supervised", &self.supervisor.is_some())
            .finish()
    }
}

/// The containerd config (version 2; containerd merges it with defaults,
/// but a runtime table replaces the default one, so `runtime_type` must be
/// repeated next to the runc `Root` option). containerd's `state` and
/// runc's state (`state/runc`) are volatile, as under /run on a usual host:
/// [`Containerd::start`] puts a tmpfs there.
pub fn config_toml(data_dir: &Path) -> String {
    let d = data_dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{d}/state/runc"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#
    )
}

/// The CNI network list: bridge (gateway, hairpin, no masquerade) with
/// host-local IPAM (state kept under `data_dir/cni-ipam`), plus portmap for
/// `hostPort`s. containerd adds the loopback interface itself.
pub fn cni_conflist(data_dir: &Path, cni: &CniConfig) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "kobune",
        "plugins": [
            {
                "type": "bridge",
                "bridge": cni.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cni.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir.join("cni-ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn spawn(data_dir: &Path) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("containerd.log"))
        .context("opening containerd.log")?;
    Command::new("containerd")
        .arg("--config")
        .arg(data_dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning containerd (Debian: apt-get install containerd runc containernetworking-plugins)")
}

fn log_tail(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("containerd.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until CRI `Version` answers on `socket`.
async fn wait_ready(
    socket: &Path,
    timeout: Duration,
    state: Option<&Arc<Mutex<SupState>>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = anyhow::anyhow!("not tried");
    while Instant::now() < deadline {
        if let Some(state) = state {
            let mut st = state.lock().unwrap();
            if let Some(child) = st.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    anyhow::bail!("containerd exited during startup: {status}");
                }
            }
        }
        if socket.exists() {
            match Cri::connect(socket).await {
                Ok(cri) => match cri.version().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = e,
                },
                Err(e) => last_err = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last_err.context(format!(
        "CRI at {} did not answer within {timeout:?}",
        socket.display()
    )))
}

fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Containerd {
    /// Writes config and CNI network under `data_dir`, spawns
    /// `containerd --config data_dir/config.toml` (output to
    /// `data_dir/containerd.log`), waits (up to 10 s) until CRI answers, and
    /// supervises it: it is restarted when it exits, and killed on drop.
    pub async fn start(data_dir: &Path, cni: CniConfig) -> anyhow::Result<Containerd> {
        let data_dir = std::path::absolute(data_dir)?;
        for sub in ["root", "state", "opt", "cni", "certs.d", "cni-ipam"] {
            std::fs::create_dir_all(data_dir.join(sub))
                .with_context(|| format!("creating {}", data_dir.join(sub).display()))?;
        }
        let state_dir = data_dir.join("state");
        match mount_tmpfs(&state_dir) {
            Ok(true) => tracing::debug!(dir = %state_dir.display(), "state on a new tmpfs"),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                dir = %state_dir.display(),
                "mounting a tmpfs for containerd's state failed; it stays on disk: {e:#}"
            ),
        }
        std::fs::create_dir_all(state_dir.join("runc"))
            .with_context(|| format!("creating {}", state_dir.join("runc").display()))?;
        std::fs::write(data_dir.join("config.toml"), config_toml(&data_dir))?;
        std::fs::write(
            data_dir.join("cni/10-kobune.conflist"),
            serde_json::to_vec_pretty(&cni_conflist(&data_dir, &cni))?,
        )?;
        let socket = data_dir.join("containerd.sock");
        // A containerd of this directory outliving an earlier kobune (killed
        // with -9) goes first; its shims, and so the pods, keep running.
        let config = data_dir.join("config.toml").display().to_string();
        let stale = find_processes(&["containerd", "--config", &config], None);
        if !stale.is_empty() {
            tracing::info!(pids = ?stale, "stopping the containerd an earlier run left");
            tokio::task::spawn_blocking(move || terminate(&stale, Duration::from_secs(5))).await?;
        }
        let _ = std::fs::remove_file(&socket);

        let started = Instant::now();
        let child = spawn(&data_dir)?;
        let state = Arc::new(Mutex::new(SupState {
            child: Some(child),
            stopping: false,
            restarts: 0,
        }));
        let mut me = Containerd {
            socket: socket.clone(),
            data_dir: Some(data_dir.clone()),
            supervisor: Some(Supervisor {
                state: state.clone(),
                thread: None,
            }),
        };
        // `me` is dropped (killing containerd) if startup fails.
        if let Err(e) = wait_ready(&socket, READY_TIMEOUT, Some(&state)).await {
            return Err(e.context(format!(
                "containerd failed to start; log tail:\n{}",
                log_tail(&data_dir)
            )));
        }
        tracing::info!(
            socket = %socket.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "containerd ready"
        );

        let thread = std::thread::Builder::new()
            .name("containerd-supervisor".into())
            .spawn(move || supervise(&data_dir, &state))?;
        if let Some(s) = me.supervisor.as_mut() {
            s.thread = Some(thread);
        }
        Ok(me)
    }

    /// Uses an existing CRI runtime at `socket` (e.g.
    /// `/run/containerd/containerd.sock`); checks that `Version` answers.
    pub async fn connect_existing(socket: &Path) -> anyhow::Result<Containerd> {
        wait_ready(socket, Duration::from_secs(2), None).await?;
        Ok(Containerd {
            socket: socket.to_path_buf(),
            data_dir: None,
            supervisor: None,
        })
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The data directory (only for a containerd we started).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// A lazily connecting CRI client for this runtime.
    pub fn cri(&self) -> Cri {
        Cri::connect_lazy(&self.socket)
    }

    /// How often the supervisor restarted containerd.
    pub fn restarts(&self) -> u32 {
        self.supervisor
            .as_ref()
            .map(|s| s.state.lock().unwrap().restarts)
            .unwrap_or(0)
    }

    /// The pid of the running containerd (ours only).
    pub fn pid(&self) -> Option<u32> {
        let s = self.supervisor.as_ref()?;
        let st = s.state.lock().unwrap();
        st.child.as_ref().map(Child::id)
    }

    /// Stops containerd (SIGTERM, SIGKILL after 5 s) and the supervisor.
    /// Containers keep running in their shims. Also done on drop.
    pub fn stop(&mut self) {
        let Some(mut sup) = self.supervisor.take() else {
            return;
        };
        let child = {
            let mut st = sup.state.lock().unwrap();
            st.stopping = true;
            st.child.take()
        };
        if let Some(mut child) = child {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        if let Some(t) = sup.thread.take() {
            let _ = t.join();
        }
        // The state tmpfs goes once no task is left in it; with tasks (their
        // shims still run) it stays, so that the next start finds them.
        if let Some(d) = &self.data_dir {
            let state = d.join("state");
            if !has_tasks(&state) && is_mount_point(&state) {
                unmount_under(&state);
                unmount(&state);
            }
        }
    }
}

/// Pids of processes whose arguments are exactly `argv`, or (with
/// `any_arg`) that have `any_arg` among their arguments.
pub fn find_processes(argv: &[&str], any_arg: Option<&str>) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let me = std::process::id() as i32;
    let mut pids = vec![];
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&str> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .filter_map(|a| std::str::from_utf8(a).ok())
            .collect();
        let hit = match any_arg {
            Some(a) => args.contains(&a),
            None => args == argv,
        };
        if hit {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// When `pid` started (clock ticks after boot), telling a process from a
/// later one that reuses its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields counted after the parenthesized command name.
    stat.rsplit_once(") ")?.1.split(' ').nth(19)?.parse().ok()
}

/// SIGTERM, then SIGKILL after `grace`; waits until they are gone. A pid
/// taken over by a new process meanwhile is left alone.
pub fn terminate(pids: &[i32], grace: Duration) {
    let procs: Vec<(i32, Option<u64>)> = pids.iter().map(|&p| (p, start_time(p))).collect();
    let running = |(p, t): &(i32, Option<u64>)| alive(*p) && start_time(*p) == *t;
    for &p in pids {
        // SAFETY: plain kill(2) on processes found by their command line.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while procs.iter().any(running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (p, _) in procs.iter().filter(|p| running(p)) {
        // SAFETY: as above, and still the same process.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `dir` is a mount point (per /proc/self/mountinfo).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(&unescape_mount(p)) == dir)
}

/// Mounts a tmpfs (mode 0711) at `dir` unless one is mounted there
/// already; returns whether it mounted one. Task bundles, FIFOs and runc
/// state are created and removed for every container: on tmpfs that costs
/// microseconds, on a disk file system far more (ext4 without a journal
/// reads the inode table for every new inode, 0.3 ms per mkdir here).
fn mount_tmpfs(dir: &Path) -> anyhow::Result<bool> {
    if is_mount_point(dir) {
        return Ok(false);
    }
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0711".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mount tmpfs");
    }
    Ok(true)
}

fn unmount(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: umount2 with a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// Whether containerd's state still holds a task (a shim) in any namespace.
fn has_tasks(state: &Path) -> bool {
    let Ok(namespaces) = std::fs::read_dir(state.join("io.containerd.runtime.v2.task")) else {
        return false;
    };
    namespaces
        .flatten()
        .any(|ns| std::fs::read_dir(ns.path()).is_ok_and(|mut tasks| tasks.next().is_some()))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn supervise(data_dir: &Path, state: &Arc<Mutex<SupState>>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut st = state.lock().unwrap();
        if st.stopping {
            return;
        }
        let exited = match st.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => {
                backoff = Duration::from_millis(200);
                None
            }
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not running".into()),
        };
        let Some(why) = exited else { continue };
        tracing::warn!(%why, "containerd exited; restarting");
        st.child = None;
        drop(st);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let mut st = state.lock().unwrap();
        if st.stopping {
            return;
        }
        let _ = std::fs::remove_file(data_dir.join("containerd.sock"));
        match spawn(data_dir) {
            Ok(c) => {
                st.child = Some(c);
                st.restarts += 1;
            }
            Err(e) => tracing::error!(error = %e, "restarting containerd failed"),
        }
    }
}

/// Unmounts (lazily) every mount point below `dir`, deepest first, e.g. a
/// private containerd's leftover netns or rootfs mounts. Returns how many.
pub fn unmount_under(dir: &Path) -> usize {
    let Ok(dir) = std::path::absolute(dir) else {
        return 0;
    };
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir) && p != &dir)
        .collect();
    points.sort();
    points.dedup();
    let mut n = 0;
    for p in points.iter().rev() {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            n += 1;
        }
    }
    n
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mentions_data_dir() {
        let c = config_toml(Path::new("/d"));
        assert!(c.contains(r#"address = "/d/containerd.sock""#));
        assert!(c.contains(r#"sandbox_image = "kobune.local/pause:1""#));
        let n = cni_conflist(Path::new("/d"), &CniConfig::default());
        assert_eq!(n["plugins"][0]["bridge"], "kobune0");
        assert_eq!(
            n["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.0.0/24"
        );
        assert_eq!(n["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn state_lives_on_tmpfs_and_tasks_are_seen() {
        let c = config_toml(Path::new("/d"));
        assert!(c.contains(r#"state = "/d/state""#));
        assert!(c.contains(r#"Root = "/d/state/runc""#));
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(!has_tasks(&state));
        let ns = state.join("io.containerd.runtime.v2.task/k8s.io");
        std::fs::create_dir_all(&ns).unwrap();
        assert!(!has_tasks(&state));
        std::fs::create_dir(ns.join("0123abcd")).unwrap();
        assert!(has_tasks(&state));
        assert!(!is_mount_point(&state));
        assert!(is_mount_point(Path::new("/")));
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn finds_processes_by_arguments() {
        let mut child = Command::new("sleep").arg("30.5").spawn().unwrap();
        let pid = child.id() as i32;
        // Until the child has exec'd, its cmdline is still ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !find_processes(&["sleep", "30.5"], None).contains(&pid)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(find_processes(&["sleep", "30.5"], None).contains(&pid));
        assert!(find_processes(&[], Some("30.5")).contains(&pid));
        assert!(!find_processes(&["sleep", "30.6"], None).contains(&pid));
        terminate(&[pid], Duration::from_secs(1));
        let _ = child.wait();
        assert!(!find_processes(&["sleep", "30.5"], None).contains(&pid));
    }
}
