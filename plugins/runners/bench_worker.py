"""Benchmark measurement process: ``python -m dtf_plugins.runners.bench_worker``.

The benchmark runner starts this module in its own process group, writes a JSON spec on stdin and reads
progress lines and, last, one line ``@@DTF_BENCH_RESULT@@ {json}`` from stdout. Running apart from the
worker means a timeout or cancel can kill it outright, and its peak memory is the workload's own.

The workload is one or more transformer blocks (self-attention + MLP, the building block of every model
family DTF benchmarks) shaped like the requested model, with random weights: DTF never downloads
weights. Backends, best first: torch (real kernels in the requested dtype, on cuda/mps/cpu), numpy
(float32 BLAS; fp16 stored as float16 but multiplied in float32 because numpy has no half-precision
BLAS; bf16 and int8 emulated by rounding/quantizing values, then float32 BLAS), pure Python (a
reduced-width block, only so a bare worker can still report something).

This module imports nothing from DTF: it must start fast and run on its own.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import tracemalloc

RESULT_MARKER = "@@DTF_BENCH_RESULT@@ "


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(latencies_s: list[float], batch_size: int) -> dict:
    """Latency statistics in ms and throughput in items per second."""
    ms = sorted(t * 1000.0 for t in latencies_s)
    mean = sum(ms) / len(ms)
    return {
        "latency_ms_mean": mean,
        "latency_ms_p50": percentile(ms, 50),
        "latency_ms_p90": percentile(ms, 90),
        "latency_ms_p99": percentile(ms, 99),
        "latency_ms_min": ms[0],
        "throughput": batch_size / (mean / 1000.0) if mean > 0 else math.inf,
    }


def timed(step, warmup: int, iterations: int, sync=lambda: None) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


# -- numpy ---------------------------------------------------------------------------------------------------

NUMPY_NOTES = {
    "fp32": "float32 BLAS",
    "fp16": "float16 storage of weights and activations, float32 compute (numpy has no half-precision BLAS)",
    "bf16": "bf16 emulated: values rounded to bfloat16, stored and computed as float32 (numpy has no bfloat16)",
    "int8": "int8 emulated: int8 storage with per-tensor scales, dequantized to float32 for the BLAS matmul",
}


def numpy_block(np, spec: dict, batch_size: int, precision: str, rng):
    """Build one forward pass (a closure) of ``layers`` transformer blocks; returns (step, note)."""
    h, heads, ffn = spec["hidden"], spec["heads"], spec["ffn"]
    seq, layers, causal = spec["sequence_length"], spec["layers"], spec["causal"]
    head_dim = h // heads

    def store(a):
        # A tensor in the requested precision as it would sit in memory.
        if precision == "fp16":
            return a.astype(np.float16)
        if precision == "bf16":
            bits = a.astype(np.float32).view(np.uint32)
            # Round to nearest even on the upper 16 bits: what a bfloat16 conversion does.
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
            return rounded.view(np.float32)
        if precision == "int8":
            scale = float(np.abs(a).max()) / 127.0 or 1.0
            return (np.clip(np.rint(a / scale), -127, 127).astype(np.int8), np.float32(scale))
        return a.astype(np.float32, copy=False)

    def f32(stored):
        if isinstance(stored, tuple):
            q, scale = stored
            return q.astype(np.float32) * scale
        return stored if stored.dtype == np.float32 else stored.astype(np.float32)

    def matmul(x, w):
        # Activations pass through the storage precision too, so fp16/bf16/int8 rounding is real.
        return f32(store(x)) @ f32(w)

    def weight(rows, cols):
        return store(rng.standard_normal((rows, cols), dtype=np.float32) / math.sqrt(rows))

    blocks = [{"qkv": weight(h, 3 * h), "out": weight(h, h), "up": weight(h, ffn), "down": weight(ffn, h)}
              for _ in range(layers)]
    x0 = rng.standard_normal((batch_size, seq, h), dtype=np.float32)
    mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), k=1) if causal else None

    def layer_norm(x):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)

    def step():
        x = x0
        for w in blocks:
            qkv = matmul(x, w["qkv"]).reshape(batch_size, seq, 3, heads, head_dim)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(head_dim)
            if mask is not None:
                scores = scores + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v
            x = layer_norm(x + matmul(attn.transpose(0, 2, 1, 3).reshape(batch_size, seq, h), w["out"]))
            hidden = matmul(x, w["up"])
            hidden = 0.5 * hidden * (1.0 + np.tanh(0.7978845608 * (hidden + 0.044715 * hidden**3)))  # GELU
            x = layer_norm(x + matmul(hidden, w["down"]))
        return x

    return step, NUMPY_NOTES[precision]


def run_numpy(spec: dict, batch_size: int, precision: str, measure_memory: bool) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    peak_mb = None
    if measure_memory:
        # numpy reports its buffers to tracemalloc; one traced build + forward gives weights + activations.
        # Timing runs untraced so tracing costs do not bend the latencies.
        tracemalloc.start()
        step, note = numpy_block(np, spec, batch_size, precision, rng)
        # Peak during inference with the weights resident, not the temporaries of building them.
        tracemalloc.reset_peak()
        step()
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        step, note = numpy_block(np, spec, batch_size, precision, rng)
    samples = timed(step, spec["warmup"], spec["iterations"])
    return {**summarize(samples, batch_size), "memory_peak_mb": peak_mb, "precision_note": note,
            "device": "cpu", "memory_source": "tracemalloc" if measure_memory else None}


# -- torch ---------------------------------------------------------------------------------------------------


def run_torch(spec: dict, batch_size: int, precision: str, measure_memory: bool) -> dict:
    import resource

    import torch

    torch.manual_seed(0)
    if torch.cuda.is_available():
        device = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    note = f"torch {precision} on {device}"
    layer = torch.nn.TransformerEncoderLayer(d_model=spec["hidden"], nhead=spec["heads"],
                                             dim_feedforward=spec["ffn"], batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, num_layers=spec["layers"], enable_nested_tensor=False).eval()
    if precision == "int8":
        if device != "cpu":
            raise ValueError("int8 with torch is measured through CPU dynamic quantization; this worker's "
                             f"torch device is {device}")
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        dtype = torch.float32
        note = "torch dynamic int8 quantization of Linear layers on cpu"
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = model.to(device=device, dtype=dtype)
    seq = spec["sequence_length"]
    x = torch.randn(batch_size, seq, spec["hidden"], device=device, dtype=dtype)
    mask = None
    if spec["causal"]:
        mask = torch.nn.Transformer.generate_square_subsequent_mask(seq, device=device, dtype=dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    def step() -> None:
        model(x, mask=mask, is_causal=mask is not None)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        samples = timed(step, spec["warmup"], spec["iterations"], sync)
    peak_mb, source = None, None
    if measure_memory:
        if device == "cuda":
            peak_mb, source = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # ru_maxrss is KiB on Linux, bytes on macOS; it is the process peak so far (monotonic).
            peak_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
            source = "ru_maxrss (process peak)"
    return {**summarize(samples, batch_size), "memory_peak_mb": peak_mb, "precision_note": note,
            "device": device, "memory_source": source}


# -- pure Python ---------------------------------------------------------------------------------------------

PYTHON_MAX_WIDTH = 32
PYTHON_MAX_SEQUENCE = 16


def run_python(spec: dict, batch_size: int, precision: str, measure_memory: bool) -> dict:
    rng = random.Random(0)
    h = min(spec["hidden"], PYTHON_MAX_WIDTH)
    ffn = min(spec["ffn"], 4 * h)
    seq = min(spec["sequence_length"], PYTHON_MAX_SEQUENCE)

    def matrix(rows: int, cols: int) -> list[list[float]]:
        return [[rng.gauss(0, 1 / math.sqrt(rows)) for _ in range(cols)] for _ in range(rows)]

    def matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
        cols = list(zip(*b, strict=True))
        return [[sum(x * y for x, y in zip(row, col, strict=True)) for col in cols] for row in a]

    if measure_memory:
        tracemalloc.start()
    w_qk, w_up, w_down = matrix(h, h), matrix(h, ffn), matrix(ffn, h)
    inputs = [matrix(seq, h) for _ in range(batch_size)]

    def step() -> None:
        for x in inputs:
            q = matmul(x, w_qk)
            scores = matmul(q, [list(r) for r in zip(*x, strict=True)])
            probs = []
            for row in scores:
                top = max(row)
                exps = [math.exp(s - top) for s in row]
                total = sum(exps)
                probs.append([e / total for e in exps])
            mixed = matmul(probs, x)
            hidden = [[max(0.0, v) for v in r] for r in matmul(mixed, w_up)]
            matmul(hidden, w_down)

    peak_mb = None
    if measure_memory:
        tracemalloc.reset_peak()
        step()
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    samples = timed(step, spec["warmup"], spec["iterations"])
    note = (f"pure-Python fallback (no numpy/torch): reduced block, width {h}, sequence {seq}, float64; "
            f"{precision} not applied")
    return {**summarize(samples, batch_size), "memory_peak_mb": peak_mb, "precision_note": note,
            "device": "cpu", "memory_source": "tracemalloc" if measure_memory else None}


# -- driver --------------------------------------------------------------------------------------------------

BACKENDS = {"torch": run_torch, "numpy": run_numpy, "python": run_python}


def choose_backend(requested: str) -> tuple[str, str | None]:
    """(backend, version): the requested one, or with ``auto`` the best importable."""
    import importlib

    order = ["torch", "numpy", "python"] if requested == "auto" else [requested]
    for name in order:
        if name == "python":
            return "python", sys.version.split()[0]
        try:
            module = importlib.import_module(name)
        except ImportError:
            if requested != "auto":
                raise
            continue
        return name, getattr(module, "__version__", None)
    return "python", sys.version.split()[0]


def main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        backend, version = choose_backend(spec.get("backend", "auto"))
    except ImportError as exc:
        print(RESULT_MARKER + json.dumps({"fatal": f"backend {spec.get('backend')!r} is not importable: {exc}"}))
        return 0
    measure = BACKENDS[backend]
    rows, errors = [], []
    for precision in spec["precisions"]:
        for batch_size in spec["batch_sizes"]:
            label = f"batch_size={batch_size} precision={precision}"
            try:
                stats = measure(spec, batch_size, precision, "memory" in spec["functions"])
            except Exception as exc:  # one unsupported configuration must not lose the others
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                print(f"{label}: failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            row = {"model": spec["model"], "batch_size": batch_size, "precision": precision, "backend": backend,
                   "iterations": spec["iterations"], "sequence_length": spec["sequence_length"], **stats}
            rows.append(row)
            mem = f", peak {row['memory_peak_mb']:.1f} MB" if row["memory_peak_mb"] is not None else ""
            print(f"{label}: mean {row['latency_ms_mean']:.3f} ms, p90 {row['latency_ms_p90']:.3f} ms, "
                  f"{row['throughput']:.1f} items/s{mem}", flush=True)
    print(RESULT_MARKER + json.dumps({"backend": backend, "backend_version": version, "rows": rows,
                                      "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
