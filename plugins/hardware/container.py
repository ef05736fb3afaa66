"""Container probe: are we inside Docker, Podman or Kubernetes?

Evidence, most specific first: ``KUBERNETES_SERVICE_HOST`` (set in every Kubernetes pod),
``/run/.containerenv`` (Podman), ``/.dockerenv`` (Docker), then cgroup paths of PID 1.

Limits come from this process's cgroup, v2 (``cpu.max``, ``memory.max``) or v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``memory.limit_in_bytes``): a container's real CPU and
memory budget, which ``os.cpu_count()`` and psutil do not show.
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
    return {"container": {"in_container": bool(evidence), "runtime": runtime, "evidence": evidence,
                          "limits": cgroup_limits(root)}}


_UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as a huge page-aligned number (9223372036854771712)


def cgroup_limits(root: str = "/") -> dict:
    """``{"cgroup": "v1"|"v2"|None, "cpu_limit": float | None, "memory_limit_gb": float | None}``.

    ``cpu_limit`` is in CPUs (quota / period); None means no limit (or no cgroup information).
    """
    base = Path(root) / "sys/fs/cgroup"
    own = _own_cgroup_path(Path(root))
    limits: dict = {"cgroup": None, "cpu_limit": None, "memory_limit_gb": None}
    v2_dirs = [d for d in (base / own.lstrip("/") if own else None, base) if d is not None]
    for directory in v2_dirs:
        if (directory / "cgroup.controllers").exists() or (directory / "cpu.max").exists():
            limits["cgroup"] = "v2"
            cpu = _read(directory / "cpu.max")
            if cpu:
                quota, _, period = cpu.partition(" ")
                if quota != "max" and quota.isdigit() and period.strip().isdigit() and int(period) > 0:
                    limits["cpu_limit"] = round(int(quota) / int(period), 3)
            memory = _read(directory / "memory.max")
            if memory and memory.isdigit():
                limits["memory_limit_gb"] = round(int(memory) / 1024**3, 3)
            if limits["cpu_limit"] is not None or limits["memory_limit_gb"] is not None:
                return limits
    quota = _read(base / "cpu" / "cpu.cfs_quota_us") or _read(base / "cpu,cpuacct" / "cpu.cfs_quota_us")
    period = _read(base / "cpu" / "cpu.cfs_period_us") or _read(base / "cpu,cpuacct" / "cpu.cfs_period_us")
    memory = _read(base / "memory" / "memory.limit_in_bytes")
    if quota is not None or memory is not None:
        limits["cgroup"] = limits["cgroup"] or "v1"
        if quota and quota.lstrip("-").isdigit() and int(quota) > 0 and period and period.isdigit() and int(period) > 0:
            limits["cpu_limit"] = round(int(quota) / int(period), 3)
        if memory and memory.isdigit() and int(memory) < _UNLIMITED_V1:
            limits["memory_limit_gb"] = round(int(memory) / 1024**3, 3)
    return limits


def _own_cgroup_path(root: Path) -> str | None:
    """The v2 path of this process's cgroup (the ``0::/path`` line of /proc/self/cgroup)."""
    text = _read(root / "proc/self/cgroup")
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
