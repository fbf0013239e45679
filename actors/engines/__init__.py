"""LLM engines behind one protocol: simulated (always), and real ones where installed."""

from __future__ import annotations

from actors.engines.base import Engine, Sequence
from actors.engines.simulated import PRESETS, SimulatedEngine


def make_engine(name: str, model: str, time_scale: float = 1.0) -> Engine:
    """Build an engine by name. Real engines import their heavy packages here, lazily."""
    if name == "sim":
        return SimulatedEngine(model, time_scale=time_scale)
    raise ValueError(f"engine {name!r} is not available in this build; available: ['sim']")


def real_engines_available() -> list[str]:
    """Real engines whose packages import on this node (none yet ship in this build)."""
    return []


__all__ = ["PRESETS", "Engine", "Sequence", "SimulatedEngine", "make_engine",
           "real_engines_available"]
