import shutil
import subprocess

from tests.conftest import REPO_ROOT


def test_compose_file_is_valid():
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose (Debian package docker-compose) is needed to check the file"
    result = subprocess.run(
        [docker_compose, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--services"],
        capture_output=True, text=True,
        env={"VIDREC_API_READ_KEY": "r", "VIDREC_API_WRITE_KEY": "w", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"elasticsearch", "kibana", "api", "worker-1", "worker-2"} <= services
