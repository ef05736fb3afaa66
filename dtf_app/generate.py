"""Template-based task generation: ``dtf submit --generate benchmark|test``.

From model names to tasks, with the source project's model families (bert, t5, llama, vit, clip, clap,
whisper, wav2vec2, llava, xclip, qwen2, detr) and their categories:

- family detection: the family must start a word of the name (``prajjwal1/bert-tiny`` is bert, the
  ``t5`` inside ``resnet50t5`` is nothing), the most specific family first (xclip before clip);
- resource estimation: memory = weights (parameter count x precision bytes) + activations (batch x
  sequence x hidden x layers x :data:`ACTIVATION_FACTOR` x precision bytes), times :data:`OVERHEAD`; the
  parameter count comes from a size in the name (``7b``, ``0.5B``, ``350m``), a size word (tiny, small,
  base, large) or the family's reference model. It is written into the task's requirements as
  ``min_memory_gb`` (``min_gpu_memory_gb`` when the tasks require a GPU kind), so the scheduler places
  the task only where it fits and refuses (422) what fits nowhere;
- priority and dependency ordering: without ``--priority``, smaller estimates get higher priority (quick
  feedback first); per model, every other precision depends on the reference run (fp32 when asked, else
  the first precision), so a model that cannot run at all fails its variants at once;
- ``--generate test`` writes one pytest file per family from ``assets/templates/test_model_family.py.tmpl``
  (shape checks and a forward pass on torch or numpy, a clear skip with neither) and makes test tasks of them.

Templates with the defaults live in ``assets/templates/`` (``benchmark.json``, ``test.json``).
"""

from __future__ import annotations

import json
import math
import re
import string
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtf_app.protocol import BENCH_PRECISIONS, HARDWARE_KINDS

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
ACTIVATION_FACTOR = 12
"""Live activation values per hidden unit, token and layer during a forward pass (attention scores,
Q/K/V, the feed-forward intermediate): a rough constant, good to a factor of two."""
OVERHEAD = 1.2
"""Framework and allocator overhead on top of weights and activations."""
GPU_KINDS = frozenset(HARDWARE_KINDS) - {"cpu", "webgpu", "webnn", "openvino"}


class GenerationError(ValueError):
    """A generation request that cannot be honoured; the message says what is accepted (exit 2)."""


@dataclass(frozen=True)
class Family:
    """A model family: its category and modality, its reference model's size and depth."""

    name: str
    category: str
    modality: str
    reference: str
    parameters: int
    layers: int
    sizes: tuple[tuple[str, int, int], ...] = ()
    """(size word, parameters, layers) of its common sizes, e.g. ("tiny", 4_400_000, 2)."""
    aliases: tuple[str, ...] = ()
    """Other names that start a word and mean this family (tinyllama is a llama)."""


# Most specific first: xclip before clip, wav2vec2 before anything shorter.
FAMILIES: tuple[Family, ...] = (
    Family("xclip", "vision_language", "multimodal", "microsoft/xclip-base-patch32", 197_000_000, 12),
    Family("clip", "vision_language", "multimodal", "openai/clip-vit-base-patch32", 151_000_000, 12,
           (("large", 428_000_000, 24),)),
    Family("clap", "audio", "multimodal", "laion/clap-htsat-unfused", 153_000_000, 12),
    Family("llava", "vision_language", "multimodal", "llava-hf/llava-1.5-7b-hf", 7_060_000_000, 32),
    Family("wav2vec2", "audio", "audio", "facebook/wav2vec2-base", 95_000_000, 12,
           (("large", 317_000_000, 24),)),
    Family("whisper", "audio", "audio", "openai/whisper-base", 74_000_000, 6,
           (("tiny", 39_000_000, 4), ("small", 244_000_000, 12), ("medium", 769_000_000, 24),
            ("large", 1_550_000_000, 32))),
    Family("qwen2", "text_generation", "text", "Qwen/Qwen2-0.5B", 494_000_000, 24),
    Family("llama", "text_generation", "text", "meta-llama/Llama-2-7b-hf", 6_740_000_000, 32, aliases=("tinyllama",)),
    Family("bert", "text_embedding", "text", "bert-base-uncased", 110_000_000, 12,
           (("tiny", 4_400_000, 2), ("mini", 11_300_000, 4), ("small", 29_100_000, 4), ("medium", 41_700_000, 8),
            ("large", 340_000_000, 24))),
    Family("t5", "text_generation", "text", "t5-base", 223_000_000, 12,
           (("small", 60_500_000, 6), ("large", 738_000_000, 24))),
    Family("vit", "vision", "vision", "google/vit-base-patch16-224", 86_600_000, 12,
           (("large", 304_000_000, 24), ("huge", 632_000_000, 32))),
    Family("detr", "vision", "vision", "facebook/detr-resnet-50", 41_300_000, 6),
)
CATEGORIES = tuple(dict.fromkeys(f.category for f in FAMILIES))
MODALITIES = tuple(dict.fromkeys(f.modality for f in FAMILIES))
_SIZE_IN_NAME = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])")


# ---------------------------------------------------------------------------------------------- detection
def detect_family(model: str) -> Family:
    """The family of a model name; GenerationError listing the families when none matches."""
    lowered = model.lower()
    for family in FAMILIES:
        for word in (family.name, *family.aliases):
            if re.search(rf"(?<![a-z0-9]){re.escape(word)}", lowered):
                return family
    raise GenerationError(f"--model {model!r} is not a known model family; choose from "
                          f"{', '.join(sorted(f.name for f in FAMILIES))}")


def model_size(model: str, family: Family | None = None) -> tuple[int, int, str]:
    """(parameters, layers, where the numbers come from) for a model name."""
    family = family or detect_family(model)
    lowered = model.lower()
    match = _SIZE_IN_NAME.search(lowered.split("/")[-1])
    if match:
        params = int(float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6))
        # Depth scales roughly with the cube root of size at a fixed shape family.
        layers = max(1, round(family.layers * (params / family.parameters) ** (1 / 3)))
        return params, layers, f"the size {match.group(0)} in the name"
    for word, params, layers in family.sizes:
        if re.search(rf"(?<![a-z0-9]){word}(?![a-z])", lowered):
            return params, layers, f"the {family.name} {word} size"
    return family.parameters, family.layers, f"the reference model {family.reference}"


def block_shape(model: str) -> dict[str, Any]:
    """Hidden size, heads and feed-forward width the benchmark runner uses for this model (one table:
    the runner's, dtf_plugins.runners.benchmark.MODEL_SHAPES)."""
    from dtf_plugins.runners.benchmark import model_shape

    return model_shape(model)


# ---------------------------------------------------------------------------------------------- estimation
def estimate_memory_gb(parameters: int, precision: str, batch_size: int, *, hidden: int, layers: int,
                       sequence_length: int) -> float:
    """Memory a forward pass needs, in GB (see the module docstring for the formula)."""
    if precision not in PRECISION_BYTES:
        raise GenerationError(f"precision {precision!r} is not supported; choose from {', '.join(BENCH_PRECISIONS)}")
    width = PRECISION_BYTES[precision]
    weights = parameters * width
    activations = batch_size * sequence_length * hidden * layers * ACTIVATION_FACTOR * width
    return (weights + activations) * OVERHEAD / 1e9


def _round_up(gb: float) -> float:
    return max(0.1, math.ceil(gb * 10) / 10)


def memory_requirement(gb: float, hardware: Sequence[str] | None) -> dict[str, float]:
    """The requirement an estimate becomes: on the GPU when the tasks require a GPU kind."""
    key = "min_gpu_memory_gb" if set(hardware or ()) & GPU_KINDS else "min_memory_gb"
    return {key: _round_up(gb)}


# ---------------------------------------------------------------------------------------------- templates
def assets_dir() -> Path:
    """``assets/`` of the checkout or of the frozen build (dtf.spec bundles it)."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "assets"
    return Path(__file__).resolve().parents[1] / "assets"


def load_template(name: str) -> dict[str, Any]:
    path = assets_dir() / "templates" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GenerationError(f"the generation template {path} cannot be read: {exc}") from None


def _models(model: str | Sequence[str]) -> list[str]:
    names = [part.strip() for part in model.split(",")] if isinstance(model, str) else list(model)
    if not names or any(not n for n in names):
        raise GenerationError(f"--model: expected a comma-separated list like bert,t5-small, got {model!r}")
    return names


def new_ids(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh task ids for generated tasks (dependencies remapped): each submission round is new work."""
    prefix = f"gen-{uuid.uuid4().hex[:10]}"
    mapping = {t["task_id"]: f"{prefix}-{i + 1}" for i, t in enumerate(tasks) if t.get("task_id")}
    out = []
    for task in tasks:
        copy = dict(task)
        if copy.get("task_id") in mapping:
            copy["task_id"] = mapping[copy["task_id"]]
        if copy.get("dependencies"):
            copy["dependencies"] = [mapping.get(d, d) for d in copy["dependencies"]]
        out.append(copy)
    return out


def _order(tasks: list[dict[str, Any]], estimates: list[float], priority: int | None, base: int) -> None:
    """Priorities: the caller's for all, or the template's base plus a rank bonus for smaller estimates."""
    if priority is not None:
        for task in tasks:
            task["priority"] = priority
        return
    ranks = {gb: rank for rank, gb in enumerate(sorted(set(estimates), reverse=True))}
    for task, gb in zip(tasks, estimates, strict=True):
        task["priority"] = max(0, min(100, base + ranks[gb]))


# ---------------------------------------------------------------------------------------------- benchmark
def benchmark_tasks(models: list[str], sizes: list[int], precisions: list[str], *, iterations: int | None = None,
                    priority: int | None = None, hardware: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One benchmark task per (model x precision) over all batch sizes, from ``assets/templates/benchmark.json``."""
    template = load_template("benchmark")
    tasks: list[dict[str, Any]] = []
    estimates: list[float] = []
    for name in models:
        family = detect_family(name)
        params, layers, source = model_size(name, family)
        config = {**template.get("config", {}),
                  **((template.get("categories") or {}).get(family.category, {}).get("config") or {})}
        hidden = block_shape(name)["hidden"]
        reference = "fp32" if "fp32" in precisions else precisions[0]
        ids = {prec: f"gen-{len(tasks) + i + 1}" for i, prec in enumerate(precisions)}
        for prec in precisions:
            gb = estimate_memory_gb(params, prec, max(sizes), hidden=hidden, layers=layers,
                                    sequence_length=int(config.get("sequence_length") or 128))
            task_config = {**config, "model": name, "batch_sizes": list(sizes), "precision": prec}
            if iterations is not None:
                task_config["iterations"] = iterations
            task: dict[str, Any] = {
                "type": "benchmark", "name": f"{name}-{prec}", "task_id": ids[prec], "config": task_config,
                "requirements": memory_requirement(gb, hardware),
                "dependencies": [ids[reference]] if prec != reference else [],
                "timeout_seconds": template.get("timeout_seconds", 1800),
                "max_retries": template.get("max_retries", 1),
                "metadata": {"generated": "benchmark", "model_family": family.name, "category": family.category,
                             "modality": family.modality, "parameters": params, "parameters_from": source,
                             "estimated_memory_gb": round(gb, 3)}}
            tasks.append(task)
            estimates.append(gb)
    _order(tasks, estimates, priority, int(template.get("priority", 5)))
    return tasks


# ---------------------------------------------------------------------------------------------- tests
def test_files(models: list[str], output_dir: str | Path) -> list[tuple[Family, Path, list[dict[str, Any]]]]:
    """Write one pytest file per family of ``models``; returns (family, path, the models' entries)."""
    template = load_template("test")
    source = assets_dir() / "templates" / "test_model_family.py.tmpl"
    try:
        text = string.Template(source.read_text())
    except OSError as exc:
        raise GenerationError(f"the test template {source} cannot be read: {exc}") from None
    out = Path(output_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerationError(f"--output-dir {output_dir}: cannot create it: {exc.strerror or exc}") from None
    batch, seq = int(template.get("batch_size", 2)), int(template.get("sequence_length", 8))
    by_family: dict[str, tuple[Family, list[dict[str, Any]]]] = {}
    for name in models:
        family = detect_family(name)
        params, layers, _ = model_size(name, family)
        shape = block_shape(name)
        # The test runs one block of the model's shape, so that is what it needs memory for.
        block = 4 * shape["hidden"] ** 2 + 2 * shape["hidden"] * shape["ffn"]
        entry = {"model": name, "hidden": shape["hidden"], "heads": shape["heads"], "ffn": shape["ffn"],
                 "parameters": params, "layers": layers, "block_parameters": block,
                 "estimated_memory_gb": round(estimate_memory_gb(block, "fp32", batch, hidden=shape["hidden"],
                                                                 layers=1, sequence_length=seq), 6)}
        by_family.setdefault(family.name, (family, []))[1].append(entry)
    written = []
    for family, entries in by_family.values():
        path = out / f"test_generated_{family.name}.py"
        path.write_text(text.substitute(family=family.name, category=family.category, modality=family.modality,
                                        models_json=json.dumps(entries), batch=batch, sequence=seq))
        written.append((family, path, entries))
    return written


def test_tasks(models: list[str], output_dir: str | Path, *, priority: int | None = None,
               hardware: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Test tasks running the generated files, one per family, with their memory estimate."""
    template = load_template("test")
    tasks, estimates = [], []
    for family, path, entries in test_files(models, output_dir):
        gb = max(e["estimated_memory_gb"] for e in entries)
        tasks.append({"type": "test", "name": f"generated-test-{family.name}",
                      "config": {"test_file": str(path), "test_args": list(template.get("test_args") or [])},
                      "requirements": memory_requirement(gb, hardware),
                      "timeout_seconds": template.get("timeout_seconds", 600),
                      "max_retries": template.get("max_retries", 1),
                      "metadata": {"generated": "test", "model_family": family.name, "category": family.category,
                                   "modality": family.modality, "models": [e["model"] for e in entries]}})
        estimates.append(gb)
    _order(tasks, estimates, priority, int(template.get("priority", 6)))
    return tasks
