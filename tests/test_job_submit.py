"""`lakeloop job submit`: jobs/*.py on a Ray job server, and the `ray job submit` line it prints, run as printed.

Against the session's `ray start` head (`ray_head`), from a folder that is not the checkout,
with a shell environment that has no RAY_AUTH_MODE: what the printed line needs, it carries.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, clean_env, run_cli


@pytest.fixture
def transactions(ll):
    from lakeloop.demo import scenario

    ll.lake.ingest(scenario.write_csv(scenario.generate(300, seed=8), Path(ll.lake.root) / "tx.csv"),
                   "raw.transactions", rules=scenario.RULES_FILE)
    return ll


def _shell_env(head_env: dict) -> dict:
    """A user's shell: the venv on PATH, no Ray auth mode, no lakeloop settings."""
    env = clean_env(head_env, drop=("RAY_AUTH_MODE",))
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def test_job_submit_refuses_an_unknown_job_and_a_lake_without_a_platform(tmp_path):
    proc = run_cli("--lake", str(tmp_path / "lake"), "job", "submit", "train", "--print-only", check=False)
    assert proc.returncode == 2 and "unknown job 'train': choose one of automl, materialize, retrain" in proc.stderr
    proc = run_cli("--lake", str(tmp_path / "lake"), "job", "submit", "automl", "--table", "t", "--print-only",
                   check=False)
    assert proc.returncode == 2 and "no job server for lake" in proc.stderr and "--address" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)  # the ray_head fixture may start the head up to 5 times (tests/ray_heads.py)
def test_the_printed_ray_job_submit_line_runs_as_printed(transactions, ray_head, tmp_path):
    ll = transactions
    address, head_env, _pid = ray_head
    lake = ll.config.lake.root
    line = run_cli("--lake", lake, "job", "submit", "materialize", "merchant_stats", "--definitions",
                   "examples.fraud.features:definitions", "--address", address, "--print-only").stdout.strip()
    assert line.startswith(f"RAY_AUTH_MODE=token ray job submit --address {address} ")
    words = shlex.split(line)
    runtime_env = json.loads(words[words.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["LAKELOOP_LAKE_ROOT"] == lake
    assert runtime_env["py_modules"][0].endswith("platform/lakeloop") and ".venv" in runtime_env["excludes"]
    assert words[words.index("--") + 1:][:3] == [str(BIN / "python"), "jobs/materialize.py", "merchant_stats"]

    workdir = tmp_path / "elsewhere"  # not the checkout: the line carries absolute paths
    workdir.mkdir()
    proc = subprocess.run(["bash", "-c", line], cwd=workdir, env=_shell_env(head_env), capture_output=True,
                          text=True, timeout=360)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in output, output
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith('{"view"')))
    assert result["mode"] == "full" and result["source_version"] == 1
    assert ll.features.describe("merchant_stats")["last_materialized_source_version"] == 1

    # the wrapper itself: submits the same job, follows its logs, exits with its status
    sid = f"lakeloop-test-submit-{os.getpid()}"
    proc = run_cli("--lake", lake, "job", "submit", "materialize", "merchant_stats", "--full", "--address", address,
                   "--submission-id", sid, env=_shell_env(head_env), timeout=360)
    assert "# the same as: RAY_AUTH_MODE=token ray job submit" in proc.stderr
    assert f"# job {sid} SUCCEEDED" in proc.stderr
    again = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith('{"view"')))
    assert again["mode"] == "full" and again["source_version"] == 1
    assert ll.lake.table("features.merchant_stats").to_pandas()["merchant_txn_1d"].min() >= 1
