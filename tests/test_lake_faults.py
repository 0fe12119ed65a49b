"""A damaged or unwritable lake gives a lakeloop error naming the table, the path and the fix; nothing half-written.

Real Delta tables in tmp dirs; the storage faults are real too: a read-only bind mount
(or, when not root, a folder without write permission) and a file-size limit
(RLIMIT_FSIZE, which the kernel enforces like a full disk: EFBIG on the write).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from lakeloop.errors import LakeStorageError, TableDamagedError, TableNameError


def rows(ids):
    return pd.DataFrame({"id": ids, "v": [float(i) for i in range(len(ids))]})


@pytest.fixture
def events(ll):
    table = ll.lake.create("raw.events", {"id": "string", "v": "float64"})
    table.append(rows(["a", "b"]))
    table.append(rows(["c"]))
    return table


def _commit(table, version: int) -> Path:
    return Path(table.uri, "_delta_log", f"{version:020d}.json")


@pytest.mark.parametrize("damage", [b"", b"{\"add\": {\"path\": \"x.parquet\"", b"\xff\xfe garbage"])
def test_an_empty_or_unreadable_latest_commit_is_an_error_on_read_and_write(events, damage):
    assert events.version() == 2
    _commit(events, 2).write_bytes(damage)
    for action in (events.to_pandas, events.version, lambda: events.append(rows(["d"])),
                   lambda: events.upsert(rows(["a"]), key="id")):
        with pytest.raises(TableDamagedError) as err:
            action()
        message = str(err.value)
        assert "raw.events" in message and "00000000000000000002.json" in message and "restore" in message
    assert sorted(p.name for p in _commit(events, 0).parent.glob("*.json"))[-1] == "00000000000000000002.json", \
        "nothing was committed on top of the damaged commit"
    if damage == b"":  # delta-rs still loads the log: restore (the fix named) makes the table usable again
        assert 1 in [h["version"] for h in events.history()]
        events.restore(1)
        assert sorted(events.to_pandas()["id"]) == ["a", "b"]
        assert events.append(rows(["d"])).version == 4
    else:  # an unparseable log cannot be loaded at all: moving the broken commit aside (the other fix named) does it
        _commit(events, 2).rename(_commit(events, 2).with_suffix(".damaged"))
        assert sorted(events.to_pandas()["id"]) == ["a", "b"]
        assert events.append(rows(["d"])).version == 2


def test_a_missing_data_file_is_an_error_on_read_and_on_append(events):
    files = events._delta().file_uris()
    victim = files[0][len("file://"):] if files[0].startswith("file://") else files[0]
    os.remove(victim)
    with pytest.raises(TableDamagedError, match=r"raw\.events.*missing.*restore") as err:
        events.to_pandas()
    assert os.path.basename(victim) in str(err.value)
    with pytest.raises(TableDamagedError, match="nothing is appended"):
        events.append(rows(["d"]))
    assert events.version() == 2, "no commit on top of the damaged table"
    events.overwrite(rows(["z"]))  # replacing every file is allowed, and repairs it
    assert events.to_pandas()["id"].tolist() == ["z"]


@pytest.mark.parametrize("name", ["raw.x\n", "raw.x\r\n", "raw.x\nfoo", "\nraw.x", "raw.x "])
def test_table_names_are_checked_whole_and_leave_no_stray_folder(ll, name):
    with pytest.raises(TableNameError):
        ll.lake.create(name, {"id": "string"})
    with pytest.raises(TableNameError):
        ll.lake.write(name, rows(["a"]))
    root = Path(ll.config.lake.root)
    assert not (root / "raw").exists() or not any((root / "raw").iterdir())


def test_a_lake_under_a_file_is_a_storage_error_naming_the_path(tmp_path):
    import lakeloop

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(LakeStorageError, match="not-a-folder"):
        lakeloop.connect(lake_root=str(blocker / "lake")).lake.create("raw.events", {"id": "string"})


_WRITER = textwrap.dedent("""
    import os, resource, signal, sys
    import pandas as pd
    import lakeloop
    from lakeloop.errors import LakeloopError
    if sys.argv[2] == "fsize":  # the kernel refuses writes past 1 kB, as a full disk refuses them
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    ll = lakeloop.connect(lake_root=sys.argv[1])
    for action in ("append", "create"):
        try:
            if action == "append":
                ll.lake.table("raw.events").append(pd.DataFrame({"id": [f"x{i}" for i in range(3000)], "v": 1.0}))
            else:
                ll.lake.create("raw.other", {"id": "string"})
        except LakeloopError as exc:
            print(type(exc).__name__ + ": " + str(exc).replace(chr(10), " "))
        else:
            print(action + " succeeded")
    sys.stdout.flush()
    os._exit(0)
""")


def _run_writer(lake: str, mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _WRITER, lake, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_a_full_disk_is_a_storage_error_naming_table_and_path_and_the_table_stays(events):
    lines = _run_writer(events.lake.root, "fsize")
    assert len(lines) == 2, lines
    for line, table in zip(lines, ("raw.events", "raw.other")):
        assert line.startswith("LakeStorageError: ") and table in line and "disk is full" in line, line
        assert events.lake.root in line
    assert events.version() == 2 and len(events.to_pandas()) == 3


@pytest.fixture
def read_only_lake(events):
    """The lake folder made read-only for real: a read-only bind mount as root, else no write permission."""
    root = events.lake.root
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", root], check=True)
        yield events
        subprocess.run(["chmod", "-R", "u+w", root], check=True)
        return
    bind = subprocess.run(["mount", "--bind", root, root], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root without mount rights, so no folder can be made read-only: {bind.stderr}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", root], check=True, capture_output=True)
        probe = Path(root, ".probe")
        with pytest.raises(OSError):
            probe.write_text("x")
        yield events
    finally:
        subprocess.run(["umount", root], check=False)


def test_a_read_only_lake_is_a_storage_error_and_the_cli_prints_one_line_and_exits_2(read_only_lake, tmp_path):
    lake = read_only_lake.lake.root
    lines = _run_writer(lake, "plain")
    assert len(lines) == 2, lines
    for line, table in zip(lines, ("raw.events", "raw.other")):
        assert line.startswith("LakeStorageError: ") and table in line and "not writable" in line, line
    assert sorted(read_only_lake.to_pandas()["id"]) == ["a", "b", "c"]  # reads still work
    csv = tmp_path / "more.csv"
    csv.write_text("id,v\nq,1.5\n")
    proc = run_cli("--lake", lake, "lake", "ingest", str(csv), "--table", "raw.events", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "raw.events" in errors[0] and "not writable" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_cli_prints_one_line_for_a_damaged_table(events):
    _commit(events, 2).write_bytes(b"")
    proc = run_cli("--lake", events.lake.root, "lake", "read", "raw.events", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("error: table raw.events is damaged") and "restore" in line
