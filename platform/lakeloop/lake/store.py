"""The object store under a remote lake (``s3://bucket/path``): how lakeloop reaches it, and what its failures mean.

Every read and write of a table goes through delta-rs (object_store), and so does
listing the lake (:func:`filesystem`): one client, one set of options, one way
to find credentials, whatever the process.

Credentials. delta-rs takes them from ``lake.storage_options`` first, then from
the process environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``;
a web identity or instance role on a cluster). The secret ones
(:func:`lakeloop.credentials.is_secret_option`) given to ``connect()`` serve that
process only: they never travel to Ray (actor and job configs, ``runtime_env``,
read tasks of Ray Data) nor to a command line, and for a remote lake they are
not written anywhere. So every other process that touches an ``s3://`` lake (Ray
workers, actors, jobs, Serve replicas) finds its credentials in its own
environment, as the nodes of a cluster do. Plain options (endpoint, region,
``AWS_ALLOW_HTTP``) do travel.

Concurrent writers. delta-rs 1.6 writes each commit file with a conditional PUT
(``If-None-Match: *``, S3's put-if-absent since 2024): of two writers racing for
version N one gets 412 and retries on N+1 (lakeloop's retry loop re-runs what
delta-rs cannot merge itself). No option is needed and no lock table: delta-rs
1.0 removed the DynamoDB locking provider (``AWS_S3_LOCKING_PROVIDER``) and no
longer needs ``AWS_S3_ALLOW_UNSAFE_RENAME``. An S3-compatible server without
conditional writes is not safe for two writers; give each table one writer there.

Opening a table lists its log and reads every commit since the last checkpoint,
so tables created on an object store checkpoint more often
(:data:`CHECKPOINT_INTERVAL`).
"""

from __future__ import annotations

import re
from typing import Mapping

from lakeloop.errors import ConnectError

# Tables made on an object store checkpoint every 10 commits (Delta's default: 100). Opening a table
# reads every commit since the last checkpoint, two GETs each; on moto here a one-row append with 50-60
# commits behind it took 1.0 s at the default and 0.17-0.28 s at 10 (bench/scale_lake.py has the rest).
CHECKPOINT_INTERVAL = 10

_ANSI = re.compile(r"\x1b\[[0-9;]*m|↳")


def is_remote(root: str) -> bool:
    """Whether a lake root names an object store (``s3://``, ``gs://``, ...) rather than a folder."""
    return "://" in root and not root.startswith("file://")


def endpoint(storage_options: Mapping[str, str]) -> str | None:
    """The object store endpoint from the options, else from the environment (None: the provider's default)."""
    import os

    for key, value in storage_options.items():
        if key.upper() in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "ENDPOINT_URL", "ENDPOINT", "AWS_ENDPOINT_URL_S3"):
            return value
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def plain_options(storage_options: Mapping[str, str]) -> dict[str, str]:
    """The options that may leave this process (to Ray tasks and actors): none of the credentials."""
    from lakeloop.credentials import is_secret_option

    return {k: v for k, v in storage_options.items() if not is_secret_option(k)}


def filesystem(root: str, storage_options: Mapping[str, str]):
    """A ``pyarrow.fs`` filesystem rooted at ``root``, over delta-rs's own object store client.

    Paths are relative to the root (``"raw"``, ``"raw/events/_delta_log"``). It reads
    the same options and environment as every table operation, so a lake that
    delta-rs can open can be listed.
    """
    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(root, dict(storage_options)))


def detail(exc: BaseException) -> str:
    """The innermost meaningful line of a delta-rs / object_store error chain (no colour codes)."""
    lines = [_ANSI.sub("", x).strip() for x in str(exc).splitlines()]
    lines = [x for x in lines if x]
    code = re.search(r"<Code>([^<]+)</Code>", str(exc))
    message = re.search(r"<Message>([^<]+)</Message>", str(exc))
    if code:
        return f"{code.group(1)}: {message.group(1) if message else ''}".strip(": ")
    return lines[-1] if lines else type(exc).__name__


def store_error(exc: BaseException, root: str, storage_options: Mapping[str, str], action: str) -> ConnectError:
    """A failure of the object store under ``root`` as a :class:`ConnectError` that names the lake and the fix.

    Told apart: a missing bucket, refused credentials, an endpoint that does not
    answer; anything else keeps the store's own words.
    """
    text = _ANSI.sub("", str(exc))
    low = text.lower()
    bucket = root.split("://", 1)[1].split("/", 1)[0] if "://" in root else root
    where = endpoint(storage_options)
    at = f" (endpoint {where})" if where else ""
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return ConnectError(
            f"cannot {action}: the bucket {bucket!r} of the lake {root} does not exist{at}. Create it (e.g. "
            f"`aws s3 mb s3://{bucket}`), or point lake.root (LAKELOOP_LAKE_ROOT, --lake) at an existing bucket")
    refused = any(s in low for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "access denied",
                                     "403 forbidden", "expiredtoken", "invalidtoken"))
    unreachable = any(s in low for s in ("connection refused", "error sending request", "dns error", "failed to lookup",
                                         "timed out", "connection reset", "tcp connect", "os error 111",
                                         "os error 113", "no route to host", "connect error"))
    if refused or (not unreachable and "credential" in low):
        return ConnectError(
            f"cannot {action}: the object store refused this process's credentials for the lake {root}{at} "
            f"({detail(exc)}). Give valid ones in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN, or an instance/web-identity role) or in lake.storage_options passed to connect(); "
            "Ray workers, actors and jobs need them in their own environment")
    if unreachable:
        return ConnectError(
            f"cannot {action}: the object store of the lake {root} does not answer{at}: {detail(exc)}. Check that "
            "it is up and that the endpoint is right (lake.storage_options AWS_ENDPOINT_URL, or the "
            "AWS_ENDPOINT_URL variable), and AWS_ALLOW_HTTP=true for an http:// endpoint")
    return ConnectError(
        f"cannot {action}: the object store of the lake {root}{at} failed: {detail(exc)}. Check lake.root and "
        "lake.storage_options (endpoint, region, credentials)")
