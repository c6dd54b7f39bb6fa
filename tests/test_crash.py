"""Crash consistency: SIGKILL the server in the middle of a stream of writes
and a watch, restart it on the same data, and check that every acknowledged
write survived and that a watch resumed from the last version seen before the
kill delivers every later change exactly once, in order."""

import http.client
import json
import os
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from conftest import Server

NS = "default"
CM = f"/api/v1/namespaces/{NS}/configmaps"
WRITERS = 4


class Conn:
    """One keep-alive HTTPS connection with the admin bearer token."""

    def __init__(self, server, timeout=10):
        self.ctx = ssl.create_default_context(cafile=server.ca)
        self.ctx.check_hostname = False
        self.port = server.port
        self.token = server.token
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return r.status, json.loads(r.read() or b"null")
        except Exception:
            self.conn.close()
            self.conn = None
            raise

    def stream(self, path):
        """Opens a watch; returns the response to read lines from."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=self.timeout)
        conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        return conn, r


def writer(server, idx, acked, stop, errors):
    """Creates ConfigMaps and updates them; records what the server acknowledged.

    acked[name] = list of (resourceVersion, value, is_create) for each 2xx."""
    c = Conn(server)
    live = []  # (name, last acknowledged object)
    i = 0
    while not stop.is_set():
        try:
            if live and i % 3 != 0:
                name, obj = live[i % len(live)]
                v = int(obj["data"]["v"]) + 1
                obj = dict(obj, data={"v": str(v)})
                code, out = c.request("PUT", f"{CM}/{name}", obj)
                if code == 200:
                    acked[name].append((int(out["metadata"]["resourceVersion"]), v, False))
                    live[i % len(live)] = (name, out)
                elif code != 409:
                    errors.append((code, out))
            else:
                name = f"crash-{idx}-{i}"
                acked[name] = []
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                        "data": {"v": "0"}}
                code, out = c.request("POST", CM, body)
                if code == 201:
                    acked[name].append((int(out["metadata"]["resourceVersion"]), 0, True))
                    live.append((name, out))
                else:
                    errors.append((code, out))
        except (OSError, http.client.HTTPException, ValueError):
            if stop.is_set():
                return
            # The server is gone (killed): stop writing.
            return
        i += 1


def watcher(server, from_rv, events, ready):
    c = Conn(server, timeout=30)
    try:
        conn, r = c.stream(f"{CM}?watch=true&resourceVersion={from_rv}&timeoutSeconds=60")
    except (OSError, http.client.HTTPException):
        ready.set()
        return
    ready.set()
    try:
        while True:
            line = r.readline()
            if not line:
                return
            ev = json.loads(line)
            obj = ev["object"]
            if ev["type"] == "ERROR":
                events.append(("ERROR", obj.get("message"), 0, None))
                return
            events.append((ev["type"], obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"]),
                           obj.get("data", {}).get("v")))
    except (OSError, http.client.HTTPException, ValueError):
        return


def wait_ready(server, deadline):
    c = Conn(server, timeout=2)
    while time.time() < deadline:
        try:
            code, _ = c.request("GET", CM + "?limit=1")
            if code == 200:
                return True
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.02)
    return False


@pytest.fixture(params=["sqlite", "etcd"])
def crash_server(request):
    datastore = ""
    if request.param == "etcd":
        e = request.getfixturevalue("etcd")
        subprocess.run(["etcdctl", "--endpoints", e.endpoint, "del", "--prefix", "/registry/"],
                       capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
        datastore = e.endpoint
    s = Server(datastore=datastore)
    yield s
    s.stop()
    shutil.rmtree(s.data_dir, ignore_errors=True)


def test_kill9_mid_stream_loses_no_acknowledged_write(crash_server):
    s = crash_server
    c = Conn(s)
    code, lst = c.request("GET", CM)
    assert code == 200
    start_rv = int(lst["metadata"]["resourceVersion"])

    events, ready = [], threading.Event()
    w = threading.Thread(target=watcher, args=(s, start_rv, events, ready), daemon=True)
    w.start()
    assert ready.wait(10)

    acked, errors, stop = {}, [], threading.Event()
    threads = [threading.Thread(target=writer, args=(s, i, acked, stop, errors), daemon=True)
               for i in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    s.kill9()
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive(), "writer hung after the kill"
    w.join(15)
    assert not w.is_alive(), "watcher hung after the kill"
    assert not errors, errors[:5]
    pre_kill = list(events)
    created = {n for n, a in acked.items() if a and a[0][2]}
    assert len(created) >= 10, f"too few acknowledged writes before the kill: {len(created)}"

    # Restart on the same data; it must serve again quickly.
    t0 = time.time()
    s.start()
    assert wait_ready(s, t0 + 10), "server did not answer after restart"
    restart = time.time() - t0
    assert restart < 2.0, f"restart took {restart:.2f}s"

    # Every acknowledged write is there, with at least the acknowledged content.
    c = Conn(s)
    code, lst = c.request("GET", CM)
    assert code == 200
    final = {o["metadata"]["name"]: o for o in lst["items"] if o["metadata"]["name"].startswith("crash-")}
    for name, writes in acked.items():
        if not writes or not writes[0][2]:
            continue  # the create was never acknowledged: may or may not exist
        assert name in final, f"acknowledged create of {name} lost"
        best = max(v for _, v, _ in writes)
        assert int(final[name]["data"]["v"]) >= best, (name, final[name]["data"], writes)
        assert int(final[name]["metadata"]["resourceVersion"]) >= max(rv for rv, _, _ in writes)

    # The pre-kill stream was in order, without duplicates or errors.
    assert all(e[0] != "ERROR" for e in pre_kill), pre_kill[-1:]
    pre_rvs = [e[2] for e in pre_kill]
    assert pre_rvs == sorted(set(pre_rvs)), "pre-kill watch out of order or duplicated"

    # Resume from the last version seen before the kill.
    last_seen = pre_rvs[-1] if pre_rvs else start_rv
    wanted = {int(o["metadata"]["resourceVersion"]) for o in final.values()}
    conn, r = c.stream(f"{CM}?watch=true&resourceVersion={last_seen}&timeoutSeconds=10")
    resumed = []
    try:
        while not wanted <= {e[2] for e in pre_kill + resumed}:
            line = r.readline()
            if not line:
                break
            ev = json.loads(line)
            obj = ev["object"]
            assert ev["type"] != "ERROR", obj
            resumed.append((ev["type"], obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"]),
                            obj.get("data", {}).get("v")))
    finally:
        conn.close()
    resumed = [e for e in resumed if e[1].startswith("crash-")]
    rvs = [e[2] for e in resumed]
    assert all(rv > last_seen for rv in rvs), (last_seen, rvs[:5])
    assert rvs == sorted(set(rvs)), "resumed watch out of order or duplicated"

    union = [e for e in pre_kill if e[1].startswith("crash-")] + resumed
    union_rvs = [e[2] for e in union]
    assert union_rvs == sorted(set(union_rvs)), "pre-kill and resumed events overlap or go back"
    seen_rvs = set(union_rvs)
    # No gaps: every acknowledged write and every final state was delivered.
    for name, writes in acked.items():
        for rv, v, is_create in writes:
            assert rv in seen_rvs, f"write {name}@{rv} (v={v}) never delivered to the watch"
    missing = {n: int(o["metadata"]["resourceVersion"]) for n, o in final.items()
               if int(o["metadata"]["resourceVersion"]) not in seen_rvs}
    assert not missing, f"final states never delivered: {missing}"
    # Each acknowledged create is ADDED exactly once, and nothing else is ADDED twice.
    added = {}
    for typ, name, rv, _ in union:
        if typ == "ADDED":
            added[name] = added.get(name, 0) + 1
    for name in created:
        assert added.get(name) == 1, f"{name} ADDED {added.get(name, 0)} times"
    assert all(n == 1 for n in added.values()), {k: v for k, v in added.items() if v != 1}
    assert set(added) == set(final), (set(final) - set(added), set(added) - set(final))
