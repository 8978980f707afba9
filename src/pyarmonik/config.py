"""One settings object for every pyarmonik process.

Values come, lowest precedence first, from defaults, a YAML/JSON config file, environment
variables (`PYARMONIK_<NAME>`, and ArmoniK's names where one exists) and command-line flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.records import Partition

DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024
# Measured (storage/objects/inline.py): up to here a row costs less than a file.
DEFAULT_INLINE_THRESHOLD = 64 * 1024


class PartitionSettings(BaseModel):
    """A partition: its ArmoniK description, and how `pyarmonik local` runs its agents."""

    id: str
    priority: int = 1
    parent_partition_ids: list[str] = Field(default_factory=list)
    pod_reserved: int = 0
    pod_max: int = 0
    preemption_percentage: int = 0
    pod_configuration: dict[str, str] = Field(default_factory=dict)
    agents: int | None = None
    worker: str | None = None
    # Partitions whose tasks these agents also run, in this order, when this one has none
    # (they must have the same worker: one worker runs them all).
    also_serves: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value or "/" in value:
            raise ValueError("a partition id must be non-empty and contain no '/'")
        return value

    def record(self) -> Partition:
        return Partition(
            partition_id=self.id,
            parent_partition_ids=self.parent_partition_ids,
            pod_reserved=self.pod_reserved,
            pod_max=self.pod_max,
            preemption_percentage=self.preemption_percentage,
            priority=self.priority,
            pod_configuration=self.pod_configuration,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYARMONIK_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 5001
    http_port: int | None = None  # /metrics and health; None: no HTTP server
    http_port_strict: bool = True  # False: a taken http_port is replaced by a free one
    # Origins whose pages may call gRPC-Web on the HTTP port (CORS); "*" for any. Empty: only
    # pages served by the HTTP port itself.
    grpc_web_origins: list[str] = Field(default_factory=list)
    # A build of ArmoniK's own Admin GUI (its dist/admin/browser, scripts/official-gui.sh),
    # served at /admin/ on the HTTP port (docs/official-gui.md). PYARMONIK_OFFICIAL_GUI_DIR.
    official_gui_dir: Path | None = None
    data_dir: Path = Path("pyarmonik-data")
    database: str = ""  # default: sqlite:///<data_dir>/pyarmonik.db
    queue: str = ""  # default: a queue table in the database
    objects: str = ""  # default: file://<data_dir>/objects
    partitions: list[PartitionSettings] = Field(default_factory=list)
    default_partition: str = "default"
    data_chunk_max_size: int = DEFAULT_CHUNK_SIZE
    # Largest gRPC message a client may send the control plane (RESOURCE_EXHAUSTED beyond):
    # data streams are chunked, only inline data (CreateResults) and big batches come near it.
    max_request_size: int = 64 * 1024 * 1024
    # Blobs of at most this many bytes are stored in the database rather than the object
    # storage (storage/objects/inline.py); 0: none. `inline_threshold` in the file,
    # PYARMONIK_INLINE_THRESHOLD.
    inline_threshold: int = Field(default=DEFAULT_INLINE_THRESHOLD, ge=0)
    # Within a partition and a priority, "fair" serves the sessions' ready tasks in turn, "fifo"
    # in arrival order (ArmoniK's). PYARMONIK_QUEUE_ORDER; every process of a cluster should
    # agree (the agents push too). docs/reliability.md, "Fair share between sessions".
    queue_order: Literal["fair", "fifo"] = "fair"
    # Agents stop (SIGSTOP) the worker they started once it has been idle for a few seconds,
    # and continue it for the next task: an idle official worker polls ten times a second.
    # PYARMONIK_PAUSE_IDLE_WORKER=false for a worker that works between tasks.
    pause_idle_worker: bool = True
    # Workers started by agents run this much nicer than their agent (`nice`): on a busy
    # machine a write transaction of an agent or the control plane is not held up behind
    # dozens of workers (docs/performance.md, eleventh session); an idle agent leaves its
    # worker the whole CPU all the same. 0: the agent's priority. PYARMONIK_WORKER_NICE.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # `pyarmonik local` runs its agents this many to a process, sharing the process's
    # database connection (compute/group.py); 1: a process per agent, as in ArmoniK; None
    # (the default): a process per agent up to 4 per core, grouped beyond (local.py).
    # PYARMONIK_AGENTS_PER_PROCESS.
    agents_per_process: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"
    # OpenTelemetry traces over OTLP/gRPC (e.g. http://127.0.0.1:4317); empty: off, unless
    # OTEL_EXPORTER_OTLP_ENDPOINT is set.
    otlp_endpoint: str = ""

    # -- security (docs/security.md) ---------------------------------------------------------
    # TLS on the gRPC and HTTP ports: PEM certificate (chain) and key; with a client CA, the
    # gRPC port requires a client certificate it signed (mutual TLS), the HTTP port asks for one.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # ArmoniK's Authenticator__RequireAuthentication / __RequireAuthorization.
    require_authentication: bool = False
    require_authorization: bool = False
    # ArmoniK's Authenticator__CNHeader, __FingerprintHeader, __ImpersonationUsernameHeader,
    # __ImpersonationIdHeader. The certificate headers are believed only from a trusted proxy.
    cn_header: str = "X-Certificate-Client-CN"
    fingerprint_header: str = "X-Certificate-Client-Fingerprint"
    impersonation_username_header: str = "X-Impersonate-Username"
    impersonation_id_header: str = "X-Impersonate-Id"
    # TLS-terminating proxies whose certificate headers are believed: by address (IP or
    # CIDR) or by the CN of the client certificate they present (ArmoniK's trusted CNs).
    trusted_proxy_addresses: list[str] = Field(default_factory=list)
    trusted_proxy_cns: list[str] = Field(default_factory=list)
    # Users, roles and certificates loaded at start (ArmoniK's authentication_datafile format).
    auth_file: Path | None = None
    # A user sees and touches only the sessions it created (unless it holds
    # General:AllSessions).
    session_isolation: bool = False
    # /metrics requires a bearer token (with authentication on).
    metrics_require_token: bool = False
    # How long a request's identity is reused on its connection: a removed user or
    # certificate stops working within this time.
    identity_cache_seconds: float = 5.0

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{(self.data_dir / 'pyarmonik.db').resolve()}"

    @property
    def queue_url(self) -> str:
        return self.queue or "table"

    @property
    def objects_url(self) -> str:
        return self.objects or f"file://{(self.data_dir / 'objects').resolve()}"

    def partition_list(self) -> list[PartitionSettings]:
        return self.partitions or [PartitionSettings(id=self.default_partition)]

    @model_validator(mode="after")
    def _shared_partitions(self) -> Settings:
        """A partition's agents may also serve only declared partitions of the same worker."""
        declared = {p.id: p for p in self.partitions}
        for partition in self.partitions:
            for other in partition.also_serves:
                if other not in declared:
                    raise ValueError(
                        f"partition {partition.id} also serves {other}, which is not declared"
                    )
                if declared[other].worker != partition.worker:
                    raise ValueError(
                        f"partition {partition.id} also serves {other}, whose worker differs: "
                        "an agent runs one worker for every partition it serves"
                    )
        return self


def _armonik_environment() -> dict[str, Any]:
    """ArmoniK's own variable names, where they mean the same thing."""
    values: dict[str, Any] = {}
    if size := os.environ.get("Submitter__PreferredMessageSize"):
        values["data_chunk_max_size"] = int(size)
    if default := os.environ.get("Submitter__DefaultPartition"):
        values["default_partition"] = default
    for key, name in _AUTHENTICATOR_KEYS.items():
        if (value := os.environ.get(f"Authenticator__{key}")) is not None:
            values[name] = value
    return values


_AUTHENTICATOR_KEYS = {
    "RequireAuthentication": "require_authentication",
    "RequireAuthorization": "require_authorization",
    "CNHeader": "cn_header",
    "FingerprintHeader": "fingerprint_header",
    "ImpersonationUsernameHeader": "impersonation_username_header",
    "ImpersonationIdHeader": "impersonation_id_header",
}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file, the environment and explicit overrides (None values ignored)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = config_file.read_text()
        except OSError as error:
            raise InvalidArgument(f"cannot read config file {config_file}: {error}") from error
        loaded = json.loads(text) if config_file.suffix == ".json" else yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidArgument(f"config file {config_file} must hold a mapping")
        values.update(loaded or {})
    values.update(_armonik_environment())
    values.update({k: v for k, v in overrides.items() if v is not None})
    environment = Settings()
    merged = {**environment.model_dump(exclude_unset=True), **values}
    return Settings(**merged)
