"""What serving is compared with: the training rows of the served version, found through its lineage.

``reference_for(ll, "fraud", 3)`` re-creates the version's training frame from
its recorded lineage (the lake table at its Delta version, or the feature
store's ``rebuild_frame`` when feature views were joined), splits off the
holdout the same way the training did, and returns the raw feature columns of
the rows it learned from. A version trained on an in-memory frame has no
lineage to rebuild from; it falls back to its registered holdout rows (drawn
from the same data), unless ``source="training"`` insists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeloop.errors import LakeloopError, ModelNotFoundError, ReferenceNotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

SOURCES = ("auto", "training", "holdout")


def reference_for(ll: "Lakeloop", model: str, version: int | str, *, source: str = "auto") -> "pd.DataFrame":
    """Raw feature rows the version was trained on (``training``), or its holdout rows (``holdout``).

    ``auto`` tries the training rows through the lineage first, then the holdout.
    """
    if source not in SOURCES:
        raise ReferenceNotFoundError(f"reference source {source!r} is not one of {', '.join(SOURCES)}")
    from lakeloop.automl import training

    try:
        spec = ll.models.spec(model, version)
    except ModelNotFoundError as exc:
        raise ReferenceNotFoundError(f"no reference for model {model!r} version {version}: {exc.message}. Pass the "
                                     "reference rows to the monitor instead (reference=DataFrame)") from exc
    why = []
    if source in ("auto", "training"):
        try:
            frame = (ll.models.lineage(model, version).get("lineage") or {}).get("frame")
            if not frame:
                raise ReferenceNotFoundError("it has no recorded lineage")
            from lakeloop.registry.rebuild import frame_from_lineage

            data = frame_from_lineage(ll, frame)
            prepared = training.prepare(data, spec)
            return training.raw_features(prepared.train, spec).reset_index(drop=True)
        except LakeloopError as exc:
            why.append(f"training rows: {exc.message}")
            if source == "training":
                raise ReferenceNotFoundError(f"cannot re-create the training rows of model {model!r} version "
                                             f"{version}: {exc.message}") from exc
    try:
        holdout = ll.models.holdout(model, version)
    except Exception as exc:  # the artifact store answers with its own errors
        why.append(f"holdout rows: {exc}")
        raise ReferenceNotFoundError(f"no reference for model {model!r} version {version}: "
                                     f"{'; '.join(why)}") from exc
    return training.raw_features(holdout, spec).reset_index(drop=True)


def predictions_for(ll: "Lakeloop", model: str, version: int | str, reference: "pd.DataFrame") -> "pd.DataFrame":
    """The version's outputs on the reference rows (what its served outputs are compared with)."""
    import pandas as pd

    pyfunc = ll.models.load(model, version)
    out = pyfunc.predict(reference)
    if isinstance(out, pd.Series):
        out = out.to_frame("prediction")
    elif not isinstance(out, pd.DataFrame):
        out = pd.DataFrame({"prediction": list(out)})
    return out.reset_index(drop=True)


def labelled_reference(ll: "Lakeloop", model: str, version: int | str) -> "pd.DataFrame":
    """What the label-free estimators learn from: the version's holdout rows (raw features), its outputs on them
    (columns ``output.<name>``) and their true labels (``label.value``).

    The holdout, not the training rows: a model is over-confident on rows it
    learned from, and calibrating on them would overstate its accuracy.
    """
    import pandas as pd

    from lakeloop.automl import training

    try:
        spec = ll.models.spec(model, version)
    except ModelNotFoundError as exc:
        raise ReferenceNotFoundError(f"no labelled reference for model {model!r} version {version}: "
                                     f"{exc.message}") from exc
    holdout = ll.models.holdout(model, version).reset_index(drop=True)
    if spec.target not in holdout.columns:
        raise ReferenceNotFoundError(f"the holdout of model {model!r} version {version} has no target column "
                                     f"{spec.target!r}")
    features = training.raw_features(holdout, spec).reset_index(drop=True)
    outputs = predictions_for(ll, model, version, features)
    return pd.concat([features, outputs.add_prefix("output."),
                      pd.DataFrame({"label.value": holdout[spec.target].to_numpy()})], axis=1)


def output_frame(outputs: "list[dict | None]") -> "pd.DataFrame":
    """Served outputs (the parsed ``output`` JSON of each row) as a frame, columns as the model answers."""
    import pandas as pd

    return pd.DataFrame([o if isinstance(o, dict) else {} for o in outputs])
