"""Probes, lifecycle hooks and volumes on a real node: `kobune server` with its
node agent runs busybox pods through containerd; everything is driven with
kubectl. Skipped when containerd is not installed (a failure when CI=1)."""

import json
import time

import pytest

from test_containerd import node, wait_for  # noqa: F401  (module-scoped server fixture)

IMAGE = "kobune.local/busybox:1"


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


def events(s, ns):
    return s.json("get", "events", "-n", ns)["items"]


def pod_obj(ns, name, containers, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec}}


def container(name, script, **extra):
    return {"name": name, "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", script], **extra}


def logs(s, ns, name, *args):
    return s.kubectl("logs", name, "-n", ns, *args, check=False).stdout


def test_readiness_probe_flips_ready(node):  # noqa: F811
    ns = new_ns(node, "ready")
    # /www/ready exists from ~4 s to ~10 s after the start.
    script = ("mkdir -p /www; (sleep 4; touch /www/ready; sleep 6; rm /www/ready) & "
              "exec httpd -f -p 8080 -h /www")
    c = container("web", script, ports=[{"name": "http", "containerPort": 8080}],
                  readinessProbe={"httpGet": {"path": "/ready", "port": "http",
                                              "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                                  "periodSeconds": 1, "failureThreshold": 1})
    apply(node, pod_obj(ns, "web", [c]))

    def running():
        p = get_pod(node, ns, "web")
        return p if p["status"].get("phase") == "Running" else None

    p = wait_for(running, timeout=15, what="Running")
    cs = p["status"]["containerStatuses"][0]
    assert cs["started"] is True and cs["ready"] is False
    assert condition(p, "Ready")["status"] == "False"
    assert condition(p, "ContainersReady")["status"] == "False"

    def ready(want):
        def f():
            p = get_pod(node, ns, "web")
            return p if condition(p, "Ready").get("status") == want else None
        return f

    p = wait_for(ready("True"), timeout=15, what="Ready")
    assert p["status"]["containerStatuses"][0]["ready"] is True
    assert condition(p, "ContainersReady")["status"] == "True"
    became_ready = condition(p, "Ready")["lastTransitionTime"]
    p = wait_for(ready("False"), timeout=15, what="not Ready again")
    assert p["status"]["phase"] == "Running"
    assert p["status"]["containerStatuses"][0]["ready"] is False
    assert condition(p, "Ready")["lastTransitionTime"] >= became_ready
    ip = p["status"]["podIP"]
    ev = [e for e in events(node, ns) if e["reason"] == "Unhealthy"]
    assert ev and all(e["type"] == "Warning" for e in ev)
    assert any(e["message"] == "Readiness probe failed: HTTP probe failed with statuscode: 404"
               for e in ev), [e["message"] for e in ev]
    assert all(e["involvedObject"].get("fieldPath") == "spec.containers{web}" for e in ev)
    assert ip.startswith("10.42.")
    node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_liveness_probe_restarts_container(node):  # noqa: F811
    ns = new_ns(node, "live")
    script = ("mkdir -p /www; touch /www/healthz; (sleep 3; rm /www/healthz) & "
              "exec httpd -f -p 8080 -h /www")
    c = container("web", script,
                  livenessProbe={"httpGet": {"path": "/healthz", "port": 8080},
                                 "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2})
    apply(node, pod_obj(ns, "web", [c]))

    def restarted():
        p = get_pod(node, ns, "web")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        return p if cs.get("restartCount", 0) >= 1 else None

    p = wait_for(restarted, timeout=30, what="a liveness restart")
    cs = p["status"]["containerStatuses"][0]
    term = cs["lastState"]["terminated"]
    assert term["exitCode"] != 0 and term["reason"] == "Error", term
    ev = events(node, ns)
    msgs = {(e["reason"], e["message"]) for e in ev}
    assert ("Unhealthy", "Liveness probe failed: HTTP probe failed with statuscode: 404") in msgs, msgs
    assert ("Killing", "Container web failed liveness probe, will be restarted") in msgs, msgs
    node.kubectl("delete", "pod", "web", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_tcp_and_exec_probes_and_startup_gate(node):  # noqa: F811
    ns = new_ns(node, "tcpexec")
    script = "sleep 2; touch /tmp/started; exec httpd -f -p 9000 -h /tmp"
    c = container("srv", script,
                  startupProbe={"exec": {"command": ["sh", "-c", "test -f /tmp/started"]},
                                "periodSeconds": 1, "failureThreshold": 30},
                  readinessProbe={"tcpSocket": {"port": 9000}, "periodSeconds": 1},
                  livenessProbe={"exec": {"command": ["sh", "-c", "true"]}, "periodSeconds": 1})
    apply(node, pod_obj(ns, "srv", [c]))

    def ready():
        p = get_pod(node, ns, "srv")
        return p if condition(p, "Ready").get("status") == "True" else None

    try:
        p = wait_for(ready, timeout=20, what="Ready")
    except AssertionError:
        print([(e["reason"], e["message"]) for e in events(node, ns)])
        print(json.dumps(get_pod(node, ns, "srv")["status"]))
        raise
    cs = p["status"]["containerStatuses"][0]
    assert cs["started"] is True and cs["restartCount"] == 0
    node.kubectl("delete", "pod", "srv", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_configmap_secret_volumes_and_env(node):  # noqa: F811
    ns = new_ns(node, "cfg")
    node.kubectl("create", "configmap", "settings", "-n", ns, "--from-literal=key=hello-cm")
    node.kubectl("create", "secret", "generic", "creds", "-n", ns, "--from-literal=password=s3cret")
    script = ("cat /etc/cfg/key; echo; echo env=$SECRET; cat /etc/sec/password; echo; "
              "stat -c %a /etc/sec/..data/password; ls /etc/proj; sleep 3600")
    c = container("app", script,
                  env=[{"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
                  volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                                {"name": "sec", "mountPath": "/etc/sec"},
                                {"name": "proj", "mountPath": "/etc/proj"}])
    vols = [{"name": "cfg", "configMap": {"name": "settings"}},
            {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "proj", "projected": {"sources": [
                {"configMap": {"name": "settings", "items": [{"key": "key", "path": "from-cm"}]}},
                {"secret": {"name": "creds"}},
                {"downwardAPI": {"items": [{"path": "podname", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]
    apply(node, pod_obj(ns, "app", [c], volumes=vols))
    out = wait_for(lambda: (lambda o: o if "podname" in o else None)(logs(node, ns, "app")),
                   timeout=20, what="app logs")
    lines = out.splitlines()
    assert lines[0] == "hello-cm"
    assert "env=s3cret" in lines
    assert "s3cret" in lines
    assert "400" in lines
    assert {"from-cm", "password", "podname"} <= set(lines)

    # A missing ConfigMap: the pod waits in ContainerCreating with FailedMount.
    c2 = container("app", "cat /etc/cfg/key; echo; sleep 3600",
                   volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"}])
    apply(node, pod_obj(ns, "waits", [c2], volumes=[{"name": "cfg", "configMap": {"name": "absent"}}]))
    want = 'MountVolume.SetUp failed for volume "cfg" : configmap "absent" not found'

    def failed_mount():
        return [e for e in events(node, ns) if e["reason"] == "FailedMount"
                and e["involvedObject"]["name"] == "waits"]

    ev = wait_for(failed_mount, timeout=15, what="FailedMount event")[0]
    assert ev["type"] == "Warning" and ev["message"] == want, ev
    p = get_pod(node, ns, "waits")
    assert p["status"]["phase"] == "Pending"
    assert p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    # Once it exists the pod starts.
    node.kubectl("create", "configmap", "absent", "-n", ns, "--from-literal=key=late")
    wait_for(lambda: "late" in logs(node, ns, "waits"), timeout=40, what="late pod start")

    # A missing Secret in env: CreateContainerConfigError with a Failed event.
    c3 = container("app", "sleep 3600",
                   env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}])
    apply(node, pod_obj(ns, "noenv", [c3]))

    def failed():
        return [e for e in events(node, ns) if e["reason"] == "Failed"
                and e["involvedObject"]["name"] == "noenv"]

    ev = wait_for(failed, timeout=15, what="Failed event")[0]
    assert 'secret "nope" not found' in ev["message"]
    for name in ("app", "waits", "noenv"):
        node.kubectl("delete", "pod", name, "-n", ns, "--grace-period=1", "--timeout=20s")


def test_configmap_update_reaches_mounted_file(node):  # noqa: F811
    ns = new_ns(node, "cfgupd")
    node.kubectl("create", "configmap", "live", "-n", ns, "--from-literal=key=v1")
    c = container("app", "while true; do cat /etc/cfg/key; echo; sleep 1; done",
                  volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"}])
    apply(node, pod_obj(ns, "app", [c], volumes=[{"name": "cfg", "configMap": {"name": "live"}}]))
    wait_for(lambda: "v1" in logs(node, ns, "app"), timeout=20, what="v1 in logs")
    node.kubectl("patch", "configmap", "live", "-n", ns, "--type=merge", "-p", '{"data": {"key": "v2"}}')
    t = time.time()
    wait_for(lambda: "v2" in logs(node, ns, "app"), timeout=20, what="v2 in logs")
    assert time.time() - t < 20
    node.kubectl("delete", "pod", "app", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_emptydir_shared_with_init_container_and_downward_api(node):  # noqa: F811
    ns = new_ns(node, "empty")
    init = container("init", "echo from-init > /data/msg",
                     volumeMounts=[{"name": "scratch", "mountPath": "/data"}])
    main = container("main", "cat /data/msg; cat /etc/info/labels; echo; cat /etc/info/mem; echo; sleep 3600",
                     resources={"limits": {"memory": "64Mi"}},
                     volumeMounts=[{"name": "scratch", "mountPath": "/data"},
                                   {"name": "info", "mountPath": "/etc/info"}])
    obj = pod_obj(ns, "shared", [main], initContainers=[init], volumes=[
        {"name": "scratch", "emptyDir": {}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory",
                                                 "divisor": "1Mi"}}]}}])
    obj["metadata"]["labels"] = {"app": "shared"}
    apply(node, obj)
    out = wait_for(lambda: (lambda o: o if "64" in o else None)(logs(node, ns, "shared", "-c", "main")),
                   timeout=20, what="main logs")
    assert out.splitlines() == ["from-init", 'app="shared"', "64"], out
    node.kubectl("delete", "pod", "shared", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_prestop_hook_runs_before_termination(node, tmp_path):  # noqa: F811
    ns = new_ns(node, "prestop")
    host = tmp_path / "host"
    c = container("app", "trap 'echo term >> /host/order; exit 0' TERM; while true; do sleep 1; done",
                  lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/order"]}},
                             "postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /host/order"]}}},
                  volumeMounts=[{"name": "host", "mountPath": "/host"}])
    obj = pod_obj(ns, "app", [c], volumes=[{"name": "host", "hostPath": {"path": str(host),
                                                                         "type": "DirectoryOrCreate"}}])
    obj["spec"]["terminationGracePeriodSeconds"] = 10
    apply(node, obj)
    node.kubectl("wait", "--for=condition=Ready", "pod/app", "-n", ns, "--timeout=20s")
    node.kubectl("delete", "pod", "app", "-n", ns, "--timeout=30s")
    assert (host / "order").read_text().splitlines() == ["poststart", "prestop", "term"]


def test_failing_poststart_hook_kills_container(node):  # noqa: F811
    ns = new_ns(node, "poststart")
    c = container("app", "sleep 3600",
                  lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}})
    apply(node, pod_obj(ns, "app", [c]))

    def failed():
        return [e for e in events(node, ns) if e["reason"] == "FailedPostStartHook"]

    ev = wait_for(failed, timeout=20, what="FailedPostStartHook")[0]
    assert ev["type"] == "Warning" and 'for Container "app"' in ev["message"]

    def restarted():
        p = get_pod(node, ns, "app")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        return p if cs.get("restartCount", 0) >= 1 else None

    wait_for(restarted, timeout=20, what="restart after FailedPostStartHook")
    node.kubectl("delete", "pod", "app", "-n", ns, "--grace-period=1", "--timeout=20s")


def test_pod_volume_dirs_removed_after_deletion(node):  # noqa: F811
    ns = new_ns(node, "cleanup")
    c = container("app", "sleep 3600", volumeMounts=[{"name": "e", "mountPath": "/e"}])
    apply(node, pod_obj(ns, "app", [c], volumes=[{"name": "e", "emptyDir": {}}]))
    node.kubectl("wait", "--for=condition=Ready", "pod/app", "-n", ns, "--timeout=20s")
    uid = get_pod(node, ns, "app")["metadata"]["uid"]
    d = node.data_dir / "agent" / "pods" / uid
    assert (d / "volumes" / "kubernetes.io~empty-dir" / "e").is_dir()
    node.kubectl("delete", "pod", "app", "-n", ns, "--grace-period=1", "--timeout=20s")
    wait_for(lambda: not d.exists(), timeout=15, what="pod dir removed")
