"""Workload scenarios on a real node (containerd) with the project's images,
driven only through kubectl: a kustomize base with staging/production
overlays (diff, apply, serve through the Ingress), a watched rolling update
of 20 replicas, rollout undo and history, a CronJob whose image changes, a
DaemonSet over real, simulated and late nodes, and a drain held by a PDB.

One server with its node agent (`kobune-node`) and two simulated nodes
(`sim-0`, `sim-1`), cordoned except where a scenario wants them. Uses the
kobune0 bridge and host iptables: run under `flock /tmp/kobune-containerd.lock`."""

import calendar
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from conftest import KOBUNE, KUBECTLS, free_port

if not shutil.which("containerd"):
    if os.environ.get("CI") == "1":
        raise RuntimeError("containerd is required for tests/test_scenarios.py when CI=1")
    pytest.skip("containerd is not installed", allow_module_level=True)

from test_containerd import NODE, AgentServer, wait_for  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIMS = ["sim-0", "sim-1"]


@pytest.fixture(scope="module")
def node():
    http_port = free_port()
    s = AgentServer(extra_args=["--node-name", NODE, "--simulate-nodes", "2",
                                "--ingress-http-port", str(http_port), "--ingress-https-port", "0"])
    s.http_port = http_port
    wait_for(lambda: all(s.kubectl("get", "node", n, check=False).returncode == 0 for n in SIMS),
             what="simulated nodes registered")
    # Workloads that must run on the real node: keep the simulated ones cordoned.
    s.kubectl("cordon", *SIMS)
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def apply(node, obj, **kw):
    return node.kubectl("apply", "-f", "-", input=json.dumps(obj), **kw)


def http_get(ip, path="/", port=8080, host=None):
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def live_pods(node, ns, selector):
    items = node.json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def is_ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions") or [])


def ready_since(p):
    """The Ready condition's lastTransitionTime (seconds since the epoch) when Ready."""
    for c in p.get("status", {}).get("conditions") or []:
        if c["type"] == "Ready" and c["status"] == "True":
            return calendar.timegm(time.strptime(c["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))
    return None


class Watch(threading.Thread):
    """`kubectl get KIND -w --output-watch-events -o json`, each event handed to
    `on_event(type, object, received_at)` as it arrives."""

    def __init__(self, node, kind, ns, on_event):
        super().__init__(daemon=True)
        self.on_event = on_event
        self.error = None
        self.proc = subprocess.Popen(
            [node.kubectl_binary, "--kubeconfig", str(node.kubeconfig), "--cache-dir", str(node.cache_dir),
             "get", kind, "-n", ns, "-w", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.start()

    def run(self):
        dec = json.JSONDecoder()
        buf = ""
        try:
            while True:
                chunk = self.proc.stdout.readline()
                if not chunk:
                    return
                buf += chunk
                while True:
                    stripped = buf.lstrip()
                    if not stripped:
                        buf = ""
                        break
                    try:
                        ev, end = dec.raw_decode(stripped)
                    except json.JSONDecodeError:
                        break
                    buf = stripped[end:]
                    self.on_event(ev["type"], ev["object"], time.time())
        except Exception as e:  # surfaced by stop()
            self.error = e

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.join(timeout=10)
        if self.error:
            raise self.error


# ---------------------------------------------------------------------------
# (1) kustomize base + overlays: diff, apply, serve, empty diff.

def test_kustomize_overlays_diff_apply_and_serve(node):
    k137 = KUBECTLS["1.37"]
    prod = str(SCENARIOS / "overlays" / "production")
    staging = str(SCENARIOS / "overlays" / "staging")
    # kubectl diff dry-runs in the namespace, so it must exist first.
    node.kubectl("create", "namespace", "shop-production", binary=k137)
    r = node.kubectl("diff", "-k", prod, binary=k137, check=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    out = r.stdout
    print("\nkubectl diff -k overlays/production (before apply):\n" + out)
    for line in [r"^\+  replicas: 2$", r"^\+  APP_ENV: production$", r"^\+  - host: production\.shop\.test$",
                 r"^\+  minReplicas: 2$", r"^\+  maxReplicas: 4$", r"^\+            cpu: 50m$",
                 r"^\+            memory: 32Mi$", r"^\+  namespace: shop-production$",
                 r"^\+          value: v1-\$\(APP_ENV\)$"]:
        assert re.search(line, out, re.M), f"{line} not in diff:\n{out}"
    assert "staging" not in out and "APP_ENV: base" not in out
    assert not live_pods(node, "shop-production", "app=web"), "diff must not create anything"
    assert node.kubectl("get", "deployment", "-n", "shop-production", "-o", "name", binary=k137).stdout == ""

    for ov in (prod, staging):
        node.kubectl("apply", "-k", ov, binary=k137)
    expect = {"production": (2, 4, "50m", "32Mi"), "staging": (1, 2, "20m", "24Mi")}
    for env, (reps, max_reps, cpu, mem) in expect.items():
        ns = f"shop-{env}"
        d = node.json("get", "deployment", "web", "-n", ns, binary=k137)
        assert d["spec"]["replicas"] == reps
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["requests"] == {"cpu": cpu, "memory": mem}
        cm_name = c["env"][0]["valueFrom"]["configMapKeyRef"]["name"]
        assert re.fullmatch(r"web-config-[a-z0-9]{10}", cm_name), cm_name
        assert node.json("get", "configmap", cm_name, "-n", ns)["data"] == {"APP_ENV": env}
        hpa = node.json("get", "hpa.v2.autoscaling", "web", "-n", ns, binary=k137)
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (reps, max_reps)
        ing = node.json("get", "ingress", "web", "-n", ns, binary=k137)
        assert [r["host"] for r in ing["spec"]["rules"]] == [f"{env}.shop.test"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shop"
        node.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=60s", binary=k137)

    for env, (reps, *_rest) in expect.items():
        ns = f"shop-{env}"
        pods = live_pods(node, ns, "app=web")
        assert len(pods) == reps and all(p["spec"]["nodeName"] == NODE for p in pods)
        for p in pods:
            assert http_get(p["status"]["podIP"], "/version") == (200, f"v1-{env}\n")
        # Through the Ingress, by the overlay's host: every pod answers with the overlay's value.
        names = {p["metadata"]["name"] for p in pods}
        seen = set()

        def all_answered():
            status, body = http_get("127.0.0.1", "/", port=node.http_port, host=f"{env}.shop.test")
            if status == 200:
                seen.add(body.split()[2])
            return names <= seen
        wait_for(all_answered, timeout=30, what=f"{env} pods answer through the Ingress (seen {seen})")
        assert http_get("127.0.0.1", "/version", port=node.http_port, host=f"{env}.shop.test") == \
            (200, f"v1-{env}\n")
    assert http_get("127.0.0.1", "/", port=node.http_port, host="web.example.test")[0] == 404

    for ov in (prod, staging):
        r = node.kubectl("diff", "-k", ov, binary=k137, check=False)
        assert (r.returncode, r.stdout) == (0, ""), (ov, r.stdout, r.stderr)
    # An idle app stays at the HPA's minimum: the deployment was not rescaled.
    assert node.json("get", "deployment", "web", "-n", "shop-production")["spec"]["replicas"] == 2
    node.kubectl("delete", "namespace", "shop-production", "shop-staging", "--wait=false")


# ---------------------------------------------------------------------------
# (2) a watched rolling update of 20 replicas, (3) undo and history.

REPLICAS, SURGE, UNAVAILABLE, MIN_READY = 20, 5, 5, 2


def rolling_deployment(ns):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns,
                     "annotations": {"kubernetes.io/change-cause": "first release v1"}},
        "spec": {
            "replicas": REPLICAS, "minReadySeconds": MIN_READY,
            "selector": {"matchLabels": {"app": "roll"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "roll"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web", "image": "kobune.local/webapp:v1", "imagePullPolicy": "Never",
                        "env": [{"name": "DRAIN_SECONDS", "value": "0"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }


class RolloutObserver:
    """Follows pods and ReplicaSets by watch and checks the rolling update's bounds at every event."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pods, self.rs = {}, {}
        self.armed = False
        self.violations = []
        self.min_ready, self.max_total = None, 0
        self.ready_at = {}      # pod name -> first Ready lastTransitionTime
        self.hash_of = {}       # pod name -> pod-template-hash, for every pod ever seen
        self.rs_samples = []    # (received_at, pod-template-hash, availableReplicas)

    def on_pod(self, typ, p, _t):
        with self.lock:
            name = p["metadata"]["name"]
            if typ == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = p
                self.hash_of[name] = p["metadata"]["labels"]["pod-template-hash"]
                since = ready_since(p)
                if since is not None:
                    self.ready_at.setdefault(name, since)
            live = [q for q in self.pods.values() if not q["metadata"].get("deletionTimestamp")]
            ready = sum(1 for q in live if is_ready(q))
            if not self.armed:
                self.armed = ready == REPLICAS and len(live) == REPLICAS
                return
            self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
            self.max_total = max(self.max_total, len(live))
            if ready < REPLICAS - UNAVAILABLE:
                self.violations.append(f"{ready} ready pods after {typ} {name}")
            if len(live) > REPLICAS + SURGE:
                self.violations.append(f"{len(live)} pods after {typ} {name}")

    def on_rs(self, typ, rs, t):
        if typ == "DELETED":
            return
        with self.lock:
            h = rs["metadata"]["labels"]["pod-template-hash"]
            self.rs_samples.append((t, h, rs.get("status", {}).get("availableReplicas", 0)))


def rollout_with_watch(node, ns, change, cause):
    obs = RolloutObserver()
    node.kubectl_binary = KUBECTLS["1.32"]
    pw = Watch(node, "pods", ns, obs.on_pod)
    rw = Watch(node, "replicasets", ns, obs.on_rs)
    try:
        wait_for(lambda: obs.armed, timeout=20, what="watch saw all 20 pods ready")
        node.kubectl(*change)
        node.kubectl("annotate", "deployment", "web", "-n", ns, f"kubernetes.io/change-cause={cause}",
                     "--overwrite")
        t = time.time()
        node.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=240s", timeout=250)
        took = time.time() - t
        time.sleep(0.5)
    finally:
        pw.stop()
        rw.stop()
    assert not obs.violations, obs.violations[:10]
    # The bounds were actually reached: the update used its surge and its unavailability budget.
    assert obs.max_total == REPLICAS + SURGE, obs.max_total
    assert obs.min_ready is not None and obs.min_ready <= REPLICAS - 1, obs.min_ready
    # availableReplicas of a ReplicaSet never counted a pod before it had been Ready minReadySeconds.
    checked = 0
    for t, h, avail in obs.rs_samples:
        names = [n for n, ph in obs.hash_of.items() if ph == h]
        long_enough = sum(1 for n in names if obs.ready_at.get(n) is not None and obs.ready_at[n] + MIN_READY <= t)
        assert avail <= long_enough, f"RS {h} had {avail} available at {t} but only {long_enough} pods " \
                                     f"Ready for {MIN_READY}s ({sorted(obs.ready_at[n] for n in names if n in obs.ready_at)})"
        checked += 1
    new_hash = obs.hash_of[max(obs.pods, key=lambda n: obs.pods[n]["metadata"]["creationTimestamp"])]
    assert checked and max(a for _, h, a in obs.rs_samples if h == new_hash) == REPLICAS
    print(f"\nrollout: {took:.1f}s, min ready {obs.min_ready}, max pods {obs.max_total}, "
          f"{checked} ReplicaSet statuses checked")
    return took


def test_rolling_update_of_20_replicas_stays_within_bounds(node):
    ns = "roll"
    node.kubectl("create", "namespace", ns)
    apply(node, rolling_deployment(ns))
    node.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=180s", timeout=190)
    took = rollout_with_watch(node, ns, ("set", "image", "deployment/web", "-n", ns,
                                         "web=kobune.local/webapp:v2"), "update to v2")
    assert took < 120, took
    pods = live_pods(node, ns, "app=roll")
    assert len(pods) == REPLICAS
    for p in pods:
        assert p["spec"]["containers"][0]["image"] == "kobune.local/webapp:v2"
        assert http_get(p["status"]["podIP"], "/version") == (200, "v2\n")
    d = node.json("get", "deployment", "web", "-n", ns)
    st = d["status"]
    assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"]) == (20, 20, 20, 20)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    rss = {r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: r["metadata"]["name"]
           for r in node.json("get", "rs", "-n", ns)["items"]}
    msgs = [e["message"] for e in node.json("get", "events", "-n", ns, "--field-selector",
                                            "reason=ScalingReplicaSet")["items"]]
    # The first steps of the update: surge by 5, then take 5 old pods away.
    for m in [f"Scaled up replica set {rss['2']} from 0 to {SURGE}",
              f"Scaled down replica set {rss['1']} from {REPLICAS} to {REPLICAS - UNAVAILABLE}",
              f"Scaled up replica set {rss['1']} from 0 to {REPLICAS}"]:
        assert m in msgs, (m, msgs)
    assert any(x.startswith(f"Scaled down replica set {rss['1']} from ") and x.endswith(" to 0") for x in msgs), msgs


def test_rollout_undo_to_revision_1_and_history(node):
    ns = "roll"
    hist = node.kubectl("rollout", "history", "deployment/web", "-n", ns).stdout
    rows = [line.split(None, 1) for line in hist.splitlines()[2:] if line.strip()]
    assert rows == [["1", "first release v1"], ["2", "update to v2"]], hist
    rev1 = node.kubectl("rollout", "history", "deployment/web", "-n", ns, "--revision=1").stdout
    assert "kobune.local/webapp:v1" in rev1 and "first release v1" in rev1

    r = node.kubectl("rollout", "undo", "deployment/web", "-n", ns, "--to-revision=1")
    assert "rolled back" in r.stdout
    node.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=180s", timeout=190)
    pods = live_pods(node, ns, "app=roll")
    assert len(pods) == REPLICAS
    for p in pods:
        assert http_get(p["status"]["podIP"], "/version") == (200, "v1\n")
    hist = node.kubectl("rollout", "history", "deployment/web", "-n", ns).stdout
    rows = [line.split(None, 1) for line in hist.splitlines()[2:] if line.strip()]
    # Revision 1's template became revision 3, carrying its change-cause.
    assert rows == [["2", "update to v2"], ["3", "first release v1"]], hist
    d = node.json("get", "deployment", "web", "-n", ns)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert d["metadata"]["annotations"]["kubernetes.io/change-cause"] == "first release v1"
    node.kubectl("delete", "namespace", ns, "--wait=false")


# ---------------------------------------------------------------------------
# (4) a CronJob every minute; its image changes; history limit kept.

def retag_busybox(node, tag):
    """kobune.local/busybox:1 exported and imported again as kobune.local/busybox:<tag>."""
    d = Path(node.data_dir) / "retag"
    d.mkdir(exist_ok=True)
    src, dst = d / "busybox.tar", d / f"busybox-{tag}.tar"
    run = lambda *a: subprocess.run([KOBUNE, "images", *a, "--data-dir", str(node.data_dir)],  # noqa: E731
                                    capture_output=True, text=True, timeout=120, check=True)
    run("export", str(src), "kobune.local/busybox:1")
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name in ("index.json", "./index.json"):
                index = json.loads(data)
                for man in index["manifests"]:
                    ann = man.get("annotations", {})
                    for k in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
                        if k in ann:
                            ann[k] = ann[k].replace("busybox:1", f"busybox:{tag}") if "busybox" in ann[k] else tag
                data = json.dumps(index).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    out = run("import", str(dst)).stdout
    assert f"kobune.local/busybox:{tag}" in out, out


def jobs(node, ns):
    return node.json("get", "jobs", "-n", ns)["items"]


def complete(j):
    return any(c["type"] == "Complete" and c["status"] == "True" for c in j.get("status", {}).get("conditions") or [])


def job_image(j):
    return j["spec"]["template"]["spec"]["containers"][0]["image"]


def test_cronjob_runs_jobs_switches_image_and_keeps_history(node):
    ns = "cron"
    node.kubectl("create", "namespace", ns)
    retag_busybox(node, "2")
    # The two hand-made runs below must finish before the first scheduled one
    # (else the history limit would rightly remove the scheduled job first).
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    apply(node, {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": ns},
        "spec": {"schedule": "*/1 * * * *", "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1,
                 "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": {
                     "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", "echo job on $(hostname)"]}]}}}}},
    })
    # Two runs by hand (owned by the CronJob, so they count towards its history) ...
    for name in ("manual-1", "manual-2"):
        node.kubectl("create", "job", name, "--from=cronjob/c", "-n", ns)
        node.kubectl("wait", "--for=condition=Complete", f"job/{name}", "-n", ns, "--timeout=60s")
    owners = node.json("get", "job", "manual-1", "-n", ns)["metadata"]["ownerReferences"]
    assert owners[0]["kind"] == "CronJob" and owners[0]["name"] == "c"

    # ... then the first scheduled one: three successful jobs, so the oldest goes.
    def scheduled(exclude=()):
        js = [j for j in jobs(node, ns) if re.fullmatch(r"c-\d+", j["metadata"]["name"])
              and j["metadata"]["name"] not in exclude]
        return js[0] if js and complete(js[0]) else None
    first = wait_for(scheduled, timeout=75, what="a scheduled job completes")
    assert job_image(first) == "kobune.local/busybox:1"
    minute = int(first["metadata"]["name"][2:])
    assert minute * 60 <= time.time() and first["metadata"]["name"] == f"c-{minute}"
    wait_for(lambda: sorted(j["metadata"]["name"] for j in jobs(node, ns)) == sorted(["manual-2", first["metadata"]["name"]]),
             timeout=15, what="history limit 2 keeps manual-2 and the scheduled job")
    p = node.json("get", "pods", "-n", ns, "-l", f"job-name={first['metadata']['name']}")["items"][0]
    assert p["spec"]["nodeName"] == NODE and p["status"]["phase"] == "Succeeded"
    assert node.kubectl("logs", p["metadata"]["name"], "-n", ns).stdout.startswith("job on ")
    cj = node.json("get", "cronjob", "c", "-n", ns)
    assert cj["status"]["lastScheduleTime"] and cj["status"].get("lastSuccessfulTime")
    msgs = {(e["reason"], e["message"]) for e in node.json("get", "events", "-n", ns)["items"]
            if e["involvedObject"]["kind"] == "CronJob"}
    first_name = first["metadata"]["name"]
    for want in [("SuccessfulCreate", f"Created job {first_name}"), ("SuccessfulDelete", "Deleted job manual-1"),
                 ("SawCompletedJob", f"Saw completed job: {first_name}, condition: Complete")]:
        assert want in msgs, (want, msgs)

    r = node.kubectl("set", "image", "cronjobs", "--all", "-n", ns, "c=kobune.local/busybox:2")
    assert "cronjob.batch/c image updated" in r.stdout
    second = wait_for(lambda: scheduled(exclude=(first["metadata"]["name"],)), timeout=75,
                      what="the next scheduled job completes")
    assert job_image(second) == "kobune.local/busybox:2"
    p = node.json("get", "pods", "-n", ns, "-l", f"job-name={second['metadata']['name']}")["items"][0]
    assert p["status"]["phase"] == "Succeeded"
    assert p["status"]["containerStatuses"][0]["image"] == "kobune.local/busybox:2"
    wait_for(lambda: sorted(j["metadata"]["name"] for j in jobs(node, ns)) ==
             sorted([first["metadata"]["name"], second["metadata"]["name"]]),
             timeout=15, what="history limit 2 keeps the two scheduled jobs")
    node.kubectl("delete", "namespace", ns, "--wait=false")


# ---------------------------------------------------------------------------
# (5) a DaemonSet on the real node, the simulated ones and a node that comes later.

def have_remote_agent():
    return subprocess.run([KOBUNE, "agent", "--help"], capture_output=True).returncode == 0


def test_daemonset_on_real_simulated_and_late_nodes(node):
    ns = "ds"
    node.kubectl("create", "namespace", ns)
    node.kubectl("uncordon", *SIMS)
    try:
        apply(node, {
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "a", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
                                         "command": ["sleep", "3600"]}]}}},
        })
        node.kubectl("rollout", "status", "daemonset/agent", "-n", ns, "--timeout=60s")
        pods = live_pods(node, ns, "app=agent")
        by_node = {p["spec"]["nodeName"]: p for p in pods}
        assert sorted(by_node) == sorted([NODE, *SIMS]) and len(pods) == 3
        real = by_node[NODE]
        assert real["status"]["phase"] == "Running" and real["status"]["podIP"].startswith("10.42.0.")
        assert real["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")

        # A node that joins later: a simulated node from `kobune agent` (its pods
        # go Ready), or, where that command does not exist, a Node object
        # registered by hand (its pod is placed, never started).
        late, agent = "late-0", None
        if have_remote_agent():
            agent = subprocess.Popen(
                [KOBUNE, "agent", "--server", node.url, "--token-file", str(node.data_dir / "tls" / "token"),
                 "--server-ca", node.ca, "--simulate", "1", "--node-name-prefix", "late"],
                stdout=open(node.data_dir / "agent.log", "ab"), stderr=subprocess.STDOUT)
        else:
            node.kubectl("create", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": late, "labels": {"kubernetes.io/hostname": late}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "message": "registered by the test"}],
                           "capacity": {"cpu": "2", "memory": "2Gi", "pods": "110"},
                           "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"}}}))
        try:
            def placed():
                ps = [p for p in live_pods(node, ns, "app=agent") if p["spec"].get("nodeName") == late]
                return ps[0] if ps else None
            pod = wait_for(placed, timeout=30, what=f"a daemon pod on {late}")
            terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [late]
            ready = 4 if agent else 3
            ds = wait_for(lambda: (lambda d: d if (d["status"].get("desiredNumberScheduled"),
                                                   d["status"].get("numberReady")) == (4, ready) else None)(
                node.json("get", "daemonset", "agent", "-n", ns)), timeout=30, what="4 desired daemon pods")
            assert ds["status"]["currentNumberScheduled"] == 4
            assert sorted(p["spec"]["nodeName"] for p in live_pods(node, ns, "app=agent")) == \
                sorted([NODE, *SIMS, late])
            if agent:
                assert is_ready(placed()) and placed()["status"]["phase"] == "Running"
        finally:
            if agent:
                agent.terminate()
                agent.wait(timeout=15)

        # The node goes away: its pod is collected, the DaemonSet is back to 3.
        node.kubectl("delete", "node", late)
        wait_for(lambda: (lambda d: d["status"].get("desiredNumberScheduled") == 3
                          and d["status"].get("numberReady") == 3)(node.json("get", "daemonset", "agent", "-n", ns)),
                 timeout=30, what="DaemonSet back to 3 nodes")
        wait_for(lambda: placed() is None, timeout=30, what=f"{late}'s pod collected")
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")
        node.kubectl("cordon", *SIMS)


# ---------------------------------------------------------------------------
# (7) drain of the real node held by a PDB until a replacement is Ready elsewhere.

def test_drain_blocked_by_pdb_until_replacement_ready(node):
    ns = "drain"
    node.kubectl("create", "namespace", ns)
    apply(node, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "guarded", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "guarded"}},
                 "template": {"metadata": {"labels": {"app": "guarded"}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "web", "image": "kobune.local/webapp:v1", "imagePullPolicy": "Never",
                                     "env": [{"name": "DRAIN_SECONDS", "value": "0"}],
                                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080},
                                                        "periodSeconds": 1}}]}}},
    })
    apply(node, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                 "metadata": {"name": "guarded", "namespace": ns},
                 "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}})
    node.kubectl("rollout", "status", "deployment/guarded", "-n", ns, "--timeout=60s")
    originals = {p["metadata"]["name"] for p in live_pods(node, ns, "app=guarded")}
    assert {p["spec"]["nodeName"] for p in live_pods(node, ns, "app=guarded")} == {NODE}
    wait_for(lambda: node.json("get", "pdb", "guarded", "-n", ns).get("status", {}).get("currentHealthy") == 2,
             what="PDB sees 2 healthy pods")
    assert node.json("get", "pdb", "guarded", "-n", ns)["status"]["disruptionsAllowed"] == 0
    node.kubectl("uncordon", *SIMS)

    log = open(Path(node.data_dir) / "drain.log", "w+")
    drain = subprocess.Popen(
        [KUBECTLS["1.32"], "--kubeconfig", str(node.kubeconfig), "--cache-dir", str(node.cache_dir),
         "drain", NODE, "--ignore-daemonsets", "--delete-emptydir-data", "--pod-selector=app=guarded",
         "--timeout=120s"], stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "disruption budget" in Path(log.name).read_text(), timeout=20,
                 what="drain reports the PDB")
        time.sleep(2)
        assert drain.poll() is None, "drain must wait while the PDB allows no disruption"
        assert node.json("get", "node", NODE)["spec"].get("unschedulable") is True
        assert {p["metadata"]["name"] for p in live_pods(node, ns, "app=guarded")} == originals

        # A replacement on a simulated node: once Ready, one eviction is allowed, then the next.
        node.kubectl("scale", "deployment/guarded", "-n", ns, "--replicas=3")
        assert drain.wait(timeout=90) == 0, Path(log.name).read_text()
    finally:
        if drain.poll() is None:
            drain.kill()
        node.kubectl("uncordon", NODE)
    out = Path(log.name).read_text()
    assert "Cannot evict pod as it would violate the pod's disruption budget" in out, out
    assert f"node/{NODE} drained" in out, out
    for name in originals:
        assert f"pod/{name} evicted" in out, out
    pods = live_pods(node, ns, "app=guarded")
    assert not originals & {p["metadata"]["name"] for p in pods}
    assert len(pods) == 3 and {p["spec"]["nodeName"] for p in pods} <= set(SIMS)
    node.kubectl("delete", "namespace", ns, "--wait=false")
    node.kubectl("cordon", *SIMS)
