"""One platform per lake: the first process that starts a local Ray for a lake records it; later ones attach.

The processes here are real ones (subprocesses, each a fresh interpreter as a notebook kernel
and a shell command would be); every Ray they start is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakeloop import platform_record
from lakeloop.platform_record import PlatformRecord

from conftest import clean_env

# a process that connects to the lake, prints its view of the platform, then holds on until told to go
HOLDER = """
import json, os, sys, lakeloop
ll = lakeloop.connect(lake_root=sys.argv[1], ray_num_cpus=1)
ray = ll.ensure_ray()
ctx = ray.get_runtime_context()
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print(json.dumps({"pid": os.getpid(), "gcs": ctx.gcs_address, "node": ctx.get_node_id(), "alive_nodes": alive,
                  "session": ray._private.worker._global_node.get_session_dir_path()}), flush=True)
sys.stdin.readline()
"""


def _record(lake: Path, **changes) -> PlatformRecord:
    base = dict(lake_root=str(lake), gcs_address="127.0.0.1:1", dashboard_url=None, node_id="n", pid=os.getpid(),
                gcs_pid=None, session_dir="/tmp/ray/session_x", started_at=time.time(), host=socket.gethostname(),
                auth_mode="token", token_path="/root/.ray/auth_token")
    return PlatformRecord(**{**base, **changes})


def test_the_record_is_private_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live = _record(lake, gcs_address=f"127.0.0.1:{listener.getsockname()[1]}")
        path = platform_record.write(live)
        assert path == lake.resolve() / "_platform" / "ray.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert platform_record.read(str(lake)) == live and live.stale_reason() is None
    assert "refuses connections" in live.stale_reason()                      # the GCS port closed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert "has exited" in _record(lake, pid=int(dead.stdout)).stale_reason()  # its owner is gone
    assert "host" in _record(lake, host="elsewhere").stale_reason()
    platform_record.remove(str(lake), os.getpid() + 1, live.session_dir)       # not its owner: kept
    assert platform_record.read(str(lake)) == live
    platform_record.remove(str(lake), os.getpid(), live.session_dir)
    assert platform_record.read(str(lake)) is None
    path.write_text('{"lake_root": "half-writ')                                 # torn: as good as none
    assert platform_record.read(str(lake)) is None
    # an object-store lake has no local folder: its record lives in this user's state folder, by lake URI
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    remote = platform_record.record_dir("s3://bucket/lake")
    assert remote.parent == tmp_path / "state" / "lakeloop" / "platforms"
    assert remote != platform_record.record_dir("s3://bucket/other")


def _start(lake: Path) -> subprocess.Popen:
    env = clean_env(drop=("RAY_ADDRESS",))
    log = open(lake.parent / f"holder-{time.monotonic_ns()}.log", "w+")  # not a pipe: Ray may log a lot
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lake)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env)


def _report(proc: subprocess.Popen, timeout_s: float = 180) -> dict:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if line.startswith("{"):
                return json.loads(line)
            if not line and proc.poll() is not None:
                break
    proc.kill()
    log = Path(proc.args[-1]).parent.glob("holder-*.log")
    raise AssertionError("no report from a holder; logs:\n" + "\n".join(p.read_text()[-2000:] for p in log))


def _session_processes(session_dir: str) -> list:
    import psutil

    name = os.path.basename(session_dir)
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(name in part for part in p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _raylets(session_dir: str) -> list:
    return [p for p in _session_processes(session_dir) if "raylet" in os.path.basename((p.info["cmdline"] or [""])[0])]


def _kill_all(procs: list[subprocess.Popen], sessions: list[str]) -> None:
    """Stop what this test started, by PID: the holders, then whatever their Ray sessions left."""
    import psutil

    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    left = [p for s in sessions for p in _session_processes(s)]
    for p in left:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_later_processes_attach_and_a_killed_platform_is_replaced(tmp_path):
    lake = tmp_path / "lake"
    procs: list[subprocess.Popen] = []
    sessions: list[str] = []
    try:
        owner = _start(lake)
        procs.append(owner)
        first = _report(owner)
        sessions.append(first["session"])
        record = platform_record.read(str(lake))
        assert record is not None and record.pid == owner.pid and record.gcs_address == first["gcs"]
        assert record.node_id == first["node"] and record.session_dir == first["session"]
        assert record.dashboard_url.startswith("http://127.0.0.1:") and record.auth_mode == "token"
        assert record.gcs_pid is not None and record.host == socket.gethostname()
        path = platform_record.record_dir(str(lake)) / "ray.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        # a second process (a shell command beside the notebook) attaches: same GCS, same node, one raylet
        second = _start(lake)
        procs.append(second)
        attached = _report(second)
        assert (attached["gcs"], attached["node"], attached["session"]) == (first["gcs"], first["node"],
                                                                            first["session"])
        assert attached["alive_nodes"] == [first["node"]] and len(_raylets(first["session"])) == 1
        assert not list(Path("/tmp/ray").glob(f"session_*_{second.pid}"))       # it started no Ray of its own
        second.stdin.close()
        assert second.wait(timeout=60) == 0
        assert record.stale_reason() is None                                    # its exit left the Ray running

        # the platform dies hard (its GCS and the owner, SIGKILL): the next processes find the record stale,
        # and of two starting at once exactly one starts the new Ray, the other attaches to it
        os.kill(record.gcs_pid, signal.SIGKILL)
        owner.kill()
        owner.wait(timeout=30)
        assert record.stale_reason() is not None
        racers = [_start(lake), _start(lake)]
        procs += racers
        a, b = (_report(p) for p in racers)
        sessions.append(a["session"])
        assert a["gcs"] == b["gcs"] != first["gcs"] and a["session"] == b["session"] != first["session"]
        fresh = platform_record.read(str(lake))
        assert fresh.gcs_address == a["gcs"] and fresh.pid in (racers[0].pid, racers[1].pid)
        assert fresh.stale_reason() is None and len(_raylets(a["session"])) == 1
        for p in sorted(racers, key=lambda p: p.pid == fresh.pid):               # the attached one goes first
            p.stdin.close()
            assert p.wait(timeout=60) == 0
        assert platform_record.read(str(lake)) is None                         # the owner's exit took it away
    finally:
        _kill_all(procs, sessions)
