"""The ``benchmark`` runner: latency percentiles, throughput and peak memory per batch size x precision.

Config (DESIGN.md §5): ``model`` (a name containing a known family, e.g. ``bert-base-uncased``,
``prajjwal1/bert-tiny``, ``t5-small``, ``vit``), ``batch_sizes`` (list, default [1]), ``precision``
(fp32|fp16|bf16|int8 or a list, default fp32), ``iterations`` (default 20), ``warmup`` (default 3),
``sequence_length`` (default 128), ``functions`` (latency|throughput|memory, default all), and two DTF
extras: ``layers`` (transformer blocks to run, default 1) and ``backend`` (torch|numpy|python, default:
the best importable).

The measurement runs in a separate process (:mod:`dtf_plugins.runners.bench_worker`, started by file path) on a block shaped
like the model family with random weights, which the result says in ``environment.weights``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from dtf_app.protocol import (
    BATCH_SIZE_RANGE,
    BENCH_BACKENDS,
    BENCH_FUNCTIONS,
    BENCH_INT_RANGES,
    BENCH_PRECISIONS,
)
from dtf_app.worker.runners import (
    RunContext,
    TaskError,
    build_env,
    environment_info,
    python_executable,
    run_process,
)

# The vocabulary and limits are the coordinator's (checked at submit): one definition, in protocol.py.
PRECISIONS = BENCH_PRECISIONS
FUNCTIONS = BENCH_FUNCTIONS
BACKENDS = BENCH_BACKENDS

# (substring of the model name, reference model whose shape is used, hidden, heads, ffn, causal).
# More specific names come first: "bert-tiny" before "bert". A key matches at the start of a word.
MODEL_SHAPES: tuple[tuple[str, str, int, int, int, bool], ...] = (
    ("bert-tiny", "prajjwal1/bert-tiny", 128, 2, 512, False),
    ("bert-mini", "prajjwal1/bert-mini", 256, 4, 1024, False),
    ("bert-small", "prajjwal1/bert-small", 512, 8, 2048, False),
    ("bert-large", "bert-large-uncased", 1024, 16, 4096, False),
    ("distilbert", "distilbert-base-uncased", 768, 12, 3072, False),
    ("roberta", "roberta-base", 768, 12, 3072, False),
    ("bert", "bert-base-uncased", 768, 12, 3072, False),
    ("t5-small", "t5-small", 512, 8, 2048, False),
    ("t5-large", "t5-large", 1024, 16, 4096, False),
    ("t5", "t5-base", 768, 12, 3072, False),
    ("tinyllama", "TinyLlama-1.1B", 2048, 32, 5632, True),
    ("llama", "Llama-2-7b", 4096, 32, 11008, True),
    ("qwen2", "Qwen2-0.5B", 896, 14, 4864, True),
    ("gpt2", "gpt2", 768, 12, 3072, True),
    ("vit", "google/vit-base-patch16-224", 768, 12, 3072, False),
    ("xclip", "microsoft/xclip-base-patch32", 768, 12, 3072, False),
    ("clip", "openai/clip-vit-base-patch32", 768, 12, 3072, False),
    ("clap", "laion/clap-htsat-unfused (text tower)", 768, 12, 3072, False),
    ("whisper-tiny", "openai/whisper-tiny", 384, 6, 1536, False),
    ("whisper", "openai/whisper-base", 512, 8, 2048, False),
    ("wav2vec2", "facebook/wav2vec2-base", 768, 12, 3072, False),
    ("llava", "llava-1.5-7b (language model)", 4096, 32, 11008, True),
    ("detr", "facebook/detr-resnet-50 (transformer)", 256, 8, 2048, False),
)

_RESULT_MARKER = "@@DTF_BENCH_RESULT@@ "


def model_shape(model: str) -> dict:
    """The block shape used for ``model``; TaskError listing the known families when none matches."""
    lowered = model.lower()
    for key, reference, hidden, heads, ffn, causal in MODEL_SHAPES:
        # The family must start a word ("google/t5-small", not the "t5" inside "resnet50").
        if re.search(rf"(?<![a-z0-9]){re.escape(key)}", lowered):
            return {"family": key, "reference": reference, "hidden": hidden, "heads": heads, "ffn": ffn,
                    "causal": causal}
    families = sorted({entry[0] for entry in MODEL_SHAPES})
    raise TaskError(f"config.model {model!r} names no known model family; DTF benchmarks transformer blocks "
                    f"shaped like one of: {', '.join(families)}")


def parse_config(config: object) -> dict:
    """Validate a benchmark config and fill defaults; TaskError says which key is wrong and why."""
    if not isinstance(config, dict):
        raise TaskError(f"benchmark config must be an object, got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, str) or not model.strip():
        raise TaskError(f"config.model must be a model name such as 'bert-base-uncased', got {model!r}")
    batch_sizes = config.get("batch_sizes", [1])
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
        batch_sizes = [batch_sizes]
    low, high = BATCH_SIZE_RANGE
    if (not isinstance(batch_sizes, list) or not batch_sizes
            or not all(isinstance(b, int) and not isinstance(b, bool) and low <= b <= high for b in batch_sizes)):
        raise TaskError(f"config.batch_sizes must be a non-empty list of integers {low}..{high}, got {batch_sizes!r}")
    precisions = config.get("precision", ["fp32"])
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    if not isinstance(precisions, list) or not precisions or not all(p in PRECISIONS for p in precisions):
        raise TaskError(f"config.precision must be one of {list(PRECISIONS)} or a list of them, got "
                        f"{config.get('precision')!r}")
    functions = config.get("functions", list(FUNCTIONS))
    if isinstance(functions, str):
        functions = [functions]
    if not isinstance(functions, list) or not functions or not all(f in FUNCTIONS for f in functions):
        raise TaskError(f"config.functions must be a list drawn from {list(FUNCTIONS)}, got {functions!r}")
    backend = config.get("backend", "auto")
    if backend != "auto" and backend not in BACKENDS:
        raise TaskError(f"config.backend must be one of {list(BACKENDS)} (or omitted), got {backend!r}")
    spec = {
        "model": model,
        **model_shape(model),
        "batch_sizes": list(dict.fromkeys(batch_sizes)),
        "precisions": list(dict.fromkeys(precisions)),
        "functions": functions,
        "backend": backend,
        "iterations": _int(config, "iterations", 20, *BENCH_INT_RANGES["iterations"]),
        "warmup": _int(config, "warmup", 3, *BENCH_INT_RANGES["warmup"]),
        "sequence_length": _int(config, "sequence_length", 128, *BENCH_INT_RANGES["sequence_length"]),
        "layers": _int(config, "layers", 1, *BENCH_INT_RANGES["layers"]),
    }
    return spec


def _int(config: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskError(f"config.{key} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _worker_argv() -> list[str]:
    """How to start the measurement process.

    By file path when the source is on disk: bench_worker imports nothing from DTF, so this works whether
    or not dtf_plugins is importable by that interpreter (uninstalled checkout, another Python).
    """
    from dtf_plugins.runners import bench_worker

    # A frozen build ships bench_worker.py beside the module's (archived) location: dtf.spec adds it.
    source = Path(bench_worker.__file__).with_suffix(".py")
    if source.exists():
        return [python_executable(), str(source)]
    return [python_executable(), "-m", "dtf_plugins.runners.bench_worker"]


class BenchmarkRunner:
    """Runs ``benchmark`` tasks in a measurement subprocess."""

    async def run(self, task: dict, ctx: RunContext) -> dict:
        spec = parse_config(task.get("config") or {})
        payload: dict = {}

        def take_result(line: str) -> bool:
            if line.startswith(_RESULT_MARKER):
                try:
                    payload.update(json.loads(line[len(_RESULT_MARKER):]))
                except ValueError as exc:
                    payload["fatal"] = f"unreadable result from the benchmark process ({exc})"
                return True
            return False

        started = time.perf_counter()
        proc = await run_process(_worker_argv(), ctx, cwd=ctx.work_dir.resolve(), env=build_env(ctx, None),
                                 stdin_data=json.dumps(spec).encode(), on_line=take_result)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0 or not payload:
            raise TaskError(f"the benchmark process exited with code {proc.returncode} without a result; "
                            f"output tail:\n{proc.output[-4000:]}", error_class="crash")
        if payload.get("fatal"):
            raise TaskError(f"benchmark could not run: {payload['fatal']}")
        rows, errors = payload["rows"], payload["errors"]
        if not rows:
            raise TaskError("no benchmark configuration could run: " + "; ".join(errors))
        keep = set(spec["functions"])
        for row in rows:
            # Only what was asked for: functions=["latency"] leaves throughput and memory out (None).
            if "throughput" not in keep:
                row["throughput"] = None
            if "latency" not in keep and "throughput" in keep:
                for key in ("latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"):
                    row[key] = None
        best = max(rows, key=lambda r: r["throughput"] or 0.0)
        metrics = {
            "configurations": len(rows),
            "configurations_failed": len(errors),
            "best_throughput": best["throughput"],
            "best_throughput_batch_size": best["batch_size"],
            "best_throughput_precision": best["precision"],
            "min_latency_ms": min((r["latency_ms_mean"] for r in rows if r["latency_ms_mean"] is not None),
                                  default=None),
            "max_memory_peak_mb": max((r["memory_peak_mb"] for r in rows if r["memory_peak_mb"] is not None),
                                      default=None),
        }
        environment = {
            **environment_info(),
            "backend": payload["backend"],
            "backend_version": payload["backend_version"],
            "device": rows[0].get("device"),
            "weights": f"random weights (no local weights are used): {spec['layers']} transformer block(s) "
                       f"shaped like {spec['reference']} (hidden {spec['hidden']}, heads {spec['heads']}, "
                       f"ffn {spec['ffn']}{', causal' if spec['causal'] else ''})",
        }
        return {
            "status": "partial" if errors else "success",
            "metrics": metrics,
            "execution_time": elapsed,
            "environment": environment,
            "raw_data": {"spec": spec, "errors": errors},
            "output": proc.output,
            "benchmarks": rows,
        }
