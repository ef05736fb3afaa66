"""The Raft log directory and its files are private to their owner whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dtf_app.raft.log import DurableStorage
from dtf_app.raft.types import Entry, HardState


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_log_dir_and_files_are_private_under_umask_000(tmp_path: Path) -> None:
    directory = tmp_path / "raft" / "log"
    old = os.umask(0)
    try:
        s = DurableStorage(directory)
        s.append([Entry(term=1, index=i, kind="normal", data=b"x") for i in range(1, 6)])
        s.set_hard_state(HardState(term=1, vote=None, commit=5))
        s.sync()
        s.create_snapshot(5, b"state")
        s.close()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "raft") == 0o700 and _mode(directory) == 0o700
    files = [p for p in directory.iterdir() if p.is_file()]
    assert any(p.name.startswith("wal-") for p in files) and any(p.name.startswith("snap-") for p in files)
    assert {p.name: oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}


def test_loose_modes_of_an_existing_log_are_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        s.append([Entry(term=1, index=1, kind="normal", data=b"x")])
        s.sync()
    os.chmod(directory, 0o755)
    for path in directory.iterdir():
        os.chmod(path, 0o644)
    with DurableStorage(directory) as s:
        assert s.last_index() == 1
    assert _mode(directory) == 0o700
    assert all(_mode(p) == 0o600 for p in directory.iterdir())
