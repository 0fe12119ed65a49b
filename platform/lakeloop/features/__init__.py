"""The feature store: features defined once in Python, served offline and online.

>>> from lakeloop.features import Entity, FeatureView, Feature, Aggregation
"""

from lakeloop.features.definitions import Aggregation, Entity, Feature, FeatureView, load_definitions
from lakeloop.features.frame import TrainingFrame

__all__ = ["Entity", "FeatureView", "Feature", "Aggregation", "TrainingFrame", "load_definitions"]
