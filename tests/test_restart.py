"""Restarting `kobune server` (an upgrade, a security fix) does not touch the workloads: its node's
pods keep running and serving while the server is down, and the next start adopts them, as the
kubelet and k3s do. Proved with a Deployment behind a Service under steady load from the host:
no request to the pods' IPs or to the ClusterIP fails across SIGTERM and restart; afterwards the
same containers run (same IDs, no restarts), still Ready, with their emptyDir content, logs and
exec; the Deployment scales and replaces pods as before; a pod deleted right after the restart is
replaced. `kobune killall` then stops everything the node left. Needs root and containerd.

Run under the containerd lock: flock /tmp/kobune-containerd.lock pytest tests/test_restart.py"""

import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import KOBUNE, NODE, AgentServer, killall, require_containerd, wait_for

require_containerd("tests/test_restart.py")

NS = "shop"

MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {mode: steady}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: kobune.local/webapp:v1
        imagePullPolicy: Never
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
      - name: box
        image: kobune.local/busybox:1
        imagePullPolicy: Never
        command: [sh, -c, "echo box up; exec sleep 3600"]
        volumeMounts:
        - {name: scratch, mountPath: /scratch}
        - {name: config, mountPath: /config}
      volumes:
      - {name: scratch, emptyDir: {}}
      - {name: config, configMap: {name: web-config}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def server():
    s = AgentServer(extra_args=["--node-name", NODE])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


class Load:
    """GETs each URL in turn, every 20 ms, from a thread; counts answers and failures."""

    def __init__(self, urls):
        self.urls, self.ok, self.failures = urls, 0, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.is_set():
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        assert r.status == 200
                        r.read()
                    self.ok += 1
                except Exception as e:  # noqa: BLE001 - every failure counts
                    self.failures.append((time.time(), url, repr(e)))
            time.sleep(0.02)

    def stop(self):
        self.done.set()
        self.thread.join(timeout=10)


def pods(server):
    return server.json("get", "pods", "-n", NS, "-l", "app=web")["items"]


def state(p):
    cs = sorted((c["name"], c["containerID"], c["restartCount"], c["ready"]) for c in p["status"]["containerStatuses"])
    return (p["metadata"]["name"], p["status"]["podIP"], cs)


def test_server_restart_keeps_pods_running_and_serving(server):
    server.kubectl("create", "namespace", NS)
    server.kubectl("apply", "-n", NS, "-f", "-", input=MANIFEST)
    server.kubectl("rollout", "status", "-n", NS, "deployment/web", "--timeout=90s")
    before = sorted(state(p) for p in pods(server))
    assert len(before) == 2 and all(c[2] == 0 and c[3] for s in before for c in s[2]), before
    first = before[0][0]
    server.kubectl("exec", "-n", NS, first, "-c", "box", "--", "sh", "-c", "echo kept > /scratch/note")
    vip = server.json("get", "service", "web", "-n", NS)["spec"]["clusterIP"]
    urls = [f"http://{s[1]}:8080/" for s in before] + [f"http://{vip}/"]

    def answers(url):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(lambda: all(answers(u) for u in urls), what="the pods and the ClusterIP answering")
    load = Load(urls)
    try:
        time.sleep(1)
        down = time.time()
        server.stop(keep_pods=True)
        print(f"stopped at {down:.3f}")
        # The control plane is gone; the pods and the Service's rules serve on.
        time.sleep(3)
        server.start()
        print(f"server down for {time.time() - down:.1f} s")
        server.kubectl("rollout", "status", "-n", NS, "deployment/web", "--timeout=60s")
        wait_for(lambda: "adopted a running pod" in (server.data_dir / "server.log").read_text(),
                 what="the restarted node agent adopting its pods")
        time.sleep(3)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100, load.ok

    # The same containers, not restarted, Ready all along.
    after = sorted(state(p) for p in pods(server))
    assert after == before
    log = (server.data_dir / "server.log").read_text()
    assert log.count("adopted a running pod") >= 2, log[-3000:]
    # Their emptyDir content, ConfigMap files, logs and exec are all still there.
    out = server.kubectl("exec", "-n", NS, first, "-c", "box", "--", "sh", "-c", "cat /scratch/note /config/mode").stdout
    assert out.split() == ["kept", "steady"]
    assert server.kubectl("logs", "-n", NS, first, "-c", "box").stdout == "box up\n"
    # The ConfigMap volume is still kept up to date.
    server.kubectl("patch", "configmap", "web-config", "-n", NS, "-p", '{"data":{"mode":"changed"}}')
    wait_for(lambda: server.kubectl("exec", "-n", NS, first, "-c", "box", "--", "cat", "/config/mode").stdout == "changed",
             timeout=60, what="the ConfigMap update in the adopted pod's volume")

    # The Deployment works as before: it scales, and a deleted pod is replaced.
    server.kubectl("scale", "-n", NS, "deployment/web", "--replicas=3")
    server.kubectl("rollout", "status", "-n", NS, "deployment/web", "--timeout=60s")
    server.kubectl("delete", "pod", "-n", NS, first, "--wait=true", "--timeout=60s")
    server.kubectl("rollout", "status", "-n", NS, "deployment/web", "--timeout=60s")
    names = {p["metadata"]["name"] for p in pods(server) if not p["metadata"].get("deletionTimestamp")}
    assert first not in names and len(names) == 3
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://{before[0][1]}:8080/", timeout=2)


def test_killall_stops_what_the_node_left(server):
    ips = [p["status"]["podIP"] for p in pods(server)]
    server.stop(keep_pods=True)
    # Still serving without the server ...
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=2) as r:
            assert r.status == 200
    # ... until `kobune killall`.
    r = killall(server.data_dir)
    assert "stopped the pods" in r.stdout
    for ip in ips:
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{ip}:8080/", timeout=2)
    assert not (server.data_dir / "agent" / "pods").exists() or not any((server.data_dir / "agent" / "pods").iterdir())
    # killall refuses while a node agent runs on the directory.
    server.start()
    r = subprocess.run([KOBUNE, "killall", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert r.returncode != 0 and "stop `kobune server`/`kobune agent` first" in r.stderr, r.stderr
