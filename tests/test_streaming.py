"""exec, attach and port-forward on a real node: `kobune server` with its
node agent proxies the upgraded connection to containerd's CRI streaming
server. Driven with kubectl 1.32 and 1.37 (WebSocket first, SPDY/3.1
fallback) and the Python client's WebSocket `stream`. Needs root and
containerd; skipped when containerd is not installed (a failure when CI=1)."""

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import KUBECTLS, NODE, AgentServer, require_containerd, wait_for

require_containerd("tests/test_streaming.py")

NS = "stream"
IMAGE = "kobune.local/busybox:1"


@pytest.fixture(scope="module")
def node():
    s = AgentServer(extra_args=["--node-name", NODE])
    s.kubectl("create", "namespace", NS)
    s.kubectl("run", "web", "-n", NS, f"--image={IMAGE}", "--image-pull-policy=Never",
              "--", "httpd", "-f", "-p", "8080", "-h", "/etc")
    s.kubectl("run", "counter", "-n", NS, f"--image={IMAGE}", "--image-pull-policy=Never",
              "--", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done")
    s.kubectl("wait", "--for=condition=Ready", "pod/web", "pod/counter", "-n", NS, "--timeout=30s")
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_exec_prints_output(node, version):
    r = node.kubectl("exec", "web", "-n", NS, "--", "echo", "hi", binary=KUBECTLS[version])
    assert r.stdout == "hi\n", r.stderr


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_exec_exit_code_and_stderr(node, version):
    r = node.kubectl("exec", "web", "-n", NS, "--", "sh", "-c", "echo oops >&2; exit 3",
                     binary=KUBECTLS[version], check=False)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "oops" in r.stderr
    assert "command terminated with exit code 3" in r.stderr


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_exec_stdin(node, version):
    r = node.kubectl("exec", "-i", "web", "-n", NS, "--", "cat", binary=KUBECTLS[version],
                     input="line one\nline two\n")
    assert r.stdout == "line one\nline two\n", r.stderr


def test_exec_falls_back_from_websocket_to_spdy(node):
    # containerd's streaming server does not speak v5.channel.k8s.io over
    # WebSocket; kubectl must then retry with SPDY/3.1 and still succeed.
    for binary in KUBECTLS.values():
        r = node.kubectl("exec", "web", "-n", NS, "-v=7", "--", "echo", "fallback", binary=binary)
        assert r.stdout == "fallback\n"
        assert "v5.channel.k8s.io" in r.stderr
        assert "RemoteCommand fallback" in r.stderr
        assert re.search(r"101 Switching Protocols", r.stderr), r.stderr


def test_exec_without_upgrade_is_rejected(node):
    r = node.kubectl("get", "--raw", f"/api/v1/namespaces/{NS}/pods/web/exec?command=ls&stdout=true",
                     check=False)
    assert r.returncode != 0
    assert "Upgrade request required" in r.stderr


def run_in_pty(args, timeout=30):
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=10)
    os.close(master)
    return p.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_exec_tty(node, version):
    code, out = run_in_pty([KUBECTLS[version], "--kubeconfig", str(node.kubeconfig),
                            "exec", "-it", "web", "-n", NS, "--", "sh", "-c",
                            "ls -l /proc/self/fd/0; test -t 0 && echo is-a-tty"])
    assert code == 0, out
    assert re.search(r"/dev/pts/\d+", out), out
    assert "is-a-tty" in out, out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_port_forward(node, version):
    port = free_port()
    p = subprocess.Popen([KUBECTLS[version], "--kubeconfig", str(node.kubeconfig), "port-forward",
                          "-n", NS, "pod/web", f"{port}:8080"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "Forwarding from 127.0.0.1" in line, (line, p.stderr.read() if p.poll() is not None else "")
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/passwd", timeout=10) as r:
                assert r.status == 200
                assert b"root:" in r.read()
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_attach_shows_output(node, version):
    p = subprocess.Popen([KUBECTLS[version], "--kubeconfig", str(node.kubeconfig), "attach",
                          "-n", NS, "counter"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.time() + 20
        while time.time() < deadline and len(seen) < 2:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                line = p.stdout.readline()
                if not line:
                    break
                if line.startswith("tick "):
                    seen.append(line)
        assert len(seen) >= 2, (seen, p.stderr.read() if p.poll() is not None else "")
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_python_client_websocket_exec(node):
    import kubernetes
    from kubernetes.stream import stream

    core = kubernetes.client.CoreV1Api(node.client())
    out = stream(core.connect_get_namespaced_pod_exec, "web", NS, command=["echo", "ws"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "ws\n"


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_cp_copies_files_both_ways(node, version, tmp_path):
    # kubectl cp runs tar in the container over exec.
    src = tmp_path / "in"
    src.mkdir()
    (src / "config.yml").write_text("mode: fast\n")
    (src / "sub").mkdir()
    (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    node.kubectl("cp", str(src), f"{NS}/web:/tmp/in-{version}", binary=KUBECTLS[version])
    r = node.kubectl("exec", "web", "-n", NS, "--", "cat", f"/tmp/in-{version}/config.yml")
    assert r.stdout == "mode: fast\n"
    back = tmp_path / "back"
    node.kubectl("cp", f"{NS}/web:/tmp/in-{version}", str(back), binary=KUBECTLS[version])
    assert (back / "config.yml").read_text() == "mode: fast\n"
    assert (back / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 64


def test_kubectl_debug_adds_an_ephemeral_container(node):
    # Non-interactive: the debug container shares the target's process namespace,
    # so it sees httpd; it runs once and its output is in its log.
    r = node.kubectl("debug", "web", "-n", NS, f"--image={IMAGE}", "--image-pull-policy=Never",
                     "--target=web", "-c", "dbg", "--", "sh", "-c", "ps; echo debugged")
    assert r.returncode == 0, r.stderr

    def finished():
        pod = node.json("get", "pod", "web", "-n", NS)
        st = {s["name"]: s for s in pod["status"].get("ephemeralContainerStatuses", [])}
        return st.get("dbg", {}).get("state", {}).get("terminated")
    term = wait_for(finished, timeout=30, what="the debug container to run")
    assert term["exitCode"] == 0
    out = node.kubectl("logs", "web", "-n", NS, "-c", "dbg").stdout
    assert "debugged" in out and "httpd" in out, out
    pod = node.json("get", "pod", "web", "-n", NS)
    assert [c["name"] for c in pod["spec"]["ephemeralContainers"]] == ["dbg"]
    # The app container was left alone; an ephemeral container cannot be changed or removed.
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    r = node.kubectl("replace", "--raw", f"/api/v1/namespaces/{NS}/pods/web/ephemeralcontainers", "-f", "-",
                     input=json.dumps({**pod, "spec": {**pod["spec"], "ephemeralContainers": []}}), check=False)
    assert r.returncode != 0 and 'existing ephemeral containers "dbg" may not be removed' in r.stderr, r.stderr
    # A debug container with a name already taken is refused with the field that is wrong.
    r = node.kubectl("debug", "web", "-n", NS, f"--image={IMAGE}", "-c", "web", "--", "true", check=False)
    assert r.returncode != 0 and "spec.ephemeralContainers[1].name: Duplicate value" in r.stderr, r.stderr


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_debug_attaches_to_the_new_container(node, version):
    # As a user at a terminal: stdin stays open while the answer comes back.
    name = "dbg" + version.replace(".", "")
    p = subprocess.Popen([KUBECTLS[version], "--kubeconfig", str(node.kubeconfig), "debug", "web", "-n", NS, "-i",
                          f"--image={IMAGE}", "--image-pull-policy=Never", "-c", name, "--",
                          "sh", "-c", "read line; echo got $line"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def running():
        st = node.json("get", "pod", "web", "-n", NS)["status"].get("ephemeralContainerStatuses", [])
        return any(s["name"] == name and "running" in s["state"] for s in st)
    try:
        wait_for(running, timeout=30, what="the debug container running")
        time.sleep(0.5)  # kubectl attaches once it sees the container running
        p.stdin.write(b"hello\n")
        p.stdin.flush()
        out = b""
        deadline = time.time() + 20
        while b"got hello" not in out and time.time() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
    finally:
        p.kill()
        err = p.communicate()[1]
    assert b"got hello" in out, (out, err)
