"""Ray on 127.0.0.1 only: the socket checks, a real 2-node local cluster, single-node ``init_local_ray``.

Drivers run in subprocesses: the loopback env must be in place before ``import ray``, and this
pytest process may have imported ray already.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from mmclip_devtools.local_ray import LocalRayCluster, assert_loopback_only, is_loopback, listening_sockets
from mmclip_dist.train.ray_env import ray_env_for_loopback

REPO = Path(__file__).resolve().parents[2]


def _run_driver(script: str, env: dict[str, str], timeout: float = 120) -> dict:
    """Run ``script`` in a fresh interpreter with ``env`` added; it prints one JSON line last."""
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert res.returncode == 0, f"driver failed ({res.returncode}):\n{res.stderr[-4000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _has_routable_ipv4() -> bool:
    return any(
        a.family == socket.AF_INET and not is_loopback(a.address)
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
        ("fe80::1%eth0", False),
    ],
)
def test_is_loopback(ip: str, expected: bool) -> None:
    assert is_loopback(ip) is expected


def test_listening_sockets_sees_own_tcp_listener_and_bound_udp() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        udp.bind(("127.0.0.1", 0))
        connected_udp.connect(("127.0.0.1", 9))  # connected: only talks to one peer, not listed
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        assert ("127.0.0.1", tcp_port, os.getpid()) not in listening_sockets([os.getpid()])
        tcp.listen()
        socks = assert_loopback_only([os.getpid()])
        assert ("127.0.0.1", tcp_port, os.getpid()) in socks
        assert ("127.0.0.1", udp_port, os.getpid()) in socks
        assert connected_udp.getsockname()[1] not in {port for _, port, _ in socks}
    finally:
        tcp.close(), udp.close(), connected_udp.close()


def test_ray_env_for_loopback() -> None:
    assert ray_env_for_loopback() == {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env = ray_env_for_loopback("s3cret")
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "s3cret"


@pytest.mark.skipif(not _has_routable_ipv4(), reason="no non-loopback IPv4: Ray resolves to 127.0.0.1 anyway")
def test_init_local_ray_refuses_without_loopback_env() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    res = subprocess.run(
        [sys.executable, "-c", "from mmclip_dist.train.ray_env import init_local_ray; init_local_ray(1)"],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode != 0
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in res.stderr


CLUSTER_DRIVER = """
    import json, os, ray
    from mmclip_devtools.local_ray import listening_sockets

    ray.init(logging_level="ERROR")  # address and auth token come from the cluster's env()

    @ray.remote(num_cpus=1)
    def where():
        from ray.util.state import list_nodes  # state API from a worker: needs the dashboard
        alive = sum(1 for n in list_nodes() if n.state == "ALIVE")
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), alive

    placed = {
        name: ray.get(where.options(resources={name: 0.01}).remote()) for name in ("node_0", "node_1")
    }
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    print(json.dumps({
        "alive": len(nodes),
        "node_resources": {nid: sorted(k for k in n["Resources"] if k.startswith("node_"))
                           for nid, n in nodes.items()},
        "placed": placed,
        "node_ips": sorted(n["NodeManagerAddress"] for n in nodes.values()),
        "driver_sockets": listening_sockets([os.getpid()]),
    }))
"""


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_two_node_cluster_on_loopback_only() -> None:
    cluster = LocalRayCluster((1, 1))
    with cluster:
        assert cluster.address.startswith("127.0.0.1:")
        assert cluster.dashboard_url is not None and cluster.dashboard_url.startswith("http://127.0.0.1:")
        out = _run_driver(CLUSTER_DRIVER, cluster.env())

        assert out["alive"] == 2
        assert out["node_ips"] == ["127.0.0.1", "127.0.0.1"]
        node_of = {res[0]: nid for nid, res in out["node_resources"].items()}
        for name in ("node_0", "node_1"):
            node_id, ip, alive_seen_by_state_api = out["placed"][name]
            assert node_of[name] == node_id, f"task pinned to {name} ran on {node_id}"
            assert ip == "127.0.0.1"
            assert alive_seen_by_state_api == 2
        assert out["placed"]["node_0"][0] != out["placed"]["node_1"][0]
        assert out["driver_sockets"] and all(is_loopback(ip) for ip, _, _ in out["driver_sockets"])

        node_pids = cluster.node_pids()
        assert len(node_pids) == 2 and all(node_pids)
        socks = assert_loopback_only(cluster.all_pids())
        ports = {port for _, port, _ in socks}
        dashboard_port = int(cluster.dashboard_url.rsplit(":", 1)[1])
        assert {cluster.port, dashboard_port} <= ports  # the check saw the GCS and the dashboard
        for pids in node_pids:  # and each node's raylet (two gRPC servers each)
            raylets = [p for p in pids if psutil.Process(p).name() == "raylet"]
            assert len(raylets) == 1
            assert len([s for s in socks if s[2] == raylets[0]]) >= 2

        # Fault path: a node whose raylet is SIGKILLed goes away, its launcher exits.
        cluster.kill_node(1)
        cluster._launchers[1].wait(timeout=60)
        seen = list(cluster._seen.values())
    assert not [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert cluster._own_processes() == []
    assert cluster.temp_root is None


INIT_DRIVER = """
    import json, os, psutil, ray, shutil
    from ray.util.state import list_actors
    from mmclip_dist.train.ray_env import init_local_ray
    from mmclip_devtools.local_ray import listening_sockets

    temp_dir = init_local_ray(num_cpus=1)

    @ray.remote
    class Echo:
        def ip(self):
            return ray.util.get_node_ip_address()

        def alive_actor_classes(self):
            # What Ray Train's PlacementGroupCleaner does from inside an actor: the state API
            # with no address must find this cluster (dashboard up, RAY_API_SERVER_ADDRESS set).
            return [a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")])]

    echo = Echo.remote()
    ip = ray.get(echo.ip.remote())
    actors = ray.get(echo.alive_actor_classes.remote())
    tree = psutil.Process().children(recursive=True)
    socks = listening_sockets([os.getpid()])
    gcs = ray.get_runtime_context().gcs_address
    nodes = ray.nodes()
    ray.shutdown()
    gone, alive = psutil.wait_procs(tree, timeout=15)
    left = [(p.pid, p.name()) for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    shutil.rmtree(temp_dir)
    print(json.dumps({"ip": ip, "actors": actors, "sockets": socks, "left": left,
                      "node_ips": [n["NodeManagerAddress"] for n in nodes],
                      "gcs": gcs}))
"""


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_init_local_ray_binds_loopback_only() -> None:
    out = _run_driver(INIT_DRIVER, ray_env_for_loopback())
    assert out["ip"] == "127.0.0.1"
    assert out["node_ips"] == ["127.0.0.1"]
    assert "Echo" in out["actors"]
    bad = [s for s in out["sockets"] if not is_loopback(s[0])]
    assert not bad, f"non-loopback sockets: {bad}"
    gcs_host, gcs_port = out["gcs"].rsplit(":", 1)
    assert gcs_host == "127.0.0.1"
    assert int(gcs_port) in {port for _, port, _ in out["sockets"]}
    # Processes of the driver's tree: GCS, raylet, dashboard, agents, workers (all checked above).
    assert len({pid for _, _, pid in out["sockets"]}) >= 4
    assert out["left"] == [], f"left running after ray.shutdown(): {out['left']}"
