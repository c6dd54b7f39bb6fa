"""The Kubernetes Python client against kobune: list pagination, watch
resumption and selector transitions, patch types, delete preconditions and
propagation, on both datastore backends."""

import threading
import uuid

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from conftest import wait_for


@pytest.fixture(scope="module")
def core(server):
    return kubernetes.client.CoreV1Api(server.client())


ROOT_CA = "kube-root-ca.crt"


def make_ns(core):
    """A new namespace, once its controllers have given it the ConfigMap every namespace has."""
    ns = "c-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(lambda: any(i.metadata.name == ROOT_CA for i in core.list_namespaced_config_map(ns).items),
             what=f"{ROOT_CA} in {ns}")
    return ns


def cm(name, labels=None, data=None):
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data or {}}


def test_list_pagination(core):
    ns = make_ns(core)
    for i in range(25):
        core.create_namespaced_config_map(ns, cm(f"p{i:02d}"))
    seen, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_config_map(ns, limit=10, _continue=token)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 26 - len(seen)
    assert pages == 3 and seen == sorted([f"p{i:02d}" for i in range(25)] + [ROOT_CA])


def test_watch_resumes_from_resource_version(core):
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("a"))
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.patch_namespaced_config_map("a", ns, {"data": {"k": "v"}})
    core.create_namespaced_config_map(ns, cm("b"))
    core.delete_namespaced_config_map("a", ns)
    w = kubernetes.watch.Watch()
    events = []
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10):
        events.append((ev["type"], ev["object"].metadata.name))
        if len(events) == 3:
            w.stop()
    assert events == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_selector_transitions(core):
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("x", {"tier": "web"}))
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.patch_namespaced_config_map("x", ns, {"metadata": {"labels": {"tier": "db"}}})
    core.patch_namespaced_config_map("x", ns, {"metadata": {"labels": {"tier": "web"}}})
    w = kubernetes.watch.Watch()
    events = []
    for ev in w.stream(core.list_namespaced_config_map, ns, label_selector="tier=web", resource_version=rv, timeout_seconds=10):
        events.append(ev["type"])
        if len(events) == 2:
            w.stop()
    assert events == ["DELETED", "ADDED"]


def test_watch_from_current_state_sends_added(core):
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("one"))
    w = kubernetes.watch.Watch()
    added = []
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version="0", timeout_seconds=10):
        added.append((ev["type"], ev["object"].metadata.name))
        if len(added) == 2:
            w.stop()
    assert sorted(added) == [("ADDED", ROOT_CA), ("ADDED", "one")]


def test_too_old_resource_version_is_410():
    # A server with a tiny watch cache, so history runs out after a few writes.
    from conftest import Server
    s = Server(extra_args=["--watch-cache-size", "5"])
    try:
        c = kubernetes.client.CoreV1Api(s.client())
        for i in range(10):
            c.create_namespaced_config_map("default", cm(f"h{i}"))
        with pytest.raises(ApiException) as e:
            list(kubernetes.watch.Watch().stream(c.list_namespaced_config_map, "default", resource_version="2", timeout_seconds=2))
        assert e.value.status == 410 and "too old resource version" in str(e.value)
        # A recent version still resumes.
        rv = c.list_namespaced_config_map("default").metadata.resource_version
        c.create_namespaced_config_map("default", cm("late"))
        ev = next(iter(kubernetes.watch.Watch().stream(c.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=2)))
        assert ev["type"] == "ADDED" and ev["object"].metadata.name == "late"
    finally:
        s.stop()


def test_patch_types_and_conflicts(core):
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("p", {"a": "1"}, {"x": "1"}))
    core.patch_namespaced_config_map("p", ns, {"data": {"y": "2"}})  # strategic merge (default)
    got = core.read_namespaced_config_map("p", ns)
    assert got.data == {"x": "1", "y": "2"}
    got.data["z"] = "3"
    core.replace_namespaced_config_map("p", ns, got)
    got.data["w"] = "4"  # stale resourceVersion now
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("p", ns, got)
    assert e.value.status == 409 and "Conflict" in e.value.body


def test_delete_preconditions_and_dry_run(core):
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("d"))
    with pytest.raises(ApiException) as e:
        core.delete_namespaced_config_map("d", ns, body={"preconditions": {"uid": "not-the-uid"}})
    assert e.value.status == 409 and "Precondition failed" in e.value.body
    core.delete_namespaced_config_map("d", ns, dry_run="All")
    assert core.read_namespaced_config_map("d", ns).metadata.name == "d"
    core.delete_namespaced_config_map("d", ns)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("d", ns)
    assert e.value.status == 404


def test_concurrent_creates_get_distinct_versions(core):
    ns = make_ns(core)
    rvs, errs = [], []

    def work(i):
        try:
            rvs.append(int(core.create_namespaced_config_map(ns, cm(f"c{i}")).metadata.resource_version))
        except Exception as ex:  # noqa: BLE001
            errs.append(ex)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errs and len(set(rvs)) == 32
    # Every namespace also holds kube-root-ca.crt, as upstream's.
    assert len([i for i in core.list_namespaced_config_map(ns).items if i.metadata.name != ROOT_CA]) == 32


def test_shared_etcd_foreign_writes_do_not_stall(server, core):
    """Writes by others outside /registry/ move etcd's revision; kobune must keep serving."""
    if not server.datastore:
        pytest.skip("only meaningful on etcd")
    import os
    import subprocess
    for i in range(3):
        subprocess.run(["etcdctl", "--endpoints", server.datastore, "put", f"/someone-else/k{i}", "v"],
                       check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
    ns = make_ns(core)
    core.create_namespaced_config_map(ns, cm("after-foreign"))
    assert [i.metadata.name for i in core.list_namespaced_config_map(ns).items
            if i.metadata.name != ROOT_CA] == ["after-foreign"]
