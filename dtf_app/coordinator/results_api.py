"""Result analytics on the API: regressions over HTTP, and the source design's ``get_aggregated_results``.

- ``GET /api/results/regressions?metric=&window=&baseline=&min_change=&alpha=`` (read): benchmark
  configurations that regressed per hardware class (see :mod:`dtf_app.store.regressions`).
- ``GET /api/report`` (read): everything ``dtf report`` draws (:mod:`dtf_app.store.report_data`).
- ``GET /api/results/compare?a=&b=`` (read): two runs or time ranges side by side (:mod:`dtf_app.store.compare`).
- ``GET /api/results/flaky?limit=`` (read): tests that both passed and failed, most flips first.
- ``GET /api/results/tests?task_ids=|run_id=|batch_id=`` (read): per-test rows of a set of test tasks
  (``dtf results --junitxml``).
- ``WS /ws`` ``{"type": "get_aggregated_results", "result_type": "performance", "aggregation_level":
  "hardware", "filter_params": {...}, "request_id": ...}`` answers ``{"type": "aggregated_results",
  "request_id", "data": {"aggregation_level", "result_type", "results": {"basic_statistics": {group:
  {metric: {"mean", "median", "std", "p95", "min", "max", "count"}}}, "groups": [...]}}}``: the source
  design's shape, with DTF's flat groups beside it.
"""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from dtf_app.coordinator.service import Coordinator

# Which columns of an aggregate group make up each metric of the source design's basic_statistics.
_METRICS = {
    "benchmark": {"throughput": "throughput", "latency_ms": "latency_ms"},
    "test": {"duration": "duration"},
    "task": {"execution_time": "execution_time"},
}
_STAT_SUFFIXES = {"mean": "mean", "median": "p50", "std": "stddev", "p95": "p95", "min": "min", "max": "max"}


def register(app: QuartTrio, coord: Coordinator) -> None:
    """Add the routes to the app (one call in api.create_app)."""
    from dtf_app.coordinator.http import ApiError, json_response, requires

    @app.get("/api/results/regressions")
    @requires("read")
    async def get_regressions() -> Response:
        from dtf_app.store.regressions import regressions

        def number(name: str, default: float, kind: type) -> Any:
            raw = request.args.get(name)
            if raw in (None, ""):
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ApiError(400, "invalid_parameter", f"{name} must be a number, got {raw!r}") from None

        await coord.store.flush()
        try:
            data = await regressions(coord.store, metric=request.args.get("metric") or "throughput",
                                     window=number("window", 5, int), baseline=number("baseline", 20, int),
                                     min_change=number("min_change", 0.05, float), alpha=number("alpha", 0.01, float))
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
        return json_response(data)

    _register_report(app, coord)


def _register_report(app: QuartTrio, coord: Coordinator) -> None:
    from dtf_app.coordinator.http import ApiError, json_response, requires

    @app.get("/api/report")
    @requires("read")
    async def get_report() -> Response:
        from dtf_app.store.report_data import report_data

        await coord.store.flush()
        return json_response(await report_data(coord.store))

    @app.get("/api/results/tests")
    @requires("read")
    async def get_test_rows() -> Response:
        """Per-test rows of a set of test tasks: ``task_ids=a,b``, ``run_id=`` (dtf pytest) or ``batch_id=``."""
        ids = [i for i in (request.args.get("task_ids") or "").split(",") if i]
        run_id, batch_id = request.args.get("run_id"), request.args.get("batch_id")
        for task in coord.state.tasks.values():
            config = task.get("config") if isinstance(task.get("config"), dict) else {}
            spec = config.get("pytest_dist") if isinstance(config.get("pytest_dist"), dict) else {}
            if (run_id and spec.get("run_id") == run_id) or (batch_id and task.get("batch_id") == batch_id):
                ids.append(task["task_id"])
        if not (request.args.get("task_ids") or run_id or batch_id):
            raise ApiError(400, "invalid_parameter", "give task_ids (comma-separated), run_id or batch_id")
        if not ids:
            raise ApiError(404, "not_found", "no test tasks match (check the run id / batch id / task ids)")
        if len(ids) > 100_000:
            raise ApiError(400, "invalid_parameter", "at most 100000 tasks per request")
        await coord.store.flush()
        marks = ",".join("?" for _ in ids)
        rows = await coord.store.query(
            f"SELECT t.task_id, t.worker_id, t.nodeid, t.outcome, t.duration, t.message, t.report, t.timestamp "
            f"FROM test_results t WHERE t.task_id IN ({marks})", ids)
        rows.sort(key=lambda r: (str(r["timestamp"]), r["task_id"], (r["report"] or {}).get("i", 0), r["nodeid"]))
        return json_response({"tests": rows})

    @app.get("/api/results/compare")
    @requires("read")
    async def get_compare() -> Response:
        from dtf_app.store.compare import compare

        a, b = request.args.get("a"), request.args.get("b")
        if not a or not b:
            raise ApiError(400, "invalid_parameter", "a and b are required: batch:ID, run:ID or SINCE..UNTIL each")
        await coord.store.flush()
        try:
            return json_response(await compare(coord.store, a, b))
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None

    @app.get("/api/results/flaky")
    @requires("read")
    async def get_flaky() -> Response:
        from dtf_app.store.report_data import flaky_tests

        raw = request.args.get("limit") or "50"
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise ApiError(400, "invalid_parameter", f"limit must be an integer from 1 to 10000, got {raw!r}")
        await coord.store.flush()
        return json_response({"flaky": await flaky_tests(coord.store, int(raw))})


def basic_statistics(result_type: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The source design's ``{group: {metric: {mean, median, std, ...}}}`` from DTF's aggregate groups."""
    from dtf_app.store.queries import RESULT_TYPE_ALIASES

    kind = RESULT_TYPE_ALIASES.get(result_type, result_type)
    out: dict[str, Any] = {}
    for group in groups:
        stats: dict[str, Any] = {}
        for metric, prefix in _METRICS.get(kind, {}).items():
            values = {name: group.get(f"{prefix}_{suffix}") for name, suffix in _STAT_SUFFIXES.items()}
            if any(v is not None for v in values.values()):
                stats[metric] = dict(values, count=group.get("count"))
        out[str(group.get("key"))] = stats
    return out


async def aggregated_results(coord: Coordinator, message: dict[str, Any]) -> dict[str, Any]:
    """Answer a websocket ``get_aggregated_results`` request."""
    from dtf_app.store import queries

    request_id = message.get("request_id")
    result_type = message.get("result_type") or "performance"
    kind = queries.RESULT_TYPE_ALIASES.get(str(result_type), result_type)
    level = message.get("aggregation_level") or ("status" if kind == "test" else "model")
    filters = message.get("filter_params") or {}
    reply: dict[str, Any] = {"type": "aggregated_results"}
    if request_id is not None:
        reply["request_id"] = request_id
    if not isinstance(filters, dict) or not isinstance(result_type, str) or not isinstance(level, str):
        return dict(reply, type="error", error={"code": "invalid_request", "message":
                    "result_type and aggregation_level must be strings and filter_params an object"})
    await coord.store.flush()
    try:
        data = await queries.aggregate(coord.store, result_type=result_type, aggregation_level=level, filters=filters)
    except ValueError as exc:
        return dict(reply, type="error", error={"code": "invalid_parameter", "message": str(exc)})
    reply["data"] = {"aggregation_level": level, "result_type": result_type, "filter_params": filters,
                     "results": {"basic_statistics": basic_statistics(result_type, data["groups"]),
                                 "groups": data["groups"]}}
    return reply
