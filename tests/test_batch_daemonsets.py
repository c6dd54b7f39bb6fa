"""Jobs, CronJobs and DaemonSets through kubectl on simulated nodes."""

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


def wait_for(fn, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def live_pods(cluster, ns, selector):
    items = cluster.json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def set_phase(cluster, ns, pod, phase):
    cluster.kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": phase}}))


JOB = """apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff}
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: app, image: example.com/batch:v1}}]
"""


def test_job_completes(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=JOB.format(name="x", completions=3, parallelism=2, backoff=6))
    sel = "batch.kubernetes.io/job-name=x"
    first = wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(live_pods(cluster, ns, sel)))
    job = cluster.json("get", "job", "x", "-n", ns)
    uid = job["metadata"]["uid"]
    assert job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == uid
    for p in first:
        assert p["metadata"]["name"].startswith("x-")
        labels = p["metadata"]["labels"]
        assert labels["controller-uid"] == uid and labels["job-name"] == "x"
        assert p["metadata"]["ownerReferences"][0]["kind"] == "Job"
    time.sleep(0.5)
    assert len(live_pods(cluster, ns, sel)) == 2, "never more than parallelism"
    for p in first:
        set_phase(cluster, ns, p["metadata"]["name"], "Succeeded")
    names = {p["metadata"]["name"] for p in first}

    def third():
        ps = [p for p in live_pods(cluster, ns, sel) if p["metadata"]["name"] not in names]
        return ps[0] if ps else None

    set_phase(cluster, ns, wait_for(third)["metadata"]["name"], "Succeeded")
    cluster.kubectl("wait", "--for=condition=Complete", "job/x", "-n", ns, "--timeout=30s", timeout=40)
    row = cluster.kubectl("get", "job", "x", "-n", ns).stdout.splitlines()[1].split()
    assert "3/3" in row, row
    job = cluster.json("get", "job", "x", "-n", ns)
    st = job["status"]
    assert st["succeeded"] == 3 and st.get("active", 0) == 0 and st["completionTime"] and st["startTime"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Complete"]["status"] == "True" and conds["SuccessCriteriaMet"]["status"] == "True"
    # Counted pods lose the tracking finalizer.
    for p in cluster.json("get", "pods", "-n", ns, "-l", sel)["items"]:
        assert "batch.kubernetes.io/job-tracking" not in p["metadata"].get("finalizers", [])
    events = cluster.kubectl("get", "events", "-n", ns).stdout
    assert "SuccessfulCreate" in events and "Completed" in events


def test_job_backoff_limit(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=JOB.format(name="bad", completions=1, parallelism=1, backoff=1))
    sel = "batch.kubernetes.io/job-name=bad"
    failed = set()
    for _ in range(2):
        p = wait_for(lambda: next((p for p in live_pods(cluster, ns, sel)
                                   if p["metadata"]["name"] not in failed), None))
        set_phase(cluster, ns, p["metadata"]["name"], "Failed")
        failed.add(p["metadata"]["name"])
    cluster.kubectl("wait", "--for=condition=Failed", "job/bad", "-n", ns, "--timeout=30s", timeout=40)
    job = cluster.json("get", "job", "bad", "-n", ns)
    conds = {c["type"]: c for c in job["status"]["conditions"]}
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 2
    wait_for(lambda: not [p for p in live_pods(cluster, ns, sel) if p["status"].get("phase") not in ("Failed",)])
    assert "BackoffLimitExceeded" in cluster.kubectl("get", "events", "-n", ns).stdout


def test_cronjob_schedules_and_set_image(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("create", "cronjob", "tick", "--image=example.com/batch:v1", "--schedule=* * * * *", "-n", ns)
    cluster.kubectl("set", "image", "cronjobs", "--all", "tick=example.com/batch:v2", "-n", ns)
    cj = cluster.json("get", "cronjob", "tick", "-n", ns)
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/batch:v2"

    def owned():
        return [j for j in cluster.json("get", "jobs", "-n", ns)["items"]
                if any(r["kind"] == "CronJob" and r["uid"] == cj["metadata"]["uid"]
                       for r in j["metadata"].get("ownerReferences", []))]

    jobs = wait_for(owned, timeout=75)
    j = jobs[0]
    minutes = int(j["metadata"]["name"].rsplit("-", 1)[1])
    assert j["metadata"]["name"] == f"tick-{minutes}" and minutes * 60 <= time.time()
    assert j["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/batch:v2"
    cj = wait_for(lambda: (lambda c: c if c.get("status", {}).get("lastScheduleTime") else None)(
        cluster.json("get", "cronjob", "tick", "-n", ns)))
    assert cj["status"]["active"][0]["name"] == j["metadata"]["name"]
    assert "SuccessfulCreate" in cluster.kubectl("get", "events", "-n", ns).stdout


DS = """apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: app, image: example.com/agent:v1}]
"""


def node_obj(name, taints=None):
    spec = {"taints": taints} if taints else {}
    return json.dumps({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
                       "spec": spec})


def pinned_node(p):
    terms = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return terms[0]["matchFields"][0]["values"][0]


def test_daemonset(cluster):
    ns = new_ns(cluster, None)
    nodes = [n["metadata"]["name"] for n in cluster.json("get", "nodes")["items"]]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=DS)
    out = cluster.kubectl("rollout", "status", "ds/agent", "-n", ns, "--timeout=60s", timeout=70).stdout
    assert "successfully rolled out" in out, out
    ps = live_pods(cluster, ns, "app=agent")
    assert sorted(p["spec"]["nodeName"] for p in ps) == sorted(nodes)
    for p in ps:
        assert pinned_node(p) == p["spec"]["nodeName"]
        assert p["metadata"]["labels"]["controller-revision-hash"]
        keys = {t.get("key") for t in p["spec"]["tolerations"]}
        assert "node.kubernetes.io/not-ready" in keys and "node.kubernetes.io/unschedulable" in keys
    ds = cluster.json("get", "ds", "agent", "-n", ns)
    st = ds["status"]
    assert st["desiredNumberScheduled"] == len(nodes) == st["numberReady"] == st["updatedNumberScheduled"]
    assert cluster.json("get", "controllerrevisions", "-n", ns)["items"]

    # Rolling update to v2, then history.
    cluster.kubectl("set", "image", "ds/agent", "app=example.com/agent:v2", "-n", ns)
    cluster.kubectl("rollout", "status", "ds/agent", "-n", ns, "--timeout=60s", timeout=70)
    wait_for(lambda: sorted(p["spec"]["containers"][0]["image"] for p in live_pods(cluster, ns, "app=agent"))
             == ["example.com/agent:v2"] * len(nodes))
    hist = cluster.kubectl("rollout", "history", "ds/agent", "-n", ns).stdout
    assert "1" in hist and "2" in hist, hist

    # A node joining later gets a pod; a tainted new node gets none.
    cluster.kubectl("apply", "-f", "-", input=node_obj("late-node"))
    cluster.kubectl("apply", "-f", "-", input=node_obj("tainted-node", [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]))
    try:
        wait_for(lambda: any(pinned_node(p) == "late-node" for p in live_pods(cluster, ns, "app=agent")))
        time.sleep(1)
        assert not any(pinned_node(p) == "tainted-node" for p in live_pods(cluster, ns, "app=agent"))
        ds = cluster.json("get", "ds", "agent", "-n", ns)
        assert ds["status"]["desiredNumberScheduled"] == len(nodes) + 1
    finally:
        cluster.kubectl("delete", "node", "late-node", "tainted-node", "--wait=false", check=False)
