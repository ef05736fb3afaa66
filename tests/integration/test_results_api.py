"""Result analytics over a real cluster: the source design's get_aggregated_results, and regressions over HTTP."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from tests.integration.harness import Cluster


async def test_aggregated_results_in_the_source_design_s_shape(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    await trio.to_thread.run_sync(lambda: cluster.start_worker("w1"))
    await trio.to_thread.run_sync(lambda: cluster.wait_workers(1))
    created = await trio.to_thread.run_sync(lambda: cluster.submit(
        {"type": "benchmark", "config": {"model": "bert", "batch_sizes": [1, 2], "precision": "fp32",
                                         "iterations": 3, "warmup": 0, "sequence_length": 8}}).json())
    task = await trio.to_thread.run_sync(lambda: cluster.wait_task(created["task_id"], timeout=180))
    assert task["status"] == "completed", task
    ws_url = cluster.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(ws_url, extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "get_aggregated_results", "request_id": "req-1234",
                                          "result_type": "performance", "aggregation_level": "hardware",
                                          "filter_params": {"model": "bert"}}))
        reply = json.loads(await ws.get_message())
        assert reply["type"] == "aggregated_results" and reply["request_id"] == "req-1234", reply
        data = reply["data"]
        assert (data["aggregation_level"], data["result_type"]) == ("hardware", "performance")
        stats = data["results"]["basic_statistics"]["cpu"]["throughput"]
        assert stats["count"] == 2 and stats["mean"] > 0 and stats["median"] > 0 and stats["std"] is not None
        await ws.send_message(json.dumps({"type": "get_aggregated_results", "request_id": 2,
                                          "result_type": "colour"}))
        error = json.loads(await ws.get_message())
        assert error["type"] == "error" and error["request_id"] == 2 and "result_type" in error["error"]["message"]

    response = await trio.to_thread.run_sync(lambda: cluster.api("GET", "/api/results/regressions"))
    assert response.status_code == 200 and response.json()["regressions"] == []
    bad = await trio.to_thread.run_sync(lambda: cluster.api("GET", "/api/results/regressions",
                                                            params={"window": "x"}))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"
    cli = await trio.to_thread.run_sync(lambda: cluster.cli("results", "--regressions", "--coordinator", cluster.url,
                                                            "--api-key", cluster.admin_key))
    assert cli.returncode == 0 and "no regressions of throughput" in cli.stdout, cli.stderr

    page, image = cluster.root / "report.html", cluster.root / "status.png"
    made = await trio.to_thread.run_sync(lambda: cluster.cli("report", "--html", str(page), "--png", str(image),
                                                             "--coordinator", cluster.url, "--api-key",
                                                             cluster.admin_key))
    assert made.returncode == 0, made.stderr
    text = page.read_text()
    assert "<svg" in text and "bert batch 1 fp32" in text and "completed" in text
    assert image.read_bytes().startswith(b"\x89PNG")
    usage = await trio.to_thread.run_sync(lambda: cluster.cli("report", "--coordinator", cluster.url))
    assert usage.returncode == 2 and "--html FILE" in usage.stderr
