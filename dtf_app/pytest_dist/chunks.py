"""The shape of a ``dtf pytest`` chunk, shared by the coordinator (validation), the client and workers.

A chunk is an ordinary ``test`` task whose config carries ``pytest_dist`` instead of ``test_file``::

    {"run_id": str,            # groups the chunks of one `dtf pytest` invocation
     "chunk": int,             # its number within the run
     "suite": str,             # the suite key: bundle (or pyargs) + the worker-side pytest arguments
     "args": [str],            # pytest arguments for the worker's session (paths relative to workdir)
     "bundle": sha256 | null,  # the rootdir bundle to run from (null with --pyargs)
     "workdir": str,           # directory inside the bundle to start pytest in ("" = the bundle root)
     "nodeids": [str] | null,  # the tests to run, in order ...
     "shard": [i, n] | null,   # ... or the i-th of n shards of the collection (first run, no history)
     "digest": str | null,     # digest of the collection the client planned from (see remote.py)
     "verbose": int,           # the client's -v/-q level (assertion explanations depend on it); optional
     "stolen_from": str}       # the chunk task whose not-yet-started tail this is (work stealing); optional

Reports travel back in the result's ``tests`` rows (one per test, kept in DuckDB, not in the replicated
state): ``{"nodeid", "outcome", "duration", "message", "report": {"i": n, "r": [report, ...]}}`` where a
passing setup/teardown report without captured output is shortened to ``{"when", "duration", "start",
"stop"}`` and expanded again by :func:`expand_reports`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_NODEIDS_PER_CHUNK = 100_000
MAX_ARGS = 500
_KEYS = ("run_id", "chunk", "suite", "args", "bundle", "workdir", "nodeids", "shard", "digest", "verbose",
         "stolen_from")


class ChunkError(ValueError):
    """A chunk config is malformed; the message says where and what is accepted."""


def _strings(value: Any, where: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChunkError(f"{where} must be an array of strings")
    if len(value) > limit:
        raise ChunkError(f"{where} has {len(value)} entries; at most {limit}")
    return value


def validate_chunk(doc: Any, where: str = "pytest_dist") -> dict[str, Any]:
    """Check a chunk config; returns it. Raises ChunkError naming the field."""
    if not isinstance(doc, dict):
        raise ChunkError(f"{where} must be an object")
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise ChunkError(f"{where} has unknown keys {unknown}; accepted: {', '.join(_KEYS)}")
    for key in ("run_id", "suite"):
        if not isinstance(doc.get(key), str) or not doc[key] or len(doc[key]) > 200:
            raise ChunkError(f"{where}.{key} must be a non-empty string of at most 200 characters")
    chunk = doc.get("chunk", 0)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise ChunkError(f"{where}.chunk must be a non-negative integer")
    _strings(doc.get("args", []), f"{where}.args", MAX_ARGS)
    bundle = doc.get("bundle")
    if bundle is not None and not (isinstance(bundle, str) and len(bundle) == 64
                                   and all(c in "0123456789abcdef" for c in bundle)):
        raise ChunkError(f"{where}.bundle must be a SHA-256 (64 lowercase hex digits) or null")
    workdir = doc.get("workdir", "")
    if not isinstance(workdir, str) or workdir.startswith("/") or ".." in workdir.split("/"):
        raise ChunkError(f"{where}.workdir must be a relative path inside the bundle, got {workdir!r}")
    nodeids, shard = doc.get("nodeids"), doc.get("shard")
    if (nodeids is None) == (shard is None):
        raise ChunkError(f"{where} needs exactly one of nodeids (an array of pytest node ids) or shard ([i, n])")
    if nodeids is not None:
        _strings(nodeids, f"{where}.nodeids", MAX_NODEIDS_PER_CHUNK)
    if shard is not None and not (isinstance(shard, list) and len(shard) == 2
                                  and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
                                  and 0 <= shard[0] < shard[1] <= 10_000):
        raise ChunkError(f"{where}.shard must be [i, n] with 0 <= i < n <= 10000, got {shard!r}")
    digest = doc.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ChunkError(f"{where}.digest must be a string or null")
    verbose = doc.get("verbose", 0)
    if not isinstance(verbose, int) or isinstance(verbose, bool) or not -5 <= verbose <= 5:
        raise ChunkError(f"{where}.verbose must be an integer from -5 to 5 (pytest's -q/-v level), got {verbose!r}")
    stolen_from = doc.get("stolen_from")
    if stolen_from is not None and not (isinstance(stolen_from, str) and 0 < len(stolen_from) <= 200):
        raise ChunkError(f"{where}.stolen_from must be a task id or null")
    return doc


def suite_key(bundle: str | None, pyargs: bool, workdir: str, args: list[str]) -> str:
    """The key the duration history is kept under: what was run, and how it was collected."""
    text = json.dumps([bundle if not pyargs else "pyargs", workdir, args])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compact_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shorten the passing setup/teardown reports that say nothing but their timing."""
    out = []
    for report in reports:
        if (report.get("when") in ("setup", "teardown") and report.get("outcome") == "passed"
                and not report.get("sections") and not report.get("user_properties")
                and report.get("$report_type") == "TestReport" and "wasxfail" not in report):
            out.append({"when": report["when"], "duration": report.get("duration", 0.0),
                        "start": report.get("start", 0.0), "stop": report.get("stop", 0.0)})
        else:
            # Keywords are big (every marker and parent name) and no reporter reads them.
            out.append({k: v for k, v in report.items() if k != "keywords"})
    return out


def expand_reports(nodeid: str, compact: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inverse of :func:`compact_reports`: full serialized reports pytest can read back."""
    full = next((r for r in compact if "$report_type" in r), None)
    location = full.get("location") if full else None
    if location is None:
        path = nodeid.split("::", 1)[0]
        location = [path, None, nodeid.split("::", 1)[-1].replace("::", ".")]
    out = []
    for report in compact:
        if "$report_type" in report:
            out.append(dict(report, keywords=report.get("keywords") or {}))
        else:
            out.append({"$report_type": "TestReport", "nodeid": nodeid, "location": location, "keywords": {},
                        "outcome": "passed", "longrepr": None, "when": report["when"], "user_properties": [],
                        "sections": [], "duration": report.get("duration", 0.0),
                        "start": report.get("start", 0.0), "stop": report.get("stop", 0.0)})
    return out


def summarize(nodeid: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One per-test row (outcome, total duration, failure message) from its serialized reports."""
    outcome, message = "passed", None
    for report in reports:
        state = report.get("outcome")
        when = report.get("when")
        if state == "failed":
            outcome = "failed" if when == "call" and outcome != "error" else "error"
            message = message or _longrepr_text(report.get("longrepr"))
        elif state == "skipped" and outcome == "passed":
            outcome = "xfailed" if "wasxfail" in report else "skipped"
            message = message or _longrepr_text(report.get("longrepr"))
        elif state == "passed" and when == "call" and "wasxfail" in report:
            outcome = "xpassed"
    if message and len(message) > 2000:
        message = message[:2000] + "..."
    return {"nodeid": nodeid, "outcome": outcome,
            "duration": sum(float(r.get("duration") or 0.0) for r in reports), "message": message}


def _longrepr_text(longrepr: Any) -> str | None:
    if longrepr is None:
        return None
    if isinstance(longrepr, str):
        return longrepr
    if isinstance(longrepr, list) and len(longrepr) == 3:  # skip: [path, line, reason]
        return str(longrepr[2])
    if isinstance(longrepr, dict):
        crash = (longrepr.get("reprcrash") or {})
        if crash.get("message"):
            return str(crash["message"])
        return json.dumps(longrepr)[:2000]
    return str(longrepr)
