"""Feature definitions of the fraud demo: customers and merchants over raw.transactions.

Load them explicitly: ``lakeloop features apply lakeloop.demo.features:definitions`` (the
example project ``examples/fraud/features.py`` re-exports them).
"""

from __future__ import annotations

import numpy as np

from lakeloop.features import Aggregation, Entity, Feature, FeatureView

customer = Entity(name="customer", join_keys=["customer_id"], description="a card holder")
merchant = Entity(name="merchant", join_keys=["merchant_id"], description="a card acceptor")


def transaction_signals(df):
    """Row-level signals of one transaction (no other rows needed)."""
    df["log_amount"] = np.log1p(df["amount"].clip(lower=0))
    hour = df["event_time"].dt.hour
    df["is_night"] = ((hour < 5) | (hour > 22)).astype("float64")
    df["is_foreign"] = (~df["country"].isin(["US", "GB", "DE", "FR", "NL"])).astype("float64")
    return df


customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    source="raw.transactions",
    timestamp_field="event_time",
    transform=transaction_signals,
    features=[
        Feature(name="log_amount"),
        Feature(name="is_night"),
        Feature(name="is_foreign"),
        Aggregation(column="amount", function="count", window="1h"),
        Aggregation(column="amount", function="sum", window="1d"),
        Aggregation(column="amount", function="mean", window="7d"),
        Aggregation(column="amount", function="max", window="7d"),
    ],
    ttl="30d",
    description="spending pattern of a customer, as of each of their transactions",
    owner="risk-team",
    tags={"domain": "fraud"},
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    source="raw.transactions",
    timestamp_field="event_time",
    features=[
        Aggregation(column="amount", function="count", window="1d", name="merchant_txn_1d"),
        Aggregation(column="amount", function="mean", window="7d", name="merchant_mean_amount_7d"),
    ],
    ttl="30d",
    description="activity of a merchant",
    owner="risk-team",
)

definitions = [customer, merchant, customer_stats, merchant_stats]
