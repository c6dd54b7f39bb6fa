"""NetworkPolicies enforced on the pod network: a real node (`kobune server`
with its agent, containerd and the kobune0 bridge), busybox pods in two
namespaces sending real HTTP to each other, policies applied with kubectl.
These share host iptables: run under `flock /tmp/kobune-containerd.lock`."""

import os
import shutil
import subprocess
import time
import urllib.request

import pytest

import conftest
from conftest import NODE, AgentServer
IMAGE = "kobune.local/busybox:1"
# Two busybox httpds: 8080 (named "http") and 8081 (named "alt").
HTTPD = "mkdir -p /www && echo $HOSTNAME > /www/index.html && httpd -p 8081 -h /www && exec httpd -f -p 8080 -h /www"


def have_node():
    return shutil.which("containerd") is not None and shutil.which("iptables-restore") is not None and os.geteuid() == 0


pytestmark = pytest.mark.skipif(not have_node(), reason="needs root, containerd and iptables")


def wait_for(fn, timeout=15, what="condition", interval=0.1):
    return conftest.wait_for(fn, timeout, what, interval)


def netpol_rules():
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "KOBUNE-NETPOL" in line or "KOBUNE-NP" in line]


def server_pod(name, ns, labels):
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{HTTPD}"]
    ports: [{{name: http, containerPort: 8080}}, {{name: alt, containerPort: 8081}}]
    readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1, failureThreshold: 1}}
"""


def client_pod(name, ns, labels):
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"""


@pytest.fixture(scope="module")
def net():
    # Left-overs of a server that died without cleaning up are flushed at start.
    subprocess.run(["iptables-restore", "--noflush"], check=True, text=True,
                   input="*filter\n:KOBUNE-NETPOL - [0:0]\n:KOBUNE-NPI-STALE - [0:0]\n"
                         "-A FORWARD -j KOBUNE-NETPOL\n-A KOBUNE-NETPOL -d 10.42.0.254/32 -j KOBUNE-NPI-STALE\nCOMMIT\n")
    s = AgentServer(extra_args=["--node-name", NODE], env={"KOBUNE_LOG": "info,kobune_network::netpol=debug"})
    s.kubectl("create", "namespace", "np-a")
    s.kubectl("create", "namespace", "np-b")
    s.kubectl("label", "namespace", "np-b", "team=b")
    s.kubectl("apply", "-f", "-", input=(
        server_pod("server", "np-a", "{app: server}")
        + client_pod("client", "np-a", "{role: client}")
        + client_pod("other", "np-a", "{}")
        + client_pod("client", "np-b", "{role: client}")
        + server_pod("server2", "np-b", "{app: server2}")))
    s.kubectl("wait", "--for=condition=Ready", "pod/server", "pod/client", "pod/other", "-n", "np-a", "--timeout=60s")
    s.kubectl("wait", "--for=condition=Ready", "pod/client", "pod/server2", "-n", "np-b", "--timeout=60s")
    s.ip = {}
    for ns, name in (("np-a", "server"), ("np-a", "client"), ("np-a", "other"), ("np-b", "client"),
                     ("np-b", "server2")):
        s.ip[f"{ns}/{name}"] = s.json("get", "pod", name, "-n", ns)["status"]["podIP"]
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def reaches(s, src, dst, port=8080):
    """Whether pod `src` ("ns/name") gets an HTTP answer from pod `dst`."""
    ns, name = src.split("/")
    r = s.kubectl("exec", name, "-n", ns, "--", "busybox", "timeout", "3", "wget", "-q", "-O-",
                  f"http://{s.ip[dst]}:{port}/", check=False)
    return r.returncode == 0 and r.stdout.strip() == dst.split("/")[1]


def expect(s, cases, timeout=10):
    """Waits until every (src, dst, port) -> allowed holds."""
    def check():
        got = {c: reaches(s, *c) for c in cases}
        return got if got == cases else None
    try:
        wait_for(check, timeout=timeout, what="reachability", interval=0.2)
    except AssertionError:
        got = {c: reaches(s, *c) for c in cases}
        raise AssertionError(f"expected {cases}, got {got}\nrules:\n" + "\n".join(netpol_rules()))


def apply(s, manifest):
    s.kubectl("apply", "-f", "-", input=manifest)


def delete_policies(s):
    for ns in ("np-a", "np-b"):
        s.kubectl("delete", "networkpolicy", "--all", "-n", ns)


def host_get(ip, port=8080):
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=3) as r:
        return r.read().decode().strip()


def test_default_allow(net):
    expect(net, {
        ("np-a/client", "np-a/server", 8080): True,
        ("np-a/other", "np-a/server", 8081): True,
        ("np-b/client", "np-a/server", 8080): True,
    })
    rules = netpol_rules()
    assert not any("STALE" in r for r in rules), "stale chains flushed at start"
    assert "-A FORWARD -j KOBUNE-NETPOL" in rules and "-A INPUT -j KOBUNE-NETPOL" in rules
    assert not any("KOBUNE-NPI-" in r or "KOBUNE-NPE-" in r for r in rules), rules


def test_default_deny_ingress_blocks_but_probes_and_host_work(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: np-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): False,
        ("np-a/other", "np-a/server", 8081): False,
        ("np-b/client", "np-a/server", 8080): False,
        # np-b is not isolated.
        ("np-a/client", "np-b/server2", 8080): True,
    })
    rules = netpol_rules()
    assert any(f"-d {net.ip['np-a/server']}/32" in r and "np-a/server ingress" in r for r in rules), rules
    assert any("REJECT" in r for r in rules)
    # The node reaches its pods: the readiness probe (failureThreshold 1,
    # every second) keeps passing, and the host itself gets answers.
    assert host_get(net.ip["np-a/server"]) == "server"
    time.sleep(3)
    pod = net.json("get", "pod", "server", "-n", "np-a")
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", pod["status"]
    # Deleting the policy restores traffic.
    net.kubectl("delete", "networkpolicy", "deny", "-n", "np-a")
    start = time.time()
    expect(net, {("np-a/client", "np-a/server", 8080): True, ("np-b/client", "np-a/server", 8080): True})
    assert time.time() - start < 5
    assert not any("KOBUNE-NPI-" in r for r in netpol_rules())


def test_pod_selector_allows_labelled_pods_of_the_namespace(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): True,
        ("np-a/client", "np-a/server", 8081): True,
        ("np-a/other", "np-a/server", 8080): False,
        # Same labels, other namespace: a podSelector alone is this namespace.
        ("np-b/client", "np-a/server", 8080): False,
    })
    delete_policies(net)


def test_namespace_selector_and_combined_peer(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-b, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
""")
    expect(net, {
        ("np-b/client", "np-a/server", 8080): True,
        ("np-a/client", "np-a/server", 8080): False,
    })
    # Both selectors in one peer: labelled pods in matching namespaces only.
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-b, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: np-b}}, podSelector: {matchLabels: {app: server2}}}]
""")
    expect(net, {
        ("np-b/client", "np-a/server", 8080): False,
        ("np-a/client", "np-a/server", 8080): False,
    })
    # Namespace labels changing updates the rules.
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-b, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
""")
    expect(net, {("np-a/client", "np-a/server", 8080): False})
    net.kubectl("label", "namespace", "np-a", "team=a")
    expect(net, {("np-a/client", "np-a/server", 8080): True, ("np-b/client", "np-a/server", 8080): False})
    net.kubectl("label", "namespace", "np-a", "team-")
    delete_policies(net)


def test_ip_block_with_except(net):
    apply(net, f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: block, namespace: np-a}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 10.42.0.0/16, except: ["{net.ip['np-a/client']}/32"]}}}}]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): False,
        ("np-a/other", "np-a/server", 8080): True,
        ("np-b/client", "np-a/server", 8080): True,
    })
    assert any("KOBUNE-NPB-" in r and "RETURN" in r for r in netpol_rules())
    delete_policies(net)


def test_ports_restrict_numbers_and_names(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{port: 8080, protocol: TCP}]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): True,
        ("np-a/client", "np-a/server", 8081): False,
        ("np-b/client", "np-a/server", 8080): True,
    })
    # A named port resolves to the target pod's containerPort; a range.
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{port: alt}]
    from: [{podSelector: {}}]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): False,
        ("np-a/client", "np-a/server", 8081): True,
        ("np-b/client", "np-a/server", 8081): False,
    })
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{port: 8000, endPort: 8080}]
""")
    expect(net, {
        ("np-a/client", "np-a/server", 8080): True,
        ("np-a/client", "np-a/server", 8081): False,
    })
    delete_policies(net)


def test_egress_deny_and_allow_to_one_pod(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: np-b}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
""")
    expect(net, {
        ("np-b/client", "np-a/server", 8080): False,
        ("np-b/client", "np-b/server2", 8080): False,
        # Others in np-b (and np-a) are unaffected; ingress to client is open.
        ("np-a/client", "np-b/server2", 8080): True,
    })
    # DNS (at the node) is not special: denied too.
    r = net.kubectl("exec", "client", "-n", "np-b", "--", "busybox", "timeout", "3", "nslookup",
                    "kubernetes.default.svc.cluster.local", check=False)
    assert r.returncode != 0, r.stdout
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-server, namespace: np-b}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: np-a}}, podSelector: {matchLabels: {app: server}}}]
    ports: [{port: http}]
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
""")
    expect(net, {
        ("np-b/client", "np-a/server", 8080): True,
        ("np-b/client", "np-a/server", 8081): False,
        ("np-b/client", "np-b/server2", 8080): False,
    })
    r = net.kubectl("exec", "client", "-n", "np-b", "--", "busybox", "timeout", "3", "nslookup",
                    "kubernetes.default.svc.cluster.local", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    delete_policies(net)
    expect(net, {("np-b/client", "np-b/server2", 8080): True, ("np-b/client", "np-a/server", 8081): True})


def test_new_pod_is_covered_within_moments(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
""")
    expect(net, {("np-a/other", "np-a/server", 8080): False})
    # Labelling a pod lets it in.
    net.kubectl("label", "pod", "other", "-n", "np-a", "role=client")
    expect(net, {("np-a/other", "np-a/server", 8080): True}, timeout=5)
    net.kubectl("label", "pod", "other", "-n", "np-a", "role-")
    expect(net, {("np-a/other", "np-a/server", 8080): False}, timeout=5)
    delete_policies(net)


def test_sigterm_removes_every_rule(net):
    apply(net, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: np-a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
""")
    wait_for(lambda: any("KOBUNE-NPE-" in r for r in netpol_rules()), what="policy rules")
    net.stop()
    assert netpol_rules() == []
