"""RBAC authorization, as on a real cluster: a new cluster has upstream's default roles
(cluster-admin for system:masters, the aggregated admin/edit/view, discovery and self-review for
everyone); any other user (service account token, client certificate) may do only what a
RoleBinding or ClusterRoleBinding grants, and gets upstream's Forbidden message otherwise;
`kubectl auth can-i` (also with --as impersonation and --list) answers from the same rules; a
user cannot grant what it does not hold. Driven by kubectl 1.32 and 1.37 and the Python client,
on both datastores."""

import json
import subprocess

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from conftest import KUBECTL_132, wait_for


def forbidden(user, verb, resource, ns=None, group=""):
    scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    return f'User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}'


def account(server, ns, name):
    """A namespace (if new), a ServiceAccount in it and a token for it."""
    server.kubectl("create", "namespace", ns, check=False)
    server.kubectl("create", "serviceaccount", name, "-n", ns)
    return server.kubectl("create", "token", name, "-n", ns).stdout.strip()


def test_default_roles_and_aggregation(server):
    names = server.kubectl("get", "clusterroles", "-o", "name").stdout.split()
    for r in ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user"]:
        assert f"clusterrole.rbac.authorization.k8s.io/{r}" in names
    crb = server.json("get", "clusterrolebinding", "cluster-admin")
    assert crb["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]

    def rules(role):
        return server.json("get", "clusterrole", role)["rules"]

    def grants(role, group, resource, verb):
        return any((group in r.get("apiGroups", []) and resource in r.get("resources", [])
                    and verb in r["verbs"]) for r in rules(role))

    # view, edit and admin are filled from the aggregate-to-* roles, and admin holds edit's rules.
    wait_for(lambda: grants("view", "apps", "deployments", "list"), what="view aggregated")
    wait_for(lambda: grants("admin", "apps", "deployments", "create")
             and grants("admin", "rbac.authorization.k8s.io", "rolebindings", "create"), what="admin aggregated")
    assert not grants("view", "", "secrets", "get")
    # A CRD's chart adds its kinds to view with a label; they leave with the role.
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "carts-view"},
        "rules": [{"apiGroups": ["shop.example"], "resources": ["carts"], "verbs": ["get", "list"]}]}))
    server.kubectl("label", "clusterrole", "carts-view", "rbac.authorization.k8s.io/aggregate-to-view=true")
    wait_for(lambda: grants("view", "shop.example", "carts", "list") and grants("edit", "shop.example", "carts", "list"),
             what="a labelled role aggregated into view and edit")
    server.kubectl("delete", "clusterrole", "carts-view")
    wait_for(lambda: not grants("view", "shop.example", "carts", "list"), what="its rules gone again")


def test_a_service_account_may_do_what_its_bindings_grant(server, kubectl_bin):
    ns = "rb-a-132" if kubectl_bin == KUBECTL_132 else "rb-a-137"
    token = account(server, ns, "deployer")
    user = f"system:serviceaccount:{ns}:deployer"
    as_sa = lambda *a, **kw: server.kubectl_token(token, *a, binary=kubectl_bin, check=False, **kw)
    r = as_sa("get", "pods", "-n", ns)
    assert r.returncode != 0
    assert f"Error from server (Forbidden): pods is forbidden: {forbidden(user, 'list', 'pods', ns)}" in r.stderr
    assert as_sa("auth", "can-i", "list", "pods", "-n", ns).stdout.strip() == "no"
    # Discovery and self-review are everyone's.
    assert as_sa("auth", "whoami", "-o", "json").returncode == 0
    assert "deployments" in as_sa("api-resources", "--api-group=apps", "-o", "name").stdout

    server.kubectl("create", "rolebinding", "deployer-view", "--clusterrole=view",
                   f"--serviceaccount={ns}:deployer", "-n", ns, binary=kubectl_bin)
    wait_for(lambda: as_sa("get", "pods", "-n", ns).returncode == 0, what="view to take effect")
    assert as_sa("auth", "can-i", "list", "pods", "-n", ns).stdout.strip() == "yes"
    # Only in that namespace, only reading, and not secrets.
    r = as_sa("get", "pods", "-n", "default")
    assert forbidden(user, "list", "pods", "default") in r.stderr
    r = as_sa("create", "configmap", "settings", "-n", ns, "--from-literal=a=b")
    assert f'configmaps is forbidden: {forbidden(user, "create", "configmaps", ns)}' in r.stderr
    r = as_sa("get", "secret", "db", "-n", ns)
    assert f'secrets "db" is forbidden: {forbidden(user, "get", "secrets", ns)}' in r.stderr
    r = as_sa("get", "nodes")
    assert f'nodes is forbidden: {forbidden(user, "list", "nodes")}' in r.stderr
    # The rules review behind `can-i --list`.
    listed = as_sa("auth", "can-i", "--list", "-n", ns).stdout
    assert "deployments.apps" in listed and "selfsubjectaccessreviews.authorization.k8s.io" in listed
    # The admin asks on its behalf by impersonating it.
    can = lambda *a: server.kubectl("auth", "can-i", *a, f"--as={user}", binary=kubectl_bin,
                                    check=False).stdout.strip()
    assert can("watch", "deployments.apps", "-n", ns) == "yes"
    assert can("delete", "pods", "-n", ns) == "no"
    assert can("list", "pods", "-n", "default") == "no"
    r = server.kubectl("get", "pods", "-n", "default", f"--as={user}", binary=kubectl_bin, check=False)
    assert forbidden(user, "list", "pods", "default") in r.stderr
    # A bound Role of its own namespace works the same; deleting the binding takes it away.
    server.kubectl("create", "role", "cm-writer", "--verb=create,delete", "--resource=configmaps", "-n", ns)
    server.kubectl("create", "rolebinding", "deployer-cm", "--role=cm-writer",
                   f"--serviceaccount={ns}:deployer", "-n", ns)
    wait_for(lambda: as_sa("create", "configmap", "settings", "-n", ns, "--from-literal=a=b").returncode == 0,
             what="the Role to take effect")
    server.kubectl("delete", "rolebinding", "deployer-view", "deployer-cm", "-n", ns)
    wait_for(lambda: as_sa("get", "pods", "-n", ns).returncode != 0, what="the bindings to be gone")


def test_nobody_grants_what_they_do_not_hold(server):
    ns = "rb-b"
    token = account(server, ns, "lead")
    user = f"system:serviceaccount:{ns}:lead"
    server.kubectl("create", "rolebinding", "lead-admin", "--clusterrole=admin",
                   f"--serviceaccount={ns}:lead", "-n", ns)
    as_lead = lambda *a, **kw: server.kubectl_token(token, *a, check=False, **kw)
    server.kubectl("create", "serviceaccount", "dev", "-n", ns)
    # admin holds edit, so the lead may hand it out in its namespace...
    wait_for(lambda: as_lead("create", "rolebinding", "dev-edit", "--clusterrole=edit",
                             f"--serviceaccount={ns}:dev", "-n", ns).returncode == 0, what="lead binds edit")
    # ...but not cluster-admin, and not a Role with more than it has.
    r = as_lead("create", "rolebinding", "dev-root", "--clusterrole=cluster-admin",
                f"--serviceaccount={ns}:dev", "-n", ns)
    assert r.returncode != 0
    assert (f'rolebindings.rbac.authorization.k8s.io "dev-root" is forbidden: user "{user}" '
            f'(groups=["system:serviceaccounts" "system:serviceaccounts:{ns}" "system:authenticated"]) '
            "is attempting to grant RBAC permissions not currently held:") in r.stderr, r.stderr
    assert '{APIGroups:["*"], Resources:["*"], Verbs:["*"]}' in r.stderr
    r = as_lead("create", "role", "nodes", "--verb=get", "--resource=nodes", "-n", ns)
    assert r.returncode != 0 and '{APIGroups:[""], Resources:["nodes"], Verbs:["get"]}' in r.stderr, r.stderr
    r = as_lead("create", "role", "escalate", "--verb=*", "--resource=pods", "-n", ns)
    assert r.returncode != 0 and '{APIGroups:[""], Resources:["pods"], Verbs:["*"]}' in r.stderr, r.stderr
    assert as_lead("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", ns).returncode == 0
    # Nor may it act as someone else.
    r = as_lead("get", "pods", "-n", ns, extra=["--as=admin"])
    assert (f'users "admin" is forbidden: {forbidden(user, "impersonate", "users")}') in r.stderr, r.stderr
    r = as_lead("get", "pods", "-n", ns, extra=["--as=someone", "--as-group=system:masters"])
    assert "forbidden" in r.stderr
    # The cluster admin may bind anything (it holds everything).
    server.kubectl("create", "rolebinding", "dev-root", "--clusterrole=cluster-admin",
                   f"--serviceaccount={ns}:dev", "-n", ns)


def test_client_certificate_users_and_groups(server, tmp_path):
    tls = server.data_dir / "tls"
    key, csr, crt = tmp_path / "alice.key", tmp_path / "alice.csr", tmp_path / "alice.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", "/O=devs/CN=alice"], check=True, capture_output=True)
    ext = tmp_path / "client.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", tls / "ca.crt", "-CAkey", tls / "ca.key",
                    "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt], check=True, capture_output=True)
    as_alice = lambda *a: subprocess.run(
        [KUBECTL_132, "--kubeconfig", "/dev/null", "--server", server.url, "--certificate-authority", server.ca,
         "--client-certificate", crt, "--client-key", key, *a], capture_output=True, text=True, timeout=30)
    r = as_alice("auth", "whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    who = json.loads(r.stdout)["status"]["userInfo"]
    assert who["username"] == "alice" and set(who["groups"]) == {"devs", "system:authenticated"}
    r = as_alice("get", "deployments", "-A")
    assert f'deployments.apps is forbidden: {forbidden("alice", "list", "deployments", group="apps")}' in r.stderr
    server.kubectl("create", "clusterrolebinding", "devs-view", "--clusterrole=view", "--group=devs")
    wait_for(lambda: as_alice("get", "deployments", "-A").returncode == 0, what="the group's binding")
    assert as_alice("auth", "can-i", "delete", "deployments").stdout.strip() == "no"


def test_python_client_gets_403_then_access(server):
    ns = "rb-c"
    token = account(server, ns, "app")
    cfg = kubernetes.client.Configuration()
    cfg.host, cfg.ssl_ca_cert = server.url, server.ca
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(cfg))
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod(ns)
    assert e.value.status == 403
    status = json.loads(e.value.body)
    assert status["reason"] == "Forbidden" and status["details"] == {"kind": "pods"}
    # The admin's SubjectAccessReview agrees, before and after the grant.
    authz = kubernetes.client.AuthorizationV1Api(server.client())

    def allowed():
        review = kubernetes.client.V1SubjectAccessReview(spec=kubernetes.client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{ns}:app", groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=kubernetes.client.V1ResourceAttributes(namespace=ns, verb="list", resource="pods")))
        return authz.create_subject_access_review(review).status
    assert allowed().allowed is False
    server.kubectl("create", "rolebinding", "app-view", "--clusterrole=view", f"--serviceaccount={ns}:app", "-n", ns)
    wait_for(lambda: allowed().allowed, what="the review to allow")
    assert 'RoleBinding "app-view/rb-c" of ClusterRole "view"' in allowed().reason
    assert core.list_namespaced_pod(ns).items == []


def test_default_policy_is_reconciled_when_the_server_starts(server):
    """As upstream at every start (so an upgrade brings new default permissions): a default role a
    user stripped gets its rules back beside the user's, a missing subject returns to a default
    binding, and a default the user pinned with autoupdate=false is left as it is."""
    server.kubectl("patch", "clusterrole", "system:discovery", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/rules", "value": [{"nonResourceURLs": ["/custom"], "verbs": ["get"]}]}]))
    server.kubectl("patch", "clusterrolebinding", "system:basic-user", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/subjects", "value": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}]))
    server.kubectl("annotate", "clusterrole", "system:auth-delegator", "--overwrite",
                   "rbac.authorization.kubernetes.io/autoupdate=false")
    server.kubectl("patch", "clusterrole", "system:auth-delegator", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/rules", "value": [{"nonResourceURLs": ["/pinned"], "verbs": ["get"]}]}]))
    server.stop()
    server.start()
    urls = {u for r in server.json("get", "clusterrole", "system:discovery")["rules"]
            for u in r.get("nonResourceURLs", [])}
    assert {"/custom", "/api", "/apis/*", "/version", "/openapi/*"} <= urls, urls
    subjects = server.json("get", "clusterrolebinding", "system:basic-user")["subjects"]
    assert {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"} in subjects
    assert {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"} in subjects
    pinned = server.json("get", "clusterrole", "system:auth-delegator")
    assert pinned["rules"] == [{"nonResourceURLs": ["/pinned"], "verbs": ["get"]}]
