"""Pods on a real node: `kobune server` with its node agent (no
--disable-agent) runs containers through our own containerd. Needs root and
containerd; skipped when containerd is not installed (a failure when CI=1)."""

import json
import shutil
import time
import urllib.request

import pytest

from conftest import NODE, AgentServer, require_containerd, wait_for  # noqa: F401  (re-exported to the other node tests)

require_containerd("tests/test_containerd.py")

@pytest.fixture(scope="module")
def node():
    s = AgentServer(extra_args=["--node-name", NODE])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def new_ns(s, name):
    s.kubectl("create", "namespace", name)
    return name


def pod(s, ns, name):
    return s.json("get", "pod", name, "-n", ns)


def test_node_is_registered_ready(node):
    n = node.json("get", "node", NODE)
    ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    info = n["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert info["kubeletVersion"] == "v1.33.0-kobune"
    assert n["spec"]["podCIDR"].endswith("/24")
    assert n["status"]["capacity"]["memory"].endswith("Ki")
    leases = node.kubectl("get", "lease", NODE, "-n", "kube-node-lease", "-o", "name").stdout.split()
    assert leases == [f"lease.coordination.k8s.io/{NODE}"]


def test_web_pod_serves_http_logs_and_deletes(node):
    ns = new_ns(node, "web")
    node.kubectl("run", "web", "-n", ns, "--image=kobune.local/busybox:1", "--image-pull-policy=Never",
                 "--", "sh", "-c", "echo hello from web; exec httpd -f -p 8080 -h /etc")
    node.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", ns, "--timeout=15s")
    p = pod(node, ns, "web")
    assert p["status"]["phase"] == "Running"
    assert p["spec"]["nodeName"] == NODE
    ip = p["status"]["podIP"]
    assert ip.startswith("10.42.")
    cs = p["status"]["containerStatuses"][0]
    assert cs["ready"] and cs["containerID"].startswith("containerd://") and cs["imageID"]
    with urllib.request.urlopen(f"http://{ip}:8080/passwd", timeout=5) as r:
        assert r.status == 200
        assert b"root" in r.read()
    logs = node.kubectl("logs", "web", "-n", ns).stdout
    assert "hello from web" in logs
    events = node.json("get", "events", "-n", ns)["items"]
    reasons = {e["reason"] for e in events if e["source"].get("component") == "kubelet"}
    assert {"Pulled", "Created", "Started"} <= reasons
    assert any(e["message"] == "Started container web" for e in events)
    t = time.time()
    out = node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=2", "--timeout=20s").stdout
    assert 'pod "web" deleted' in out
    assert time.time() - t < 8, "deletion took longer than the grace period allows"
    assert node.kubectl("get", "pod", "web", "-n", ns, check=False).returncode != 0


def test_set_image_on_a_pod_restarts_its_container_with_it(node):
    ns = new_ns(node, "setimage")
    node.kubectl("run", "app", "-n", ns, "--image=kobune.local/webapp:v1", "--image-pull-policy=Never")
    node.kubectl("wait", "--for=condition=Ready", "pod/app", "-n", ns, "--timeout=30s")
    ip = pod(node, ns, "app")["status"]["podIP"]
    get = lambda: urllib.request.urlopen(f"http://{ip}:8080/version", timeout=3).read().decode()
    assert "v1" in get()
    node.kubectl("set", "image", "pod/app", "app=kobune.local/webapp:v2", "-n", ns)

    def restarted():
        cs = pod(node, ns, "app")["status"]["containerStatuses"][0]
        return cs if cs["restartCount"] == 1 and "running" in cs["state"] else None
    cs = wait_for(restarted, timeout=30, what="the container restarted with the new image")
    assert cs["image"] == "kobune.local/webapp:v2" and "terminated" in cs["lastState"]
    assert "v2" in wait_for(lambda: (lambda v: v if "v2" in v else None)(get()), what="v2 answering",
                            retry_on=(OSError,))
    events = node.json("get", "events", "-n", ns)["items"]
    assert any(e["reason"] == "Killing" and e["message"] == "Container app definition changed, will be restarted"
               for e in events)


def test_crash_loop_backoff_and_previous_logs(node):
    ns = new_ns(node, "crash")
    node.kubectl("run", "crash", "-n", ns, "--image=kobune.local/busybox:1", "--image-pull-policy=Never",
                 "--", "sh", "-c", "echo crash; exit 1")

    def looping():
        p = pod(node, ns, "crash")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        waiting = cs.get("state", {}).get("waiting", {})
        return p if cs.get("restartCount", 0) >= 1 and waiting.get("reason") == "CrashLoopBackOff" else None

    p = wait_for(looping, timeout=20, what="CrashLoopBackOff")
    cs = p["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["state"]["waiting"]["message"].startswith("back-off 10s restarting failed container=crash pod=crash_crash(")
    row = node.kubectl("get", "pod", "crash", "-n", ns).stdout.splitlines()[1].split()
    assert row[2] == "CrashLoopBackOff", row
    assert node.kubectl("logs", "crash", "-n", ns, "--previous").stdout == "crash\n"
    events = node.json("get", "events", "-n", ns)["items"]
    assert any(e["reason"] == "BackOff" and e["type"] == "Warning" for e in events)
    node.kubectl("delete", "pod", "crash", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_missing_image_with_never_pull_policy(node):
    ns = new_ns(node, "missing")
    node.kubectl("run", "nope", "-n", ns, "--image=example.com/nope:1", "--image-pull-policy=Never")

    def event():
        items = node.json("get", "events", "-n", ns)["items"]
        return [e for e in items if e["reason"] == "ErrImageNeverPull" and "example.com/nope:1" in e["message"]]

    ev = wait_for(event, timeout=15, what="ErrImageNeverPull event")[0]
    assert ev["type"] == "Warning" and ev["involvedObject"]["name"] == "nope"
    p = pod(node, ns, "nope")
    assert p["status"]["phase"] == "Pending"
    assert p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    node.kubectl("delete", "pod", "nope", "-n", ns, "--timeout=20s")
