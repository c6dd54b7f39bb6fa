"""The audit log, as kube-apiserver writes it: `--audit-log-path` (or k3s's
`--kube-apiserver-arg=audit-log-path=...`) with an audit.k8s.io/v1 Policy records who did what,
from where, and how it ended, one JSON Event per line: requests by the admin, by a service
account (forbidden ones with the `forbid` decision), unauthenticated ones and impersonated ones;
request and response bodies at the levels that ask for them; nothing for what the policy drops.
The log rotates by size. A bad policy stops the server with a clear message."""

import json
import subprocess
import time

import pytest
import requests

from conftest import KOBUNE, Server, wait_for

POLICY = """
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/api*", "/openapi*", "/version"]
- level: None
  users: ["system:kube-controller-manager"]
- level: RequestResponse
  resources: [{group: "", resources: ["configmaps"]}]
- level: Metadata
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    (d / "policy.yaml").write_text(POLICY)
    s = Server(extra_args=["--kube-apiserver-arg", f"audit-log-path={d}/log/audit.log",
                           "--kube-apiserver-arg", f"audit-policy-file={d}/policy.yaml"])
    s.audit_log = d / "log" / "audit.log"
    yield s
    s.stop()


def events(server, pred=lambda e: True):
    if not server.audit_log.exists():
        return []
    return [e for e in map(json.loads, server.audit_log.read_text().splitlines()) if pred(e)]


def one(server, pred, what):
    found = []
    wait_for(lambda: found.extend(events(server, pred)) or found, what=what)
    return found[-1]


def test_writes_and_reads_are_logged_at_their_policy_level(audited):
    audited.kubectl("create", "configmap", "settings", "--from-literal=mode=fast")
    ev = one(audited, lambda e: e.get("verb") == "create" and e.get("objectRef", {}).get("name") == "settings",
             "the create's event")
    assert ev["kind"] == "Event" and ev["apiVersion"] == "audit.k8s.io/v1"
    assert ev["level"] == "RequestResponse" and ev["stage"] == "ResponseComplete"
    assert ev["user"]["username"] == "admin" and "system:masters" in ev["user"]["groups"]
    assert ev["sourceIPs"] == ["127.0.0.1"] and ev["userAgent"].startswith("kubectl")
    assert ev["objectRef"] == {"resource": "configmaps", "namespace": "default", "name": "settings", "apiVersion": "v1"}
    assert ev["responseStatus"]["code"] == 201
    assert ev["requestObject"]["data"] == {"mode": "fast"}
    assert ev["responseObject"]["metadata"]["uid"]
    assert ev["requestURI"].startswith("/api/v1/namespaces/default/configmaps")
    assert ev["annotations"]["authorization.k8s.io/decision"] == "allow"
    # Other resources at Metadata: no bodies. Discovery is dropped by the policy.
    audited.kubectl("get", "deployments", "-n", "kube-system")
    ev = one(audited, lambda e: e.get("verb") == "list" and e.get("objectRef", {}).get("resource") == "deployments",
             "the list's event")
    assert ev["level"] == "Metadata" and "requestObject" not in ev and "responseObject" not in ev
    assert ev["objectRef"] == {"resource": "deployments", "namespace": "kube-system", "apiGroup": "apps",
                               "apiVersion": "v1"}
    assert not events(audited, lambda e: "objectRef" not in e and e["requestURI"].startswith(("/api", "/openapi")))
    # The in-process controllers do not go through HTTP and are not logged; the
    # RequestReceived stage is omitted by the policy.
    assert {e["stage"] for e in events(audited)} <= {"ResponseComplete", "ResponseStarted"}
    # A watch is logged when its response starts.
    audited.kubectl("get", "pods", "-w", "--request-timeout=1s", check=False)
    one(audited, lambda e: e.get("verb") == "watch" and e["stage"] == "ResponseStarted", "the watch's event")


def test_who_was_refused_and_who_acted_as_whom(audited):
    audited.kubectl("create", "serviceaccount", "intruder")
    token = audited.kubectl("create", "token", "intruder").stdout.strip()
    r = audited.kubectl_token(token, "get", "secrets", check=False)
    assert r.returncode != 0
    ev = one(audited, lambda e: e["user"].get("username") == "system:serviceaccount:default:intruder"
             and e.get("objectRef", {}).get("resource") == "secrets", "the refused request")
    assert ev["responseStatus"]["code"] == 403 and ev["responseStatus"]["reason"] == "Forbidden"
    assert ev["annotations"]["authorization.k8s.io/decision"] == "forbid"
    # A wrong token: 401, no user.
    r = requests.get(f"{audited.url}/api/v1/namespaces/default/secrets",
                     headers={"Authorization": "Bearer wrong"}, verify=audited.ca)
    assert r.status_code == 401
    ev = one(audited, lambda e: e["responseStatus"]["code"] == 401, "the unauthenticated request")
    assert ev["user"] == {} and ev["verb"] == "list" and ev["auditID"] == r.headers["Audit-Id"]
    # Impersonation: the admin acted, as the service account.
    audited.kubectl("get", "pods", "--as=system:serviceaccount:default:intruder", check=False)
    ev = one(audited, lambda e: e.get("impersonatedUser", {}).get("username") == "system:serviceaccount:default:intruder",
             "the impersonated request")
    assert ev["user"]["username"] == "admin" and ev["responseStatus"]["code"] == 403


def test_the_log_rotates_and_a_bad_policy_is_refused(tmp_path):
    log = tmp_path / "audit.log"
    s = Server(extra_args=["--audit-log-path", str(log), "--audit-log-maxsize", "1", "--audit-log-maxbackup", "2"])
    try:
        # Without a policy, every request is logged at Metadata.
        s.kubectl("get", "ns")
        wait_for(lambda: log.exists() and '"level":"Metadata"' in log.read_text(), what="the first event")
        # About 1.5 MiB of events (long request URIs) rotates the file; at most two backups stay.
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {s.token}"
        pad = "x" * 4000
        for _ in range(3):
            for _ in range(150):
                session.get(f"{s.url}/api/v1/namespaces/default/configmaps?labelSelector=pad%3D{pad[:60]}&p={pad}",
                            verify=s.ca)
            time.sleep(0.3)
        wait_for(lambda: len(list(tmp_path.glob("audit-*.log"))) >= 1, what="a rotated file")
        assert len(list(tmp_path.glob("audit-*.log"))) <= 2
        assert log.stat().st_size < 2 << 20
    finally:
        s.stop()
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n")
    r = subprocess.run([KOBUNE, "server", "--data-dir", str(tmp_path / "d"), "--https-listen-port", "0",
                        "--disable-agent", "--audit-log-path", str(log), "--audit-policy-file", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "audit policy" in r.stderr and "Everything" in r.stderr, r.stderr
