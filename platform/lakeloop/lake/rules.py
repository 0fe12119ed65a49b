"""Row rules for ingest, from a small YAML file.

.. code-block:: yaml

    primary_key: txn_id              # optional; ingest then upserts by it
    columns:
      txn_id:   {type: string, required: true, not_null: true, unique: true}
      amount:   {type: float64, not_null: true, min: 0, max: 50000}
      currency: {type: string, allowed: [USD, EUR, GBP]}
      card:     {type: string, pattern: "^[0-9]{4}$"}

``type`` and ``required`` shape the table's schema when the table is new;
``not_null``, ``min``, ``max``, ``allowed``, ``pattern`` and ``unique`` are row
rules: a row that breaks one goes to ``quarantine.<table>`` with the rule's
name (``amount.min``) and a reason that quotes the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from lakeloop.errors import RulesError

if TYPE_CHECKING:
    import pandas as pd

ROW_RULES = ("not_null", "min", "max", "allowed", "pattern", "unique")
SCHEMA_KEYS = ("type", "required")


@dataclass(frozen=True)
class ColumnRules:
    name: str
    type: str | None = None
    required: bool = False
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple | None = None
    pattern: str | None = None
    unique: bool = False


@dataclass(frozen=True)
class Rules:
    columns: tuple[ColumnRules, ...] = ()
    primary_key: str | None = None
    source: str = "rules"
    extra: dict = field(default_factory=dict)

    @property
    def typed_columns(self) -> dict[str, dict]:
        return {c.name: {"type": c.type, "required": c.required} for c in self.columns if c.type}

    def check(self, df: "pd.DataFrame") -> "pd.DataFrame":
        """Failures as rows ``(row, rule, reason)``; ``row`` is the frame's positional index."""
        import numpy as np
        import pandas as pd

        failures: list[pd.DataFrame] = []

        def add(mask, rule: str, reasons):
            mask = np.asarray(mask, dtype=bool)
            if mask.any():
                idx = np.flatnonzero(mask)
                reasons = reasons if isinstance(reasons, str) else np.asarray(reasons, dtype=object)[idx]
                failures.append(pd.DataFrame({"row": idx, "rule": rule, "reason": reasons}))

        for c in self.columns:
            if c.name not in df.columns:
                if c.not_null:
                    add(np.ones(len(df), bool), f"{c.name}.not_null", f"{c.name} is missing (not_null)")
                continue
            col = df[c.name]
            isnull = col.isna().to_numpy()
            if c.not_null:
                add(isnull, f"{c.name}.not_null", f"{c.name} is null (not_null)")
            shown = col.astype(str)
            if c.min is not None or c.max is not None:
                num = pd.to_numeric(col, errors="coerce") if col.dtype == object else col
                if c.min is not None:
                    add(~isnull & (num < c.min).fillna(False).to_numpy(), f"{c.name}.min",
                        f"{c.name}=" + shown + f" is below min {c.min:g}")
                if c.max is not None:
                    add(~isnull & (num > c.max).fillna(False).to_numpy(), f"{c.name}.max",
                        f"{c.name}=" + shown + f" is above max {c.max:g}")
            if c.allowed is not None:
                allowed = set(c.allowed)
                bad = ~isnull & ~col.map(lambda v: v in allowed).to_numpy(dtype=bool)
                add(bad, f"{c.name}.allowed",
                    f"{c.name}=" + shown + f" is not one of {sorted(map(str, allowed))}")
            if c.pattern is not None:
                rx = re.compile(c.pattern)
                bad = ~isnull & ~shown.map(lambda v: rx.fullmatch(v) is not None).to_numpy(dtype=bool)
                add(bad, f"{c.name}.pattern", f"{c.name}=" + shown + f" does not match {c.pattern!r}")
            if c.unique:
                dup = (~isnull) & col.duplicated(keep="first").to_numpy()
                add(dup, f"{c.name}.unique", f"{c.name}=" + shown + " repeats an earlier row (unique)")
        if not failures:
            return pd.DataFrame({"row": pd.Series([], dtype="int64"), "rule": [], "reason": []})
        return pd.concat(failures, ignore_index=True)


def load_rules(rules: str | os.PathLike | Mapping | Rules | None) -> Rules:
    """Rules from a YAML path or a mapping; ``None`` gives no rules."""
    if rules is None:
        return Rules()
    if isinstance(rules, Rules):
        return rules
    source = "rules mapping"
    if not isinstance(rules, Mapping):
        import yaml

        path = Path(rules)
        source = str(path)
        try:
            rules = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise RulesError(f"rules file {path} does not exist") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RulesError(f"rules file {path} is not valid YAML: {exc}") from exc
        if not isinstance(rules, Mapping):
            raise RulesError(f"rules file {path} must hold a mapping with 'columns'")
    unknown = set(rules) - {"columns", "primary_key", "description"}
    if unknown:
        raise RulesError(f"unknown key(s) {sorted(unknown)} in {source}; expected columns, primary_key")
    cols = []
    for name, spec in (rules.get("columns") or {}).items():
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise RulesError(f"column {name!r} in {source} must map rule names to values, got {spec!r}")
        bad = set(spec) - set(ROW_RULES) - set(SCHEMA_KEYS)
        if bad:
            raise RulesError(
                f"unknown rule(s) {sorted(bad)} for column {name!r} in {source}; "
                f"known: {', '.join(SCHEMA_KEYS + ROW_RULES)}"
            )
        try:
            cols.append(ColumnRules(
                name=str(name),
                type=spec.get("type"),
                required=bool(spec.get("required", False)),
                not_null=bool(spec.get("not_null", False)),
                min=None if spec.get("min") is None else float(spec["min"]),
                max=None if spec.get("max") is None else float(spec["max"]),
                allowed=None if spec.get("allowed") is None else tuple(spec["allowed"]),
                pattern=spec.get("pattern"),
                unique=bool(spec.get("unique", False)),
            ))
        except (TypeError, ValueError) as exc:
            raise RulesError(f"column {name!r} in {source} has a bad rule value: {exc}") from exc
        if cols[-1].pattern is not None:
            try:
                re.compile(cols[-1].pattern)
            except re.error as exc:
                raise RulesError(f"column {name!r} in {source}: pattern is not a regex: {exc}") from exc
    pk = rules.get("primary_key")
    return Rules(tuple(cols), pk, source)
