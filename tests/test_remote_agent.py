"""`kobune agent` joining a machine as a real node: a `kobune server` with its own node (containerd,
bridge kobune0) and a separate `kobune agent` process (its own containerd and data dir, bridge
kobune<N>, `--disable-kube-proxy` because both share this machine's iptables) in one cluster,
driven through kubectl. Pods pinned to the agent's node run there, answer on their pod IP from the
host and from a pod on the server's node, get ConfigMap env, serve `kubectl logs`/`exec` through
the agent's kubelet port. SIGTERM stops the agent but not its pods, which the next start adopts
(same containers, still Ready); `kill -9` makes its node NotReady while its pods keep running, its
Deployment pods are replaced on the server's node, and once the agent is back the evicted pods are
stopped; `kobune killall` then removes its containerd, pods, network namespaces and bridge.
Needs root and containerd (skipped without).

Run under the containerd lock: flock /tmp/kobune-containerd.lock pytest tests/test_remote_agent.py"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import KOBUNE, NODE, AgentServer, free_port, killall, require_containerd, start_agent, wait_for

require_containerd("tests/test_remote_agent.py")

GRACE = 15
REMOTE = "remote-node"


class RemoteAgent:
    """A running `kobune agent` (a real node) with its own data dir and kubelet port."""

    def __init__(self, server, data_dir, name=REMOTE, kubelet_port=None):
        self.server, self.data_dir, self.name = server, Path(data_dir), name
        self.kubelet_port = kubelet_port or free_port()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.start()

    def start(self):
        self.proc = start_agent(
            [KOBUNE, "agent", "--server", self.server.url, "--token", self.server.token,
             "--server-ca", self.server.ca, "--data-dir", str(self.data_dir), "--node-name", self.name,
             "--kubelet-port", str(self.kubelet_port), "--disable-kube-proxy"],
            self.log_path)

    def stop(self, keep_pods=False):
        """SIGTERM; then, unless `keep_pods`, `kobune killall` for what the agent left running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=45)
            assert code == 0, f"kobune agent exited with {code} on SIGTERM:\n{self.log_path.read_text()}"
        if not keep_pods:
            killall(self.data_dir)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    @property
    def containerd_config(self):
        return str(self.data_dir / "containerd" / "config.toml")


def processes_with_arg(arg):
    """Pids of processes that have `arg` among their arguments."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in args:
            pids.append(int(d.name))
    return pids


def link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def mounts_under(path):
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def agent_leftovers(agent, bridge):
    """What of the agent is still there: its containerd and shims, its bridge, mounts (netns) under its dir."""
    left = {}
    procs = processes_with_arg(agent.containerd_config) + processes_with_arg(
        str(agent.data_dir / "containerd" / "containerd.sock"))
    if procs:
        left["processes"] = procs
    if link_exists(bridge):
        left["bridge"] = bridge
    m = mounts_under(agent.data_dir)
    if m:
        left["mounts"] = m
    return left


@pytest.fixture(scope="module")
def cluster():
    s = AgentServer(extra_args=["--node-name", NODE, "--default-not-ready-toleration-seconds", "2",
                                "--default-unreachable-toleration-seconds", "2"],
                    env={"KOBUNE_NODE_MONITOR_GRACE_PERIOD": str(GRACE)})
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(cluster):
    base = Path(tempfile.mkdtemp(prefix="kobune-remote-agent-"))
    a = RemoteAgent(cluster, base / "agent")
    yield a
    a.stop()
    shutil.rmtree(base, ignore_errors=True)


def node_json(cluster, name):
    return cluster.json("get", "node", name)


def ready(node):
    return next((c for c in node["status"].get("conditions", []) if c["type"] == "Ready"), {})


def apply(cluster, obj):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def pod(cluster, ns, name):
    return cluster.json("get", "pod", name, "-n", ns)


def http_get(ip, port, path="/", timeout=5):
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def pinned(name, ns, node, containers, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": containers, **spec}}


def test_two_ready_nodes(cluster, agent):
    got = wait_for(lambda: (lambda ns: ns if all(ready(n).get("status") == "True" for n in ns.values())
                            and set(ns) == {NODE, REMOTE} else None)(
        {n["metadata"]["name"]: n for n in cluster.json("get", "nodes")["items"]}),
        timeout=30, what="two Ready nodes")
    remote, local = got[REMOTE], got[NODE]
    assert ready(remote)["reason"] == "KubeletReady"
    assert remote["spec"]["podCIDR"] == "10.42.1.0/24" and local["spec"]["podCIDR"] == "10.42.0.0/24"
    assert remote["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == agent.kubelet_port
    assert {"type": "InternalIP", "address": "127.0.0.1"} in remote["status"]["addresses"]
    assert remote["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert "kobune.io/simulated" not in remote["metadata"]["labels"]
    out = cluster.kubectl("get", "nodes").stdout
    assert sum(1 for line in out.splitlines()[1:] if " Ready " in f" {line} ") == 2, out
    lease = cluster.json("get", "lease", REMOTE, "-n", "kube-node-lease")
    first = lease["spec"]["renewTime"]
    wait_for(lambda: cluster.json("get", "lease", REMOTE, "-n", "kube-node-lease")["spec"]["renewTime"] != first,
             timeout=25, what="lease renewal")
    # The agent's containerd runs under its own data dir.
    assert processes_with_arg(agent.containerd_config)
    # A second agent on the same data dir is refused (and leaves the first alone).
    r = subprocess.run([KOBUNE, "agent", "--server", cluster.url, "--token", cluster.token,
                        "--server-ca", cluster.ca, "--data-dir", str(agent.data_dir), "--node-name", "twin",
                        "--kubelet-port", str(free_port()), "--disable-kube-proxy"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "a kobune node agent is running with" in r.stderr, r.stderr
    assert agent.proc.poll() is None and processes_with_arg(agent.containerd_config)
    assert "twin" not in cluster.kubectl("get", "nodes", "-o", "name").stdout


def test_pod_on_agent_serves_http_with_configmap_env_logs_and_exec(cluster, agent):
    ns = "remote"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "configmap", "web-config", "-n", ns,
                    "--from-literal=PORT=8081", "--from-literal=VERSION=from-configmap")
    web = {"name": "app", "image": "kobune.local/webapp:v1", "imagePullPolicy": "Never",
           "ports": [{"containerPort": 8081}],
           "env": [{"name": "PORT", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "PORT"}}}],
           "envFrom": [{"prefix": "", "configMapRef": {"name": "web-config"}}],
           "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}, "periodSeconds": 1}}
    apply(cluster, pinned("web", ns, REMOTE, [web]))
    # A busybox pod on each node: the agent's for logs/exec, the server's as an HTTP client.
    box = lambda tag: [{"name": "box", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
                        "command": ["sh", "-c", f"echo hello from {tag}; exec httpd -f -p 8080 -h /etc"],
                        "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config",
                                                                                        "key": "VERSION"}}}]}]
    apply(cluster, pinned("box-remote", ns, REMOTE, box("remote"), terminationGracePeriodSeconds=1))
    apply(cluster, pinned("box-local", ns, NODE, box("local"), terminationGracePeriodSeconds=1))
    for name in ("web", "box-remote", "box-local"):
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", ns, "--timeout=60s")
    p = pod(cluster, ns, "web")
    assert p["spec"]["nodeName"] == REMOTE
    assert p["status"]["hostIP"] == "127.0.0.1"
    ip = p["status"]["podIP"]
    assert ip.startswith("10.42.1."), ip
    assert p["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    # From the host, straight to the pod IP on the agent's bridge.
    assert http_get(ip, 8081) == (200, "webapp from-configmap web\n")
    assert agent_leftovers(agent, "kobune1").get("bridge") == "kobune1"
    local_ip = pod(cluster, ns, "box-local")["status"]["podIP"]
    assert local_ip.startswith("10.42.0."), local_ip
    # From a pod on the server's node (other bridge) to the agent's pod.
    # (busybox's wget -T crashes: the timeout comes from busybox timeout.)
    out = cluster.kubectl("exec", "-n", ns, "box-local", "--",
                          "busybox", "timeout", "5", "wget", "-qO-", f"http://{ip}:8081/").stdout
    assert out == "webapp from-configmap web\n"
    # And back: the agent's pod reaches the server node's pod.
    out = cluster.kubectl("exec", "-n", ns, "box-remote", "--",
                          "busybox", "timeout", "5", "wget", "-qO-", f"http://{local_ip}:8080/passwd").stdout
    assert "root:" in out
    # Logs and exec of pods on the agent go through its kubelet port.
    wait_for(lambda: "hello from remote" in cluster.kubectl("logs", "-n", ns, "box-remote").stdout,
             what="logs of the agent's pod")
    out = cluster.kubectl("exec", "-n", ns, "box-remote", "--", "sh", "-c", "echo $GREETING; hostname").stdout
    assert out.split() == ["from-configmap", "box-remote"]
    events = cluster.json("get", "events", "-n", ns)["items"]
    started = [e for e in events if e["reason"] == "Started" and e["involvedObject"]["name"] == "web"]
    assert started and started[0]["source"]["host"] == REMOTE
    # Deleting a pod on the agent stops it there.
    cluster.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=30s")
    with pytest.raises((urllib.error.URLError, OSError)):
        http_get(ip, 8081, timeout=2)


def test_persistent_volume_claim_on_agent(cluster, agent):
    ns = "remote"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n"
        "spec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n"))
    writer = [{"name": "w", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
               "command": ["sh", "-c", "echo written-on-agent > /data/file; exec sleep 3600"],
               "volumeMounts": [{"name": "d", "mountPath": "/data"}]}]
    apply(cluster, pinned("writer", ns, REMOTE, writer, terminationGracePeriodSeconds=1,
                          volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/writer", "-n", ns, "--timeout=60s")
    pvc = cluster.json("get", "pvc", "data", "-n", ns)
    assert pvc["status"]["phase"] == "Bound"
    pv = cluster.json("get", "pv", pvc["spec"]["volumeName"])
    path = Path(pv["spec"]["hostPath"]["path"])
    assert wait_for(lambda: (path / "file").exists() and (path / "file").read_text() == "written-on-agent\n",
                    what="file written through the claim")
    cluster.kubectl("delete", "pod", "writer", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_sigterm_keeps_pods_and_restart_adopts_them(cluster, agent):
    ns = "remote"
    status = lambda: pod(cluster, ns, "box-remote")["status"]["containerStatuses"][0]
    before = status()
    assert before["ready"] and before["restartCount"] == 0
    ip = pod(cluster, ns, "box-remote")["status"]["podIP"]
    agent.stop(keep_pods=True)
    # The agent is gone; its pod, containerd's shim, netns and bridge are not.
    left = agent_leftovers(agent, "kobune1")
    assert left.get("bridge") == "kobune1" and left.get("processes") and left.get("mounts"), left
    assert "root:" in http_get(ip, 8080, "/passwd")[1]
    agent.start()
    n = wait_for(lambda: (lambda o: o if ready(o).get("status") == "True" else None)(node_json(cluster, REMOTE)),
                 what="agent node Ready again")
    assert n["spec"]["podCIDR"] == "10.42.1.0/24"
    # The new agent adopted the pod: the same container, not restarted, Ready throughout.
    wait_for(lambda: "adopted a running pod" in agent.log_path.read_text(), what="the pod adopted")
    after = status()
    assert (after["containerID"], after["restartCount"], after["ready"]) == (before["containerID"], 0, True)
    out = cluster.kubectl("exec", "-n", ns, "box-remote", "--", "sh", "-c", "echo $GREETING").stdout
    assert out.strip() == "from-configmap"
    assert "hello from remote" in cluster.kubectl("logs", "-n", ns, "box-remote").stdout
    cluster.kubectl("delete", "namespace", ns, "--timeout=60s")


DEPLOYMENT = """
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
"""


def test_killed_agent_node_goes_not_ready_pods_replaced_and_cleaned_up(cluster, agent):
    ns = "failover"
    cluster.kubectl("create", "namespace", ns)
    # Everything lands on the agent's node while the server's is cordoned.
    cluster.kubectl("cordon", NODE)
    try:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOYMENT)
        cluster.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=60s")
    finally:
        cluster.kubectl("uncordon", NODE)
    first = cluster.json("get", "pods", "-n", ns, "-l", "app=web")["items"]
    assert len(first) == 2 and {p["spec"]["nodeName"] for p in first} == {REMOTE}
    ips = [p["status"]["podIP"] for p in first]
    assert all(http_get(ip, 8080)[0] == 200 for ip in ips)

    killed = time.time()
    agent.kill9()
    # Its pods keep running: only the node's agent is gone.
    assert all(http_get(ip, 8080)[0] == 200 for ip in ips)

    # The node goes NotReady once the grace period passes without heartbeats.
    wait_for(lambda: ready(node_json(cluster, REMOTE)).get("status") == "Unknown", timeout=GRACE + 30,
             what="agent node NotReady")
    # (The last lease renewal was up to 10 s before the kill.)
    assert time.time() - killed >= GRACE - 10
    assert "NotReady" in cluster.kubectl("get", "node", REMOTE).stdout

    # Its pods are evicted and replaced on the server's node.
    old = {p["metadata"]["name"] for p in first}

    def replaced():
        ps = cluster.json("get", "pods", "-n", ns, "-l", "app=web")["items"]
        fresh = [p for p in ps if p["metadata"]["name"] not in old and not p["metadata"].get("deletionTimestamp")]
        ok = len(fresh) == 2 and all(p["spec"].get("nodeName") == NODE and p["status"].get("phase") == "Running"
                                     for p in fresh)
        return fresh if ok else None
    fresh = wait_for(replaced, timeout=90, what="Deployment pods replaced on the server's node")
    for p in fresh:
        assert p["status"]["podIP"].startswith("10.42.0.")
    # The evicted pods were still running on the unreachable node (Terminating in the API); once
    # its agent is back, they are stopped and gone.
    assert all(http_get(ip, 8080)[0] == 200 for ip in ips)
    agent.start()
    wait_for(lambda: not old & {p["metadata"]["name"] for p in
                                cluster.json("get", "pods", "-n", ns, "-l", "app=web")["items"]},
             timeout=60, what="the evicted pods gone once their node's agent is back")
    for ip in ips:
        with pytest.raises((urllib.error.URLError, OSError)):
            http_get(ip, 8080, timeout=2)
    # SIGTERM, then `kobune killall`: nothing of the agent is left.
    agent.stop()
    assert agent_leftovers(agent, "kobune1") == {}
    cluster.kubectl("delete", "node", REMOTE)
