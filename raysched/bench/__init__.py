"""Benchmarks and the demo's workload: workloads, replay, reports, and the ``bench`` modes.

Each module imports only the ones below it (``lint-imports`` checks this; see
``[tool.importlinter]`` in pyproject.toml)::

    runner                  ``raysched bench``: parses, then hands over to a mode
    ray_mode                --mode ray: the real scheduler actor on Ray
    multinode | serve_peer  --nodes (raylets added) | --peer ray-serve
    sim_mode                --mode sim: the discrete-event simulator
    replay                  timed submission through a scheduler actor (the demo's too)
    report                  entries, tables, report.md and plots (the demo's too)
    workloads               the financial mix table, arrivals, trace replay
"""
