"""The coordinator's server bootstrap: listen, recover, run, shut down cleanly.

``serve_coordinator`` binds the Quart API (hypercorn's trio worker) first, then opens the DuckDB store
and the Raft log, rebuilds the state machine (snapshot + replay) and runs the replicator, the leader-duty
supervisor and the cluster monitor; until all that is done ``GET /status`` answers 503 with what it waits
for (readiness.py), every other route 503 ``starting``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial

import trio

from dtf_app import fsutil, localreg
from dtf_app.config import Settings
from dtf_app.coordinator import readiness, tls
from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.coordinator")


def _write_node_file(coord: Coordinator) -> None:
    path = coord.data_dir / "node.json"
    tmp = path.with_suffix(".tmp")
    with os.fdopen(fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as handle:
        handle.write(json.dumps({"url": coord.url, "node_id": coord.node_id, "pid": os.getpid()}))
    os.replace(tmp, path)


def _say_what_it_is(coord: Coordinator, settings: Settings) -> None:
    if coord.cluster.is_single:
        if settings.high_availability.get("enabled"):
            log.warning("high availability is enabled with no peers: coordinator %s runs as a one-member "
                        "Raft cluster", coord.node_id)
        else:
            log.info("coordinator %s: a one-member cluster (no peers configured)", coord.node_id)
    else:
        log.info("coordinator %s: member of a %d-node cluster (%s)", coord.node_id, len(coord.cluster.members),
                 ", ".join(f"{i}={u}" for i, u in coord.cluster.members.items()))


async def serve_coordinator(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a coordinator until cancelled; ``task_status.started(url)`` once it serves."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from dtf_app.coordinator.api import create_app

    coord = Coordinator(settings)
    _say_what_it_is(coord, settings)
    app = create_app(coord)
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    if settings.workers_port is not None and (settings.workers_port == 0 or settings.workers_port != settings.port):
        # The design's server.workers_port: a second listener serving the same app, so workers configured
        # for that port connect (the first bind stays the node's advertised URL).
        config.bind.append(f"{settings.host}:{settings.workers_port}")
    tls.configure_server(config, settings)  # HTTPS (and wss:// peers) with a certificate
    config.accesslog = None
    config.errorlog = logging.getLogger("dtf.http")
    config.graceful_timeout = 2.0
    config.websocket_ping_interval = None
    # A results frame may carry many outcomes, each with per-test rows of a large suite.
    config.websocket_max_message_size = 64 * 1024 * 1024
    stop = trio.Event()
    registration = None
    try:
        async with trio.open_nursery() as nursery:
            # Listen first: during a long recovery /status answers 503 with what it waits for (every
            # other route 503 "starting"), and a port in use stops the start before the data dir is touched.
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            coord.url = settings.advertise_url or _pick_url(binds, settings)
            await trio.to_thread.run_sync(coord.open_store)
            _write_node_file(coord)  # after the store's lock: a second coordinator never overwrites it
            await trio.to_thread.run_sync(coord.open_log)
            await nursery.start(coord.store.run)
            await nursery.start(coord.replicator.run)
            nursery.start_soon(coord.duties.supervise)
            nursery.start_soon(coord.monitor.run)
            nursery.start_soon(coord.health_monitor.node_loop)
            registration = localreg.register(coord.url, coord.data_dir)
            if coord.cluster.is_single:
                await coord.recover()
                coord.readiness.done(readiness.RECOVERY)
                # A single node leads at once; wait for its first duties (bootstrap key written, loops up).
                while not coord.duties.running:
                    await trio.sleep(0.01)
            else:
                nursery.start_soon(_recover_and_report, coord)
            log.info("coordinator %s serving on %s (data in %s)", coord.node_id, coord.url, coord.data_dir)
            if len(binds) > 1:
                log.info("workers port (server.workers_port): also serving on %s", ", ".join(binds[1:]))
            task_status.started(coord.url)
            await trio.sleep_forever()
    finally:
        localreg.unregister(registration)
        with trio.CancelScope(shield=True):
            try:
                if coord.store is not None:
                    await coord.store.flush()
            finally:
                if coord.store is not None:
                    coord.store.close()
                coord.replicator.close()


def _pick_url(binds: list[str], settings: Settings) -> str:
    for bind in binds:
        if bind.startswith("http"):
            host, _, port = bind.rpartition(":")
            if settings.host in ("0.0.0.0", "::"):
                return f"{bind.split('://')[0]}://127.0.0.1:{port}"
            return bind
    return f"{tls.scheme(settings)}://{settings.host}:{settings.port}"


async def _recover_and_report(coord: Coordinator) -> None:
    """A cluster member: replay what it knows, then keep its readiness current (a leader known, caught
    up with the commit index, its loops running while it leads) and say every few seconds while no leader
    is known (pods of a StatefulSet start one by one; writes are refused until a majority elects one)."""
    await coord.recover()
    coord.readiness.done(readiness.RECOVERY)
    quiet_until = 0.0
    while True:
        rep = coord.replicator
        for condition, holds in ((readiness.LEADER_KNOWN, coord.leader_id is not None),
                                 (readiness.CAUGHT_UP, coord.state.applied_index >= rep.commit_index),
                                 (readiness.LOOPS, not rep.is_leader or coord.duties.running)):
            if holds:
                coord.readiness.done(condition)
            else:
                coord.readiness.require(condition)
        await trio.sleep(0.2)
        if coord.leader_id is None and time.monotonic() >= quiet_until:
            log.warning("no leader yet: waiting for a majority of %d of the %d coordinators (%s) to be reachable",
                        coord.cluster.quorum, len(coord.cluster.members), ", ".join(coord.cluster.members))
            quiet_until = time.monotonic() + 5.0
