"""The lakeloop inference application, for ``serve run serve_apps.inference:app``.

It starts the serving controller and the inference log writer for the lake that
``lakeloop.connect()`` finds (lakeloop.yaml / LAKELOOP_* variables), and binds
the ingress. Model versions are deployed afterwards through the SDK, the CLI
(`lakeloop serve deploy`) or the admin API; those recorded in ``serving.traffic``
are deployed again at start.
"""

from __future__ import annotations

import lakeloop
from lakeloop.serving.service import build_app

app = build_app(lakeloop.connect())
