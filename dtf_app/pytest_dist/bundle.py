"""Content-addressed bundles of a test suite's rootdir, for workers that do not share the filesystem.

The client packs the rootdir into a deterministic ``tar.gz`` (sorted names, zeroed times and owners),
so the same tree always gives the same bytes and the same SHA-256: the hash names the bundle on the
coordinator and in each worker's cache, and an unchanged suite is uploaded and unpacked once.

Which files: ``git ls-files --cached --others --exclude-standard`` when the rootdir is in a git work
tree (that is exactly what .gitignore allows); otherwise a walk that applies every ``.gitignore`` it finds
(gitignore semantics from the ``pathspec`` library) and skips the usual caches and virtual environments.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""The coordinator's request-size limit: a bigger suite must be installed on the workers (--pyargs)."""
ALWAYS_SKIPPED = frozenset({".git", "__pycache__", ".pytest_cache", ".venv", "venv", ".tox", ".nox",
                            "node_modules", ".mypy_cache", ".ruff_cache", "dtf-data"})
HASH_LENGTH = 64


class BundleError(Exception):
    """The rootdir cannot be bundled, or a bundle is unusable; the message says why."""


def is_bundle_hash(value: object) -> bool:
    """Whether ``value`` is a bundle name: 64 lowercase hex digits (a SHA-256)."""
    return (isinstance(value, str) and len(value) == HASH_LENGTH
            and all(c in "0123456789abcdef" for c in value))


def list_files(root: Path) -> list[str]:
    """The files of ``root`` to bundle, as sorted POSIX paths relative to it."""
    root = root.resolve()
    files = _git_files(root)
    if files is None:
        files = _walk_files(root)
    return sorted(f for f in files if (root / f).is_file() and not (root / f).is_symlink()
                  and not ALWAYS_SKIPPED.intersection(Path(f).parts))


def _git_files(root: Path) -> list[str] | None:
    if shutil.which("git") is None:
        return None
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard", "--", "."], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if listed.returncode != 0:
        return None
    return [p for p in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _walk_files(root: Path) -> list[str]:
    import pathspec

    specs: list[tuple[str, pathspec.PathSpec]] = []  # (directory relative to root, its .gitignore rules)
    found: list[str] = []
    for current, dirs, names in os.walk(root):
        rel_dir = Path(current).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in names:
            try:
                lines = (Path(current) / ".gitignore").read_text(errors="replace").splitlines()
                specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))
            except OSError:
                pass

        def ignored(rel: str, is_dir: bool) -> bool:
            for base, spec in specs:
                if base and not rel.startswith(base + "/"):
                    continue
                inner = rel[len(base) + 1:] if base else rel
                if spec.match_file(inner + ("/" if is_dir else "")):
                    return True
            return False

        dirs[:] = sorted(d for d in dirs if d not in ALWAYS_SKIPPED
                         and not ignored(f"{rel_dir}/{d}" if rel_dir else d, True))
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not ignored(rel, False):
                found.append(rel)
    return found


def make_bundle(root: Path) -> tuple[str, bytes, int]:
    """Pack ``root``; returns (sha256 hex, tar.gz bytes, file count). Raises BundleError."""
    files = list_files(root)
    if not files:
        raise BundleError(f"nothing to bundle under {root} (every file is ignored by .gitignore?)")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            path = root / rel
            try:
                data = path.read_bytes()
                executable = os.access(path, os.X_OK)
            except OSError as exc:
                raise BundleError(f"cannot read {path}: {exc}") from None
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o755 if executable else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    # mtime=0 in the gzip header too: the bytes depend on the content only.
    packed = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    if len(packed) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle of {root} is {len(packed) // (1024 * 1024)} MiB, more than the "
                          f"{MAX_BUNDLE_BYTES // (1024 * 1024)} MiB a coordinator accepts; add large files to "
                          ".gitignore, or install the suite on the workers and use --pyargs")
    return hashlib.sha256(packed).hexdigest(), packed, len(files)


def unpack(data: bytes, digest: str, cache_dir: Path) -> Path:
    """Unpack a bundle into ``cache_dir/<digest>`` (once; atomic rename) and return that directory.

    Checks the hash first and refuses members that would land outside the directory (tarfile's
    ``data`` filter), so a bundle cannot write elsewhere on the worker.
    """
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(f"bundle {digest[:12]} arrived corrupted (its SHA-256 does not match)")
    target = cache_dir / digest
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{digest}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleError(f"bundle {digest[:12]} cannot be unpacked: {exc}") from None
    try:
        staging.rename(target)
    except OSError:
        # Another task unpacked the same bundle meanwhile: theirs is identical.
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target
