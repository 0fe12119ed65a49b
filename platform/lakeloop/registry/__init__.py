"""The model registry: versions with lineage and model cards, a promotion gate, aliases, rebuilds.

Start from ``ll.models`` (:class:`lakeloop.registry.models.ModelRegistry`).
"""

from lakeloop.registry.gate import Gate, Verdict
from lakeloop.registry.models import ModelRegistry, ModelVersionInfo
from lakeloop.registry.rebuild import RebuildResult

__all__ = ["ModelRegistry", "ModelVersionInfo", "Gate", "Verdict", "RebuildResult"]
