"""Cluster DNS: the server's DNS at the pod network's gateway (10.42.0.1:53)
answers Services, endpoints, SRV, ExternalName and pod names from the API
and forwards the rest to the nameservers of --resolv-conf (here a fake
upstream on 127.0.0.153 this test runs); pods get their resolv.conf from
dnsPolicy/dnsConfig. Queried from the host with dnspython and from busybox
pods. Needs root and containerd, like tests/test_containerd.py (run under
`flock /tmp/kobune-containerd.lock`)."""

import json
import shutil
import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

import conftest
from conftest import NODE, AgentServer, require_containerd

require_containerd("tests/test_dns.py")


DNS_IP = "10.42.0.1"
CLUSTER_DNS = "10.43.0.10"
UPSTREAM = "127.0.0.153"
BUSYBOX = "kobune.local/busybox:1"


class FakeUpstream:
    """A tiny authoritative DNS server on UPSTREAM:53 (UDP and TCP):
    upstream.test -> 192.0.2.10; big.test -> 60 A records, truncated (TC,
    no answers) over UDP so that only a TCP retry gets them; anything else
    NXDOMAIN. Remembers which names it was asked over TCP."""

    def __init__(self):
        self.tcp_names = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((UPSTREAM, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((UPSTREAM, 53))
        self.tcp.listen(16)
        self.stopped = False
        threading.Thread(target=self.serve_udp, daemon=True).start()
        threading.Thread(target=self.serve_tcp, daemon=True).start()

    def answer(self, wire, tcp):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        qname = q.question[0].name
        name = qname.to_text().lower()
        if tcp:
            self.tcp_names.append(name)
        if name == "upstream.test." and q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(qname, 30, "IN", "A", "192.0.2.10"))
        elif name == "big.test." and q.question[0].rdtype == dns.rdatatype.A:
            if tcp:
                r.answer.append(dns.rrset.from_text_list(
                    qname, 30, "IN", "A", [f"192.0.2.{i}" for i in range(1, 61)]))
            else:
                r.flags |= dns.flags.TC
        elif name not in ("upstream.test.", "big.test."):
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r.to_wire()

    def serve_udp(self):
        while not self.stopped:
            try:
                data, peer = self.udp.recvfrom(4096)
                self.udp.sendto(self.answer(data, False), peer)
            except Exception:
                if self.stopped:
                    return

    def serve_tcp(self):
        while not self.stopped:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    n = int.from_bytes(recv_exact(conn, 2), "big")
                    resp = self.answer(recv_exact(conn, n), True)
                    conn.sendall(len(resp).to_bytes(2, "big") + resp)
                except Exception:
                    pass

    def stop(self):
        self.stopped = True
        self.udp.close()
        self.tcp.close()


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


@pytest.fixture(scope="module")
def upstream():
    u = FakeUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def node(upstream, tmp_path_factory):
    rc = tmp_path_factory.mktemp("dns") / "resolv.conf"
    rc.write_text(f"nameserver {UPSTREAM}\nsearch corp.test\noptions edns0\n")
    s = AgentServer(extra_args=["--node-name", NODE, "--resolv-conf", str(rc), "--disable-ingress"])
    s.resolv_conf = rc
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def wait_for(fn, timeout=15, what="condition"):
    return conftest.wait_for(fn, timeout, what, retry_on=(AssertionError, dns.exception.DNSException))


def ask(name, rdtype="A", tcp=False):
    q = dns.message.make_query(name, rdtype)
    return (dns.query.tcp if tcp else dns.query.udp)(q, DNS_IP, timeout=3)


def addresses(resp, rdtype=dns.rdatatype.A):
    return sorted(r.address for rrset in resp.answer if rrset.rdtype == rdtype for r in rrset)


def apply(s, doc):
    s.kubectl("apply", "-f", "-", input=json.dumps(doc))


def new_ns(s, name):
    s.kubectl("create", "namespace", name)
    return name


def run_pod(s, ns, name, script, **spec):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", script]}], **spec}}
    apply(s, doc)


def pod_output(s, ns, name, timeout=30):
    def done():
        p = s.json("get", "pod", name, "-n", ns)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    p = wait_for(done, timeout=timeout, what=f"pod {name} finished")
    out = s.kubectl("logs", name, "-n", ns).stdout
    return p["status"]["phase"], out


def test_kube_dns_service_and_slice(node):
    svc = node.json("get", "service", "kube-dns", "-n", "kube-system")
    assert svc["spec"]["clusterIP"] == CLUSTER_DNS
    assert svc["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert svc["metadata"]["labels"]["kubernetes.io/name"] == "CoreDNS"
    assert "selector" not in svc["spec"]
    ports = {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
    assert ports == {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")}
    slices = node.json("get", "endpointslices", "-n", "kube-system",
                       "-l", "kubernetes.io/service-name=kube-dns")["items"]
    assert len(slices) == 1
    sl = slices[0]
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "dns.kobune.io"
    assert sl["endpoints"][0]["addresses"] == [DNS_IP]
    assert sl["endpoints"][0]["nodeName"] == NODE
    # The SOA's name server resolves to this node's DNS address.
    assert addresses(ask("ns.dns.cluster.local")) == [DNS_IP]


def test_service_records_nodata_and_nxdomain(node):
    ns = new_ns(node, "shop")
    apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                 "spec": {"selector": {"app": "web"}, "ports": [
                     {"name": "http", "port": 80, "targetPort": 8080},
                     {"name": "metrics", "port": 9100, "protocol": "UDP"}]}})
    ip = node.json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    r = wait_for(lambda: ask("web.shop.svc.cluster.local").answer and ask("web.shop.svc.cluster.local"),
                 what="service A record")
    assert addresses(r) == [ip]
    assert r.flags & dns.flags.AA and r.answer[0].ttl == 5
    # Mixed case is answered too, and over TCP.
    assert addresses(ask("WEB.Shop.svc.Cluster.Local", tcp=True)) == [ip]
    r = ask("web.shop.svc.cluster.local", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert r.authority[0].name.to_text() == "cluster.local."
    for name in ["nope.shop.svc.cluster.local", "web.nope.svc.cluster.local", "x.y.z.cluster.local"]:
        r = ask(name)
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert r.authority[0].rdtype == dns.rdatatype.SOA
    # SRV per named port and protocol, with the target's address.
    r = ask("_http._tcp.web.shop.svc.cluster.local", "SRV")
    srv = [(x.port, x.target.to_text()) for x in r.answer[0]]
    assert srv == [(80, "web.shop.svc.cluster.local.")]
    assert [a.address for rr in r.additional for a in rr] == [ip]
    r = ask("_metrics._udp.web.shop.svc.cluster.local", "SRV")
    assert [x.port for x in r.answer[0]] == [9100]
    assert ask("_http._udp.web.shop.svc.cluster.local", "SRV").rcode() == dns.rcode.NXDOMAIN
    # Reverse lookups of the ClusterIP name the Service.
    r = ask(dns.reversename.from_address(ip), "PTR")
    assert [p.target.to_text() for rr in r.answer for p in rr] == ["web.shop.svc.cluster.local."]
    # Deleting the Service removes its name.
    node.kubectl("delete", "service", "web", "-n", ns)
    wait_for(lambda: ask("web.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN,
             what="NXDOMAIN after delete")
    apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                 "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}})


def test_headless_selectorless_service_with_own_slice(node):
    ns = new_ns(node, "hl")
    apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": ns},
                 "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})
    apply(node, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "db-manual", "namespace": ns,
                              "labels": {"kubernetes.io/service-name": "db"}},
                 "addressType": "IPv4",
                 "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
                 "endpoints": [
                     {"addresses": ["10.42.0.200"], "hostname": "db-0", "conditions": {"ready": True}},
                     {"addresses": ["10.42.0.201"], "conditions": {"ready": True}},
                     {"addresses": ["10.42.0.202"], "conditions": {"ready": False}}]})
    r = wait_for(lambda: len(ask("db.hl.svc.cluster.local").answer) and ask("db.hl.svc.cluster.local"),
                 what="headless A records")
    assert addresses(r) == ["10.42.0.200", "10.42.0.201"]
    assert addresses(ask("db-0.db.hl.svc.cluster.local")) == ["10.42.0.200"]
    assert addresses(ask("10-42-0-201.db.hl.svc.cluster.local")) == ["10.42.0.201"]
    assert ask("10-42-0-202.db.hl.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    r = ask("_pg._tcp.db.hl.svc.cluster.local", "SRV")
    srv = sorted((x.port, x.target.to_text()) for x in r.answer[0])
    assert srv == [(5433, "10-42-0-201.db.hl.svc.cluster.local."), (5433, "db-0.db.hl.svc.cluster.local.")]
    assert sorted(a.address for rr in r.additional for a in rr) == ["10.42.0.200", "10.42.0.201"]
    # publishNotReadyAddresses publishes the not-ready endpoint too.
    node.kubectl("patch", "service", "db", "-n", ns, "-p", '{"spec":{"publishNotReadyAddresses":true}}')
    wait_for(lambda: len(ask("db.hl.svc.cluster.local").answer[0]) == 3, what="not-ready published")


def test_headless_service_over_pods(node):
    ns = new_ns(node, "sts")
    apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers", "namespace": ns},
                 "spec": {"clusterIP": "None", "selector": {"app": "peer"},
                          "ports": [{"name": "web", "port": 8080}]}})
    for i in range(2):
        apply(node, {"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"peer-{i}", "namespace": ns, "labels": {"app": "peer"}},
                     "spec": {"hostname": f"peer-{i}", "subdomain": "peers", "terminationGracePeriodSeconds": 1,
                              "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                                              "command": ["sleep", "3600"],
                                              "ports": [{"name": "web", "containerPort": 8080}]}]}})
    node.kubectl("wait", "--for=condition=Ready", "pod/peer-0", "pod/peer-1", "-n", ns, "--timeout=30s")
    ips = {f"peer-{i}": node.json("get", "pod", f"peer-{i}", "-n", ns)["status"]["podIP"] for i in range(2)}
    r = wait_for(lambda: len(ask("peers.sts.svc.cluster.local").answer) and
                 len(ask("peers.sts.svc.cluster.local").answer[0]) == 2 and ask("peers.sts.svc.cluster.local"),
                 timeout=20, what="headless A records over pods")
    assert addresses(r) == sorted(ips.values())
    assert addresses(ask("peer-1.peers.sts.svc.cluster.local")) == [ips["peer-1"]]
    srv = sorted(x.target.to_text() for x in ask("_web._tcp.peers.sts.svc.cluster.local", "SRV").answer[0])
    assert srv == ["peer-0.peers.sts.svc.cluster.local.", "peer-1.peers.sts.svc.cluster.local."]
    # Pod records: a-b-c-d.<ns>.pod.cluster.local for pods of that namespace.
    dashed = ips["peer-0"].replace(".", "-")
    assert addresses(ask(f"{dashed}.sts.pod.cluster.local")) == [ips["peer-0"]]
    assert ask(f"{dashed}.other.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    # The pod's own /etc/hostname follows spec.hostname.
    out = node.kubectl("exec", "peer-0", "-n", ns, "--", "hostname").stdout.strip()
    assert out == "peer-0"
    # /etc/hosts is the kubelet-managed one, with the pod's FQDN.
    hosts = node.kubectl("exec", "peer-0", "-n", ns, "--", "cat", "/etc/hosts").stdout
    assert hosts.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), hosts
    assert f"{ips['peer-0']}\tpeer-0.peers.sts.svc.cluster.local\tpeer-0\n" in hosts, hosts
    node.kubectl("delete", "pod", "peer-1", "-n", ns, "--grace-period=1", "--timeout=20s")
    wait_for(lambda: ask("peer-1.peers.sts.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN,
             timeout=20, what="deleted pod's record gone")


def test_external_name_and_forwarding(node, upstream):
    ns = new_ns(node, "ext")
    apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "up", "namespace": ns},
                 "spec": {"type": "ExternalName", "externalName": "upstream.test"}})
    r = wait_for(lambda: ask("up.ext.svc.cluster.local").answer and ask("up.ext.svc.cluster.local"),
                 what="ExternalName CNAME")
    cname = [rr for rr in r.answer if rr.rdtype == dns.rdatatype.CNAME]
    assert cname and cname[0][0].target.to_text() == "upstream.test."
    # The target is resolved through the upstream server.
    assert addresses(r) == ["192.0.2.10"]
    # Forwarded names.
    r = ask("upstream.test")
    assert addresses(r) == ["192.0.2.10"] and not r.flags & dns.flags.AA
    assert ask("nothing.test").rcode() == dns.rcode.NXDOMAIN
    # The upstream truncates big.test over UDP: the server retries over
    # TCP and, the answer being too big for a plain UDP reply, truncates
    # its own reply so the client retries over TCP.
    r, used_tcp = dns.query.udp_with_fallback(dns.message.make_query("big.test", "A"), DNS_IP, timeout=3)
    assert used_tcp and len(addresses(r)) == 60
    assert "big.test." in upstream.tcp_names
    r = dns.query.udp(dns.message.make_query("big.test", "A", use_edns=0, payload=4096), DNS_IP, timeout=3)
    assert not r.flags & dns.flags.TC and len(addresses(r)) == 60


def test_resolv_conf_per_dns_policy(node):
    ns = new_ns(node, "pol")
    cat = "cat /etc/resolv.conf"
    run_pod(node, ns, "cluster-first", cat)
    run_pod(node, ns, "default", cat, dnsPolicy="Default")
    run_pod(node, ns, "none", cat, dnsPolicy="None",
            dnsConfig={"nameservers": ["192.0.2.1"], "searches": ["a.test"],
                       "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]})
    run_pod(node, ns, "merged", cat,
            dnsConfig={"nameservers": ["192.0.2.1"], "searches": ["b.test"],
                       "options": [{"name": "ndots", "value": "3"}]})
    run_pod(node, ns, "hostnet", cat + " && hostname && cat /etc/hosts", hostNetwork=True)
    run_pod(node, ns, "aliases", "cat /etc/hosts",
            hostAliases=[{"ip": "192.0.2.77", "hostnames": ["foo.test", "bar.test"]}])
    run_pod(node, ns, "hostnet-cluster", cat, hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")

    def conf(name):
        phase, out = pod_output(node, ns, name)
        assert phase == "Succeeded", (name, out)
        lines = [line.split() for line in out.splitlines() if line.strip() and not line.startswith("#")]
        servers = [w[1] for w in lines if w[0] == "nameserver"]
        search = next((w[1:] for w in lines if w[0] == "search"), [])
        options = next((w[1:] for w in lines if w[0] == "options"), [])
        return servers, search, options

    cluster_search = ["pol.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.test"]
    host = ([UPSTREAM], ["corp.test"], ["edns0"])
    assert conf("cluster-first") == ([CLUSTER_DNS], cluster_search, ["ndots:5"])
    assert conf("default") == host
    assert conf("none") == (["192.0.2.1"], ["a.test"], ["ndots:2", "rotate"])
    assert conf("merged") == ([CLUSTER_DNS, "192.0.2.1"], cluster_search + ["b.test"], ["ndots:3"])
    assert conf("hostnet") == host
    # A hostNetwork pod keeps the node's host name and /etc/hosts.
    _, out = pod_output(node, ns, "hostnet")
    assert socket.gethostname() in out.splitlines()
    assert "# Kubernetes-managed hosts file (host network).\n" in out
    _, out = pod_output(node, ns, "aliases")
    assert "# Entries added by HostAliases.\n192.0.2.77\tfoo.test\tbar.test\n" in out, out
    assert conf("hostnet-cluster") == ([CLUSTER_DNS], cluster_search, ["ndots:5"])


def test_nslookup_from_a_pod(node):
    ns = "shop"
    if node.kubectl("get", "namespace", ns, check=False).returncode != 0:
        new_ns(node, ns)
        apply(node, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}})
    ip = node.json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    # At the node's DNS address directly.
    run_pod(node, ns, "lookup-direct", f"nslookup web.shop.svc.cluster.local {DNS_IP}")
    phase, out = pod_output(node, ns, "lookup-direct")
    assert phase == "Succeeded", out
    assert f"Address: {ip}" in out, out
    # Through the kube-dns Service IP (the service proxy's DNAT) named by
    # the default resolv.conf: full names and a forwarded name.
    run_pod(node, ns, "lookup-vip", "nslookup web.shop.svc.cluster.local && nslookup upstream.test")
    phase, out = pod_output(node, ns, "lookup-vip")
    assert phase == "Succeeded", out
    assert f"Server:\t\t{CLUSTER_DNS}" in out, out
    assert f"Address: {ip}" in out and "Address: 192.0.2.10" in out, out
    # The short name through the search path, walked as a resolver does
    # (busybox's nslookup does not search, and the static busybox's libc
    # resolver cannot run in the image): the first search domain answers.
    run_pod(node, ns, "lookup-short",
            "while read k rest; do [ \"$k\" = search ] && domains=\"$rest\"; done < /etc/resolv.conf; "
            "for d in $domains; do out=$(nslookup web.$d 2>&1) && "
            "{ echo found in $d; echo \"$out\"; exit 0; }; done; exit 1")
    phase, out = pod_output(node, ns, "lookup-short")
    assert phase == "Succeeded", out
    assert out.startswith("found in shop.svc.cluster.local\n") and f"Address: {ip}" in out, out
