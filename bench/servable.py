"""The benchmark's model: a scikit-learn HistGradientBoosting pipeline as an MLflow pyfunc."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class HGBModel(mlflow.pyfunc.PythonModel):
    def __init__(self, pipeline):
        self.pipeline = pipeline

    @classmethod
    def fit(cls, X: pd.DataFrame, y) -> "HGBModel":
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OrdinalEncoder

        pre = ColumnTransformer([("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                                  ["country"])], remainder="passthrough")
        pipe = Pipeline([("pre", pre), ("model", HistGradientBoostingClassifier(max_iter=100, random_state=0))])
        return cls(pipe.fit(X, y))

    def predict(self, context, model_input, params=None):
        proba = self.pipeline.predict_proba(model_input)[:, 1]
        return pd.DataFrame({"prediction": (proba > 0.5).astype(int), "probability": proba})
