"""The node lifecycle controller through kubectl: a node whose Lease and
status stop being renewed goes Unknown with the unreachable taints and a
NodeNotReady event, its pods are evicted (TaintManagerEviction) and their
ReplicaSet replaces them on healthy simulated nodes; renewed heartbeats bring
it back without taints; deleting a Node removes its pods (pod GC).

The grace period is shortened with KOBUNE_NODE_MONITOR_GRACE_PERIOD. It must
stay above the simulated nodes' 10 s lease renewal (plus the monitor period)
or the simulated nodes themselves would flap to Unknown: 15 s here."""

import datetime
import json
import os
import time

import pytest

from conftest import Server
from test_kubectl import new_ns

GRACE = 15


@pytest.fixture(scope="module")
def cluster():
    old = os.environ.get("KOBUNE_NODE_MONITOR_GRACE_PERIOD")
    os.environ["KOBUNE_NODE_MONITOR_GRACE_PERIOD"] = str(GRACE)
    try:
        # Pods tolerate a lost node for 3 s (DefaultTolerationSeconds; 300 s by default), one of the
        # two settings given as k3s passes kube-apiserver flags.
        s = Server(extra_args=["--simulate-nodes", "2", "--default-not-ready-toleration-seconds", "3",
                               "--kube-apiserver-arg", "default-unreachable-toleration-seconds=3"])
    finally:
        if old is None:
            os.environ.pop("KOBUNE_NODE_MONITOR_GRACE_PERIOD", None)
        else:
            os.environ["KOBUNE_NODE_MONITOR_GRACE_PERIOD"] = old
    yield s
    s.stop()


def wait_for(fn, timeout=20, every=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if every:
            every()
        v = fn()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def micro_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(ready="True"):
    t = now()
    c = lambda ty, s, r: {"type": ty, "status": s, "reason": r, "message": r,
                          "lastHeartbeatTime": t, "lastTransitionTime": t}
    return [c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            c("PIDPressure", "False", "KubeletHasSufficientPID"),
            c("Ready", ready, "KubeletReady")]


def make_node(cluster, name, labels):
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
            "spec": {},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                       "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                       "conditions": conditions()}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(node))
    post_status(cluster, name)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": name, "namespace": "kube-node-lease"},
             "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(lease))


def post_status(cluster, name):
    cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"conditions": conditions()}}))


def renew(cluster, name):
    cluster.kubectl("patch", "lease", name, "-n", "kube-node-lease", "--type=merge",
                    "-p", json.dumps({"spec": {"renewTime": micro_now()}}))


def node_json(cluster, name):
    return cluster.json("get", "node", name)


def ready(node):
    return next((c for c in node["status"].get("conditions", []) if c["type"] == "Ready"), {})


def taints(node):
    return {(t["key"], t["effect"]): t for t in node["spec"].get("taints", [])}


def pods(cluster, ns):
    return cluster.json("get", "pods", "-n", ns)["items"]


RS = """
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {lost: "true"}
      containers: [{name: c, image: example.com/web:v1}]
"""


def test_unreachable_node_is_tainted_evicted_and_restored(cluster):
    ns = new_ns(cluster, None)
    node = "lost-node"
    make_node(cluster, node, {"lost": "true"})
    keep_alive = lambda: renew(cluster, node)
    # Pods land on it while it is healthy: one bare, one from a ReplicaSet.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(bare))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=RS)
    # Admission gave the pod upstream's default tolerations of a lost node.
    tols = cluster.json("get", "pod", "bare", "-n", ns)["spec"]["tolerations"]
    assert tols == [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                     "tolerationSeconds": 3},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                     "tolerationSeconds": 3}], tols
    first = wait_for(lambda: next((p for p in pods(cluster, ns)
                                   if p["metadata"]["name"].startswith("web-")
                                   and p["spec"].get("nodeName") == node), None), every=keep_alive)
    # Replacements may go anywhere.
    cluster.kubectl("patch", "rs", "web", "-n", ns, "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]')
    assert ready(node_json(cluster, node))["status"] == "True"
    assert not taints(node_json(cluster, node))

    # Nobody renews: Unknown after the grace period, with the unreachable taints.
    stopped = time.time()
    n = wait_for(lambda: (lambda o: o if ready(o).get("status") == "Unknown" else None)(node_json(cluster, node)),
                 timeout=GRACE + 15)
    assert time.time() - stopped >= GRACE - 2
    r = ready(n)
    assert r["reason"] == "NodeStatusUnknown" and r["message"] == "Kubelet stopped posting node status."
    mem = next(c for c in n["status"]["conditions"] if c["type"] == "MemoryPressure")
    assert mem["status"] == "Unknown"
    n = wait_for(lambda: (lambda o: o if len(taints(o)) == 2 else None)(node_json(cluster, node)))
    t = taints(n)
    assert set(t) == {("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")}
    assert t[("node.kubernetes.io/unreachable", "NoExecute")].get("timeAdded")
    assert "NotReady" in cluster.kubectl("get", "node", node).stdout
    evs = cluster.json("get", "events", "-A")["items"]
    assert any(e["reason"] == "NodeNotReady" and e["involvedObject"]["name"] == node for e in evs)
    # Healthy simulated nodes are untouched.
    for sim in ("sim-0", "sim-1"):
        s = node_json(cluster, sim)
        assert ready(s)["status"] == "True" and not taints(s)

    # Its pods are evicted (they stay Terminating: no agent finishes them) and
    # the ReplicaSet replaces its pod on a healthy node.
    def evicted():
        ps = {p["metadata"]["name"]: p for p in pods(cluster, ns)}
        gone = lambda name: name not in ps or ps[name]["metadata"].get("deletionTimestamp")
        return gone("bare") and gone(first["metadata"]["name"])
    wait_for(evicted)
    repl = wait_for(lambda: next((p for p in pods(cluster, ns)
                                  if p["metadata"]["name"].startswith("web-")
                                  and not p["metadata"].get("deletionTimestamp")
                                  and p["spec"].get("nodeName", "").startswith("sim-")), None))
    assert repl["metadata"]["name"] != first["metadata"]["name"]
    evs = cluster.json("get", "events", "-n", ns)["items"]
    msgs = {e["message"] for e in evs if e["reason"] == "TaintManagerEviction"}
    assert f"Marking for deletion Pod {ns}/bare" in msgs
    assert f"Marking for deletion Pod {ns}/{first['metadata']['name']}" in msgs

    # Heartbeats resume: Ready again, taints removed.
    renew(cluster, node)
    post_status(cluster, node)
    n = wait_for(lambda: (lambda o: o if not taints(o) else None)(node_json(cluster, node)), every=keep_alive)
    assert ready(n)["status"] == "True"
    assert "NotReady" not in cluster.kubectl("get", "node", node).stdout

    # Deleting the node collects the pods still bound to it.
    cluster.kubectl("delete", "node", node)
    wait_for(lambda: not any(p["spec"].get("nodeName") == node for p in pods(cluster, ns)))
    assert any(p["metadata"]["name"] == repl["metadata"]["name"] for p in pods(cluster, ns))


def test_deleted_node_pods_are_collected(cluster):
    ns = new_ns(cluster, None)
    node = "doomed-node"
    make_node(cluster, node, {})
    for i in range(2):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}
        cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod))
    assert len(pods(cluster, ns)) == 2
    cluster.kubectl("delete", "node", node)
    wait_for(lambda: not pods(cluster, ns), timeout=15)
    cluster.kubectl("delete", "lease", node, "-n", "kube-node-lease", check=False)
