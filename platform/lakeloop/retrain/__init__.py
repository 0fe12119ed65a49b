"""Closing the loop: retrain a drifting model, prove the challenger on live traffic, promote or roll back.

- :class:`RetrainSpec`: what a retrain does (data, search budget, canary or shadow, the test).
- :func:`run_retrain`: the retrain itself (``jobs/retrain.py`` runs it as a Ray job).
- :class:`JobTrigger`: what a monitor's policy calls to submit that job.
- :func:`compare`: the champion/challenger test on labelled feedback (one look);
  :func:`sequential_compare`: its always-valid version, which the retrain uses to look as labels arrive.
"""

from lakeloop.retrain.compare import Comparison, compare, two_proportion
from lakeloop.retrain.job import run_retrain
from lakeloop.retrain.sequential import sequential_compare
from lakeloop.retrain.spec import RetrainSpec
from lakeloop.retrain.trigger import JobTrigger

__all__ = ["Comparison", "JobTrigger", "RetrainSpec", "compare", "run_retrain", "sequential_compare",
           "two_proportion"]
