"""`kobune agent`: simulated nodes joining a server over HTTPS from another
process, driven through kubectl. The server runs without a node agent; the
agents register their Nodes and Leases, follow the pods bound to them with
list+watch and report them Running/Ready, delete pods marked for deletion,
survive a server restart, and their nodes go NotReady when they are killed.
A wrong token or CA is refused with a clear message and a non-zero exit."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import KOBUNE, Server, start_agent
from test_kubectl import new_ns

GRACE = 15


class Agent:
    """A running `kobune agent --simulate N`."""

    def __init__(self, server, count, prefix, token_file=None):
        self.log_path = Path(tempfile.mkdtemp(prefix="kobune-agent-")) / "agent.log"
        token = ["--token-file", token_file] if token_file else ["--token", server.token]
        self.proc = start_agent(
            [KOBUNE, "agent", "--server", server.url, *token,
             "--server-ca", server.ca, "--simulate", str(count), "--node-name-prefix", prefix],
            self.log_path, timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=10)
            assert code == 0, f"kobune agent exited with {code} on SIGTERM"

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def cluster():
    old = os.environ.get("KOBUNE_NODE_MONITOR_GRACE_PERIOD")
    os.environ["KOBUNE_NODE_MONITOR_GRACE_PERIOD"] = str(GRACE)
    try:
        s = Server()
        yield s
        s.stop()
    finally:
        if old is None:
            os.environ.pop("KOBUNE_NODE_MONITOR_GRACE_PERIOD", None)
        else:
            os.environ["KOBUNE_NODE_MONITOR_GRACE_PERIOD"] = old


@pytest.fixture(scope="module")
def agents():
    running = {}
    yield running
    for a in running.values():
        if isinstance(a, Agent) and a.proc.poll() is None:
            a.kill9()


def wait_for(fn, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"condition not met in time (last: {last!r})")


def ready_status(node):
    return next((c["status"] for c in node["status"].get("conditions", []) if c["type"] == "Ready"), None)


def nodes(cluster):
    return {n["metadata"]["name"]: n for n in cluster.json("get", "nodes")["items"]}


def running_ready(pod):
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def pods(cluster, ns, selector):
    return cluster.json("get", "pods", "-n", ns, "-l", selector)["items"]


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx:1.27, resources: {requests: {cpu: 100m}}}]
"""

DAEMONSET = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agentd}
spec:
  selector: {matchLabels: {app: agentd}}
  template:
    metadata: {labels: {app: agentd}}
    spec:
      containers: [{name: d, image: busybox, command: [sleep, "3600"]}]
"""


def test_wrong_token_is_refused(cluster):
    r = subprocess.run([KOBUNE, "agent", "--server", cluster.url, "--token", "not-the-token",
                        "--server-ca", cluster.ca, "--simulate", "1", "--node-name-prefix", "bad"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "refused the token (401 Unauthorized)" in r.stderr, r.stderr
    assert "bad-0" not in nodes(cluster)


def test_wrong_ca_is_refused(cluster, tmp_path):
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=other-ca"],
                   check=True, capture_output=True)
    r = subprocess.run([KOBUNE, "agent", "--server", cluster.url, "--token", cluster.token,
                        "--server-ca", str(crt), "--simulate", "1", "--node-name-prefix", "bad"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "TLS handshake" in r.stderr and "--server-ca" in r.stderr, r.stderr
    r = subprocess.run([KOBUNE, "agent", "--server", cluster.url, "--token", cluster.token,
                        "--server-ca", cluster.ca, "--node-name-prefix", "bad"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--simulate" in r.stderr


def test_agent_registers_ready_nodes(cluster, agents):
    agents["a"] = Agent(cluster, 3, "ag")
    got = wait_for(lambda: (lambda ns: ns if all(ready_status(ns.get(f"ag-{i}", {"status": {}})) == "True"
                                                 for i in range(3)) else None)(nodes(cluster)))
    assert set(got) == {"ag-0", "ag-1", "ag-2"}
    n = got["ag-1"]
    assert n["status"]["allocatable"]["pods"] == "110"
    assert n["metadata"]["labels"]["kobune.io/simulated"] == "true"
    assert any(a["type"] == "InternalIP" for a in n["status"]["addresses"])
    cidrs = {x["spec"]["podCIDR"] for x in got.values()}
    assert len(cidrs) == 3
    out = cluster.kubectl("get", "nodes").stdout
    assert sum(1 for line in out.splitlines()[1:] if " Ready " in f" {line} ") == 3, out
    lease = cluster.json("get", "lease", "ag-0", "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == "ag-0"
    first = lease["spec"]["renewTime"]
    wait_for(lambda: cluster.json("get", "lease", "ag-0", "-n", "kube-node-lease")["spec"]["renewTime"] != first,
             timeout=25)


def test_deployment_runs_on_agent_nodes(cluster, agents):
    ns = new_ns(cluster, None)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOYMENT)
    got = wait_for(lambda: (lambda ps: ps if len(ps) == 6 and all(map(running_ready, ps)) else None)(
        pods(cluster, ns, "app=web")))
    assert {p["spec"]["nodeName"] for p in got} <= {"ag-0", "ag-1", "ag-2"}
    ips = [p["status"]["podIP"] for p in got]
    assert len(set(ips)) == 6 and all(ip.startswith("10.") for ip in ips)
    cluster.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=30s")
    # Graceful deletion: the agent deletes the pod once "stopped"; the ReplicaSet replaces it.
    victim = got[0]["metadata"]["name"]
    t0 = time.time()
    cluster.kubectl("delete", "pod", "-n", ns, victim, "--timeout=20s")
    assert time.time() - t0 < 15
    wait_for(lambda: (lambda ps: len(ps) == 6 and victim not in {p["metadata"]["name"] for p in ps}
                      and all(map(running_ready, ps)))(pods(cluster, ns, "app=web")))
    cluster.kubectl("scale", "-n", ns, "deployment/web", "--replicas=2")
    wait_for(lambda: len(pods(cluster, ns, "app=web")) == 2)
    agents["ns"] = ns


def test_daemonset_reaches_a_node_that_joins_later(cluster, agents):
    ns = agents.pop("ns")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=DAEMONSET)
    wait_for(lambda: (lambda ps: len(ps) == 3 and all(map(running_ready, ps)))(pods(cluster, ns, "app=agentd")))
    # This one reads the token from a file, as copied from the server's DATA_DIR/tls/token.
    agents["b"] = Agent(cluster, 2, "bg", token_file=str(cluster.data_dir / "tls" / "token"))
    got = wait_for(lambda: (lambda ps: ps if len(ps) == 5 and all(map(running_ready, ps)) else None)(
        pods(cluster, ns, "app=agentd")))
    assert {p["spec"]["nodeName"] for p in got} == {"ag-0", "ag-1", "ag-2", "bg-0", "bg-1"}
    # The later agent picked pod CIDRs no other node uses, so pod IPs stay unique.
    all_nodes = nodes(cluster)
    assert len({n["spec"]["podCIDR"] for n in all_nodes.values()}) == len(all_nodes) == 5
    assert len({p["status"]["podIP"] for p in got}) == 5
    agents["ns"] = ns


def test_agent_follows_pods_across_a_server_restart(cluster, agents):
    ns = agents["ns"]
    # The agents are paused while the server restarts with a small watch
    # cache and many changes happen: their resourceVersion is then too old
    # (410 Gone) and they must relist.
    for a in ("a", "b"):
        agents[a].proc.send_signal(signal.SIGSTOP)
    try:
        cluster.stop()
        cluster.extra_args = ["--watch-cache-size", "20"]
        cluster.start()
        cluster.kubectl("scale", "-n", ns, "deployment/web", "--replicas=5")
        cms = "".join(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: filler-{i}}}\ndata: {{i: '{i}'}}\n"
                      for i in range(40))
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=cms)
    finally:
        for a in ("a", "b"):
            agents[a].proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (lambda ps: len(ps) == 5 and all(map(running_ready, ps)))(pods(cluster, ns, "app=web")),
             timeout=60)
    assert "relisting pods" in agents["a"].log_path.read_text()


def test_killed_agent_nodes_go_not_ready_and_come_back(cluster, agents):
    agents["b"].kill9()
    wait_for(lambda: (lambda ns: all(ready_status(ns[f"bg-{i}"]) == "Unknown" for i in range(2)))(nodes(cluster)),
             timeout=GRACE + 45)
    out = cluster.kubectl("get", "nodes").stdout
    assert "NotReady" in out
    ns = nodes(cluster)
    assert all(ready_status(ns[f"ag-{i}"]) == "True" for i in range(3))
    # The agent comes back: the same nodes (same pod CIDRs) are Ready again
    # and its DaemonSet pods keep their IPs.
    cidrs = {n: ns[n]["spec"]["podCIDR"] for n in ("bg-0", "bg-1")}
    ds_ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods(cluster, agents["ns"], "app=agentd")}
    agents["b"] = Agent(cluster, 2, "bg")
    wait_for(lambda: (lambda ns: all(ready_status(ns[f"bg-{i}"]) == "True" for i in range(2)))(nodes(cluster)),
             timeout=30)
    assert {n: nodes(cluster)[n]["spec"]["podCIDR"] for n in cidrs} == cidrs
    got = wait_for(lambda: (lambda ps: ps if len(ps) == 5 and all(map(running_ready, ps)) else None)(
        pods(cluster, agents["ns"], "app=agentd")))
    assert {p["metadata"]["name"]: p["status"]["podIP"] for p in got} == ds_ips
    # SIGTERM: the agent leaves cleanly; its nodes stay registered.
    agents["b"].stop()
    agents["a"].stop()
    assert "ag-0" in nodes(cluster)
