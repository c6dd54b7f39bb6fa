"""Scheduling onto simulated nodes through kubectl: placement, nodeSelector,
cordon and drain, unschedulable pods with a FailedScheduling event, and
pod deletion through the node's agent."""

import json
import time

import pytest

from conftest import Server
from test_kubectl import new_ns


@pytest.fixture(scope="module")
def cluster():
    s = Server(extra_args=["--simulate-nodes", "3"])
    yield s
    s.stop()


def wait_for(fn, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def pod_json(cluster, ns, name):
    return cluster.json("get", "pod", name, "-n", ns)


def test_nodes_register_ready(cluster):
    rows = cluster.kubectl("get", "nodes").stdout.splitlines()
    assert rows[0].split()[:2] == ["NAME", "STATUS"]
    assert sorted(r.split()[0] for r in rows[1:]) == ["sim-0", "sim-1", "sim-2"]
    assert all(r.split()[1] == "Ready" for r in rows[1:])
    leases = cluster.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "name").stdout.split()
    assert len(leases) == 3


def test_run_schedules_and_runs(cluster):
    ns = new_ns(cluster, None)
    assert "pod/web created" in cluster.kubectl("run", "web", "--image=example.com/web:v1", "-n", ns).stdout
    cluster.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", ns, "--timeout=20s")
    p = pod_json(cluster, ns, "web")
    assert p["spec"]["nodeName"].startswith("sim-") and p["status"]["podIP"].startswith("10.42.")
    assert p["status"]["phase"] == "Running"
    wide = cluster.kubectl("get", "pod", "web", "-n", ns, "-o", "wide").stdout.splitlines()[1].split()
    assert wide[1] == "1/1" and wide[2] == "Running" and wide[5] == p["status"]["podIP"] and wide[6] == p["spec"]["nodeName"]
    assert 'pod "web" deleted' in cluster.kubectl("delete", "pod", "web", "-n", ns, "--timeout=20s").stdout
    assert cluster.kubectl("get", "pod", "web", "-n", ns, check=False).returncode != 0


def test_node_selector_cordon_and_unschedulable(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("label", "node", "sim-2", "disk=ssd", "--overwrite")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fast"},
           "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x"}]}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod))
    assert wait_for(lambda: pod_json(cluster, ns, "fast")["spec"].get("nodeName")) == "sim-2"
    cluster.kubectl("cordon", "sim-0")
    for i in range(4):
        cluster.kubectl("run", f"p{i}", "--image=x", "-n", ns)
    nodes = [wait_for(lambda i=i: pod_json(cluster, ns, f"p{i}")["spec"].get("nodeName")) for i in range(4)]
    assert "sim-0" not in nodes
    cluster.kubectl("uncordon", "sim-0")
    big = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
           "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "500"}}}]}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(big))
    cond = wait_for(lambda: next((c for c in pod_json(cluster, ns, "huge")["status"].get("conditions", []) if c["type"] == "PodScheduled"), None))
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable" and "Insufficient cpu" in cond["message"]
    desc = cluster.kubectl("describe", "pod", "huge", "-n", ns).stdout
    assert "FailedScheduling" in desc and "Insufficient cpu" in desc
    assert "Pending" in cluster.kubectl("get", "pod", "huge", "-n", ns).stdout


def test_drain_evicts_pods(cluster):
    ns = new_ns(cluster, None)
    for i in range(6):
        cluster.kubectl("run", f"d{i}", "--image=x", "-n", ns)
    for i in range(6):
        wait_for(lambda i=i: pod_json(cluster, ns, f"d{i}")["status"].get("phase") == "Running")
    on_sim1 = [i for i in range(6) if pod_json(cluster, ns, f"d{i}")["spec"]["nodeName"] == "sim-1"]
    out = cluster.kubectl("drain", "sim-1", "--force", "--ignore-daemonsets", "--timeout=30s")
    assert "drained" in out.stdout
    for i in on_sim1:
        assert cluster.kubectl("get", "pod", f"d{i}", "-n", ns, check=False).returncode != 0
    assert cluster.json("get", "node", "sim-1")["spec"]["unschedulable"] is True
    cluster.kubectl("uncordon", "sim-1")


def test_binding_subresource_sets_node_and_condition_in_one_write(cluster):
    """POST pods/binding (what kube-scheduler sends): one write sets
    spec.nodeName and PodScheduled=True; a second binding is a 409 naming the
    node; a uid precondition that does not match is refused."""
    import kubernetes
    from kubernetes.client.rest import ApiException

    ns = new_ns(cluster, None)
    api = kubernetes.client.CoreV1Api(cluster.client())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "manual"},
           "spec": {"schedulerName": "someone-else",
                    "containers": [{"name": "c", "image": "example.com/c:1"}]}}
    created = api.create_namespaced_pod(ns, pod)
    assert created.spec.node_name is None
    wrong = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "manual", "uid": "not-the-uid"},
             "target": {"apiVersion": "v1", "kind": "Node", "name": "sim-1"}}
    with pytest.raises(ApiException) as e:
        api.create_namespaced_pod_binding("manual", ns, wrong, _preload_content=False)
    assert e.value.status == 409 and "Precondition failed" in str(e.value.body)
    binding = {"apiVersion": "v1", "kind": "Binding",
               "metadata": {"name": "manual", "uid": created.metadata.uid, "annotations": {"bound-by": "test"}},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "sim-1"}}
    resp = api.create_namespaced_pod_binding("manual", ns, binding, _preload_content=False)
    assert resp.status == 201
    p = pod_json(cluster, ns, "manual")
    assert p["spec"]["nodeName"] == "sim-1"
    assert p["metadata"]["annotations"]["bound-by"] == "test"
    sched = [c for c in p["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert sched and sched[0]["status"] == "True"
    with pytest.raises(ApiException) as e:
        api.create_namespaced_pod_binding("manual", ns, binding, _preload_content=False)
    assert e.value.status == 409
    assert json.loads(e.value.body)["message"].endswith('pod manual is already assigned to node "sim-1"')
