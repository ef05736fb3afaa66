"""The ``dtf`` command line (DESIGN.md §4).

Parsing is stdlib argparse only; each command imports what it needs after parsing, so ``dtf --version``
and ``dtf --mode worker`` never pay for (or depend on) the TUI, the web server or DuckDB when they do not
use them. Exit codes: 0 ok, 1 task or test failures, 2 usage/config errors, 3 cannot reach the cluster,
4 auth refused. User errors print ``dtf: error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dtf_app import __version__
from dtf_app.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4
ROLES = ("admin", "operator", "worker", "viewer")
# Node options given without --mode are a mistake worth naming rather than silently opening the TUI.
NODE_OPTIONS = ("config", "host", "port", "data_dir", "db_path", "coordinator", "api_key", "peers", "node_id",
                "max_concurrent_tasks", "tags", "worker_id", "heartbeat_interval", "worker_timeout",
                "simulate_hardware", "log_level", "reconnect_attempts", "max_retries", "log_path", "log_format",
                "hostname", "pid_file", "test_python")

# Without a command: the dashboard on an embedded local cluster, which takes this one node option.
TUI_OPTIONS = ("data_dir",)


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""


def _add_node_options(parser: argparse.ArgumentParser) -> None:
    node = parser.add_argument_group("node options (with --mode)")
    node.add_argument("--mode", choices=("coordinator", "worker", "peer"),
                      help="run a node: coordinator, worker, or peer (coordinator replica + local worker)")
    node.add_argument("--config", metavar="FILE", help="settings file: TOML (dtf.toml) or the deployment "
                      "guide's coordinator.json / worker.json")
    node.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    node.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any free port)")
    node.add_argument("--data-dir", metavar="D", help="state directory (default ./dtf-data)")
    node.add_argument("--db-path", metavar="F", help="DuckDB file (default <data-dir>/dtf.duckdb)")
    node.add_argument("--coordinator", metavar="URL[,URL...]", help="coordinator URL(s) a worker connects to")
    node.add_argument("--api-key", metavar="K", help="API key (prefer DTF_API_KEY: flags show in ps)")
    node.add_argument("--peers", metavar="id=URL,...",
                      help="the coordinators of a Raft cluster (id=URL or host:port; this node may be listed)")
    node.add_argument("--node-id", metavar="ID", help="this coordinator's id")
    node.add_argument("--advertise-url", metavar="URL",
                      help="the URL peers, workers and clients reach this coordinator at (default from host/port)")
    node.add_argument("--cluster-secret-file", metavar="F",
                      help="file with the secret that authenticates peer traffic (or DTF_CLUSTER_SECRET)")
    node.add_argument("--tls-cert", metavar="F", help="coordinator: PEM certificate; serve HTTPS, peers use wss://")
    node.add_argument("--tls-key", metavar="F", help="coordinator: the PEM private key of --tls-cert")
    node.add_argument("--peer-ca", metavar="F", help="coordinator: PEM CA bundle that verifies the peers' "
                      "certificates (default: the system trust store)")
    node.add_argument("--high-availability", action="store_const", const={"enabled": True}, default=None,
                      help="coordinator: run as a Raft cluster member (with no --peers, a one-member cluster)")
    node.add_argument("--heartbeat-ms", type=int, metavar="MS", help="Raft heartbeat interval (default 50)")
    node.add_argument("--election-timeout-ms", type=int, metavar="MS", help="Raft election timeout (default 300)")
    node.add_argument("--max-concurrent-tasks", type=int, metavar="N", help="task slots of a worker (default 4)")
    node.add_argument("--tags", metavar="a,b", help="worker tags tasks can require")
    node.add_argument("--worker-id", metavar="ID", help="stable worker id (default: derived from the host)")
    node.add_argument("--heartbeat-interval", type=float, metavar="S", help="seconds between heartbeats (10)")
    node.add_argument("--worker-timeout", type=float, metavar="S", help="seconds before a silent worker is lost (30)")
    node.add_argument("--reconnect-attempts", type=int, metavar="N",
                      help="worker: connection attempts before giving up (default 10)")
    node.add_argument("--max-retries", type=int, metavar="N", help="coordinator: retries of a lost task (3)")
    node.add_argument("--simulate-hardware", metavar="FILE", help="advertise a hardware profile "
                      "(assets/hardware/*.json), flagged as simulated")
    node.add_argument("--log-level", metavar="L", help="debug | info | warning | error (default info)")
    node.add_argument("--log-path", metavar="DIR", help="also write logs to a file in DIR (logging.path); "
                      "a file renamed by logrotate is reopened")
    node.add_argument("--log-format", choices=("text", "json"), help="log lines as text (default) or JSON")
    node.add_argument("--pid-file", metavar="F", help="write the process id to F while running")
    node.add_argument("--hostname", metavar="NAME", help="worker: the host name it reports (default: this "
                      "machine's)")
    node.add_argument("--test-python", metavar="PATH", help="worker: the Python that runs dtf pytest chunks, "
                      "with pytest and the suite's dependencies (DTF_TEST_PYTHON; default: the worker's own)")


def _add_client_options(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    # SUPPRESS keeps a value given before the subcommand (dtf --data-dir D tasks list) from being reset.
    group = parser.add_argument_group("connection")
    group.add_argument("--coordinator", metavar="URL[,URL...]", default=argparse.SUPPRESS,
                       help="coordinator URL(s) (DTF_COORDINATOR; default: <data-dir>/node.json, "
                            "else http://127.0.0.1:8080)")
    group.add_argument("--api-key", metavar="K", default=argparse.SUPPRESS,
                       help="API key (DTF_API_KEY; default: <data-dir>/admin.key)")
    group.add_argument("--data-dir", metavar="D", default=argparse.SUPPRESS,
                       help="data dir of a local cluster: its admin.key and node.json are used (./dtf-data)")
    group.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="settings file")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print data as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dtf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dtf", description="DTF: run tests and benchmarks across machines with different hardware.",
        epilog="Without arguments dtf opens the dashboard on an embedded local cluster (a coordinator and "
               "two workers, data in ./dtf-data); dtf dash opens it on a running cluster. "
               "Exit codes: 0 ok, 1 task/test failures, 2 usage or config error, 3 cluster unreachable, "
               "4 auth refused.")
    parser.add_argument("--version", action="version", version=f"dtf {__version__}")
    _add_node_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="start a local coordinator and N workers",
                        description="Start a local coordinator and N worker processes (logs in <data-dir>/logs).")
    up.add_argument("--workers", type=int, default=2, metavar="N", help="number of worker processes (default 2)")
    up.add_argument("--headless", action="store_true", help="no dashboard: print status counts")
    up.add_argument("--port", type=int, default=argparse.SUPPRESS, help="coordinator port (default 0 = any free)")
    up.add_argument("--data-dir", metavar="D", default=argparse.SUPPRESS, help="state directory (./dtf-data)")
    up.add_argument("--run-file", metavar="F", help="submit this task file, wait, print the summary, stop")
    up.add_argument("--max-concurrent-tasks", type=int, metavar="N", default=argparse.SUPPRESS,
                    help="task slots per worker")
    up.add_argument("--simulate-hardware", metavar="FILE", default=argparse.SUPPRESS,
                    help="hardware profile every worker advertises (flagged simulated)")
    up.add_argument("--json", action="store_true", help="with --run-file: final task documents as JSON")

    submit = sub.add_parser(
        "submit", help="submit tasks", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit tasks from a file, generate benchmark tasks, or build one test/custom task.",
        epilog="Task files hold a task object, a list of them, or {\"tasks\": [...]}. Relative test_file and\n"
               "working_dir paths are made absolute against the task file's directory, because workers run\n"
               "elsewhere. Examples:\n"
               "  dtf submit --task-file assets/tasks/demo.json --wait\n"
               "  dtf submit --generate benchmark --model bert --batch-sizes 1,2,4 --precision fp16,fp32\n"
               "  dtf submit --generate test --model bert-tiny,whisper-tiny --output-dir gen-tests --wait\n"
               "  dtf submit --type test --test-file tests/ --test-args=\"-x -q\" --wait\n"
               "  dtf submit --type custom --wait -- python3 -c \"print('hi')\"")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--task-file", metavar="F", help="JSON task file")
    source.add_argument("--generate", choices=("benchmark", "test"),
                        help="generate tasks from the templates in assets/templates for --model: benchmark "
                             "(one per model x precision) or test (a pytest file per model family)")
    source.add_argument("--type", choices=("test", "custom", "benchmark"), dest="task_type",
                        help="build one task of this type from the options below")
    submit.add_argument("--model", help="model name(s), comma-separated, for --generate (bert, t5-small, "
                                        "openai/whisper-tiny, ...: the family is detected from the name)")
    submit.add_argument("--output-dir", default="dtf-generated-tests", metavar="D",
                        help="--generate test: where the generated pytest files go (default ./dtf-generated-tests; "
                             "workers must see this path)")
    submit.add_argument("--batch-sizes", default="1,2,4", help="comma-separated batch sizes (default 1,2,4)")
    submit.add_argument("--precision", default="fp32", help="comma-separated: fp32,fp16,bf16,int8 (default fp32)")
    submit.add_argument("--iterations", type=int, help="benchmark iterations per configuration")
    submit.add_argument("--test-file", action="append", metavar="PATH",
                        help="pytest file, directory or node id (repeatable)")
    submit.add_argument("--test-args", action="append", metavar="ARGS",
                        help="extra pytest arguments, one shell-quoted string (write --test-args=\"-x -q\")")
    submit.add_argument("command_argv", nargs="*", metavar="CMD", help="for --type custom: the command after --")
    submit.add_argument("--priority", type=int, help="higher runs first")
    submit.add_argument("--name", help="task name (numbered when there are several tasks)")
    submit.add_argument("--submitter", metavar="NAME",
                        help="who the tasks count against for fair share (default: the API key's name; set it "
                             "when several people share one key, e.g. dtf up's)")
    submit.add_argument("--group", metavar="NAME",
                        help="task group: fair share spreads a submitter's slots across groups (default: the batch)")
    submit.add_argument("--requirements", metavar="JSON", help="requirements object, e.g. '{\"min_memory_gb\": 8}'")
    submit.add_argument("--hardware", metavar="KINDS", help="required hardware kinds, e.g. cuda or cpu,openvino")
    submit.add_argument("--tags", dest="req_tags", metavar="a,b", default=None, help="worker tags required")
    submit.add_argument("--timeout", type=float, metavar="S", help="timeout_seconds of each task")
    submit.add_argument("--max-retries", type=int, metavar="N", dest="task_max_retries", help="retries per task")
    submit.add_argument("--wait", action="store_true", help="wait for the tasks, show progress, then a table")
    submit.add_argument("--periodic", type=float, metavar="SECONDS", help="resubmit every SECONDS until Ctrl-C")
    submit.add_argument("--allow-unschedulable", action="store_true",
                        help="accept tasks no current worker can run (they wait as unschedulable)")
    _add_client_options(submit)

    tasks = sub.add_parser("tasks", help="list, show or cancel tasks")
    tasks_sub = tasks.add_subparsers(dest="action", metavar="ACTION", required=True)
    t_list = tasks_sub.add_parser("list", help="list tasks")
    t_list.add_argument("--status", help="pending, running, completed, failed, ...")
    t_list.add_argument("--type", dest="task_type", choices=("test", "benchmark", "custom"))
    t_list.add_argument("--batch", dest="batch_id", help="only tasks of this submission batch")
    t_list.add_argument("--limit", type=int, default=100)
    _add_client_options(t_list)
    for action, text in (("show", "show one task with its result"), ("cancel", "cancel a task")):
        parser_ = tasks_sub.add_parser(action, help=text)
        parser_.add_argument("task_id", metavar="ID")
        _add_client_options(parser_)

    workers = sub.add_parser("workers", help="list workers; drain, resume, stop or restart one; forget its enrolment")
    workers_sub = workers.add_subparsers(dest="action", metavar="ACTION", required=True)
    w_list = workers_sub.add_parser("list", help="list workers")
    w_list.add_argument("--status", help="only workers in this state (online, offline, ...)")
    _add_client_options(w_list)
    for action, text in (
            ("drain", "give the worker no new tasks (what it runs finishes)"),
            ("resume", "give a drained or quarantined worker tasks again"),
            ("stop", "the worker finishes what it runs, then exits"),
            ("restart", "the worker finishes what it runs, then starts again")):
        parser_ = workers_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        parser_.add_argument("worker_id", metavar="ID")
        _add_client_options(parser_)
    w_forget = workers_sub.add_parser(
        "forget", help="revoke a worker id's enrolment (admin), so a rebuilt machine can enrol under it",
        description="Revoke the credential bound to a worker id. A worker connected under the id is "
                    "disconnected and exits (code 4); the next worker that connects with the id enrols it anew.")
    w_forget.add_argument("worker_id", metavar="ID")
    _add_client_options(w_forget)

    results = sub.add_parser("results", help="stored results, or aggregates over them; results export FILE",
                             description="Stored results, aggregates over them, or `dtf results export "
                                         "--format parquet|csv --output F` for analysis elsewhere.")
    results.add_argument("action", nargs="?", choices=("export",), help="export: write a table to --output")
    results.add_argument("--format", dest="export_format", choices=("parquet", "csv"), default="parquet",
                         help="with export: file format (default parquet)")
    results.add_argument("--table", default="results", help="with export: results (default), test_results, "
                         "benchmark_results, distributed_tasks, worker_nodes, task_execution_history")
    results.add_argument("--output", "-o", metavar="F", help="with export: the file to write")
    results.add_argument("--db", metavar="F", help="with export: read this DuckDB file (a backup or a stopped "
                         "coordinator) instead of asking the coordinator")
    results.add_argument("--task", dest="task_id", metavar="ID", help="results of one task")
    results.add_argument("--status", help="success, failure or partial")
    results.add_argument("--limit", type=int, default=100)
    results.add_argument("--aggregate", action="store_true", help="statistics per group instead of rows")
    results.add_argument("--result-type", default="benchmark", help="with --aggregate: benchmark or test")
    results.add_argument("--level", default="model", help="with --aggregate: grouping level (model, ...)")
    results.add_argument("--regressions", action="store_true",
                         help="benchmark configurations that regressed per hardware class (Welch t-test against "
                              "a trailing window)")
    results.add_argument("--metric", default="throughput", help="with --regressions: throughput, latency_ms_mean, ...")
    results.add_argument("--flaky", action="store_true", help="tests that both passed and failed, most flips first")
    results.add_argument("--compare", nargs=2, metavar=("A", "B"),
                         help="compare two runs or time ranges: batch:ID, run:ID (dtf pytest) or SINCE..UNTIL")
    results.add_argument("--junitxml", metavar="FILE", help="JUnit XML of a set of test tasks: with --task ID, "
                         "--run RUN (a dtf pytest run) or --batch BATCH")
    results.add_argument("--run", metavar="RUN", help="with --junitxml: the chunks of this dtf pytest run")
    results.add_argument("--batch", metavar="BATCH", help="with --junitxml: the tasks of one submission")
    _add_client_options(results)

    status = sub.add_parser("status", help="cluster status: task and worker counts")
    _add_client_options(status)

    cluster = sub.add_parser("cluster", help="the coordinator cluster: status, nodes, leader, health, disable/enable, "
                                             "add/remove")
    cluster_sub = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("status", "role, term, leader and every node"), ("nodes", "the coordinator nodes"),
                         ("leader", "the leader, its term and the leadership history"),
                         ("health", "cluster health: quorum, reachable nodes")):
        _add_client_options(cluster_sub.add_parser(action, help=text))
    for action, text in (("disable", "hand leadership away from a node and stop it campaigning (admin)"),
                         ("enable", "let a disabled node campaign again (admin)")):
        parser_ = cluster_sub.add_parser(action, help=text)
        parser_.add_argument("node_id", metavar="NODE")
        _add_client_options(parser_)
    add = cluster_sub.add_parser(
        "add", help="add one coordinator to the cluster (admin); prints how to start it",
        description="Add one coordinator (membership changes one node at a time). Prints what the new node needs "
                    "to start (its --node-id, the --peers value, the cluster secret); the new node must answer at "
                    "URL before it is added (--wait waits for it).")
    add.add_argument("node_id", metavar="ID", help="the new coordinator's node id")
    add.add_argument("url", metavar="URL", help="its advertised URL, http(s)://HOST:PORT")
    add.add_argument("--wait", type=float, default=0.0, metavar="S",
                     help="wait up to S seconds for the new node to answer (default: do not wait)")
    _add_client_options(add)
    remove = cluster_sub.add_parser(
        "remove", help="remove one coordinator from the cluster (admin); the leader hands over first",
        description="Remove one coordinator. Removing the leader hands leadership over first. The removed node "
                    "stops campaigning; stop its process afterwards.")
    remove.add_argument("node_id", metavar="ID")
    _add_client_options(remove)

    hardware = sub.add_parser("hardware", help="detect this machine's hardware")
    hardware.add_argument("--json", action="store_true", help="the capabilities document as JSON")
    hardware.add_argument("--simulate-hardware", metavar="FILE", default=argparse.SUPPRESS,
                          help="show what a worker with this profile would advertise")

    keys = sub.add_parser("keys", help="manage API keys (admin)")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    k_create = keys_sub.add_parser("create", help="create a key (shown once)")
    k_create.add_argument("--name", required=True)
    k_create.add_argument("--role", required=True, choices=ROLES)
    _add_client_options(k_create)
    k_delete = keys_sub.add_parser("delete", help="delete a key")
    k_delete.add_argument("--name", required=True)
    _add_client_options(k_delete)
    _add_client_options(keys_sub.add_parser("list", help="list keys (names and roles, never the keys)"))

    report = sub.add_parser("report", help="a self-contained HTML report (inline SVG), or the status PNG")
    report.add_argument("--html", metavar="FILE", help="write the HTML report here")
    report.add_argument("--png", metavar="FILE", help="write the single status image (PNG) here")
    _add_client_options(report, json_flag=False)
    sub.add_parser("pytest", help="run a pytest suite over the cluster's workers (dtf pytest [PYTEST ARGS...])",
                   add_help=False)
    dash = sub.add_parser("dash", help="the dashboard (TUI) on a running cluster",
                          description="Open the terminal dashboard on a running cluster (e.g. one started with "
                                      "`dtf up --workers 2 --headless`): live workers, tasks and results.")
    _add_client_options(dash, json_flag=False)
    dash.add_argument("--web", type=int, nargs="?", const=8050, metavar="PORT",
                      help="serve the dashboard in a browser on PORT (default 8050) instead of this terminal; "
                           "pages need ?api_key=KEY. COORDINATOR_URL is read when no --coordinator is given")
    dash.add_argument("--web-host", default="127.0.0.1", metavar="H",
                      help="address the web dashboard listens on (default 127.0.0.1; 0.0.0.0 for all)")

    backup = sub.add_parser("backup", help="consistent backup of a running coordinator (admin)",
                            description="The coordinator writes a consistent copy of its DuckDB data and "
                                        "state into DIR (a new or empty directory on its machine).")
    backup.add_argument("--to", required=True, metavar="DIR", help="backup directory (new or empty)")
    _add_client_options(backup)
    restore = sub.add_parser("restore", help="restore a backup into a new single-node cluster",
                             description="Write a backup into a new data directory as a new one-member "
                                         "cluster, then start it with dtf --mode coordinator --data-dir DIR.")
    restore.add_argument("--from", dest="source", required=True, metavar="DIR", help="the backup directory")
    restore.add_argument("--data-dir", dest="target", required=True, metavar="DIR",
                         help="the new, empty data directory")
    restore.add_argument("--node-id", dest="restore_node_id", metavar="ID", help="the new node's id")
    restore.add_argument("--json", action="store_true", help="print the outcome as JSON")

    deploy = sub.add_parser(
        "deploy-script", help="install and startup scripts for this node's settings",
        description="Generate install and startup scripts for a platform from the current settings (config "
                    "file, DTF_* environment, options): paths converted for the platform, log dir, pid file, env.")
    deploy.add_argument("--platform", choices=("linux", "windows", "macos", "container"),
                        help="target platform (default: this machine's)")
    deploy.add_argument("--mode", dest="deploy_mode", choices=("coordinator", "worker", "peer"), default="worker",
                        help="the node the scripts run (default worker)")
    deploy.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file to read (and to point the service at)")
    deploy.add_argument("--data-dir", metavar="D", default=argparse.SUPPRESS, help="data directory")
    deploy.add_argument("--log-path", metavar="DIR", default=argparse.SUPPRESS, help="log directory")
    deploy.add_argument("--coordinator", metavar="URL", default=argparse.SUPPRESS, help="coordinator URL(s)")
    deploy.add_argument("--port", type=int, default=argparse.SUPPRESS, help="coordinator port")
    deploy.add_argument("--output", metavar="DIR", help="write the files into DIR (default: print them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dtf`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pytest"]:
        # Everything after `pytest` is pytest's (or dtf pytest's own --dtf-* options): no argparse here.
        return _cmd_pytest(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        print("dtf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout went away (dtf ... | head): not an error worth a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # user-facing errors from lazily imported modules, mapped by type
        from dtf_app.client import ClientError, TaskFileError

        if isinstance(exc, ClientError):
            return _fail(exc.message, exc.exit_code)
        if isinstance(exc, TaskFileError):
            return _fail(str(exc), EXIT_USAGE)
        if type(exc).__name__ == "UpError" and type(exc).__module__ == "dtf_app.up":
            return _fail(str(exc), exc.exit_code)  # type: ignore[attr-defined]
        raise


def _cmd_pytest(argv: list[str]) -> int:
    from dtf_app.client import ClientError
    from dtf_app.pytest_dist.client import DistUsageError
    from dtf_app.pytest_dist.client import main as pytest_main

    try:
        return pytest_main(argv)
    except (DistUsageError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ClientError as exc:
        return _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        print("dtf: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, code: int) -> int:
    print(f"dtf: error: {message}", file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command is None:
        if args.mode is None:
            given = [name for name in NODE_OPTIONS
                     if getattr(args, name, None) is not None and name not in TUI_OPTIONS]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} is a node option: add --mode coordinator, "
                                 "worker or peer (or use a command, see dtf --help)")
            return _cmd_tui(args)
        return _run_node(args)
    if args.mode is not None:
        raise UsageError(f"--mode cannot be combined with the {command!r} command")
    if command == "dash":
        return _cmd_dash(args)
    if command == "up":
        from dtf_app.up import run_up

        return run_up(args)
    if command == "hardware":
        return _cmd_hardware(args)
    if command in ("backup", "restore"):
        return _cmd_backup(args) if command == "backup" else _cmd_restore(args)
    if command == "deploy-script":
        from dtf_app.deploy import run_deploy_script

        return run_deploy_script(args)
    handler = {"report": _cmd_report, "submit": _cmd_submit, "tasks": _cmd_tasks, "workers": _cmd_workers, "results": _cmd_results,
               "status": _cmd_status, "keys": _cmd_keys, "cluster": _cmd_cluster}[command]
    return handler(args)


def _cmd_tui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dtf_app.config import default_data_dir
    from dtf_app.tui.run import DashError, run_embedded

    try:
        return run_embedded(Path(args.data_dir or default_data_dir()))
    except DashError as exc:
        return _fail(str(exc), exc.exit_code)


def _cmd_dash(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dtf_app.client import resolve_target
    from dtf_app.config import default_data_dir
    from dtf_app.tui.run import DashError, run_remote

    if getattr(args, "coordinator", None) is None and os.environ.get("COORDINATOR_URL") \
            and not os.environ.get("DTF_COORDINATOR"):
        args.coordinator = os.environ["COORDINATOR_URL"]  # the sources' dashboard service setting
    target = resolve_target(args)
    if args.web is not None:
        if not 0 < args.web <= 65535:
            raise UsageError(f"--web must be a port from 1 to 65535, got {args.web}")
        try:
            from dtf_app.tui.web import serve_web
        except ImportError:
            raise UsageError("dtf dash --web needs textual-serve: pip install 'dtf[web]'") from None
        return serve_web(target.urls, host=args.web_host, port=args.web)
    log_dir = Path(getattr(args, "data_dir", None) or default_data_dir())
    try:
        return run_remote(target.urls, target.api_key, log_dir if log_dir.is_dir() else None)
    except DashError as exc:
        return _fail(str(exc), exc.exit_code)


def _run_node(args: argparse.Namespace) -> int:
    from dtf_app.config import check_high_availability, load_settings_with_sources

    settings, sources = load_settings_with_sources(args, mode=args.mode)
    check_high_availability(settings, sources)
    from dtf_app.node import run_mode

    return run_mode(settings)


def make_client(args: argparse.Namespace) -> Any:
    """A Client for the coordinator the options, environment and data dir point at."""
    from dtf_app.client import Client, resolve_target

    target = resolve_target(args)
    origin = target.url_source if target.url_source.endswith("node.json") else None
    return Client(target.urls, target.api_key, origin=origin)


def _cmd_hardware(args: argparse.Namespace) -> int:
    import os

    from dtf_app.hardware import detect, format_table

    profile = getattr(args, "simulate_hardware", None) or os.environ.get("DTF_SIMULATE_HARDWARE") or None
    try:
        caps = detect(simulate_file=profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        from dtf_app.output import print_json

        print_json({"hardware": caps})
    else:
        print(format_table(caps))
    return EXIT_OK


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def build_submission(args: argparse.Namespace) -> list[dict]:
    """The task documents a ``dtf submit`` invocation describes (raises TaskFileError / UsageError)."""
    import json
    import shlex

    from dtf_app.client import check_task, generate_benchmark_tasks, generate_test_tasks, load_task_file

    command = list(args.command_argv or [])
    if command and command[0] == "--":
        command = command[1:]
    if args.task_file:
        tasks = load_task_file(args.task_file)
    elif args.generate == "benchmark":
        if not args.model:
            raise UsageError("--generate benchmark needs --model (e.g. --model bert)")
        tasks = generate_benchmark_tasks(args.model, args.batch_sizes, args.precision, iterations=args.iterations,
                                         priority=args.priority, hardware=_split(args.hardware))
    elif args.generate == "test":
        if not args.model:
            raise UsageError("--generate test needs --model (e.g. --model bert-tiny,whisper-tiny)")
        tasks = generate_test_tasks(args.model, args.output_dir, priority=args.priority,
                                    hardware=_split(args.hardware))
    elif args.task_type == "test":
        if not args.test_file:
            raise UsageError("--type test needs --test-file PATH (a pytest file, directory or node id)")
        test_args: list[str] = []
        for text in args.test_args or []:
            try:
                test_args += shlex.split(text)
            except ValueError as exc:
                raise UsageError(f"--test-args {text!r}: {exc}") from None
        import os

        files = [os.path.abspath(p.split("::")[0]) + ("::" + p.split("::", 1)[1] if "::" in p else "")
                 for p in args.test_file]
        config: dict[str, Any] = {"test_file": files[0] if len(files) == 1 else files}
        if test_args:
            config["test_args"] = test_args
        tasks = [check_task({"type": "test", "config": config}, "--type test")]
    elif args.task_type == "custom":
        if not command:
            raise UsageError("--type custom needs the command after --, e.g. dtf submit --type custom -- "
                             "python3 -c \"print('hi')\"")
        tasks = [{"type": "custom", "config": {"command": command}}]
    else:  # --type benchmark: one task, same options as --generate
        if not args.model:
            raise UsageError("--type benchmark needs --model (e.g. --model bert)")
        tasks = generate_benchmark_tasks(args.model, args.batch_sizes, args.precision, iterations=args.iterations)
    if command and args.task_type != "custom":
        raise UsageError(f"unexpected arguments {' '.join(command)!r} (only --type custom takes a command)")

    requirements: dict[str, Any] = {}
    if args.requirements:
        try:
            requirements = json.loads(args.requirements)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--requirements: invalid JSON at column {exc.colno}: {exc.msg}") from None
        if not isinstance(requirements, dict):
            raise UsageError("--requirements must be a JSON object, e.g. '{\"hardware\": [\"cuda\"]}'")
    if args.hardware:
        requirements["hardware"] = _split(args.hardware)
    if args.req_tags:
        requirements["tags"] = _split(args.req_tags)
    for i, task in enumerate(tasks):
        if requirements:
            task["requirements"] = {**(task.get("requirements") or {}), **requirements}
        if args.priority is not None:
            task["priority"] = args.priority
        if args.timeout is not None:
            if args.timeout <= 0:
                raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
            task["timeout_seconds"] = args.timeout
        if args.task_max_retries is not None:
            task["max_retries"] = args.task_max_retries
        if args.name:
            task["name"] = args.name if len(tasks) == 1 else f"{args.name}-{i + 1}"
        # Checked by the coordinator's validation (one place): a bad name is a 400 with the reason.
        for key in ("submitter", "group"):
            if getattr(args, key, None):
                task[key] = getattr(args, key)
    return tasks


def _cmd_submit(args: argparse.Namespace) -> int:
    import time

    tasks = build_submission(args)
    if args.periodic is not None and args.periodic <= 0:
        raise UsageError(f"--periodic must be a positive number of seconds, got {args.periodic}")
    with make_client(args) as client:
        worst = EXIT_OK
        round_no = 0
        try:
            while True:
                round_no += 1
                started = time.monotonic()
                # Generated tasks depend on each other by id: every round gets fresh ids (generate.new_ids).
                batch = tasks
                if any((t.get("metadata") or {}).get("generated") for t in tasks):
                    from dtf_app.generate import new_ids

                    batch = new_ids(tasks)
                code = _submit_round(client, batch, args, round_no if args.periodic else None)
                worst = max(worst, code)
                if args.periodic is None:
                    return code
                time.sleep(max(0.0, args.periodic - (time.monotonic() - started)))
        except KeyboardInterrupt:
            if args.periodic is None:
                print("\ndtf: stopped waiting; the tasks keep running (see dtf tasks list)", file=sys.stderr)
                return 130
            print(f"\ndtf: periodic submission stopped after {round_no} round(s)", file=sys.stderr)
            return worst


def _submit_round(client: Any, tasks: list[dict], args: argparse.Namespace, round_no: int | None) -> int:
    from dtf_app import output
    from dtf_app.client import ClientError, batch_failed, wait_for_tasks

    try:
        created = client.submit(tasks, allow_unschedulable=args.allow_unschedulable)
    except ClientError as exc:
        if exc.status == 422 and "cannot run on any worker" in exc.message:
            raise ClientError(f"{exc.message}; dtf submit --allow-unschedulable queues it anyway",
                              exc.exit_code, exc.status) from None
        raise
    created = created if isinstance(created, list) else [created]
    prefix = f"round {round_no}: " if round_no else ""
    batch = created[0].get("batch_id") if created else None
    if not args.wait:
        if args.json:
            output.print_json(created)
        else:
            print(f"{prefix}submitted {len(created)} task(s)" + (f" in batch {batch}" if batch else ""))
            print(output.table([(t.get("task_id"), t.get("name"), t.get("type"), t.get("status"))
                                for t in created], ("task id", "name", "type", "status")))
        return EXIT_OK
    print(f"{prefix}submitted {len(created)} task(s)" + (f" in batch {batch}" if batch else "")
          + "; waiting (Ctrl-C stops waiting, not the tasks)", file=sys.stderr)
    progress = output.Progress()
    try:
        final = wait_for_tasks(client, created, on_counts=lambda c, n: progress.update(c, n, prefix))
    finally:
        progress.close()
    if args.json:
        output.print_json(final)
    else:
        print(output.tasks_table(final))
    return EXIT_FAILED if batch_failed(final) else EXIT_OK


def _cmd_tasks(args: argparse.Namespace) -> int:
    from dtf_app import output

    with make_client(args) as client:
        if args.action == "list":
            if args.limit < 1:
                raise UsageError(f"--limit must be at least 1, got {args.limit}")
            data = client.tasks(status=args.status, type=args.task_type, batch_id=args.batch_id, limit=args.limit)
            if args.json:
                output.print_json(data)
            else:
                print(output.tasks_table(data["tasks"]))
                print(f"{len(data['tasks'])} of {data.get('total', len(data['tasks']))} task(s)", file=sys.stderr)
            return EXIT_OK
        if args.action == "show":
            task = client.task(args.task_id)
            if args.json:
                output.print_json(task)
            else:
                print(output.task_detail(task))
            return EXIT_OK
        task = client.cancel(args.task_id)
        if args.json:
            output.print_json(task)
        else:
            print(f"task {task.get('task_id')} is now {task.get('status')}")
        return EXIT_OK


def _cmd_workers(args: argparse.Namespace) -> int:
    from dtf_app import output

    if args.action in ("drain", "resume", "stop", "restart"):
        with make_client(args) as client:
            data = client.control_worker(args.worker_id, args.action)
        if args.json:
            output.print_json(data)
        else:
            print({"drain": f"worker {args.worker_id} drained: it finishes its tasks and gets no new ones",
                   "resume": f"worker {args.worker_id} resumed: it gets tasks again",
                   "stop": f"worker {args.worker_id} told to stop: it finishes its tasks, then exits",
                   "restart": f"worker {args.worker_id} told to restart: it finishes its tasks, then starts "
                              "again"}[args.action])
        return EXIT_OK
    if args.action == "forget":
        with make_client(args) as client:
            data = client.forget_worker(args.worker_id)
        if args.json:
            output.print_json(data)
        else:
            print(f"worker {args.worker_id}: enrolment forgotten; the next worker with this id enrols anew")
        return EXIT_OK
    with make_client(args) as client:
        workers = client.workers(status=args.status)
    if args.json:
        output.print_json({"workers": workers})
    else:
        print(output.workers_table(workers) if workers else "no workers registered")
    return EXIT_OK


def _cmd_results(args: argparse.Namespace) -> int:
    from dtf_app import output

    if args.action == "export":
        return _cmd_results_export(args)

    with make_client(args) as client:
        if args.junitxml:
            if not (args.task_id or args.run or args.batch):
                raise UsageError("--junitxml needs the tests to write: --task ID, --run RUN or --batch BATCH")
            rows = client.request("GET", "/api/results/tests", params={
                "task_ids": args.task_id, "run_id": args.run, "batch_id": args.batch})["tests"]
            from dtf_app.report import write_junit

            try:
                count = write_junit(rows, args.junitxml)
            except ImportError:
                raise UsageError("--junitxml needs pytest installed (its JUnit writer is used)") from None
            except OSError as exc:
                raise UsageError(f"cannot write {args.junitxml}: {exc}") from None
            print(f"{count} tests written to {args.junitxml}", file=sys.stderr)
            return EXIT_OK
        if args.compare:
            data = client.request("GET", "/api/results/compare", params={"a": args.compare[0], "b": args.compare[1]})
            if args.json:
                output.print_json(data)
                return EXIT_OK
            print(f"A: {data['a']}\nB: {data['b']}")
            for row in data["benchmarks"]:
                if "throughput_a" in row:
                    mark = " (significant)" if row["throughput_significant"] else ""
                    print(f"  {row['model']} batch {row['batch_size']} {row['precision']} {row['backend']}: throughput "
                          f"{row['throughput_a']:.4g} -> {row['throughput_b']:.4g} ({row['throughput_change']:+.1%}, "
                          f"p={row['throughput_p_value']:.2g}){mark}")
            tests = data["tests"]
            print(f"  tests: {tests['common']} in both, {len(tests['newly_failing'])} newly failing, "
                  f"{len(tests['fixed'])} fixed")
            for nodeid in tests["newly_failing"]:
                print(f"  NEWLY FAILING {nodeid}")
            for nodeid in tests["fixed"]:
                print(f"  FIXED {nodeid}")
            return EXIT_OK
        if args.flaky:
            flaky = client.request("GET", "/api/results/flaky")["flaky"]
            if args.json:
                output.print_json({"flaky": flaky})
            elif not flaky:
                print("no flaky tests")
            for row in flaky:
                print(f"FLAKY {row['nodeid']}: {row['failures']} of {row['runs']} runs failed, {row['flips']} flips")
            return EXIT_OK
        if args.regressions:
            data = client.request("GET", "/api/results/regressions", params={"metric": args.metric})
            if args.json:
                output.print_json(data)
            elif not data["regressions"]:
                print(f"no regressions of {data['metric']} ({data['checked']} configurations checked)")
            for row in data["regressions"]:
                print(f"REGRESSION {row['model']} batch {row['batch_size']} {row['precision']} {row['backend']} on "
                      f"{row['hardware']}: {row['metric']} {row['baseline_mean']:.4g} -> {row['recent_mean']:.4g} "
                      f"({row['change']:+.1%}, p={row['p_value']:.2g})")
            return EXIT_OK
        if args.aggregate:
            data = client.aggregate(args.result_type, args.level)
            if args.json:
                output.print_json(data)
            else:
                print(output.aggregate_table(data))
            return EXIT_OK
        results = client.results(task_id=args.task_id, status=args.status, limit=args.limit)
    if args.json:
        output.print_json({"results": results})
    else:
        print(output.results_table(results) if results else "no results")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.html and not args.png:
        raise UsageError("dtf report needs --html FILE and/or --png FILE")
    from dtf_app.report import render_html, status_png

    with make_client(args) as client:
        data = client.request("GET", "/api/report")
        source = client.url
    try:
        if args.html:
            Path(args.html).write_text(render_html(data, source=source), encoding="utf-8")
            print(f"report written to {args.html}", file=sys.stderr)
        if args.png:
            Path(args.png).write_bytes(status_png(data))
            print(f"status image written to {args.png}", file=sys.stderr)
    except OSError as exc:
        raise UsageError(f"cannot write the report: {exc}") from None
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from dtf_app import output

    with make_client(args) as client:
        data = client.status()
    if args.json:
        output.print_json(data)
        return EXIT_OK
    print(f"node {data.get('node_id')} ({data.get('role')}), leader {data.get('leader_id')}, term {data.get('term')}")
    tasks, workers = data.get("tasks") or {}, data.get("workers") or {}
    print("tasks:   " + output.counts_line(tasks, int(tasks.get("total") or 0)))
    print(f"workers: {workers.get('online', 0)} online, {workers.get('offline', 0)} offline, "
          f"{workers.get('total', 0)} total")
    return EXIT_OK


def _cmd_cluster(args: argparse.Namespace) -> int:
    from dtf_app import output

    if args.action in ("add", "remove"):
        return _cluster_membership(args)
    with make_client(args) as client:
        if args.action in ("disable", "enable"):
            data = client.request("POST", f"/api/cluster/node/{args.node_id}/{args.action}", needs="admin")
            if args.json:
                output.print_json(data)
            else:
                print(f"node {data.get('node_id')} is now {'enabled' if data.get('enabled') else 'disabled'}")
            return EXIT_OK
        path = {"status": "/api/cluster/status", "nodes": "/api/cluster/nodes", "leader": "/api/cluster/leader",
                "health": "/api/cluster/health"}[args.action]
        data = client.request("GET", path)
    if args.json:
        output.print_json(data)
        return EXIT_OK
    if args.action == "leader":
        print(f"leader {data.get('leader_id') or '(none)'} at {data.get('url') or '-'}, term {data.get('term')}, "
              f"since {output.format_timestamp(data.get('term_start_time'))}")
        rows = [(h.get("term"), h.get("leader_id"), h.get("previous_leader_id") or "-", h.get("reason"),
                 output.format_timestamp(h.get("timestamp"))) for h in reversed(data.get("history") or [])]
        if rows:
            print(output.table(rows, ("term", "leader", "previous", "reason", "since")))
        return EXIT_OK
    if args.action == "health":
        print(f"cluster {data.get('cluster_health')}: {data.get('reachable')} of {data.get('members')} nodes "
              f"reachable, quorum {data.get('quorum_size')}, leader {data.get('leader_id') or '(none)'}")
        nodes = data.get("nodes") or []
    else:
        if args.action == "status":
            print(f"node {data.get('node_id')} ({data.get('role')}), leader {data.get('leader_id') or '(none)'}, "
                  f"term {data.get('term')}, commit {data.get('commit_index')}, {data.get('cluster_health')}")
        nodes = data.get("nodes") or []
    print(output.table([(n.get("node_id"), n.get("role"), n.get("term", "-"), n.get("url", "-"),
                         "yes" if n.get("enabled", True) else "no",
                         "-" if n.get("last_contact_seconds") is None else f"{n['last_contact_seconds']:.1f} s ago")
                        for n in nodes], ("node", "role", "term", "url", "enabled", "last contact")))
    return EXIT_OK


def _cluster_membership(args: argparse.Namespace) -> int:
    """``dtf cluster add ID URL`` / ``dtf cluster remove ID``."""
    import time

    from dtf_app import cluster as cluster_rule
    from dtf_app import output
    from dtf_app.client import ClientError
    from dtf_app.protocol import id_problem

    problem = id_problem(args.node_id, "ID")
    if problem:
        return _fail(problem, EXIT_USAGE)
    with make_client(args) as client:
        if args.action == "remove":
            data = client.request("DELETE", f"/api/cluster/nodes/{args.node_id}", needs="admin")
            if args.json:
                output.print_json(data)
            else:
                print(f"removed {args.node_id}; voters now {', '.join(data.get('voters') or [])} (quorum "
                      f"{data.get('quorum_size')}). Stop its process: it no longer takes part.")
            return EXIT_OK
        if args.wait < 0:
            return _fail("--wait must be 0 or more seconds", EXIT_USAGE)
        try:
            url = cluster_rule.normalise_url(args.url, "URL")
        except cluster_rule.ClusterConfigError as exc:
            return _fail(str(exc), EXIT_USAGE)
        nodes = client.request("GET", "/api/cluster/nodes").get("nodes") or []
        peers = {n["node_id"]: n["url"] for n in nodes if n.get("node_id") and n.get("url")}
        peers[args.node_id] = url
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        peers_value = ",".join(f"{k}={v}" for k, v in sorted(peers.items()))
        lines = [
            f"Start coordinator {args.node_id} with the cluster's secret (the same DTF_CLUSTER_SECRET, or "
            "--cluster-secret-file FILE, as every member) and these options:",
            f"  DTF_CLUSTER_SECRET=<the cluster secret> dtf --mode coordinator --node-id {args.node_id} "
            f"--host {parts.hostname} --port {parts.port} --peers {peers_value} --data-dir DIR",
            f"  (or the environment: DTF_NODE_ID={args.node_id} DTF_PEERS={peers_value}; add --advertise-url {url} "
            "when it listens on another address)",
            "  Its --peers only bootstraps it: once added, the cluster's replicated membership is what it uses.",
        ]
        print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)
        deadline = time.monotonic() + args.wait
        while True:
            try:
                data = client.request("POST", "/api/cluster/nodes", body={"node_id": args.node_id, "url": url},
                                      needs="admin")
                break
            except ClientError as exc:
                if exc.code not in ("node_unreachable", "change_in_progress") or time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
    if args.json:
        output.print_json(data)
    else:
        state = "caught up" if data.get("caught_up") else "still catching up (see dtf cluster nodes)"
        print(f"added {args.node_id} at {url}, {state}; voters now {', '.join(data.get('voters') or [])} (quorum "
              f"{data.get('quorum_size')})")
    return EXIT_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from dtf_app import output

    with make_client(args) as client:
        if args.action == "create":
            created = client.create_key(args.name, args.role)
            if args.json:
                output.print_json(created)
            else:
                print(created["key"])
                print(f"created key {created['name']!r} with role {created['role']}: it is shown only this "
                      "once, store it now (e.g. export DTF_API_KEY=...)", file=sys.stderr)
            return EXIT_OK
        if args.action == "delete":
            data = client.delete_key(args.name)
            if args.json:
                output.print_json(data)
            else:
                print(f"deleted key {args.name!r}")
            return EXIT_OK
        keys = client.keys()
    if args.json:
        output.print_json({"keys": keys})
    else:
        print(output.table([(k.get("name"), k.get("role"), output.format_timestamp(k.get("created"))) for k in keys],
                           ("name", "role", "created")))
    return EXIT_OK


def _cmd_results_export(args: argparse.Namespace) -> int:
    import os

    from dtf_app.coordinator.backup import BackupError, export_file

    if not args.output:
        raise UsageError("dtf results export needs --output FILE (e.g. --output results.parquet)")
    try:
        if args.db:
            rows = export_file(args.db, args.table, args.export_format, os.path.abspath(args.output))
            print(f"exported {rows} row(s) of {args.table} to {args.output}", file=sys.stderr)
            return EXIT_OK
        with make_client(args) as client:
            data = client.export_results(args.table, args.export_format)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    with open(args.output, "wb") as f:
        f.write(data)
    print(f"exported {args.table} as {args.export_format} to {args.output} ({len(data)} bytes)", file=sys.stderr)
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    import os

    from dtf_app import output

    with make_client(args) as client:
        manifest = client.backup(os.path.abspath(args.to))
    if getattr(args, "json", False):
        output.print_json(manifest)
    else:
        print(f"backup of {manifest['tasks']} task(s) at log index {manifest['applied_index']} written to "
              f"{os.path.abspath(args.to)}")
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace) -> int:
    from dtf_app import output
    from dtf_app.coordinator.backup import BackupError, restore

    try:
        done = restore(args.source, args.target, args.restore_node_id)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        output.print_json(done)
    else:
        print(f"restored {done['tasks']} task(s) (log index {done['applied_index']}) into {done['data_dir']} as "
              f"the new cluster {done['cluster_id']}; start it with: dtf --mode coordinator --data-dir "
              f"{done['data_dir']}" + (f" --node-id {args.restore_node_id}" if args.restore_node_id else ""))
    return EXIT_OK
