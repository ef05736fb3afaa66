"""Task generation: family detection, size and memory estimation, ordering, and the generated test files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dtf_app import client, generate
from dtf_app.cli import build_parser, build_submission


@pytest.mark.parametrize(("model", "family", "category", "modality"), [
    ("bert-base-uncased", "bert", "text_embedding", "text"),
    ("prajjwal1/bert-tiny", "bert", "text_embedding", "text"),
    ("google/t5-small", "t5", "text_generation", "text"),
    ("meta-llama/Llama-2-7b-hf", "llama", "text_generation", "text"),
    ("TinyLlama-1.1B", "llama", "text_generation", "text"),
    ("google/vit-base-patch16-224", "vit", "vision", "vision"),
    ("openai/clip-vit-base-patch32", "clip", "vision_language", "multimodal"),
    ("laion/clap-htsat-unfused", "clap", "audio", "multimodal"),
    ("openai/whisper-tiny", "whisper", "audio", "audio"),
    ("facebook/wav2vec2-base", "wav2vec2", "audio", "audio"),
    ("llava-hf/llava-1.5-7b-hf", "llava", "vision_language", "multimodal"),
    ("microsoft/xclip-base-patch32", "xclip", "vision_language", "multimodal"),
    ("Qwen/Qwen2-0.5B", "qwen2", "text_generation", "text"),
    ("facebook/detr-resnet-50", "detr", "vision", "vision"),
])
def test_every_source_family_is_detected_with_its_category(model: str, family: str, category: str,
                                                           modality: str) -> None:
    found = generate.detect_family(model)
    assert (found.name, found.category, found.modality) == (family, category, modality)


def test_a_family_must_start_a_word_and_unknown_names_list_the_families() -> None:
    with pytest.raises(generate.GenerationError) as info:
        generate.detect_family("resnet50t5")
    assert all(family in str(info.value) for family in client.MODEL_FAMILIES)
    assert {f.name for f in generate.FAMILIES} == set(client.MODEL_FAMILIES)


def test_sizes_come_from_the_name_a_size_word_or_the_reference() -> None:
    assert generate.model_size("Llama-2-7b")[0] == 7_000_000_000
    assert generate.model_size("Qwen2-0.5B")[0] == 500_000_000
    assert generate.model_size("bert-tiny")[:2] == (4_400_000, 2)
    params, layers, source = generate.model_size("bert-base-uncased")
    assert (params, layers) == (110_000_000, 12) and "reference" in source
    # "vit-base-patch16-224": 16 and 224 are not sizes (no b/m suffix).
    assert generate.model_size("google/vit-base-patch16-224")[0] == 86_600_000


def test_memory_is_parameters_times_precision_plus_activations() -> None:
    fp32 = generate.estimate_memory_gb(1_000_000_000, "fp32", 1, hidden=1000, layers=10, sequence_length=100)
    fp16 = generate.estimate_memory_gb(1_000_000_000, "fp16", 1, hidden=1000, layers=10, sequence_length=100)
    weights = 4e9 * generate.OVERHEAD / 1e9
    activations = 100 * 1000 * 10 * generate.ACTIVATION_FACTOR * 4 * generate.OVERHEAD / 1e9
    assert fp32 == pytest.approx(weights + activations)
    assert fp16 == pytest.approx(fp32 / 2)
    big = generate.estimate_memory_gb(1_000_000_000, "fp32", 64, hidden=1000, layers=10, sequence_length=100)
    assert big == pytest.approx(weights + 64 * activations)
    assert generate.memory_requirement(1.23, ["cuda"]) == {"min_gpu_memory_gb": 1.3}
    assert generate.memory_requirement(0.01, None) == {"min_memory_gb": 0.1}


def test_generated_benchmarks_are_ordered_by_size_and_depend_on_the_reference_precision() -> None:
    args = build_parser().parse_args(["submit", "--generate", "benchmark", "--model", "bert-tiny,llama-7b",
                                      "--precision", "fp16,fp32", "--batch-sizes", "1,8"])
    tasks = build_submission(args)
    by_name = {t["name"]: t for t in tasks}
    assert list(by_name) == ["bert-tiny-fp16", "bert-tiny-fp32", "llama-7b-fp16", "llama-7b-fp32"]
    # Reduced precision waits for the fp32 reference of the same model.
    assert by_name["bert-tiny-fp16"]["dependencies"] == [by_name["bert-tiny-fp32"]["task_id"]]
    assert by_name["llama-7b-fp32"]["dependencies"] == []
    # The estimate is in the requirements: a 7b model at fp32 needs 7e9 x 4 bytes and more.
    assert by_name["llama-7b-fp32"]["requirements"]["min_memory_gb"] >= 28 * generate.OVERHEAD
    assert by_name["llama-7b-fp16"]["requirements"]["min_memory_gb"] < by_name["llama-7b-fp32"]["requirements"]["min_memory_gb"]
    # Smaller first: higher priority for smaller estimates (template base 5).
    priorities = [by_name[n]["priority"] for n in ("llama-7b-fp32", "llama-7b-fp16", "bert-tiny-fp32")]
    assert priorities == sorted(priorities) and priorities[0] == 5
    assert by_name["bert-tiny-fp32"]["config"]["sequence_length"] == 128  # the template's text_embedding value
    # Every round gets fresh ids with the dependencies remapped.
    fresh = generate.new_ids(tasks)
    assert {t["task_id"] for t in fresh}.isdisjoint({t["task_id"] for t in tasks})
    fresh_by_name = {t["name"]: t for t in fresh}
    assert fresh_by_name["bert-tiny-fp16"]["dependencies"] == [fresh_by_name["bert-tiny-fp32"]["task_id"]]


def test_an_explicit_priority_applies_to_every_generated_task() -> None:
    args = build_parser().parse_args(["submit", "--generate", "benchmark", "--model", "bert,vit",
                                      "--priority", "42"])
    assert {t["priority"] for t in build_submission(args)} == {42}


def test_generated_test_files_run_one_per_family(tmp_path: Path) -> None:
    args = build_parser().parse_args(["submit", "--generate", "test", "--model",
                                      "bert-tiny,bert-mini,openai/whisper-tiny", "--output-dir", str(tmp_path)])
    tasks = build_submission(args)
    assert [t["name"] for t in tasks] == ["generated-test-bert", "generated-test-whisper"]
    assert tasks[0]["metadata"]["models"] == ["bert-tiny", "bert-mini"]
    files = sorted(p.name for p in tmp_path.glob("*.py"))
    assert files == ["test_generated_bert.py", "test_generated_whisper.py"]
    assert all(t["type"] == "test" and Path(t["config"]["test_file"]).is_file() for t in tasks)
    assert all(t["requirements"]["min_memory_gb"] == 0.1 for t in tasks)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 2 bert models + 1 whisper model, each a shape test and a forward test.
    assert "6 passed" in proc.stdout


def test_generate_test_needs_a_model_and_a_writable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = build_parser().parse_args(["submit", "--generate", "test", "--model", "bert",
                                      "--output-dir", str(blocker / "sub")])
    with pytest.raises(client.TaskFileError, match="cannot create it"):
        build_submission(args)
