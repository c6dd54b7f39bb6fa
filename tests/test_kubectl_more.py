"""More of kubectl against kobune: protobuf-bodied `create` commands,
cascading deletes in all three modes, namespace lifecycle, custom resources,
and rollout history/undo over stored ReplicaSets."""

import json
import subprocess
import time
import uuid

import pytest
import yaml

from test_kubectl import DEPLOY, new_ns


def wait_gone(server, *args, binary, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.kubectl("get", *args, binary=binary, check=False).returncode != 0:
            return True
        time.sleep(0.1)
    return False


def test_create_commands_with_protobuf_bodies(server, kubectl_bin):
    ns = "pb-" + uuid.uuid4().hex[:6]
    k = lambda *a: server.kubectl(*a, binary=kubectl_bin).stdout
    assert f"namespace/{ns} created" in k("create", "namespace", ns)
    assert "configmap/app created" in k("create", "configmap", "app", "-n", ns, "--from-literal=mode=fast", "--from-literal=level=3")
    assert "secret/db created" in k("create", "secret", "generic", "db", "-n", ns, "--from-literal=password=s3cret")
    assert "deployment.apps/web created" in k("create", "deployment", "web", "-n", ns, "--image=example.com/web:v1", "--replicas=3", "--port=8080")
    assert "service/web created" in k("create", "service", "clusterip", "web", "-n", ns, "--tcp=80:8080")
    assert "serviceaccount/deployer created" in k("create", "serviceaccount", "deployer", "-n", ns)
    assert "role.rbac.authorization.k8s.io/reader created" in k("create", "role", "reader", "-n", ns, "--verb=get,list", "--resource=pods")
    assert "rolebinding.rbac.authorization.k8s.io/reader created" in k("create", "rolebinding", "reader", "-n", ns, "--role=reader", f"--serviceaccount={ns}:deployer")
    assert "job.batch/once created" in k("create", "job", "once", "-n", ns, "--image=example.com/batch:v1")
    assert "cronjob.batch/hourly created" in k("create", "cronjob", "hourly", "-n", ns, "--image=example.com/batch:v1", "--schedule=0 * * * *")
    assert "horizontalpodautoscaler.autoscaling/web autoscaled" in k("autoscale", "deployment", "web", "-n", ns, "--min=2", "--max=10", "--cpu-percent=60")
    assert "poddisruptionbudget.policy/web created" in k("create", "pdb", "web", "-n", ns, "--selector=app=web", "--min-available=1")
    assert "ingress.networking.k8s.io/web created" in k("create", "ingress", "web", "-n", ns, "--rule=shop.example.com/*=web:80")
    token = k("create", "token", "deployer", "-n", ns).strip()
    assert len(token) > 20
    assert json.loads(k("get", "cm", "app", "-n", ns, "-o", "json"))["data"] == {"mode": "fast", "level": "3"}
    sec = json.loads(k("get", "secret", "db", "-n", ns, "-o", "json"))
    assert sec["type"] == "Opaque" and sec["data"]["password"] == "czNjcmV0"
    d = json.loads(k("get", "deploy", "web", "-n", ns, "-o", "json"))
    assert d["spec"]["replicas"] == 3 and d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080
    cj = json.loads(k("get", "cronjob", "hourly", "-n", ns, "-o", "json"))
    assert cj["spec"]["schedule"] == "0 * * * *" and cj["spec"]["concurrencyPolicy"] == "Allow"
    hpa = k("get", "hpa", "web", "-n", ns).splitlines()[1].split()
    assert hpa[0] == "web" and "Deployment/web" in hpa[1]
    ing = json.loads(k("get", "ingress", "web", "-n", ns, "-o", "json"))
    assert ing["spec"]["rules"][0]["host"] == "shop.example.com"
    assert "get" in json.loads(k("get", "role", "reader", "-n", ns, "-o", "json"))["rules"][0]["verbs"]
    all_out = k("get", "all", "-n", ns)
    assert "deployment.apps/web" in all_out and "cronjob.batch/hourly" in all_out and "service/web" in all_out


def owned_cm(name, owner, uid, block=False):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid, "blockOwnerDeletion": block}]}}


@pytest.mark.parametrize("cascade", ["background", "foreground", "orphan"])
def test_cascading_delete(server, kubectl_bin, cascade):
    ns = new_ns(server, kubectl_bin)
    server.kubectl("create", "-n", ns, "-f", "-", input='{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"owner"}}', binary=kubectl_bin)
    uid = server.json("get", "cm", "owner", "-n", ns, binary=kubectl_bin)["metadata"]["uid"]
    for i in range(3):
        server.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(owned_cm(f"dep{i}", "owner", uid, block=True)), binary=kubectl_bin)
    out = server.kubectl("delete", "cm", "owner", "-n", ns, f"--cascade={cascade}", "--timeout=30s", binary=kubectl_bin).stdout
    assert 'configmap "owner" deleted' in out
    assert server.kubectl("get", "cm", "owner", "-n", ns, binary=kubectl_bin, check=False).returncode != 0
    if cascade == "orphan":
        for i in range(3):
            d = server.json("get", "cm", f"dep{i}", "-n", ns, binary=kubectl_bin)
            assert not d["metadata"].get("ownerReferences")
    else:
        for i in range(3):
            assert wait_gone(server, "cm", f"dep{i}", "-n", ns, binary=kubectl_bin)


def test_namespace_deletion_removes_content(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY, binary=kubectl_bin)
    server.kubectl("apply", "-n", ns, "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", binary=kubectl_bin)
    out = server.kubectl("delete", "namespace", ns, "--timeout=30s", binary=kubectl_bin).stdout
    assert f'namespace "{ns}" deleted' in out
    assert server.kubectl("get", "ns", ns, binary=kubectl_bin, check=False).returncode != 0
    left = server.kubectl("get", "cm,deploy", "-A", "-o", "name", binary=kubectl_bin).stdout
    assert ns not in left
    r = server.kubectl("apply", "-n", ns, "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: yy}\n", binary=kubectl_bin, check=False)
    assert r.returncode != 0 and "not found" in r.stderr


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: string, description: How big the widget is.}
              replicas: {type: integer}
          status:
            type: object
            properties:
              replicas: {type: integer}
"""


def test_custom_resources(server, kubectl_bin):
    server.kubectl("apply", "-f", "-", input=CRD, binary=kubectl_bin)
    server.kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s", binary=kubectl_bin)
    ns = new_ns(server, kubectl_bin)
    # Discovery follows the CRD; kubectl may need a moment to see the new type.
    deadline = time.time() + 15
    while time.time() < deadline:
        r = server.kubectl("apply", "-n", ns, "-f", "-", binary=kubectl_bin, check=False,
                           input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: large, replicas: 2}\n")
        if r.returncode == 0:
            break
        time.sleep(0.5)
    assert r.returncode == 0, r.stderr
    rows = server.kubectl("get", "widgets", "-n", ns, binary=kubectl_bin).stdout.splitlines()
    assert rows[0].split() == ["NAME", "SIZE", "REPLICAS", "AGE"] and rows[1].split()[:3] == ["w1", "large", "2"]
    assert "w1" in server.kubectl("get", "wg", "-n", ns, binary=kubectl_bin).stdout
    assert "scaled" in server.kubectl("scale", "widget", "w1", "-n", ns, "--replicas=5", binary=kubectl_bin).stdout
    assert server.json("get", "widget", "w1", "-n", ns, binary=kubectl_bin)["spec"]["replicas"] == 5
    server.kubectl("patch", "widget", "w1", "-n", ns, "--subresource=status", "--type=merge", "-p", '{"status":{"replicas":5}}', binary=kubectl_bin)
    w = server.json("get", "widget", "w1", "-n", ns, binary=kubectl_bin)
    assert w["status"]["replicas"] == 5 and w["metadata"]["generation"] == 2
    r = server.kubectl("apply", "-n", ns, "-f", "-", binary=kubectl_bin, check=False,
                       input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: small, colour: red}\n")
    assert r.returncode != 0 and "colour" in r.stderr
    assert "How big the widget is" in server.kubectl("explain", "widget.spec.size", binary=kubectl_bin).stdout


def test_rollout_history_and_undo(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    server.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOY, binary=kubectl_bin)
    server.kubectl("annotate", "deploy", "web", "-n", ns, "kubernetes.io/change-cause=first", binary=kubectl_bin)
    server.kubectl("set", "image", "deployment/web", "web=example.com/web:v2", "-n", ns, binary=kubectl_bin)
    server.kubectl("annotate", "deploy", "web", "-n", ns, "--overwrite", "kubernetes.io/change-cause=second", binary=kubectl_bin)

    def revisions():
        rss = server.json("get", "rs", "-n", ns, binary=kubectl_bin)["items"]
        return {rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision"): rs for rs in rss}

    deadline = time.time() + 20
    while time.time() < deadline and not {"1", "2"} <= set(revisions()):
        time.sleep(0.2)
    assert {"1", "2"} <= set(revisions()), revisions().keys()
    hist = server.kubectl("rollout", "history", "deployment/web", "-n", ns, binary=kubectl_bin).stdout
    assert "REVISION" in hist and "1 " in hist and "2 " in hist
    detail = server.kubectl("rollout", "history", "deployment/web", "-n", ns, "--revision=1", binary=kubectl_bin).stdout
    assert "example.com/web:v1" in detail
    out = server.kubectl("rollout", "undo", "deployment/web", "-n", ns, "--to-revision=1", binary=kubectl_bin).stdout
    assert "rolled back" in out
    img = server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert img == "example.com/web:v1"


def test_event_api_versions(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1", "namespace": ns},
          "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "kobune/test", "reportingInstance": "t",
          "action": "Testing", "reason": "Tested", "note": "hello", "type": "Normal",
          "regarding": {"kind": "ConfigMap", "name": "x", "namespace": ns}}
    server.kubectl("create", "-f", "-", input=json.dumps(ev), binary=kubectl_bin)
    core = server.json("get", "events.v1.", "e1", "-n", ns, binary=kubectl_bin)
    assert core["message"] == "hello" and core["involvedObject"]["name"] == "x"
    new = server.json("get", "events.v1.events.k8s.io", "e1", "-n", ns, binary=kubectl_bin)
    assert new["note"] == "hello" and new["regarding"]["kind"] == "ConfigMap"


def test_empty_maps_are_omitted_like_typed_objects(server, kubectl_bin):
    """Built-in objects round-trip through Go structs upstream, where empty
    maps are omitted: a patch or apply leaving `{}` must not store it, or
    `kubectl diff` shows spurious changes."""
    k = lambda *a, **kw: server.kubectl(*a, binary=kubectl_bin, **kw)
    ns = "e-" + uuid.uuid4().hex[:8]
    k("create", "namespace", ns)
    k("patch", "ns", ns, "--type=strategic", "-p", '{"metadata":{"annotations":{}}}')
    assert "annotations" not in server.json("get", "ns", ns)["metadata"]
    k("create", "configmap", "cm", "-n", ns, "--from-literal=a=b")
    k("patch", "configmap", "cm", "-n", ns, "--type=merge", "-p", '{"data":{"a":null},"metadata":{"labels":{}}}')
    cm = server.json("get", "configmap", "cm", "-n", ns)
    assert "data" not in cm and "labels" not in cm["metadata"], cm
    # An emptyDir is a struct, not a map: it stays.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "v", "emptyDir": {}}]}}
    k("create", "-f", "-", input=json.dumps(pod))
    assert server.json("get", "pod", "p", "-n", ns)["spec"]["volumes"][0]["emptyDir"] == {}
    # A namespace that was never applied diffs clean.
    r = k("diff", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
          check=False)
    assert r.returncode == 0 and r.stdout == "", r.stdout
