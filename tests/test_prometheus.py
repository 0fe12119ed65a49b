"""The shipped Prometheus config (deploy/prometheus.yml) collects Ray's metrics and lakeloop's.

A real Prometheus (the Debian package; ``make test`` installs it as root) runs on loopback with its
storage in a tmp dir, scrapes this test session's Ray through the shipped scrape job, and must find
``ray_lakeloop_*`` series after lakeloop metrics were recorded in a Ray actor.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import REPO, free_port

CONFIG = REPO / "deploy" / "prometheus.yml"
RAY_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"


def test_shipped_config_scrapes_rays_service_discovery_file():
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"][0]["files"] == [RAY_DISCOVERY_FILE]
    import ray._private.ray_constants as constants

    assert RAY_DISCOVERY_FILE.endswith(constants.PROMETHEUS_SERVICE_DISCOVERY_FILE)


def _api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_prometheus_finds_lakeloop_series_after_traffic(tmp_path, ray_session):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is not installed: run `make test` as root (it runs deploy/install-prometheus.sh) "
                    "or `apt-get install prometheus`")

    class _Recorder:  # defined here: pickled by value into the worker
        """Records lakeloop's serving metrics, with their names and tags, from inside a Ray worker."""

        def __init__(self):
            from ray.util import metrics

            keys = ("model", "version", "route")
            self.predictions = metrics.Counter("lakeloop_predictions", "rows predicted", tag_keys=keys)
            self.latency = metrics.Histogram("lakeloop_prediction_latency_ms", "model call latency (ms)",
                                             boundaries=[1, 5, 20, 100], tag_keys=keys)

        def record(self, n: int) -> int:
            tags = {"model": "prom-check", "version": "1", "route": "primary"}  # other tests' models share this Ray
            for i in range(n):
                self.predictions.inc(1, tags=tags)
                self.latency.observe(3.0 + i % 7, tags=tags)
            return n

    ray = ray_session
    recorder = ray.remote(num_cpus=0.05)(_Recorder).remote()
    assert ray.get(recorder.record.remote(25)) == 25

    # the shipped job, pointed at a discovery file for this session's Ray in the format Ray writes (the session's
    # Ray runs without a dashboard, the process that writes /tmp/ray/prom_metrics_service_discovery.json)
    node = next(n for n in ray.nodes() if n["Alive"])
    discovery = tmp_path / "prom_metrics_service_discovery.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"},
                                      "targets": [f"127.0.0.1:{node['MetricsExportPort']}"]}]))
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "2s"
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(discovery)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        names: list[str] = []
        series: list[dict] = []
        deadline = time.monotonic() + 90  # Ray exports about every 10 s, Prometheus scrapes every 2 s
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                names = _api(port, "label/__name__/values")["data"]
                series = _api(port, "series", **{"match[]": '{__name__=~"ray_lakeloop_.+"}'})["data"]
            except OSError:  # not listening yet
                pass
            if any(s["__name__"].startswith("ray_lakeloop_predictions") and s.get("model") == "prom-check"
                   for s in series) and any(
                    n.startswith("ray_") and "lakeloop" not in n for n in names):
                break
            time.sleep(1)
        lakeloop = sorted({s["__name__"] for s in series})
        assert any(n.startswith("ray_lakeloop_predictions") for n in lakeloop), (names, series)
        assert any(n.startswith("ray_lakeloop_prediction_latency_ms") for n in lakeloop), lakeloop
        assert any(n.startswith("ray_") and "lakeloop" not in n for n in names), "no Ray metrics scraped"
        tagged = [s for s in series if s["__name__"].startswith("ray_lakeloop_predictions")]
        ours = {(s.get("model"), s.get("version"), s.get("route")) for s in tagged if s.get("model") == "prom-check"}
        assert ours == {("prom-check", "1", "primary")}, tagged
        value = _api(port, "query", query='sum(ray_lakeloop_predictions_total{model="prom-check"})')["data"]["result"]
        assert value and float(value[0]["value"][1]) >= 25
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        ray.kill(recorder)
