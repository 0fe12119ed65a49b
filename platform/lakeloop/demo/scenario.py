"""Generate the demo's card transactions, with bad rows mixed in, deterministically from a seed.

Nothing is downloaded: the data is made here. Fraud is more likely for high
amounts at night, at a few risky merchants, and abroad. ``drift`` (0 to 1) shifts
the amount distribution and the country mix (covariate drift) and makes
foreign transactions far riskier than before (concept drift: a model trained
before it misses that fraud).
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

RULES_FILE = Path(__file__).with_name("transactions.rules.yaml")
COLUMNS = ["txn_id", "customer_id", "merchant_id", "amount", "currency", "country", "event_time", "is_fraud"]
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "BR", "NG"]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

# The kinds of bad row the demo shows, with the rule that catches each.
BAD_KINDS = {
    "negative_amount": "amount.min",
    "missing_customer": "customer_id.not_null",
    "unknown_currency": "currency.allowed",
    "unparseable_amount": "amount.type",
    "bad_timestamp": "event_time.type",
    "duplicate_txn": "txn_id.unique",
}


def generate(n: int, *, seed: int = 7, day: int = 0, first_id: int = 0, n_customers: int = 500,
             n_merchants: int = 60, drift: float = 0.0, bad_fraction: float = 0.02,
             start: datetime = START) -> list[dict]:
    """``n`` transactions on day ``day`` after ``start``, as text rows (as a CSV would hold them)."""
    rng = np.random.default_rng(seed + 1000 * day)
    customers = rng.integers(0, n_customers, n)
    merchants = rng.integers(0, n_merchants, n)
    amount = np.round(rng.lognormal(3.5 + drift, 1.0, n), 2)
    country_p = np.array([0.5, 0.15, 0.1, 0.1, 0.08, 0.04, 0.03])
    if drift:
        country_p = country_p * np.array([1 - drift / 2, 1, 1, 1, 1, 1 + 2 * drift, 1 + 3 * drift])
        country_p /= country_p.sum()
    country = rng.choice(COUNTRIES, n, p=country_p)
    seconds = np.sort(rng.integers(0, 86400, n))
    hour = seconds // 3600
    risky = merchants < 4
    logit = -5.0 + 0.9 * np.log1p(amount) / 2 + 1.5 * risky + 1.0 * ((hour < 5) | (hour > 22)) \
        + (1.2 + 3.5 * drift) * np.isin(country, ["BR", "NG"])
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    rows = []
    for i in range(n):
        t = start + timedelta(days=day, seconds=int(seconds[i]))
        rows.append({
            "txn_id": f"t{first_id + i:08d}",
            "customer_id": f"c{customers[i]:05d}",
            "merchant_id": f"m{merchants[i]:04d}",
            "amount": f"{amount[i]:.2f}",
            "currency": str(rng.choice(["USD", "EUR", "GBP"], p=[0.6, 0.25, 0.15])),
            "country": str(country[i]),
            "event_time": t.isoformat().replace("+00:00", "Z"),
            "is_fraud": "true" if fraud[i] else "false",
        })
    kinds = list(BAD_KINDS)
    n_bad = int(round(n * bad_fraction))
    for j, i in enumerate(rng.choice(n, n_bad, replace=False)):
        kind = kinds[j % len(kinds)]
        row = rows[i]
        if kind == "negative_amount":
            row["amount"] = f"-{row['amount']}"
        elif kind == "missing_customer":
            row["customer_id"] = ""
        elif kind == "unknown_currency":
            row["currency"] = "XXX"
        elif kind == "unparseable_amount":
            row["amount"] = row["amount"].replace(".", ",") + "x"
        elif kind == "bad_timestamp":
            row["event_time"] = "yesterday"
        elif kind == "duplicate_txn":
            row["txn_id"] = rows[(i + 1) % n]["txn_id"] if i + 1 < n else rows[i - 1]["txn_id"]
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path
