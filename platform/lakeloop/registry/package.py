"""Writing a fitted pipeline as a standard MLflow pyfunc model folder, and reading one back.

The folder carries a signature inferred from the raw training features and
an input example, pinned requirements (so MLflow never has to infer them by
loading the model in a subprocess), and the lakeloop code it needs pickled
by value (preprocessing, the MLP, the pyfunc class), so it loads without
lakeloop installed.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

BY_VALUE = ("lakeloop.automl.preprocessing", "lakeloop.automl.mlp", "lakeloop.registry.pyfunc")
REQUIREMENTS = ("mlflow", "cloudpickle", "scikit-learn", "pandas", "numpy", "scipy")


@contextlib.contextmanager
def _pickled_by_value():
    import cloudpickle

    modules = [importlib.import_module(m) for m in BY_VALUE]
    for m in modules:
        cloudpickle.register_pickle_by_value(m)
    try:
        yield
    finally:
        for m in modules:
            cloudpickle.unregister_pickle_by_value(m)


@contextlib.contextmanager
def quiet():
    """MLflow without its artifact progress bars, info logs and advice warnings (restored after)."""
    import logging
    import os

    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def requirements(with_torch: bool) -> list[str]:
    from importlib import metadata

    names = [*REQUIREMENTS, "torch"] if with_torch else list(REQUIREMENTS)
    out = []
    for n in names:
        try:
            out.append(f"{n}=={metadata.version(n)}")
        except metadata.PackageNotFoundError:
            out.append(n)
    return out


def save(path: str | Path, *, pipeline: Any, task: str, features: list[str], data: "pd.DataFrame",
         metadata: dict) -> Path:
    """Write ``pipeline`` as a pyfunc model at ``path`` (which must not exist).

    ``data`` is raw training features: the signature is inferred from all of it
    (so columns with missing values are marked optional), the input example is
    its first rows.
    """
    import cloudpickle
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from lakeloop.registry import pyfunc

    path = Path(path)
    with_torch = type(pipeline[-1]).__name__ == "MLPModel" if hasattr(pipeline, "__getitem__") else False
    example = data.head(5)
    answer = pyfunc.outputs(pipeline, task, data.head(50))
    with tempfile.TemporaryDirectory() as tmp, _pickled_by_value(), quiet():
        bundle = Path(tmp, "pipeline.pkl")
        with open(bundle, "wb") as f:
            cloudpickle.dump({"pipeline": pipeline, "task": task, "features": list(features)}, f)
        signature = infer_signature(data, answer)
        mlflow.pyfunc.save_model(
            str(path), python_model=pyfunc.LakeloopModel(), artifacts={"pipeline": str(bundle)},
            signature=signature, input_example=example.head(5), pip_requirements=requirements(with_torch),
            metadata={"lakeloop": metadata},
        )
    return path


def load(path: str | Path):
    """The pyfunc model in a local folder."""
    import mlflow.pyfunc

    with quiet():
        return mlflow.pyfunc.load_model(str(path))


def input_schema(model) -> dict[str, dict]:
    """``{column: {"type": ..., "required": ...}}`` of a loaded pyfunc's input signature."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return {}
    out = {}
    for spec in schema.inputs:
        out[spec.name] = {"type": str(getattr(spec.type, "name", spec.type)), "required": bool(spec.required)}
    return out
