"""Model families: a search space, warm-start defaults and a pipeline builder for each.

A trial's config is flat: ``{"family": "hgb", "hgb.learning_rate": 0.07, ...}``;
:func:`params_of` strips the prefix. The space is Optuna define-by-run, so a
trial only samples its own family's parameters (TPE learns per family).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lakeloop.errors import AutoMLError


@dataclass(frozen=True, kw_only=True)
class Family:
    """One kind of model: how to sample it, its defaults, and how to build it."""

    name: str
    description: str
    preprocessing: str  # "scaled" | "ordinal" | "native", see lakeloop.automl.preprocessing
    suggest: Callable[[Any, str], dict]  # (prefixed optuna trial, task) -> params
    defaults: Callable[[str], dict]  # task -> params
    make: Callable[[dict, str, int, int, int], Any]  # (params, task, seed, n_numeric, n_categorical) -> estimator
    by_epoch: bool = False

    def __repr__(self) -> str:
        return f"Family({self.name!r}: {self.description})"


class _Prefixed:
    """An Optuna trial whose parameter names get ``<family>.`` in front."""

    def __init__(self, trial, prefix: str):
        self._trial, self._prefix = trial, prefix

    def float(self, name, low, high, log=False):
        return self._trial.suggest_float(f"{self._prefix}.{name}", low, high, log=log)

    def int(self, name, low, high, log=False):
        return self._trial.suggest_int(f"{self._prefix}.{name}", low, high, log=log)

    def choice(self, name, options):
        return self._trial.suggest_categorical(f"{self._prefix}.{name}", options)


# -- linear / logistic ----------------------------------------------------------
def _linear_suggest(t, task):
    if task == "classification":
        return {"C": t.float("C", 1e-3, 1e2, log=True), "class_weight": t.choice("class_weight", [None, "balanced"])}
    return {"alpha": t.float("alpha", 1e-3, 1e3, log=True)}


def _linear_defaults(task):
    return {"C": 1.0, "class_weight": None} if task == "classification" else {"alpha": 1.0}


def _linear_make(p, task, seed, n_num, n_cat):
    if task == "classification":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=p["C"], class_weight=p["class_weight"], max_iter=2000, random_state=seed)
    from sklearn.linear_model import Ridge

    return Ridge(alpha=p["alpha"], random_state=seed)


# -- random forest / extra trees -----------------------------------------------
def _forest_suggest(t, task):
    return {
        "kind": t.choice("kind", ["random_forest", "extra_trees"]),
        "n_estimators": t.int("n_estimators", 50, 300, log=True),
        "max_depth": t.choice("max_depth", [None, 4, 8, 16]),
        "min_samples_leaf": t.int("min_samples_leaf", 1, 16, log=True),
        "max_features": t.float("max_features", 0.2, 1.0),
    }


def _forest_defaults(task):
    return {"kind": "random_forest", "n_estimators": 100, "max_depth": None, "min_samples_leaf": 1,
            "max_features": 0.5}


def _forest_make(p, task, seed, n_num, n_cat):
    from sklearn import ensemble

    name = ("RandomForest" if p["kind"] == "random_forest" else "ExtraTrees") + (
        "Classifier" if task == "classification" else "Regressor")
    return getattr(ensemble, name)(
        n_estimators=int(p["n_estimators"]), max_depth=p["max_depth"], min_samples_leaf=int(p["min_samples_leaf"]),
        max_features=float(p["max_features"]), n_jobs=1, random_state=seed,
    )


# -- histogram gradient boosting ---------------------------------------------------
def _hgb_suggest(t, task):
    return {
        "learning_rate": t.float("learning_rate", 0.01, 0.3, log=True),
        "max_iter": t.int("max_iter", 50, 500, log=True),
        "max_leaf_nodes": t.int("max_leaf_nodes", 8, 64, log=True),
        "min_samples_leaf": t.int("min_samples_leaf", 5, 60, log=True),
        "l2_regularization": t.float("l2_regularization", 1e-8, 1.0, log=True),
    }


def _hgb_defaults(task):
    return {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20,
            "l2_regularization": 1e-8}


def _hgb_make(p, task, seed, n_num, n_cat):
    from sklearn import ensemble

    cls = (ensemble.HistGradientBoostingClassifier if task == "classification"
           else ensemble.HistGradientBoostingRegressor)
    categorical = [False] * n_num + [True] * n_cat if n_cat else None
    return cls(learning_rate=p["learning_rate"], max_iter=int(p["max_iter"]), max_leaf_nodes=int(p["max_leaf_nodes"]),
               min_samples_leaf=int(p["min_samples_leaf"]), l2_regularization=p["l2_regularization"],
               categorical_features=categorical, random_state=seed)


# -- torch MLP -------------------------------------------------------------------
def _mlp_suggest(t, task):
    return {
        "hidden": t.int("hidden", 16, 256, log=True),
        "layers": t.int("layers", 1, 3),
        "dropout": t.float("dropout", 0.0, 0.3),
        "lr": t.float("lr", 1e-4, 3e-2, log=True),
        "weight_decay": t.float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": t.choice("batch_size", [32, 64, 128]),
    }


def _mlp_defaults(task):
    return {"hidden": 64, "layers": 2, "dropout": 0.1, "lr": 3e-3, "weight_decay": 1e-5, "batch_size": 64}


def _mlp_make(p, task, seed, n_num, n_cat):
    from lakeloop.automl.mlp import MLPModel

    return MLPModel(task=task, hidden=int(p["hidden"]), layers=int(p["layers"]), dropout=float(p["dropout"]),
                    lr=float(p["lr"]), weight_decay=float(p["weight_decay"]), batch_size=int(p["batch_size"]),
                    epochs=int(p.get("epochs", 20)), seed=seed)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(name="linear", description="logistic / ridge regression", preprocessing="scaled",
               suggest=_linear_suggest, defaults=_linear_defaults, make=_linear_make),
        Family(name="forest", description="random forest or extra trees", preprocessing="ordinal",
               suggest=_forest_suggest, defaults=_forest_defaults, make=_forest_make),
        Family(name="hgb", description="histogram gradient boosting", preprocessing="native",
               suggest=_hgb_suggest, defaults=_hgb_defaults, make=_hgb_make),
        Family(name="mlp", description="torch multi-layer perceptron, trained by epochs", preprocessing="scaled",
               suggest=_mlp_suggest, defaults=_mlp_defaults, make=_mlp_make, by_epoch=True),
    )
}


def resolve_families(names) -> tuple[str, ...]:
    names = tuple(FAMILIES) if names is None else tuple([names] if isinstance(names, str) else names)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise AutoMLError(f"unknown model famil{'ies' if len(unknown) > 1 else 'y'} {unknown or names!r}; "
                          f"choose among {', '.join(FAMILIES)}")
    return names


@dataclass(frozen=True, kw_only=True)
class Space:
    """The Optuna define-by-run space over ``families`` for ``task`` (a plain object: Tune pickles it)."""

    families: tuple[str, ...]
    task: str

    def __call__(self, trial):
        family = trial.suggest_categorical("family", list(self.families))
        FAMILIES[family].suggest(_Prefixed(trial, family), self.task)
        return None


def space(families: tuple[str, ...], task: str) -> Space:
    return Space(families=tuple(families), task=task)


def default_points(families: tuple[str, ...], task: str) -> list[dict]:
    """One config per family at its defaults: the search starts from known-good ground."""
    return [config_of(name, FAMILIES[name].defaults(task)) for name in families]


def warm_points(warm_start, families: tuple[str, ...], task: str) -> list[dict]:
    """Trial configs to try first: ``warm_start`` (``{"family": f, "params": {...}}`` each, e.g. the champion's
    configuration) before each family's defaults. Parameters outside a family's search space (such as a
    trained epoch count) are dropped; warm configs of families not searched are skipped."""
    points = []
    for item in warm_start or ():
        if not isinstance(item, dict) or "family" not in item:
            raise AutoMLError(f"a warm start is {{'family': name, 'params': {{...}}}}, not {item!r}")
        family = item["family"]
        if family not in families:
            continue
        defaults = FAMILIES[family].defaults(task)
        params = {**defaults, **{k: v for k, v in dict(item.get("params") or {}).items() if k in defaults}}
        points.append(config_of(family, params))
    for point in default_points(families, task):
        if point not in points:
            points.append(point)
    return points


def config_of(family: str, params: dict) -> dict:
    return {"family": family, **{f"{family}.{k}": v for k, v in params.items()}}


def params_of(config: dict) -> tuple[str, dict]:
    """(family, its params without prefix) from a flat trial config."""
    family = config["family"]
    prefix = family + "."
    return family, {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


def build(family: str, params: dict, *, task: str, seed: int, numeric: list[str], categorical: list[str]):
    """An unfitted pipeline (coerce -> preprocess -> model) for a family and its params."""
    from lakeloop.automl.preprocessing import pipeline

    fam = FAMILIES[family]
    model = fam.make(params, task, seed, len(numeric), len(categorical))
    return pipeline(model, fam.preprocessing, numeric, categorical)
