"""Discrete-event simulation of raysched: the same core on a virtual clock."""

from raysched.sim.simulator import Oracle, SimRun, Simulator
from raysched.sim.workers import SimCPUWorker, SimLLMWorker, SimTask

__all__ = ["Oracle", "SimCPUWorker", "SimLLMWorker", "SimRun", "SimTask", "Simulator"]
