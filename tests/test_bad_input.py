"""Hostile and malformed requests: each gets the exact Kubernetes Status
error upstream gives, and none of them hurts the server (no 5xx, still ready)."""

import http.client
import json
import random
import ssl
import struct
import time

import pytest

NS_CM = "/api/v1/namespaces/default/configmaps"


class Raw:
    """Raw HTTPS requests to a server, with its CA and bearer token."""

    def __init__(self, server):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=server.ca)
        self.ctx.check_hostname = False
        self.token = server.token

    def request(self, method, path, body=None, content_type="application/json", auth=True, headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ctx, timeout=30)
        h = {"Accept": "application/json"}
        if auth:
            h["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            if content_type:
                h["Content-Type"] = content_type
        h.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            conn.close()


@pytest.fixture(scope="module")
def raw(server):
    return Raw(server)


def status_of(code, data, reason, expected_code=None):
    """Checks a Status body and returns it."""
    s = json.loads(data)
    assert s["kind"] == "Status", s
    assert s["apiVersion"] == "v1", s
    assert s["status"] == "Failure", s
    assert s["reason"] == reason, s
    assert s["code"] == (expected_code or code), s
    return s


def expect(raw, method, path, code, reason, **kw):
    got, headers, data = raw.request(method, path, **kw)
    assert got == code, (got, data[:500])
    return status_of(code, data, reason)


def assert_healthy(raw):
    got, _, data = raw.request("GET", "/readyz", auth=False)
    assert (got, data) == (200, b"ok")
    got, _, _ = raw.request("GET", NS_CM)
    assert got == 200


def cm(name, **extra):
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}}
    body.update(extra)
    return body


def test_malformed_json(raw):
    s = expect(raw, "POST", NS_CM, 400, "BadRequest", body=b'{"apiVersion": "v1", "kind": ')
    assert s["message"]
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=b"{} trailing")
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=b"\xff\xfe\x00")
    assert_healthy(raw)


def test_body_too_large(raw):
    big = json.dumps(cm("big", data={"a": "x" * (3 * 1024 * 1024 + 10)})).encode()
    s = expect(raw, "POST", NS_CM, 413, "RequestEntityTooLarge", body=big)
    assert s["message"] == "Request entity too large: limit is 3145728"
    assert_healthy(raw)


DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def deployment(name):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def test_strict_unknown_field(raw):
    body = deployment("strict-unknown")
    body["spec"]["foo"] = 1
    s = expect(raw, "POST", DEPLOYMENTS + "?fieldValidation=Strict", 400, "BadRequest", body=body)
    assert 'strict decoding error: unknown field "spec.foo"' in s["message"], s
    got, _, _ = raw.request("GET", DEPLOYMENTS + "/strict-unknown")
    assert got == 404
    # A kind without a spec: the whole field is unknown.
    body = cm("strict-unknown")
    body["spec"] = {"foo": 1}
    s = expect(raw, "POST", NS_CM + "?fieldValidation=Strict", 400, "BadRequest", body=body)
    assert 'strict decoding error: unknown field "spec"' in s["message"], s


def test_strict_duplicate_field(raw):
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"strict-dup","name":"strict-dup"},"data":{"a":"1"}}'
    s = expect(raw, "POST", NS_CM + "?fieldValidation=Strict", 400, "BadRequest", body=body)
    assert "duplicate field" in s["message"], s


def test_warn_mode_creates_with_warning(raw):
    body = deployment("warn-unknown")
    body["spec"]["foo"] = 1
    got, headers, data = raw.request("POST", DEPLOYMENTS + "?fieldValidation=Warn", body=body)
    assert got == 201, data
    warnings = [v for k, v in headers if k.lower() == "warning"]
    assert warnings and any("spec.foo" in w for w in warnings), headers
    assert json.loads(data)["metadata"]["name"] == "warn-unknown"


def test_invalid_name(raw):
    s = expect(raw, "POST", NS_CM, 422, "Invalid", body=cm("Not_A_Valid_Name"))
    assert s["details"]["causes"][0]["field"] == "metadata.name", s
    assert s["details"]["kind"] == "ConfigMap"


def test_invalid_label_value(raw):
    body = cm("bad-label")
    body["metadata"]["labels"] = {"app": "has spaces!"}
    s = expect(raw, "POST", NS_CM, 422, "Invalid", body=body)
    assert any(c["field"] == "metadata.labels" for c in s["details"]["causes"]), s


def test_stale_resource_version(raw):
    got, _, data = raw.request("POST", NS_CM, body=cm("stale"))
    assert got == 201, data
    created = json.loads(data)
    rv = created["metadata"]["resourceVersion"]
    created["data"] = {"a": "2"}
    got, _, data = raw.request("PUT", NS_CM + "/stale", body=created)
    assert got == 200, data
    created["data"] = {"a": "3"}
    created["metadata"]["resourceVersion"] = rv
    s = expect(raw, "PUT", NS_CM + "/stale", 409, "Conflict", body=created)
    assert "the object has been modified" in s["message"], s


def test_unknown_resource(raw):
    expect(raw, "GET", "/api/v1/namespaces/default/widgets", 404, "NotFound")
    expect(raw, "GET", "/apis/example.com/v1/widgets", 404, "NotFound")
    expect(raw, "POST", "/api/v1/namespaces/default/nothings", 404, "NotFound", body=cm("x"))


def test_unsupported_patch_media_type(raw):
    raw.request("POST", NS_CM, body=cm("patchme"))
    s = expect(raw, "PATCH", NS_CM + "/patchme", 415, "UnsupportedMediaType",
               body={"data": {"a": "2"}}, content_type="text/plain")
    assert "text/plain" in s["message"]


def test_wrong_kind_for_endpoint(raw):
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-kind"}, "data": {}}
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=body)
    body = {"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "wrong-version"}}
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=body)


def test_invalid_label_selector(raw):
    expect(raw, "GET", NS_CM + "?labelSelector=a%20in%20(b", 400, "BadRequest")
    expect(raw, "GET", NS_CM + "?labelSelector=%21%3D", 400, "BadRequest")


def test_protobuf_garbage(raw):
    pb = "application/vnd.kubernetes.protobuf"
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=b"not protobuf at all", content_type=pb)
    expect(raw, "POST", NS_CM, 400, "BadRequest", body=b"k8s\x00\xff\xff\xff\xff", content_type=pb)
    assert_healthy(raw)


def _pb_field(tag, payload):
    out = bytearray([tag << 3 | 2])
    n = len(payload)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return bytes(out) + payload


def _pb_envelope(api_version, kind, raw_obj):
    type_meta = _pb_field(1, api_version.encode()) + _pb_field(2, kind.encode())
    return b"k8s\x00" + _pb_field(1, type_meta) + _pb_field(2, raw_obj)


def test_no_credentials(raw):
    expect(raw, "GET", NS_CM, 401, "Unauthorized", auth=False)
    expect(raw, "GET", NS_CM, 401, "Unauthorized", auth=False, headers={"Authorization": "Bearer wrong"})
    expect(raw, "POST", NS_CM, 401, "Unauthorized", auth=False, body=cm("anon"))


ENDPOINTS = [
    ("POST", NS_CM),
    ("PUT", NS_CM + "/fuzz-target"),
    ("PATCH", NS_CM + "/fuzz-target"),
    ("POST", "/api/v1/namespaces/default/pods"),
    ("POST", "/api/v1/namespaces/default/services"),
    ("POST", "/apis/apps/v1/namespaces/default/deployments"),
    ("PUT", "/apis/apps/v1/namespaces/default/deployments/fuzz-deploy"),
    ("PATCH", "/apis/apps/v1/namespaces/default/deployments/fuzz-deploy"),
    ("PUT", "/apis/apps/v1/namespaces/default/deployments/fuzz-deploy/scale"),
    ("PATCH", "/apis/apps/v1/namespaces/default/deployments/fuzz-deploy/scale"),
    ("PUT", "/apis/apps/v1/namespaces/default/deployments/fuzz-deploy/status"),
    ("POST", "/api/v1/namespaces"),
    ("POST", "/apis/batch/v1/namespaces/default/cronjobs"),
    ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
    ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
    ("POST", "/apis/networking.k8s.io/v1/namespaces/default/ingresses"),
    ("DELETE", NS_CM + "/fuzz-target"),
    ("DELETE", NS_CM),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
    ("POST", "/api/v1/namespaces/default/pods/fuzz-pod/eviction"),
    ("POST", "/api/v1/namespaces/default/pods/fuzz-pod/binding"),
    ("POST", "/api/v1/namespaces/default/serviceaccounts/default/token"),
]

CONTENT_TYPES = [
    "application/json", "application/yaml", "application/vnd.kubernetes.protobuf",
    "application/merge-patch+json", "application/strategic-merge-patch+json",
    "application/json-patch+json", "application/apply-patch+yaml", None,
]

TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"true", b"-1", b"1e999", b"\\u0000",
          b"\xff", b"k8s\x00", b"\n", b"- ", b"&a", b"*a", b"$patch", b"metadata", b"spec", b"replicas",
          b'"op"', b'"path"', b"/spec", b"\x00"]


def _garbage(rng, seeds):
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if kind == 1:
        return b"".join(rng.choice(TOKENS) for _ in range(rng.randrange(30)))
    body = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        i = rng.randrange(len(body) + 1)
        if op == 0 and body:
            body[min(i, len(body) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            body[i:i] = rng.choice(TOKENS)
        elif op == 2:
            del body[i:i + rng.randrange(1, 16)]
        else:
            body = body[:i]
    return bytes(body)


def test_random_garbage_never_5xx(raw):
    rng = random.Random(0x6B6F62)
    # Targets that exist, so updates and patches reach the decoders and the registry.
    raw.request("POST", NS_CM, body=cm("fuzz-target"))
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fuzz-deploy"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "f"}},
                       "template": {"metadata": {"labels": {"app": "f"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
    raw.request("POST", "/apis/apps/v1/namespaces/default/deployments", body=deploy)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fuzz-pod"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    raw.request("POST", "/api/v1/namespaces/default/pods", body=pod)
    seeds = [json.dumps(x).encode() for x in (
        cm("fuzz-target"), deploy, pod,
        [{"op": "replace", "path": "/spec/replicas", "value": 2}],
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "$patch": "delete"}]}}}},
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"},
    )]
    seeds.append(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fuzz-target\ndata:\n  a: b\n")
    seeds.append(_pb_envelope("v1", "ConfigMap", _pb_field(1, _pb_field(1, b"fuzz-target"))))
    seen = {}
    for i in range(200):
        method, path = rng.choice(ENDPOINTS)
        ct = rng.choice(CONTENT_TYPES)
        if rng.random() < 0.2:
            path += rng.choice(["?fieldValidation=Strict", "?dryRun=All", "?fieldManager=" + "m" * 200,
                                "?labelSelector=%28", "?fieldValidation=bogus", "?force=true",
                                "?gracePeriodSeconds=x", "?propagationPolicy=Sideways"])
        body = _garbage(rng, seeds)
        got, _, data = raw.request(method, path, body=body, content_type=ct)
        seen[got] = seen.get(got, 0) + 1
        assert got < 500, (i, method, path, ct, body[:300], got, data[:500])
        if got >= 400:
            s = json.loads(data)
            assert s["kind"] == "Status" and s["status"] == "Failure" and s["code"] == got, s
        assert raw.server.proc.poll() is None, (i, method, path, ct, body[:300])
    assert any(c >= 400 for c in seen), seen
    assert_healthy(raw)


# Last in the module: on failure it kills the server.
def test_protobuf_nested_raw_extensions(raw):
    """RawExtension (ControllerRevision.data) holding envelope after envelope:
    a 50 KB body must be refused or decoded, not overflow the server's stack."""
    body = _pb_envelope("v1", "ConfigMap", b"")
    for _ in range(1000):
        raw_ext = _pb_field(1, body)  # RawExtension.raw
        revision = _pb_field(2, raw_ext)  # ControllerRevision.data
        body = _pb_envelope("apps/v1", "ControllerRevision", revision)
    try:
        got, _, data = raw.request("POST", "/apis/apps/v1/namespaces/default/controllerrevisions",
                                   body=body, content_type="application/vnd.kubernetes.protobuf")
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        got, data = None, repr(e).encode()
    died = raw.server.proc.poll()
    if died is not None:
        try:
            raw.server.start()  # leave a running server for teardown
        except RuntimeError:
            pass
    assert died is None, f"server died ({died}) decoding {len(body)} bytes of nested RawExtension envelopes"
    assert got is not None and got < 500, (got, data[:300])
    assert_healthy(raw)


def test_pod_spec_is_immutable_but_for_what_upstream_allows(server, kubectl_bin):
    name = "immutable-" + str(abs(hash(kubectl_bin)) % 10000)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "app", "image": "web:1", "command": ["serve"]}]}}
    server.kubectl("apply", "-f", "-", input=json.dumps(pod), binary=kubectl_bin)
    r = server.kubectl("patch", "pod", name, "-p", '{"spec": {"containers": [{"name": "app", "command": ["other"]}]}}',
                       binary=kubectl_bin, check=False)
    assert r.returncode != 0
    assert (f'The Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields other than '
            "`spec.containers[*].image`") in r.stderr, r.stderr
    # The image and added tolerations may change (added: the pod has admission's default ones, which a
    # list replacing them would remove, and be refused for, as upstream).
    server.kubectl("set", "image", f"pod/{name}", "app=web:2", binary=kubectl_bin)
    r = server.kubectl("patch", "pod", name, "-p", '{"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}',
                       binary=kubectl_bin, check=False)
    assert "`spec.tolerations` (only additions to existing tolerations)" in r.stderr, r.stderr
    server.kubectl("patch", "pod", name, "--type=json", "-p",
                   '[{"op": "add", "path": "/spec/tolerations/-", "value": {"key": "k", "operator": "Exists"}}]',
                   binary=kubectl_bin)
    got = server.json("get", "pod", name)["spec"]
    assert got["containers"][0]["image"] == "web:2" and {"key": "k", "operator": "Exists"} in got["tolerations"]
    # Ephemeral containers come only through their subresource, never on create.
    server.kubectl("delete", "pod", name, "--wait=false", binary=kubectl_bin)
    pod["metadata"]["name"] = "with-debugger"
    pod["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "busybox"}]
    r = server.kubectl("create", "-f", "-", input=json.dumps(pod), binary=kubectl_bin, check=False)
    assert r.returncode != 0 and "spec.ephemeralContainers: Forbidden: cannot be set on create" in r.stderr, r.stderr
