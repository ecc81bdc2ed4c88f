"""A multi-host test bed on one Linux machine: one network namespace per "host", joined by a private bridge.

    with TestBed(["head", "w1", "w2"]) as tb:
        p = tb.run("head", ["python", "-m", "http.server", "--bind", tb.ip("head"), "8000"], log=tb.log_path("http"))
        assert tb.wait_port("w1", "head", 8000)
        tb.cut("w1"); ...; tb.restore("w1")
        tb.call("w1", some_function, arg)  # runs in a thread of this process that joined w1's namespace

Needs root and iproute2 (``ip``); :func:`unavailable_reason` says in one line why a machine cannot run it.

Layout of one instance with tag ``ntb<6 hex>`` (unique per instance, so parallel runs never collide):

* bridge ``<tag>br`` in the root namespace, with NO address (the root namespace is not on the test net;
  IPv6 is disabled on it and on the host-side veths so it never talks on the segment either);
* per host i: netns ``<tag>-<host>``, veth pair ``<tag>v<i>`` (root side, bridge port) <-> ``eth0`` (inside),
  address ``subnet[i+1]``, ``lo`` up, NO default route: only test-bed addresses are routable, so nothing
  can leave the test net (other destinations fail with ENETUNREACH);
* ``/etc/netns/<ns>/hosts`` + ``resolv.conf`` (``ip netns exec`` bind-mounts them over /etc/hosts and
  /etc/resolv.conf): every host name resolves to its test-bed address, DNS goes to 127.0.0.1 in the netns;
* processes get their own UTS namespace with hostname = host name (``unshare --uts``), unless uts=False;
* a state file ``/run/netns-testbed/<tag>.json`` is written BEFORE anything is created; teardown and the
  stale sweep (any instance whose owner process is gone, or older than ``stale_after_s``) use it.

A "cut" is ``ip link set <tag>v<i> down`` on the root side: the host keeps its address but every packet
in or out is dropped (TCP sees timeouts, not resets) -- like pulling the cable. ``restore`` sets it up.

Teardown (idempotent, also from atexit / SIGTERM / the next instance's stale sweep): SIGTERM then SIGKILL
every PID inside our namespaces (``ip netns pids``; only processes we started can be in them) plus the
process groups of the processes we launched, then delete veths, bridge, namespaces, /etc/netns dirs.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000

STATE_DIR = Path("/run/netns-testbed")
TAG_PREFIX = "ntb"
TAG_RE = re.compile(r"^ntb[0-9a-f]{6}$")
DEFAULT_SUBNET = "10.213.0.0/24"
_HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def _sh(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot) -- (pid, start) identifies a process despite PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int | None) -> bool:
    st = _proc_start_time(pid)
    return st is not None and (start is None or st == start)


def _pgid_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # zombies are dead, just not reaped yet
                out.append(int(entry.name))
    return out


def _netns_pids(ns: str) -> list[int]:
    res = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in res.stdout.split()] if res.returncode == 0 else []


def _kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _join_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``setns(2)``; Python 3.11 has no os.setns)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _probe(address: str, port: int, timeout: float) -> bool:
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return True
    except ConnectionRefusedError:
        return True  # an RST came back: the host is there
    except OSError:
        return False
    finally:
        sock.close()


def unavailable_reason() -> str | None:
    """Why this machine cannot build a test bed (one line), or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add, veth, bridge)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2 / util-linux) is not installed"
    probe = f"{TAG_PREFIX}probe{os.getpid() % 100000}"
    made = _sh(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _sh(["ip", "netns", "del", probe], check=False)
    return None


def _disable_ipv6(dev: str, netns: str | None = None) -> None:
    path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
    if netns is None:
        try:
            Path(path).write_text("1")
        except OSError:
            pass
    else:
        _sh(["ip", "netns", "exec", netns, "sh", "-c", f"test -e {path} && echo 1 > {path} || true"], check=False)


class TestBed:
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        hosts: Sequence[str],
        subnet: str = DEFAULT_SUBNET,
        *,
        workdir: str | Path | None = None,
        uts: bool = True,
        stale_after_s: float = 3600.0,
        keep_workdir: bool = False,
    ) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("hosts must be unique and non-empty")
        for h in hosts:
            if not _HOST_RE.match(h):
                raise ValueError(f"bad host name {h!r}")
        net = ipaddress.ip_network(subnet)
        if not net.is_private or net.num_addresses < len(hosts) + 2:
            raise ValueError(f"{subnet} must be a private subnet with room for {len(hosts)} hosts")
        if os.geteuid() != 0:
            raise PermissionError("TestBed needs root (ip netns, veth, bridge)")
        self.hosts = list(hosts)
        self.net = net
        self.prefixlen = net.prefixlen
        self.uts = uts
        self.stale_after_s = stale_after_s
        self.tag = TAG_PREFIX + secrets.token_hex(3)
        self.bridge = f"{self.tag}br"
        self._addr = {h: str(net.network_address + i + 1) for i, h in enumerate(self.hosts)}
        self._ns = {h: f"{self.tag}-{h}" for h in self.hosts}
        self._veth = {h: f"{self.tag}v{i}" for i, h in enumerate(self.hosts)}
        self._peer = {h: f"{self.tag}p{i}" for i, h in enumerate(self.hosts)}
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self._own_workdir = workdir is None and not keep_workdir  # only a workdir we created is deleted
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []
        self._up = False
        self._torn_down = False

    # ------------------------------------------------------------------ accessors
    def ip(self, host: str) -> str:
        return self._addr[host]

    def netns(self, host: str) -> str:
        return self._ns[host]

    def veth(self, host: str) -> str:
        return self._veth[host]

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def hosts_file(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{self._addr[h]}\t{h}" for h in self.hosts]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TestBed:
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()

    def setup(self) -> TestBed:
        sweep_stale(self.stale_after_s)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_state()  # first: a crash from here on leaves a record the stale sweep can use
        atexit.register(self.teardown)
        self._install_signal_handlers()
        try:
            _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
            _disable_ipv6(self.bridge)
            _sh(["ip", "link", "set", self.bridge, "up"])
            for h in self.hosts:
                ns, veth, peer = self._ns[h], self._veth[h], self._peer[h]
                etc = Path("/etc/netns") / ns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(self.hosts_file())
                # No real resolver in the test net: lookups of unknown names go to 127.0.0.1 and fail fast.
                (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
                _sh(["ip", "netns", "add", ns])
                _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
                _disable_ipv6(veth)
                _sh(["ip", "link", "set", peer, "netns", ns])
                _sh(["ip", "link", "set", veth, "master", self.bridge])
                _sh(["ip", "link", "set", veth, "up"])
                _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                _sh(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
                _disable_ipv6("eth0", ns)
                _sh(["ip", "-n", ns, "addr", "add", f"{self._addr[h]}/{self.prefixlen}", "dev", "eth0"])
                _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            self._up = True
            self._wait_links_up()
        except BaseException:
            self.teardown()
            raise
        return self

    def _wait_links_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            while "LOWER_UP" not in _sh(["ip", "-n", self._ns[h], "link", "show", "eth0"]).stdout:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"eth0 of {h} not up")
                time.sleep(0.05)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _raise_exit)

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "tag": self.tag,
            "created": time.time(),
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "bridge": self.bridge,
            "netns": list(self._ns.values()),
            "links": list(self._veth.values()) + list(self._peer.values()),
            "workdir": str(self.workdir) if self._own_workdir else None,
            "pids": [[p.pid, _proc_start_time(p.pid)] for p in self._procs],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for p in self._procs:
            if p.poll() is None:
                _kill_pids([p.pid], signal.SIGTERM)
        _teardown_state(
            {
                "bridge": self.bridge,
                "netns": list(self._ns.values()),
                "links": list(self._veth.values()) + list(self._peer.values()),
                "pids": [[p.pid, None] for p in self._procs],
                "workdir": str(self.workdir) if self._own_workdir else None,
            }
        )
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for f in self._logs:
            try:
                f.close()
            except OSError:
                pass
        self.state_path.unlink(missing_ok=True)
        try:
            atexit.unregister(self.teardown)
        except Exception:
            pass

    # ------------------------------------------------------------------ processes
    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside ``host`` (netns; own UTS namespace with hostname)."""
        out = ["ip", "netns", "exec", self._ns[host]]
        if self.uts:
            # sh sets the hostname in the fresh UTS namespace, then execs: the PID stays the same.
            out += ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', host]
        return out + [str(a) for a in argv]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log: str | Path | None = None,
        cwd: str | Path | None = None,
        inherit_env: bool = True,
        pipe: bool = False,
    ) -> subprocess.Popen:
        """Start ``argv`` in ``host`` (own session/process group); stdout+stderr to ``log``; PID is tracked.

        ``pipe=True``: text-mode stdin/stdout pipes instead (stderr still to ``log``), to drive the process."""
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env or {})
        if log is not None:
            fh = open(log, "ab")  # noqa: SIM115 - kept open for the process's lifetime, closed at teardown
            self._logs.append(fh)
            out, err = fh, subprocess.STDOUT
        else:
            out, err = subprocess.DEVNULL, subprocess.DEVNULL
        if pipe:
            out, err = subprocess.PIPE, (fh if log is not None else None)
        p = subprocess.Popen(
            self.argv(host, argv), env=full_env, stdout=out, stderr=err,
            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL, cwd=cwd, start_new_session=True,
            text=pipe or None, bufsize=1 if pipe else -1,
        )  # fmt: skip
        self._procs.append(p)
        self._write_state()
        return p

    def check(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``host`` to completion; returns the CompletedProcess (text stdout/stderr)."""
        full_env = {**os.environ, **(env or {})}
        res = subprocess.run(
            self.argv(host, argv), env=full_env, capture_output=True, text=True,
            timeout=timeout, start_new_session=True,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"[{host}] {' '.join(map(str, argv))} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def stop(self, proc: subprocess.Popen, timeout: float = 15) -> None:
        """SIGTERM the process group of ``proc`` (and then SIGKILL leftovers)."""
        _kill_group(proc.pid, timeout)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def kill_pid(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal one process, which must run in one of this bed's hosts (never anything else on the machine)."""
        if not any(pid in self.pids(h) for h in self.hosts):
            raise ValueError(f"pid {pid} is not in any host of test bed {self.tag}")
        os.kill(pid, sig)

    def kill_host(self, host: str, grace: float = 10.0) -> None:
        """SIGTERM every process in ``host``, SIGKILL what is left after ``grace`` s; returns when none is left."""
        _kill_pids(self.pids(host), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids(host) and time.monotonic() < deadline:
            time.sleep(0.2)
        _kill_pids(self.pids(host), signal.SIGKILL)
        end = time.monotonic() + 10
        while self.pids(host) and time.monotonic() < end:
            time.sleep(0.1)
        for proc in self._procs:
            proc.poll()  # reap the ones that were ours

    def pids(self, host: str) -> list[int]:
        return _netns_pids(self._ns[host])

    def memory(self, host: str) -> dict[str, int]:
        """Total RSS and PSS (bytes) of all processes in ``host``'s namespace."""
        rss = pss = 0
        for pid in self.pids(host):
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            except OSError:
                pass
        return {"procs": len(self.pids(host)), "rss": rss, "pss": pss}

    # ------------------------------------------------------------------ network
    def cut(self, host: str) -> None:
        _sh(["ip", "link", "set", self._veth[host], "down"])

    def restore(self, host: str) -> None:
        _sh(["ip", "link", "set", self._veth[host], "up"])

    def is_cut(self, host: str) -> bool:
        return "state DOWN" in _sh(["ip", "link", "show", self._veth[host]]).stdout

    def call(self, host: str, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a fresh thread of this process that has joined ``host``'s network namespace.

        A network namespace is a per-thread attribute on Linux: sockets the thread opens (and processes it
        starts) belong to ``host``; the rest of the process stays where it was. Names resolve through this
        process's /etc/hosts, so address hosts by :meth:`ip`. Sockets must be opened inside the call (a
        connection pool filled here and reused from another thread still works; a new socket from another
        thread would not reach the test net)."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                _join_netns(self._ns[host])
                box["value"] = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = err

        thread = threading.Thread(target=target, name=f"netns-{host}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in {host} still running after {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def reachable(self, src: str, dst: str, port: int = 9, timeout: float = 1.0) -> bool:
        """TCP probe from ``src`` to ``dst``:port: connected or refused (RST) = reachable; a timeout = not."""
        return self.call(src, _probe, self._target(dst), port, timeout)

    def wait_port(self, src: str, dst: str, port: int, timeout: float = 60.0) -> bool:
        """Wait until something accepts connections on ``dst``:port as seen from ``src``."""

        def wait() -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((self._target(dst), port), timeout=1).close()
                    return True
                except OSError:
                    time.sleep(0.2)
            return False

        return self.call(src, wait)

    def pids_named(self, host: str, name: str) -> list[int]:
        """PIDs in ``host`` whose command name (``/proc/PID/comm``) is ``name``, e.g. ``raylet``."""
        found = []
        for pid in self.pids(host):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
            except OSError:
                pass
        return found

    def _target(self, dst: str) -> str:
        return self._addr.get(dst, dst)


# ---------------------------------------------------------------------- cleanup helpers
def _raise_exit(signum, frame):  # noqa: ANN001
    raise SystemExit(128 + signum)


def _kill_group(pgid: int, timeout: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while _pgid_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _teardown_state(state: Mapping, grace: float = 10.0) -> None:
    """Kill everything in the instance's namespaces and process groups, then delete its network objects."""
    netns = list(state.get("netns", []))
    groups = [pid for pid, start in state.get("pids", []) if _alive(pid, start)]
    # SIGTERM first (ray/mlflow shut their children down cleanly), then SIGKILL what is left.
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for ns in netns:
        _kill_pids(_netns_pids(ns), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(_netns_pids(ns) for ns in netns) and not any(_pgid_members(g) for g in groups):
            break
        time.sleep(0.2)
    for ns in netns:
        _kill_pids(_netns_pids(ns), signal.SIGKILL)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    end = time.monotonic() + 5
    while any(_netns_pids(ns) for ns in netns) and time.monotonic() < end:
        time.sleep(0.1)
    existing_links = set(_sh(["ip", "-o", "link", "show"]).stdout.split())
    for link in state.get("links", []):
        if f"{link}:" in existing_links or any(x.startswith(f"{link}@") for x in existing_links):
            _sh(["ip", "link", "del", link], check=False)
    if state.get("bridge"):
        _sh(["ip", "link", "del", state["bridge"]], check=False)
    for ns in netns:
        _sh(["ip", "netns", "del", ns], check=False)
        etc = Path("/etc/netns") / ns
        for f in ("hosts", "resolv.conf"):
            (etc / f).unlink(missing_ok=True)
        try:
            etc.rmdir()
        except OSError:
            pass
    wd = state.get("workdir")
    if wd and Path(wd).name.startswith(TAG_PREFIX):
        shutil.rmtree(wd, ignore_errors=True)


def sweep_stale(older_than_s: float = 3600.0, *, verbose: bool = False) -> list[str]:
    """Remove leftovers of dead test-beds: state files whose owner is gone or older than ``older_than_s``,
    and objects named like ours (``ntb<6 hex>``) with no state file, older than ``older_than_s``."""
    removed = []
    now = time.time()
    live_tags = set()
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob("ntb*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            tag = state.get("tag", "")
            owner_alive = _alive(state.get("owner_pid", -1), state.get("owner_start"))
            if owner_alive and now - state.get("created", 0) < older_than_s:
                live_tags.add(tag)
                continue
            if verbose:
                print(f"testbed: sweeping stale {tag} (owner alive={owner_alive})", file=sys.stderr)
            _teardown_state(state)
            path.unlink(missing_ok=True)
            removed.append(tag)
    # Orphans without a state file (should not happen: state is written first) -- by age only.
    for entry in _sh(["ip", "netns", "list"]).stdout.splitlines():
        ns = entry.split()[0] if entry.strip() else ""
        tag = ns.split("-", 1)[0]
        if TAG_RE.match(tag) and tag not in live_tags and not (STATE_DIR / f"{tag}.json").exists():
            try:
                age = now - Path(f"/run/netns/{ns}").stat().st_mtime
            except OSError:
                age = older_than_s
            if age >= older_than_s:
                _teardown_state({"netns": [ns]})
                removed.append(ns)
    for line in _sh(["ip", "-o", "link", "show"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        tag = name[:9]
        orphan = TAG_RE.match(tag) and tag not in live_tags and not (STATE_DIR / f"{tag}.json").exists()
        if orphan and not any(n.startswith(tag + "-") for n in _sh(["ip", "netns", "list"]).stdout.split()):
            _sh(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


def main(argv: list[str] | None = None) -> int:
    """``python -m mmclip_devtools.netns sweep [MAX_AGE_S]``: remove test beds left by dead processes."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "sweep":
        print(main.__doc__, file=sys.stderr)
        return 2
    print(sweep_stale(float(args[1]) if len(args) > 1 else 0.0, verbose=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
