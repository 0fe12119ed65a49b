"""The alert webhook: one JSON POST per event, never fatal to the monitor."""

from __future__ import annotations

import json
from typing import Any, Mapping


def post(url: str, payload: Mapping[str, Any], timeout_s: float = 5.0) -> dict:
    """POST ``payload`` as JSON; answer ``{"url", "status", "error"}`` (the error as text, or None)."""
    import urllib.error
    import urllib.request

    body = json.dumps(dict(payload), default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "lakeloop-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
        return {"url": url, "status": status, "error": None if 200 <= status < 300 else f"HTTP {status}"}
    except urllib.error.HTTPError as exc:
        return {"url": url, "status": exc.code, "error": f"HTTP {exc.code}: {exc.reason}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return {"url": url, "status": None, "error": f"{type(exc).__name__}: {exc}"}
