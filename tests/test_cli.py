"""The `lakeloop` command as a user runs it: a subprocess of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from lakeloop.demo import scenario


@pytest.fixture
def csv_file(tmp_path):
    return scenario.write_csv(scenario.generate(200, seed=3), tmp_path / "tx.csv")


def test_help_answers_fast_and_import_is_light():
    """What makes `lakeloop --help` cheap (bench/cli.py measures its CPU time): it loads no subcommand, no rich
    (plain help at the top level), and none of the heavy libraries; every command it lists loads on use."""
    proc = run_cli("--help")
    assert "lake" in proc.stdout and "demo" in proc.stdout and "job" in proc.stdout
    heavy = ("typer", "click", "rich", "ray", "mlflow", "pandas", "numpy", "deltalake", "torch", "sklearn",
             "alibi_detect")
    code = ("import sys, lakeloop.cli\n"
            "try:\n    lakeloop.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})), "
            "sorted(m for m in sys.modules if m.startswith('lakeloop.cli.') and m != 'lakeloop.cli.output'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] []"
    from lakeloop.cli import COMMANDS, build_app, load_command

    for name, (_module, _attr, line) in COMMANDS.items():  # the listed line is the command's own help
        command = load_command(name)
        assert " ".join((command.help or "").split()).startswith(line), name
    typer_help = " ".join(run_cli("--lake", ".", "--help").stdout.split())  # not the fast path: typer's own
    fast_help = " ".join(proc.stdout.split())
    assert build_app().registered_callback is not None and "--config" in typer_help
    for name, (_module, _attr, line) in COMMANDS.items():
        assert f"{name} {line}" in fast_help and f"{name} {line}" in typer_help
    for option in ("--config", "--lake", "Lake root; overrides the config's lake.root."):
        assert option in fast_help and option in typer_help
    code = ("import sys, lakeloop, lakeloop.cli; ll = lakeloop.connect(); ll.lake; "
            "heavy = [m for m in ('ray', 'torch', 'mlflow', 'alibi_detect', 'deltalake', 'pandas', 'sklearn') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ingest_tables_history_read_restore_profile(tmp_path, csv_file):
    lake = str(tmp_path / "lake")
    r = json.loads(run_cli("--lake", lake, "lake", "ingest", str(csv_file), "--table", "raw.transactions",
                           "--rules", str(scenario.RULES_FILE), "--json").stdout)
    assert (r["accepted"], r["quarantined"], r["version"]) == (196, 4, 1)
    again = scenario.write_csv(scenario.generate(50, seed=4, first_id=10_000, bad_fraction=0), tmp_path / "b.csv")
    r2 = json.loads(run_cli("--lake", lake, "lake", "ingest", str(again), "--table", "raw.transactions",
                            "--key", "txn_id", "--json").stdout)
    assert (r2["accepted"], r2["mode"], r2["version"]) == (50, "upsert", 2)

    tables = json.loads(run_cli("--lake", lake, "lake", "tables", "--json").stdout)
    assert {t["table"]: t["version"] for t in tables} == {"quarantine.transactions": 1, "raw.transactions": 2}

    hist = json.loads(run_cli("--lake", lake, "lake", "history", "raw.transactions", "--json").stdout)
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert hist[1]["batch_id"] == r["batch_id"]

    read = json.loads(run_cli("--lake", lake, "lake", "read", "raw.transactions", "--version", "1",
                              "--limit", "3", "--json").stdout)
    assert read["version"] == 1 and len(read["rows"]) == 3 and read["rows"][0]["txn_id"].startswith("t")

    restored = json.loads(run_cli("--lake", lake, "lake", "restore", "raw.transactions", "--version", "1",
                                  "--json").stdout)
    assert restored["version"] == 3

    prof = json.loads(run_cli("--lake", lake, "lake", "profile", "raw.transactions", "--json").stdout)
    assert prof["version"] == 3 and prof["rows"] == 196
    amount = next(c for c in prof["columns"] if c["name"] == "amount")
    assert amount["nulls"] == 0 and amount["min"] >= 0 and amount["histogram"].endswith("amount.png")
    import lakeloop

    client = lakeloop.connect(lake_root=lake).mlflow
    run = client.get_run(prof["mlflow_run_id"])
    assert run.data.metrics["rows"] == 196 and run.data.tags["lakeloop.table_version"] == "3"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "histograms")}
    assert "histograms/amount.png" in logged

    human = run_cli("--lake", lake, "lake", "profile", "raw.transactions", "--version", "2").stdout
    assert "profile of raw.transactions v2" in human

    compacted = json.loads(run_cli("--lake", lake, "lake", "optimize", "raw.transactions", "--json").stdout)
    assert compacted["version"] >= 3  # a new version only when there were files to compact
    dry = json.loads(run_cli("--lake", lake, "lake", "vacuum", "raw.transactions", "--retention-hours", "0",
                             "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["files"]
    done = json.loads(run_cli("--lake", lake, "lake", "vacuum", "raw.transactions", "--retention-hours", "0",
                              "--json").stdout)
    assert sorted(done["files"]) == sorted(dry["files"])
    after = json.loads(run_cli("--lake", lake, "lake", "read", "raw.transactions", "--limit", "500", "--json").stdout)
    assert after["version"] >= compacted["version"] and len(after["rows"]) == 196  # vacuum logs its own commits


def test_errors_print_a_message_and_exit_2(tmp_path, csv_file):
    lake = str(tmp_path / "lake")
    proc = run_cli("--lake", lake, "lake", "ingest", str(csv_file), "--table", "../etc", check=False)
    assert proc.returncode == 2 and "layer.name" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("--lake", lake, "lake", "history", "raw.missing", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = run_cli("--lake", lake, "lake", "ingest", str(empty), "--table", "raw.x", check=False)
    assert proc.returncode == 2 and "empty" in proc.stderr
    proc = run_cli("lake", "tables", env={"LAKELOOP_LAKE_ROOTT": "x"}, check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "LAKELOOP_LAKE_ROOTT" not in proc.stdout and "lake.roott" in proc.stderr


def test_config_file_and_env_reach_the_cli(tmp_path, csv_file):
    (tmp_path / "lakeloop.yaml").write_text("lake:\n  root: from-file\n")
    run_cli("lake", "ingest", str(csv_file), "--table", "raw.t", cwd=tmp_path)
    assert (tmp_path / "from-file" / "raw" / "t" / "_delta_log").is_dir()
    run_cli("lake", "ingest", str(csv_file), "--table", "raw.t", cwd=tmp_path,
            env={"LAKELOOP_LAKE_ROOT": str(tmp_path / "from-env")})
    assert (tmp_path / "from-env" / "raw" / "t" / "_delta_log").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ui_serves_the_lakes_mlflow_runs_on_loopback_and_stops_with_its_server(tmp_path):
    import signal
    import socket
    import urllib.request

    from conftest import BIN, free_port

    import lakeloop

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"))
    ll.experiment_id()  # the lakeloop experiment exists in the lake's store
    dry = json.loads(run_cli("--lake", str(tmp_path / "lake"), "ui", "--dry-run", "--json").stdout)
    assert dry["url"] == "http://127.0.0.1:5000" and dry["tracking_uri"] == ll.config.tracking_uri
    port = free_port()
    proc = subprocess.Popen([str(BIN / "lakeloop"), "--lake", str(tmp_path / "lake"), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=5) as r:
                    names = [e["name"] for e in json.loads(r.read())["experiments"]]
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(1)
        assert "lakeloop" in names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    with pytest.raises(OSError):  # its server went with it
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
