"""A window's served rows, parsed; rows the tests cannot use are set aside with the reason.

The inference log holds each row's features and output as JSON text, as the
serving layer wrote it. A row is *bad* when its features are not a JSON
object (malformed text, a list), when a value cannot be a float64 (an
integer like 10**400, ``Infinity``), when a numeric feature holds text that
is not a number or a nested value, when a numeric value is so far from the
reference that the tests' arithmetic would overflow, or when its output is
malformed (not JSON, not an object, a non-finite number, a probability
outside [0, 1]). A missing value (null or NaN in a feature) is not bad: the
tests count it as missing.

>>> parsed = parse(rows, numeric=["amount"])          # doctest: +SKIP
>>> parsed.features, parsed.outputs, parsed.bad      # doctest: +SKIP

Bad rows are counted per window (``bad_rows`` in ``monitoring.windows``) and
skipped; the window goes on with the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    import pandas as pd

INT64 = 2**63
TOO_FAR = 1e100  # standard deviations from the reference mean: beyond this the kernel arithmetic overflows
EXAMPLE_CHARS = 120


def shorten(value: Any, limit: int = EXAMPLE_CHARS) -> str:
    """A value as short text for an example: long integers say how many digits they have."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT64:
        digits = len(str(abs(value)))
        return f"{str(value)[:20]}...({digits} digits)"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def _number(value: Any) -> tuple[Any, str | None]:
    """The value as it may enter a frame, or why it cannot (for ints and floats; others pass unchanged)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value, None
    if isinstance(value, int):
        if -INT64 <= value < INT64:
            return value, None
        try:
            return float(value), None  # within float64's range: the frame gets a float
        except OverflowError:
            return None, "is an integer outside float64's range"
    if math.isinf(value):
        return None, "is infinite"
    return value, None


def _loads(text: Any) -> tuple[Any, str | None]:
    """JSON text back to a value; None and NaN (a missing cell) are None."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None, None
    try:
        return json.loads(text), None
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__})"


@dataclass
class Parsed:
    """The usable rows of a window (``keep``: their positions in it), and the bad ones."""

    keep: list[int] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    outputs: list[dict | None] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)

    def example(self) -> dict | None:
        return self.bad[0] if self.bad else None

    def reasons(self) -> dict[str, int]:
        """How many bad rows per reason (the reason without its value)."""
        out: dict[str, int] = {}
        for b in self.bad:
            out[b["why"]] = out.get(b["why"], 0) + 1
        return out


def _check_features(features: Any, numeric: Mapping[str, tuple[float, float]]) -> tuple[dict | None, tuple]:
    """Cleaned features, or ``(None, (column, value, why))``."""
    if not isinstance(features, dict):
        return None, ("features", features, f"are not a JSON object but {type(features).__name__}")
    clean = {}
    for name, value in features.items():
        value, why = _number(value)
        if why:
            return None, (name, features[name], why)
        if name in numeric and value is not None:
            if isinstance(value, (dict, list)):
                return None, (name, value, "is a nested value in a numeric feature")
            if isinstance(value, str):
                try:
                    as_float = float(value)
                except ValueError:
                    return None, (name, value, "is text in a numeric feature")
                if math.isinf(as_float):
                    return None, (name, value, "is infinite")
            elif not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value)):
                mean, std = numeric[name]
                if abs((float(value) - mean) / std) > TOO_FAR:
                    return None, (name, value, f"is more than {TOO_FAR:g} standard deviations from the reference")
        clean[name] = value
    return clean, ()


def _check_output(output: Any) -> tuple[dict | None, tuple]:
    if output is None:
        return None, ()
    if not isinstance(output, dict):
        return None, ("output", output, f"is not a JSON object but {type(output).__name__}")
    clean = {}
    for name, value in output.items():
        value, why = _number(value)
        if why:
            return None, (f"output.{name}", output[name], why)
        if isinstance(value, float) and math.isnan(value):
            return None, (f"output.{name}", value, "is NaN")
        if name == "probability" or name.startswith("proba_"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                return None, (f"output.{name}", value, "is not a probability in [0, 1]")
        clean[name] = value
    return clean, ()


def parse(rows: "pd.DataFrame", numeric: Mapping[str, tuple[float, float]] | Iterable[str] = ()) -> Parsed:
    """Parse the ``features`` and ``output`` JSON of logged rows; ``numeric``: the numeric features with their
    reference ``(mean, std)`` (or only their names)."""
    if not isinstance(numeric, Mapping):
        numeric = {name: (0.0, 1.0) for name in numeric}
    numeric = {k: (float(m), float(s) if s and math.isfinite(s) and s > 0 else 1.0) for k, (m, s) in numeric.items()}
    out = Parsed()
    ids = rows["request_id"].tolist() if "request_id" in rows.columns else [None] * len(rows)
    numbers = rows["row"].tolist() if "row" in rows.columns else [None] * len(rows)
    for i, (text, out_text) in enumerate(zip(rows["features"].tolist(), rows["output"].tolist())):
        features, why = _loads(text)
        problem = ("features", text, why) if why else ()
        if not problem:
            features, problem = _check_features(features if features is not None else {}, numeric)
        output = None
        if not problem:
            output, why = _loads(out_text)
            problem = ("output", out_text, why) if why else ()
        if not problem:
            output, problem = _check_output(output)
        if problem:
            column, value, why = problem
            row = numbers[i]
            out.bad.append({"request_id": ids[i], "row": None if row is None else int(row), "column": column,
                            "value": shorten(value), "why": why})
            continue
        out.keep.append(i)
        out.features.append(features)
        out.outputs.append(output)
    return out
