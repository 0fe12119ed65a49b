"""Feature definitions the feature-store tests load by ``module:attr``."""

from __future__ import annotations

from lakeloop.features import Aggregation, Entity, Feature, FeatureView

user = Entity(name="user", join_keys=["user_id"])
pair = Entity(name="pair", join_keys=["user_id", "shop"])


def double_amount(df):
    df["amount2"] = df["amount"] * 2
    return df


user_rows = FeatureView(
    name="user_rows", entities=[user], source="raw.events", timestamp_field="event_time",
    transform=double_amount, features=[Feature(name="amount2"), Feature(name="amount")], ttl="1d",
    description="each event's amount", owner="tests",
)
user_windows = FeatureView(
    name="user_windows", entities=[user], source="raw.events", timestamp_field="event_time",
    features=[Aggregation(column="amount", function=f, window=w) for f, w in
              [("count", "1h"), ("sum", "1h"), ("mean", "1d"), ("min", "1d"), ("max", "2h")]],
    ttl="7d", owner="tests",
)
pair_windows = FeatureView(
    name="pair_windows", entities=[pair], source="raw.events", timestamp_field="event_time",
    features=[Aggregation(column="amount", function="sum", window="1h", name="pair_sum_1h")],
)

definitions = [user, pair, user_rows, user_windows, pair_windows]
