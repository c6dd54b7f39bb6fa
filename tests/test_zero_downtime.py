"""Zero-downtime rolling updates under load, on a real node.

A 20-replica Deployment of the test web app (readinessProbe, preStop sleep,
graceful drain in the app) sits behind a ClusterIP Service and an Ingress.
Host threads send a steady stream of keep-alive requests through the Ingress
and through the ClusterIP while kubectl rolls the Deployment to a new image
(`set image`) and then restarts it (`rollout restart`). Not one request may
fail: no refused or reset connection, no timeout, no 5xx. The answers switch
from v1 to v2 and end with v2 only. A last test checks the Ingress's retry
of idempotent requests when an upstream drops the connection unanswered.

Needs root, containerd and iptables; run under
`flock /tmp/kobune-containerd.lock` (it shares the kobune0 bridge and host
iptables with the other node tests)."""

import http.client
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port

NS = "zdt"
HOST = "zdt.example.test"
REPLICAS = 20


def have_node():
    import os
    return os.geteuid() == 0 and shutil.which("containerd") and shutil.which("iptables")


pytestmark = pytest.mark.skipif(not have_node(), reason="needs root, containerd and iptables")


@pytest.fixture(scope="module")
def node():
    from test_containerd import NODE, AgentServer
    http_port, https_port = free_port(), free_port()
    s = AgentServer(extra_args=["--node-name", NODE, "--ingress-http-port", str(http_port),
                                "--ingress-https-port", str(https_port)])
    s.http_port = http_port
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def wait_for(fn, timeout=60, what="condition", interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met in time (last: {last!r})")


def manifests():
    container = {
        "name": "web",
        "image": "kobune.local/webapp:v1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "DRAIN_SECONDS", "value": "3"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1,
                           "failureThreshold": 1},
        # The app has no shell: the sleep action gives the endpoint removal
        # time to reach the proxy and the Ingress before SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
    }
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 30},
            },
        },
    }
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    ing = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"rules": [{"host": HOST, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
    }
    return {"apiVersion": "v1", "kind": "List", "items": [deploy, svc, ing]}


class Load:
    """Threads, each with one keep-alive connection, sending GET / back to
    back and recording every answer's version and every failure."""

    def __init__(self, name, host, port, headers, threads=3):
        self.name, self.host, self.port, self.headers = name, host, port, headers
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = []
        self.versions = []  # (time, version) in arrival order
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        while not self.stop_flag.is_set():
            try:
                conn.request("GET", "/", headers=self.headers)
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.status != 200 or not body.startswith("webapp "):
                    raise RuntimeError(f"HTTP {r.status}: {body.strip()[:200]}")
                with self.lock:
                    self.ok += 1
                    self.versions.append((time.time(), body.split()[1]))
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.errors.append((time.time(), f"{type(e).__name__}: {e}"))
                conn.close()
                time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=10)

    def latest(self, n=50):
        with self.lock:
            return {v for _, v in self.versions[-n:]}

    def summary(self):
        with self.lock:
            return f"{self.name}: {self.ok} ok, {len(self.errors)} failed: {self.errors[:10]}"


@pytest.fixture(scope="module")
def app(node):
    node.kubectl("create", "namespace", NS)
    # One object per apply: kubectl's client-side validation of a v1 List fails.
    for obj in manifests()["items"]:
        node.kubectl("apply", "-f", "-", input=json.dumps(obj))
    node.kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=180s", timeout=200)
    cip = node.json("get", "service", "web", "-n", NS)["spec"]["clusterIP"]

    def answers(host, port, headers):
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/", headers=headers)
            return c.getresponse().read().decode().startswith("webapp v1 ")
        except OSError:
            return False

    wait_for(lambda: answers(cip, 80, {}), what="ClusterIP answers")
    wait_for(lambda: answers("127.0.0.1", node.http_port, {"Host": HOST}), what="Ingress answers")
    return cip


def roll(node, cip, change, before, after):
    loads = [Load("ingress", "127.0.0.1", node.http_port, {"Host": HOST}),
             Load("clusterip", cip, 80, {})]
    for ld in loads:
        ld.start()
    try:
        time.sleep(2)
        for ld in loads:
            assert ld.latest() == {before}, ld.summary()
        t = time.time()
        change()
        node.kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=150s", timeout=170)
        took = time.time() - t
        # The old pods drain (preStop 1 s + DRAIN_SECONDS 3) while traffic goes on.
        wait_for(lambda: not [p for p in node.json("get", "pods", "-n", NS)["items"]
                              if p["metadata"].get("deletionTimestamp")],
                 timeout=60, what="old pods gone")
        time.sleep(2)
    finally:
        for ld in loads:
            ld.stop()
    summary = "; ".join(ld.summary() for ld in loads) + f"; rollout took {took:.1f}s"
    print(summary)
    for ld in loads:
        assert not ld.errors, summary
        assert ld.ok > 200, summary
        seen = [v for _, v in ld.versions]
        assert seen[0] == before and after in seen, summary
        # Only the new version at the end.
        assert ld.latest(100) == {after}, summary
    return loads


def pods_by_version(node):
    out = {}
    for p in node.json("get", "pods", "-n", NS, "-l", "app=web")["items"]:
        out.setdefault(p["spec"]["containers"][0]["image"], []).append(p["metadata"]["name"])
    return out


def test_rolling_update_to_a_new_image_loses_no_request(node, app):
    roll(node, app,
         lambda: node.kubectl("set", "image", "deployment/web", "-n", NS, "web=kobune.local/webapp:v2"),
         "v1", "v2")
    pods = pods_by_version(node)
    assert list(pods) == ["kobune.local/webapp:v2"] and len(pods["kobune.local/webapp:v2"]) == REPLICAS, pods


def test_rollout_restart_loses_no_request(node, app):
    before = {n for ns in pods_by_version(node).values() for n in ns}
    roll(node, app, lambda: node.kubectl("rollout", "restart", "deployment/web", "-n", NS), "v2", "v2")
    after = {n for ns in pods_by_version(node).values() for n in ns}
    assert len(after) == REPLICAS and not (before & after), "every pod was replaced"


class Slammer:
    """Accepts connections, reads a request head and closes without an
    answer: what a pod that is shutting down does to a request that
    reached it on a connection it was about to close."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            c.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            c.close()

    def stop(self):
        self.sock.close()


class Good(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        out = b"webapp good\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    do_POST = do_PUT


def test_ingress_retries_idempotent_requests_when_an_upstream_drops_them(node):
    """An endpoint that closes the connection before answering: GETs go on
    to the next endpoint (nginx's proxy_next_upstream error), POSTs are not
    repeated and answer 502."""
    slam = Slammer()
    good = ThreadingHTTPServer(("127.0.0.1", 0), Good)
    good.daemon_threads = True
    threading.Thread(target=good.serve_forever, daemon=True).start()
    ns = "retry"
    node.kubectl("create", "namespace", ns)
    objs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        *[{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"pool-{i}", "namespace": ns, "labels": {"kubernetes.io/service-name": "pool"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}
          for i, port in enumerate([slam.port, good.server_address[1]])],
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"rules": [{"host": "retry.example.test", "http": {"paths": [{
             "path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "pool", "port": {"number": 80}}}}]}}]}},
    ]
    for obj in objs:
        node.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def send(method):
        c = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
        c.request(method, "/", body=b"x" if method != "GET" else None, headers={"Host": "retry.example.test"})
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        return r.status, body

    try:
        wait_for(lambda: send("GET") == (200, "webapp good\n"), timeout=20, what="route installed")
        before = slam.hits
        results = [send("GET") for _ in range(10)] + [send("PUT") for _ in range(4)]
        assert results == [(200, "webapp good\n")] * 14, results
        assert slam.hits - before >= 5, "round robin sent some requests to the dropping endpoint first"
        posts = [send("POST") for _ in range(6)]
        assert {s for s, _ in posts} == {200, 502}, posts
        assert any("502 Bad Gateway" in b and f"127.0.0.1:{slam.port}" in b for _, b in posts), posts
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")
        slam.stop()
        good.shutdown()
        good.server_close()
