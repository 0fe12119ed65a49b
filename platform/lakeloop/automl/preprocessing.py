"""Preprocessing that lives inside the model pipeline, so serving receives raw features.

``FrameCoercer`` takes a raw DataFrame as callers send it (extra columns,
any column order, numbers as strings, missing values, unseen categories)
and hands the right columns with the right dtypes to a ``ColumnTransformer``
that imputes, scales and encodes per model family.

This module is pickled by value into logged models (see
:mod:`lakeloop.registry.pyfunc`): it imports nothing from lakeloop, so a
logged model loads where lakeloop is not installed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

MISSING = "__missing__"


class FrameCoercer(TransformerMixin, BaseEstimator):
    """Select the feature columns and give them the dtypes the pipeline was fitted on.

    Numeric columns become float64 (unparseable values become NaN); categorical
    columns become Python strings with ``None`` for missing. A missing column is
    a ``KeyError`` that names it.
    """

    def __init__(self, numeric=(), categorical=()):
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        if not isinstance(X, pd.DataFrame):
            X = pd.DataFrame(X)
        missing = [c for c in (*self.numeric, *self.categorical) if c not in X.columns]
        if missing:
            raise KeyError(f"input is missing feature column(s) {missing}; the model needs "
                           f"{list(self.numeric) + list(self.categorical)}")
        out = {}
        for c in self.numeric:
            out[c] = pd.to_numeric(X[c], errors="coerce").astype("float64").to_numpy()
        for c in self.categorical:
            col = X[c].astype(object)
            out[c] = col.where(col.notna(), None).map(lambda v: None if v is None else str(v)).to_numpy()
        return pd.DataFrame(out, index=X.index, columns=[*self.numeric, *self.categorical])

    def get_feature_names_out(self, input_features=None):
        return np.asarray([*self.numeric, *self.categorical], dtype=object)


def preprocessor(style: str, numeric: list[str], categorical: list[str]):
    """A ``ColumnTransformer`` for a family's needs.

    ``scaled`` (linear, MLP): median impute with missing indicators, standard
    scaling, one-hot categories (rare and unseen ones grouped). ``ordinal``
    (forests): median impute, ordinal categories (unseen -> -1). ``native``
    (histogram boosting): numbers as they are (NaN is handled by the model),
    ordinal categories with NaN for unseen; the model is told which columns
    are categorical.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    cat_impute = SimpleImputer(strategy="constant", fill_value=MISSING, missing_values=None)
    if style == "scaled":
        num = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                            StandardScaler())
        cat = make_pipeline(cat_impute, OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=32,
                                                      sparse_output=False))
    elif style == "ordinal":
        num = SimpleImputer(strategy="median", keep_empty_features=True)
        cat = make_pipeline(cat_impute, OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                       max_categories=64))
    elif style == "native":
        num = "passthrough"
        cat = make_pipeline(cat_impute, OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                                       max_categories=250))
    else:
        raise ValueError(f"unknown preprocessing style {style!r}")
    parts = []
    if numeric:
        parts.append(("num", num, list(numeric)))
    if categorical:
        parts.append(("cat", cat, list(categorical)))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def pipeline(model, style: str, numeric: list[str], categorical: list[str]):
    """coerce -> preprocess -> model, as one scikit-learn ``Pipeline``."""
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("coerce", FrameCoercer(numeric=tuple(numeric), categorical=tuple(categorical))),
        ("prep", preprocessor(style, numeric, categorical)),
        ("model", model),
    ])
