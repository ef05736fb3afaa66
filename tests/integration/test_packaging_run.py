"""The Dockerfile's entrypoint command, with its environment, really starts a coordinator on this machine.

No image can be built or pulled here; this runs what the image would run (``ENTRYPOINT`` + ``CMD`` with
the ``ENV`` lines), overriding only the host, port and paths that cannot hold on a test machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.harness import Cluster, wait_for
from tests.unit.test_packaging import PACKAGING, dockerfile_env, dockerfile_instructions


def test_dockerfile_entrypoint_starts_a_coordinator(cluster: Cluster, tmp_path: Path) -> None:
    instructions = dockerfile_instructions((PACKAGING / "docker" / "Dockerfile").read_text())
    entrypoint = json.loads(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    env = dockerfile_env(instructions)
    assert entrypoint == ["dtf"]
    env.update({"DTF_HOST": "127.0.0.1", "DTF_PORT": "0", "DTF_DATA_DIR": str(tmp_path / "data"),
                "DTF_LOG_PATH": str(tmp_path / "logs")})
    node = cluster.node(cmd, tmp_path / "container.log", env=env)  # `dtf` is `python -m dtf_app` here
    cluster.coordinator = node

    def serving() -> str | None:
        if node.proc.poll() is not None:
            raise AssertionError(f"entrypoint exited:\n{node.output()}")
        info = json.loads((tmp_path / "data" / "node.json").read_text())
        if info.get("pid") != node.proc.pid:
            return None
        # The HEALTHCHECK's URL: 503 while the node starts, 200 once it is ready.
        return info["url"] if httpx.get(info["url"] + "/status", timeout=5).status_code == 200 else None

    url = wait_for(serving, what="the entrypoint's coordinator")
    assert httpx.get(url + "/status", timeout=5).json()["ready"] is True
    assert any((tmp_path / "logs").glob("*.log"))
