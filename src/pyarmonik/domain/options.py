"""TaskOptions and ArmoniK's merge rule (reference §2.2)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pyarmonik.domain.errors import InvalidArgument

MAX_PRIORITY = 99
# The longest max_duration accepted: 100 years. Every store keeps it exactly (a double) and
# every timer handles it (gRPC deadlines overflow past about 9.2e9 s, int64 nanoseconds).
MAX_DURATION_SECONDS = 100 * 365.25 * 86400

# Row columns holding TaskOptions, shared by sessions and tasks (see records.py).
OPTION_COLUMNS = (
    "opt_max_duration",
    "opt_max_retries",
    "opt_priority",
    "opt_partition_id",
    "opt_application_name",
    "opt_application_version",
    "opt_application_namespace",
    "opt_application_service",
    "opt_engine_type",
    "opt_options",
)


@dataclass(frozen=True)
class TaskOptions:
    """Options of a task; max_duration is in seconds."""

    max_duration: float = 0.0
    max_retries: int = 0
    priority: int = 0
    partition_id: str = ""
    application_name: str = ""
    application_version: str = ""
    application_namespace: str = ""
    application_service: str = ""
    engine_type: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def merged_over(self, defaults: TaskOptions | None) -> TaskOptions:
        """These options (task level) merged over `defaults`, as ArmoniK does.

        Map entries of both are kept (task keys win); numbers are taken from the task when
        non-zero, strings when non-empty. Priority follows the same rule here: clients always
        send ≥ 1, and falling back on 0 is what a user expects (the reference leaves it open).
        """
        if defaults is None:
            return self
        return TaskOptions(
            max_duration=self.max_duration or defaults.max_duration,
            max_retries=self.max_retries or defaults.max_retries,
            priority=self.priority or defaults.priority,
            partition_id=self.partition_id or defaults.partition_id,
            application_name=self.application_name or defaults.application_name,
            application_version=self.application_version or defaults.application_version,
            application_namespace=self.application_namespace or defaults.application_namespace,
            application_service=self.application_service or defaults.application_service,
            engine_type=self.engine_type or defaults.engine_type,
            options={**defaults.options, **self.options},
        )

    def with_partition(self, partition_id: str) -> TaskOptions:
        return replace(self, partition_id=partition_id)

    def validate(self) -> None:
        """Raise InvalidArgument unless these options can run a task."""
        if self.max_duration <= 0:
            raise InvalidArgument("task options: max_duration must be set and positive")
        if self.max_duration > MAX_DURATION_SECONDS:
            raise InvalidArgument(
                f"task options: max_duration must be at most {MAX_DURATION_SECONDS:.0f} s"
                " (100 years)"
            )
        if self.max_retries < 1:
            raise InvalidArgument("task options: max_retries must be at least 1")
        if not 1 <= self.priority <= MAX_PRIORITY:
            raise InvalidArgument(f"task options: priority must be in 1..{MAX_PRIORITY}")

    def to_columns(self) -> dict[str, Any]:
        return {
            "opt_max_duration": self.max_duration,
            "opt_max_retries": self.max_retries,
            "opt_priority": self.priority,
            "opt_partition_id": self.partition_id,
            "opt_application_name": self.application_name,
            "opt_application_version": self.application_version,
            "opt_application_namespace": self.application_namespace,
            "opt_application_service": self.application_service,
            "opt_engine_type": self.engine_type,
            "opt_options": dict(self.options),
        }

    @staticmethod
    def from_columns(row: dict[str, Any]) -> TaskOptions:
        return TaskOptions(
            max_duration=row["opt_max_duration"] or 0.0,
            max_retries=row["opt_max_retries"] or 0,
            priority=row["opt_priority"] or 0,
            partition_id=row["opt_partition_id"] or "",
            application_name=row["opt_application_name"] or "",
            application_version=row["opt_application_version"] or "",
            application_namespace=row["opt_application_namespace"] or "",
            application_service=row["opt_application_service"] or "",
            engine_type=row["opt_engine_type"] or "",
            options=dict(row["opt_options"] or {}),
        )
