"""StatefulSets, local-path persistent volumes, PodDisruptionBudgets with
evictions (kubectl drain), and leader election between two servers, all
through the real kubectl."""

import json
import os
import shutil
import subprocess
import time

import pytest

import conftest
from conftest import NODE, AgentServer, Server

SIM_NODES = ["sim-0", "sim-1"]


@pytest.fixture(scope="module")
def cluster():
    s = Server(extra_args=["--simulate-nodes", "2"])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def wait_for(fn, timeout=30, what="condition"):
    return conftest.wait_for(fn, timeout, what)


def new_ns(s, name):
    s.kubectl("create", "namespace", name)
    return name


def live_pods(s, ns, selector):
    items = s.json("get", "pods", "-n", ns, "-l", selector)["items"]
    return sorted((p for p in items if not p["metadata"].get("deletionTimestamp")),
                  key=lambda p: p["metadata"]["name"])


def names(pods):
    return [p["metadata"]["name"] for p in pods]


def ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", []))


def sts_events(s, ns, name, prefix):
    """Messages of the set's events starting with `prefix`, in the order recorded
    (event names end in the hex nanosecond time they were made)."""
    items = s.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    items = [e for e in items if e["involvedObject"]["kind"] == "StatefulSet"
             and e["message"].startswith(prefix)]
    items.sort(key=lambda e: int(e["metadata"]["name"].rsplit(".", 1)[1], 16))
    return [e["message"] for e in items]


def statefulset(name, replicas, image="kobune.local/busybox:1", extra_spec=None, pod_spec=None, claims=True):
    spec = {
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}],
                     **(pod_spec or {})},
        },
    }
    if claims:
        # Mounts may name a claim template: its pods get the volume.
        spec["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumeClaimTemplates"] = [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        }]
    spec.update(extra_spec or {})
    return json.dumps({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": name}, "spec": spec})


def test_ordered_creation_stable_names_and_claims(cluster):
    ns = new_ns(cluster, "sts-order")
    # No node has disk=ssd: web-0 stays Pending and web-1 is never created.
    cluster.kubectl("apply", "-n", ns, "-f", "-",
                    input=statefulset("web", 3, pod_spec={"nodeSelector": {"disk": "ssd"}}))
    wait_for(lambda: names(live_pods(cluster, ns, "app=web")) == ["web-0"], what="web-0 created")
    time.sleep(2)
    assert names(live_pods(cluster, ns, "app=web")) == ["web-0"], "OrderedReady waits for web-0"
    pvc0 = cluster.json("get", "pvc", "data-web-0", "-n", ns)
    assert pvc0["spec"]["storageClassName"] == "local-path", "the default class is assigned"
    assert pvc0["status"]["phase"] == "Pending", "WaitForFirstConsumer: no node yet"
    assert cluster.kubectl("get", "pvc", "data-web-1", "-n", ns, check=False).returncode != 0

    cluster.kubectl("label", "node", "sim-0", "disk=ssd")
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 3 and all(map(ready, ps)) else None)(
        live_pods(cluster, ns, "app=web")), what="3 ready pods")
    assert names(pods) == ["web-0", "web-1", "web-2"]
    created = sts_events(cluster, ns, "web", "create Pod")
    assert created == [f"create Pod web-{i} in StatefulSet web successful" for i in range(3)], created
    for i, p in enumerate(pods):
        labels = p["metadata"]["labels"]
        assert labels["statefulset.kubernetes.io/pod-name"] == f"web-{i}"
        assert labels["apps.kubernetes.io/pod-index"] == str(i)
        assert labels["controller-revision-hash"].startswith("web-")
        assert p["spec"]["hostname"] == f"web-{i}" and p["spec"]["subdomain"] == "web"
        vol = [v for v in p["spec"]["volumes"] if v["name"] == "data"][0]
        assert vol["persistentVolumeClaim"]["claimName"] == f"data-web-{i}"
    # Every claim is bound to a local-path volume on the pod's node.
    for i in range(3):
        pvc = wait_for(lambda: (lambda c: c if c["status"].get("phase") == "Bound" else None)(
            cluster.json("get", "pvc", f"data-web-{i}", "-n", ns)), what=f"data-web-{i} bound")
        pv = cluster.json("get", "pv", pvc["spec"]["volumeName"])
        assert pv["status"]["phase"] == "Bound"
        assert pv["spec"]["claimRef"]["name"] == f"data-web-{i}"
        assert pv["spec"]["storageClassName"] == "local-path"
        term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert term["values"] == ["sim-0"]
        assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "sim-0"
        assert os.path.isdir(pv["spec"]["hostPath"]["path"])
    sc = cluster.json("get", "storageclass", "local-path")
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer" and sc["provisioner"] == "rancher.io/local-path"

    st = wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 3 else None)(
        cluster.json("get", "sts", "web", "-n", ns)["status"]), what="status")
    assert st["replicas"] == 3 and st["currentReplicas"] == 3 and st["updatedReplicas"] == 3
    assert st["availableReplicas"] == 3 and st["currentRevision"] == st["updateRevision"]
    out = cluster.kubectl("rollout", "status", "statefulset/web", "-n", ns, "--timeout", "30s").stdout
    assert "roll out complete" in out or "rolling update complete" in out, out

    # A deleted pod comes back under the same name.
    uid = pods[1]["metadata"]["uid"]
    # (--wait=false: the replacement takes the name before kubectl could watch the old pod go.)
    cluster.kubectl("delete", "pod", "web-1", "-n", ns, "--wait=false")
    wait_for(lambda: any(p["metadata"]["name"] == "web-1" and p["metadata"]["uid"] != uid and ready(p)
                         for p in live_pods(cluster, ns, "app=web")), what="web-1 recreated")

    # Scale down: highest ordinal first; claims are kept (whenScaled: Retain).
    cluster.kubectl("scale", "statefulset", "web", "-n", ns, "--replicas", "1")
    wait_for(lambda: names(live_pods(cluster, ns, "app=web")) == ["web-0"], what="scaled to 1")
    deleted = sts_events(cluster, ns, "web", "delete Pod")
    assert deleted[-2:] == ["delete Pod web-2 in StatefulSet web successful",
                            "delete Pod web-1 in StatefulSet web successful"], deleted
    claims = sorted(c["metadata"]["name"] for c in cluster.json("get", "pvc", "-n", ns)["items"])
    assert claims == ["data-web-0", "data-web-1", "data-web-2"]
    # whenDeleted: Delete, set later: the set comes to own its (in-range) claims.
    cluster.kubectl("patch", "statefulset", "web", "-n", ns, "--type=merge", "-p",
                    '{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}')
    wait_for(lambda: [r["kind"] for r in cluster.json("get", "pvc", "data-web-0", "-n", ns)["metadata"]
                      .get("ownerReferences", [])] == ["StatefulSet"], what="claim owned")
    cluster.kubectl("delete", "statefulset", "web", "-n", ns)
    wait_for(lambda: sorted(c["metadata"]["name"] for c in cluster.json("get", "pvc", "-n", ns)["items"])
             == ["data-web-1", "data-web-2"], what="owned claim collected")
    cluster.kubectl("label", "node", "sim-0", "disk-")


def test_parallel_and_claim_retention(cluster):
    ns = new_ns(cluster, "sts-parallel")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=statefulset("par", 3, extra_spec={
        "podManagementPolicy": "Parallel",
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Delete"}}))
    wait_for(lambda: len([p for p in live_pods(cluster, ns, "app=par") if ready(p)]) == 3, what="3 ready")
    cluster.kubectl("scale", "statefulset", "par", "-n", ns, "--replicas", "1")
    wait_for(lambda: sorted(c["metadata"]["name"] for c in cluster.json("get", "pvc", "-n", ns)["items"])
             == ["data-par-0"], what="scaled-down claims deleted")
    pv = cluster.json("get", "pvc", "data-par-0", "-n", ns)["spec"]["volumeName"]
    cluster.kubectl("delete", "statefulset", "par", "-n", ns)
    wait_for(lambda: cluster.json("get", "pvc", "-n", ns)["items"] == [], what="claims deleted with the set")
    # reclaimPolicy Delete: the volume goes with its claim.
    wait_for(lambda: cluster.kubectl("get", "pv", pv, check=False).returncode != 0, what="volume reclaimed")


def pod_with_claim(name, claim, node=None):
    spec = {"containers": [{"name": "c", "image": "kobune.local/busybox:1"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def scheduled_condition(s, ns, name):
    conds = s.json("get", "pod", name, "-n", ns).get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == "PodScheduled"), None)


def test_claims_constrain_scheduling(cluster):
    ns = new_ns(cluster, "pvc-sched")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "manual"},
        "provisioner": "example.com/nobody", "volumeBindingMode": "Immediate"}))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "held"},
        "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Mi"}}}}))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=pod_with_claim("unbound", "held"))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=pod_with_claim("missing", "nope"))
    c = wait_for(lambda: scheduled_condition(cluster, ns, "unbound"), what="unbound: PodScheduled")
    assert (c["status"], c["reason"]) == ("False", "Unschedulable")
    assert c["message"] == "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.", c
    c = wait_for(lambda: scheduled_condition(cluster, ns, "missing"), what="missing: PodScheduled")
    assert c["message"] == '0/2 nodes are available: persistentvolumeclaim "nope" not found.', c
    assert cluster.json("get", "pvc", "held", "-n", ns)["status"]["phase"] == "Pending"
    # The missing claim appears: the pod is retried, scheduled, and its claim bound.
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "nope"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}))
    wait_for(lambda: cluster.json("get", "pod", "missing", "-n", ns)["spec"].get("nodeName"), what="retried")
    wait_for(lambda: cluster.json("get", "pvc", "nope", "-n", ns)["status"].get("phase") == "Bound",
             what="nope bound")

    # A bound local volume pins later consumers to its node.
    created = json.loads(cluster.kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "local"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})).stdout)
    assert created["spec"]["storageClassName"] == "local-path", "defaulted on admission"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=pod_with_claim("first", "local", node="sim-1"))
    wait_for(lambda: cluster.json("get", "pvc", "local", "-n", ns)["status"].get("phase") == "Bound",
             what="local bound")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=pod_with_claim("elsewhere", "local", node="sim-0"))
    c = wait_for(lambda: scheduled_condition(cluster, ns, "elsewhere"), what="elsewhere: PodScheduled")
    assert c["status"] == "False" and "didn't match Pod's node affinity/selector" in c["message"], c
    for i in range(3):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=pod_with_claim(f"follow-{i}", "local"))
        node = wait_for(lambda: cluster.json("get", "pod", f"follow-{i}", "-n", ns)["spec"].get("nodeName"),
                        what="scheduled")
        assert node == "sim-1"


def test_partitioned_rolling_update(cluster):
    ns = new_ns(cluster, "sts-roll")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=statefulset("roll", 3, claims=False, extra_spec={
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}))
    cluster.kubectl("rollout", "status", "statefulset/roll", "-n", ns, "--timeout", "60s")
    first = cluster.json("get", "sts", "roll", "-n", ns)["status"]["currentRevision"]
    cluster.kubectl("set", "image", "statefulset/roll", "-n", ns, "c=kobune.local/busybox:2")

    def revisions():
        return {p["metadata"]["name"]: p["metadata"]["labels"]["controller-revision-hash"]
                for p in live_pods(cluster, ns, "app=roll") if ready(p)}
    st = wait_for(lambda: (lambda s: s if s.get("updatedReplicas") == 1 and s.get("readyReplicas") == 3
                           else None)(cluster.json("get", "sts", "roll", "-n", ns)["status"]), what="partitioned")
    update = st["updateRevision"]
    assert update != first and st["currentRevision"] == first
    revs = revisions()
    assert revs == {"roll-0": first, "roll-1": first, "roll-2": update}, revs
    out = cluster.kubectl("rollout", "status", "statefulset/roll", "-n", ns, "--timeout", "30s").stdout
    assert "partitioned roll out complete: 1 new pods have been updated" in out, out
    time.sleep(1)
    assert revisions() == revs, "the partition holds"

    cluster.kubectl("patch", "statefulset", "roll", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}')
    cluster.kubectl("rollout", "status", "statefulset/roll", "-n", ns, "--timeout", "60s")
    st = wait_for(lambda: (lambda s: s if s.get("currentRevision") == update else None)(
        cluster.json("get", "sts", "roll", "-n", ns)["status"]), what="update complete")
    assert st["updatedReplicas"] == 3 and st["currentReplicas"] == 3
    assert set(revisions().values()) == {update}
    deleted = sts_events(cluster, ns, "roll", "delete Pod")
    assert deleted == [f"delete Pod roll-{i} in StatefulSet roll successful" for i in (2, 1, 0)], deleted
    crs = cluster.json("get", "controllerrevisions", "-n", ns)["items"]
    assert sorted(c["metadata"]["name"] for c in crs) == sorted([first, update])
    # kubectl rollout undo goes back through the revision history.
    cluster.kubectl("rollout", "undo", "statefulset/roll", "-n", ns)
    cluster.kubectl("rollout", "status", "statefulset/roll", "-n", ns, "--timeout", "60s")
    wait_for(lambda: set(revisions().values()) == {first} and len(revisions()) == 3, what="undone")


DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: guarded}}
  template:
    metadata: {labels: {app: guarded}}
    spec:
      containers: [{name: c, image: kobune.local/busybox:1}]
"""


def test_pdb_status_eviction_and_drain(cluster):
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    ns = new_ns(cluster, "pdb")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY)
    wait_for(lambda: len([p for p in live_pods(cluster, ns, "app=guarded") if ready(p)]) == 2, what="2 ready")
    cluster.kubectl("create", "poddisruptionbudget", "guard", "-n", ns, "--selector", "app=guarded",
                    "--min-available", "2")
    st = wait_for(lambda: (lambda s: s if s.get("observedGeneration") == 1 else None)(
        cluster.json("get", "pdb", "guard", "-n", ns).get("status", {})), what="pdb status")
    assert (st["currentHealthy"], st["desiredHealthy"], st["expectedPods"], st["disruptionsAllowed"]) == (2, 2, 2, 0)
    cond = [c for c in st["conditions"] if c["type"] == "DisruptionAllowed"][0]
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientPods")

    # The eviction subresource refuses with upstream's 429.
    victim = live_pods(cluster, ns, "app=guarded")[0]["metadata"]["name"]
    with cluster.client() as api:
        core = client.CoreV1Api(api)
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=victim, namespace=ns))
        with pytest.raises(ApiException) as e:
            core.create_namespaced_pod_eviction(victim, ns, body)
        assert e.value.status == 429
        status = json.loads(e.value.body)
        assert status["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
        assert status["reason"] == "TooManyRequests"
        assert status["details"]["causes"][0]["reason"] == "DisruptionBudget"
        assert "needs 2 healthy pods and has 2 currently" in status["details"]["causes"][0]["message"]

    # maxUnavailable as a percentage, from the Deployment's scale.
    cluster.kubectl("patch", "pdb", "guard", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"minAvailable":null,"maxUnavailable":"50%"}}')
    st = wait_for(lambda: (lambda s: s if s.get("observedGeneration") == 2 else None)(
        cluster.json("get", "pdb", "guard", "-n", ns)["status"]), what="pdb status 2")
    assert (st["expectedPods"], st["desiredHealthy"], st["disruptionsAllowed"]) == (2, 1, 1)
    assert [c for c in st["conditions"] if c["type"] == "DisruptionAllowed"][0]["reason"] == "SufficientPods"
    cluster.kubectl("patch", "pdb", "guard", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"minAvailable":2,"maxUnavailable":null}}')
    wait_for(lambda: cluster.json("get", "pdb", "guard", "-n", ns)["status"].get("observedGeneration") == 3)

    # kubectl drain blocks on the budget (retrying the 429) ...
    node = cluster.json("get", "pod", victim, "-n", ns)["spec"]["nodeName"]
    drain = subprocess.Popen(
        [cluster_kubectl(cluster), "--kubeconfig", str(cluster.kubeconfig), "drain", node,
         "--ignore-daemonsets", "--delete-emptydir-data", "--pod-selector", "app=guarded", "--timeout", "90s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(7)
        assert drain.poll() is None, drain.communicate()[0]
        on_node = [p for p in live_pods(cluster, ns, "app=guarded") if p["spec"].get("nodeName") == node]
        assert on_node, "nothing was evicted"
        assert cluster.json("get", "node", node)["spec"].get("unschedulable") is True
        # ... until a replacement is Ready elsewhere: then the budget allows one eviction.
        cluster.kubectl("scale", "deployment", "app", "-n", ns, "--replicas", "3")
        out, _ = drain.communicate(timeout=80)
    finally:
        if drain.poll() is None:
            drain.kill()
    assert drain.returncode == 0, out
    assert "Cannot evict pod as it would violate the pod's disruption budget." in out, out
    assert "drained" in out, out
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 3 and all(map(ready, ps)) else None)(
        live_pods(cluster, ns, "app=guarded")), what="3 ready after drain")
    assert all(p["spec"]["nodeName"] != node for p in pods)
    cluster.kubectl("uncordon", node)


def test_unhealthy_pod_eviction_policy(cluster):
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    ns = new_ns(cluster, "pdb-unhealthy")
    cluster.kubectl("apply", "-n", ns, "-f", "-",
                    input=DEPLOY.replace("app: guarded}}\n    spec", "app: guarded, tier: db}}\n    spec"))
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 2 and all(map(ready, ps)) else None)(
        live_pods(cluster, ns, "tier=db")), what="2 ready")
    well = pods[0]["metadata"]["name"]
    # An unhealthy pod under the budget (owned by nobody): it cannot be scheduled anywhere.
    sick = "stray"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": sick, "labels": {"tier": "db"}},
        "spec": {"nodeSelector": {"nowhere": "true"}, "containers": [{"name": "c", "image": "x"}]}}))
    cluster.kubectl("create", "poddisruptionbudget", "guard", "-n", ns, "--selector", "tier=db",
                    "--min-available", "3")
    st = wait_for(lambda: (lambda s: s if s.get("observedGeneration") == 1 else None)(
        cluster.json("get", "pdb", "guard", "-n", ns).get("status", {})), what="pdb status")
    assert (st["currentHealthy"], st["desiredHealthy"], st["expectedPods"]) == (2, 3, 3)

    def evict(name):
        with cluster.client() as api:
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
            try:
                client.CoreV1Api(api).create_namespaced_pod_eviction(name, ns, body)
                return 201
            except ApiException as e:
                return e.status
    # IfHealthyBudget (the default): the budget is not met, so even the unhealthy pod stays.
    assert evict(sick) == 429
    cluster.kubectl("patch", "pdb", "guard", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"unhealthyPodEvictionPolicy":"AlwaysAllow"}}')
    wait_for(lambda: cluster.json("get", "pdb", "guard", "-n", ns)["status"].get("observedGeneration") == 2)
    assert evict(well) == 429, "healthy pods are still guarded"
    assert evict(sick) == 201, "AlwaysAllow: unhealthy pods may always go"
    wait_for(lambda: sick not in names(live_pods(cluster, ns, "tier=db")), what="evicted")


def cluster_kubectl(_cluster):
    from conftest import KUBECTL_132
    return KUBECTL_132


# ---------------------------------------------------------------------------
# Data kept across pod replacement on a real node (containerd).

def test_volume_data_survives_pod_replacement():
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed")
    s = AgentServer(extra_args=["--node-name", NODE])
    try:
        ns = new_ns(s, "sts-data")
        s.kubectl("apply", "-n", ns, "-f", "-",
                  input=statefulset("db", 1, pod_spec={"terminationGracePeriodSeconds": 1}))
        wait_for(lambda: (lambda ps: ps and ready(ps[0]))(live_pods(s, ns, "app=db")), timeout=90,
                 what="db-0 ready")
        pvc = s.json("get", "pvc", "data-db-0", "-n", ns)
        assert pvc["status"]["phase"] == "Bound"
        pv = s.json("get", "pv", pvc["spec"]["volumeName"])
        assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [NODE]
        s.kubectl("exec", "-n", ns, "db-0", "--", "sh", "-c", "echo kept-$HOSTNAME > /data/file")
        assert open(os.path.join(pv["spec"]["hostPath"]["path"], "file")).read() == "kept-db-0\n"
        uid = live_pods(s, ns, "app=db")[0]["metadata"]["uid"]
        s.kubectl("delete", "pod", "db-0", "-n", ns, "--wait=false")
        wait_for(lambda: (lambda ps: ps and ps[0]["metadata"]["uid"] != uid and ready(ps[0]))(
            live_pods(s, ns, "app=db")), timeout=90, what="db-0 replaced")
        out = s.kubectl("exec", "-n", ns, "db-0", "--", "cat", "/data/file").stdout
        assert out == "kept-db-0\n"
        # Deleting the set and its claim reclaims the volume and its directory.
        s.kubectl("delete", "statefulset", "db", "-n", ns)
        wait_for(lambda: not live_pods(s, ns, "app=db"), timeout=60, what="pods gone")
        s.kubectl("delete", "pvc", "data-db-0", "-n", ns)
        wait_for(lambda: not os.path.exists(pv["spec"]["hostPath"]["path"]), what="directory removed")
    finally:
        s.stop()
        shutil.rmtree(s.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Leader election: two servers on one etcd.

def lease(s):
    return s.json("get", "lease", "kobune-controllers", "-n", "kube-system")["spec"]


def test_leader_election(etcd):
    subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "del", "--prefix", "/registry/"],
                   capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
    a = Server(datastore=etcd.endpoint, extra_args=["--node-name", "leader-a"])
    b = None
    try:
        wait_for(lambda: lease(a)["holderIdentity"] == "leader-a", what="a leads")
        b = Server(datastore=etcd.endpoint, extra_args=["--node-name", "leader-b"])
        time.sleep(3)
        assert lease(b)["holderIdentity"] == "leader-a", "only one holder"
        assert lease(b)["leaseDurationSeconds"] == 15
        b.kubectl("create", "deployment", "one", "--image", "kobune.local/busybox:1", "--replicas", "2")
        wait_for(lambda: b.json("get", "rs", "-l", "app=one")["items"], what="replicaset")
        time.sleep(3)
        assert len(b.json("get", "rs", "-l", "app=one")["items"]) == 1, "reconciled once"
        assert len(a.json("get", "pods", "-l", "app=one")["items"]) == 2
        a.kill9()
        t0 = time.time()
        wait_for(lambda: lease(b)["holderIdentity"] == "leader-b", timeout=30, what="b takes over")
        assert time.time() - t0 < 25
        assert lease(b)["leaseTransitions"] >= 1
        b.kubectl("create", "deployment", "two", "--image", "kobune.local/busybox:1")
        wait_for(lambda: b.json("get", "rs", "-l", "app=two")["items"], what="b reconciles")
        wait_for(lambda: len(b.json("get", "pods", "-l", "app=two")["items"]) == 1, what="b's pods")
        # A graceful stop releases the lease.
        b.stop()
        b = None
        c = Server(datastore=etcd.endpoint, extra_args=["--node-name", "leader-c"])
        try:
            wait_for(lambda: lease(c)["holderIdentity"] == "leader-c", timeout=8, what="c leads at once")
        finally:
            c.stop()
    finally:
        if a.proc.poll() is None:
            a.stop()
        if b is not None:
            b.stop()
        shutil.rmtree(a.data_dir, ignore_errors=True)
