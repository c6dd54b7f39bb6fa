"""Images on a real node: the built-in test web application
(kobune.local/webapp:v1/v2), `kobune images import/ls/export`, pulls from a
local registry (anonymous, with imagePullSecrets, through a certs.d mirror)
with the kubelet's events and waiting reasons. Needs root, containerd,
docker-registry and skopeo. Run under `flock /tmp/kobune-containerd.lock`."""

import http.client
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import KOBUNE, NODE, AgentServer, require_containerd, wait_for
from registry import Registry, have_registry_tools

require_containerd("tests/test_images.py")

if not have_registry_tools():
    pytest.skip("docker-registry and skopeo are not installed (scripts/setup)", allow_module_level=True)


@pytest.fixture(scope="module")
def node():
    s = AgentServer(extra_args=["--node-name", NODE])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def webapp_archive(node, tmp_path_factory):
    """kobune.local/webapp:v1 exported from the node as an OCI archive."""
    path = tmp_path_factory.mktemp("images") / "webapp-v1.tar"
    images(node, "export", str(path), "kobune.local/webapp:v1")
    return path


@pytest.fixture(scope="module")
def registry(webapp_archive):
    with Registry() as reg:
        reg.push(webapp_archive, "webapp:v1")
        yield reg


USER, PASSWORD = "alice", "s3cret-pw"


@pytest.fixture(scope="module")
def private_registry(webapp_archive):
    with Registry(users={USER: PASSWORD}) as reg:
        for tag in ["v1", "v2", "never-pulled", "debug"]:
            reg.push(webapp_archive, f"private/webapp:{tag}", creds=(USER, PASSWORD))
        yield reg


def images(node, *args, check=True):
    r = subprocess.run([KOBUNE, "images", *args, "--data-dir", str(node.data_dir)],
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"kobune images {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def apply(node, obj):
    node.kubectl("apply", "-f", "-", input=json.dumps(obj))


def webapp_pod(ns, name, image="kobune.local/webapp:v1", policy=None, env=None, probes=True, **spec):
    c = {"name": "app", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}
    if policy:
        c["imagePullPolicy"] = policy
    if env:
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if probes:
        c["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}
        c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [c], **spec}}


def pod(node, ns, name):
    return node.json("get", "pod", name, "-n", ns)


def ready_ip(node, ns, name, timeout=30):
    node.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", ns, f"--timeout={timeout}s")
    return pod(node, ns, name)["status"]["podIP"]


def get(ip, path, timeout=10):
    try:
        with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def events(node, ns, name=None):
    items = node.json("get", "events", "-n", ns)["items"]
    return [e for e in items if name is None or e["involvedObject"]["name"] == name]


def waiting_reason(node, ns, name):
    cs = (pod(node, ns, name)["status"].get("containerStatuses") or [{}])[0]
    return cs.get("state", {}).get("waiting", {}).get("reason")


def test_builtin_images_listed(node):
    out = images(node, "ls").stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "SIZE"]
    rows = {(r.split()[0], r.split()[1]): r.split() for r in out[1:]}
    for repo, tag in [("kobune.local/webapp", "v1"), ("kobune.local/webapp", "v2"),
                      ("kobune.local/pause", "1"), ("kobune.local/busybox", "1")]:
        assert (repo, tag) in rows, out
    v1, v2 = rows[("kobune.local/webapp", "v1")], rows[("kobune.local/webapp", "v2")]
    assert len(v1[2]) == 13 and v1[2] != v2[2], "v1 and v2 have different configs, so IDs"
    assert v1[3].endswith("MB") or v1[3].endswith("kB")


def test_images_needs_a_running_node(tmp_path):
    r = subprocess.run([KOBUNE, "images", "ls", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "no containerd socket at" in r.stderr and "kobune server" in r.stderr


def test_webapp_serves_health_metrics_and_burn(node):
    ns = "webapp"
    node.kubectl("create", "namespace", ns)
    apply(node, webapp_pod(ns, "web"))
    ip = ready_ip(node, ns, "web")
    assert get(ip, "/") == (200, "webapp v1 web\n")
    assert get(ip, "/version") == (200, "v1\n")
    assert get(ip, "/healthz")[0] == 200
    assert get(ip, "/readyz") == (200, "ok\n")
    status, metrics = get(ip, "/metrics")
    assert status == 200
    assert "# TYPE http_requests_total counter" in metrics
    assert "\nwebapp_idle_workers 4\n" in metrics and "\nwebapp_busy_workers 0\n" in metrics
    t = time.time()
    assert get(ip, "/burn?ms=300") == (200, "burned 300 ms\n")
    assert time.time() - t >= 0.3

    # Two requests holding workers: idle workers drop to 2.
    holders = [threading.Thread(target=get, args=(ip, "/sleep?ms=1500")) for _ in range(2)]
    for h in holders:
        h.start()
    time.sleep(0.4)
    metrics = get(ip, "/metrics")[1]
    assert "\nwebapp_idle_workers 2\n" in metrics and "\nwebapp_busy_workers 2\n" in metrics, metrics
    for h in holders:
        h.join()

    # Keep-alive: several requests on one connection, each with Content-Length.
    conn = http.client.HTTPConnection(ip, 8080, timeout=5)
    for path in ["/version", "/healthz", "/version"]:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Length") and r.getheader("Connection") == "keep-alive"
        r.read()
    conn.request("GET", "/", headers={"Connection": "close"})
    r = conn.getresponse()
    assert r.getheader("Connection") == "close" and r.read() == b"webapp v1 web\n"
    conn.close()

    # Idle keep-alive connections hold no worker: with more of them open
    # than workers, new requests are still answered at once.
    parked = []
    for _ in range(6):
        c = http.client.HTTPConnection(ip, 8080, timeout=5)
        c.request("GET", "/healthz")
        assert c.getresponse().read() == b"ok\n"
        parked.append(c)
    t = time.time()
    assert get(ip, "/version", timeout=3) == (200, "v1\n")
    assert time.time() - t < 1
    assert "\nwebapp_idle_workers 4\n" in get(ip, "/metrics")[1]
    for c in parked:
        c.request("GET", "/version")
        assert c.getresponse().read() == b"v1\n"
        c.close()

    # Made unready: the pod leaves Ready; made ready again: back.
    assert get(ip, "/readyz/fail")[0] == 200
    assert get(ip, "/readyz") == (503, "not ready\n")
    node.kubectl("wait", "--for=condition=Ready=false", "pod/web", "-n", ns, "--timeout=15s")
    urllib.request.urlopen(urllib.request.Request(f"http://{ip}:8080/readyz/ok", method="POST"), timeout=5)
    node.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", ns, "--timeout=15s")
    node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_busy_pod_leaves_ready_until_a_worker_is_free(node):
    """The readiness probe waits for a free worker like any request: with
    every worker held, it times out and the pod is not Ready until one is
    free again."""
    ns = "busy"
    node.kubectl("create", "namespace", ns)
    p = webapp_pod(ns, "busy", env={"WORKERS": "2"}, probes=False)
    p["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}
    apply(node, p)
    ip = ready_ip(node, ns, "busy")
    holders = [threading.Thread(target=get, args=(ip, "/sleep?ms=6000", 20)) for _ in range(2)]
    for h in holders:
        h.start()
    node.kubectl("wait", "--for=condition=Ready=false", "pod/busy", "-n", ns, "--timeout=10s")
    for h in holders:
        h.join()
    node.kubectl("wait", "--for=condition=Ready", "pod/busy", "-n", ns, "--timeout=15s")
    node.kubectl("delete", "pod", "busy", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_webapp_v2_and_settings_from_env(node):
    ns = "webapp2"
    node.kubectl("create", "namespace", ns)
    apply(node, webapp_pod(ns, "web2", image="kobune.local/webapp:v2", env={"WORKERS": "7"}))
    ip = ready_ip(node, ns, "web2")
    assert get(ip, "/") == (200, "webapp v2 web2\n")
    assert "\nwebapp_workers 7\n" in get(ip, "/metrics")[1]
    node.kubectl("delete", "pod", "web2", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_webapp_drains_on_sigterm(node):
    ns = "drain"
    node.kubectl("create", "namespace", ns)
    apply(node, webapp_pod(ns, "web", env={"DRAIN_SECONDS": "3"}, terminationGracePeriodSeconds=30))
    ip = ready_ip(node, ns, "web")
    slow = {}

    def slow_request():
        t = time.time()
        slow["result"] = get(ip, "/sleep?ms=5000", timeout=30)
        slow["took"] = time.time() - t

    th = threading.Thread(target=slow_request)
    th.start()
    time.sleep(0.3)
    t = time.time()
    node.kubectl("delete", "pod", "web", "-n", ns, "--wait=false")
    # Draining: unready, but still serving new requests.
    wait_for(lambda: get(ip, "/readyz", timeout=2)[0] == 503, timeout=5, what="/readyz 503 while draining")
    assert get(ip, "/readyz", timeout=2) == (503, "draining\n")
    assert get(ip, "/", timeout=2) == (200, "webapp v1 web\n")
    th.join(timeout=30)
    assert slow.get("result") == (200, "slept 5000 ms\n"), slow
    # The app exits by itself (0) after the drain and the in-flight request,
    # long before the 30 s grace period would end in SIGKILL.
    wait_for(lambda: node.kubectl("get", "pod", "web", "-n", ns, check=False).returncode != 0,
             timeout=20, what="pod deleted")
    assert time.time() - t < 15


def test_images_import_export(node, tmp_path):
    exported = tmp_path / "webapp-v2.tar"
    images(node, "export", str(exported), "kobune.local/webapp:v2")
    # Re-importing the OCI archive names the image it holds.
    assert images(node, "import", str(exported)).stdout.split() == ["kobune.local/webapp:v2"]
    # A docker-archive under a new name.
    docker = tmp_path / "docker.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{exported}",
                    f"docker-archive:{docker}:kobune.test/imported:v7"], check=True, timeout=60)
    assert images(node, "import", str(docker)).stdout.split() == ["kobune.test/imported:v7"]
    rows = [r.split() for r in images(node, "ls").stdout.splitlines()[1:]]
    assert ["kobune.test/imported", "v7"] == [r[:2] for r in rows if r[0] == "kobune.test/imported"][0]
    ns = "imported"
    node.kubectl("create", "namespace", ns)
    apply(node, webapp_pod(ns, "imp", image="kobune.test/imported:v7", policy="Never"))
    ip = ready_ip(node, ns, "imp")
    assert get(ip, "/") == (200, "webapp v2 imp\n")
    node.kubectl("delete", "pod", "imp", "-n", ns, "--grace-period=1", "--timeout=30s")
    assert images(node, "rm", "kobune.test/imported:v7").stdout == "Deleted: kobune.test/imported:v7\n"
    assert "kobune.test/imported" not in images(node, "ls").stdout
    bad = images(node, "import", str(tmp_path / "missing.tar"), check=False)
    assert bad.returncode != 0 and "no such file" in bad.stderr
    bad = images(node, "export", str(tmp_path / "x.tar"), "kobune.test/absent:1", check=False)
    assert bad.returncode != 0 and "not present" in bad.stderr


def test_pull_from_local_registry(node, registry):
    ns = "pull"
    node.kubectl("create", "namespace", ns)
    image = f"{registry.host}/webapp:v1"
    apply(node, webapp_pod(ns, "pulled", image=image, policy="Always"))
    ip = ready_ip(node, ns, "pulled", timeout=60)
    assert get(ip, "/") == (200, "webapp v1 pulled\n")
    ev = {e["reason"]: e for e in events(node, ns, "pulled")}
    assert ev["Pulling"]["message"] == f'Pulling image "{image}"'
    msg = ev["Pulled"]["message"]
    assert msg.startswith(f'Successfully pulled image "{image}" in ') and "Image size: " in msg, msg
    assert int(msg.split("Image size: ")[1].split()[0]) > 100_000
    cs = pod(node, ns, "pulled")["status"]["containerStatuses"][0]
    assert cs["imageID"]
    node.kubectl("delete", "pod", "pulled", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_pull_secrets(node, private_registry):
    reg = private_registry
    ns = "private"
    node.kubectl("create", "namespace", ns)

    # No credentials: ErrImagePull, then ImagePullBackOff with a BackOff event.
    image = f"{reg.host}/private/webapp:never-pulled"
    apply(node, webapp_pod(ns, "anon", image=image, probes=False))
    wait_for(lambda: waiting_reason(node, ns, "anon") == "ImagePullBackOff", timeout=30,
             what="ImagePullBackOff")
    evs = events(node, ns, "anon")
    failed = [e["message"] for e in evs if e["reason"] == "Failed"]
    assert "Error: ErrImagePull" in failed
    assert any(m.startswith(f'Failed to pull image "{image}": ') and "401 Unauthorized" in m for m in failed), failed
    backoff = [e for e in evs if e["reason"] == "BackOff"]
    assert backoff and backoff[0]["message"] == f'Back-off pulling image "{image}"'
    row = node.kubectl("get", "pod", "anon", "-n", ns).stdout.splitlines()[1].split()
    assert row[2] in ("ImagePullBackOff", "ErrImagePull"), row

    # A wrong password in the secret fails the same way.
    node.kubectl("create", "secret", "docker-registry", "wrong", "-n", ns, f"--docker-server={reg.host}",
                 f"--docker-username={USER}", "--docker-password=nope")
    apply(node, webapp_pod(ns, "wrong", image=image, probes=False, imagePullSecrets=[{"name": "wrong"}]))
    try:
        wait_for(lambda: any(e["reason"] == "Failed" and "401 Unauthorized" in e["message"]
                             for e in events(node, ns, "wrong")), timeout=30, what="401 with the wrong secret")
    except AssertionError:
        raise AssertionError([(e["reason"], e["message"]) for e in events(node, ns, "wrong")])

    # The right secret in the pod.
    node.kubectl("create", "secret", "docker-registry", "regcred", "-n", ns, f"--docker-server={reg.host}",
                 f"--docker-username={USER}", f"--docker-password={PASSWORD}")
    apply(node, webapp_pod(ns, "withsecret", image=f"{reg.host}/private/webapp:v1", policy="Always",
                           imagePullSecrets=[{"name": "regcred"}]))
    ip = ready_ip(node, ns, "withsecret", timeout=60)
    assert get(ip, "/") == (200, "webapp v1 withsecret\n")
    assert any(e["reason"] == "Pulled" and "Successfully pulled" in e["message"]
               for e in events(node, ns, "withsecret"))

    # The secret through the pod's service account.
    apply(node, {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "puller", "namespace": ns},
                 "imagePullSecrets": [{"name": "regcred"}]})
    apply(node, webapp_pod(ns, "viasa", image=f"{reg.host}/private/webapp:v2", policy="Always",
                           serviceAccountName="puller"))
    ip = ready_ip(node, ns, "viasa", timeout=60)
    assert get(ip, "/") == (200, "webapp v1 viasa\n")

    # A `kubectl debug` container's image is pulled with the pod's secrets too.
    node.kubectl("debug", "withsecret", "-n", ns, f"--image={reg.host}/private/webapp:debug", "-c", "dbg")
    wait_for(lambda: any(e["reason"] == "Pulled" and "Successfully pulled" in e["message"]
                         and e["involvedObject"].get("fieldPath") == "spec.ephemeralContainers{dbg}"
                         for e in events(node, ns, "withsecret")), timeout=60, what="the debug image pulled")

    # A secret that does not exist is reported.
    apply(node, webapp_pod(ns, "nosecret", image=image, probes=False, imagePullSecrets=[{"name": "absent"}]))
    wait_for(lambda: any(e["reason"] == "FailedToRetrieveImagePullSecret" and f"{ns}/absent" in e["message"]
                         for e in events(node, ns, "nosecret")), timeout=30, what="FailedToRetrieveImagePullSecret")
    for name in ["anon", "wrong", "withsecret", "viasa", "nosecret"]:
        node.kubectl("delete", "pod", name, "-n", ns, "--grace-period=1", "--wait=false")


def test_pull_through_mirror(node, registry):
    # A user routes registry.example.test to the local registry in certs.d.
    hosts = node.data_dir / "agent" / "containerd" / "certs.d" / "registry.example.test"
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / "hosts.toml").write_text(
        'server = "https://registry.example.test"\n\n'
        f'[host."http://{registry.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    ns = "mirror"
    node.kubectl("create", "namespace", ns)
    image = "registry.example.test/webapp:v1"
    apply(node, webapp_pod(ns, "mirrored", image=image, policy="IfNotPresent"))
    ip = ready_ip(node, ns, "mirrored", timeout=60)
    assert get(ip, "/") == (200, "webapp v1 mirrored\n")
    assert any(e["reason"] == "Pulled" and e["message"].startswith(f'Successfully pulled image "{image}"')
               for e in events(node, ns, "mirrored"))
    assert "registry.example.test/webapp" in images(node, "ls").stdout
    node.kubectl("delete", "pod", "mirrored", "-n", ns, "--grace-period=1", "--timeout=30s")


def test_never_pull_policy_missing_image(node):
    ns = "never"
    node.kubectl("create", "namespace", ns)
    apply(node, webapp_pod(ns, "absent", image="kobune.local/webapp:v9", policy="Never", probes=False))
    wait_for(lambda: waiting_reason(node, ns, "absent") == "ErrImageNeverPull", timeout=20,
             what="ErrImageNeverPull")
    ev = [e for e in events(node, ns, "absent") if e["reason"] == "ErrImageNeverPull"]
    assert ev[0]["message"] == 'Container image "kobune.local/webapp:v9" is not present with pull policy of Never'
    node.kubectl("delete", "pod", "absent", "-n", ns, "--grace-period=1", "--timeout=30s")
