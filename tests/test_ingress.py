"""The built-in Ingress controller, driven with the real kubectl.

Backends are HTTP servers run by this test on 127.0.0.1, behind selectorless
Services with hand-written EndpointSlices, so the proxy's routing, TLS,
HTTP/2, upgrades, headers and limits are tested without containers."""

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import conftest
from conftest import NODE, AgentServer, Server, free_port

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B2A"


class Backend:
    """An HTTP server answering with JSON about the request it got; it also
    speaks just enough WebSocket to echo one text frame."""

    def __init__(self, name):
        self.name = name
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without this,
                # Nagle and delayed ACKs cost 40ms per keep-alive request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def answer(self):
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    return self.websocket()
                if self.path.startswith("/slow"):
                    time.sleep(3)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                out = json.dumps({
                    "backend": outer.name,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body_len": len(body),
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def websocket(self):
                accept = base64.b64encode(hashlib.sha1(
                    (self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                # One masked client frame in, echoed back unmasked with our name.
                head = self.rfile.read(2)
                length = head[1] & 0x7F
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
                reply = f"{outer.name}:{data.decode()}".encode()
                self.wfile.write(bytes([0x81, len(reply)]) + reply)
                self.wfile.flush()
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cluster():
    http_port, https_port = free_port(), free_port()
    s = Server(extra_args=["--ingress-http-port", str(http_port), "--ingress-https-port", str(https_port)])
    s.http_port, s.https_port = http_port, https_port
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def backends():
    b = {n: Backend(n) for n in ["main", "side", "other", "fallback"]}
    yield b
    for x in b.values():
        x.stop()


def new_ns(cluster):
    ns = "ing-" + uuid.uuid4().hex[:8]
    cluster.kubectl("create", "namespace", ns)
    return ns


def apply(cluster, ns, manifest):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest))


def service(cluster, ns, name, ports, ready=True, port_name="http"):
    """A selectorless Service (port 80, named port_name) with one
    EndpointSlice per backend port, all at 127.0.0.1."""
    slices = "".join(f"""
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}-{i}
          labels: {{kubernetes.io/service-name: {name}}}
        addressType: IPv4
        ports: [{{name: {port_name}, port: {p}, protocol: TCP}}]
        endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: {str(ready).lower()}}}}}]
        """ for i, p in enumerate(ports))
    apply(cluster, ns, f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          ports: [{{name: {port_name}, port: 80, protocol: TCP}}]
        {slices}
        """)


def path_rule(path, svc, ty="Prefix", port="number: 80"):
    return f"{{path: {path}, pathType: {ty}, backend: {{service: {{name: {svc}, port: {{{port}}}}}}}}}"


def request(cluster, host, path="/", method="GET", body=None, headers=None, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=10)
    h = {"Host": host, **(headers or {})}
    if chunked:
        conn.request(method, path, body=iter([body]), headers=h, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data, r


def routed(cluster, host, path="/", **kw):
    """The backend name a request reaches, or (status, body) when it doesn't."""
    status, data, _ = request(cluster, host, path, **kw)
    if status == 200:
        return json.loads(data)["backend"]
    return status, data.decode(errors="replace")


def wait_for(fn, timeout=15, what="condition"):
    return conftest.wait_for(fn, timeout, what, 0.1)


def wait_routed(cluster, host, path, want, **kw):
    return wait_for(lambda: routed(cluster, host, path, **kw) == want, what=f"{host}{path} -> {want}")


def test_ingress_class_is_created_and_default(cluster):
    ic = cluster.json("get", "ingressclass", "kobune")
    assert ic["spec"]["controller"] == "kobune.io/ingress"
    assert ic["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"


def test_host_and_path_routing_and_status(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    service(cluster, ns, "side", [backends["side"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: shop}}
        spec:
          rules:
          - host: {ns}.example.com
            http:
              paths:
              - {path_rule("/", "main")}
              - {path_rule("/side-quest/", "side")}
        """)
    host = f"{ns}.example.com"
    wait_routed(cluster, host, "/", "main")
    assert routed(cluster, host, "/index.html") == "main"
    assert routed(cluster, host, "/side-quest/") == "side"
    assert routed(cluster, host, "/side-quest/map?x=1") == "side"
    assert routed(cluster, host, "/side-quest") == "side", "prefix matching ignores the trailing slash"
    assert routed(cluster, host, "/side-questing") == "main", "prefixes match whole path elements"
    assert routed(cluster, host.upper() + ":80", "/side-quest/") == "side", "hosts are case-insensitive, port ignored"
    status, body = routed(cluster, "elsewhere.example.com", "/")
    assert status == 404 and "no Ingress rule matches" in body
    # The path and query reach the backend unchanged.
    _, data, _ = request(cluster, host, "/side-quest/a/b?q=1&r=2")
    assert json.loads(data)["path"] == "/side-quest/a/b?q=1&r=2"
    ing = wait_for(lambda: (lambda i: i if i.get("status", {}).get("loadBalancer", {}).get("ingress") else None)(
        cluster.json("get", "ingress", "shop", "-n", ns)), what="ingress status address")
    assert ing["status"]["loadBalancer"]["ingress"] == [{"ip": "127.0.0.1"}]
    # DefaultIngressClass admission filled in the class.
    assert ing["spec"]["ingressClassName"] == "kobune"
    assert "127.0.0.1" in cluster.kubectl("get", "ingress", "shop", "-n", ns).stdout
    # Removing a rule takes effect.
    cluster.kubectl("delete", "ingress", "shop", "-n", ns)
    wait_for(lambda: routed(cluster, host, "/")[0] == 404, what="routes removed")


def test_exact_prefix_wildcard_and_default_backend(cluster, backends):
    ns = new_ns(cluster)
    for n in ["main", "side", "other", "fallback"]:
        service(cluster, ns, n, [backends[n].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: mixed}}
        spec:
          ingressClassName: kobune
          defaultBackend: {{service: {{name: fallback, port: {{name: http}}}}}}
          rules:
          - host: exact.{ns}.test
            http:
              paths:
              - {path_rule("/api", "main")}
              - {path_rule("/api", "side", ty="Exact")}
              - {path_rule("/api/v2", "other", ty="ImplementationSpecific")}
          - host: "*.{ns}.test"
            http:
              paths:
              - {path_rule("/", "other")}
        """)
    host = f"exact.{ns}.test"
    wait_routed(cluster, host, "/api", "side")
    assert routed(cluster, host, "/api/") == "main", "Exact /api does not match /api/"
    assert routed(cluster, host, "/api/users") == "main"
    assert routed(cluster, host, "/api/v2/users") == "other", "the longest prefix wins"
    assert routed(cluster, host, "/nothing") == "fallback", "unmatched paths go to the default backend"
    assert routed(cluster, f"wild.{ns}.test", "/anything") == "other"
    assert routed(cluster, f"a.b.{ns}.test", "/") == "fallback", "a wildcard matches one label only"
    # The default backend catches every host; remove it so later tests see 404s.
    cluster.kubectl("delete", "ingress", "mixed", "-n", ns)
    wait_for(lambda: routed(cluster, "nowhere.test", "/")[0] == 404, what="default backend removed")


def test_other_classes_are_ignored(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: theirs}}
        spec:
          ingressClassName: someone-else
          rules:
          - host: theirs.{ns}.test
            http:
              paths: [{path_rule("/", "main")}]
        """)
    time.sleep(0.5)
    assert routed(cluster, f"theirs.{ns}.test", "/")[0] == 404
    ing = cluster.json("get", "ingress", "theirs", "-n", ns)
    assert not ing.get("status", {}).get("loadBalancer", {}).get("ingress"), "no address on others' Ingresses"


def test_no_ready_endpoints_is_503_with_a_warning_event(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "web", [backends["main"].port], ready=False)
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: shop}}
        spec:
          rules:
          - host: down.{ns}.test
            http:
              paths: [{path_rule("/", "web")}]
        """)
    host = f"down.{ns}.test"
    def unavailable():
        r = routed(cluster, host, "/")
        return r if r[0] == 503 else None
    status, body = wait_for(unavailable, what="503 from the installed route")
    assert f"no ready endpoints for service {ns}/web port 80" in body

    def warning():
        for e in cluster.json("get", "events", "-n", ns)["items"]:
            if (e["type"] == "Warning" and e["involvedObject"]["kind"] == "Ingress"
                    and e["involvedObject"]["name"] == "shop"
                    and e["message"] == f"no ready endpoints for service {ns}/web port 80"):
                return e
    ev = wait_for(warning, what="Warning event")
    assert ev["reason"] == "NoReadyEndpoints"
    assert "no ready endpoints" in cluster.kubectl("describe", "ingress", "shop", "-n", ns).stdout
    # The endpoint becomes ready: traffic flows.
    service(cluster, ns, "web", [backends["main"].port], ready=True)
    wait_routed(cluster, host, "/", "main")
    # A missing Service is a 503 too.
    cluster.kubectl("delete", "service", "web", "-n", ns)
    wait_for(lambda: routed(cluster, host, "/")[0] == 503, what="503 without the Service")
    assert f"service {ns}/web not found" in routed(cluster, host, "/")[1]


def test_round_robin_and_retry_on_dead_endpoints(cluster, backends):
    ns = new_ns(cluster)
    dead = free_port()  # nothing listens here
    service(cluster, ns, "pool", [backends["main"].port, backends["side"].port, dead])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: pool}}
        spec:
          rules:
          - host: pool.{ns}.test
            http:
              paths: [{path_rule("/", "pool")}]
        """)
    host = f"pool.{ns}.test"
    wait_for(lambda: routed(cluster, host, "/") in ("main", "side"), what="route installed")
    seen = [routed(cluster, host, "/") for _ in range(12)]
    assert set(seen) == {"main", "side"}, seen
    # A POST is not retried: some attempts reach the dead endpoint and fail.
    posts = [request(cluster, host, "/", method="POST", body=b"x")[0] for _ in range(6)]
    assert 502 in posts and 200 in posts, posts


def test_forwarded_headers(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: hdr}}
        spec:
          rules:
          - host: hdr.{ns}.test
            http:
              paths: [{path_rule("/", "main")}]
        """)
    host = f"hdr.{ns}.test"
    wait_routed(cluster, host, "/", "main")
    _, data, _ = request(cluster, host, "/", headers={"X-Forwarded-For": "6.6.6.6", "X-Custom": "kept"})
    h = json.loads(data)["headers"]
    assert h["host"] == host
    assert h["x-forwarded-for"] == "127.0.0.1", "the client's own X-Forwarded-For is not trusted"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == host
    assert h["x-forwarded-port"] == str(cluster.http_port)
    assert h["x-custom"] == "kept"


def test_body_size_and_read_timeout_annotations(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          name: limits
          annotations:
            kobune.io/proxy-body-size: 1k
            kobune.io/proxy-read-timeout: "1"
        spec:
          rules:
          - host: lim.{ns}.test
            http:
              paths: [{path_rule("/", "main")}]
        """)
    host = f"lim.{ns}.test"
    wait_routed(cluster, host, "/", "main")
    status, data, _ = request(cluster, host, "/", method="POST", body=b"a" * 1000)
    assert status == 200 and json.loads(data)["body_len"] == 1000
    status, data, _ = request(cluster, host, "/", method="POST", body=b"a" * 2000)
    assert status == 413, data
    assert b"kobune.io/proxy-body-size" in data
    status, _, _ = request(cluster, host, "/", method="POST", body=b"a" * 2000, chunked=True)
    assert status == 413, "a chunked body is counted as it arrives"
    status, data, _ = request(cluster, host, "/slow")
    assert status == 504, data
    # Without the annotations the defaults apply (1m body, 60s).
    cluster.kubectl("annotate", "ingress", "limits", "-n", ns,
                    "kobune.io/proxy-body-size-", "kobune.io/proxy-read-timeout-")
    wait_for(lambda: request(cluster, host, "/", method="POST", body=b"a" * 2000)[0] == 200,
             what="default body size")
    assert request(cluster, host, "/", method="POST", body=b"a" * (1024 * 1024 + 1))[0] == 413


def test_websocket_upgrade_passthrough(cluster, backends):
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: ws}}
        spec:
          rules:
          - host: ws.{ns}.test
            http:
              paths: [{path_rule("/", "main")}]
        """)
    host = f"ws.{ns}.test"
    wait_routed(cluster, host, "/", "main")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", cluster.http_port), timeout=10) as s:
        s.sendall((f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        f = s.makefile("rb")
        status = f.readline()
        assert b" 101 " in status, status
        headers = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        assert headers["upgrade"].lower() == "websocket"
        assert headers["sec-websocket-accept"] == base64.b64encode(
            hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        payload, mask = b"hello", os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        head = f.read(2)
        assert head[0] == 0x81
        assert f.read(head[1] & 0x7F) == b"main:hello"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_cert(d, name, cn):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def curl(cluster, host, *args, path="/"):
    """curl over HTTPS to the ingress, resolving host to 127.0.0.1 (so SNI is host)."""
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{host}:{cluster.https_port}:127.0.0.1",
                        *args, f"https://{host}:{cluster.https_port}{path}"],
                       capture_output=True, text=True)
    return r


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("openssl"), reason="needs curl and openssl")
def test_tls_by_sni_http2_and_ssl_redirect(cluster, backends, tmp_path):
    ns = new_ns(cluster)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=kobune test CA", "-days", "2", cwd=tmp_path)
    a, b, plain = f"a.{ns}.test", f"b.{ns}.test", f"plain.{ns}.test"
    make_cert(tmp_path, "a", a)
    make_cert(tmp_path, "b", b)
    for n in ["a", "b"]:
        cluster.kubectl("create", "secret", "tls", f"cert-{n}", "-n", ns,
                        "--cert", str(tmp_path / f"{n}.crt"), "--key", str(tmp_path / f"{n}.key"))
    service(cluster, ns, "main", [backends["main"].port])
    service(cluster, ns, "side", [backends["side"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: secure}}
        spec:
          tls:
          - hosts: [{a}]
            secretName: cert-a
          - hosts: [{b}]
            secretName: cert-b
          rules:
          - host: {a}
            http:
              paths: [{path_rule("/", "main")}]
          - host: {b}
            http:
              paths: [{path_rule("/", "side")}]
          - host: {plain}
            http:
              paths: [{path_rule("/", "main")}]
        """)
    ca = str(tmp_path / "ca.crt")

    def ok(host):
        r = curl(cluster, host, "--cacert", ca)
        return r.returncode == 0 and json.loads(r.stdout)["backend"]
    assert wait_for(lambda: ok(a), what="TLS for a") == "main"
    assert wait_for(lambda: ok(b), what="TLS for b") == "side"
    # Each host got its own certificate (curl verified the name against our CA).
    for host, name in [(a, "a"), (b, "b")]:
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", cluster.https_port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                assert t.getpeercert()["subject"] == ((("commonName", host),),)
                der = t.getpeercert(binary_form=True)
        want = subprocess.run(["openssl", "x509", "-outform", "DER", "-in", str(tmp_path / f"{name}.crt")],
                              capture_output=True, check=True).stdout
        assert der == want
    # HTTP/2 via ALPN, and HTTP/1.1 when asked.
    r = curl(cluster, a, "--cacert", ca, "--http2", "-o", "/dev/null", "-w", "%{http_version}")
    assert r.stdout == "2", r
    r = curl(cluster, a, "--cacert", ca, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}")
    assert r.stdout == "1.1", r
    r = curl(cluster, a, "--cacert", ca, "--http2", path="/h2")
    h = json.loads(r.stdout)["headers"]
    assert h["x-forwarded-proto"] == "https" and h["host"] == f"{a}:{cluster.https_port}"
    # A host without a certificate gets the self-signed default one.
    r = curl(cluster, plain, "--cacert", ca)
    assert r.returncode == 60, r
    r = curl(cluster, plain, "-k")
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] == "main"
    # Plain HTTP to a TLS host is redirected; to the other host it is served.
    status, _, resp = request(cluster, a, "/x?y=1")
    assert status == 308
    assert resp.getheader("Location") == f"https://{a}:{cluster.https_port}/x?y=1"
    assert routed(cluster, plain, "/") == "main"
    cluster.kubectl("annotate", "ingress", "secure", "-n", ns, "kobune.io/ssl-redirect=false")
    wait_routed(cluster, a, "/", "main")
    # Replacing the Secret's certificate is picked up.
    make_cert(tmp_path, "a2", a)
    new = cluster.kubectl("create", "secret", "tls", "cert-a", "-n", ns, "--cert", str(tmp_path / "a2.crt"),
                          "--key", str(tmp_path / "a2.key"), "--dry-run=client", "-o", "yaml").stdout
    cluster.kubectl("apply", "-f", "-", input=new)
    want = subprocess.run(["openssl", "x509", "-outform", "DER", "-in", str(tmp_path / "a2.crt")],
                          capture_output=True, check=True).stdout

    def served_cert():
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", cluster.https_port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=a) as t:
                return t.getpeercert(binary_form=True) == want
    wait_for(served_cert, what="renewed certificate served")


def test_busy_ports_leave_the_server_running(cluster):
    # Another server asked for the same ingress ports: it logs, records an
    # Event on the IngressClass, and serves the API anyway.
    s = Server(extra_args=["--ingress-http-port", str(cluster.http_port),
                           "--ingress-https-port", str(cluster.https_port)])
    try:
        assert s.kubectl("get", "ingressclass", "kobune", "-o", "name").stdout.strip() == \
            "ingressclass.networking.k8s.io/kobune"
        log = (s.data_dir / "server.log").read_text()
        assert f"cannot listen on 127.0.0.1:{cluster.http_port} for Ingress HTTP traffic" in log
        evs = s.json("get", "events", "-n", "default")["items"]
        assert any(e["reason"] == "FailedToListen" and e["involvedObject"]["kind"] == "IngressClass"
                   for e in evs), evs
    finally:
        s.stop()
        shutil.rmtree(s.data_dir, ignore_errors=True)
    # --disable-ingress: no class, no listeners.
    port = free_port()
    s = Server(extra_args=["--disable-ingress", "--ingress-http-port", str(port)])
    try:
        assert s.kubectl("get", "ingressclass", "-o", "name").stdout.strip() == ""
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        s.stop()
        shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.mark.skipif(os.environ.get("KOBUNE_BENCH") != "1", reason="benchmark: set KOBUNE_BENCH=1")
def test_bench_requests_through_the_ingress(cluster, backends):
    """Prints requests/s straight to a backend and through the Ingress
    (keep-alive connections from a few threads); asserts nothing timed."""
    ns = new_ns(cluster)
    service(cluster, ns, "main", [backends["main"].port])
    apply(cluster, ns, f"""
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: bench}}
        spec:
          rules:
          - host: bench.{ns}.test
            http:
              paths: [{path_rule("/", "main")}]
        """)
    host = f"bench.{ns}.test"
    wait_routed(cluster, host, "/", "main")
    n, threads = int(os.environ.get("KOBUNE_BENCH_REQUESTS", "2000")), 4

    def run(port):
        errors = []

        def worker():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(n // threads):
                c.request("GET", "/", headers={"Host": host})
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(r.status)
            c.close()
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[:5]
        return n / (time.perf_counter() - t0)
    direct, proxied = run(backends["main"].port), run(cluster.http_port)
    print(f"\ningress bench: {n} GETs, {threads} keep-alive connections: "
          f"direct {direct:.0f} req/s, through the Ingress {proxied:.0f} req/s")


# ---------------------------------------------------------------------------
# With a real node: pods of a Deployment behind an Ingress. Uses containerd
# and the kobune0 bridge, so run under `flock /tmp/kobune-containerd.lock`.

IMAGE = "kobune.local/busybox:1"


@pytest.fixture(scope="module")
def node():
    if not shutil.which("containerd"):
        if os.environ.get("CI") == "1":
            raise RuntimeError("containerd is required for the Ingress node test when CI=1")
        pytest.skip("containerd is not installed")
    http_port, https_port = free_port(), free_port()
    s = AgentServer(extra_args=["--node-name", NODE, "--ingress-http-port", str(http_port),
                                "--ingress-https-port", str(https_port)])
    s.http_port, s.https_port = http_port, https_port
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def test_deployment_pods_behind_an_ingress(node):
    ns = new_ns(node)
    apply(node, ns, f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: httpd
                image: {IMAGE}
                imagePullPolicy: Never
                command: ["sh", "-c", "mkdir -p /www/shop && echo $HOSTNAME > /www/shop/index.html && exec httpd -f -p 8080 -h /www"]
                ports: [{{name: web, containerPort: 8080}}]
                readinessProbe: {{httpGet: {{path: /shop/index.html, port: 8080}}, periodSeconds: 1}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web}}
        spec:
          selector: {{app: web}}
          ports: [{{name: http, port: 80, targetPort: web}}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {{name: shop}}
        spec:
          rules:
          - host: shop.{ns}.test
            http:
              paths: [{path_rule("/shop", "web", port="name: http")}]
        """)
    node.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=60s")
    pods = node.json("get", "pods", "-n", ns, "-l", "app=web")["items"]
    names = {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}
    assert len(names) == 2
    host = f"shop.{ns}.test"

    def answers():
        status, data, _ = request(node, host, "/shop/")
        return status == 200 and data.decode().strip()
    seen = set()
    wait_for(lambda: seen.add(answers()) or names <= seen, timeout=30, what=f"both pods answer (seen {seen})")
    assert routed(node, host, "/other")[0] == 404
    ing = wait_for(lambda: (lambda i: i if i.get("status", {}).get("loadBalancer", {}).get("ingress") else None)(
        node.json("get", "ingress", "shop", "-n", ns)), what="ingress status address")
    assert ing["status"]["loadBalancer"]["ingress"] == [{"ip": "127.0.0.1"}]
    # No pods, no endpoints: 503 and a Warning Event.
    node.kubectl("scale", "deployment", "web", "-n", ns, "--replicas=0")
    wait_for(lambda: request(node, host, "/shop/")[0] == 503, timeout=30, what="503 once the pods are gone")
    wait_for(lambda: any(e["reason"] == "NoReadyEndpoints" and e["involvedObject"]["name"] == "shop"
                         for e in node.json("get", "events", "-n", ns)["items"]), what="NoReadyEndpoints event")
