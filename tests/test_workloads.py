"""Deployments and ReplicaSets through kubectl on simulated nodes: rollout,
scaling, image updates, history and undo, self-healing, cascading deletion,
the rolling update's surge/unavailability bounds and the Recreate strategy."""

import json
import subprocess
import threading
import time

import pytest

from conftest import KUBECTL_132, Server
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
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))


def pods(cluster, ns, selector="app=web"):
    items = cluster.json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def rollout(cluster, ns, name="web", timeout="60s"):
    out = cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={timeout}", timeout=90).stdout
    assert "successfully rolled out" in out, out
    return out


def replica_sets(cluster, ns):
    return cluster.json("get", "rs", "-n", ns)["items"]


def test_create_scale_update_undo_heal_delete(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("create", "deployment", "web", "--image=example.com/web:v1", "--replicas=3", "-n", ns)
    rollout(cluster, ns)
    row = cluster.kubectl("get", "deploy", "web", "-n", ns).stdout.splitlines()[1].split()
    assert row[0] == "web" and row[1] == "3/3" and row[2] == "3" and row[3] == "3", row

    d = cluster.json("get", "deploy", "web", "-n", ns)
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
    conds = {c["type"]: c for c in d["status"]["conditions"]}
    assert conds["Available"]["status"] == "True" and conds["Available"]["reason"] == "MinimumReplicasAvailable"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    (rs1,) = replica_sets(cluster, ns)
    h = rs1["metadata"]["labels"]["pod-template-hash"]
    assert rs1["metadata"]["name"] == f"web-{h}"
    assert rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert rs1["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert conds["Progressing"]["message"] == f'ReplicaSet "web-{h}" has successfully progressed.'
    ps = pods(cluster, ns)
    assert len(ps) == 3 and all(p["metadata"]["name"].startswith(f"web-{h}-") for p in ps)
    ref = ps[0]["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "ReplicaSet" and ref["controller"] and ref["blockOwnerDeletion"]
    events = cluster.kubectl("get", "events", "-n", ns).stdout
    assert f"Scaled up replica set web-{h} from 0 to 3" in events and "Created pod: web-" in events

    # Scale up.
    cluster.kubectl("scale", "deployment/web", "--replicas=10", "-n", ns)
    wait_for(lambda: sum(ready(p) for p in pods(cluster, ns)) == 10 and len(pods(cluster, ns)) == 10)
    rollout(cluster, ns)

    # New image: a rolling update to a second ReplicaSet.
    cluster.kubectl("set", "image", "deployment/web", "web=example.com/web:v2", "-n", ns)
    rollout(cluster, ns)
    ps = wait_for(lambda: (lambda ps: len(ps) == 10 and ps)(pods(cluster, ns)))
    assert {p["spec"]["containers"][0]["image"] for p in ps} == {"example.com/web:v2"}
    rss = {r["metadata"]["name"]: r for r in replica_sets(cluster, ns)}
    assert len(rss) == 2 and rss[rs1["metadata"]["name"]]["spec"]["replicas"] == 0
    hist = cluster.kubectl("rollout", "history", "deployment/web", "-n", ns).stdout
    revs = [line.split()[0] for line in hist.splitlines()[2:] if line.strip()]
    assert revs == ["1", "2"], hist

    # Undo: back to v1, as revision 3 of the first ReplicaSet.
    cluster.kubectl("rollout", "undo", "deployment/web", "-n", ns)
    rollout(cluster, ns)
    ps = wait_for(lambda: (lambda ps: len(ps) == 10 and ps)(pods(cluster, ns)))
    assert {p["spec"]["containers"][0]["image"] for p in ps} == {"example.com/web:v1"}
    rss = {r["metadata"]["name"]: r for r in replica_sets(cluster, ns)}
    first = rss[rs1["metadata"]["name"]]
    assert first["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert first["spec"]["replicas"] == 10
    d = cluster.json("get", "deploy", "web", "-n", ns)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    hist = cluster.kubectl("rollout", "history", "deployment/web", "-n", ns).stdout
    assert [line.split()[0] for line in hist.splitlines()[2:] if line.strip()] == ["2", "3"], hist

    # A deleted pod is replaced.
    victim = ps[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")
    wait_for(lambda: (lambda ps: len(ps) == 10 and victim not in {p["metadata"]["name"] for p in ps}
                      and all(ready(p) for p in ps))(pods(cluster, ns)))

    # Deleting the deployment cascades to ReplicaSets and pods.
    cluster.kubectl("delete", "deployment", "web", "-n", ns)
    wait_for(lambda: not replica_sets(cluster, ns))
    wait_for(lambda: not cluster.json("get", "pods", "-n", ns)["items"], timeout=60)


def test_replicaset_adopts_releases_and_scales(cluster):
    ns = new_ns(cluster, None)
    orphan = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan", "labels": {"app": "fe"}},
              "spec": {"containers": [{"name": "c", "image": "x"}]}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(orphan))
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "fe"},
          "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "fe"}},
                   "template": {"metadata": {"labels": {"app": "fe"}},
                                "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(rs))
    wait_for(lambda: cluster.json("get", "rs", "fe", "-n", ns)["status"].get("readyReplicas") == 3)
    ps = pods(cluster, ns, "app=fe")
    assert len(ps) == 3 and "orphan" in {p["metadata"]["name"] for p in ps}
    o = cluster.json("get", "pod", "orphan", "-n", ns)
    assert o["metadata"]["ownerReferences"][0]["name"] == "fe"
    st = cluster.json("get", "rs", "fe", "-n", ns)["status"]
    assert st["replicas"] == 3 and st["availableReplicas"] == 3 and st["fullyLabeledReplicas"] == 3
    # Relabelled: released, and replaced.
    cluster.kubectl("label", "pod", "orphan", "app=gone", "--overwrite", "-n", ns)
    wait_for(lambda: not cluster.json("get", "pod", "orphan", "-n", ns)["metadata"].get("ownerReferences"))
    wait_for(lambda: len(pods(cluster, ns, "app=fe")) == 3)
    # Scaling down deletes the surplus.
    cluster.kubectl("scale", "rs/fe", "--replicas=1", "-n", ns)
    wait_for(lambda: len(pods(cluster, ns, "app=fe")) == 1)
    wait_for(lambda: cluster.json("get", "rs", "fe", "-n", ns)["status"].get("replicas") == 1)
    assert "Deleted pod: fe-" in cluster.kubectl("get", "events", "-n", ns).stdout


class PodWatcher(threading.Thread):
    """Follows `kubectl get pods -w -o json` and records (ready, total) of non-terminating pods."""

    def __init__(self, cluster, ns):
        super().__init__(daemon=True)
        self.pods = {}
        self.samples = []
        self.proc = subprocess.Popen(
            [KUBECTL_132, "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-n", ns, "-l", "app=web",
             "-w", "-o", "json", "--output-watch-events"],
            stdout=subprocess.PIPE, text=True)

    def run(self):
        dec = json.JSONDecoder()
        buf = ""
        for line in self.proc.stdout:
            buf += line
            while True:
                s = buf.lstrip()
                if not s:
                    buf = ""
                    break
                try:
                    ev, end = dec.raw_decode(s)
                except ValueError:
                    break
                buf = s[end:]
                self.on_event(ev)

    def on_event(self, ev):
        obj = ev["object"]
        name = obj["metadata"]["name"]
        if ev["type"] == "DELETED" or obj["metadata"].get("deletionTimestamp"):
            self.pods.pop(name, None)
        else:
            self.pods[name] = obj
        live = list(self.pods.values())
        self.samples.append((sum(ready(p) for p in live), len(live)))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def test_rolling_update_respects_surge_and_unavailability(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("create", "deployment", "web", "--image=example.com/web:v1", "--replicas=20", "-n", ns)
    cluster.kubectl("patch", "deployment/web", "-n", ns, "-p",
                    json.dumps({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}))
    rollout(cluster, ns)
    w = PodWatcher(cluster, ns)
    w.start()
    try:
        wait_for(lambda: w.samples and w.samples[-1] == (20, 20))
        start = len(w.samples)
        cluster.kubectl("set", "image", "deployment/web", "web=example.com/web:v2", "-n", ns)
        rollout(cluster, ns, timeout="90s")
        ps = wait_for(lambda: (lambda ps: len(ps) == 20 and ps)(pods(cluster, ns)))
        assert {p["spec"]["containers"][0]["image"] for p in ps} == {"example.com/web:v2"}
        time.sleep(1)
    finally:
        w.stop()
    during = w.samples[start:]
    assert len(during) > 40, during
    min_ready = min(r for r, _ in during)
    max_total = max(t for _, t in during)
    print(f"rolling update: {len(during)} samples, min ready {min_ready}, max total {max_total}")
    assert min_ready >= 20 - 5, f"ready dropped to {min_ready}"
    assert max_total <= 20 + 5, f"total reached {max_total}"
    # The surge was used.
    assert max_total > 20


def test_recreate_strategy(cluster):
    ns = new_ns(cluster, None)
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 4, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "web", "image": "example.com/web:v1"}]}}}}
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(d))
    rollout(cluster, ns)
    w = PodWatcher(cluster, ns)
    w.start()
    try:
        wait_for(lambda: w.samples and w.samples[-1] == (4, 4))
        start = len(w.samples)
        cluster.kubectl("set", "image", "deployment/web", "web=example.com/web:v2", "-n", ns)
        rollout(cluster, ns)
        ps = wait_for(lambda: (lambda ps: len(ps) == 4 and all(ready(p) for p in ps) and ps)(pods(cluster, ns)))
        assert {p["spec"]["containers"][0]["image"] for p in ps} == {"example.com/web:v2"}
    finally:
        w.stop()
    # Recreate: every old pod went before any new one came (the count reached 0).
    assert any(t == 0 for _, t in w.samples[start:]), w.samples[start:]
    assert max(t for _, t in w.samples[start:]) <= 4


def test_paused_deployment_scales_but_does_not_roll_out(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("create", "deployment", "web", "--image=example.com/web:v1", "--replicas=2", "-n", ns)
    rollout(cluster, ns)
    cluster.kubectl("rollout", "pause", "deployment/web", "-n", ns)
    cluster.kubectl("set", "image", "deployment/web", "web=example.com/web:v2", "-n", ns)
    cluster.kubectl("scale", "deployment/web", "--replicas=4", "-n", ns)
    wait_for(lambda: (lambda ps: len(ps) == 4 and all(ready(p) for p in ps))(pods(cluster, ns)))
    assert len(replica_sets(cluster, ns)) == 1
    assert {p["spec"]["containers"][0]["image"] for p in pods(cluster, ns)} == {"example.com/web:v1"}
    cond = next(c for c in cluster.json("get", "deploy", "web", "-n", ns)["status"]["conditions"] if c["type"] == "Progressing")
    assert cond["reason"] == "DeploymentPaused"
    cluster.kubectl("rollout", "resume", "deployment/web", "-n", ns)
    rollout(cluster, ns)
    assert {p["spec"]["containers"][0]["image"] for p in pods(cluster, ns)} == {"example.com/web:v2"}
    # rollout restart: a new template annotation, a new ReplicaSet.
    cluster.kubectl("rollout", "restart", "deployment/web", "-n", ns)
    rollout(cluster, ns)
    assert len(replica_sets(cluster, ns)) == 3


def test_history_limit_and_progress_deadline(cluster):
    ns = new_ns(cluster, None)
    cluster.kubectl("create", "deployment", "web", "--image=example.com/web:v1", "--replicas=2", "-n", ns)
    cluster.kubectl("patch", "deployment/web", "-n", ns, "-p", json.dumps({"spec": {"revisionHistoryLimit": 1}}))
    rollout(cluster, ns)
    for v in ["v2", "v3", "v4"]:
        cluster.kubectl("set", "image", "deployment/web", f"web=example.com/web:{v}", "-n", ns)
        rollout(cluster, ns)
    # The current ReplicaSet and one old one are kept.
    wait_for(lambda: len(replica_sets(cluster, ns)) == 2)
    revs = sorted(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for r in replica_sets(cluster, ns))
    assert revs == ["3", "4"]

    # Pods that can never be scheduled: the rollout exceeds its deadline.
    cluster.kubectl("patch", "deployment/web", "-n", ns, "-p", json.dumps({"spec": {
        "progressDeadlineSeconds": 2,
        "template": {"spec": {"nodeSelector": {"disk": "none-such"}}}}}))
    r = cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s", check=False)
    assert r.returncode != 0 and "exceeded its progress deadline" in r.stderr, (r.stdout, r.stderr)
    cond = next(c for c in cluster.json("get", "deploy", "web", "-n", ns)["status"]["conditions"] if c["type"] == "Progressing")
    assert cond["status"] == "False" and cond["reason"] == "ProgressDeadlineExceeded"
    assert "has timed out progressing" in cond["message"]
    # maxUnavailable 25% of 2 rounds down to 0: the old pods stay available.
    assert sum(ready(p) for p in pods(cluster, ns)) >= 2


def test_progress_deadline_names_the_pods_holding_the_rollout(cluster):
    """A Deployment that cannot become available says which pods are stuck
    and why: `rollout status` fails on the progress deadline and `describe`
    shows a ProgressDeadlineExceeded event naming each pod and its reason."""
    ns = new_ns(cluster, None)
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stuck"},
         "spec": {"replicas": 2, "progressDeadlineSeconds": 2,
                  "selector": {"matchLabels": {"app": "stuck"}},
                  "template": {"metadata": {"labels": {"app": "stuck"}},
                               "spec": {"nodeSelector": {"disk": "nowhere"},
                                        "containers": [{"name": "c", "image": "example.com/c:1"}]}}}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(d))
    r = cluster.kubectl("rollout", "status", "deployment/stuck", "-n", ns, "--timeout=40s", check=False)
    assert r.returncode != 0 and 'deployment "stuck" exceeded its progress deadline' in r.stderr, r.stderr
    names = sorted(p["metadata"]["name"] for p in pods(cluster, ns, "app=stuck"))
    assert len(names) == 2

    def described():
        out = cluster.kubectl("describe", "deployment", "stuck", "-n", ns).stdout
        return out if "ProgressDeadlineExceeded" in out and "are not ready" in out else None
    out = " ".join(wait_for(described, timeout=20).split())
    assert "2 of 2 pods are not ready:" in out
    for n in names:
        assert f"{n}: Unschedulable (0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.)" in out
    cond = [c for c in cluster.json("get", "deployment", "stuck", "-n", ns)["status"]["conditions"]
            if c["type"] == "Progressing"][0]
    assert cond["reason"] == "ProgressDeadlineExceeded" and "2 of 2 pods are not ready" in cond["message"]
