"""Services reach pods: the EndpointSlice/Endpoints controller and the
iptables service proxy, driven by kubectl.

The simulated-node test needs no containerd. The others run a real node
(`kobune server` with its agent, containerd and the kobune0 bridge) and send
real traffic to ClusterIPs, NodePorts and LoadBalancer addresses; they share
host iptables, so run them under `flock /tmp/kobune-containerd.lock`."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import conftest
from conftest import KUBECTLS, NODE, AgentServer, Server, killall

IMAGE = "kobune.local/busybox:1"
# busybox httpd answering with the pod's hostname (busybox wget -T crashes: no -T in tests).
HTTPD = "mkdir -p /www && echo $HOSTNAME > /www/index.html && exec httpd -f -p {port} -h /www"
MANAGED_BY = "endpointslice-controller.k8s.io"


def wait_for(fn, timeout=20, what="condition", interval=0.1):
    return conftest.wait_for(fn, timeout, what, interval)


def slices(s, ns, svc):
    return s.json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")["items"]


def slice_endpoints(s, ns, svc):
    return [e for sl in slices(s, ns, svc) for e in (sl.get("endpoints") or [])]


def kobune_rules():
    out = ""
    for table in ("nat", "filter"):
        out += subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "KOBUNE" in line]


# ---------------------------------------------------------------------------
# Without containerd: slices follow a Deployment on simulated nodes.

@pytest.fixture(scope="module")
def sim():
    s = Server(extra_args=["--simulate-nodes", "3"])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def test_slices_follow_a_scaled_deployment(sim, kubectl_bin):
    version = next(v for v, b in KUBECTLS.items() if b == kubectl_bin)
    ns = "scale-" + version.replace(".", "-")

    def k(*args, **kw):
        return sim.kubectl(*args, binary=kubectl_bin, **kw)

    k("create", "namespace", ns)
    k("create", "deployment", "web", "-n", ns, f"--image={IMAGE}", "--replicas=3", "--port=8080")
    k("expose", "deployment", "web", "-n", ns, "--port=80", "--target-port=8080")

    def ready_ips(n):
        def check():
            eps = slice_endpoints(sim, ns, "web")
            ready = [e for e in eps if e["conditions"]["ready"]]
            return eps if len(ready) == n and len(eps) == n else None
        return check

    eps = wait_for(ready_ips(3), what="3 ready endpoints")
    sl = slices(sim, ns, "web")
    assert len(sl) == 1
    s = sl[0]
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
    assert s["metadata"]["name"].startswith("web-")
    owner = s["metadata"]["ownerReferences"][0]
    svc = sim.json("get", "service", "web", "-n", ns)
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Service", "web", svc["metadata"]["uid"], True)
    assert s["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    for e in eps:
        assert e["conditions"] == {"ready": True, "serving": True, "terminating": False}
        assert e["nodeName"].startswith("sim-")
        assert e["targetRef"]["kind"] == "Pod" and e["targetRef"]["namespace"] == ns
    ep = sim.json("get", "endpoints", "web", "-n", ns)
    assert len(ep["subsets"][0]["addresses"]) == 3
    assert ep["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]

    k("scale", "deployment", "web", "-n", ns, "--replicas=5")
    wait_for(ready_ips(5), what="5 ready endpoints")
    k("scale", "deployment", "web", "-n", ns, "--replicas=2")
    eps = wait_for(ready_ips(2), what="2 ready endpoints")
    pods = sim.json("get", "pods", "-n", ns)["items"]
    live = {p["status"].get("podIP") for p in pods if not p["metadata"].get("deletionTimestamp")}
    assert {e["addresses"][0] for e in eps} <= live
    described = k("describe", "service", "web", "-n", ns).stdout
    assert all(f"{e['addresses'][0]}:8080" in described for e in eps), described
    wait_for(lambda: len(sim.json("get", "endpoints", "web", "-n", ns)["subsets"][0]["addresses"]) == 2,
             what="Endpoints with 2 addresses")
    # Steady state writes nothing (no write storm).
    before = [x["metadata"]["resourceVersion"] for x in slices(sim, ns, "web")]
    ep_rv = sim.json("get", "endpoints", "web", "-n", ns)["metadata"]["resourceVersion"]
    time.sleep(1.5)
    assert [x["metadata"]["resourceVersion"] for x in slices(sim, ns, "web")] == before
    assert sim.json("get", "endpoints", "web", "-n", ns)["metadata"]["resourceVersion"] == ep_rv

    # A Service without a selector is left alone: no slices, no Endpoints.
    k("apply", "-f", "-", input=f"""
apiVersion: v1
kind: Service
metadata: {{name: manual, namespace: {ns}}}
spec:
  ports: [{{port: 80}}]
""")
    time.sleep(0.5)
    assert slices(sim, ns, "manual") == []
    assert k("get", "endpoints", "manual", "-n", ns, check=False).returncode != 0
    k("delete", "service", "web", "-n", ns)
    wait_for(lambda: not slices(sim, ns, "web"), what="slices collected with their service")
    wait_for(lambda: k("get", "endpoints", "web", "-n", ns, check=False).returncode != 0,
             what="Endpoints deleted with their service")


# ---------------------------------------------------------------------------
# On a real node.

def have_node():
    return shutil.which("containerd") is not None and shutil.which("iptables-restore") is not None and os.geteuid() == 0


needs_node = pytest.mark.skipif(not have_node(), reason="needs root, containerd and iptables")


@pytest.fixture(scope="module")
def node():
    # Left-overs of a server that died without cleaning up are flushed at start.
    subprocess.run(["iptables-restore", "--noflush"], check=True, text=True,
                   input="*nat\n:KOBUNE-SVC-STALE - [0:0]\n-A OUTPUT -d 10.43.255.253/32 -j KOBUNE-SVC-STALE\nCOMMIT\n")
    s = AgentServer(extra_args=["--node-name", NODE], env={"KOBUNE_LOG": "info,kobune_network::proxy=debug"})
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode().strip()


def local_address():
    """A non-loopback address of this host (traffic to it never leaves the host)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        dev, addr = line.split()[1], line.split()[3].split("/")[0]
        if dev != "kobune0":
            return addr
    return None


def deploy_web(s, ns, name="web", replicas=2, extra=""):
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "{HTTPD.format(port=8080)}"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
{extra}
"""
    s.kubectl("apply", "-f", "-", input=manifest)
    s.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=60s")


@needs_node
def test_expose_routes_cluster_ip_and_node_port(node):
    node.kubectl("create", "namespace", "svc")
    node.kubectl("create", "deployment", "web", "-n", "svc", f"--image={IMAGE}", "--replicas=2", "--port=8080",
                 "--", "sh", "-c", HTTPD.format(port=8080))
    node.kubectl("rollout", "status", "deployment/web", "-n", "svc", "--timeout=60s")
    node.kubectl("expose", "deployment", "web", "-n", "svc", "--port=80", "--target-port=8080", "--type=NodePort")
    svc = node.json("get", "service", "web", "-n", "svc")
    cip, np = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    pods = node.json("get", "pods", "-n", "svc", "-l", "app=web")["items"]
    ips = {p["status"]["podIP"] for p in pods}
    names = {p["metadata"]["name"] for p in pods}

    eps = wait_for(lambda: (lambda e: e if len(e) == 2 else None)(slice_endpoints(node, "svc", "web")),
                   what="2 endpoints")
    assert {e["addresses"][0] for e in eps} == ips
    assert all(e["conditions"]["ready"] and e["nodeName"] == NODE for e in eps)
    assert {e["targetRef"]["name"] for e in eps} == names
    ep = node.json("get", "endpoints", "web", "-n", "svc")
    assert {a["ip"] for a in ep["subsets"][0]["addresses"]} == ips
    assert ep["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]

    # The host reaches the ClusterIP; connections spread over both pods.
    seen = wait_for(lambda: get(f"http://{cip}:80/"), what="ClusterIP answers")
    assert seen in names
    hosts = {get(f"http://{cip}:80/") for _ in range(40)}
    assert hosts == names, hosts
    # NodePort on 127.0.0.1 and on the host's other addresses.
    assert get(f"http://127.0.0.1:{np}/") in names
    hosts = {get(f"http://127.0.0.1:{np}/") for _ in range(40)}
    assert hosts == names
    addr = local_address()
    if addr:
        assert get(f"http://{addr}:{np}/") in names

    rules = kobune_rules()
    assert not any("STALE" in r for r in rules), "stale chains flushed at start"
    assert any("KOBUNE-FIREWALL" in r and "-d 127.0.0.0/8" in r and "DROP" in r for r in rules)
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert nat.count("-A OUTPUT -j KOBUNE-SERVICES") == 1
    assert any(cip in r and "KOBUNE-SERVICES" in r for r in rules)
    assert any(f"--dport {np}" in r and "KOBUNE-NODEPORTS" in r for r in rules)
    # A route keeps service addresses on the pod bridge.
    route = subprocess.run(["ip", "route", "get", cip], capture_output=True, text=True).stdout
    assert "dev kobune0" in route, route

    # ClientIP affinity: one client sticks to one pod.
    node.kubectl("patch", "service", "web", "-n", "svc", "-p",
                 '{"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}')
    wait_for(lambda: any("--rcheck --seconds 60" in r for r in kobune_rules()), what="affinity rules")
    assert len({get(f"http://{cip}:80/") for _ in range(20)}) == 1


@needs_node
def test_pod_in_another_namespace_reaches_service_and_itself(node):
    node.kubectl("create", "namespace", "srv")
    deploy_web(node, "srv")
    node.kubectl("expose", "deployment", "web", "-n", "srv", "--port=80", "--target-port=http")
    cip = node.json("get", "service", "web", "-n", "srv")["spec"]["clusterIP"]
    names = {p["metadata"]["name"] for p in node.json("get", "pods", "-n", "srv", "-l", "app=web")["items"]}
    wait_for(lambda: len(slice_endpoints(node, "srv", "web")) == 2, what="2 endpoints")
    node.kubectl("create", "namespace", "client")
    node.kubectl("run", "client", "-n", "client", f"--image={IMAGE}", "--image-pull-policy=Never",
                 "--restart=Never", "--", "sleep", "3600")
    node.kubectl("wait", "--for=condition=Ready", "pod/client", "-n", "client", "--timeout=30s")

    def fetch(pod, ns):
        r = node.kubectl("exec", pod, "-n", ns, "--", "wget", "-qO-", f"http://{cip}/", check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    got = {wait_for(lambda: fetch("client", "client"), what="pod reaches the ClusterIP")}
    for _ in range(10):
        got.add(fetch("client", "client"))
    assert got == names, got
    # Hairpin: a backend reaching its own service (half the time itself).
    web = sorted(names)[0]
    answers = [fetch(web, "srv") for _ in range(8)]
    assert all(a in names for a in answers), answers
    # Pods started after the Service get its Docker-link variables (not the other namespace's
    # pods); enableServiceLinks: false keeps only the API's.
    off = json.dumps({"spec": {"enableServiceLinks": False}})
    for pod, extra in (("linked", []), ("unlinked", [f"--overrides={off}"])):
        node.kubectl("run", pod, "-n", "srv", f"--image={IMAGE}", "--image-pull-policy=Never",
                     "--restart=Never", *extra, "--", "sleep", "3600")
    node.kubectl("wait", "--for=condition=Ready", "pod/linked", "pod/unlinked", "-n", "srv", "--timeout=30s")
    env = lambda pod, ns="srv": dict(line.split("=", 1) for line in node.kubectl(
        "exec", pod, "-n", ns, "--", "env").stdout.splitlines() if "=" in line)
    linked = env("linked")
    assert linked["WEB_SERVICE_HOST"] == cip and linked["WEB_SERVICE_PORT"] == "80"
    assert linked["WEB_PORT"] == f"tcp://{cip}:80" and linked["WEB_PORT_80_TCP_ADDR"] == cip
    assert "KUBERNETES_SERVICE_HOST" in linked
    unlinked = env("unlinked")
    assert "WEB_SERVICE_HOST" not in unlinked and "KUBERNETES_SERVICE_HOST" in unlinked
    assert "WEB_SERVICE_HOST" not in env("client", "client")


@needs_node
def test_named_target_port_resolving_per_pod(node):
    node.kubectl("create", "namespace", "named")
    pods = ""
    for name, port in (("p8080", 8080), ("p8081", 8081)):
        pods += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: named, labels: {{app: named}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{HTTPD.format(port=port)}"]
    ports: [{{name: web, containerPort: {port}}}]
    readinessProbe: {{tcpSocket: {{port: web}}, periodSeconds: 1}}
"""
    pods += """
---
apiVersion: v1
kind: Service
metadata: {name: named, namespace: named}
spec:
  selector: {app: named}
  ports: [{name: web, port: 80, targetPort: web}]
"""
    node.kubectl("apply", "-f", "-", input=pods)
    node.kubectl("wait", "--for=condition=Ready", "pod/p8080", "pod/p8081", "-n", "named", "--timeout=30s")

    def two_slices():
        sl = slices(node, "named", "named")
        ports = sorted(s["ports"][0]["port"] for s in sl if s.get("endpoints"))
        return sl if ports == [8080, 8081] else None

    sl = wait_for(two_slices, what="one slice per resolved port")
    for s in sl:
        assert s["ports"][0]["name"] == "web"
        assert len(s["endpoints"]) == 1
    ep = node.json("get", "endpoints", "named", "-n", "named")
    assert sorted(sub["ports"][0]["port"] for sub in ep["subsets"]) == [8080, 8081]
    cip = node.json("get", "service", "named", "-n", "named")["spec"]["clusterIP"]
    wait_for(lambda: get(f"http://{cip}/"), what="service answers")
    assert {get(f"http://{cip}/") for _ in range(40)} == {"p8080", "p8081"}


@needs_node
def test_unready_pod_leaves_the_slice_and_gets_no_traffic(node):
    node.kubectl("create", "namespace", "ready")
    manifest = ""
    for name in ("good", "bad"):
        marker = "touch /tmp/ready && " if name == "good" else ""
        manifest += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: ready, labels: {{app: probe}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{marker}{HTTPD.format(port=8080)}"]
    readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1, failureThreshold: 1}}
"""
    manifest += """
---
apiVersion: v1
kind: Service
metadata: {name: probe, namespace: ready}
spec:
  type: NodePort
  selector: {app: probe}
  ports: [{port: 80, targetPort: 8080}]
"""
    node.kubectl("apply", "-f", "-", input=manifest)
    node.kubectl("wait", "--for=condition=Ready", "pod/good", "-n", "ready", "--timeout=30s")

    def conditions():
        eps = slice_endpoints(node, "ready", "probe")
        by = {e["targetRef"]["name"]: e["conditions"] for e in eps}
        return by if set(by) == {"good", "bad"} else None

    by = wait_for(conditions, what="both pods listed")
    assert by["good"] == {"ready": True, "serving": True, "terminating": False}
    assert by["bad"] == {"ready": False, "serving": False, "terminating": False}
    ep = node.json("get", "endpoints", "probe", "-n", "ready")["subsets"][0]
    assert [a["targetRef"]["name"] for a in ep["addresses"]] == ["good"]
    assert [a["targetRef"]["name"] for a in ep["notReadyAddresses"]] == ["bad"]
    svc = node.json("get", "service", "probe", "-n", "ready")
    cip, np = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    wait_for(lambda: get(f"http://{cip}/"), what="service answers")
    assert {get(f"http://{cip}/") for _ in range(30)} == {"good"}
    assert {get(f"http://127.0.0.1:{np}/") for _ in range(10)} == {"good"}

    # Becoming ready brings traffic; the time from Ready to traffic is short.
    node.kubectl("exec", "bad", "-n", "ready", "--", "touch", "/tmp/ready")
    wait_for(lambda: (conditions() or {}).get("bad", {}).get("ready"), what="bad becomes ready")
    t = time.time()
    wait_for(lambda: "bad" in {get(f"http://{cip}/") for _ in range(10)}, what="traffic to the new pod", interval=0.01)
    assert time.time() - t < 2
    # And failing again takes it out.
    node.kubectl("exec", "good", "-n", "ready", "--", "rm", "/tmp/ready")
    wait_for(lambda: (conditions() or {}).get("good", {}).get("ready") is False, what="good becomes unready")
    wait_for(lambda: {get(f"http://{cip}/") for _ in range(20)} == {"bad"}, what="traffic only to the ready pod")


@needs_node
def test_ready_pod_receives_traffic_quickly(node):
    """From the Ready pod status reaching a watcher to the first connection
    answered by that pod: the controller, the proxy's debounce and
    iptables-restore together."""
    import threading
    import kubernetes
    node.kubectl("create", "namespace", "lat")
    manifest = ""
    for name in ("steady", "flip"):
        marker = "touch /tmp/ready && " if name == "steady" else ""
        manifest += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: lat, labels: {{app: lat}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{marker}{HTTPD.format(port=8080)}"]
    readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1, failureThreshold: 1}}
"""
    manifest += """
---
apiVersion: v1
kind: Service
metadata: {name: lat, namespace: lat}
spec:
  selector: {app: lat}
  ports: [{port: 80, targetPort: 8080}]
"""
    node.kubectl("apply", "-f", "-", input=manifest)
    node.kubectl("wait", "--for=condition=Ready", "pod/steady", "-n", "lat", "--timeout=30s")
    cip = node.json("get", "service", "lat", "-n", "lat")["spec"]["clusterIP"]
    wait_for(lambda: get(f"http://{cip}/") == "steady", what="service answers")
    api = kubernetes.client.CoreV1Api(node.client())

    def ready(p):
        return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))

    latencies = []
    for _ in range(6):
        node.kubectl("exec", "flip", "-n", "lat", "--", "rm", "-f", "/tmp/ready")
        wait_for(lambda: not ready(api.read_namespaced_pod("flip", "lat")), what="flip unready")
        wait_for(lambda: {get(f"http://{cip}/") for _ in range(10)} == {"steady"}, what="traffic only to steady")
        became_ready = []
        rv = api.read_namespaced_pod("flip", "lat").metadata.resource_version

        def watch():
            w = kubernetes.watch.Watch()
            for ev in w.stream(api.list_namespaced_pod, "lat", field_selector="metadata.name=flip",
                               resource_version=rv, timeout_seconds=20):
                if ready(ev["object"]):
                    became_ready.append(time.time())
                    w.stop()

        t = threading.Thread(target=watch)
        t.start()
        node.kubectl("exec", "flip", "-n", "lat", "--", "touch", "/tmp/ready")
        first = None
        deadline = time.time() + 20
        while first is None and time.time() < deadline:
            try:
                if get(f"http://{cip}/", timeout=1) == "flip":
                    first = time.time()
            except OSError:
                pass
            time.sleep(0.002)
        t.join(timeout=25)
        assert first and became_ready, "flip never received traffic"
        latencies.append(max(0.0, first - became_ready[0]))
    latencies.sort()
    print("ready -> traffic latencies (ms):", [round(x * 1000) for x in latencies])
    assert latencies[len(latencies) // 2] < 0.1, latencies
    assert latencies[-1] < 1.0, latencies


@needs_node
def test_service_without_endpoints_refuses_at_once(node):
    node.kubectl("create", "namespace", "empty")
    node.kubectl("create", "service", "nodeport", "empty", "-n", "empty", "--tcp=80:8080")
    svc = node.json("get", "service", "empty", "-n", "empty")
    cip, np = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    wait_for(lambda: any(cip in r and "REJECT" in r for r in kobune_rules()), what="reject rule")
    for host, port in ((cip, 80), ("127.0.0.1", np)):
        t = time.time()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=5).close()
        assert time.time() - t < 1, f"{host}:{port} was not refused at once"
    # An address in the service range with no service never leaves via the default route.
    route = subprocess.run(["ip", "route", "get", "10.43.255.254"], capture_output=True, text=True).stdout
    assert "dev kobune0" in route


@needs_node
def test_load_balancer_gets_the_node_address(node):
    node.kubectl("create", "namespace", "lb")
    deploy_web(node, "lb", replicas=1)
    node.kubectl("expose", "deployment", "web", "-n", "lb", "--port=18080", "--target-port=http",
                 "--type=LoadBalancer")
    internal = [a["address"] for a in node.json("get", "node", NODE)["status"]["addresses"] if a["type"] == "InternalIP"]

    def ingress():
        st = node.json("get", "service", "web", "-n", "lb")["status"]
        return [i["ip"] for i in st.get("loadBalancer", {}).get("ingress", [])]

    ips = wait_for(ingress, what="load balancer ingress")
    assert ips == internal
    pod = node.json("get", "pods", "-n", "lb", "-l", "app=web")["items"][0]["metadata"]["name"]
    assert wait_for(lambda: get(f"http://{ips[0]}:18080/"), what="LB address answers") == pod
    row = node.kubectl("get", "service", "web", "-n", "lb").stdout.splitlines()[1].split()
    assert row[3] == ips[0], row


@needs_node
def test_rules_outlive_sigterm_until_killall(node):
    rules = kobune_rules()
    assert rules, "rules exist while the server runs"
    # Services keep working while the server restarts: SIGTERM leaves the rules.
    node.stop(keep_pods=True)
    assert sorted(kobune_rules()) == sorted(rules)
    killall(node.data_dir)
    assert kobune_rules() == []
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert nat.count("KOBUNE") == 0
