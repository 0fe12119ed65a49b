"""Retrain a served model as a Ray job: materialize, warm-started AutoML, gate, canary, promote or roll back.

    lakeloop job submit retrain --model fraud \
        [--spec-json '{"budget_s": 60, "canary_percent": 20, "min_labelled": 200}'] [--lake DIR | --config F]

A drift monitor submits it by itself (``lakeloop.retrain.JobTrigger``). Every
step is an event in ``logs.events`` (``lakeloop monitor events fraud``); the
last line printed is the summary as JSON. See ``lakeloop.retrain.job``.
"""

from __future__ import annotations

import sys

from lakeloop.retrain.job import main

if __name__ == "__main__":
    sys.exit(main())
