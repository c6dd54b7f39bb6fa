"""Resource metrics (`kubectl top`), custom metrics scraped from pods, and
the HorizontalPodAutoscaler, on a real node (containerd). Run under
`flock /tmp/kobune-containerd.lock`; skipped without containerd (a failure
when CI=1)."""

import json
import re
import shutil
import textwrap

import pytest

import conftest
from conftest import KUBECTLS, NODE, AgentServer, require_containerd

require_containerd("tests/test_metrics_hpa.py")

BUSYBOX = "kobune.local/busybox:1"
# Burns a CPU until /tmp/stop exists, then idles.
BURN = "while [ ! -f /tmp/stop ]; do :; done; exec sleep 3600"
# Serves a Prometheus text file with the gauge webapp_idle_workers.
SERVE_METRICS = ("mkdir -p /www && printf '# HELP webapp_idle_workers Idle workers.\\n"
                 "# TYPE webapp_idle_workers gauge\\nwebapp_idle_workers{pool=\"main\"} 10\\n"
                 "webapp_idle_workers{pool=\"spare\"} 2\\n' > /www/metrics && exec httpd -f -p 8080 -h /www")


@pytest.fixture(scope="module")
def node():
    # The node agent, and a short HPA sync period.
    s = AgentServer(extra_args=["--node-name", NODE, "--ingress-http-port", "0", "--ingress-https-port", "0"],
                    env={"KOBUNE_HPA_SYNC_PERIOD": "3"}, start_timeout=60, poll=0.2)
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def wait_for(fn, timeout=60, what="condition", every=1.0):
    return conftest.wait_for(fn, timeout, what, every)


def raw(s, path, check=True):
    r = s.kubectl("get", "--raw", path, check=check)
    return json.loads(r.stdout) if r.returncode == 0 else None


def table(out):
    """Rows of a kubectl table as dicts by header."""
    lines = [l for l in out.splitlines() if l.strip()]
    head = lines[0].split()
    return [dict(zip(head, l.split())) for l in lines[1:]]


def millicores(q):
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def burner_pod(name, cpu="100m", labels="app: burn"):
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, labels: {{{labels}}}}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
          - name: burn
            image: {BUSYBOX}
            imagePullPolicy: Never
            command: {json.dumps(["sh", "-c", BURN])}
            resources: {{requests: {{cpu: {cpu}}}}}
        """)


def stop_burners(s, ns, selector):
    for p in s.json("get", "pods", "-n", ns, "-l", selector)["items"]:
        if p["status"].get("phase") == "Running":
            s.kubectl("exec", "-n", ns, p["metadata"]["name"], "--", "touch", "/tmp/stop", check=False)


def test_discovery_lists_metrics_groups(node):
    for v, kubectl in KUBECTLS.items():
        vers = node.kubectl("api-versions", binary=kubectl).stdout.split()
        assert "metrics.k8s.io/v1beta1" in vers and "custom.metrics.k8s.io/v1beta2" in vers, v
        res = node.kubectl("api-resources", "--api-group=metrics.k8s.io", binary=kubectl).stdout
        assert "NodeMetrics" in res and "PodMetrics" in res, v
    doc = raw(node, "/apis/metrics.k8s.io/v1beta1")
    assert {r["name"]: r["kind"] for r in doc["resources"]} == {"nodes": "NodeMetrics", "pods": "PodMetrics"}


def test_top_node_and_pods(node):
    ns = "top"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=burner_pod("burner", labels="app: burn"))
    node.kubectl("run", "idle", "-n", ns, f"--image={BUSYBOX}", "--image-pull-policy=Never",
                 "--labels=app=idle", "--", "sleep", "3600")
    node.kubectl("wait", "--for=condition=Ready", "pod/burner", "pod/idle", "-n", ns, "--timeout=60s")
    try:
        # Two samples of the agent (10 s apart) make the first rates.
        def burner_metrics():
            doc = raw(node, f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/burner", check=False)
            return doc
        doc = wait_for(burner_metrics, timeout=60, what="pod metrics of burner")
        assert doc["kind"] == "PodMetrics" and doc["apiVersion"] == "metrics.k8s.io/v1beta1"
        assert doc["metadata"]["labels"] == {"app": "burn"}
        assert re.fullmatch(r"\d+(\.\d+)?s|\d+m\d+(\.\d+)?s", doc["window"]), doc["window"]
        c = doc["containers"][0]
        assert c["name"] == "burn"
        assert re.fullmatch(r"\d+n", c["usage"]["cpu"]) and int(c["usage"]["cpu"][:-1]) > 100_000_000
        assert re.fullmatch(r"\d+Ki", c["usage"]["memory"])

        lst = raw(node, f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector=app%3Dburn")
        assert lst["kind"] == "PodMetricsList" and [i["metadata"]["name"] for i in lst["items"]] == ["burner"]
        wait_for(lambda: len(raw(node, f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods")["items"]) == 2,
                 what="metrics of both pods")
        nodes = raw(node, "/apis/metrics.k8s.io/v1beta1/nodes")
        assert nodes["kind"] == "NodeMetricsList" and nodes["items"][0]["metadata"]["name"] == NODE
        assert int(nodes["items"][0]["usage"]["cpu"][:-1]) > 100_000_000
        assert raw(node, "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=nosuch%3Dlabel")["items"] == []
        r = node.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/nosuch", check=False)
        assert r.returncode != 0 and "NotFound" in r.stderr + r.stdout or "not found" in r.stderr

        for v, kubectl in KUBECTLS.items():
            rows = table(node.kubectl("top", "node", binary=kubectl).stdout)
            assert rows[0]["NAME"] == NODE, v
            assert millicores(rows[0]["CPU(cores)"]) > 100, (v, rows)
            rows = table(node.kubectl("top", "pod", "-n", ns, binary=kubectl).stdout)
            by = {r["NAME"]: r for r in rows}
            assert set(by) == {"burner", "idle"}, (v, rows)
            assert millicores(by["burner"]["CPU(cores)"]) > 100, (v, rows)
            assert millicores(by["idle"]["CPU(cores)"]) < 50, (v, rows)
            assert by["burner"]["MEMORY(bytes)"].endswith("Mi")
            rows = table(node.kubectl("top", "pod", "-n", ns, "-l", "app=burn", "--containers", binary=kubectl).stdout)
            assert [(r["POD"], r["NAME"]) for r in rows] == [("burner", "burn")], (v, rows)
            out = node.kubectl("top", "pod", "-A", binary=kubectl).stdout
            assert re.search(rf"^{ns}\s+burner\s+\d+m", out, re.M), (v, out)
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def test_custom_metrics_from_pod_endpoint(node):
    ns = "custom"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(f"""
        apiVersion: v1
        kind: Pod
        metadata:
          name: exporter
          labels: {{app: exporter}}
          annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "8080"}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
          - name: web
            image: {BUSYBOX}
            imagePullPolicy: Never
            command: {json.dumps(["sh", "-c", SERVE_METRICS])}
        """))
    node.kubectl("wait", "--for=condition=Ready", "pod/exporter", "-n", ns, "--timeout=60s")
    try:
        path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/webapp_idle_workers"
        doc = wait_for(lambda: raw(node, path, check=False), timeout=20, what="custom metric")
        assert doc["kind"] == "MetricValueList" and doc["apiVersion"] == "custom.metrics.k8s.io/v1beta2"
        item = doc["items"][0]
        assert item["describedObject"] == {"kind": "Pod", "namespace": ns, "name": "exporter", "apiVersion": "/v1"}
        assert item["metric"]["name"] == "webapp_idle_workers"
        assert item["value"] == "12", "series of one pod are summed"
        one = raw(node, f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/exporter/webapp_idle_workers"
                        "?metricLabelSelector=pool%3Dmain")
        assert one["items"][0]["value"] == "10"
        assert one["items"][0]["metric"]["selector"] == {"matchLabels": {"pool": "main"}}
        r = node.kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/nosuch_metric",
                         check=False)
        assert r.returncode != 0 and "could not find the metric nosuch_metric" in r.stderr
        listing = raw(node, "/apis/custom.metrics.k8s.io/v1beta2")
        assert "pods/webapp_idle_workers" in [x["name"] for x in listing["resources"]]
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def describe(s, ns, name):
    return s.kubectl("describe", "hpa", name, "-n", ns).stdout


def test_hpa_scales_cpu_burners_up_and_down(node):
    ns = "hpa-cpu"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: burn}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: burn}}}}
          template:
            metadata: {{labels: {{app: burn}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: burn
                image: {BUSYBOX}
                imagePullPolicy: Never
                command: {json.dumps(["sh", "-c", BURN])}
                resources: {{requests: {{cpu: 100m}}}}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {{name: burn}}
        spec:
          scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Resource
            resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
          behavior:
            scaleDown: {{stabilizationWindowSeconds: 5}}
        """))
    try:
        try:
            wait_for(lambda: node.json("get", "deploy", "burn", "-n", ns)["spec"]["replicas"] == 3,
                     timeout=90, what="scale up to maxReplicas")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'burn')}") from None
        hpa = node.json("get", "hpa", "burn", "-n", ns)
        st = hpa["status"]
        assert st["desiredReplicas"] == 3 and "lastScaleTime" in st
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["AbleToScale"]["status"] == "True"
        assert conds["ScalingActive"]["reason"] == "ValidMetricFound"
        assert conds["ScalingActive"]["message"] == ("the HPA was able to successfully calculate a replica count "
                                                     "from cpu resource utilization (percentage of request)")
        cur = st["currentMetrics"][0]["resource"]
        assert cur["name"] == "cpu" and cur["current"]["averageUtilization"] > 100
        text = describe(node, ns, "burn")
        assert "SuccessfulRescale" in text
        assert "reason: cpu resource utilization (percentage of request) above target" in text
        assert re.search(r"New size: [23]; reason", text)
        assert "ScalingLimited" in text and "ValidMetricFound" in text
        get = node.kubectl("get", "hpa", "burn", "-n", ns).stdout
        assert re.search(r"cpu: \d+%/50%", get), get

        # Idle burners: utilization drops to ~0 and the short scale-down
        # window lets it go back to minReplicas.
        wait_for(lambda: len([p for p in node.json("get", "pods", "-n", ns, "-l", "app=burn")["items"]
                              if p["status"].get("phase") == "Running"]) == 3, what="three running burners")
        stop_burners(node, ns, "app=burn")

        def scaled_down():
            stop_burners(node, ns, "app=burn")
            return node.json("get", "deploy", "burn", "-n", ns)["spec"]["replicas"] == 1
        wait_for(scaled_down, timeout=120, every=3, what="scale down to minReplicas")
        text = describe(node, ns, "burn")
        assert "New size: 1; reason: All metrics below target" in text
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def test_hpa_on_pods_metric_and_failed_resource_metric(node):
    ns = "hpa-pods"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: webapp}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: webapp}}}}
          template:
            metadata:
              labels: {{app: webapp}}
              annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "8080"}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: web
                image: {BUSYBOX}
                imagePullPolicy: Never
                command: {json.dumps(["sh", "-c", SERVE_METRICS])}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {{name: webapp}}
        spec:
          scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: webapp}}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Pods
            pods:
              metric:
                name: webapp_idle_workers
                selector: {{matchLabels: {{pool: main}}}}
              target: {{type: AverageValue, averageValue: "4"}}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {{name: nometrics}}
        spec:
          scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: webapp}}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Resource
            resource: {{name: memory, target: {{type: Utilization, averageUtilization: 50}}}}
        """))
    try:
        wait_for(lambda: node.json("get", "deploy", "webapp", "-n", ns)["spec"]["replicas"] == 3,
                 timeout=90, what="scale up on the pods metric")
        text = describe(node, ns, "webapp")
        assert "New size: 3; reason: pods metric webapp_idle_workers above target" in text
        hpa = node.json("get", "hpa", "webapp", "-n", ns)
        cur = hpa["status"]["currentMetrics"][0]
        assert cur["type"] == "Pods" and cur["pods"]["metric"]["name"] == "webapp_idle_workers"
        assert cur["pods"]["current"]["averageValue"] == "10"

        # No memory requests: the other HPA cannot compute utilization.
        def failed():
            h = node.json("get", "hpa", "nometrics", "-n", ns)
            c = {c["type"]: c for c in h.get("status", {}).get("conditions", [])}
            return c.get("ScalingActive", {}).get("status") == "False" and c["ScalingActive"]
        cond = wait_for(failed, timeout=60, what="ScalingActive=False")
        assert cond["reason"] == "FailedGetResourceMetric"
        assert cond["message"].startswith("the HPA was unable to compute the replica count: "
                                          "failed to get memory utilization: "), cond["message"]
        text = describe(node, ns, "nometrics")
        assert "FailedGetResourceMetric" in text
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def test_hpa_on_webapp_busy_workers(node):
    """The project's webapp exports its worker pool as Prometheus gauges:
    holding its workers busy scales it up, letting them go scales it down."""
    import threading
    import urllib.request

    ns = "hpa-webapp"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: webapp}
        spec:
          replicas: 1
          selector: {matchLabels: {app: webapp}}
          template:
            metadata:
              labels: {app: webapp}
              annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080"}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: webapp
                image: kobune.local/webapp:v1
                imagePullPolicy: Never
                env: [{name: WORKERS, value: "4"}, {name: DRAIN_SECONDS, value: "0"}]
                ports: [{containerPort: 8080}]
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: webapp}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: webapp}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Pods
            pods:
              metric: {name: webapp_busy_workers}
              target: {type: AverageValue, averageValue: "1"}
          behavior:
            scaleDown: {stabilizationWindowSeconds: 0}
        """))
    try:
        node.kubectl("wait", "--for=condition=Available", "deploy/webapp", "-n", ns, "--timeout=60s")
        pod = node.json("get", "pods", "-n", ns, "-l", "app=webapp")["items"][0]
        ip = pod["status"]["podIP"]
        path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/webapp_idle_workers"
        doc = wait_for(lambda: raw(node, path, check=False), timeout=20, what="webapp metrics")
        assert doc["items"][0]["value"] == "4"

        def hold():
            with urllib.request.urlopen(f"http://{ip}:8080/sleep?ms=25000", timeout=60) as r:
                r.read()
        threads = [threading.Thread(target=hold, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: node.json("get", "deploy", "webapp", "-n", ns)["spec"]["replicas"] == 3,
                     timeout=25, what="scale up on busy workers")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'webapp')}") from None
        assert "reason: pods metric webapp_busy_workers above target" in describe(node, ns, "webapp")
        for t in threads:
            t.join(timeout=60)
        wait_for(lambda: node.json("get", "deploy", "webapp", "-n", ns)["spec"]["replicas"] == 1,
                 timeout=60, what="scale down once the workers are idle")
        assert "New size: 1; reason: All metrics below target" in describe(node, ns, "webapp")
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def test_kubectl_autoscale_and_v1_status(node):
    ns = "hpa-v1"
    node.kubectl("create", "namespace", ns)
    node.kubectl("create", "deployment", "idle", "-n", ns, f"--image={BUSYBOX}", "--", "sleep", "3600")
    node.kubectl("set", "resources", "deploy/idle", "-n", ns, "--requests=cpu=100m")
    node.kubectl("patch", "deploy/idle", "-n", ns, "-p",
                 '{"spec":{"template":{"spec":{"containers":[{"name":"busybox","imagePullPolicy":"Never"}]}}}}')
    try:
        for v, kubectl in KUBECTLS.items():
            name = "idle-" + v.replace(".", "")
            node.kubectl("autoscale", "deploy/idle", "-n", ns, f"--name={name}", "--cpu-percent=50",
                         "--min=1", "--max=2", binary=kubectl)

        def measured():
            h = raw(node, f"/apis/autoscaling/v1/namespaces/{ns}/horizontalpodautoscalers/idle-132")
            return "currentCPUUtilizationPercentage" in h.get("status", {}) and h
        try:
            h = wait_for(measured, timeout=60, what="v1 status with current utilization")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'idle-132')}\n"
                                 f"{node.kubectl('get', 'pods', '-n', ns, '-o', 'wide').stdout}") from None
        assert h["status"]["currentCPUUtilizationPercentage"] < 50
        assert h["status"]["currentReplicas"] == 1 and h["status"]["desiredReplicas"] == 1
        for v, kubectl in KUBECTLS.items():
            rows = table(node.kubectl("get", "hpa", "-n", ns, binary=kubectl).stdout)
            assert {r["NAME"] for r in rows} == {"idle-132", "idle-137"}, (v, rows)
            row = [r for r in rows if r["NAME"] == "idle-132"][0]
            assert re.search(r"\d+%/50%", " ".join(row.values())), (v, rows)
        assert node.json("get", "deploy", "idle", "-n", ns)["spec"]["replicas"] == 1
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def webapp_manifest(name, workers=4, cpu=None, scrape=True):
    ann = '{prometheus.io/scrape: "true", prometheus.io/port: "8080"}' if scrape else "{}"
    res = f"resources: {{requests: {{cpu: {cpu}}}}}" if cpu else "resources: {}"
    return textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata:
              labels: {{app: {name}}}
              annotations: {ann}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: webapp
                image: kobune.local/webapp:v1
                imagePullPolicy: Never
                env: [{{name: WORKERS, value: "{workers}"}}, {{name: DRAIN_SECONDS, value: "0"}}]
                ports: [{{containerPort: 8080}}]
                readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
                {res}
        """)


def replicas(s, ns, name):
    return s.json("get", "deploy", name, "-n", ns)["spec"]["replicas"]


def hpa_conditions(s, ns, name):
    h = s.json("get", "hpa", name, "-n", ns)
    return {c["type"]: c for c in h.get("status", {}).get("conditions", [])}


def test_hpa_scales_webapp_under_cpu_burn(node):
    """The web app's /burn endpoint drives CPU: the HPA scales it up on
    CPU utilization, explains the limit it hits, and after the load stops
    scales it down once the (short) stabilization window has passed."""
    import threading
    import time
    import urllib.request

    ns = "hpa-burn"
    window = 15
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=webapp_manifest("webapp", workers=2, cpu="100m", scrape=False)
                 + textwrap.dedent(f"""
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {{name: webapp}}
        spec:
          scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: webapp}}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Resource
            resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
          behavior:
            scaleDown: {{stabilizationWindowSeconds: {window}}}
        """))
    stop = threading.Event()
    ips = []

    def drive():
        # One request at a time, round robin over the ready pods: about one
        # core of burn in all, so each of 3 pods is far above 50% of 100m.
        i = 0
        while not stop.is_set():
            if not ips:
                time.sleep(0.2)
                continue
            ip = ips[i % len(ips)]
            i += 1
            try:
                with urllib.request.urlopen(f"http://{ip}:8080/burn?ms=500", timeout=10) as r:
                    r.read()
            except OSError:
                time.sleep(0.2)

    def refresh_ips():
        pods = node.json("get", "pods", "-n", ns, "-l", "app=webapp")["items"]
        ips[:] = [p["status"]["podIP"] for p in pods
                  if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
                  and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return ips

    driver = threading.Thread(target=drive, daemon=True)
    try:
        node.kubectl("wait", "--for=condition=Available", "deploy/webapp", "-n", ns, "--timeout=60s")
        refresh_ips()
        driver.start()

        def scaled_up():
            refresh_ips()
            return replicas(node, ns, "webapp") == 3
        try:
            wait_for(scaled_up, timeout=120, every=2, what="scale up to maxReplicas under CPU burn")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'webapp')}") from None
        text = describe(node, ns, "webapp")
        assert re.search(r"New size: [23]; reason: cpu resource utilization \(percentage of request\) above target",
                         text), text
        st = node.json("get", "hpa", "webapp", "-n", ns)["status"]
        assert st["currentMetrics"][0]["resource"]["current"]["averageUtilization"] > 50, st

        # Still burning at maxReplicas: the HPA says it is held by the maximum.
        def limited():
            refresh_ips()
            c = hpa_conditions(node, ns, "webapp")
            return c.get("ScalingLimited", {}).get("reason") == "TooManyReplicas" and c
        try:
            conds = wait_for(limited, timeout=60, every=2, what="ScalingLimited=TooManyReplicas")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'webapp')}") from None
        assert conds["ScalingLimited"]["status"] == "True"
        assert conds["ScalingLimited"]["message"] == "the desired replica count is more than the maximum replica count"
        assert conds["ScalingActive"]["reason"] == "ValidMetricFound"
        get = node.kubectl("get", "hpa", "webapp", "-n", ns).stdout
        assert re.search(r"cpu: \d+%/50%", get), get

        # Load stops: utilization falls, the recommendation is held for the
        # window (ScaleDownStabilized), then the HPA goes back to minReplicas.
        stop.set()
        driver.join(timeout=15)
        stabilized_at = []

        def scaled_down():
            c = hpa_conditions(node, ns, "webapp")
            if c.get("AbleToScale", {}).get("reason") == "ScaleDownStabilized" and not stabilized_at:
                stabilized_at.append(time.time())
            return replicas(node, ns, "webapp") == 1
        try:
            wait_for(scaled_down, timeout=150, every=1, what="scale down to minReplicas after the window")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'webapp')}") from None
        assert stabilized_at, "the scale down was never held by the stabilization window"
        text = describe(node, ns, "webapp")
        assert "New size: 1; reason: All metrics below target" in text, text
        st = node.json("get", "hpa", "webapp", "-n", ns)["status"]
        assert st["currentMetrics"][0]["resource"]["current"]["averageUtilization"] < 50, st
    finally:
        stop.set()
        node.kubectl("delete", "namespace", ns, "--wait=false")


def test_hpa_on_object_metric_of_a_service(node):
    """An Object metric: the busy workers of the pods behind a Service (the
    sum over the pods it selects, as custom.metrics.k8s.io serves it)
    against a Value target; failing Object and External metrics explain
    themselves."""
    import threading
    import urllib.request

    ns = "hpa-object"
    node.kubectl("create", "namespace", ns)
    node.kubectl("apply", "-n", ns, "-f", "-", input=webapp_manifest("webapp", workers=4) + textwrap.dedent("""
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: webapp}
        spec:
          selector: {app: webapp}
          ports: [{port: 80, targetPort: 8080}]
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: webapp}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: webapp}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Object
            object:
              describedObject: {apiVersion: v1, kind: Service, name: webapp}
              metric: {name: webapp_busy_workers}
              target: {type: Value, value: "2"}
          behavior:
            scaleDown: {stabilizationWindowSeconds: 0}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: other}
        spec:
          replicas: 1
          selector: {matchLabels: {app: other}}
          template:
            metadata: {labels: {app: other}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - {name: sleep, image: "kobune.local/busybox:1", imagePullPolicy: Never, command: [sleep, "3600"]}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: missing}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: other}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Object
            object:
              describedObject: {apiVersion: v1, kind: Service, name: nosuch}
              metric: {name: webapp_busy_workers}
              target: {type: AverageValue, averageValue: "1"}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: perpod}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: other}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: Object
            object:
              describedObject: {apiVersion: apps/v1, kind: Deployment, name: webapp}
              metric: {name: webapp_idle_workers}
              target: {type: AverageValue, averageValue: "100"}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: external}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: other}
          minReplicas: 1
          maxReplicas: 3
          metrics:
          - type: External
            external:
              metric: {name: queue_depth}
              target: {type: Value, value: "10"}
        """))
    base = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}"
    try:
        node.kubectl("wait", "--for=condition=Available", "deploy/webapp", "-n", ns, "--timeout=60s")
        # The object metrics the HPA reads, through kubectl get --raw.
        doc = wait_for(lambda: raw(node, f"{base}/services/webapp/webapp_idle_workers", check=False),
                       timeout=20, what="the Service's metric")
        assert doc["kind"] == "MetricValueList"
        item = doc["items"][0]
        assert item["describedObject"] == {"kind": "Service", "namespace": ns, "name": "webapp", "apiVersion": "/v1"}
        assert item["metric"]["name"] == "webapp_idle_workers" and item["value"] == "4"
        item = raw(node, f"{base}/deployments.apps/webapp/webapp_idle_workers")["items"][0]
        assert item["describedObject"]["kind"] == "Deployment" and item["describedObject"]["apiVersion"] == "apps/v1"
        assert item["value"] == "4"
        listed = raw(node, f"{base}/services/*/webapp_idle_workers")["items"]
        assert [i["describedObject"]["name"] for i in listed] == ["webapp"]
        assert raw(node, f"{base}/metrics/webapp_idle_workers")["items"][0]["describedObject"] == {
            "kind": "Namespace", "name": ns, "apiVersion": "/v1"}
        r = node.kubectl("get", "--raw", f"{base}/services/nosuch/webapp_idle_workers", check=False)
        assert r.returncode != 0 and 'services "nosuch" not found' in r.stderr, r.stderr
        listing = [x["name"] for x in raw(node, "/apis/custom.metrics.k8s.io/v1beta2")["resources"]]
        assert "services/webapp_idle_workers" in listing and "deployments.apps/webapp_busy_workers" in listing

        pod = node.json("get", "pods", "-n", ns, "-l", "app=webapp")["items"][0]
        ip = pod["status"]["podIP"]

        def hold():
            with urllib.request.urlopen(f"http://{ip}:8080/sleep?ms=40000", timeout=90) as r:
                r.read()
        threads = [threading.Thread(target=hold, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        # 3 busy workers behind the Service against 2: 1.5 x the ready pods,
        # until maxReplicas.
        try:
            wait_for(lambda: replicas(node, ns, "webapp") == 3, timeout=35, what="scale up on the Object metric")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(node, ns, 'webapp')}") from None
        text = describe(node, ns, "webapp")
        assert re.search(r"New size: [23]; reason: Service metric webapp_busy_workers above target", text), text
        assert '"webapp_busy_workers" on Service/webapp' in text, text
        cur = node.json("get", "hpa", "webapp", "-n", ns)["status"]["currentMetrics"][0]
        assert cur["type"] == "Object", cur
        assert cur["object"]["describedObject"] == {"apiVersion": "v1", "kind": "Service", "name": "webapp"}
        assert cur["object"]["metric"] == {"name": "webapp_busy_workers"}
        # The three held requests, and a readiness probe when one is in flight as the metric is read.
        assert cur["object"]["current"] in ({"value": "3"}, {"value": "4"}), cur
        c = hpa_conditions(node, ns, "webapp")
        assert c["ScalingActive"]["message"] == ("the HPA was able to successfully calculate a replica count "
                                                 "from Service metric webapp_busy_workers")
        # The Service's idle workers are summed over its three pods: 1 + 4 + 4.
        def idle_sum():
            d = raw(node, f"{base}/services/webapp/webapp_idle_workers", check=False)
            return d and d["items"][0]["value"]
        wait_for(lambda: idle_sum() == "9", timeout=30, what="idle workers summed over the Service's pods")

        for t in threads:
            t.join(timeout=90)
        wait_for(lambda: replicas(node, ns, "webapp") == 1, timeout=60, what="scale down once the workers are idle")
        assert "New size: 1; reason: All metrics below target" in describe(node, ns, "webapp")

        # An Object metric of a Service that does not exist.
        def failed(name):
            c = hpa_conditions(node, ns, name)
            return c.get("ScalingActive", {}).get("status") == "False" and c["ScalingActive"]
        cond = wait_for(lambda: failed("missing"), timeout=30, what="missing: ScalingActive=False")
        assert cond["reason"] == "FailedGetObjectMetric"
        assert cond["message"] == (
            "the HPA was unable to compute the replica count: unable to get metric webapp_busy_workers: "
            f"Service on {ns} nosuch/unable to fetch metrics from custom metrics API: services \"nosuch\" not found")
        assert "FailedGetObjectMetric" in describe(node, ns, "missing")
        cond = wait_for(lambda: failed("external"), timeout=30, what="external: ScalingActive=False")
        assert cond["reason"] == "FailedGetExternalMetric"
        assert "no external metrics API (external.metrics.k8s.io) is served" in cond["message"]
        assert "FailedGetExternalMetric" in describe(node, ns, "external")
        # AverageValue: the webapp Deployment's idle workers (4 now) shared
        # by the one replica of `other`, far below 100 each: stays at 1.
        def per_pod():
            h = node.json("get", "hpa", "perpod", "-n", ns)
            cur = h.get("status", {}).get("currentMetrics") or [{}]
            return cur[0].get("object", {}).get("current") == {"averageValue": "4"} and h
        h = wait_for(per_pod, timeout=30, what="perpod: averageValue 4")
        c = {c["type"]: c for c in h["status"]["conditions"]}
        assert c["ScalingActive"]["message"] == ("the HPA was able to successfully calculate a replica count "
                                                 "from Deployment metric webapp_idle_workers")
        assert h["status"]["currentMetrics"][0]["object"]["describedObject"]["kind"] == "Deployment"
        assert h["status"]["desiredReplicas"] == 1
        assert replicas(node, ns, "other") == 1
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")
