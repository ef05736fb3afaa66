"""Comparing two sets of results: two runs (a batch id or a ``dtf pytest`` run id) or two time ranges.

A side is ``batch:ID``, ``run:ID`` (a dtf pytest run), ``SINCE..UNTIL`` (unix seconds or ISO times),
or a bare id (tried as a batch id, then as a run id). For benchmarks each configuration's mean
throughput and latency on both sides is compared with Welch's t-test; for tests each test's outcome
and duration: tests that newly fail, tests that were fixed, and the biggest slowdowns.
"""

from __future__ import annotations

import math
from typing import Any

from dtf_app.store.queries import _parse_time, _plain_rows
from dtf_app.store.regressions import welch_t_test
from dtf_app.store.writer import Store


def _side(spec: str, alias: str) -> tuple[str, list[Any], str]:
    """A SQL condition on results ``r`` for one side, its parameters, and how it was read."""
    if not isinstance(spec, str) or not spec or len(spec) > 200:
        raise ValueError(f"a comparison side must be batch:ID, run:ID or SINCE..UNTIL; got {spec!r}")
    if ".." in spec:
        since, until = spec.split("..", 1)
        low, high = _parse_time("since", since), _parse_time("until", until)
        if low >= high:
            raise ValueError(f"the time range {spec!r} is empty: its start is not before its end")
        return (f"{alias}.timestamp >= make_timestamp(CAST(? AS BIGINT)) AND "
                f"{alias}.timestamp < make_timestamp(CAST(? AS BIGINT))",
                [round(low * 1e6), round(high * 1e6)], f"time range {spec}")
    kind, _, value = spec.partition(":") if spec.startswith(("batch:", "run:")) else ("any", "", spec)
    batch = f"json_extract_string({alias}.metadata, '$.batch_id') = ?"
    run = f"json_extract_string({alias}.raw_data, '$.pytest_dist.run_id') = ?"
    if kind == "batch":
        return batch, [value], f"batch {value}"
    if kind == "run":
        return run, [value], f"dtf pytest run {value}"
    return f"({batch} OR {run})", [value, value], f"batch or run {value}"


async def compare(store: Store, a: str, b: str, *, alpha: float = 0.01) -> dict[str, Any]:
    """Side ``a`` (before) against side ``b`` (after). Raises ValueError for a malformed side."""
    cond_a, params_a, label_a = _side(a, "r")
    cond_b, params_b, label_b = _side(b, "r")
    bench_sql = """
        SELECT b.model, b.batch_size, b.precision, b.backend, count(*) AS n,
               avg(b.throughput) AS throughput, var_samp(b.throughput) AS throughput_var,
               avg(b.latency_ms_mean) AS latency_ms, var_samp(b.latency_ms_mean) AS latency_var
        FROM benchmark_results b JOIN results r ON r.result_id = b.result_id WHERE {cond}
        GROUP BY ALL"""
    side_a = {(r["model"], r["batch_size"], r["precision"], r["backend"]): r
              for r in await store.query(bench_sql.format(cond=cond_a), params_a)}
    side_b = {(r["model"], r["batch_size"], r["precision"], r["backend"]): r
              for r in await store.query(bench_sql.format(cond=cond_b), params_b)}
    benchmarks = []
    for key in sorted(set(side_a) & set(side_b), key=str):
        ra, rb = side_a[key], side_b[key]
        row: dict[str, Any] = {"model": key[0], "batch_size": key[1], "precision": key[2], "backend": key[3],
                               "count_a": ra["n"], "count_b": rb["n"]}
        for metric, var in (("throughput", "throughput_var"), ("latency_ms", "latency_var")):
            mean_a, mean_b = ra[metric], rb[metric]
            if mean_a is None or mean_b is None:
                continue
            _, _, p = welch_t_test(int(ra["n"]), mean_a, ra[var] or 0.0, int(rb["n"]), mean_b, rb[var] or 0.0)
            row[f"{metric}_a"], row[f"{metric}_b"] = mean_a, mean_b
            row[f"{metric}_change"] = (mean_b - mean_a) / abs(mean_a) if mean_a else None
            row[f"{metric}_p_value"] = p
            row[f"{metric}_significant"] = p < alpha
        benchmarks.append(row)
    test_sql = """
        SELECT t.nodeid,
               CASE WHEN bool_or(t.outcome IN ('failed', 'error')) THEN 'failed'
                    WHEN bool_or(t.outcome = 'passed') THEN 'passed' ELSE min(t.outcome) END AS outcome,
               avg(t.duration) AS duration
        FROM test_results t JOIN results r ON r.result_id = t.result_id WHERE {cond} GROUP BY t.nodeid"""
    tests_a = {r["nodeid"]: r for r in await store.query(test_sql.format(cond=cond_a), params_a)}
    tests_b = {r["nodeid"]: r for r in await store.query(test_sql.format(cond=cond_b), params_b)}
    common = set(tests_a) & set(tests_b)
    newly_failing = sorted(n for n in common if tests_a[n]["outcome"] == "passed" and tests_b[n]["outcome"] == "failed")
    fixed = sorted(n for n in common if tests_a[n]["outcome"] == "failed" and tests_b[n]["outcome"] == "passed")
    slower = sorted(({"nodeid": n, "duration_a": tests_a[n]["duration"], "duration_b": tests_b[n]["duration"],
                      "change": (tests_b[n]["duration"] - tests_a[n]["duration"]) / tests_a[n]["duration"]}
                     for n in common if tests_a[n]["duration"] and tests_b[n]["duration"] is not None
                     and math.isfinite(tests_a[n]["duration"]) and tests_a[n]["duration"] > 0.001),
                    key=lambda r: -r["change"])[:20]
    return {"a": label_a, "b": label_b, "alpha": alpha, "benchmarks": _plain_rows(benchmarks),
            "tests": {"count_a": len(tests_a), "count_b": len(tests_b), "common": len(common),
                      "only_a": len(set(tests_a) - common), "only_b": len(set(tests_b) - common),
                      "newly_failing": newly_failing, "fixed": fixed, "slowest_changes": slower}}
