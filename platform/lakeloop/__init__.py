"""lakeloop: an MLOps platform on Ray that closes the loop from data to served models.

``import lakeloop`` is cheap: Ray, MLflow, torch and alibi-detect load inside the
functions that need them.

>>> import lakeloop
>>> ll = lakeloop.connect()  # doctest: +SKIP
"""

from lakeloop.client import Lakeloop, connect
from lakeloop.config import Config, load_config
from lakeloop.errors import LakeloopError

__version__ = "0.1.0"
__all__ = ["connect", "Lakeloop", "Config", "load_config", "LakeloopError", "__version__"]
