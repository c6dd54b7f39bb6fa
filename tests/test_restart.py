"""Restarting `kobune server` (an upgrade, a security fix) does not touch the workloads: its node's
pods keep running and serving while the server is down, and the next start adopts them, as the
kubelet and k3s do. Proved with a Deployment behind a Service and an Ingress under steady load
from the host: no request to the pods' IPs, the ClusterIP or the Ingress, and no cluster DNS
query, fails across SIGTERM and restart (the Ingress and DNS sockets are held for the next
server); afterwards the same containers run (same IDs, no restarts), still Ready, with their
emptyDir content, logs and exec; the Deployment scales and replaces pods as before; a pod deleted
right after the restart is replaced. `kobune killall` then stops everything the node left,
closing the held sockets too. Needs root and containerd.

Run under the containerd lock: flock /tmp/kobune-containerd.lock pytest tests/test_restart.py"""

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

import dns.message
import dns.query
import dns.rcode

from conftest import KOBUNE, NODE, AgentServer, Load, free_port, http_get, killall, require_containerd, wait_for

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
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - host: web.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""

# The Ingress's HTTP port on 127.0.0.1.
HTTP = free_port()


@pytest.fixture(scope="module")
def server():
    s = AgentServer(extra_args=["--node-name", NODE, "--ingress-http-port", str(HTTP), "--ingress-https-port", "0"])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


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
    dns_ip = server.json("get", "service", "kube-dns", "-n", "kube-system")["spec"]["clusterIP"]

    def resolve():
        q = dns.message.make_query(f"web.{NS}.svc.cluster.local", "A")
        r = dns.query.udp(q, dns_ip, timeout=20)
        assert r.rcode() == dns.rcode.NOERROR and vip in r.to_text(), r.to_text()
    # Straight to each pod and through the ClusterIP (answered by the pods and the kernel's rules
    # alone), and through the Ingress and cluster DNS, which run in the server: while it is down
    # their sockets are held, so a request or query made then waits for the next server.
    checks = {f"pod {s[1]}": (lambda ip=s[1]: http_get(f"http://{ip}:8080/")) for s in before}
    checks["ClusterIP"] = lambda: http_get(f"http://{vip}/")
    checks["Ingress"] = lambda: http_get(f"http://127.0.0.1:{HTTP}/", host="web.example", timeout=20)
    checks["Ingress POST"] = lambda: http_get(f"http://127.0.0.1:{HTTP}/", host="web.example", timeout=20,
                                              data=b"order=1")
    checks["DNS"] = resolve

    def answers(check):
        try:
            check()
            return True
        except Exception:  # noqa: BLE001 - not yet
            return False
    wait_for(lambda: all(answers(c) for c in checks.values()), timeout=30,
             what="the pods, the ClusterIP, the Ingress and DNS answering")
    load = Load(checks)
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
    print("slowest answers (s):", {k: round(v, 3) for k, v in load.slowest.items()})
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100, load.ok
    # The Ingress and DNS were answered all along: those asked while the server was down (3 s and
    # more), once it was back.
    assert set(load.slowest) == set(checks), load.slowest
    for check in ("Ingress", "Ingress POST", "DNS"):
        assert load.slowest[check] > 2, load.slowest

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
    # The Ingress port is held for the next server: a connection is queued, not refused.
    socket.create_connection(("127.0.0.1", HTTP), timeout=2).close()
    # ... until `kobune killall`.
    r = killall(server.data_dir)
    assert "stopped the pods" in r.stdout
    assert "closed the Ingress and DNS sockets" in r.stdout
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", HTTP), timeout=2)
    for ip in ips:
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{ip}:8080/", timeout=2)
    assert not (server.data_dir / "agent" / "pods").exists() or not any((server.data_dir / "agent" / "pods").iterdir())
    # killall refuses while a node agent runs on the directory.
    server.start()
    r = subprocess.run([KOBUNE, "killall", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert r.returncode != 0 and "stop `kobune server`/`kobune agent` first" in r.stderr, r.stderr
