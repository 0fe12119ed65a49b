"""The one MLflow pyfunc flavour every lakeloop model is logged as.

It wraps a fitted scikit-learn ``Pipeline`` (whose last step may be the torch
MLP) pickled with cloudpickle, and answers raw feature rows with a DataFrame:
``prediction`` always; for classifiers ``probability`` (the positive class's
for binary targets, the predicted class's otherwise) and, for more than two
classes, one ``proba_<class>`` column per class. ``mlflow models serve``
returns that as JSON records.

This module is pickled by value into the model (with the preprocessing and
MLP modules), so it imports nothing from lakeloop: ``mlflow.pyfunc.load_model``
works where lakeloop is not installed.
"""

import mlflow.pyfunc
import numpy as np
import pandas as pd


def outputs(pipeline, task: str, model_input) -> pd.DataFrame:
    """The pyfunc answer of ``pipeline`` for ``model_input`` (raw rows)."""
    X = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if task == "regression":
        return pd.DataFrame({"prediction": np.asarray(pipeline.predict(X), dtype=np.float64)})
    proba = np.asarray(pipeline.predict_proba(X), dtype=np.float64)
    classes = np.asarray(pipeline.classes_)
    pred = classes[np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1)]
    out = {"prediction": pred}
    if len(classes) == 2:
        out["probability"] = proba[:, 1]
    else:
        out["probability"] = proba.max(axis=1)
        for i, c in enumerate(classes):
            out[f"proba_{c}"] = proba[:, i]
    return pd.DataFrame(out)


def split_outputs(answer: pd.DataFrame, task: str, classes) -> tuple:
    """(predictions, class probabilities) back from a pyfunc answer, for scoring."""
    pred = answer["prediction"].to_numpy()
    if task == "regression":
        return pred.astype(np.float64), None
    if len(classes) == 2:
        p = answer["probability"].to_numpy(dtype=np.float64)
        return pred, np.column_stack([1.0 - p, p])
    return pred, np.column_stack([answer[f"proba_{c}"].to_numpy(dtype=np.float64) for c in classes])


class LakeloopModel(mlflow.pyfunc.PythonModel):
    """Loads the pickled pipeline from the ``pipeline`` artifact and answers with :func:`outputs`."""

    def load_context(self, context):
        import cloudpickle

        with open(context.artifacts["pipeline"], "rb") as f:
            bundle = cloudpickle.load(f)
        self.pipeline = bundle["pipeline"]
        self.task = bundle["task"]
        self.features = list(bundle["features"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return outputs(self.pipeline, self.task, model_input)
