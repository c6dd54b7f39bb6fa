"""OpenAPI v2 served as gnostic protobuf: what client-go's discovery asks for,
and what kubectl's client-side validation (used for `kind: List`) parses."""

import json
import ssl
import time
import urllib.request

from test_kubectl import new_ns
from test_kubectl_more import CRD

PB = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"

ITEMS = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {{name: {cm}}}
  data: {{a: "{data}"}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {deploy}}}
  spec:
    replicas: {replicas}
    selector: {{matchLabels: {{app: web}}}}
    template:
      metadata: {{labels: {{app: web}}}}
      spec:
        containers: [{{name: web, image: example.com/web:v1}}]
"""


def raw_get(server, path, accept):
    ctx = ssl.create_default_context(cafile=server.ca)
    req = urllib.request.Request(server.url + path, headers={
        "Accept": accept, "Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return r.headers.get("Content-Type"), r.read()


def test_openapi_v2_content_negotiation(server):
    ctype, body = raw_get(server, "/openapi/v2", PB)
    # The reply's type must parse with Go's mime.ParseMediaType ('@' does not).
    assert ctype == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    assert body[:5] == b"\x0a\x032.0"  # Document.swagger (field 1) = "2.0"
    assert b"io.k8s.api.apps.v1.DeploymentSpec" in body
    assert b"x-kubernetes-group-version-kind" in body
    ctype2, body2 = raw_get(server, "/openapi/v2", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
    assert ctype2 == ctype and body2 == body
    ctype, body = raw_get(server, "/openapi/v2", "application/json")
    assert ctype.startswith("application/json")
    doc = json.loads(body)
    spec = doc["definitions"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]
    assert spec["$ref"] == "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"


def test_apply_list_validates_client_side(server, kubectl_bin):
    ns = new_ns(server, kubectl_bin)
    good = ITEMS.format(cm="cm1", data="one", deploy="web", replicas=1)
    out = server.kubectl("apply", "-n", ns, "-f", "-", input=good, binary=kubectl_bin).stdout
    assert "configmap/cm1 created" in out and "deployment.apps/web created" in out
    assert server.json("get", "cm", "cm1", "-n", ns, binary=kubectl_bin)["data"] == {"a": "one"}
    assert server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["replicas"] == 1
    # Re-applying a changed list patches both.
    changed = ITEMS.format(cm="cm1", data="two", deploy="web", replicas=2)
    out = server.kubectl("apply", "-n", ns, "-f", "-", input=changed, binary=kubectl_bin).stdout
    assert "configmap/cm1 configured" in out and "deployment.apps/web configured" in out
    assert server.json("get", "deploy", "web", "-n", ns, binary=kubectl_bin)["spec"]["replicas"] == 2
    # An unknown field in one item fails the whole list before anything is sent.
    bad = ITEMS.format(cm="cm2", data="x", deploy="web2", replicas=1).replace(
        "    replicas: 1\n", "    replicas: 1\n    foo: bar\n")
    r = server.kubectl("apply", "-n", ns, "-f", "-", input=bad, binary=kubectl_bin, check=False)
    assert r.returncode != 0
    assert ('ValidationError(Deployment.spec): unknown field "foo" in io.k8s.api.apps.v1.DeploymentSpec'
            in r.stderr), r.stderr
    assert server.kubectl("get", "cm", "cm2", "-n", ns, binary=kubectl_bin, check=False).returncode != 0
    # --validate=false skips the client-side check (and asks the server to ignore the field).
    r = server.kubectl("apply", "--validate=false", "-n", ns, "-f", "-", input=bad, binary=kubectl_bin)
    assert "configmap/cm2 created" in r.stdout
    # explain over the v2 document.
    out = server.kubectl("explain", "--output=plaintext-openapiv2", "deployment.spec.replicas",
                         binary=kubectl_bin).stdout
    assert "replicas <integer>" in out
    assert "replicas" in server.kubectl("explain", "deployment.spec.replicas", binary=kubectl_bin).stdout


def test_custom_resources_in_a_list(server, kubectl_bin):
    server.kubectl("apply", "-f", "-", input=CRD, binary=kubectl_bin)
    server.kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s",
                   binary=kubectl_bin)
    ns = new_ns(server, kubectl_bin)
    lst = ("apiVersion: v1\nkind: List\nitems:\n"
           "- {apiVersion: example.com/v1, kind: Widget, metadata: {name: w1}, spec: {size: large, replicas: 2}}\n"
           "- {apiVersion: v1, kind: ConfigMap, metadata: {name: c1}}\n")
    # Discovery and the OpenAPI document follow the CRD; give kubectl a moment.
    deadline = time.time() + 15
    while True:
        r = server.kubectl("apply", "-n", ns, "-f", "-", input=lst, binary=kubectl_bin, check=False)
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert r.returncode == 0, r.stderr
    assert "widget.example.com/w1 created" in r.stdout and "configmap/c1 created" in r.stdout
    bad = lst.replace("replicas: 2}", "replicas: 2, colour: red}").replace("w1", "w2").replace("c1", "c2")
    r = server.kubectl("apply", "-n", ns, "-f", "-", input=bad, binary=kubectl_bin, check=False)
    assert r.returncode != 0
    assert 'unknown field "colour" in com.example.v1.Widget.spec' in r.stderr, r.stderr
    assert server.kubectl("get", "cm", "c2", "-n", ns, binary=kubectl_bin, check=False).returncode != 0
    out = server.kubectl("explain", "--output=plaintext-openapiv2", "widget.spec.size", binary=kubectl_bin).stdout
    assert "How big the widget is" in out
