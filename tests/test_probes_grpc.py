"""gRPC probes and out-of-memory kills on a real node: `kobune server` with its
node agent runs the webapp image (which answers the gRPC Health Checking
Protocol on GRPC_PORT) and busybox through containerd; driven with kubectl.
Skipped when containerd is not installed (a failure when CI=1)."""

import json
import urllib.error
import urllib.request

from test_containerd import node, wait_for  # noqa: F401  (module-scoped server fixture)

BUSYBOX = "kobune.local/busybox:1"
WEBAPP = "kobune.local/webapp:v1"


def apply(s, obj):
    s.kubectl("apply", "-f", "-", input=json.dumps(obj))


def new_ns(s, name):
    s.kubectl("create", "namespace", name)
    return name


def get_pod(s, ns, name):
    return s.json("get", "pod", name, "-n", ns)


def condition(p, t):
    for c in p["status"].get("conditions") or []:
        if c["type"] == t:
            return c
    return {}


def events(s, ns, name=None):
    items = s.json("get", "events", "-n", ns)["items"]
    return [e for e in items if name is None or e["involvedObject"]["name"] == name]


def pod_obj(ns, name, containers, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec}}


def status(s, ns, name):
    return (get_pod(s, ns, name)["status"].get("containerStatuses") or [{}])[0]


# --- OOMKilled -------------------------------------------------------------------------------------

def hog(policy):
    """busybox with a 16Mi memory limit running `tail /dev/zero`, which buffers one endless line."""
    c = {"name": "hog", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["tail", "/dev/zero"],
         "resources": {"limits": {"memory": "16Mi"}}}
    return c, {"restartPolicy": policy}


def test_memory_limit_is_the_cgroup_limit(node):  # noqa: F811
    ns = new_ns(node, "memlimit")
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
              "sleep 3600")
    c = {"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", script],
         "resources": {"limits": {"memory": "32Mi"}}}
    apply(node, pod_obj(ns, "lim", [c]))
    out = wait_for(lambda: node.kubectl("logs", "lim", "-n", ns, check=False).stdout.strip(),
                   timeout=20, what="the container's memory limit")
    assert out == str(32 << 20), out
    node.kubectl("delete", "pod", "lim", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_oom_killed_never_restarted(node):  # noqa: F811
    ns = new_ns(node, "oom-never")
    c, spec = hog("Never")
    apply(node, pod_obj(ns, "hog", [c], **spec))

    def failed():
        p = get_pod(node, ns, "hog")
        return p if p["status"].get("phase") == "Failed" else None

    p = wait_for(failed, timeout=30, what="phase Failed")
    cs = p["status"]["containerStatuses"][0]
    term = cs["state"]["terminated"]
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137, cs
    assert cs["restartCount"] == 0 and cs["ready"] is False
    out = node.kubectl("describe", "pod", "hog", "-n", ns).stdout
    assert "Reason:       OOMKilled" in out and "Exit Code:    137" in out, out
    assert "memory:  16Mi" in out, out
    node.kubectl("delete", "pod", "hog", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_oom_killed_restarted_with_last_state(node):  # noqa: F811
    ns = new_ns(node, "oom-always")
    c, spec = hog("Always")
    apply(node, pod_obj(ns, "hog", [c], **spec))

    def restarted():
        cs = status(node, ns, "hog")
        return cs if cs.get("restartCount", 0) >= 1 and cs.get("lastState", {}).get("terminated") else None

    cs = wait_for(restarted, timeout=40, what="a restart after the OOM kill")
    last = cs["lastState"]["terminated"]
    assert last["reason"] == "OOMKilled" and last["exitCode"] == 137, cs
    assert last.get("startedAt") and last.get("finishedAt"), last
    out = node.kubectl("describe", "pod", "hog", "-n", ns).stdout
    assert "Last State:     Terminated" in out and "Reason:       OOMKilled" in out, out
    node.kubectl("delete", "pod", "hog", "-n", ns, "--grace-period=1", "--timeout=20s")


# --- gRPC probes -----------------------------------------------------------------------------------

def webapp(name, env=None, **probes):
    c = {"name": name, "image": WEBAPP, "ports": [{"name": "http", "containerPort": 8080},
                                                 {"name": "grpc", "containerPort": 9090}],
         "env": [{"name": "DRAIN_SECONDS", "value": "0"}] + [{"name": k, "value": v} for k, v in (env or {}).items()]}
    c.update(probes)
    return c


def http(ip, path, port=8080):
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def ready_is(s, ns, name, want):
    def f():
        p = get_pod(s, ns, name)
        return p if condition(p, "Ready").get("status") == want else None
    return f


def unhealthy(s, ns, name):
    return [e["message"] for e in events(s, ns, name) if e["reason"] == "Unhealthy"]


def test_grpc_readiness_probe_follows_health_status(node):  # noqa: F811
    ns = new_ns(node, "grpc-ready")
    c = webapp("web", readinessProbe={"grpc": {"port": 9090}, "periodSeconds": 1, "failureThreshold": 1})
    apply(node, pod_obj(ns, "web", [c]))
    p = wait_for(ready_is(node, ns, "web", "True"), timeout=30, what="Ready (SERVING)")
    assert p["status"]["containerStatuses"][0]["ready"] is True
    ip = p["status"]["podIP"]

    assert http(ip, "/grpc/fail") == 200
    p = wait_for(ready_is(node, ns, "web", "False"), timeout=15, what="not Ready (NOT_SERVING)")
    assert p["status"]["phase"] == "Running"
    cs = p["status"]["containerStatuses"][0]
    assert cs["ready"] is False and cs["restartCount"] == 0
    want = 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'
    wait_for(lambda: want in unhealthy(node, ns, "web"), timeout=10, what="the Unhealthy event")
    ev = [e for e in events(node, ns, "web") if e["reason"] == "Unhealthy"][0]
    assert ev["type"] == "Warning" and ev["involvedObject"].get("fieldPath") == "spec.containers{web}", ev
    assert ev["source"].get("component") == "kubelet", ev

    assert http(ip, "/grpc/ok") == 200
    wait_for(ready_is(node, ns, "web", "True"), timeout=15, what="Ready again (SERVING)")
    node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_grpc_probe_failures_carry_the_kubelets_messages(node):  # noqa: F811
    ns = new_ns(node, "grpc-fail")
    # "nope" is not a service the webapp knows; nothing listens on 9091 (the second webapp has no gRPC).
    c1 = webapp("svc", readinessProbe={"grpc": {"port": 9090, "service": "nope"}, "periodSeconds": 1})
    c2 = webapp("port", env={"PORT": "8081", "GRPC_PORT": "0"},
                readinessProbe={"grpc": {"port": 9091}, "periodSeconds": 1, "timeoutSeconds": 2})
    c2["ports"] = [{"containerPort": 8081}]
    apply(node, pod_obj(ns, "bad", [c1, c2]))

    ip = wait_for(lambda: get_pod(node, ns, "bad")["status"].get("podIP"), timeout=30, what="pod IP")
    want = {'Readiness probe failed: error: health rpc probe failed: rpc error: code = NotFound '
            'desc = unknown service',
            f'Readiness probe failed: timeout: failed to connect service "{ip}:9091" within 2s: '
            'context deadline exceeded'}
    wait_for(lambda: want <= set(unhealthy(node, ns, "bad")), timeout=30,
             what="the Unhealthy events of both containers")
    p = get_pod(node, ns, "bad")
    assert p["status"]["phase"] == "Running"
    assert condition(p, "Ready")["status"] == "False"
    assert all(cs["ready"] is False for cs in p["status"]["containerStatuses"])
    node.kubectl("delete", "pod", "bad", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_grpc_liveness_probe_restarts_container(node):  # noqa: F811
    ns = new_ns(node, "grpc-live")
    c = webapp("web", livenessProbe={"grpc": {"port": 9090, "service": "webapp"},
                                     "periodSeconds": 1, "failureThreshold": 2},
               readinessProbe={"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1})
    apply(node, pod_obj(ns, "web", [c]))
    p = wait_for(ready_is(node, ns, "web", "True"), timeout=30, what="Ready")
    ip = p["status"]["podIP"]
    before = p["status"]["containerStatuses"][0]["restartCount"]
    assert http(ip, "/grpc/fail") == 200

    def restarted():
        cs = status(node, ns, "web")
        return cs if cs.get("restartCount", 0) > before else None

    cs = wait_for(restarted, timeout=30, what="a liveness restart")
    assert cs["lastState"].get("terminated"), cs
    msgs = {(e["reason"], e["message"]) for e in events(node, ns, "web")}
    assert ("Unhealthy", 'Liveness probe failed: service unhealthy (responded with "NOT_SERVING")') in msgs, msgs
    assert ("Killing", "Container web failed liveness probe, will be restarted") in msgs, msgs
    # The new instance answers SERVING again, so the pod comes back Ready and stays up.
    wait_for(ready_is(node, ns, "web", "True"), timeout=30, what="Ready after the restart")
    assert status(node, ns, "web")["restartCount"] == cs["restartCount"]
    node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=20s")
