"""A local image registry for pull tests: Debian's `docker-registry`
(distribution 2.x) on 127.0.0.1:<free port>, storage in a temp dir, plain
HTTP, optionally with htpasswd (bcrypt) basic auth. Images are pushed with
skopeo."""

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through the system's crypt(3); no extra wheel needed
except ImportError:  # Python 3.13 dropped crypt: use the bcrypt wheel then
    crypt = None


def have_registry_tools():
    return shutil.which("docker-registry") is not None and shutil.which("skopeo") is not None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcrypt_hash(password):
    """An htpasswd bcrypt hash through the system crypt(3) (libxcrypt)."""
    if crypt is None:
        import bcrypt
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not h or not h.startswith("$2"):
        raise RuntimeError("crypt(3) has no bcrypt support")
    return h


class Registry:
    """`with Registry(users={"alice": "pw"}) as reg:` ... `reg.host` is
    `127.0.0.1:PORT`."""

    def __init__(self, users=None):
        self.users = users or {}
        self.dir = Path(tempfile.mkdtemp(prefix="kobune-registry-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        cfg = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.dir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
        ]
        if self.users:
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
            cfg += ["auth:", "  htpasswd:", "    realm: kobune-test", f"    path: {htpasswd}"]
        (self.dir / "config.yml").write_text("\n".join(cfg) + "\n")
        self.log = open(self.dir / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")],
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited:\n" + self.logs())
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return self
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not start:\n" + self.logs())

    def logs(self):
        return (self.dir / "registry.log").read_text(errors="replace")

    def push(self, archive, repo_tag, creds=None):
        """Pushes an OCI archive to `host/repo_tag` with skopeo."""
        args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if creds:
            args += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
        args += [f"oci-archive:{archive}", f"docker://{self.host}/{repo_tag}"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {r.stderr}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
