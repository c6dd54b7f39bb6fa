"""Two machines in one cluster: `kobune server` with its node on this host, and `kobune agent` in a
network namespace of its own standing for a second machine (its own interfaces, routes and
iptables), joined over a veth link (server 10.99.0.1, agent 10.99.0.2). Nothing is shared but that
link, so the agent runs the service proxy and NetworkPolicy rules itself, and each node routes the
other's pod CIDR via the other's InternalIP (host-gw).

Proved through kubectl: pods on the two nodes reach each other; a pod on either node reaches a
Service by ClusterIP and by DNS name whichever node its endpoints are on; a NodePort answers on
the agent's address; a NetworkPolicy is enforced on the agent's node for traffic from the other
node; exec, port-forward and attach reach the agent's pods through its kubelet port; a stopped
agent's pods and Service rules keep serving until `kobune killall` removes them. Needs root
and containerd.

Run under the containerd lock: flock /tmp/kobune-containerd.lock pytest tests/test_multinode.py"""

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from conftest import KOBUNE, KUBECTL_137, NODE, AgentServer, free_port, require_containerd, start_agent, wait_for

require_containerd("tests/test_multinode.py")

NETNS = "kobune-m2"
HOST_LINK, AGENT_LINK = "kbm2-h", "kbm2-a"
SERVER_IP, AGENT_IP = "10.99.0.1", "10.99.0.2"
AGENT_NODE = "machine-2"
NS = "multi"


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def remove_link():
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", HOST_LINK, check=False)


@pytest.fixture(scope="module")
def link():
    """The second machine's network namespace and the link to it."""
    remove_link()
    sh("ip", "netns", "add", NETNS)
    sh("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", AGENT_LINK)
    sh("ip", "link", "set", AGENT_LINK, "netns", NETNS)
    sh("ip", "addr", "add", f"{SERVER_IP}/30", "dev", HOST_LINK)
    sh("ip", "link", "set", HOST_LINK, "up")
    sh("ip", "-n", NETNS, "addr", "add", f"{AGENT_IP}/30", "dev", AGENT_LINK)
    sh("ip", "-n", NETNS, "link", "set", AGENT_LINK, "up")
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "route", "add", "default", "via", SERVER_IP)
    yield
    remove_link()


@pytest.fixture(scope="module")
def cluster(link):
    s = AgentServer(bind_address="0.0.0.0",
                    extra_args=["--node-name", NODE, "--node-ip", SERVER_IP, "--tls-san", SERVER_IP,
                                "--ingress-http-port", "0", "--ingress-https-port", "0"])
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


class NetnsAgent:
    """`kobune agent` run inside the second machine's namespace, with the proxy (no --disable-kube-proxy)."""

    def __init__(self, server):
        self.base = Path(tempfile.mkdtemp(prefix="kobune-m2-"))
        self.log_path = self.base / "agent.log"
        self.proc = start_agent(
            # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts runc needs.
            ["nsenter", f"--net=/run/netns/{NETNS}", KOBUNE, "agent",
             "--server", f"https://{SERVER_IP}:{server.port}", "--token", server.token,
             "--server-ca", server.ca, "--data-dir", str(self.base / "agent"),
             "--node-name", AGENT_NODE, "--node-ip", AGENT_IP, "--kubelet-port", str(free_port())],
            self.log_path)

    def netns_sh(self, *args, check=True):
        return sh("ip", "netns", "exec", NETNS, *args, check=check)

    def stop(self):
        """SIGTERM: the agent goes; its pods, their network and its Service rules stay."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=60)
            assert code == 0, f"kobune agent exited with {code} on SIGTERM:\n{self.log_path.read_text()}"

    def killall(self):
        """`kobune killall` in the second machine's namespace."""
        r = subprocess.run(["nsenter", f"--net=/run/netns/{NETNS}", KOBUNE, "killall", "--data-dir",
                            str(self.base / "agent")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def agent(cluster):
    a = NetnsAgent(cluster)
    yield a
    a.stop()
    a.killall()
    shutil.rmtree(a.base, ignore_errors=True)


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def web_pod(name, node, labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": "kobune.local/webapp:v1",
                                     "imagePullPolicy": "Never",
                                     "env": [{"name": "PORT", "value": "8080"},
                                             {"name": "VERSION", "value": name}],
                                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080},
                                                        "periodSeconds": 1}}]}}


def box_pod(name, node, labels=None):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {"role": "client"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "box", "image": "kobune.local/busybox:1", "imagePullPolicy": "Never",
                                     "command": ["sleep", "3600"]}]}}


def service(name, selector, **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def fetch(cluster, pod, url):
    """The body pod `pod` gets from `url`, or None (busybox wget; its -T is broken, so `timeout`)."""
    r = cluster.kubectl("exec", "-n", NS, pod, "--", "busybox", "timeout", "4", "wget", "-qO-", url, check=False)
    return r.stdout if r.returncode == 0 else None


@pytest.fixture(scope="module")
def pods(cluster, agent):
    cluster.kubectl("create", "namespace", NS)
    apply(cluster,
          web_pod("web-server", NODE, {"app": "on-server"}),
          web_pod("web-agent", AGENT_NODE, {"app": "on-agent"}),
          box_pod("box-server", NODE),
          box_pod("box-agent", AGENT_NODE),
          service("on-server", {"app": "on-server"}),
          service("on-agent", {"app": "on-agent"}, type="NodePort"))
    for name in ("web-server", "web-agent", "box-server", "box-agent"):
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", NS, "--timeout=90s")
    return {p["metadata"]["name"]: p for p in cluster.json("get", "pods", "-n", NS)["items"]}


def test_nodes_have_their_addresses_and_routes_to_each_other(cluster, agent, pods):
    nodes = {n["metadata"]["name"]: n for n in cluster.json("get", "nodes")["items"]}
    ips = {name: next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
           for name, n in nodes.items()}
    assert ips == {NODE: SERVER_IP, AGENT_NODE: AGENT_IP}
    agent_cidr = nodes[AGENT_NODE]["spec"]["podCIDR"]
    server_cidr = nodes[NODE]["spec"]["podCIDR"]
    assert pods["web-agent"]["status"]["podIP"].startswith(agent_cidr.rsplit(".", 1)[0] + ".")
    assert pods["web-agent"]["status"]["hostIP"] == AGENT_IP
    # host-gw: each machine routes the other's pod CIDR via the other's address.
    wait_for(lambda: f"via {AGENT_IP}" in sh("ip", "route", "show", agent_cidr).stdout, timeout=30,
             what="the server's route to the agent's pods")
    wait_for(lambda: f"via {SERVER_IP}" in agent.netns_sh("ip", "route", "show", server_cidr).stdout,
             timeout=30, what="the agent's route to the server's pods")


def test_pods_on_two_machines_reach_each_other(cluster, agent, pods):
    agent_ip = pods["web-agent"]["status"]["podIP"]
    server_ip = pods["web-server"]["status"]["podIP"]
    assert wait_for(lambda: fetch(cluster, "box-server", f"http://{agent_ip}:8080/"), timeout=30,
                    what="server pod -> agent pod") == "webapp web-agent web-agent\n"
    assert wait_for(lambda: fetch(cluster, "box-agent", f"http://{server_ip}:8080/"), timeout=30,
                    what="agent pod -> server pod") == "webapp web-server web-server\n"


def test_exec_port_forward_and_attach_reach_the_other_machine(cluster, agent, pods):
    # Through the agent's kubelet port: containerd's stream server there listens on its loopback.
    out = cluster.kubectl("exec", "-n", NS, "box-agent", "--", "hostname").stdout
    assert out.strip() == "box-agent"
    port = free_port()
    p = subprocess.Popen([KUBECTL_137, "--kubeconfig", str(cluster.kubeconfig), "port-forward", "-n", NS,
                          "pod/web-agent", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Forwarding from 127.0.0.1" in p.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.read().decode() == "webapp web-agent web-agent\n"
    finally:
        p.terminate()
        p.wait(timeout=10)
    apply(cluster, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker", "namespace": NS},
                    "spec": {"nodeSelector": {"kubernetes.io/hostname": AGENT_NODE},
                             "terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "t", "image": "kobune.local/busybox:1",
                                             "imagePullPolicy": "Never",
                                             "command": ["sh", "-c", "while true; do echo tick; sleep 0.3; done"]}]}})
    cluster.kubectl("wait", "--for=condition=Ready", "pod/ticker", "-n", NS, "--timeout=60s")
    p = subprocess.Popen([KUBECTL_137, "--kubeconfig", str(cluster.kubeconfig), "attach", "-n", NS, "ticker"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ticks = [p.stdout.readline() for _ in range(2)]
        assert ticks == ["tick\n", "tick\n"], (ticks, p.stderr.read() if p.poll() is not None else "")
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_services_by_ip_and_name_from_either_machine(cluster, agent, pods):
    on_server = cluster.json("get", "service", "on-server", "-n", NS)["spec"]["clusterIP"]
    on_agent = cluster.json("get", "service", "on-agent", "-n", NS)["spec"]["clusterIP"]
    # The agent's own proxy: its pod reaches Services whose endpoints are on either machine.
    for url, body in ((f"http://{on_server}/", "webapp web-server web-server\n"),
                      (f"http://{on_agent}/", "webapp web-agent web-agent\n"),
                      ("http://on-server/", "webapp web-server web-server\n"),
                      (f"http://on-agent.{NS}.svc.cluster.local/", "webapp web-agent web-agent\n")):
        assert wait_for(lambda: fetch(cluster, "box-agent", url), timeout=30,
                        what=f"agent pod -> {url}") == body
    # And the server's proxy for its pod, to the endpoint on the agent.
    assert wait_for(lambda: fetch(cluster, "box-server", "http://on-agent/"), timeout=30,
                    what="server pod -> on-agent") == "webapp web-agent web-agent\n"
    # The agent's iptables hold the rules; the server's are another machine's.
    rules = agent.netns_sh("iptables-save", "-t", "nat").stdout
    assert on_agent in rules and "KOBUNE-SERVICES" in rules


def test_node_port_on_the_agents_address(cluster, agent, pods):
    svc = cluster.json("get", "service", "on-agent", "-n", NS)
    port = svc["spec"]["ports"][0]["nodePort"]

    def get():
        try:
            with urllib.request.urlopen(f"http://{AGENT_IP}:{port}/", timeout=3) as r:
                return r.read().decode()
        except OSError:
            return None
    assert wait_for(get, timeout=30, what="NodePort on the agent") == "webapp web-agent web-agent\n"


def test_network_policy_on_the_agents_node(cluster, agent, pods):
    agent_ip = pods["web-agent"]["status"]["podIP"]
    apply(cluster, box_pod("box-allowed", NODE, {"role": "client", "access": "yes"}))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/box-allowed", "-n", NS, "--timeout=60s")
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "only-allowed", "namespace": NS},
              "spec": {"podSelector": {"matchLabels": {"app": "on-agent"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"access": "yes"}}}],
                                    "ports": [{"port": 8080}]}]}}
    apply(cluster, policy)
    # The rule is the agent's: the server's machine holds none for its pod.
    wait_for(lambda: fetch(cluster, "box-server", f"http://{agent_ip}:8080/") is None, timeout=30,
             what="the policy blocking box-server")
    assert fetch(cluster, "box-allowed", f"http://{agent_ip}:8080/") == "webapp web-agent web-agent\n"
    assert "KOBUNE-NPI" in agent.netns_sh("iptables-save", "-t", "filter").stdout
    cluster.kubectl("delete", "networkpolicy", "only-allowed", "-n", NS)
    assert wait_for(lambda: fetch(cluster, "box-server", f"http://{agent_ip}:8080/"), timeout=30,
                    what="traffic once the policy is gone") == "webapp web-agent web-agent\n"


def test_stopped_agent_keeps_serving_and_killall_leaves_its_machine_clean(cluster, agent, pods):
    agent_ip = pods["web-agent"]["status"]["podIP"]
    agent.stop()
    # The agent is gone; its pod and the Service rules in front of it are not.
    assert fetch(cluster, "box-server", f"http://{agent_ip}:8080/") == "webapp web-agent web-agent\n"
    assert "KOBUNE-SERVICES" in agent.netns_sh("iptables-save").stdout
    agent.killall()
    rules = agent.netns_sh("iptables-save").stdout
    assert "KOBUNE-" not in rules, rules
    assert fetch(cluster, "box-server", f"http://{agent_ip}:8080/") is None
    # The server's node keeps its route to the agent's pods while the Node exists, not after.
    assert f"via {AGENT_IP}" in sh("ip", "route").stdout
    cluster.kubectl("delete", "node", AGENT_NODE)
    wait_for(lambda: f"via {AGENT_IP}" not in sh("ip", "route").stdout, timeout=30,
             what="the route to the agent's pods removed")
