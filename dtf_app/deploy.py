"""Deployment scripts from the current settings: ``dtf deploy-script --platform linux|windows|macos|container``.

The sources' cross-platform component generates install and startup scripts per platform and converts
paths between them. Here one :class:`Plan` (mode, executable, data/log dirs, pid file, environment) is
built from Settings with every path converted for the target platform, then rendered per platform:

* linux: ``install.sh`` (user, directories, binary, systemd unit, env file) and ``start.sh``;
* macos: ``install.sh`` (launchd plist in /Library/LaunchDaemons) and ``start.sh``;
* windows: ``install.ps1`` (directories, env, a service through the bundled wrapper) and ``start.cmd``;
* container: ``docker-entrypoint.sh`` and ``docker-run.sh`` (volumes, ports, env).

Secrets (the API key) are never written into a script: the env file gets a placeholder to fill in, read
by the service manager with restricted permissions.
"""

from __future__ import annotations

import ntpath
import posixpath
import shlex
import subprocess
from dataclasses import dataclass, field

from dtf_app.config import Settings

PLATFORMS = ("linux", "windows", "macos", "container")

# Where a relative path (./dtf-data) lands, and the service's own directories, per platform.
_ROOTS = {
    "linux": {"data": "/var/lib/dtf", "logs": "/var/log/dtf", "run": "/run/dtf", "bin": "/opt/dtf",
              "etc": "/etc/dtf"},
    "macos": {"data": "/usr/local/var/dtf", "logs": "/usr/local/var/log/dtf", "run": "/usr/local/var/run/dtf",
              "bin": "/usr/local/opt/dtf", "etc": "/usr/local/etc/dtf"},
    "windows": {"data": r"C:\ProgramData\DTF\data", "logs": r"C:\ProgramData\DTF\logs",
                "run": r"C:\ProgramData\DTF\run", "bin": r"C:\Program Files\DTF", "etc": r"C:\ProgramData\DTF"},
    "container": {"data": "/app/data", "logs": "/app/logs", "run": "/tmp", "bin": "/opt/dtf", "etc": "/app/config"},
}
# Settings carried into the service environment when they differ from the defaults (never the API key).
_ENV_SETTINGS = ("host", "port", "coordinator", "node_id", "worker_id", "max_concurrent_tasks", "tags",
                 "heartbeat_interval", "worker_timeout", "max_retries", "batch_size", "reconnect_attempts",
                 "log_level", "log_format", "hostname", "hardware_id", "worker_name", "task_timeout",
                 "token_expiry", "snapshot_every", "snapshot_keep", "workers_port")


def convert_path(path: str, platform: str, kind: str = "data") -> str:
    """``path`` as it should be written for ``platform``.

    Relative paths are placed under the platform's directory for ``kind`` (data or logs); POSIX absolute
    paths stay on POSIX platforms and move under ``C:\\ProgramData\\DTF`` on Windows; Windows paths
    (``C:\\...``) are kept on Windows and mapped below the data root elsewhere.
    """
    root = _ROOTS[platform][kind]
    windows_like = len(path) > 1 and path[1] == ":" or "\\" in path
    if platform == "windows":
        if windows_like and ntpath.isabs(path):
            return ntpath.normpath(path)
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
        if path.startswith("/"):
            return ntpath.join(r"C:\ProgramData\DTF", *parts)
        return ntpath.join(root, *parts)
    if windows_like:
        drive_free = path.replace("\\", "/").split(":", 1)[-1]
        return posixpath.join(root, *[p for p in drive_free.split("/") if p not in ("", ".")])
    if posixpath.isabs(path):
        return posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(root, path))


@dataclass
class Plan:
    """What a generated script installs and starts, with paths already converted for the platform."""

    platform: str
    mode: str
    service: str
    executable: str
    data_dir: str
    db_path: str | None
    log_dir: str
    pid_file: str
    config_file: str | None
    env_file: str
    env: dict[str, str] = field(default_factory=dict)
    needs_key: bool = False
    config_source: str | None = None
    """The config file as given on this machine (the install script copies it to ``config_file``)."""
    secrets: list[str] = field(default_factory=list)
    """``${VAR}`` names the config file refers to: placeholders in the env file, never values."""

    def argv(self) -> list[str]:
        argv = [self.executable, "--mode", self.mode, "--data-dir", self.data_dir, "--log-path", self.log_dir,
                "--pid-file", self.pid_file]
        if self.db_path:
            argv += ["--db-path", self.db_path]
        if self.config_file:
            argv += ["--config", self.config_file]
        return argv


def make_plan(settings: Settings, platform: str, *, config_file: str | None = None,
              executable: str | None = None, sources: dict[str, str] | None = None) -> Plan:
    """Build the plan for ``settings.mode`` on ``platform`` (raises ValueError for an unknown platform).

    With ``sources`` (from load_settings_with_sources), values the config file provides stay in the file
    the service reads; only those from flags and the environment go into the service environment.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"--platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    mode = settings.mode if settings.mode in ("coordinator", "worker", "peer") else "peer"
    roots = _ROOTS[platform]
    join = ntpath.join if platform == "windows" else posixpath.join
    service = f"dtf-{mode}"
    defaults = Settings()
    env: dict[str, str] = {}
    for name in _ENV_SETTINGS:
        value = getattr(settings, name)
        if value == getattr(defaults, name) or value is None:
            continue
        if sources is not None and config_file and sources.get(name) == "file":
            continue
        env[f"DTF_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    if platform == "container" and mode != "worker" and settings.host in ("127.0.0.1", "localhost", "::1"):
        env["DTF_HOST"] = "0.0.0.0"  # loopback inside a container is unreachable from the published port
    return Plan(
        platform=platform, mode=mode, service=service,
        executable=executable or join(roots["bin"], "dtf.exe" if platform == "windows" else "dtf"),
        data_dir=convert_path(settings.data_dir, platform),
        db_path=convert_path(settings.db_path, platform) if settings.db_path else None,
        log_dir=convert_path(settings.log_path, platform, "logs") if settings.log_path else roots["logs"],
        pid_file=join(roots["run"], f"{service}.pid"),
        config_file=join(roots["etc"], ntpath.basename(config_file.replace("\\", "/").rsplit("/", 1)[-1]))
        if config_file else None, config_source=config_file,
        secrets=_referenced_variables(config_file),
        env_file=join(roots["etc"], f"{service}.env"),
        env=env, needs_key=mode == "worker" or bool(settings.api_key),
    )


def _referenced_variables(config_file: str | None) -> list[str]:
    import re
    from pathlib import Path

    if not config_file:
        return []
    try:
        text = Path(config_file).read_text(encoding="utf-8")
    except OSError:
        return []
    return list(dict.fromkeys(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)))


def render(plan: Plan) -> dict[str, str]:
    """File name -> contents of the scripts for the plan's platform."""
    return {"linux": _linux, "macos": _macos, "windows": _windows, "container": _container}[plan.platform](plan)


# -- POSIX ------------------------------------------------------------------------------------------------

def _sh(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _env_file_lines(plan: Plan) -> list[str]:
    lines = [f"{k}={v}" for k, v in plan.env.items()]
    lines += [f"# {name}=<referenced by {plan.config_file}; set it here>" for name in plan.secrets]
    if plan.needs_key:
        lines.append("# DTF_API_KEY=<the worker enrolment key: dtf keys create --name workers --role worker>")
    return lines


def _writable(plan: Plan) -> list[str]:
    paths = [plan.data_dir, plan.log_dir]
    if plan.db_path:
        paths.append(posixpath.dirname(plan.db_path))
    return paths


def _copy_config(plan: Plan) -> str:
    if not plan.config_source or not plan.config_file:
        return ""
    return (f"install -m 0640 -g dtf {shlex.quote(plan.config_source)} {shlex.quote(plan.config_file)}  "
            "# run from where you ran dtf deploy-script\n")


def _start_sh(plan: Plan) -> str:
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in plan.env.items())
    return f"""#!/bin/sh
# Start the DTF {plan.mode} in the foreground (generated by dtf deploy-script --platform {plan.platform}).
set -eu
[ -f {shlex.quote(plan.env_file)} ] && . {shlex.quote(plan.env_file)}
{exports}
mkdir -p {shlex.quote(plan.data_dir)} {shlex.quote(plan.log_dir)} {shlex.quote(posixpath.dirname(plan.pid_file))}
exec {_sh(plan.argv())}
"""


def _linux(plan: Plan) -> dict[str, str]:
    env_lines = "\n".join(_env_file_lines(plan))
    unit = f"""[Unit]
Description=DTF {plan.mode}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=dtf
Group=dtf
EnvironmentFile=-{plan.env_file}
ExecStart={_sh(plan.argv())}
PIDFile={plan.pid_file}
RuntimeDirectory=dtf
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths={" ".join(dict.fromkeys(_writable(plan)))}

[Install]
WantedBy=multi-user.target
"""
    install = f"""#!/bin/sh
# Install the DTF {plan.mode} as a systemd service (generated by dtf deploy-script --platform linux).
# Run as root from the directory holding the frozen build (dist/dtf/).
set -eu
SRC="${{1:-./dist/dtf}}"
id dtf >/dev/null 2>&1 || useradd --system --home-dir {shlex.quote(plan.data_dir)} --shell /usr/sbin/nologin dtf
install -d -o dtf -g dtf -m 0750 {shlex.quote(plan.data_dir)} {shlex.quote(plan.log_dir)}
install -d -m 0755 {shlex.quote(posixpath.dirname(plan.executable))} {shlex.quote(posixpath.dirname(plan.env_file))}
cp -a "$SRC"/. {shlex.quote(posixpath.dirname(plan.executable))}/
{_copy_config(plan)}if [ ! -f {shlex.quote(plan.env_file)} ]; then
  cat > {shlex.quote(plan.env_file)} <<'EOF'
{env_lines}
EOF
  chmod 0640 {shlex.quote(plan.env_file)}
  chgrp dtf {shlex.quote(plan.env_file)}
fi
cat > /etc/systemd/system/{plan.service}.service <<'EOF'
{unit}EOF
systemctl daemon-reload
systemctl enable --now {plan.service}.service
echo "installed {plan.service}: journalctl -u {plan.service} -f, logs in {plan.log_dir}"
"""
    return {"install.sh": install, "start.sh": _start_sh(plan), f"{plan.service}.service": unit}


def _macos(plan: Plan) -> dict[str, str]:
    from xml.sax.saxutils import escape

    label = f"org.dtf.{plan.mode}"
    args = "\n".join(f"    <string>{escape(a)}</string>" for a in plan.argv())
    env = "\n".join(f"    <key>{escape(k)}</key><string>{escape(v)}</string>" for k, v in plan.env.items())
    plist = f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array>
{args}
  </array>
  <key>EnvironmentVariables</key>
  <dict>
{env}
  </dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>{escape(posixpath.join(plan.log_dir, plan.service + ".out"))}</string>
  <key>StandardErrorPath</key><string>{escape(posixpath.join(plan.log_dir, plan.service + ".err"))}</string>
</dict>
</plist>
"""
    install = f"""#!/bin/sh
# Install the DTF {plan.mode} as a launchd daemon (generated by dtf deploy-script --platform macos).
set -eu
SRC="${{1:-./dist/dtf}}"
mkdir -p {shlex.quote(plan.data_dir)} {shlex.quote(plan.log_dir)} {shlex.quote(posixpath.dirname(plan.executable))}
cp -R "$SRC"/. {shlex.quote(posixpath.dirname(plan.executable))}/
cat > /Library/LaunchDaemons/{label}.plist <<'EOF'
{plist}EOF
launchctl bootstrap system /Library/LaunchDaemons/{label}.plist
echo "installed {label}: logs in {plan.log_dir}"
"""
    return {"install.sh": install, "start.sh": _start_sh(plan), f"{label}.plist": plist}


def _container(plan: Plan) -> dict[str, str]:
    entry = f"""#!/bin/sh
# Container entrypoint for the DTF {plan.mode} (generated by dtf deploy-script --platform container).
# Settings come from the environment (DTF_*, CONFIG_FILE, COORDINATOR_URL, WORKER_ID); extra args pass on.
set -eu
mkdir -p {shlex.quote(plan.data_dir)} {shlex.quote(plan.log_dir)}
exec {_sh(plan.argv())} "$@"
"""
    env_args = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in plan.env.items())
    key = " -e DTF_API_KEY" if plan.needs_key else ""
    port = plan.env.get("DTF_PORT", "8080")
    publish = f" -p {port}:{port}" if plan.mode != "worker" else ""
    run = f"""#!/bin/sh
# Run the DTF {plan.mode} in a container (generated by dtf deploy-script --platform container).
set -eu
exec docker run -d --name {plan.service} --restart unless-stopped{publish} \\
  -v dtf-{plan.mode}-data:{plan.data_dir} -v dtf-{plan.mode}-logs:{plan.log_dir} \\
  {env_args}{key} dtf:latest --mode {plan.mode}
"""
    return {"docker-entrypoint.sh": entry, "docker-run.sh": run}


# -- Windows ----------------------------------------------------------------------------------------------

def ps_quote(value: str) -> str:
    """A PowerShell single-quoted string: nothing inside is expanded; ``'`` doubles."""
    return "'" + value.replace("'", "''") + "'"


def cmd_quote(value: str) -> str:
    """A path for a batch file: double-quoted (paths cannot contain ``"``), ``%`` escaped as ``%%``."""
    return '"' + value.replace("%", "%%") + '"'


def _windows(plan: Plan) -> dict[str, str]:
    env_ps = "\n".join(f"[Environment]::SetEnvironmentVariable({ps_quote(k)}, {ps_quote(v)}, 'Machine')"
                       for k, v in plan.env.items())
    # A service's command line is parsed by the program (CommandLineToArgvW rules): list2cmdline quotes for
    # those, and the whole line then travels as one PowerShell single-quoted string.
    command_line = subprocess.list2cmdline(plan.argv())
    install = f"""# Install the DTF {plan.mode} as a Windows service (generated by dtf deploy-script --platform windows).
# Run in an elevated PowerShell from the folder holding the frozen build (dist\\dtf\\).
$ErrorActionPreference = 'Stop'
$Source = if ($args.Count -gt 0) {{ $args[0] }} else {{ '.\\dist\\dtf' }}
$Bin = {ps_quote(ntpath.dirname(plan.executable))}
New-Item -ItemType Directory -Force -Path $Bin, {ps_quote(plan.data_dir)}, {ps_quote(plan.log_dir)}, {ps_quote(ntpath.dirname(plan.pid_file))} | Out-Null
Copy-Item -Recurse -Force (Join-Path $Source '*') $Bin
{env_ps}
# The service wrapper (packaging/windows/dtf-service.xml, WinSW) runs dtf.exe with these arguments.
$Wrapper = Join-Path $Bin 'dtf-service.exe'
if (Test-Path $Wrapper) {{
  & $Wrapper install
  & $Wrapper start
}} else {{
  New-Service -Name {ps_quote(plan.service)} -DisplayName {ps_quote('DTF ' + plan.mode)} -StartupType Automatic `
    -BinaryPathName {ps_quote(command_line)}
  Start-Service -Name {ps_quote(plan.service)}
}}
Write-Host {ps_quote(f'installed {plan.service}: logs in {plan.log_dir}')}
"""
    env_cmd = "\r\n".join(f'set "{k}={v.replace("%", "%%")}"' for k, v in plan.env.items())
    start = (f"@echo off\r\nrem Start the DTF {plan.mode} in the foreground (generated by dtf deploy-script "
             f"--platform windows).\r\nsetlocal\r\n{env_cmd}\r\n"
             f"if not exist {cmd_quote(plan.data_dir)} mkdir {cmd_quote(plan.data_dir)}\r\n"
             f"if not exist {cmd_quote(plan.log_dir)} mkdir {cmd_quote(plan.log_dir)}\r\n"
             f"if not exist {cmd_quote(ntpath.dirname(plan.pid_file))} mkdir {cmd_quote(ntpath.dirname(plan.pid_file))}\r\n"
             f"{subprocess.list2cmdline(plan.argv()).replace('%', '%%')}\r\n")
    return {"install.ps1": install.replace("\n", "\r\n"), "start.cmd": start}


def detected_platform() -> str:
    """This machine as a deploy-script platform: container (when inside one), linux, macos or windows."""
    import platform as stdlib_platform

    from dtf_plugins.hardware.container import probe

    if probe()["container"]["in_container"]:
        return "container"
    return {"Darwin": "macos", "Windows": "windows"}.get(stdlib_platform.system(), "linux")


def run_deploy_script(args: object) -> int:
    """``dtf deploy-script``: print the scripts, or write them into ``--output``."""
    import sys
    from pathlib import Path

    from dtf_app.config import load_settings_with_sources

    options = {name: getattr(args, name) for name in ("config", "data_dir", "log_path", "coordinator", "port")
               if getattr(args, name, None) is not None}
    mode = getattr(args, "deploy_mode", "worker")
    settings, sources = load_settings_with_sources(options, mode=mode)
    platform = getattr(args, "platform", None) or detected_platform()
    plan = make_plan(settings, platform, config_file=options.get("config"), sources=sources)
    files = render(plan)
    output = getattr(args, "output", None)
    if output:
        directory = Path(output)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = directory / name
            path.write_bytes(text.encode("utf-8"))  # bytes: keep Windows CRLF as generated
            if name.endswith(".sh"):
                path.chmod(0o755)
            print(f"wrote {path}", file=sys.stderr)
        return 0
    for name, text in files.items():
        sys.stdout.write(f"# ----- {name} -----\n{text.replace(chr(13), '')}\n")
    return 0
