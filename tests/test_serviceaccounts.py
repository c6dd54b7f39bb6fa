"""Service accounts and in-cluster API access, as on a real cluster: every namespace gets the
`default` ServiceAccount and the `kube-root-ca.crt` ConfigMap; `kubectl create token` issues a
signed token (TokenRequest) that authenticates as the account until it or its bound object is
deleted; pods get a `kube-api-access-*` projected volume (token bound to the pod, the cluster CA,
the namespace) and the KUBERNETES_SERVICE_* variables, and reach the API through the `kubernetes`
Service by name. Pods run on containerd (skipped without it)."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import KUBECTL_137, NODE, AgentServer, require_containerd, wait_for

require_containerd("tests/test_serviceaccounts.py")

MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def cluster():
    # Pods reach the API on the pod network's gateway, so it listens there too.
    s = AgentServer(bind_address="0.0.0.0", extra_args=["--node-name", NODE, "--ingress-http-port", "0",
                                                        "--ingress-https-port", "0"])
    yield s
    s.stop()


def with_token(cluster, token, *args, ca=None, check=True):
    return cluster.kubectl_token(token, *args, ca=ca, check=check)


def whoami(cluster, token, **kw):
    return json.loads(with_token(cluster, token, "auth", "whoami", "-o", "json", **kw).stdout)["status"]["userInfo"]


def test_every_namespace_has_its_account_and_ca_bundle(cluster):
    cluster.kubectl("create", "namespace", "sa-a")
    wait_for(lambda: set(cluster.kubectl("get", "sa,cm", "-n", "sa-a", "-o", "name").stdout.split()) == {
        "serviceaccount/default", "configmap/kube-root-ca.crt"}, what="default account and CA bundle")
    cm = cluster.json("get", "cm", "kube-root-ca.crt", "-n", "sa-a")
    assert cm["data"]["ca.crt"] == Path(cluster.ca).read_text()
    # Deleted, they come back.
    cluster.kubectl("delete", "sa", "default", "-n", "sa-a")
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", "sa-a", check=False).returncode == 0,
             what="default account recreated")


def test_create_token_authenticates_until_the_account_is_gone(cluster):
    ns = "sa-b"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "serviceaccount", "deployer", "-n", ns)
    token = cluster.kubectl("create", "token", "deployer", "-n", ns, "--duration=15m").stdout.strip()
    assert token.count(".") == 2
    user = whoami(cluster, token)
    assert user["username"] == f"system:serviceaccount:{ns}:deployer"
    assert set(user["groups"]) == {"system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"}
    # Authenticated is not authorized: the account may do nothing until a binding says so.
    r = with_token(cluster, token, "get", "sa", "-n", ns, check=False)
    assert r.returncode != 0 and (f'serviceaccounts is forbidden: User "system:serviceaccount:{ns}:deployer" '
                                  f'cannot list resource "serviceaccounts" in API group "" in the namespace "{ns}"'
                                  in r.stderr), r.stderr
    cluster.kubectl("create", "rolebinding", "deployer-view", "--clusterrole=view",
                    f"--serviceaccount={ns}:deployer", "-n", ns)
    wait_for(lambda: "deployer" in with_token(cluster, token, "get", "sa", "-n", ns, check=False).stdout,
             what="the binding to take effect")
    # TokenReview says the same.
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    out = json.loads(cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout)
    assert out["status"]["authenticated"] is True
    assert out["status"]["user"]["username"] == f"system:serviceaccount:{ns}:deployer"
    # Clear errors for what upstream refuses.
    r = cluster.kubectl("create", "token", "deployer", "-n", ns, "--duration=5m", check=False)
    assert r.returncode != 0 and "may not specify a duration less than 10 minutes" in r.stderr, r.stderr
    r = cluster.kubectl("create", "token", "nobody", "-n", ns, check=False)
    assert r.returncode != 0 and 'serviceaccounts "nobody" not found' in r.stderr, r.stderr
    # A forged or foreign token is refused.
    head, body, sig = token.split(".")
    r = with_token(cluster, f"{head}.{body}.{sig[:-4]}AAAA", "get", "sa", "-n", ns, check=False)
    assert r.returncode != 0 and "Unauthorized" in r.stderr
    # Deleting the account ends its tokens, even once an account of that name is back.
    cluster.kubectl("delete", "sa", "deployer", "-n", ns)
    cluster.kubectl("create", "serviceaccount", "deployer", "-n", ns)
    r = with_token(cluster, token, "get", "sa", "-n", ns, check=False)
    assert r.returncode != 0 and "Unauthorized" in r.stderr


def box(name, ns, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1, **spec,
                     "containers": [{"name": "box", "image": "kobune.local/busybox:1",
                                     "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}


def test_pods_get_a_bound_token_the_ca_and_reach_the_api(cluster):
    ns = "sa-c"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.kubectl("get", "cm", "kube-root-ca.crt", "-n", ns, check=False).returncode == 0,
             what="CA bundle")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(box("api-user", ns)))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/api-user", "-n", ns, "--timeout=60s")
    pod = cluster.json("get", "pod", "api-user", "-n", ns)
    assert pod["spec"]["serviceAccountName"] == "default"
    vol = next(v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))
    assert [list(s)[0] for s in vol["projected"]["sources"]] == ["serviceAccountToken", "configMap", "downwardAPI"]
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]
    assert mount == {"name": vol["name"], "mountPath": MOUNT, "readOnly": True}
    sh = lambda cmd: cluster.kubectl("exec", "-n", ns, "api-user", "--", "sh", "-c", cmd).stdout
    assert sh(f"ls {MOUNT}").split() == ["ca.crt", "namespace", "token"]
    assert sh(f"cat {MOUNT}/namespace") == ns
    ca = sh(f"cat {MOUNT}/ca.crt")
    assert ca == Path(cluster.ca).read_text()
    env = dict(line.split("=", 1) for line in sh("env").splitlines() if line.startswith("KUBERNETES_"))
    svc = cluster.json("get", "svc", "kubernetes", "-n", "default")["spec"]
    assert env["KUBERNETES_SERVICE_HOST"] == svc["clusterIP"] and env["KUBERNETES_SERVICE_PORT"] == "443"
    # The pod reaches the API server through the kubernetes Service, by name (its TLS port
    # answers; rustls refuses busybox wget's TLS handshake here, so the HTTPS calls are made below
    # with the pod's own token and CA).
    assert sh("echo | busybox nc -w 3 kubernetes.default.svc 443 >/dev/null && echo open") == "open\n"
    # Its token, checked against its CA file, is the pod's account, bound to the pod.
    token = sh(f"cat {MOUNT}/token")
    ca_file = Path(cluster.data_dir) / "pod-ca.crt"
    ca_file.write_text(ca)
    assert whoami(cluster, token, ca=str(ca_file))["username"] == f"system:serviceaccount:{ns}:default"
    claims = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["kubernetes.io"]["pod"] == {"name": "api-user", "uid": pod["metadata"]["uid"]}
    assert claims["exp"] - claims["iat"] == 3607
    cluster.kubectl("delete", "pod", "api-user", "-n", ns, "--grace-period=1", "--timeout=30s")
    r = with_token(cluster, token, "get", "pods", "-n", ns, check=False)
    assert r.returncode != 0 and "Unauthorized" in r.stderr


def test_automount_can_be_turned_off(cluster):
    ns = "sa-d"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet", "namespace": ns},
        "automountServiceAccountToken": False}))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(box("off-by-pod", ns, automountServiceAccountToken=False)))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(box("off-by-account", ns, serviceAccountName="quiet")))
    for name in ("off-by-pod", "off-by-account"):
        pod = cluster.json("get", "pod", name, "-n", ns)
        assert not pod["spec"].get("volumes"), pod["spec"].get("volumes")
        assert "volumeMounts" not in pod["spec"]["containers"][0]
