"""Container probe: are we inside Docker, Podman or Kubernetes?

Evidence, most specific first: ``KUBERNETES_SERVICE_HOST`` (set in every Kubernetes pod),
``/run/.containerenv`` (Podman), ``/.dockerenv`` (Docker), then cgroup paths of PID 1.
"""

from __future__ import annotations

import os
from pathlib import Path

_CGROUP_MARKERS = (("kubepods", "kubernetes"), ("docker", "docker"), ("containerd", "containerd"),
                   ("libpod", "podman"), ("lxc", "lxc"))


def probe(root: str = "/", environ: dict[str, str] | None = None) -> dict:
    """``{"container": {"in_container": bool, "runtime": str | None, "evidence": [str]}}``.

    ``root`` and ``environ`` exist so tests can point the probe at a fake filesystem tree.
    """
    env = os.environ if environ is None else environ
    base = Path(root)
    evidence: list[str] = []
    runtime: str | None = None
    if env.get("KUBERNETES_SERVICE_HOST"):
        evidence.append("KUBERNETES_SERVICE_HOST")
        runtime = "kubernetes"
    if (base / "run/.containerenv").exists():
        evidence.append("/run/.containerenv")
        runtime = runtime or "podman"
    if (base / ".dockerenv").exists():
        evidence.append("/.dockerenv")
        runtime = runtime or "docker"
    try:
        cgroup = (base / "proc/1/cgroup").read_text(errors="replace")
    except OSError:
        cgroup = ""
    for marker, name in _CGROUP_MARKERS:
        if marker in cgroup:
            evidence.append(f"/proc/1/cgroup mentions {marker}")
            runtime = runtime or name
            break
    return {"container": {"in_container": bool(evidence), "runtime": runtime, "evidence": evidence}}
