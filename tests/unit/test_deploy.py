"""dtf deploy-script (paths converted per platform, quoting, pid file, env) and platform detection."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from dtf_app.cli import main
from dtf_app.config import Settings
from dtf_app.deploy import convert_path, make_plan, render
from dtf_plugins.hardware import container, platform_probe


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DTF_") or name in ("CONFIG_FILE", "COORDINATOR_URL", "WORKER_ID", "COORDINATOR_ID"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("path", "platform", "kind", "expected"), [
    ("./dtf-data", "linux", "data", "/var/lib/dtf/dtf-data"),
    ("/srv/dtf", "linux", "data", "/srv/dtf"),
    ("./dtf-data", "windows", "data", r"C:\ProgramData\DTF\data\dtf-data"),
    ("/var/lib/distributed-testing-worker/worker.duckdb", "windows", "data",
     r"C:\ProgramData\DTF\var\lib\distributed-testing-worker\worker.duckdb"),
    (r"D:\dtf\data", "windows", "data", r"D:\dtf\data"),
    (r"D:\dtf\data", "linux", "data", "/var/lib/dtf/dtf/data"),
    ("logs", "macos", "logs", "/usr/local/var/log/dtf/logs"),
    ("./dtf-data", "container", "data", "/app/data/dtf-data"),
])
def test_convert_path(path: str, platform: str, kind: str, expected: str) -> None:
    assert convert_path(path, platform, kind) == expected


def test_windows_scripts_use_windows_paths_and_quoting() -> None:
    settings = Settings(mode="worker", data_dir="./it's data", coordinator=["http://c:8080"], api_key="SECRET-KEY",
                        tags=["gpu", "lab a"])
    files = render(make_plan(settings, "windows"))
    assert set(files) == {"install.ps1", "start.cmd"}
    for text in files.values():
        assert "\r\n" in text and "\n" not in text.replace("\r\n", "")  # CRLF throughout
        assert "SECRET-KEY" not in text  # the key is never written into a script
        assert "/var/" not in text and "/app/" not in text
    data = r"C:\ProgramData\DTF\data\it's data"
    install = files["install.ps1"]
    # PowerShell single quotes: a ' inside doubles; the service line is one CommandLineToArgvW command line.
    assert r"'C:\ProgramData\DTF\data\it''s data'" in install
    assert ("-BinaryPathName '\"C:\\Program Files\\DTF\\dtf.exe\" --mode worker --data-dir "
            "\"C:\\ProgramData\\DTF\\data\\it''s data\" --log-path C:\\ProgramData\\DTF\\logs --pid-file "
            "C:\\ProgramData\\DTF\\run\\dtf-worker.pid'") in install
    assert "[Environment]::SetEnvironmentVariable('DTF_TAGS', 'gpu,lab a', 'Machine')" in install
    start = files["start.cmd"]
    assert start.startswith("@echo off\r\n")
    assert 'set "DTF_COORDINATOR=http://c:8080"' in start
    assert f'if not exist "{data}" mkdir "{data}"' in start
    assert f'"C:\\Program Files\\DTF\\dtf.exe" --mode worker --data-dir "{data}"' in start


def test_windows_percent_is_escaped_in_batch_files() -> None:
    files = render(make_plan(Settings(mode="worker", data_dir="./100%"), "windows"))
    assert r'"C:\ProgramData\DTF\data\100%%"' in files["start.cmd"]


def test_linux_scripts_are_valid_shell_with_unit_env_and_pid_file(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text('security:\n  jwt_secret: "${JWT_SECRET}"\n')
    settings = Settings(mode="coordinator", data_dir="./dtf data", port=9000, log_path="/var/log/dtf-test")
    files = render(make_plan(settings, "linux", config_file=str(config)))
    assert set(files) == {"install.sh", "start.sh", "dtf-coordinator.service"}
    for name in ("install.sh", "start.sh"):
        path = tmp_path / name
        path.write_text(files[name])
        check = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    unit = files["dtf-coordinator.service"]
    assert ("ExecStart=/opt/dtf/dtf --mode coordinator --data-dir '/var/lib/dtf/dtf data' --log-path "
            "/var/log/dtf-test --pid-file /run/dtf/dtf-coordinator.pid --config /etc/dtf/coordinator.yaml") in unit
    assert "PIDFile=/run/dtf/dtf-coordinator.pid" in unit and "NoNewPrivileges=true" in unit
    assert "DTF_PORT=9000" in files["install.sh"]
    assert "# JWT_SECRET=<referenced by /etc/dtf/coordinator.yaml; set it here>" in files["install.sh"]
    assert "export DTF_PORT=9000" in files["start.sh"]


def test_macos_plist_parses_and_runs_the_same_command() -> None:
    plan = make_plan(Settings(mode="worker", coordinator=["http://c:8080"]), "macos")
    files = render(plan)
    plist = plistlib.loads(files["org.dtf.worker.plist"].encode())
    assert plist["ProgramArguments"] == plan.argv()
    assert plist["ProgramArguments"][0] == "/usr/local/opt/dtf/dtf"
    assert plist["EnvironmentVariables"] == {"DTF_COORDINATOR": "http://c:8080"}
    assert plist["StandardErrorPath"].startswith("/usr/local/var/log/dtf/")


def test_container_entrypoint_binds_all_interfaces(tmp_path: Path) -> None:
    files = render(make_plan(Settings(mode="coordinator"), "container"))
    entry = tmp_path / "entry.sh"
    entry.write_text(files["docker-entrypoint.sh"])
    assert subprocess.run(["sh", "-n", str(entry)]).returncode == 0
    assert "-e DTF_HOST=0.0.0.0" in files["docker-run.sh"] and "-p 8080:8080" in files["docker-run.sh"]


def test_cli_deploy_script_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["deploy-script", "--platform", "windows", "--mode", "worker", "--coordinator",
                 "http://coord:8080", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["install.ps1", "start.cmd"]
    assert b"\r\n" in (out / "start.cmd").read_bytes()
    assert main(["deploy-script", "--platform", "linux"]) == 0
    printed = capsys.readouterr().out
    assert "# ----- install.sh -----" in printed and "--mode worker" in printed
    # The config is read like a node reads it: its errors are config errors (exit 2).
    bad = tmp_path / "c.json"
    bad.write_text('{"database": {"type": "postgresql"}}')
    assert main(["deploy-script", "--platform", "linux", "--config", str(bad)]) == 2


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="PowerShell is not installed here")
def test_windows_install_script_parses_in_powershell(tmp_path: Path) -> None:
    script = tmp_path / "install.ps1"
    script.write_bytes(render(make_plan(Settings(mode="worker"), "windows"))["install.ps1"].encode())
    check = subprocess.run(["pwsh", "-NoProfile", "-Command",
                            f"[System.Management.Automation.Language.Parser]::ParseFile('{script}', "
                            "[ref]$null, [ref]$e) | Out-Null; $e.Count"], capture_output=True, text=True)
    assert check.stdout.strip() == "0", check.stdout + check.stderr


# -- platform detection ------------------------------------------------------------------------------------

def test_linux_distribution_from_os_release() -> None:
    assert platform_probe.linux_distribution({"ID": "ubuntu", "VERSION_ID": "24.04", "PRETTY_NAME": "Ubuntu 24.04 LTS",
                                              "ID_LIKE": "debian"}) == {
        "id": "ubuntu", "version_id": "24.04", "name": "Ubuntu 24.04 LTS", "like": "debian"}
    assert platform_probe.linux_distribution({}) == {"id": "", "version_id": "", "name": "", "like": ""}


def test_macos_apple_silicon_including_rosetta() -> None:
    assert platform_probe.macos_details("15.1", "arm64", translated=False) == {
        "version": "15.1", "apple_silicon": True, "rosetta": False}
    assert platform_probe.macos_details("15.1", "x86_64", translated=True)["apple_silicon"] is True
    assert platform_probe.macos_details("13.0", "x86_64", translated=False)["apple_silicon"] is False


def test_this_machine_reports_its_distribution() -> None:
    info = platform_probe.probe()["platform"]
    if info["system"] == "Linux":
        assert "distribution" in info and isinstance(info["distribution"]["id"], str)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_container_limits_cgroup_v2(tmp_path: Path) -> None:
    write_tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1\n", "sys/fs/cgroup/kubepods/pod1/cgroup.controllers": "cpu memory",
                          "sys/fs/cgroup/kubepods/pod1/cpu.max": "150000 100000\n",
                          "sys/fs/cgroup/kubepods/pod1/memory.max": str(2 * 1024**3) + "\n"})
    assert container.cgroup_limits(str(tmp_path)) == {"cgroup": "v2", "cpu_limit": 1.5, "memory_limit_gb": 2.0}
    write_tree(tmp_path, {"sys/fs/cgroup/kubepods/pod1/cpu.max": "max 100000\n",
                          "sys/fs/cgroup/kubepods/pod1/memory.max": "max\n"})
    assert container.cgroup_limits(str(tmp_path))["cpu_limit"] is None


def test_container_limits_cgroup_v1(tmp_path: Path) -> None:
    write_tree(tmp_path, {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
                          "sys/fs/cgroup/memory/memory.limit_in_bytes": str(512 * 1024**2)})
    assert container.cgroup_limits(str(tmp_path)) == {"cgroup": "v1", "cpu_limit": 2.0, "memory_limit_gb": 0.5}
    write_tree(tmp_path, {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                          "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"})
    assert container.cgroup_limits(str(tmp_path)) == {"cgroup": "v1", "cpu_limit": None, "memory_limit_gb": None}
    assert container.cgroup_limits(str(tmp_path / "none")) == {"cgroup": None, "cpu_limit": None, "memory_limit_gb": None}
