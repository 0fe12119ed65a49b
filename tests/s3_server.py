"""An S3-compatible server for the tests: moto's standalone server (PyPI `moto[server]`) on loopback.

It runs as its own process (its own process group), so Ray workers, jobs and `mlflow server` in
other processes reach the same buckets; it is stopped by that process, by PID. Credentials are
moto's dummy ones and travel by environment or the lake's secret file, never on a command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lakeloop.ports import free_port  # below the ephemeral range (lakeloop/ports.py)

ACCESS_KEY = "lakeloop-test-key"
SECRET_KEY = "lakeloop-test-secret"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    pid: int
    buckets: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a process needs in its environment to reach this server (boto3, delta-rs, pyarrow, mlflow)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ALLOW_HTTP": "true"}

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs / object_store options for a lake on this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return ``s3://name``."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        self.buckets.append(name)
        return f"s3://{name}"


@contextmanager
def running_s3(log_dir: str | os.PathLike, timeout: float = 60):
    """Start moto's server on a free loopback port; yield an :class:`S3Server`; stop it by PID."""
    port = free_port()
    log = open(Path(log_dir, "moto.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}; see {log.name}")
                time.sleep(0.2)
        yield S3Server(endpoint=endpoint, pid=proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
