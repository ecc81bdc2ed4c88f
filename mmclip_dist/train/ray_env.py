"""Ray environment for production drivers and workers: join a cluster, or start one bound to 127.0.0.1.

How Ray 2.60 picks its bind address (see docs/operations.md, "Ray on one machine"):

* Every Ray server (GCS, raylet, core workers, dashboard agent, runtime-env agent, metrics) binds
  127.0.0.1 when the *node IP* is exactly ``127.0.0.1``, and all interfaces (``::`` / 0.0.0.0) otherwise.
* But ``ray.init(_node_ip_address="127.0.0.1")`` and ``ray start --node-ip-address=127.0.0.1`` rewrite
  127.0.0.1 to the machine's routable IP (``services.resolve_ip_for_localhost``) unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. Ray reads that variable once, when ``ray`` is imported, so it
  must be in the environment of every Ray process (driver included) *before* ``import ray``.

This module imports ray lazily, inside functions, so that importing it does not freeze Ray's
constants before :func:`ray_env_for_loopback` has been applied. The multi-node loopback cluster of the
tests lives in ``mmclip_devtools.local_ray``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmclip_dist.loopback import LOOPBACK, free_loopback_ports


def connect_ray(num_cpus: int) -> None:
    """Join the cluster named by RAY_ADDRESS (set inside Ray jobs), else start a local one on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        from mmclip_dist.train.input_checks import check_ray_address

        check_ray_address()  # ray.init would wait about a minute on a dead address
        ray.init(log_to_driver=True)
        return
    init_local_ray(num_cpus=num_cpus)


def ray_env_for_loopback(auth_token: str | None = None) -> dict[str, str]:
    """Env vars that make Ray processes bind 127.0.0.1; apply them before ``import ray``.

    With ``auth_token`` the cluster uses Ray token auth with that token (needed by drivers and
    ``ray job submit`` alike); without it the auth mode is left to Ray's default (see docs).
    """
    env = {
        # Keeps 127.0.0.1 as the node IP instead of resolving it to the routable IP; the
        # C++ servers then bind loopback only. Read at `import ray` time.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if auth_token is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = auth_token
    return env


def metrics_port_env() -> dict[str, str]:
    # The autoscaler monitor and the dashboard serve Prometheus metrics on fixed ports
    # (44217, 44227) that every Ray on this shared machine would fight over.
    autoscaler_port, dashboard_port = free_loopback_ports(2)
    return {"AUTOSCALER_METRIC_PORT": str(autoscaler_port), "DASHBOARD_METRIC_PORT": str(dashboard_port)}


def require_loopback_node_ip() -> None:
    import ray.util

    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        raise RuntimeError(
            f"Ray would use node IP {ip}, not {LOOPBACK}: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
            "(see ray_env_for_loopback()) in the environment before Python imports ray, e.g. at "
            "the top of the entry point or in the shell."
        )


def init_local_ray(num_cpus: int, runtime_env: dict[str, Any] | None = None, *, include_dashboard: bool = True) -> Path:
    """Start a single-node Ray on 127.0.0.1 only and connect this process to it (debug mode).

    Returns Ray's temp root (session logs, sockets); the caller may delete it after ``ray.shutdown()``.

    The dashboard (bound to 127.0.0.1, free port) stays on by default because Ray's state API
    lives in it; Ray Train's PlacementGroupCleaner polls that API and warns every few seconds
    ("Failed to query Ray Train Controller actor state") when it is missing.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError("init_local_ray: Ray is already initialised in this process")
    require_loopback_node_ip()
    # Child processes (GCS, raylet, dashboard, workers) inherit the driver's environment.
    os.environ.update(ray_env_for_loopback())
    os.environ.update(metrics_port_env())
    for _attempt in range(2):
        (dashboard_port,) = free_loopback_ports(1)
        dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
        if include_dashboard:
            # State API / job clients (also Ray Train's actors) otherwise look for "the" local
            # cluster by scanning processes, and find the other users' clusters on this machine.
            os.environ["RAY_API_SERVER_ADDRESS"] = dashboard_url
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        ctx = ray.init(
            num_cpus=num_cpus,
            runtime_env=runtime_env,
            include_dashboard=include_dashboard,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
            _node_ip_address=LOOPBACK,
            # A short root keeps AF_UNIX socket paths under the 107-byte limit.
            _temp_dir=str(temp_dir),
            configure_logging=True,
            logging_level=logging.WARNING,
        )
        if not include_dashboard or f"http://{ctx.dashboard_url}" == dashboard_url:
            return temp_dir
        # Someone took the port between our probe and the dashboard's bind: the workers'
        # RAY_API_SERVER_ADDRESS would point elsewhere, so start over.
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    raise RuntimeError(f"init_local_ray: dashboard did not bind {dashboard_url} twice in a row")
