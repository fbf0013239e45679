"""The Ray Serve peer of ``raysched bench --mode ray``, on the shared local Ray."""

from __future__ import annotations

import pytest

from raysched.bench.workloads import PoolSpec, financial_mix

pytestmark = pytest.mark.ray

serve = pytest.importorskip("ray.serve", reason="needs ray[serve]")

SMALL = (PoolSpec("cpu", 2), PoolSpec("llm-7b", 1, "7b", 8), PoolSpec("llm-70b", 1, "70b", 4))
TIME_SCALE = 0.2


def idle_service_ms(pool: PoolSpec, prompt_tokens: int, new_tokens: int) -> float:
    """A lower bound on a request's engine time: its prefill plus ``new_tokens`` decode steps
    alone in the batch at its prompt's length (more company or context only adds)."""
    from actors.engines import PRESETS

    r = PRESETS[pool.preset]
    return (r.prefill_s(prompt_tokens) + new_tokens * r.decode_step_s([prompt_tokens])) * 1e3


def test_serve_peer_replays_every_task_once(ray_session):
    from raysched.bench.serve_peer import APP_PREFIX, run_serve

    tasks = financial_mix(150, load=0.5, seed=0, cluster=SMALL)
    assert {st.task.pool for st in tasks} == {"cpu", "llm-7b", "llm-70b"}

    class Bar:
        def __init__(self):
            self.seen = []

        def update(self, bar, completed):
            assert bar == "bar"
            self.seen.append(completed)

    progress = Bar()
    records, span = run_serve(tasks, SMALL, TIME_SCALE, progress, "bar")

    assert sorted(r.task_id for r in records) == sorted(st.task.task_id for st in tasks)
    assert all(r.status == "completed" for r in records), [r for r in records if r.status]
    assert progress.seen[-1] == len(tasks) and progress.seen == sorted(progress.seen)
    by_id = {st.task.task_id: st for st in tasks}
    pools = {p.name: p for p in SMALL}
    last_arrival_s = max(st.arrival_s for st in tasks) * TIME_SCALE
    assert span >= last_arrival_s
    for r in records:
        st = by_id[r.task_id]
        t = st.task
        assert r.priority == int(t.priority)
        assert r.worker_id.startswith(t.pool + "-")
        assert r.total_ms > 0 and r.end_s * TIME_SCALE <= span + 1e-6
        if t.pool.startswith("llm"):
            floor = idle_service_ms(pools[t.pool], t.num_prompt_tokens, st.true_new_tokens)
            # 5% of room: times are read on the driver's clock and scaled back by TIME_SCALE,
            # and on a loaded 2-core machine the two clocks' readings drift by a few percent.
            assert r.total_ms >= 0.95 * floor, (r, floor)
        else:
            assert r.total_ms >= 0.99 * st.cpu_service_s * 1e3, r
        assert r.deadline_met == (r.total_ms <= (t.deadline_s - st.arrival_s) * 1e3 + 1e-6), r
    # Both CPU replicas took work, and Serve is gone while Ray stays up.
    assert len({r.worker_id for r in records if by_id[r.task_id].task.pool == "cpu"}) == 2
    assert ray_session.is_initialized()
    assert not any(name.startswith(APP_PREFIX) for name in _serve_apps(ray_session))


def _serve_apps(ray) -> list[str]:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return []  # no controller: no applications
    return list(serve.status().applications)
