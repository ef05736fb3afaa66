"""Benchmark regression detection: each configuration on each hardware class against its own history.

For every (model, batch size, precision, backend, hardware class) the latest ``window`` results are
compared with the ``baseline`` results before them (a trailing window). DuckDB computes each side's
count, mean and variance; the difference is tested with Welch's t-test (unequal variances), and a
configuration is flagged when the change goes the wrong way (throughput down; latency or memory up),
is at least ``min_change`` relative to the baseline mean, and is significant at ``alpha``. Requiring
both keeps noise from firing (a significant 0.3 % drift is not a regression) and keeps a single bad
sample from firing (a 20 % drop in one run out of five is not significant).

The hardware class is the worker's advertised hardware list (e.g. ``cpu,cuda``), so a regression on
the CUDA workers is not averaged away by the CPU ones.
"""

from __future__ import annotations

import math
from typing import Any

from dtf_app.store.writer import Store

REGRESSION_METRICS = {"throughput": "higher", "latency_ms_mean": "lower", "latency_ms_p50": "lower",
                      "latency_ms_p90": "lower", "latency_ms_p99": "lower", "memory_peak_mb": "lower"}
"""Each metric with the direction that is better."""
_HARDWARE = ("coalesce(nullif(array_to_string(list_sort(json_extract_string(w.capabilities, '$.hardware[*]')), "
             "','), ''), 'unknown')")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0

    def clamp(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - qab * x / qap)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_t_test(n1: int, mean1: float, var1: float, n2: int, mean2: float, var2: float) -> tuple[float, float, float]:
    """Welch's two-sided t-test from summary statistics: (t, degrees of freedom, p-value)."""
    if n1 < 2 or n2 < 2:
        return 0.0, 0.0, 1.0
    s1, s2 = var1 / n1, var2 / n2
    if s1 + s2 <= 0.0:
        # No spread on either side: any difference is exact, none is nothing.
        return (math.inf if mean1 != mean2 else 0.0), float(n1 + n2 - 2), (0.0 if mean1 != mean2 else 1.0)
    t = (mean1 - mean2) / math.sqrt(s1 + s2)
    df = (s1 + s2) ** 2 / ((s1 * s1 / (n1 - 1) if s1 else 0.0) + (s2 * s2 / (n2 - 1) if s2 else 0.0))
    p = _betai(df / 2.0, 0.5, df / (df + t * t))
    return t, df, p


async def regressions(store: Store, *, metric: str = "throughput", window: int = 5, baseline: int = 20,
                      min_change: float = 0.05, alpha: float = 0.01) -> dict[str, Any]:
    """Configurations whose latest ``window`` results regressed against the ``baseline`` before them.

    Returns ``{"metric", "window", "baseline", "min_change", "alpha", "regressions": [...], "checked": n}``;
    each regression names the configuration and hardware class, both sides' count/mean/stddev, the
    relative change, t, degrees of freedom and p. Raises ValueError on bad parameters.
    """
    if metric not in REGRESSION_METRICS:
        raise ValueError(f"metric must be one of {', '.join(REGRESSION_METRICS)}; got {metric!r}")
    for name, value, low in (("window", window, 2), ("baseline", baseline, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10_000:
            raise ValueError(f"{name} must be an integer from {low} to 10000; got {value!r}")
    for name, value in (("min_change", min_change), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number between 0 and 1 (exclusive); got {value!r}")
    sql = f"""
        WITH ranked AS (
            SELECT b.model, b.batch_size, b.precision, b.backend, {_HARDWARE} AS hardware,
                   b.{metric} AS value,
                   row_number() OVER (PARTITION BY b.model, b.batch_size, b.precision, b.backend, {_HARDWARE}
                                      ORDER BY b.timestamp DESC, b.result_id DESC) AS n
            FROM benchmark_results b LEFT JOIN worker_nodes w ON w.worker_id = b.worker_id
            WHERE b.{metric} IS NOT NULL
        )
        SELECT model, batch_size, precision, backend, hardware,
               count(*) FILTER (WHERE n <= ?) AS recent_count,
               avg(value) FILTER (WHERE n <= ?) AS recent_mean,
               var_samp(value) FILTER (WHERE n <= ?) AS recent_var,
               count(*) FILTER (WHERE n > ?) AS baseline_count,
               avg(value) FILTER (WHERE n > ?) AS baseline_mean,
               var_samp(value) FILTER (WHERE n > ?) AS baseline_var
        FROM ranked WHERE n <= ?
        GROUP BY ALL ORDER BY model, batch_size, precision, backend, hardware
    """
    rows = await store.query(sql, [window, window, window, window, window, window, window + baseline])
    better = REGRESSION_METRICS[metric]
    found: list[dict[str, Any]] = []
    checked = 0
    for row in rows:
        if (row["recent_count"] or 0) < 2 or (row["baseline_count"] or 0) < 2 or not row["baseline_mean"]:
            continue
        checked += 1
        recent, base = float(row["recent_mean"]), float(row["baseline_mean"])
        t, df, p = welch_t_test(int(row["recent_count"]), recent, float(row["recent_var"] or 0.0),
                                int(row["baseline_count"]), base, float(row["baseline_var"] or 0.0))
        change = (recent - base) / abs(base)
        worse = change < 0 if better == "higher" else change > 0
        if worse and abs(change) >= min_change and p < alpha:
            found.append({
                "model": row["model"], "batch_size": row["batch_size"], "precision": row["precision"],
                "backend": row["backend"], "hardware": row["hardware"], "metric": metric,
                "recent_count": row["recent_count"], "recent_mean": recent,
                "recent_stddev": math.sqrt(row["recent_var"] or 0.0),
                "baseline_count": row["baseline_count"], "baseline_mean": base,
                "baseline_stddev": math.sqrt(row["baseline_var"] or 0.0),
                "change": change, "t": t if math.isfinite(t) else None, "df": df, "p_value": p,
            })
    found.sort(key=lambda r: r["change"] if better == "higher" else -r["change"])
    return {"metric": metric, "window": window, "baseline": baseline, "min_change": min_change, "alpha": alpha,
            "checked": checked, "regressions": found}
