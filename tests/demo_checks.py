"""What `lakeloop demo --fast --json` must show: the whole loop closed, with no failed request.

Used by tests/test_retrain.py (a local Ray the CLI starts) and tests/test_cluster.py (a 3-node cluster's
address).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import lakeloop
from conftest import BIN, clean_env
from lakeloop.demo.scenario import BAD_KINDS


def run_demo(cwd: Path, env: dict[str, str], timeout: float) -> dict:
    """`lakeloop demo --fast --json` in ``cwd``; its summary. Past ``timeout`` it gets a Ctrl-C (SIGINT) and
    two minutes to stop what it started (on a cluster its monitor, replicas and retrain job would otherwise
    keep running, and holding CPUs, after the test), then SIGKILL."""
    full_env = clean_env() | env
    proc = subprocess.Popen([str(BIN / "lakeloop"), "demo", "--fast", "--json"], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"lakeloop demo --fast did not end within {timeout} s; interrupted "
                             f"(exit {proc.returncode}):\n{err[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"lakeloop demo --fast exited {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    return json.loads(out)


def retrain_story(summary: dict) -> str:
    """What a failed demo check needs to be read after the run: the job, the loop's outcome and events, and
    the end of the retrain job's log (the test's tmp dir is gone by the time anyone looks)."""
    retrain = summary["retrain"]
    log = Path(retrain["log"]) if retrain.get("log") else None
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else "(no job log)"
    return (f"retrain {retrain}; outcome {summary['outcome']!r} ({summary.get('outcome_reason')}); "
            f"events {[(e['time'], e['kind']) for e in summary['events']]}\njob log tail:\n{tail}")


def check_demo_summary(summary: dict, lake: Path, capsys) -> None:
    assert summary["lake"] == str(lake)
    assert summary["quarantined"] > 0 and set(summary["quarantined_by_rule"]) == set(BAD_KINDS.values())
    traffic = summary["traffic"]
    assert traffic["failed"] == 0 and traffic["rows"] >= 1000, traffic["errors"]
    assert summary["drift"]["detected_at"] and summary["drift"]["seconds_to_detect"] >= 0
    assert "customer_stats__log_amount" in summary["drift"]["drifted"]
    assert summary["retrain"]["job_id"], summary["events"][-12:]
    assert summary["retrain"]["job_id"].startswith("lakeloop-retrain-fraud-")
    assert summary["retrain"]["status"] == "SUCCEEDED", retrain_story(summary)
    assert summary["outcome"] == "promoted" and summary["promoted_version"] == 2, retrain_story(summary)
    canary = summary["canary"]
    assert canary["verdict"] == "promote" and canary["p_value"] < 0.05
    assert canary["challenger_accuracy"] > canary["champion_accuracy"]
    kinds = [e["kind"] for e in summary["events"] if e["kind"] not in ("drift_detected", "alert")]
    assert kinds == ["retrain_submitted", "retrain_started", "materialized", "challenger_registered",
                     "canary_started", "canary_verdict", "promoted"]
    assert summary["models"]["before"]["version"] == 1 and summary["models"]["after"]["aliases"] == ["champion"]
    after = summary["phases"]["after verdict"]
    assert list(after["by_version"]) == ["v2"] and after["accuracy"] > summary["phases"]["drift"]["accuracy"]
    versions = summary["data_versions"]
    assert versions["raw.transactions"]["latest"] > versions["raw.transactions"]["after_history"]
    assert versions["features.customer_stats"]["latest"] > versions["features.customer_stats"]["after_history"]
    assert summary["shutdown"] == {"monitor": "stopped", "serving": "stopped", "online store": "stopped"}, \
        summary["shutdown"]
    assert summary["plot"].endswith("_demo/loop.png") and (lake / "_demo" / "loop.png").stat().st_size
    run = lakeloop.connect(lake_root=summary["lake"]).mlflow.get_run(summary["demo_mlflow_run"])
    assert run.data.metrics["failed_requests"] == 0 and run.data.metrics["canary_p_value"] < 0.05

    # the same summary as people read it
    from lakeloop.cli.demo import show

    show(summary)
    human = capsys.readouterr().out
    for text in ("quarantined rows by rule", "data versions", "live traffic", "canary verdict", "promoted version",
                 "requests served / failed", "Ray dashboard", "MLflow UI", "demo done"):
        assert text in human
