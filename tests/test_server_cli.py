"""`kobune server` itself: flags in k3s's names, the files it writes, the
credentials it accepts, restart on the same data dir, SIGTERM."""

import json
import os
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import KOBUNE, Server, free_port


def https_get(url, ca, token):
    ctx = ssl.create_default_context(cafile=ca)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        return r.status, json.loads(r.read())


def test_flags_files_and_credentials(tmp_path):
    kubeconfig = tmp_path / "elsewhere" / "admin.yaml"
    data = tmp_path / "data"
    port = free_port()
    started = time.time()
    proc = subprocess.Popen(
        [KOBUNE, "server", "--data-dir", str(data), "--bind-address", "127.0.0.1", "--https-listen-port", str(port),
         "--write-kubeconfig", str(kubeconfig), "--token", "sekrit-token-123", "--tls-san", "api.shop.example",
         "--disable-agent"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        ready_after = time.time() - started
        assert "kobune server ready" in first
        assert ready_after < 1.0, f"ready after {ready_after:.2f}s"
        assert f"kubeconfig written to {kubeconfig}" in proc.stdout.readline()
        assert kubeconfig.exists() and oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        ca = str(data / "tls" / "ca.crt")
        # The --token is accepted as a bearer token; the server certificate verifies against the CA.
        status, body = https_get(f"https://127.0.0.1:{port}/api/v1/namespaces/default", ca, "sekrit-token-123")
        assert status == 200 and body["metadata"]["name"] == "default"
        try:
            https_get(f"https://127.0.0.1:{port}/api/v1/namespaces", ca, "wrong")
            raise AssertionError("wrong token accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(data / "tls" / "serving.crt")],
                              capture_output=True, text=True).stdout
        assert "api.shop.example" in sans and "127.0.0.1" in sans
        r = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "c"), "get", "ns", "-o", "name"],
                           capture_output=True, text=True)
        assert "namespace/kube-system" in r.stdout, r.stderr
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_restart_keeps_state_and_certificates():
    s = Server()
    s.kubectl("create", "configmap", "keep", "--from-literal=a=1")
    ca_before = Path(s.ca).read_text()
    s.stop()
    s.start()
    try:
        assert Path(s.ca).read_text() == ca_before
        assert s.json("get", "cm", "keep")["data"] == {"a": "1"}
        gen = s.json("create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "job-"}}))
        assert gen["metadata"]["name"].startswith("job-") and len(gen["metadata"]["name"]) == 9
    finally:
        s.stop()
