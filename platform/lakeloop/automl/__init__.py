"""AutoML on Ray Tune: model families, trials tracked in MLflow, the best refit and registered.

Start from ``ll.automl.run(...)`` (:class:`lakeloop.automl.search.AutoML`).
"""

from lakeloop.automl.search import AutoML, AutoMLResult
from lakeloop.automl.spec import TrainingSpec

__all__ = ["AutoML", "AutoMLResult", "TrainingSpec"]
