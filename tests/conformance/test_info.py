"""The small services: Versions, HealthChecks, Partitions, Applications, Authentication."""

from __future__ import annotations

from datetime import timedelta

import grpc
from armonik.client import (
    ArmoniKHealthChecks,
    ArmoniKPartitions,
    ArmoniKResults,
    ArmoniKTasks,
    ArmoniKVersions,
)
from armonik.common import TaskOptions
from armonik.common.enumwrapper import ServiceHealthCheckStatus
from armonik.protogen.client.applications_service_pb2_grpc import ApplicationsStub
from armonik.protogen.client.auth_service_pb2_grpc import AuthenticationStub
from armonik.protogen.common import applications_common_pb2, auth_common_pb2

from pyarmonik.domain.auth import PERMISSIONS
from tests.conformance.support import code_of, submit_one


def test_versions(versions: ArmoniKVersions) -> None:
    found = versions.list_versions()
    assert found["core"].startswith("pyarmonik-")
    assert found["api"] == "3.29.4"


def test_health(health: ArmoniKHealthChecks) -> None:
    report = health.check_health()
    assert set(report) == {"database", "object", "queue"}
    for service in report.values():
        assert service["status"] == ServiceHealthCheckStatus.HEALTHY


def test_partitions_of_the_default_plane(partitions: ArmoniKPartitions) -> None:
    total, listed = partitions.list_partitions()
    assert total == 2
    assert sorted(p.id for p in listed) == ["default", "other"]
    other = partitions.get_partition("other")
    assert other.id == "other"
    assert other.parent_partition_ids == []
    assert code_of(lambda: partitions.get_partition("ghost")) == grpc.StatusCode.NOT_FOUND


def test_applications_without_filter_nor_sort(
    applications_stub: ApplicationsStub,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    options = TaskOptions(
        timedelta(seconds=5),
        priority=1,
        max_retries=1,
        application_name="info-app",
        application_version="7",
        application_namespace="ns",
        application_service="svc",
    )
    submit_one(results, tasks, session_id, options=options)
    reply = applications_stub.ListApplications(
        applications_common_pb2.ListApplicationsRequest(page=0, page_size=50)
    )
    listed = {(a.name, a.version, a.namespace, a.service) for a in reply.applications}
    assert ("info-app", "7", "ns", "svc") in listed
    assert reply.total == len(reply.applications)
    assert (reply.page, reply.page_size) == (0, 50)


def test_current_user(auth_stub: AuthenticationStub) -> None:
    user = auth_stub.GetCurrentUser(auth_common_pb2.GetCurrentUserRequest()).user
    assert user.username == "Anonymous"
    assert list(user.roles) == []
    # Authentication is off: every rpc is permitted, i.e. ArmoniK's 49 permissions.
    assert list(user.permissions) == list(PERMISSIONS)
