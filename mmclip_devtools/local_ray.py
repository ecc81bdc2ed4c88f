"""A real multi-node Ray cluster on this machine, every server on 127.0.0.1 (tests and benches only).

With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (needed for loopback, see ``mmclip_dist.train.ray_env``) the
``ray start`` CLI refuses to start non-head nodes, so extra nodes are started by
:func:`_worker_node_main` (``python -m mmclip_devtools.local_ray worker-node``), which does what
``ray start --address`` and ``ray.cluster_utils.Cluster.add_node`` do: build a worker
``ray._private.node.Node`` and block. Socket checks prove that nothing binds beyond loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from mmclip_dist.loopback import LOOPBACK, free_loopback_ports
from mmclip_dist.train.ray_env import metrics_port_env, ray_env_for_loopback, require_loopback_node_ip

# Set on every process a LocalRayCluster starts; Ray workers inherit it from their raylet, so
# stop() can find (and kill) exactly this cluster's processes, even ones orphaned by a dead raylet.
_MARKER_ENV = "MMCLIP_RAY_CLUSTER_ID"
_STOP_GRACE_S = 10.0


def _expand_tree(pids: Iterable[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    return list(procs.values())


def listening_sockets(pids: Iterable[int]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) of every listening TCP socket and unconnected bound UDP socket of the
    process trees rooted at ``pids``."""
    found: set[tuple[str, int, int]] = set()
    for proc in _expand_tree(pids):
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            tcp_listen = c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN
            udp_bound = c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr
            if tcp_listen or udp_bound:
                found.add((c.laddr.ip, c.laddr.port, proc.pid))
    return sorted(found, key=lambda s: (s[2], s[1], s[0]))


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def assert_loopback_only(pids: Iterable[int]) -> list[tuple[str, int, int]]:
    """Raise AssertionError naming every socket of the trees that is not on loopback; return all."""
    socks = listening_sockets(pids)
    bad = [s for s in socks if not is_loopback(s[0])]
    if bad:
        lines = []
        for ip, port, pid in bad:
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                name = "?"
            lines.append(f"  {ip}:{port} pid={pid} ({name})")
        raise AssertionError("sockets not bound to loopback:\n" + "\n".join(lines))
    return socks


class LocalRayCluster:
    """A real multi-node Ray cluster on this machine, every server on 127.0.0.1.

    Node 0 is the head (``ray start --head --block``); nodes 1.. are worker nodes. Node ``i`` has
    the custom resource ``node_<i>: 1`` so tasks can be pinned with ``resources={"node_1": 0.01}``.
    Only processes this object started are ever signalled (never ``ray stop``).
    """

    def __init__(
        self,
        cpus_per_node: Iterable[int] = (1, 1),
        *,
        object_store_mb: int = 128,
        include_dashboard: bool = True,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.cpus_per_node = list(cpus_per_node)
        if not self.cpus_per_node or any(c < 0 for c in self.cpus_per_node):
            raise ValueError(f"cpus_per_node must be non-empty and >= 0, got {self.cpus_per_node}")
        self.object_store_mb = object_store_mb
        self.include_dashboard = include_dashboard
        self.start_timeout_s = start_timeout_s
        self.cluster_id = secrets.token_hex(8)
        self.auth_token = secrets.token_hex(16)
        self.temp_root: Path | None = None
        self.port: int | None = None
        self.dashboard_port: int | None = None
        self._launchers: list[subprocess.Popen] = []
        self._seen: dict[int, psutil.Process] = {}
        self._metrics_env: dict[str, str] = {}

    # -- addresses ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """GCS address ``127.0.0.1:<port>`` for ``ray.init(address=...)`` / ``RAY_ADDRESS``."""
        if self.port is None:
            raise RuntimeError("LocalRayCluster is not started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def dashboard_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the dashboard / job API, or None without a dashboard."""
        if not self.include_dashboard or self.dashboard_port is None:
            return None
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Env additions for a subprocess (driver, ``ray job submit``) that uses this cluster."""
        env = ray_env_for_loopback(self.auth_token)
        env["RAY_ADDRESS"] = self.address
        if self.dashboard_url is not None:
            env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        return env

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalRayCluster:
        """Start all nodes and wait until every node is alive in the GCS."""
        if self._launchers:
            raise RuntimeError("LocalRayCluster already started")
        # Short root: session dirs hold AF_UNIX sockets (107-byte path limit).
        self.temp_root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        try:
            self._start_head()
            for i in range(1, len(self.cpus_per_node)):
                self._start_worker_node(i)
            self._wait_for_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _node_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(ray_env_for_loopback(self.auth_token))
        env.update(self._metrics_env)
        if self.dashboard_url is not None:
            # Workers (e.g. Ray Train's PlacementGroupCleaner) call the state API with no address;
            # without this Ray scans for "the" local cluster and finds other users' clusters.
            env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        env[_MARKER_ENV] = self.cluster_id
        # Job entrypoints run `python ...` from the node's PATH: make it this interpreter, as on
        # a real node whose image has the project installed.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _spawn(self, argv: list[str], name: str) -> None:
        assert self.temp_root is not None
        setpriv = shutil.which("setpriv")
        if setpriv:
            # Fate-share with the creating thread: a test process killed outright (SIGKILL,
            # pytest-timeout's thread method) must not leave a cluster running on a shared machine.
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        with open(self.temp_root / f"{name}.log", "wb") as log:
            # Own session: a Ctrl-C in the test terminal must not hit the nodes half-way, and
            # stop() signals each node by its process.
            proc = subprocess.Popen(
                argv,
                env=self._node_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._launchers.append(proc)
        self._remember(proc.pid)

    def _start_head(self) -> None:
        assert self.temp_root is not None
        (self.port, self.dashboard_port, agent_port, client_port) = free_loopback_ports(4)
        self._metrics_env = metrics_port_env()
        argv = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={LOOPBACK}",
            f"--port={self.port}",
            f"--num-cpus={self.cpus_per_node[0]}",
            "--num-gpus=0",
            f"--resources={json.dumps({'node_0': 1})}",
            f"--temp-dir={self.temp_root / 'n0'}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
            f"--include-dashboard={str(self.include_dashboard).lower()}",
            f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--ray-client-server-port={client_port}",
            # 0 = let the OS pick: the default 10002-19999 range is shared with every other Ray here.
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        self._spawn(argv, "node0")

    def _start_worker_node(self, index: int) -> None:
        assert self.temp_root is not None
        argv = [
            sys.executable,
            "-m",
            "mmclip_devtools.local_ray",
            "worker-node",
            f"--address={self.address}",
            f"--num-cpus={self.cpus_per_node[index]}",
            f"--resources={json.dumps({f'node_{index}': 1})}",
            f"--temp-dir={self.temp_root / f'n{index}'}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
        ]
        self._spawn(argv, f"node{index}")

    def _wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not self._gcs_accepts():
            self._check_launchers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"head GCS not up on {self.address}; logs in {self.temp_root}")
            time.sleep(0.3)
        self._wait_alive(len(self.cpus_per_node), max(5.0, deadline - time.monotonic()))

    def _wait_alive(self, count: int, timeout_s: float) -> None:
        # Ask the GCS through a driver subprocess with the cluster's env: this process may have
        # imported ray already with other settings (auth, node IP).
        script = (
            "import ray, sys, time\n"
            "ray.init(logging_level='ERROR', log_to_driver=False)\n"
            "deadline = time.monotonic() + float(sys.argv[2])\n"
            "while time.monotonic() < deadline:\n"
            "    n = sum(1 for x in ray.nodes() if x['Alive'])\n"
            "    if n >= int(sys.argv[1]): sys.exit(0)\n"
            "    time.sleep(0.5)\n"
            "sys.exit(f'only {n} of {sys.argv[1]} nodes alive')\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", script, str(count), str(timeout_s)],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout_s + 30,
        )
        self._check_launchers()
        if res.returncode != 0:
            raise TimeoutError(f"cluster nodes not alive: {res.stderr[-2000:]}; logs in {self.temp_root}")
        self.node_pids()  # record the full trees while everything is up

    def _gcs_accepts(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check_launchers(self) -> None:
        for i, proc in enumerate(self._launchers):
            if proc.poll() is not None:
                log = self.temp_root / f"node{i}.log"
                # The temp root is removed on stop(), so the reason must travel in the message.
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
                raise RuntimeError(f"node {i} launcher exited with code {proc.returncode}; {log} ends with:\n{tail}")

    def _remember(self, pid: int) -> None:
        try:
            p = psutil.Process(pid)
            self._seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def node_pids(self) -> list[list[int]]:
        """Live PIDs of each node's process tree (launcher first), indexed by node."""
        out = []
        for proc in self._launchers:
            tree = [p for p in _expand_tree([proc.pid]) if p.is_running()]
            for p in tree:
                self._seen.setdefault(p.pid, p)
            out.append([p.pid for p in tree])
        return out

    def all_pids(self) -> list[int]:
        """Every live process of this cluster, including ones orphaned by a killed raylet."""
        self.node_pids()
        return [p.pid for p in self._own_processes()]

    def kill_node(self, index: int) -> int:
        """SIGKILL node ``index``'s raylet (its workers then die with it); return the raylet PID."""
        for pid in self.node_pids()[index]:
            try:
                p = psutil.Process(pid)
                if p.name() == "raylet":
                    p.kill()
                    return pid
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError(f"node {index} has no live raylet")

    def restart_node(self, index: int, timeout_s: float = 120.0) -> None:
        """Start worker node ``index`` again after it was killed (capacity returning, as on a cloud cluster):
        a new node with the same CPUs and ``node_<index>`` resource; returns once the GCS sees it alive."""
        if index == 0:
            raise ValueError("the head node cannot be restarted")
        try:  # a node whose raylet was killed takes its launcher down within a second or two
            self._launchers[index].wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"node {index} is still running; kill_node({index}) first") from None
        self._start_worker_node(index)
        self._launchers[index] = self._launchers.pop()
        self._wait_alive(len(self.cpus_per_node), timeout_s)

    def _own_processes(self) -> list[psutil.Process]:
        procs = {pid: p for pid, p in self._seen.items() if p.is_running()}
        for p in psutil.process_iter():
            if p.pid in procs:
                continue
            try:
                if p.environ().get(_MARKER_ENV) == self.cluster_id:
                    procs[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return [p for p in procs.values() if p.pid != os.getpid()]

    def stop(self) -> None:
        """Stop the nodes (SIGTERM, then SIGKILL after a grace period) and remove the temp dir."""
        if self._launchers:
            self.node_pids()
            # The launchers shut their nodes down gracefully on SIGTERM (workers first).
            for proc in self._launchers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + _STOP_GRACE_S
            for proc in self._launchers:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            leftovers = self._own_processes()
            for p in leftovers:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(leftovers, timeout=5)
            for proc in self._launchers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            self._launchers.clear()
        if self.temp_root is not None:
            shutil.rmtree(self.temp_root, ignore_errors=True)
            self.temp_root = None

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _worker_node_main(argv: list[str]) -> None:
    """Run one worker node of a loopback cluster until SIGTERM (what ``ray start --address --block``
    does, which the CLI refuses while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
    parser = argparse.ArgumentParser(prog="mmclip_devtools.local_ray worker-node")
    parser.add_argument("--address", required=True, help="GCS address of the head, 127.0.0.1:port")
    parser.add_argument("--num-cpus", type=int, required=True)
    parser.add_argument("--resources", default="{}", help="JSON dict of custom resources")
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--object-store-memory", type=int, required=True)
    args = parser.parse_args(argv)

    require_loopback_node_ip()
    # Private API, same calls as `ray start` (worker branch) and ray.cluster_utils.Cluster.add_node.
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=args.address,
        node_ip_address=LOOPBACK,
        num_cpus=args.num_cpus,
        num_gpus=0,
        resources=json.loads(args.resources),
        temp_dir=args.temp_dir,
        object_store_memory=args.object_store_memory,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        # 0 = any free port; the default 52365 is taken by the head's agent.
        dashboard_agent_listen_port=0,
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True)

    def _shutdown(signum: int, frame: object) -> None:
        node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    print(f"worker node {node.node_id} up", flush=True)
    while True:
        # Like `ray start --block`: a node that lost a process (e.g. its raylet) is gone for good,
        # so take the rest down and exit, which the owner sees as a dead launcher.
        dead = node.dead_processes()
        if dead:
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
            sys.exit(f"worker node process(es) died: {sorted({kind for kind, _ in dead})}")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> None:
    """``python -m mmclip_devtools.local_ray worker-node ...`` (used by LocalRayCluster)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "worker-node":
        raise SystemExit("usage: python -m mmclip_devtools.local_ray worker-node --address ...")
    _worker_node_main(args[1:])


if __name__ == "__main__":
    main()
