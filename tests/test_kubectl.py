"""The real kubectl (1.32 from the machine, 1.37 from PyPI) against a real
kobune server, on SQLite and on etcd: each command's output is asserted."""

import json
import subprocess
import textwrap
import time
import uuid

import pytest
import yaml
from conftest import wait_for

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example.com/web:v1
        ports: [{containerPort: 8080}]
        env: [{name: MODE, value: "a"}]
"""


def settle(server, ns, binary, name="web", timeout=15):
    """Waits until the deployment controller has observed the latest spec."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        d = server.json("get", "deploy", name, "-n", ns, binary=binary)
        if d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"]:
            return d
        time.sleep(0.1)
    raise AssertionError("deployment controller did not observe the latest generation")


def new_ns(server, binary):
    ns = "t-" + uuid.uuid4().hex[:8]
    server.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n", binary=binary)
    return ns


def test_version_and_discovery(server, kubectl_bin):
    out = server.kubectl("version", "-o", "json", binary=kubectl_bin).stdout
    assert json.loads(out)["serverVersion"]["minor"] == "33"
    res = server.kubectl("api-resources", binary=kubectl_bin).stdout
    for line in ["deployments", "customresourcedefinitions", "horizontalpodautoscalers", "poddisruptionbudgets",
                 "endpointslices", "leases", "ingresses", "networkpolicies", "storageclasses", "cronjobs"]:
        assert line in res
    assert "deploy" in res.split("deployments")[1].split("\n")[0]
    vers = server.kubectl("api-versions", binary=kubectl_bin).stdout.split()
    for gv in ["v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1", "rbac.authorization.k8s.io/v1"]:
        assert gv in vers


def test_explain_uses_openapi(server, kubectl_bin):
    out = server.kubectl("explain", "deployment.spec.strategy", binary=kubectl_bin).stdout
    assert "rollingUpdate" in out and "DeploymentStrategy" in out
    out = server.kubectl("explain", "pods.spec.containers.image", binary=kubectl_bin).stdout
    assert "Container image name" in out


def test_apply_get_formats(server, kubectl_bin, tmp_path):
    ns = new_ns(server, kubectl_bin)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "web.yaml").write_text(DEPLOY)
    (tmp_path / "d" / "more.yaml").write_text(textwrap.dedent("""
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings, labels: {tier: config}}
        data: {mode: fast}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: 8080}]
        """))
    out = server.kubectl("apply", "-n", ns, "-f", str(tmp_path / "d"), binary=kubectl_bin).stdout
    assert "deployment.apps/web created" in out and "configmap/settings created" in out and "service/web created" in out
    out = server.kubectl("apply", "-n", ns, "-f", str(tmp_path / "d"), binary=kubectl_bin).stdout
    assert out.count("unchanged") == 3

    table = server.kubectl("get", "deploy", "-n", ns, binary=kubectl_bin).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    row = table[1].split()
    # No nodes in this cluster: pods stay Pending, so nothing is ready or available.
    assert row[0] == "web" and row[1] == "0/2" and row[2] in ("0", "2") and row[3] == "0"
    wide = server.kubectl("get", "deploy", "-n", ns, "-o", "wide", binary=kubectl_bin).stdout
    assert "example.com/web:v1" in wide and "app=web" in wide
    svc = server.kubectl("get", "svc", "web", "-n", ns, binary=kubectl_bin).stdout.splitlines()[1].split()
    assert svc[1] == "ClusterIP" and svc[2].startswith("10.43.") and svc[4] == "80/TCP"
    assert server.kubectl("get", "cm", "-n", ns, "-l", "tier=config", "-o", "name", binary=kubectl_bin).stdout.strip() == "configmap/settings"
    assert "tier=config" in server.kubectl("get", "cm", "settings", "-n", ns, "--show-labels", binary=kubectl_bin).stdout
    jp = server.kubectl("get", "deploy", "web", "-n", ns, "-o", "jsonpath={.spec.replicas}/{.spec.strategy.type}", binary=kubectl_bin).stdout
    assert jp == "2/RollingUpdate"
    cc = server.kubectl("get", "deploy", "-n", ns, "-o", "custom-columns=N:.metadata.name,IMG:.spec.template.spec.containers[0].image", binary=kubectl_bin).stdout
    assert cc.split() == ["N", "IMG", "web", "example.com/web:v1"]
    obj = yaml.safe_load(server.kubectl("get", "deploy", "web", "-n", ns, "-o", "yaml", binary=kubectl_bin).stdout)
    assert obj["metadata"]["generation"] == 1 and obj["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    everywhere = server.kubectl("get", "svc", "-A", binary=kubectl_bin).stdout
    assert "kubernetes" in everywhere and ns in everywhere
    # --sort-by asks for whole objects in the table.
    for n in ["b", "a", "c"]:
        server.kubectl("apply", "-n", ns, "-f", "-", input=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: s-{n}}}\n", binary=kubectl_bin)
    names = server.kubectl("get", "cm", "-n", ns, "--sort-by", "{.metadata.name}", "-o", "name", binary=kubectl_bin).stdout.split()
    assert names == sorted(names)


def test_apply_changes_diff_and_generation(server, kubectl_bin, tmp_path):
    ns = new_ns(server, kubectl_bin)
    f = tmp_path / "web.yaml"
    f.write_text(DEPLOY)
    server.kubectl("apply", "-n", ns, "-f", str(f), binary=kubectl_bin)
    f.write_text(DEPLOY.replace("replicas: 2", "replicas: 3").replace('value: "a"', 'value: "b"'))
    d = server.kubectl("diff", "-n", ns, "-f", str(f), binary=kubectl_bin, check=False)
    assert d.returncode == 1 and "-  replicas: 2" in d.stdout and "+  replicas: 3" in d.stdout
    assert "configured" in server.kubectl("apply", "-n", ns, "-f", str(f), binary=kubectl_bin).stdout
    d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
    assert d["spec"]["replicas"] == 3 and d["metadata"]["generation"] == 2
    assert d["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "MODE", "value": "b"}]
    assert server.kubectl("diff", "-n", ns, "-f", str(f), binary=kubectl_bin, check=False).returncode == 0


def test_kustomize_overlays(server, kubectl_bin, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "deploy.yaml").write_text(DEPLOY)
    (base / "kustomization.yaml").write_text("resources: [deploy.yaml]\n")
    for env, replicas in [("staging", 1), ("production", 4)]:
        o = tmp_path / "overlays" / env
        o.mkdir(parents=True)
        (o / "kustomization.yaml").write_text(textwrap.dedent(f"""
            namespace: shop-{env}-{kubectl_bin.rsplit('.', 1)[-1][-2:]}
            resources:
            - ns.yaml
            - ../../base
            replicas:
            - name: web
              count: {replicas}
            patches:
            - target: {{kind: Deployment, name: web}}
              patch: |
                - op: replace
                  path: /spec/template/spec/containers/0/env/0/value
                  value: {env}
            """))
        (o / "ns.yaml").write_text(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop-{env}-{kubectl_bin.rsplit('.', 1)[-1][-2:]}}}\n")
    suffix = kubectl_bin.rsplit('.', 1)[-1][-2:]
    for env, replicas in [("staging", 1), ("production", 4)]:
        out = server.kubectl("apply", "-k", str(tmp_path / "overlays" / env), binary=kubectl_bin).stdout
        assert "deployment.apps/web created" in out
        d = server.json("get", "deploy", "web", "-n", f"shop-{env}-{suffix}", binary=kubectl_bin)
        assert d["spec"]["replicas"] == replicas
        assert d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == env


def test_server_side_apply_conflicts(server, kubectl_bin, tmp_path):
    ns = new_ns(server, kubectl_bin)
    f = tmp_path / "web.yaml"
    f.write_text(DEPLOY)
    out = server.kubectl("apply", "--server-side", "-n", ns, "-f", str(f), binary=kubectl_bin).stdout
    assert "serverside-applied" in out
    d = server.json("get", "deploy", "web", "-n", ns, "--show-managed-fields", binary=kubectl_bin)
    managers = {m["manager"]: m["operation"] for m in d["metadata"]["managedFields"]}
    assert managers.get("kubectl") == "Apply"
    server.kubectl("scale", "deploy", "web", "-n", ns, "--replicas=5", binary=kubectl_bin)
    r = server.kubectl("apply", "--server-side", "-n", ns, "-f", str(f), binary=kubectl_bin, check=False)
    assert r.returncode != 0 and "conflict" in r.stderr.lower() and ".spec.replicas" in r.stderr
    server.kubectl("apply", "--server-side", "--force-conflicts", "-n", ns, "-f", str(f), binary=kubectl_bin)
    assert server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["replicas"] == 2


def test_patch_replace_label_annotate_scale_set(server, kubectl_bin, tmp_path):
    ns = new_ns(server, kubectl_bin)
    server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY, binary=kubectl_bin)
    k = lambda *a: server.kubectl(*a, "-n", ns, binary=kubectl_bin)
    k("patch", "deploy", "web", "-p", '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"example.com/web:v2"}]}}}}')
    k("patch", "deploy", "web", "--type=merge", "-p", '{"metadata":{"labels":{"team":"shop"}}}')
    k("patch", "deploy", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/replicas","value":7}]')
    d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "example.com/web:v2" and c["ports"][0]["containerPort"] == 8080
    assert d["metadata"]["labels"]["team"] == "shop" and d["spec"]["replicas"] == 7
    assert "scaled" in k("scale", "deploy", "web", "--replicas=3").stdout
    assert "scaled" in k("scale", "deploy", "web", "--current-replicas=3", "--replicas=4").stdout
    assert "image updated" in k("set", "image", "deployment/web", "web=example.com/web:v3").stdout
    assert "env updated" in k("set", "env", "deployment/web", "EXTRA=1").stdout
    k("label", "deploy", "web", "stage=beta")
    k("annotate", "deploy", "web", "kubernetes.io/change-cause=v3 rollout")
    k("rollout", "pause", "deployment/web")
    assert server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["paused"] is True
    k("rollout", "resume", "deployment/web")
    k("rollout", "restart", "deployment/web")
    d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
    assert d["spec"]["replicas"] == 4 and not d["spec"].get("paused")
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
    env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"MODE": "a", "EXTRA": "1"}
    assert d["metadata"]["labels"]["stage"] == "beta"
    # replace with a stale resourceVersion conflicts; a fresh one succeeds.
    settle(server, ns, kubectl_bin)
    d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
    d["spec"]["replicas"] = 6
    stale = dict(d, metadata=dict(d["metadata"], resourceVersion="1"))
    r = server.kubectl("replace", "-n", ns, "-f", "-", input=json.dumps(stale), binary=kubectl_bin, check=False)
    assert r.returncode != 0 and "Conflict" in r.stderr and "the object has been modified" in r.stderr
    for _ in range(10):  # the deployment controller may write status in between: retry on conflict
        r = server.kubectl("replace", "-n", ns, "-f", "-", input=json.dumps(d), binary=kubectl_bin, check=False)
        if r.returncode == 0:
            break
        assert "Conflict" in r.stderr, r.stderr
        d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
        d["spec"]["replicas"] = 6
    assert "replaced" in r.stdout
    settle(server, ns, kubectl_bin)
    for _ in range(10):
        r = server.kubectl("edit", "deploy", "web", "-n", ns, binary=kubectl_bin, check=False,
                           env={"KUBE_EDITOR": "sed -i s/replicas:\\ 6/replicas:\\ 9/", "EDITOR": ""})
        if r.returncode == 0:
            break
        assert "Conflict" in r.stderr or "modified" in r.stderr, r.stderr
    assert "edited" in r.stdout
    assert server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["replicas"] == 9


def test_watch_streams_changes(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    p = subprocess.Popen([kubectl_bin, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(server.cache_dir),
                          "get", "cm", "-n", ns, "-w", "--output-watch-events"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        server.kubectl("apply", "-n", ns, "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: '1'}\n", binary=kubectl_bin)
        server.kubectl("delete", "cm", "watched", "-n", ns, binary=kubectl_bin)
        lines = []
        deadline = time.time() + 15
        while time.time() < deadline and not any("DELETED" in l for l in lines):
            lines.append(p.stdout.readline())
        joined = "".join(lines)
        assert "ADDED" in joined and "watched" in joined and "DELETED" in joined
    finally:
        p.kill()


def test_describe_shows_events(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY, binary=kubectl_bin)
    d = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)
    ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": ns},
          "involvedObject": {"kind": "Deployment", "name": "web", "namespace": ns, "uid": d["metadata"]["uid"], "apiVersion": "apps/v1"},
          "reason": "ScalingReplicaSet", "message": "Scaled up replica set web-abc to 2", "type": "Normal",
          "source": {"component": "deployment-controller"}, "count": 1,
          "firstTimestamp": d["metadata"]["creationTimestamp"], "lastTimestamp": d["metadata"]["creationTimestamp"]}
    server.kubectl("create", "-f", "-", input=json.dumps(ev), binary=kubectl_bin)
    out = server.kubectl("describe", "deploy", "web", "-n", ns, binary=kubectl_bin).stdout
    assert "Replicas:" in out and "example.com/web:v1" in out
    assert "ScalingReplicaSet" in out and "Scaled up replica set web-abc to 2" in out
    events = server.kubectl("get", "events", "-n", ns, binary=kubectl_bin).stdout
    assert "ScalingReplicaSet" in events


def test_delete_forms_and_wait(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    for i in range(3):
        server.kubectl("apply", "-n", ns, "-f", "-", binary=kubectl_bin,
                       input=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, labels: {{grp: {'xx' if i else 'yy'}}}}}\n")
    assert "deleted" in server.kubectl("delete", "cm", "-n", ns, "-l", "grp=xx", binary=kubectl_bin).stdout
    assert server.kubectl("get", "cm", "-n", ns, "-o", "name", binary=kubectl_bin).stdout.split() == [
        "configmap/c0", "configmap/kube-root-ca.crt"]
    server.kubectl("delete", "cm", "--all", "-n", ns, binary=kubectl_bin)
    # Only the namespace's CA bundle comes back (its controller keeps it, as upstream's).
    assert wait_for(lambda: server.kubectl("get", "cm", "-n", ns, "-o", "name", binary=kubectl_bin).stdout.split()
                    == ["configmap/kube-root-ca.crt"], timeout=10, what="kube-root-ca.crt recreated")
    r = server.kubectl("get", "cm", "nope", "-n", ns, binary=kubectl_bin, check=False)
    assert r.returncode == 1 and 'configmaps "nope" not found' in r.stderr
    # A finalizer holds deletion until it is removed; wait --for=delete sees it go.
    server.kubectl("apply", "-n", ns, "-f", "-", binary=kubectl_bin,
                   input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n")
    server.kubectl("delete", "cm", "held", "-n", ns, "--wait=false", binary=kubectl_bin)
    held = server.json("get", "cm", "held", "-n", ns, binary=kubectl_bin)
    assert held["metadata"]["deletionTimestamp"]
    waiter = subprocess.Popen([kubectl_bin, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(server.cache_dir),
                               "wait", "--for=delete", "cm/held", "-n", ns, "--timeout=20s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    server.kubectl("patch", "cm", "held", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', binary=kubectl_bin)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert server.kubectl("get", "cm", "held", "-n", ns, binary=kubectl_bin, check=False).returncode == 1


def test_wait_for_condition_on_status(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n"
    server.kubectl("apply", "-n", ns, "-f", "-", input=pvc, binary=kubectl_bin)
    waiter = subprocess.Popen([kubectl_bin, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(server.cache_dir),
                               "wait", "--for=condition=Resizing", "pvc/data", "-n", ns, "--timeout=20s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    status = '{"status":{"conditions":[{"type":"Resizing","status":"True","reason":"Test","message":"ok"}]}}'
    server.kubectl("patch", "pvc", "data", "-n", ns, "--subresource=status", "--type=merge", "-p", status, binary=kubectl_bin)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "condition met" in out


def test_errors_are_kubernetes_statuses(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    bad = DEPLOY.replace("replicas: 2", "replicas: 2\n  replica: 3")
    r = server.kubectl("apply", "-n", ns, "-f", "-", input=bad, binary=kubectl_bin, check=False)
    assert r.returncode != 0 and 'unknown field "spec.replica"' in r.stderr
    r = server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY.replace("name: web\n  labels", "name: Web_1\n  labels"), binary=kubectl_bin, check=False)
    assert r.returncode != 0 and "is invalid" in r.stderr and "metadata.name" in r.stderr
    r = server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY.replace("replicas: 2", 'replicas: "two"'), binary=kubectl_bin, check=False)
    assert r.returncode != 0
    r = server.kubectl("apply", "-n", "does-not-exist", "-f", "-", input=DEPLOY, binary=kubectl_bin, check=False)
    assert r.returncode != 0 and 'namespaces "does-not-exist" not found' in r.stderr


def test_auth_can_i_and_whoami(server, kubectl_bin):
    assert server.kubectl("auth", "can-i", "create", "deployments", binary=kubectl_bin).stdout.strip() == "yes"
    who = server.kubectl("auth", "whoami", "-o", "json", binary=kubectl_bin).stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == "admin"
