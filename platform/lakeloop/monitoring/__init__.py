"""Drift monitoring: detectors, label-free performance estimates, monitor actors, the events log and the retrain
policy hook.

>>> from lakeloop import monitoring                                                # doctest: +SKIP
>>> monitoring.start(ll, "fraud", window_rows=200, backend="scipy",
...                  policy=monitoring.Policy(consecutive=3), trigger=submit_retrain)  # doctest: +SKIP
>>> monitoring.status(ll, "fraud")["versions"][3]["drift"]                        # doctest: +SKIP
>>> monitoring.record_event(ll, "promoted", "fraud", version=4)                     # doctest: +SKIP

Everything here takes the :class:`~lakeloop.client.Lakeloop` object as its
first argument; heavy libraries (scipy, torch, alibi-detect, Ray, MLflow)
load inside the functions that need them.
"""

from lakeloop.monitoring.detectors import DriftDetector
from lakeloop.monitoring.events import EVENTS, KINDS, read_events, record_event
from lakeloop.monitoring.monitor import WINDOWS, Monitor, monitor_name
from lakeloop.monitoring.performance import CBPE, DLE
from lakeloop.monitoring.policy import Policy
from lakeloop.monitoring.reference import labelled_reference, predictions_for, reference_for
from lakeloop.monitoring.service import actor, local_monitor, start, status, stop, windows
from lakeloop.monitoring.settings import MonitorSettings

__all__ = [
    "DriftDetector", "CBPE", "DLE", "MonitorSettings", "Policy", "Monitor", "start", "stop", "status", "windows",
    "actor", "local_monitor", "labelled_reference",
    "monitor_name", "record_event", "read_events", "reference_for", "predictions_for", "EVENTS", "KINDS", "WINDOWS",
]
