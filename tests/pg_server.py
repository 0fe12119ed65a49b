"""A real PostgreSQL for the tests, from the binaries the PyPI wheel `pgserver` ships (no root, no apt).

pgserver's own ``get_server`` listens on a unix socket only and keeps one shared server per data folder
(stopped at interpreter exit by whichever handle is last). ``mlflow server`` needs a ``postgresql://``
URI over TCP, and the tests must know exactly what they started, so this module runs the bundled
``initdb`` and ``postgres`` itself: a fresh data folder in a temp dir, ``postgres`` bound to 127.0.0.1
on a free port (its unix socket in the same private folder), one database created, and at the end a
fast shutdown of that postmaster by its PID, then the folder removed.

PostgreSQL refuses to run as root; under root (containers, CI) the server runs as ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lakeloop.ports import free_port  # below the ephemeral range (lakeloop/ports.py)

USER = "postgres"  # the database superuser initdb creates (trust auth on loopback: a test server only)


@dataclass(frozen=True)
class PgServer:
    uri: str  # postgresql+psycopg2://postgres@127.0.0.1:PORT/DB (SQLAlchemy 2.1 reads bare postgresql:// as psycopg 3)
    host: str
    port: int
    database: str
    pid: int
    data_dir: Path

    def connect(self):
        """A psycopg2 connection to the test database (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=USER, dbname=self.database)
        conn.autocommit = True
        return conn


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing pgserver (whose import starts its own
    machinery for a shared per-folder server, and warns about XDG_RUNTIME_DIR)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL for the tests comes from the pgserver wheel: pip install pgserver")
    return Path(list(spec.submodule_search_locations)[0], "pginstall", "bin")


def _run_as() -> dict:
    """Popen arguments that run the server as a non-root user when this process is root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid}


def _ready(host: str, port: int, database: str, timeout: int = 2) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host=host, port=port, user=USER, dbname=database, connect_timeout=timeout).close()
        return True
    except psycopg2.OperationalError:
        return False


@contextmanager
def running_postgres(database: str = "mlflow", timeout: float = 60):
    """Start a private PostgreSQL on 127.0.0.1:<free port>; yield a :class:`PgServer`; stop it by PID.

    The data folder is made with :func:`tempfile.mkdtemp` (under a world-traversable temp root, so a
    server running as ``nobody`` can reach it) and removed at the end. As ``nobody``, the server also runs
    from a copy of the wheel's binaries in that folder: the checkout (and its venv) may sit where only its
    owner can enter, e.g. a clone into ``mktemp -d`` (mode 0700; initdb: "Permission denied").
    """
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="lakeloop-pg-"))
    data = root / "data"
    data.mkdir()
    bins = bin_dir()
    if as_user:
        os.chmod(root, 0o755)
        os.chown(data, as_user["user"], as_user["group"])
        # the same layout: the binaries' RPATH is $ORIGIN/../../../pgserver.libs
        site = bins.parent.parent.parent
        for part in ("pgserver/pginstall", "pgserver.libs"):
            shutil.copytree(site / part, root / "site" / part, symlinks=True)
        bins = root / "site" / "pgserver" / "pginstall" / "bin"
    log = open(root / "postgres.log", "w")
    proc = None
    try:
        subprocess.run([str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                        "--encoding=utf8", "--no-sync"], check=True, stdout=log, stderr=subprocess.STDOUT,
                       timeout=120, **as_user)
        port = free_port()
        proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(data), "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
        deadline = time.monotonic() + timeout
        while not _ready("127.0.0.1", port, "postgres"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start on 127.0.0.1:{port}; see {log.name}: "
                                   f"{Path(log.name).read_text()[-2000:]}")
            time.sleep(0.2)
        subprocess.run([str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, database],
                       check=True, stdout=log, stderr=subprocess.STDOUT, timeout=60)
        yield PgServer(uri=f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{database}", host="127.0.0.1", port=port,
                       database=database, pid=proc.pid, data_dir=data)
    finally:
        if proc is not None:
            _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT: disconnect clients, checkpoint, exit), then SIGKILL of its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
