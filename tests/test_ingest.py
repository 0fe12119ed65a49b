"""Validation on ingest: schema errors write nothing; bad rows go to quarantine with reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lakeloop.demo import scenario
from lakeloop.errors import IngestFileError, RulesError, SchemaError

RULES = {
    "primary_key": "id",
    "columns": {
        "id": {"type": "string", "required": True, "not_null": True, "unique": True},
        "amount": {"type": "float64", "required": True, "not_null": True, "min": 0, "max": 100},
        "currency": {"type": "string", "allowed": ["USD", "EUR"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "when": {"type": "timestamp"},
        "qty": {"type": "int64"},
        "ok": {"type": "bool"},
    },
}
HEADER = "id,amount,currency,code,when,qty,ok\n"


def write(tmp_path: Path, text: str | bytes, name="in.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_bad_rows_are_quarantined_with_rule_and_batch_good_rows_land(ll, tmp_path):
    f = write(tmp_path, HEADER + "\n".join([
        "a,10,USD,AB,2026-01-01T00:00:00Z,1,true",
        "b,-5,USD,AB,2026-01-01T00:00:00Z,1,false",     # amount.min
        "c,500,EUR,AB,2026-01-01,2,yes",                # amount.max
        "d,1,JPY,AB,,3,no",                             # currency.allowed
        "e,abc,USD,AB,,4,1",                            # amount.type
        "a,2,USD,AB,,5,0",                              # id.unique (repeat of a)
        ",3,USD,AB,,6,true",                            # id.not_null
        "f,4,USD,abc,,7,true",                          # code.pattern
        "g,4,USD,AB,not a time,7.5,maybe",              # when/qty/ok .type
        "h,5,EUR,CD,2026-02-01T10:00:00+01:00,8,false",
    ]) + "\n")
    result = ll.lake.ingest(f, "raw.pay", rules=RULES)
    assert (result.accepted, result.quarantined) == (2, 8)
    assert result.mode == "upsert"
    landed = ll.lake.table("raw.pay").to_pandas().sort_values("id")
    assert landed["id"].tolist() == ["a", "h"]
    assert landed["amount"].tolist() == [10.0, 5.0]
    assert landed["when"].iloc[1] == pd.Timestamp("2026-02-01T09:00:00Z")
    assert landed["qty"].dtype == "int64" and landed["ok"].tolist() == [True, False]

    q = ll.lake.table("quarantine.pay").to_pandas().set_index("_row")
    assert set(q["_batch_id"]) == {result.batch_id}
    assert q.loc[2, "_rule"] == "amount.min" and "-5" in q.loc[2, "_reason"]
    assert q.loc[3, "_rule"] == "amount.max"
    assert q.loc[4, "_rule"] == "currency.allowed" and "JPY" in q.loc[4, "_reason"]
    assert q.loc[5, "_rule"] == "amount.type" and "'abc'" in q.loc[5, "_reason"]
    assert q.loc[6, "_rule"] == "id.unique"
    assert q.loc[7, "_rule"] == "id.not_null"
    assert q.loc[8, "_rule"] == "code.pattern"
    assert q.loc[9, "_rule"] == "ok.type, qty.type, when.type"
    assert q.loc[5, "amount"] == "abc", "the quarantined row keeps the value as received"


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty"),
        (b"id,amount\n", "no data rows"),
        (HEADER.encode() + b"a,10,USD,AB,,1,true\nb,11,US", "well-formed CSV"),
        (HEADER.encode() + "a,10,USD,AB,,1,true\nb,11,USD,\xe9\n".encode("latin-1"), "not UTF-8.*line 3"),
    ],
    ids=["empty", "header-only", "truncated", "latin-1"],
)
def test_unreadable_files_get_a_clear_error_and_write_nothing(ll, tmp_path, content, pattern):
    f = write(tmp_path, content)
    with pytest.raises(IngestFileError, match=pattern):
        ll.lake.ingest(f, "raw.pay", rules=RULES)
    assert ll.lake.tables() == []


def test_schema_problems_refuse_the_whole_file(ll, tmp_path):
    ll.lake.ingest(write(tmp_path, HEADER + "a,10,USD,AB,,1,true\n"), "raw.pay", rules=RULES)
    with pytest.raises(SchemaError, match="unexpected column.*'colour'"):
        ll.lake.ingest(write(tmp_path, "id,amount,colour\nb,1,red\n", "x.csv"), "raw.pay", rules=RULES)
    with pytest.raises(SchemaError, match="required column.*'amount'"):
        ll.lake.ingest(write(tmp_path, "id,currency\nb,USD\n", "y.csv"), "raw.pay", rules=RULES)
    pd.DataFrame({"id": ["b"], "amount": ["ten"]}).to_parquet(tmp_path / "z.parquet")
    with pytest.raises(SchemaError, match="'amount'.*float64"):
        ll.lake.ingest(tmp_path / "z.parquet", "raw.pay", rules=RULES)
    assert ll.lake.table("raw.pay").version() == 1
    assert not ll.lake.table("quarantine.pay").exists()


def test_upsert_by_key_on_reingest_updates_rows(ll, tmp_path):
    ll.lake.ingest(write(tmp_path, "id,amount\na,1\nb,2\n"), "raw.k", key="id")
    r = ll.lake.ingest(write(tmp_path, "id,amount\nb,20\nc,3\n", "2.csv"), "raw.k", key="id")
    assert r.mode == "upsert" and r.quarantined == 0
    df = ll.lake.table("raw.k").to_pandas().sort_values("id")
    assert df["amount"].tolist() == [1, 20, 3]
    assert ll.lake.table("raw.k").schema.primary_key == ("id",)


def test_schema_is_inferred_when_there_are_no_types(ll, tmp_path):
    ll.lake.ingest(write(tmp_path, "name,score,at\nx,1.5,2026-01-01T00:00:00Z\ny,,\n"), "raw.inf")
    schema = ll.lake.table("raw.inf").schema
    assert [c.type for c in schema.columns] == ["string", "float64", "timestamp"]


def test_parquet_and_jsonl_inputs(ll, tmp_path):
    pd.DataFrame({"id": ["p1", "p2"], "amount": [1.0, -1.0]}).to_parquet(tmp_path / "a.parquet")
    r = ll.lake.ingest(tmp_path / "a.parquet", "raw.pay", rules=RULES)
    assert (r.accepted, r.quarantined) == (1, 1)
    (tmp_path / "b.jsonl").write_text('{"id": "j1", "amount": 2.5}\n{"id": "j2", "amount": 3}\n')
    r = ll.lake.ingest(tmp_path / "b.jsonl", "raw.pay", rules=RULES)
    assert r.accepted == 2
    with pytest.raises(IngestFileError, match="unknown format"):
        ll.lake.ingest(write(tmp_path, "x", "a.xlsx"), "raw.pay")
    with pytest.raises(IngestFileError, match="does not exist"):
        ll.lake.ingest(tmp_path / "missing.csv", "raw.pay")


@pytest.mark.parametrize(
    "rules, pattern",
    [
        ({"columns": {"a": {"minimum": 1}}}, "unknown rule.*minimum"),
        ({"colums": {}}, "unknown key"),
        ({"columns": {"a": {"min": "low"}}}, "bad rule value"),
        ({"columns": {"a": {"pattern": "("}}}, "not a regex"),
    ],
)
def test_malformed_rules_are_named(ll, tmp_path, rules, pattern):
    with pytest.raises(RulesError, match=pattern):
        ll.lake.ingest(write(tmp_path, "a\n1\n"), "raw.r", rules=rules)


def test_rules_file_from_yaml(ll, tmp_path):
    rows = scenario.generate(300, seed=1)
    path = scenario.write_csv(rows, tmp_path / "tx.csv")
    r = ll.lake.ingest(path, "raw.transactions", rules=scenario.RULES_FILE)
    assert r.accepted + r.quarantined == 300
    assert r.quarantined == 6  # 2% of 300, one of each bad kind
    q = ll.lake.table("quarantine.transactions").to_pandas()
    assert set(q["_rule"]) == set(scenario.BAD_KINDS.values())
