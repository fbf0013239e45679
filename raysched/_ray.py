"""Starting and joining Ray the way raysched needs it."""

from __future__ import annotations

import logging
import os

LOOPBACK = "127.0.0.1"


def reachable(address: str | None, timeout_s: float = 2.0) -> None:
    """``ConnectionError`` within about ``timeout_s`` when ``address`` (``HOST:PORT``) does not
    answer, answers but not as a Ray cluster does (its GCS speaks gRPC: a dashboard's port, say,
    does not), or is not a Ray address: Ray itself waits a minute or more on such an address.
    Nothing is checked for ``auto``, a ``ray://`` address or none."""
    import socket

    import grpc

    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"not a Ray address (HOST:PORT, ray://..., or auto): {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address}: {exc}") from None
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ConnectionError(f"{address} answers, but not as a Ray cluster (no gRPC there): "
                              f"give the address `ray start --head` printed, not the "
                              f"dashboard's") from None
    finally:
        channel.close()


def loopback_env() -> None:
    """Make a local Ray bind to 127.0.0.1 and phone nowhere.

    Ray picks the machine's outward address unless told; with clusters "disabled" it uses the
    loopback address for every process it starts, which inherit this environment.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def init_local(num_cpus: int | None = None, namespace: str = "raysched",
               include_dashboard: bool = False, object_store_mb: int = 128) -> None:
    """Start an embedded single-node Ray on loopback: a new one, always. Without an address,
    ``ray.init`` joins the latest Ray started on the machine (``/tmp/ray/ray_current_cluster``),
    which on a shared machine can be another user's, or one already gone; ``address="local"``
    starts our own (Ray's documented choice for that)."""
    loopback_env()
    import ray

    ray.init(address="local", num_cpus=num_cpus, namespace=namespace,
             include_dashboard=include_dashboard,
             object_store_memory=object_store_mb * 1024 * 1024, _node_ip_address=LOOPBACK,
             log_to_driver=False, logging_level=logging.WARNING)
