"""A model trained on feature views serves rows that carry only entity ids (online features joined)."""

from __future__ import annotations

import pytest

import lakeloop
from lakeloop.demo import scenario
from lakeloop.features import Aggregation, Entity, Feature, FeatureView
from lakeloop.serving.service import http_json

pytestmark = pytest.mark.slow

customer = Entity(name="customer", join_keys=["customer_id"])
spend = FeatureView(name="spend", entities=[customer], source="raw.transactions", timestamp_field="event_time",
                    features=[Feature(name="amount"), Aggregation(column="amount", function="sum", window="1d")])


@pytest.fixture(scope="module")
def served(serve_platform, tmp_path_factory):
    """`fraudfs`, trained on the `spend` view, deployed on the platform shared with test_serving.py (its own
    Serve start cost 76-100 s of a clean-clone `make test`); its online store serves `spend` from the
    materialization on, as it would for a view applied to a running platform."""
    ll, _versions, state = serve_platform
    assert not state["closed"], "the shared platform was stopped: its modules must run together (conftest)"
    csv = scenario.write_csv(scenario.generate(400, seed=11), tmp_path_factory.mktemp("fs") / "tx.csv")
    ll.lake.ingest(csv, "raw.transactions", rules=scenario.RULES_FILE)
    ll.features.apply([customer, spend])
    ll.features.materialize("spend")
    frame = ll.features.training_frame("raw.transactions", ["spend:*"], timestamp_column="event_time",
                                       known_time=False, full_feature_names=True)  # raw rows have "amount" too
    result = ll.automl.run(frame, target="is_fraud", features=frame.features, families=["linear"],
                           max_trials=1, seed=1, name="fraudfs", gate=False, progress=False)
    ll.serving.deploy("fraudfs", result.model_version)
    return ll


def test_entity_ids_are_enough_to_predict(served):
    ll = served
    someone = ll.lake.table("raw.transactions").to_pandas(columns=["customer_id"])["customer_id"].iloc[0]
    url = f"{ll.serving.url}/v1/models/fraudfs/predict"
    by_id = http_json("POST", url, {"rows": [{"customer_id": someone}]})
    values = ll.features.online_features("spend", [someone]).iloc[0]
    by_value = http_json("POST", url, {"rows": [{"spend__amount": values["amount"],
                                                 "spend__amount_sum_1d": values["amount_sum_1d"]}]})
    assert by_id["predictions"] == by_value["predictions"]
    # an unknown entity has no feature values: the 422 names the missing field
    with pytest.raises(lakeloop.LakeloopError) as err:
        http_json("POST", url, {"rows": [{"customer_id": "nobody"}]})
    assert err.value.http_status == 422 and "spend__amount" in str(err.value)
    with pytest.raises(lakeloop.LakeloopError) as err:
        http_json("POST", url, {"rows": [{"merchant_id": "m0001"}]})
    assert err.value.http_status == 422 and "unexpected field" in str(err.value)
