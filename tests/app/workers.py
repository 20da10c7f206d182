"""Start and stop real ranking-worker processes on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_LOADER = "tests.app.fixture_scorer:load_scorer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", timeout=5).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_workers(env: dict[str, str], delays_ms: list[float], loader: str = FIXTURE_LOADER,
                  timeout_s: float = 120.0, extra_args: tuple[str, ...] = ()) -> list[WorkerProcess]:
    """Start one worker per entry of ``delays_ms`` at once and wait until each returns 200 on /status."""
    workers = [launch_worker(env, delay_ms, loader, extra_args) for delay_ms in delays_ms]
    try:
        for worker in workers:
            wait_ready(worker, timeout_s)
    except RuntimeError:
        for worker in workers:
            worker.stop()
        raise
    return workers


def start_worker(env: dict[str, str], delay_ms: float = 0.0, loader: str = FIXTURE_LOADER,
                 timeout_s: float = 120.0) -> WorkerProcess:
    """Start `vidrec worker` on a free port with ``env`` (VIDREC_* settings) and wait until /status returns 200."""
    worker = launch_worker(env, delay_ms, loader)
    wait_ready(worker, timeout_s)
    return worker


def launch_worker(env: dict[str, str], delay_ms: float = 0.0, loader: str = FIXTURE_LOADER,
                  extra_args: tuple[str, ...] = ()) -> WorkerProcess:
    port = free_port()
    full_env = {**os.environ, **env, "VIDREC_SCORER_LOADER": loader}
    log_file = tempfile.NamedTemporaryFile(prefix=f"vidrec-worker-{port}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--port", str(port), "--delay-ms", str(delay_ms),
         "--worker-id", f"test-{port}", *extra_args],
        cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return WorkerProcess(f"http://127.0.0.1:{port}", process, Path(log_file.name))


def wait_ready(worker: WorkerProcess, timeout_s: float) -> None:
    process, port = worker.process, worker.url.rsplit(":", 1)[1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker on port {port} exited with {process.returncode}: "
                               f"{worker.log()[-2000:]}")
        try:
            if httpx.get(f"{worker.url}/status", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"worker on port {port} did not answer /status within {timeout_s:.0f} s")
