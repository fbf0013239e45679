"""The demo's workload, the financial mix as user Tasks: ``arrivals(duration_s, seed)``.

The table and both of its converters (to Tasks here, to simulated tasks for the benchmarks)
live in ``raysched.bench.workloads``; this module keeps the ``raysched.workload`` import path.
"""

from raysched.bench.workloads import FINANCIAL_MIX, KindSpec, arrivals, make_task

__all__ = ["FINANCIAL_MIX", "KindSpec", "arrivals", "make_task"]
