"""Fixtures of the conformance suite: one live control plane per test module, driven by the
unmodified `armonik` client classes (and the raw stubs where no client class exists)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import (
    ArmoniKEvents,
    ArmoniKHealthChecks,
    ArmoniKPartitions,
    ArmoniKResults,
    ArmoniKSessions,
    ArmoniKTasks,
    ArmoniKVersions,
)
from armonik.common import TaskOptions
from armonik.protogen.client import (
    applications_service_pb2_grpc,
    auth_service_pb2_grpc,
    results_service_pb2_grpc,
    sessions_service_pb2_grpc,
    tasks_service_pb2_grpc,
)

from tests.helpers import BACKEND_PARAMS, BackgroundControlPlane, cluster_backends, control_plane


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundControlPlane]:
    """A control plane per module and backend combination (every test runs on each)."""
    with (
        cluster_backends(request.param) as backends,
        control_plane(Path(tmp_path_factory.mktemp("control")), backends=backends) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def channel(plane: BackgroundControlPlane) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(plane.endpoint) as ch:
        yield ch


@pytest.fixture
def sessions(channel: grpc.Channel) -> ArmoniKSessions:
    return ArmoniKSessions(channel)


@pytest.fixture
def tasks(channel: grpc.Channel) -> ArmoniKTasks:
    return ArmoniKTasks(channel)


@pytest.fixture
def results(channel: grpc.Channel) -> ArmoniKResults:
    return ArmoniKResults(channel)


@pytest.fixture
def events(channel: grpc.Channel) -> ArmoniKEvents:
    return ArmoniKEvents(channel)


@pytest.fixture
def partitions(channel: grpc.Channel) -> ArmoniKPartitions:
    return ArmoniKPartitions(channel)


@pytest.fixture
def versions(channel: grpc.Channel) -> ArmoniKVersions:
    return ArmoniKVersions(channel)


@pytest.fixture
def health(channel: grpc.Channel) -> ArmoniKHealthChecks:
    return ArmoniKHealthChecks(channel)


# Raw stubs: for rpcs the client classes do not expose, or to send what they never send.


@pytest.fixture
def sessions_stub(channel: grpc.Channel) -> sessions_service_pb2_grpc.SessionsStub:
    return sessions_service_pb2_grpc.SessionsStub(channel)


@pytest.fixture
def tasks_stub(channel: grpc.Channel) -> tasks_service_pb2_grpc.TasksStub:
    return tasks_service_pb2_grpc.TasksStub(channel)


@pytest.fixture
def results_stub(channel: grpc.Channel) -> results_service_pb2_grpc.ResultsStub:
    return results_service_pb2_grpc.ResultsStub(channel)


@pytest.fixture
def applications_stub(channel: grpc.Channel) -> applications_service_pb2_grpc.ApplicationsStub:
    return applications_service_pb2_grpc.ApplicationsStub(channel)


@pytest.fixture
def auth_stub(channel: grpc.Channel) -> auth_service_pb2_grpc.AuthenticationStub:
    return auth_service_pb2_grpc.AuthenticationStub(channel)


OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=2)


@pytest.fixture
def session_id(sessions: ArmoniKSessions) -> str:
    return sessions.create_session(OPTIONS, partition_ids=["default", "other"])
