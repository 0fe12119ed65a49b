"""Small registered MLflow models for the serving tests (standard pyfunc, signature, input example)."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class Threshold(mlflow.pyfunc.PythonModel):
    """Flags amounts above a threshold; the threshold tells versions apart."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def predict(self, context, model_input, params=None):
        amount = model_input["amount"].astype(float)
        bonus = model_input["country"].isin(["BR", "NG"]).astype(float) * 50 if "country" in model_input else 0
        score = amount + bonus
        return pd.DataFrame({"prediction": (score > self.threshold).astype(int),
                             "probability": (score / (score + self.threshold)).round(6)})


def register(ll, name: str, threshold: float) -> int:
    """Log and register one version; returns its number."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(ll.config.tracking_uri)
    mlflow.set_registry_uri(ll.config.registry_uri)
    example = pd.DataFrame({"amount": [10.0, 300.0], "country": ["US", "BR"]})
    model = Threshold(threshold)
    signature = infer_signature(example, model.predict(None, example))
    with mlflow.start_run(experiment_id=ll.experiment_id()):
        info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature,
                                       input_example=example, registered_model_name=name,
                                       code_paths=[__file__],  # the class travels with the model
                                       metadata={"lakeloop": {"task": "classification", "classes": [0, 1]}})
    return int(info.registered_model_version)


class Unloadable(mlflow.pyfunc.PythonModel):
    """A version whose load fails (as one whose artifacts or dependencies are broken)."""

    def load_context(self, context):
        raise RuntimeError("this model's artifacts are broken")

    def predict(self, context, model_input, params=None):
        return model_input


def register_unloadable(ll, name: str) -> int:
    """Register a version of ``name`` that no process can load; returns its number."""
    import mlflow

    mlflow.set_tracking_uri(ll.config.tracking_uri)
    mlflow.set_registry_uri(ll.config.registry_uri)
    with mlflow.start_run(experiment_id=ll.experiment_id()):
        info = mlflow.pyfunc.log_model(name="model", python_model=Unloadable(), registered_model_name=name,
                                       code_paths=[__file__])
    return int(info.registered_model_version)
