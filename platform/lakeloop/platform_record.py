"""One platform per lake: where the local Ray serving a lake runs, recorded so later processes attach to it.

The first process that starts a local Ray for a lake (``connect().ensure_ray()`` with no
``ray.address``) writes ``<lake>/_platform/ray.json`` (file 0600, folder 0700): the GCS
address, the dashboard (job server) URL, the node id, the pid of the process that owns
that Ray, the GCS server's pid, the session dir, the start time, the host, and how its
token auth is set. Later ``connect()`` calls, CLI commands and ``lakeloop job submit`` for
the same lake read it and attach instead of starting a second Ray (which would fail on the
dashboard port, or split the platform in two). A record whose owner or GCS is gone, or
whose GCS port refuses, is stale: the next start replaces it. Check and start run under an
``fcntl`` lock (``ray.lock`` beside the record), so two processes starting at once make one Ray.

A remote lake (``s3://...``) has no local folder, and a local Ray's loopback address means
nothing to another machine, so its record lives in this user's state folder instead:
``$XDG_STATE_HOME/lakeloop/platforms/<hash of the lake URI>/`` (default
``~/.local/state/...``). The record holds no secret: the Ray token stays in its own file,
and only that file's path is recorded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

from lakeloop.errors import ConnectError

RECORD_NAME = "ray.json"
LOCK_NAME = "ray.lock"
LOCK_TIMEOUT_S = 300.0  # a local Ray start on a loaded machine can take minutes (its own waits are 120 s)


def record_dir(lake_root: str) -> Path:
    """The folder that holds the lake's platform record (see the module docstring for remote lakes)."""
    if lake_root.startswith("file://"):
        lake_root = lake_root[len("file://"):]
    if "://" not in lake_root:
        return Path(lake_root).resolve() / "_platform"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "lakeloop" / "platforms" / hashlib.sha256(lake_root.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PlatformRecord:
    """Where a lake's local Ray runs, and who owns it."""

    lake_root: str
    gcs_address: str
    dashboard_url: str | None
    node_id: str
    pid: int  # the process that started this Ray: it stops when that process exits
    gcs_pid: int | None
    session_dir: str
    started_at: float  # Unix time
    host: str
    auth_mode: str | None  # "token" when the Ray wants its token on every connection
    token_path: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PlatformRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def stale_reason(self) -> str | None:
        """Why this record no longer names a running Ray, or ``None`` when it does."""
        if self.host != socket.gethostname():
            return f"it was written on host {self.host!r}, this is {socket.gethostname()!r}"
        if not _pid_alive(self.pid):
            return f"its owner process {self.pid} has exited"
        if self.gcs_pid is not None and not _pid_alive(self.gcs_pid):
            return f"its GCS server (pid {self.gcs_pid}) has exited"
        if not _port_answers(self.gcs_address):
            return f"its GCS at {self.gcs_address} refuses connections"
        return None


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:  # pragma: no cover - psutil comes with Ray
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return exc.errno == errno.EPERM
        return True
    except Exception:  # the process went between the two calls
        return False


def _port_answers(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def read(lake_root: str) -> PlatformRecord | None:
    """The lake's record as written, or ``None`` when there is none (or it is unreadable, i.e. stale)."""
    path = record_dir(lake_root) / RECORD_NAME
    try:
        return PlatformRecord.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # half-written by a process that died: as good as stale
        return None


def write(record: PlatformRecord) -> Path:
    """Write the record atomically, readable by this user only (0600 in a 0700 folder)."""
    folder = _private_dir(record_dir(record.lake_root))
    path = folder / RECORD_NAME
    tmp = folder / f".{RECORD_NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record.to_dict(), f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def remove(lake_root: str, pid: int, session_dir: str) -> None:
    """Remove the record if it still names this owner and session (at the owner's exit)."""
    current = read(lake_root)
    if current is not None and current.pid == pid and current.session_dir == session_dir:
        try:
            (record_dir(lake_root) / RECORD_NAME).unlink()
        except OSError:
            pass


def _private_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


@contextmanager
def locked(lake_root: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lake's platform lock (``fcntl.flock``) while checking the record and starting Ray.

    Polled with a deadline, so a process stuck holding it cannot hang the others forever.
    """
    import fcntl

    folder = record_dir(lake_root)
    try:
        _private_dir(folder)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConnectError(
            f"cannot write the platform record of lake {lake_root} in {folder} ({exc.strerror or exc}): the lake's "
            "folder must be writable by this user, or set ray.address to the Ray to use") from None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConnectError(
                        f"another process has been starting the Ray of lake {lake_root} for over {timeout_s:g} s "
                        f"(lock {folder / LOCK_NAME}); wait for it, or stop it and retry") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def capture(lake_root: str) -> PlatformRecord:
    """The record of the local Ray this process has just started (reads Ray's own runtime state)."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    gcs_pid = None
    try:
        gcs_pid = node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid
    except (AttributeError, KeyError, IndexError):  # Ray changed its bookkeeping: liveness by owner + port
        pass
    dashboard = ray._private.worker.get_dashboard_url() or None
    if dashboard and "://" not in dashboard:
        dashboard = f"http://{dashboard}"
    auth = os.environ.get("RAY_AUTH_MODE")
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return PlatformRecord(
        lake_root=lake_root,
        gcs_address=ray.get_runtime_context().gcs_address,
        dashboard_url=dashboard,
        node_id=ray.get_runtime_context().get_node_id(),
        pid=os.getpid(),
        gcs_pid=gcs_pid,
        session_dir=node.get_session_dir_path(),
        started_at=time.time(),
        host=socket.gethostname(),
        auth_mode=auth,
        token_path=token if auth == "token" else None,
    )
