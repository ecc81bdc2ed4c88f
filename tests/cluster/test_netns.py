"""The network-namespace test bed itself: addresses, names, reachability, cuts, and a teardown that leaves nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mmclip_devtools.netns import STATE_DIR, TAG_PREFIX, TestBed, sweep_stale


def _leftovers(bed: TestBed) -> dict[str, list[str]]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {
        "netns": [line for line in netns.splitlines() if bed.tag in line],
        "links": [line.split(":")[1].strip() for line in links.splitlines() if bed.tag in line],
        "etc": [str(p) for p in Path("/etc/netns").glob(f"{bed.tag}-*")],
        "state": [str(p) for p in STATE_DIR.glob(f"{bed.tag}.json")],
    }


def _listen(address: str) -> socket.socket:
    server = socket.socket()
    server.bind((address, 0))
    server.listen()
    return server


def test_hosts_reach_each_other_by_address_and_name_and_nothing_else(
    test_bed: Callable[[Sequence[str]], TestBed],
) -> None:
    bed = test_bed(["a", "b"])
    assert bed.ip("a") == "10.213.0.1" and bed.ip("b") == "10.213.0.2"
    assert bed.tag.startswith(TAG_PREFIX)
    # Names resolve through /etc/netns/<ns>/hosts; the process sees its own host name (UTS namespace).
    assert bed.check("b", ["getent", "hosts", "a"]).stdout.split() == ["10.213.0.1", "a"]
    assert bed.check("b", ["hostname"]).stdout.strip() == "b"
    server = bed.call("a", _listen, bed.ip("a"))  # a socket of this process, opened inside host a
    try:
        port = server.getsockname()[1]
        assert bed.reachable("b", "a", port)
        assert bed.wait_port("b", "a", port, timeout=5)
        # The root namespace is not on the test net, and the hosts have no route out of it.
        with pytest.raises(OSError):
            socket.create_connection((bed.ip("a"), port), timeout=1)
        route = subprocess.run(["ip", "-n", bed.netns("a"), "route", "get", "1.1.1.1"], capture_output=True, text=True)
        assert route.returncode != 0 and "unreachable" in route.stderr.lower()
    finally:
        server.close()


def test_cut_drops_all_traffic_of_a_host_until_restored(test_bed: Callable[[Sequence[str]], TestBed]) -> None:
    bed = test_bed(["a", "b", "c"])
    server = bed.call("a", _listen, bed.ip("a"))
    try:
        port = server.getsockname()[1]
        assert bed.reachable("c", "a", port) and bed.reachable("c", "b")
        bed.cut("a")
        assert bed.is_cut("a")
        assert not bed.reachable("c", "a", port, timeout=1.0)  # a timeout: packets vanish, no RST
        assert bed.reachable("c", "b"), "only the cut host is off the net"
        bed.restore("a")
        assert not bed.is_cut("a")
        assert bed.wait_port("c", "a", port, timeout=10)
    finally:
        server.close()


def test_teardown_kills_the_hosts_processes_and_removes_every_object(tmp_path: Path, require_netns: None) -> None:
    bed = TestBed(["a", "b"], workdir=tmp_path)
    with bed:
        # A process that ignores SIGTERM and one that forks a child into its own new session: teardown finds
        # both through the namespace, not through our Popen handles.
        stubborn = bed.run(
            "a", [sys.executable, "-c", "import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(600)"]
        )
        bed.run("b", ["sh", "-c", "setsid sleep 600 & sleep 600"])
        assert bed.wait_port("b", "a", 9, timeout=1) is False
        pids = bed.pids("a") + bed.pids("b")
        assert stubborn.pid in pids and len(pids) >= 3
    assert stubborn.poll() is not None
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert _leftovers(bed) == {"netns": [], "links": [], "etc": [], "state": []}


def test_sweep_removes_a_bed_whose_owner_died(tmp_path: Path, require_netns: None) -> None:
    # The owner is a separate interpreter that builds a bed and is SIGKILLed: no teardown runs in it.
    script = (
        "import sys, time; from mmclip_devtools.netns import TestBed\n"
        f"bed = TestBed(['a'], workdir={str(tmp_path)!r}).setup()\n"
        "bed.run('a', ['sleep', '600'])\n"
        "print(bed.tag, flush=True); time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        tag = owner.stdout.readline().strip()
        assert tag.startswith(TAG_PREFIX), tag
    finally:
        owner.kill()
        owner.wait()
    assert (STATE_DIR / f"{tag}.json").exists()
    assert tag in sweep_stale(3600.0)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in netns and not (STATE_DIR / f"{tag}.json").exists()
