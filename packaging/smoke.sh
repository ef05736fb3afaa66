#!/usr/bin/env bash
# Smoke test of the frozen build (make binary first): the frozen `dtf` really runs each mode.
#   packaging/smoke.sh [path/to/dtf]        default dist/dtf/dtf (one-dir); also works on dist/dtf-onefile
# Steps: --version; hardware --json (every built-in probe loads without package metadata); `dtf up` with
# one worker running assets/tasks/demo.json; a frozen --mode worker against a coordinator run from source;
# the TUI in a pseudo-terminal (plain `dtf` on an embedded cluster: it draws its tabs and quits on q).
# Test tasks need a Python with pytest on the worker: DTF_PYTHON (here the venv's) — a frozen worker has
# no interpreter of its own for them.
set -euo pipefail
cd "$(dirname "$0")/.."
DTF=$(realpath "${1:-dist/dtf/dtf}")
PY="${PYTHON:-$PWD/.venv/bin/python}"   # not realpath: a venv python is a symlink
[ -x "$DTF" ] || { echo "smoke: $DTF not found: run make binary first" >&2; exit 2; }
WORK=$(mktemp -d)
export DTF_STATE_DIR="$WORK/state"     # a private local-coordinator registry
export DTF_PYTHON="$PY"
unset DTF_API_KEY DTF_COORDINATOR DTF_CONFIG CONFIG_FILE || true
PIDS=()
OK=0
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$OK" = 1 ]; then rm -rf "$WORK"; else echo "smoke: kept $WORK for a look" >&2; fi
}
trap cleanup EXIT
step() { printf '\nsmoke: %s\n' "$*"; }
fail() { echo "smoke: FAILED: $*" >&2; for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "----- $f"; tail -40 "$f"; }; done; exit 1; }

step "dtf --version"
out=$("$DTF" --version) || fail "--version exited $?"
[[ "$out" == "dtf "* ]] || fail "--version printed '$out'"
echo "$out"

step "dtf hardware --json"
"$DTF" hardware --json > "$WORK/hw.json" || fail "hardware --json exited $?"
"$PY" - "$WORK/hw.json" <<'PYEOF' || fail "hardware document"
import json, sys
caps = json.load(open(sys.argv[1]))["hardware"]
assert caps["probe_errors"] == [], caps["probe_errors"]
for part in ("platform", "cpu", "memory", "disk", "container"):
    assert part in caps, part
print("probes ok:", ", ".join(caps["hardware"]), "on", caps["platform"]["os"], caps["cpu"].get("model", ""))
PYEOF

step "dtf up --workers 1 --headless --run-file assets/tasks/demo.json"
"$DTF" up --workers 1 --headless --data-dir "$WORK/up" --run-file assets/tasks/demo.json > "$WORK/up.log" 2>&1 \
  || fail "dtf up exited $? ($(tail -5 "$WORK/up.log"))"
tail -12 "$WORK/up.log"

step "frozen --mode worker against a coordinator run from source"
"$PY" -m dtf_app --mode coordinator --host 127.0.0.1 --port 0 --data-dir "$WORK/coord" > "$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
# node.json appears once the port is bound; admin.key once the new leader has bootstrapped its keys.
for _ in $(seq 300); do [ -f "$WORK/coord/node.json" ] && [ -f "$WORK/coord/admin.key" ] && break; sleep 0.1; done
URL=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$WORK/coord/node.json") \
  || fail "the coordinator did not start"
"$DTF" --mode worker --coordinator "$URL" --worker-id frozen-worker --data-dir "$WORK/w" > "$WORK/worker.log" 2>&1 &
PIDS+=($!)
"$PY" -m dtf_app submit --coordinator "$URL" --data-dir "$WORK/coord" --type custom --name frozen-check --wait --json \
  -- "$PY" -c "print('hello from a frozen worker')" > "$WORK/submit.json" 2> "$WORK/submit.log" || fail "submit exited $?"
"$PY" - "$WORK/submit.json" <<'PYEOF' || fail "task result"
import json, sys
(task,) = json.load(open(sys.argv[1]))
assert task["status"] == "completed" and task["worker_id"] == "frozen-worker", task
print("task", task["task_id"], "completed on", task["worker_id"])
PYEOF

step "frozen TUI in a pseudo-terminal"
# Plain `dtf` opens the dashboard on an embedded cluster (a coordinator and two worker processes, all the
# frozen executable): it must draw its tabs, and `q` must stop everything with exit code 0.
mkdir -p "$WORK/tui"
"$PY" - "$DTF" "$WORK/tui" <<'PYEOF' || fail "the TUI in a pty"
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.chdir(sys.argv[2])  # the embedded cluster keeps its data in ./dtf-data
    os.environ.update(TERM="xterm-256color", COLUMNS="160", LINES="48")
    os.execv(sys.argv[1], [sys.argv[1]])
out, deadline = b"", time.monotonic() + 90
def read(until):
    global out
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            out += chunk
            if b"Overview" in out and b"Workers" in out:
                return True
    return False
drew = read(deadline)
os.write(fd, b"q")
end = time.monotonic() + 60
code = None
while time.monotonic() < end:
    read(time.monotonic() + 0.5)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        break
if code is None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
assert drew, out[-2000:]
assert code == 0, (code, out[-2000:])
print("the TUI drew its tabs in a pseudo-terminal and quit cleanly")
PYEOF

OK=1
printf '\nsmoke: all steps passed (%s)\n' "$DTF"
