"""Private files and directories: created 0700/0600 whatever the umask, loose existing ones tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_app import fsutil


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_private_dir_creates_missing_parents_private(tmp_path: Path, open_umask: None) -> None:
    target = fsutil.private_dir(tmp_path / "a" / "b" / "c")
    for path in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert _mode(path) == 0o700


def test_existing_loose_paths_are_tightened_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    os.chmod(folder, 0o755)
    secret = folder / "state.snapshot"
    secret.write_text("x")
    os.chmod(secret, 0o644)
    with caplog.at_level("INFO", logger="dtf.fs"):
        fsutil.private_dir(folder)
        fsutil.private_file(secret)
    assert _mode(folder) == 0o700 and _mode(secret) == 0o600
    assert "was mode 0755; set to 0700" in caplog.text and "was mode 0644; set to 0600" in caplog.text


def test_a_folder_that_may_be_the_users_is_left_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    fsutil.private_dir(tmp_path, tighten=False)
    assert _mode(tmp_path) == 0o755


def test_open_private_creates_and_tightens(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "f"
    os.close(fsutil.open_private(path, os.O_WRONLY | os.O_CREAT))
    assert _mode(path) == 0o600
    os.chmod(path, 0o666)
    os.close(fsutil.open_private(path, os.O_WRONLY))
    assert _mode(path) == 0o600


def test_tasks_get_the_umask_the_process_had_before(open_umask: None) -> None:
    saved = fsutil._original_umask
    fsutil._original_umask = None
    try:
        fsutil.use_private_umask()
        assert fsutil.task_umask() == 0
        current = os.umask(0o077)
        assert current == 0o077
    finally:
        fsutil._original_umask = saved
