"""One root error, a subclass per failure.

Every message says what went wrong, why, and what to do. Each class carries
the HTTP status the serving layer answers with. They pickle (Ray raises them
in other processes) because they keep their message in ``args``.
"""

from __future__ import annotations


class LakeloopError(Exception):
    """Root of every error lakeloop raises on purpose."""

    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(LakeloopError):
    """The configuration (file, environment or arguments) is not valid."""

    http_status = 400


class ConnectError(LakeloopError):
    """A configured service (Ray, the lake store, MLflow) cannot be reached."""

    http_status = 503


class TableNameError(LakeloopError):
    """A table name is not a plain ``layer.name``."""

    http_status = 400


class TableNotFoundError(LakeloopError):
    """The table does not exist in the lake."""

    http_status = 404


class TableExistsError(LakeloopError):
    """``create`` was asked for a table that is already there."""

    http_status = 409


class SchemaError(LakeloopError):
    """Data does not match a table's schema: missing, unexpected or mistyped columns."""

    http_status = 422


class RulesError(LakeloopError):
    """A rules file is malformed."""

    http_status = 400


class IngestFileError(LakeloopError):
    """An input file cannot be read: empty, truncated, not UTF-8, unknown format."""

    http_status = 400


class VersionNotFoundError(LakeloopError):
    """A table version (or timestamp) that the table does not have."""

    http_status = 404


class WriteConflictError(LakeloopError):
    """A write kept conflicting with concurrent writers after every retry."""

    http_status = 409


class DefinitionError(LakeloopError):
    """A feature definition (entity, feature view) is not valid."""

    http_status = 400


class FeatureViewNotFoundError(LakeloopError):
    """No feature view of that name (or version) is registered in the catalog."""

    http_status = 404


class NotMaterializedError(LakeloopError):
    """A feature view has no materialized data yet."""

    http_status = 409


class AutoMLError(LakeloopError):
    """An AutoML search cannot run or produced no usable trial (bad inputs, too small a budget)."""

    http_status = 400


class ModelNotFoundError(LakeloopError):
    """No registered model, version or alias of that name in the registry."""

    http_status = 404


class PromotionError(LakeloopError):
    """A promotion or rollback is not allowed (failed gate, no champion to roll back to)."""

    http_status = 409


class RebuildError(LakeloopError):
    """A model version cannot be rebuilt from its recorded lineage."""

    http_status = 409


class TrafficError(LakeloopError):
    """A traffic policy or deployment request that cannot be applied."""

    http_status = 400


class ModelLoadError(LakeloopError):
    """A model version that cannot be loaded, so it is not deployed (nothing changed)."""

    http_status = 422


class InputError(LakeloopError):
    """A prediction request that does not match the model's signature or limits."""

    http_status = 422


class ModelNotServedError(LakeloopError):
    """No such model, or no such version, is served."""

    http_status = 404


class AuthError(LakeloopError):
    """An admin request without the right bearer token."""

    http_status = 401


class RegistrationError(LakeloopError):
    """A model cannot be registered as asked (missing spec, target or task)."""

    http_status = 400


class MonitorError(LakeloopError):
    """A drift monitor or detector cannot run as asked (bad settings, unusable data)."""

    http_status = 400


class ReferenceNotFoundError(LakeloopError):
    """No reference data (training rows) can be found for a model version to compare serving with."""

    http_status = 404


class MonitorNotFoundError(LakeloopError):
    """No drift monitor runs, or ever ran, for that model in this lake."""

    http_status = 404


class EventError(LakeloopError):
    """An event for ``logs.events`` that is not valid (unknown kind, missing model)."""

    http_status = 400


class RetrainError(LakeloopError):
    """A retrain cannot run as asked (bad settings, no champion, nothing to train on)."""

    http_status = 400


class ServiceUnavailableError(LakeloopError):
    """A part of serving (a model replica, the inference log writer) is down or full for now: retry later.

    Answered 503 with ``Retry-After: <retry_after_s>``.
    """

    http_status = 503

    def __init__(self, message: str, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LakeloopWarning(UserWarning):
    """Root of the warnings lakeloop emits (something worked, but probably not as you meant)."""


class KnownTimeWarning(LakeloopWarning):
    """Known-time rules left most of a training frame without features (history not declared?)."""


class TableDamagedError(LakeloopError):
    """A table's latest commit is empty or unreadable, or a data file it references is missing."""

    http_status = 409


class LakeStorageError(LakeloopError):
    """The lake's storage refused a write or read: a read-only folder, a full disk, a file-size limit."""

    http_status = 507
