"""A shared catalog: definitions applied in one process load in any other, checked against source and code."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest

import lakeloop
from conftest import REPO, clean_env, run_cli
from lakeloop.errors import DefinitionError
from lakeloop.features import Aggregation, Entity, Feature, FeatureView

EVENTS = {"user_id": "string", "kind": "string", "amount": "float64", "n": "int64", "event_time": "timestamp"}
T0 = pd.Timestamp("2026-03-01", tz="UTC")
user = Entity(name="user", join_keys=["user_id"])

PROJECT = '''
from lakeloop.features import Aggregation, Entity, Feature, FeatureView

user = Entity(name="user", join_keys=["user_id"], description="a user")


def scaled(df):
    df["amount_x"] = df["amount"] * FACTOR
    return df


rows = FeatureView(name="sc_rows", entities=[user], source="raw.events", timestamp_field="event_time",
                   transform=scaled, features=[Feature(name="amount_x"), Feature(name="kind")], ttl="7d")
windows = FeatureView(name="sc_windows", entities=[user], source="raw.events", timestamp_field="event_time",
                      features=[Aggregation(column="amount", function="sum", window="1h"),
                                Aggregation(column="n", function="count", window="1d")], ttl="7d")
definitions = [user, rows, windows]
'''


def events(n: int, *, seed: int, start=T0, users: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": [f"u{i}" for i in rng.integers(0, users, n)],
        "kind": rng.choice(["a b", "c"], n),
        "amount": np.round(rng.gamma(2.0, 10.0, n), 2),
        "n": rng.integers(0, 5, n),
        "event_time": start + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600, n)), unit="s"),
    })


def write_project(folder, factor: str = "10"):
    """A user's module in ``folder`` with a unique name (so no process has it imported by chance)."""
    name = f"sc_project_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(PROJECT.replace("FACTOR", factor))
    return name


def load_project(folder, name: str):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def fresh_python(script: str, env: dict, cwd) -> dict:
    """Run ``script`` in a new interpreter (nothing of this process in it); its last stdout line as JSON."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_apply_in_one_process_then_materialize_train_and_rebuild_in_fresh_ones(ll, ray_session, tmp_path):
    name = write_project(tmp_path)
    project = load_project(tmp_path, name)
    ll.lake.create("raw.events", EVENTS).append(events(300, seed=1))
    labels = ll.lake.create("raw.labels", {"user_id": "string", "event_timestamp": "timestamp", "y": "int64"})
    labels.append(pd.DataFrame({"user_id": [f"u{i}" for i in range(8)], "y": [i % 2 for i in range(8)],
                                "event_timestamp": [T0 + pd.Timedelta(minutes=50 * i) for i in range(8)]}))
    ll.features.apply(project.definitions)  # objects, as a notebook does: no module:attr is recorded
    assert ll.features.catalog.latest("sc_rows")["definitions_ref"] is None
    env = clean_env()
    env.update(LAKELOOP_LAKE_ROOT=ll.lake.root, RAY_AUTH_MODE="token",
               LAKELOOP_RAY_ADDRESS=ray_session.get_runtime_context().gcs_address,
               PYTHONPATH=str(tmp_path))  # the transform's module is deployed (importable); nobody imports it

    # the job entrypoint on Ray Data (its workers get the transform imported here by reference) ...
    job = subprocess.run([sys.executable, str(REPO / "jobs" / "materialize.py"), "sc_rows"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    ran = json.loads(job.stdout.strip().splitlines()[-1])
    assert ran["mode"] == "full" and ran["rows_written"] == 300 and ran["view_version"] == 1
    # ... and the CLI (in-process engine: the point here is the definition, not Ray again)
    cli = json.loads(run_cli("features", "materialize", "sc_windows", "--engine", "local", "--json",
                             cwd=tmp_path, env=env).stdout)
    assert cli["mode"] == "full" and cli["rows_written"] == 300
    stored = ll.lake.table("features.sc_rows").to_pandas()
    assert stored["kind"].isin(["a b", "c"]).all()  # a string column, typed from the source
    src = ll.lake.table("raw.events").to_pandas()
    np.testing.assert_allclose(np.sort(stored["amount_x"].to_numpy()), np.sort(src["amount"].to_numpy()) * 10)

    refs = ["sc_rows:*", "sc_windows:*"]
    trained = fresh_python(f"""
        import json, sys
        import lakeloop
        ll = lakeloop.connect()
        frame = ll.features.training_frame("raw.labels", {refs!r}, known_time=False)
        frame.data.to_parquet({str(tmp_path / "trained.parquet")!r})
        print(json.dumps({{"lineage": frame.lineage, "imported": {name!r} in sys.modules}}, default=str))
    """, env, tmp_path)
    assert not trained["imported"]
    lineage = trained["lineage"]
    assert lineage["views"]["sc_windows"]["view_version"] == 1

    # later: the definition changes (ttl 1m) and the view is materialized again from more data
    ll.features.apply([dataclasses.replace(project.windows, ttl="1m")])
    ll.lake.table("raw.events").append(events(50, seed=2, start=T0 + pd.Timedelta(hours=7)))
    assert ll.features.materialize("sc_windows", engine="local", refresh_online=False).view_version == 2
    now = ll.features.training_frame("raw.labels", refs, known_time=False).data
    assert now["amount_sum_1h"].isna().sum() > pd.read_parquet(tmp_path / "trained.parquet")[
        "amount_sum_1h"].isna().sum()  # the new ttl nulls what the old one kept

    lineage_file = tmp_path / "lineage.json"
    lineage_file.write_text(json.dumps({"frame": lineage}))
    rebuilt = fresh_python(f"""
        import json, sys
        import lakeloop
        from lakeloop.registry.rebuild import frame_from_lineage
        ll = lakeloop.connect()
        frame = json.load(open({str(lineage_file)!r}))["frame"]  # as a model version records it
        frame_from_lineage(ll, frame).to_parquet({str(tmp_path / "rebuilt.parquet")!r})
        print(json.dumps({{"imported": {name!r} in sys.modules}}))
    """, env, tmp_path)
    assert not rebuilt["imported"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rebuilt.parquet"),
                                  pd.read_parquet(tmp_path / "trained.parquet"))


def test_a_feature_takes_its_column_type_and_a_mismatch_fails_at_plan_naming_the_column(ll):
    events_table = ll.lake.create("raw.events", EVENTS)
    events_table.append(events(40, seed=3))

    def view(*features, name="typed", source="raw.events"):
        return FeatureView(name=name, entities=[user], source=source, timestamp_field="event_time",
                           features=list(features))

    kind = view(Feature(name="kind"), Feature(name="n"), Feature(name="amount", dtype="float32"))
    assert ll.features.plan([kind])[0]["action"] == "create"
    ll.features.apply([kind])
    ll.features.materialize("typed", engine="local", refresh_online=False)
    table = ll.lake.table("features.typed")
    assert {c.name: c.type for c in table.schema.columns if c.name in ("kind", "n", "amount")} == {
        "kind": "string", "n": "int64", "amount": "float32"}
    assert set(table.to_pandas()["kind"]) == {"a b", "c"}
    assert ll.features.describe("typed")["features"][0]["dtype"] == "string"

    bad = [
        (view(Feature(name="kind", dtype="float64")), r"feature view 'typed': feature 'kind' is declared float64, "
                                                      r"which cannot hold column 'kind' of raw.events \(string"),
        (view(Feature(name="n", dtype="int32")), r"feature 'n' is declared int32, which cannot hold column 'n'"),
        (view(Aggregation(column="kind", function="sum", window="1h")),
         r"aggregation 'kind_sum_1h' \(sum of 'kind'\) needs a numeric column, but column 'kind' of raw.events "
         r"is string"),
        (view(Feature(name="knd")), r"feature 'knd' reads column 'knd', which its source raw.events does not have"),
    ]
    for definition, message in bad:
        with pytest.raises(DefinitionError, match=message):
            ll.features.plan([definition])
        with pytest.raises(DefinitionError, match=message):
            ll.features.apply([definition])
    assert ll.features.view("typed").features[0] == Feature(name="kind")  # nothing bad was applied

    # applied before its source existed: the same error, at materialize, before anything is computed
    ll.features.apply([view(Feature(name="kind", dtype="int64"), name="early", source="raw.later")])
    ll.lake.create("raw.later", EVENTS).append(events(10, seed=4))
    with pytest.raises(DefinitionError, match="feature 'kind' is declared int64, which cannot hold column 'kind'"):
        ll.features.materialize("early", engine="local", refresh_online=False)
    assert not ll.lake.table("features.early").exists()


def test_a_transform_is_kept_by_reference_and_other_code_is_refused(ll, tmp_path, monkeypatch):
    ll.lake.create("raw.events", EVENTS).append(events(30, seed=5))
    catalog = ll.features.catalog
    assert catalog.revision() == -1 and catalog.view_hashes() == {}
    name = write_project(tmp_path, factor="10")
    project = load_project(tmp_path, name)
    ll.features.apply(project.definitions)
    revision = catalog.revision()
    assert catalog.view_hashes()["sc_rows"] == {"version": 1, "definition_hash": project.rows.definition_hash}
    ll.features.apply(project.definitions)  # unchanged: the revision stays
    assert catalog.revision() == revision
    row = catalog.latest("sc_rows")
    assert json.loads(row["spec"])["transform"]["ref"] == f"{name}:scaled"

    # another process runs other code under the same name: refused, naming the view, the reference, what to do
    (tmp_path / f"{name}.py").write_text(PROJECT.replace("FACTOR", "1000"))
    monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    elsewhere = lakeloop.connect(lake_root=ll.lake.root).features
    assert elsewhere.view("sc_windows") == project.windows  # the same object again, descriptions included
    assert elsewhere.view("sc_rows").feature_names == ["amount_x", "kind"]  # the data loads without the code
    with pytest.raises(DefinitionError, match=rf"feature view 'sc_rows' was applied with transform {name}:scaled "
                                              r"at code hash \w+, but the code importable on this node hashes to \w+"
                                              r".*Deploy the applied version.*or re-apply"):
        elsewhere.materialize("sc_rows", engine="local", refresh_online=False)
    # a node without the module at all
    (tmp_path / f"{name}.py").unlink()
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    with pytest.raises(DefinitionError, match=rf"feature view 'sc_rows' transforms its rows with {name}:scaled, "
                                              r"which cannot be loaded on this node.*Deploy that module here"):
        lakeloop.connect(lake_root=ll.lake.root).features.materialize("sc_rows", engine="local",
                                                                     refresh_online=False)
    assert not ll.lake.table("features.sc_rows").exists()
    # windows (no transform) still materialize there
    assert elsewhere.materialize("sc_windows", engine="local", refresh_online=False).mode == "full"

    # deploying the new code and re-applying makes it version 2, which then runs anywhere
    (tmp_path / f"{name}.py").write_text(PROJECT.replace("FACTOR", "1000"))
    importlib.invalidate_caches()
    ll.features.apply(importlib.import_module(name).definitions)
    assert catalog.latest("sc_rows")["version"] == 2
    fresh = lakeloop.connect(lake_root=ll.lake.root).features
    assert fresh.materialize("sc_rows", engine="local", refresh_online=False).view_version == 2
    out = ll.lake.table("features.sc_rows").to_pandas()
    np.testing.assert_allclose(np.sort(out["amount_x"].to_numpy()),
                               np.sort(ll.lake.table("raw.events").to_pandas()["amount"].to_numpy()) * 1000)


def test_a_transform_no_other_process_can_import_is_refused_at_apply(ll):
    ll.lake.create("raw.events", EVENTS)

    def closure(df):
        return df

    def in_main(df):
        return df

    in_main.__module__, in_main.__qualname__ = "__main__", "in_main"
    cases = [(lambda df: df, "is a lambda, which no other process can import"),
             (closure, "is defined inside another function"),
             (in_main, r"is defined in __main__ \(a notebook or a script\)")]
    for fn, message in cases:
        view = FeatureView(name="xf", entities=[user], source="raw.events", timestamp_field="event_time",
                           transform=fn, features=[Feature(name="amount")])
        for step in (ll.features.plan, ll.features.apply):
            with pytest.raises(DefinitionError, match=rf"feature view 'xf': its transform .*{message}.*top-level"):
                step([view])
    assert ll.features.catalog.revision() == -1  # nothing was written


def test_applies_racing_each_other_never_record_one_version_twice(ll, lake_root, monkeypatch):
    """Two processes plan version 2 of one view at the same moment (a barrier after their plans): one records it,
    the other sees that and records version 3; an identical definition racing the same way is recorded once."""
    import threading

    from lakeloop.features.catalog import Catalog

    ll.lake.create("raw.events", EVENTS)

    def view(window: str, description: str = "", name: str = "raced"):
        return FeatureView(name=name, entities=[user], source="raw.events", timestamp_field="event_time",
                           features=[Aggregation(column="amount", function="sum", window=window)],
                           description=description)

    ll.features.apply([view("1h")])
    plan_once, barrier = Catalog.plan, threading.Barrier(2, timeout=60)
    racers: set[int] = set()  # threads whose first plan has yet to wait for the other's

    def plan_then_wait(self, definitions):
        out = plan_once(self, definitions)
        if threading.get_ident() in racers:
            racers.discard(threading.get_ident())
            barrier.wait()
        return out

    monkeypatch.setattr(Catalog, "plan", plan_then_wait)

    def race(*views) -> list[list[dict]]:  # each a view, or a list of views applied together
        barrier.reset()
        results: list = [None] * len(views)

        def apply(i):
            racers.add(threading.get_ident())
            try:
                together = views[i] if isinstance(views[i], list) else [views[i]]
                results[i] = lakeloop.connect(lake_root=str(lake_root)).features.apply(together)
            except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
                results[i] = exc

        threads = [threading.Thread(target=apply, args=(i,)) for i in range(len(views))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(isinstance(r, list) for r in results), results
        return results

    def recorded(name: str = "raced") -> list[tuple[int, str]]:
        rows = ll.lake.table("catalog.feature_views").to_pandas()
        rows = rows[rows["name"] == name]
        return sorted(zip(rows["version"], rows["definition_hash"]))

    two_hours, one_day = view("2h"), view("1d")
    first, second = race(two_hours, one_day)
    assert {first[0]["to_version"], second[0]["to_version"]} == {2, 3}, (first, second)
    assert {(p[0]["to_version"], p[0]["definition_hash"]) for p in (first, second)} == set(recorded()[1:])
    assert [v for v, _ in recorded()] == [1, 2, 3]
    assert lakeloop.connect(lake_root=str(lake_root)).features.plan([two_hours, one_day])[0]["action"] != "create"

    same = view("3h")
    a, b = race(same, same)
    assert sorted(p[0]["action"] for p in (a, b)) == ["new_version", "unchanged"], (a, b)
    assert [v for v, _ in recorded()] == [1, 2, 3, 4] and recorded()[-1][1] == same.definition_hash

    # a description changed while another apply records a new version: the description is either recorded on
    # version 4 before version 5 exists, or (planned again) becomes version 6; never a row over version 5
    described, three_days = view("3h", description="the latest, described"), view("3d")
    c, d = race(described, three_days)
    hashes: dict[int, set[str]] = {}
    for version, digest in recorded():
        hashes.setdefault(version, set()).add(digest)
    assert all(len(h) == 1 for h in hashes.values()), recorded()
    expected = {"update": 5, "new_version": 6}[c[0]["action"]]
    assert (max(hashes), d[0]["to_version"]) == (expected, 5), (c, d, recorded())
    latest = lakeloop.connect(lake_root=str(lake_root)).features.describe("raced")
    assert latest["version"] == expected and latest["description"] == \
        ("the latest, described" if expected == 6 else "")

    # two views applied together, one of them raced: the other is recorded once, the raced one planned again
    four_hours, companion, five_hours = view("4h"), view("1h", name="raced_too"), view("5h")
    e, f = race([four_hours, companion], five_hours)
    assert [step["view"] for step in e] == ["raced", "raced_too"] and e[1]["action"] == "create", e
    assert {e[0]["to_version"], f[0]["to_version"]} == {expected + 1, expected + 2}, (e, f)
    assert [v for v, _ in recorded("raced_too")] == [1]
    assert [v for v, _ in recorded()][-2:] == [expected + 1, expected + 2]
