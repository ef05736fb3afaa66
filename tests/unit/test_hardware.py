"""Hardware detection: probes, merging, simulated profiles.

There is no GPU on the test machines, so the NVIDIA probe is tested against a fake ``pynvml`` module
object injected with monkeypatch into ``sys.modules`` (it mimics nvidia-ml-py's function names and its
NVMLError class). AMD is tested against a fake sysfs tree in tmp_path and a fake ``amd-smi`` executable
(a real script on disk that prints JSON). The real probes also run on this machine, where they must
report the CPU and no accelerators, without errors.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import pytest

from dtf_app import hardware, plugins
from dtf_app.hardware import detect, format_table, hardware_kinds, load_profile, validate_profile
from dtf_plugins.hardware import amd, apple, container, nvidia

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "hardware"


# -- real detection on this machine ---------------------------------------------------------------------------


def test_detect_reports_this_machine() -> None:
    caps = detect()
    assert caps["simulated"] is False
    assert caps["probe_errors"] == []
    assert caps["hardware"][0] == "cpu"
    assert caps["cpu"]["threads"] >= 1 and caps["cpu"]["cores"] >= 1
    assert caps["memory"]["total_gb"] > 0
    assert caps["disk"]["total_gb"] > 0
    assert caps["platform"]["python"] == sys.version.split()[0]
    assert caps["gpu"]["count"] == len(caps["gpu"]["devices"])
    assert isinstance(caps["container"]["in_container"], bool)
    json.dumps(caps)  # travels in the hello message


def test_raising_probe_is_reported_and_others_still_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict:
        raise OSError("sensor gone")

    real = hardware.load_plugins

    def with_broken(group: str) -> tuple[dict, list[str]]:
        loaded, errors = real(group)
        return {**loaded, "broken": broken, "not_a_dict": lambda: ["x"]}, [*errors, "plugin 'gone' failed"]

    monkeypatch.setattr(hardware, "load_plugins", with_broken)
    caps = detect()
    assert "cpu" in caps and caps["memory"]["total_gb"] > 0
    assert any("'broken'" in e and "OSError: sensor gone" in e for e in caps["probe_errors"])
    assert any("'not_a_dict'" in e and "expected dict" in e for e in caps["probe_errors"])
    assert "plugin 'gone' failed" in caps["probe_errors"]


def test_format_table_mentions_the_essentials() -> None:
    text = format_table(detect(str(ASSETS / "nvidia-a100.json")))
    assert text.startswith("SIMULATED")
    assert "NVIDIA A100-SXM4-80GB" in text and "compute 8.0" in text and "80 GB" in text
    assert "cpu, cuda" in text


def test_hardware_kinds_orders_and_always_has_cpu() -> None:
    caps = {"hardware": ["openvino"], "gpu": {"devices": [{"type": "rocm"}, {"type": "cuda"}]}}
    assert hardware_kinds(caps) == ["cpu", "cuda", "rocm", "openvino"]
    assert hardware_kinds({}) == ["cpu"]


# -- NVIDIA through a fake NVML ---------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(devices: list[dict], init_error: str | None = None, broken_index: int | None = None):
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError
    state = {"shutdown": 0}

    def init() -> None:
        if init_error:
            raise FakeNVMLError(init_error)

    def handle(index: int) -> int:
        if index == broken_index:
            raise FakeNVMLError("GPU is lost")
        return index

    module.nvmlInit = init
    module.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    module.nvmlSystemGetDriverVersion = lambda: b"550.54.15"  # old bindings return bytes
    module.nvmlSystemGetCudaDriverVersion = lambda: 12040
    module.nvmlDeviceGetCount = lambda: len(devices)
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetName = lambda h: devices[h]["name"]
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=devices[h]["bytes"])
    module.nvmlDeviceGetCudaComputeCapability = lambda h: devices[h]["cc"]
    module.state = state
    return module


def test_nvidia_probe_reports_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml([{"name": "NVIDIA A100-SXM4-80GB", "bytes": 80 * 1024**3, "cc": (8, 0)},
                        {"name": "Tesla T4", "bytes": 16 * 1024**3, "cc": (7, 5)}])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    result = nvidia.probe()
    assert result["hardware"] == ["cuda"]
    first, second = result["gpu"]["devices"]
    assert first == {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "type": "cuda", "vendor": "nvidia",
                     "memory_gb": 80.0, "compute_capability": "8.0", "driver": "550.54.15", "cuda_version": "12.4"}
    assert second["compute_capability"] == "7.5" and second["memory_gb"] == 16.0
    assert fake.state["shutdown"] == 1
    # Merged through detect(), the devices set the count and the hardware list.
    caps = detect()
    assert caps["gpu"]["count"] == 2 and "cuda" in caps["hardware"]


def test_nvidia_probe_without_driver_is_empty_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error="NVML Shared Library Not Found"))
    result = nvidia.probe()
    assert result["gpu"]["devices"] == [] and "hardware" not in result
    assert "NVML Shared Library Not Found" in result["notes"][0]


def test_nvidia_probe_skips_a_lost_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml([{"name": "A", "bytes": 1024**3, "cc": (8, 6)}, {"name": "B", "bytes": 1024**3, "cc": (8, 6)}],
                       broken_index=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    result = nvidia.probe()
    assert [d["name"] for d in result["gpu"]["devices"]] == ["B"]
    assert "device 0 could not be queried (GPU is lost)" in result["notes"][0]
    assert fake.state["shutdown"] == 1


def test_nvidia_probe_on_this_machine_does_not_raise() -> None:
    result = nvidia.probe()  # the real nvidia-ml-py; no driver here
    assert isinstance(result["gpu"]["devices"], list)


# -- AMD -----------------------------------------------------------------------------------------------------


def make_card(root: Path, name: str, vendor: str, vram: int | None = None, product: str | None = None) -> None:
    dev = root / name / "device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "device").write_text("0x740c\n")
    if vram is not None:
        (dev / "mem_info_vram_total").write_text(f"{vram}\n")
    if product:
        (dev / "product_name").write_text(product + "\n")


def test_amd_sysfs_scan(tmp_path: Path) -> None:
    make_card(tmp_path, "card0", "0x8086")  # an Intel iGPU: not ours
    make_card(tmp_path, "card1", "0x1002", vram=64 * 1024**3, product="AMD Instinct MI250X")
    make_card(tmp_path, "card2", "0x1002", vram=16 * 1024**3)
    (tmp_path / "card1-DP-1").mkdir()  # a connector, not a device
    result = amd.probe(sysfs_root=str(tmp_path), which=lambda name: None)
    devices = result["gpu"]["devices"]
    assert [d["index"] for d in devices] == [1, 2]
    assert devices[0]["name"] == "AMD Instinct MI250X" and devices[0]["memory_gb"] == 64.0
    assert devices[1]["name"] == "AMD GPU 0x740c" and devices[1]["type"] == "rocm"
    assert result["hardware"] == ["rocm"]


def test_amd_no_devices_is_empty(tmp_path: Path) -> None:
    result = amd.probe(sysfs_root=str(tmp_path / "absent"), which=lambda name: None)
    assert result["gpu"]["devices"] == [] and "hardware" not in result


def write_script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_amd_smi_json(tmp_path: Path) -> None:
    payload = [{"gpu": 0, "asic": {"market_name": "AMD Instinct MI250", "vendor_id": "0x1002",
                                   "target_graphics_version": "gfx90a"},
                "vram": {"type": "HBM", "size": {"value": 65536, "unit": "MB"}},
                "driver": {"name": "amdgpu", "version": "6.7.0"}},
               {"gpu": 1, "asic": {"market_name": "AMD Instinct MI250"}, "vram": {"size": "65536 MB"},
                "driver": {"version": "6.7.0"}}]
    (tmp_path / "static.json").write_text(json.dumps(payload))
    script = write_script(tmp_path / "amd-smi", f'[ "$1" = static ] && [ "$2" = --json ] && cat {tmp_path}/static.json')
    result = amd.probe(sysfs_root=str(tmp_path / "none"), which=lambda name: script if name == "amd-smi" else None)
    devices = result["gpu"]["devices"]
    assert len(devices) == 2
    assert devices[0] == {"index": 0, "name": "AMD Instinct MI250", "type": "rocm", "vendor": "amd",
                          "memory_gb": 64.0, "compute_capability": "gfx90a", "driver": "6.7.0"}
    assert devices[1]["memory_gb"] == 64.0


def test_amd_smi_new_format_and_failure_fallback(tmp_path: Path) -> None:
    assert amd.parse_amd_smi({"gpu_data": [{"gpu": 3, "asic": {"market_name": "MI300X"}}]})[0]["index"] == 3
    # A failing amd-smi falls back to sysfs and says so.
    make_card(tmp_path / "drm", "card0", "0x1002", vram=8 * 1024**3)
    script = write_script(tmp_path / "amd-smi", "echo 'no permission' >&2; exit 1")
    result = amd.probe(sysfs_root=str(tmp_path / "drm"), which=lambda name: script if name == "amd-smi" else None)
    assert result["gpu"]["devices"][0]["memory_gb"] == 8.0
    assert "amd-smi failed" in result["notes"][0] and "no permission" in result["notes"][0]


def test_rocm_smi_json() -> None:
    devices = amd.parse_rocm_smi({"card0": {"Card Series": "Radeon RX 7900 XTX", "GFX Version": "gfx1100",
                                            "VRAM Total Memory (B)": str(24 * 1024**3)},
                                  "system": {"Driver version": "6.3.6"}})
    assert devices == [{"index": 0, "name": "Radeon RX 7900 XTX", "type": "rocm", "vendor": "amd",
                        "memory_gb": 24.0, "compute_capability": "gfx1100", "driver": "6.3.6"}]


# -- Apple, containers -------------------------------------------------------------------------------------------


def test_apple_silicon_is_mps() -> None:
    profiler = json.dumps({"SPDisplaysDataType": [{"sppci_model": "Apple M2", "sppci_cores": "10"}]})
    result = apple.devices_from("arm64", "Apple M2", str(16 * 1024**3), profiler)
    assert result["hardware"] == ["mps"]
    assert result["gpu"]["devices"][0] == {"index": 0, "name": "Apple M2", "type": "mps", "vendor": "apple",
                                                "memory_gb": 16.0, "compute_capability": None, "driver": None,
                                                "gpu_cores": 10}
    assert "hardware" not in apple.devices_from("x86_64", "Intel", None, None)


def test_apple_probe_is_silent_off_macos() -> None:
    if sys.platform == "darwin":
        pytest.skip("runs the real probe elsewhere")
    assert apple.probe() == {}


def test_container_detection(tmp_path: Path) -> None:
    assert container.probe(root=str(tmp_path), environ={})["container"] == {
        "in_container": False, "runtime": None, "evidence": [],
        "limits": {"cgroup": None, "cpu_limit": None, "memory_limit_gb": None}}
    (tmp_path / ".dockerenv").write_text("")
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    found = container.probe(root=str(tmp_path), environ={})["container"]
    assert found["in_container"] and found["runtime"] == "docker" and len(found["evidence"]) == 2
    k8s = container.probe(root=str(tmp_path), environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})["container"]
    assert k8s["runtime"] == "kubernetes"


# -- simulated profiles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "kinds", "count"), [
    ("cpu-only.json", ["cpu"], 0), ("nvidia-a100.json", ["cpu", "cuda"], 1), ("nvidia-t4.json", ["cpu", "cuda"], 1),
    ("amd-mi250.json", ["cpu", "rocm"], 2), ("apple-m2.json", ["cpu", "mps"], 1),
])
def test_shipped_profiles(profile: str, kinds: list[str], count: int) -> None:
    caps = detect(str(ASSETS / profile))
    assert caps["simulated"] is True and caps["simulated_from"].endswith(profile)
    assert caps["hardware"] == kinds and caps["gpu"]["count"] == count
    assert caps["platform"]["hostname"]  # the real basics stay


def test_a100_profile_values() -> None:
    device = detect(str(ASSETS / "nvidia-a100.json"))["gpu"]["devices"][0]
    assert device["memory_gb"] == 80 and device["compute_capability"] == "8.0"
    t4 = detect(str(ASSETS / "nvidia-t4.json"))["gpu"]["devices"][0]
    assert t4["memory_gb"] == 16 and t4["compute_capability"] == "7.5"


def test_simulated_profile_replaces_real_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([{"name": "Real", "bytes": 1024**3, "cc": (9, 0)}]))
    caps = detect(str(ASSETS / "amd-mi250.json"))
    assert [d["type"] for d in caps["gpu"]["devices"]] == ["rocm", "rocm"]
    assert caps["hardware"] == ["cpu", "rocm"]


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"gpus": []}', "unknown key(s) ['gpus']"),
    ('{"hardware": ["tpu"]}', "unknown kind(s) ['tpu']"),
    ('{"gpu": {"devices": [{"name": "X", "type": "tpu"}]}}', "gpu.devices[0].type is 'tpu'"),
    ('{"gpu": {"devices": [{"type": "cuda"}]}}', "gpu.devices[0].name must be a non-empty string"),
    ('{"gpu": {"devices": [{"name": "X", "type": "cuda", "memory_gb": "80"}]}}', "memory_gb must be a non-negative"),
    ('{"gpu": {"devices": [{"name": "X", "type": "cuda", "compute_capability": "eight"}]}}', "is not a version"),
    ('{"memory": {"total_gb": -1}}', "memory.total_gb must be a non-negative number"),
    ('{"cpu": {"cores": 0}}', "cpu.cores must be a positive integer"),
])
def test_invalid_profiles_have_clear_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        detect(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file not found"):
        load_profile(tmp_path / "nope.json")


def test_validate_profile_accepts_shipped_profiles() -> None:
    for path in ASSETS.glob("*.json"):
        validate_profile(json.loads(path.read_text()), str(path))


def test_detect_imports_nothing_heavy() -> None:
    # Hardware detection runs at worker start-up; it must not drag in the UI or web stacks.
    import subprocess

    code = ("import sys; from dtf_app.hardware import detect; detect(); "
            "bad = [m for m in ('textual', 'quart', 'duckdb', 'numpy') if m in sys.modules]; print(bad)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_openvino_probe_is_silent_without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    from dtf_plugins.hardware import accelerators

    monkeypatch.setattr(accelerators.importlib.util, "find_spec", lambda name: None)
    assert accelerators.probe() == {}
    assert "accelerators" in dict(plugins.load_plugins(plugins.HARDWARE_GROUP)[0])
