"""TLS between coordinators: a 3-node cluster with certificates from a CA made in the test (openssl CLI).

Nodes serve HTTPS (so ``/raft`` is ``wss://``), dial their peers over ``wss://`` and verify them against
``--peer-ca``; a node given the wrong CA cannot talk to its peers. Half-configured TLS stops a node at
start with exit code 2 and one line.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import SECRET, HACluster, _env, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files in ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf", cwd=directory)
    return {"ca": directory / "ca.pem", "cert": directory / "node.pem", "key": directory / "node.key"}


@pytest.fixture
def tls_cluster(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    good = make_ca(tmp_path / "pki", "dtf-test-ca")
    other = make_ca(tmp_path / "other-pki", "another-ca")
    # Clients, the CLI and workers of this test trust the test CA the standard way (httpx, ssl).
    monkeypatch.setenv("SSL_CERT_FILE", str(good["ca"]))
    cluster = HACluster(tmp_path)
    cluster.peers = ",".join(f"{i}=https://127.0.0.1:{p}" for i, p in cluster.ports.items())
    cluster.url = lambda node_id: f"https://127.0.0.1:{cluster.ports[node_id]}"  # type: ignore[method-assign]
    yield cluster, good, other
    cluster.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-5000:]}")


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_peers_talk_over_verified_tls(tls_cluster: Any) -> None:
    ha, good, other = tls_cluster
    tls = ["--tls-cert", str(good["cert"]), "--tls-key", str(good["key"])]
    c1, c2, c3 = ha.ids
    ha.start(c1, [*tls, "--peer-ca", str(good["ca"])])
    ha.start(c2, [*tls, "--peer-ca", str(good["ca"])])
    # c3 serves the right certificate but trusts another CA: it cannot verify (so never reaches) its peers.
    ha.start(c3, [*tls, "--peer-ca", str(other["ca"])])
    leader = ha.wait_leader([c1, c2], timeout=90)
    ha.load_key()
    # The API is HTTPS only: plain HTTP on the port gets no answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{ha.ports[leader]}/status", timeout=5)
    follower = c2 if leader == c1 else c1
    redirect = ha.api("POST", follower, "/api/tasks", json={"type": "custom", "config": {"command": ["true"]}})
    assert redirect.status_code == 307 and redirect.headers["Location"].startswith(ha.url(leader))
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "tls-workers", "role": "worker"}).json()["key"]
    ha.start_worker("w1", worker_key)
    tasks = ha.submit_anywhere([{"type": "custom", "name": f"tls-{i}", "config": {"command": ["true"]}}
                                for i in range(3)])
    wait_for(lambda: all(ha.api("GET", ha.wait_leader([c1, c2]), f"/api/tasks/{t['task_id']}").json()["status"]
                         == "completed" for t in tasks), 120, interval=0.5, what="tasks over a TLS cluster")
    # Peer messages crossed the TLS links: the follower received frames from the leader over wss://.
    assert _metric(ha.api("GET", follower, "/metrics").text, "dtf_raft_peer_messages_in_total") > 0
    # The node with the wrong CA refuses its peers' certificates (and so is not the one leading).
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in ha.nodes[c3].output() or
             "certificate verify failed" in ha.nodes[c3].output(), 60, what="c3 to refuse its peers' certificate")
    assert ha.status(c3)["role"] != "leader"
    ha.nodes[c3].kill(signal.SIGTERM)


def _start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtf_app", "--mode", "coordinator", "--port", "0",
                           "--data-dir", str(tmp_path / "d"), *args], capture_output=True, text=True, timeout=90,
                          env=_env({"DTF_CLUSTER_SECRET": SECRET, "DTF_STATE_DIR": str(tmp_path / "state")}))


def test_half_configured_tls_is_one_clear_line(tmp_path: Path) -> None:
    pki = make_ca(tmp_path / "pki", "dtf-test-ca")
    https_peers = ["--node-id", "a", "--peers", "a=https://127.0.0.1:1,b=https://127.0.0.1:2"]
    http_peers = ["--node-id", "a", "--peers", "a=http://127.0.0.1:1,b=http://127.0.0.1:2"]
    cases = {
        "--tls-key is not": _start(tmp_path, "--tls-cert", str(pki["cert"]), *https_peers),
        "but this coordinator has no certificate": _start(tmp_path, *https_peers),
        "would travel in clear": _start(tmp_path, "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
                                        *http_peers),
        "--peer-ca verifies": _start(tmp_path, "--peer-ca", str(pki["ca"]), *http_peers),
        "cannot load them": _start(tmp_path, "--tls-cert", str(pki["ca"]), "--tls-key", str(pki["cert"]),
                                   *https_peers),
    }
    for expected, result in cases.items():
        assert result.returncode == 2, (expected, result.stderr[-2000:])
        assert expected in result.stderr and "Traceback" not in result.stderr, (expected, result.stderr[-2000:])
        assert len([ln for ln in result.stderr.splitlines() if "error" in ln.lower()]) == 1, result.stderr
