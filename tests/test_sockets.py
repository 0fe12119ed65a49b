"""Nothing listens beyond loopback: every socket of the local Ray (GCS, raylet, agents, workers, Serve's
proxy and replicas, the online store) and of a head started with the README's `ray start` line.

Sockets are listed with psutil over the process tree; TCP sockets in LISTEN state and bound
UDP sockets count. A failed local Ray start is a ConnectError and frees what it bound.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import BIN, free_port
from lakeloop.serving.service import serve_env, stop_node_haproxies

pytestmark = pytest.mark.slow

def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def listening(root_pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP and bound UDP socket of the process tree."""
    import psutil

    root = psutil.Process(root_pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            is_udp = c.type == socket.SOCK_DGRAM
            if (c.status == psutil.CONN_LISTEN or (is_udp and not c.raddr)) and c.laddr:
                out.append((proc.pid, name, c.laddr.ip, c.laddr.port))
    return out


def test_the_local_ray_with_serving_and_the_online_store_listens_only_on_loopback(ray_session, tmp_path):
    import lakeloop
    from lakeloop.features import online
    from ray import serve

    @ray_session.remote(num_cpus=0.05)
    class Worker:
        def ping(self):
            return os.getpid()

    worker = Worker.remote()
    ray_session.get(worker.ping.remote(), timeout=120)

    @serve.deployment(ray_actor_options={"num_cpus": 0.05})
    class Echo:
        def __call__(self, request):
            return "ok"

    port = free_port()
    serve.shutdown()  # a Serve left by an earlier module on this worker's Ray would keep its own port
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), online_port=free_port(), ray_namespace="socket-tests")
    assert ll.config.serve.ingress == "haproxy"  # the default, started as ll.serving.up starts it
    node = ray_session.get_runtime_context().get_node_id()
    env = serve_env(ll.config)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options={"runtime_env": {"env_vars": env}})
    try:
        serve.run(Echo.bind(), name="socket-echo", route_prefix="/echo")
        deadline = time.monotonic() + 120
        while True:  # the proxy learns the new route shortly after serve.run returns
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo", timeout=30) as r:
                    assert r.read() == b"ok"
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 404 and time.monotonic() < deadline, exc
                time.sleep(0.5)
        online.start(ll)
        found = listening(os.getpid())
    finally:
        online.stop(ll)
        serve.shutdown()
        stop_node_haproxies(node)
        ray_session.kill(worker)
    ports = {p for _, _, _, p in found}
    assert port in ports and ll.config.online.port in ports, "the Serve proxy and the online store were listed"
    assert len(found) >= 8, found  # GCS, raylet (2), agents, workers, haproxy (3), replica, online store
    # the Python proxy haproxy falls back to listens on a port of its own: on Ray's fixed 8500 (SO_REUSEPORT)
    # every Serve on the machine would share it, and a request could reach another Serve's app
    fallback = int(env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"])
    assert any(p == fallback and name.startswith("ray::ProxyActor") for _, name, _, p in found), found
    assert 8500 not in ports, found
    wide = [s for s in found if not is_loopback(s[2])]
    assert not wide, f"sockets beyond loopback: {wide}"


@pytest.mark.timeout(600)  # the ray_head fixture may start the head up to 5 times (tests/ray_heads.py)
def test_a_head_started_with_the_documented_line_listens_only_on_loopback(ray_head):
    _, _, pid = ray_head
    deadline = time.monotonic() + 120
    while True:  # the job server answers before the raylet and its agents are all up
        found = listening(pid)
        names = {name for _, name, _, _ in found}
        if {"raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names:
            break
        assert time.monotonic() < deadline, f"the head's raylet and agents did not come up: {found}"
        time.sleep(1)
    assert len(found) >= 6, found  # GCS, raylet, dashboard, agents, client server
    wide = [s for s in found if not is_loopback(s[2])]
    assert not wide, f"sockets beyond loopback: {wide}"


def test_a_failed_local_ray_start_is_a_connect_error_and_frees_what_it_bound():
    """A dashboard port that is taken makes Ray's start fail after it started its GCS (whose processes and
    ports Ray's own shutdown leaves behind); in a fresh process."""
    script = """
import socket, sys, psutil
from lakeloop.client import start_local_ray
from lakeloop.errors import ConnectError
held = socket.socket(); held.bind(("127.0.0.1", 0)); held.listen(); port = held.getsockname()[1]
try:
    start_local_ray(num_cpus=1, include_dashboard=True, dashboard_port=port, log_to_driver=False)
except ConnectError as exc:
    print("CONNECT_ERROR", exc)
left = [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]
print("LEFT", len(left))
mine = [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
print("LISTENING", sorted(a.port for a in mine if a.port != port))  # only the port held on purpose
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_") and k != "RAY_ADDRESS"}
    proc = subprocess.run([str(BIN / "python"), "-c", script], capture_output=True, text=True, timeout=240,
                          env=env)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = next(line for line in out.splitlines() if line.startswith("CONNECT_ERROR"))
    assert "dashboard_port=" in error and "Stopped" in error and "Retry" in error
    assert "LEFT 0" in out, out  # every process the start left (GCS, log monitor, ...) was stopped
    assert "LISTENING []" in out, out
