"""The small read-only services: Partitions, Applications, Versions, HealthChecks, Authentication."""

from __future__ import annotations

import importlib.metadata

import grpc
from armonik.protogen.client.applications_service_pb2_grpc import ApplicationsServicer
from armonik.protogen.client.auth_service_pb2_grpc import AuthenticationServicer
from armonik.protogen.client.health_checks_service_pb2_grpc import HealthChecksServiceServicer
from armonik.protogen.client.partitions_service_pb2_grpc import PartitionsServicer
from armonik.protogen.client.versions_service_pb2_grpc import VersionsServicer
from armonik.protogen.common import applications_common_pb2 as apps_pb
from armonik.protogen.common import auth_common_pb2 as auth_pb
from armonik.protogen.common import health_checks_common_pb2 as health_pb
from armonik.protogen.common import partitions_common_pb2 as part_pb
from armonik.protogen.common import versions_common_pb2 as versions_pb

import pyarmonik
from pyarmonik.control import filters
from pyarmonik.control.auth import Authenticator, current_identity
from pyarmonik.control.convert import partition_raw
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.errors import InvalidArgument, NotFound
from pyarmonik.domain.filters import MATCH_ALL, ListQuery
from pyarmonik.domain.records import Partition
from pyarmonik.scheduling.backends import Backends


class Partitions(PartitionsServicer):  # type: ignore[misc]
    def __init__(self, backends: Backends):
        self.backends = backends

    @rpc
    async def ListPartitions(
        self, request: part_pb.ListPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> part_pb.ListPartitionsResponse:
        filters.validate_paging(request.page, request.page_size)
        query = ListQuery(
            filter=filters.partitions_filter(request.filters)
            if request.HasField("filters")
            else MATCH_ALL,
            sort=filters.partitions_sort(request.sort) if request.HasField("sort") else None,
            page=request.page,
            page_size=request.page_size,
        )
        async with self.backends.database.read() as repository:
            partitions, total = await repository.list_page(Partition, query)
        return part_pb.ListPartitionsResponse(
            partitions=[partition_raw(p) for p in partitions],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )

    @rpc
    async def GetPartition(
        self, request: part_pb.GetPartitionRequest, context: grpc.aio.ServicerContext
    ) -> part_pb.GetPartitionResponse:
        if not request.id:
            raise InvalidArgument("partition id is required")
        async with self.backends.database.read() as repository:
            partition = await repository.get(Partition, request.id)
        if partition is None:
            raise NotFound(f"Partition {request.id} not found")
        return part_pb.GetPartitionResponse(partition=partition_raw(partition))


class Applications(ApplicationsServicer):  # type: ignore[misc]
    def __init__(self, backends: Backends, guard: SessionGuard):
        self.backends = backends
        self.guard = guard

    @rpc
    async def ListApplications(
        self, request: apps_pb.ListApplicationsRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb.ListApplicationsResponse:
        filters.validate_paging(request.page, request.page_size)
        query = ListQuery(
            filter=filters.applications_filter(request.filters)
            if request.HasField("filters")
            else MATCH_ALL,
            page=request.page,
            page_size=request.page_size,
        )
        sorts = filters.applications_sort(request.sort) if request.HasField("sort") else []
        async with self.backends.database.read() as repository:
            apps, total = await repository.list_applications(self.guard.within(query), sorts)
        return apps_pb.ListApplicationsResponse(
            applications=[
                apps_pb.ApplicationRaw(
                    name=a.name, version=a.version, namespace=a.namespace, service=a.service
                )
                for a in apps
            ],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )


class Versions(VersionsServicer):  # type: ignore[misc]
    @rpc
    async def ListVersions(
        self, request: versions_pb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> versions_pb.ListVersionsResponse:
        return versions_pb.ListVersionsResponse(
            core=f"pyarmonik-{pyarmonik.__version__}", api=importlib.metadata.version("armonik")
        )


class HealthChecks(HealthChecksServiceServicer):  # type: ignore[misc]
    def __init__(self, backends: Backends):
        self.backends = backends

    @rpc
    async def CheckHealth(
        self, request: health_pb.CheckHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb.CheckHealthResponse:
        checks = {
            "database": self.backends.database.check_health,
            "object": self.backends.objects.check_health,
            "queue": self.backends.queue.check_health,
        }
        services = []
        for name, check in checks.items():
            try:
                await check()
                services.append(
                    health_pb.CheckHealthResponse.ServiceHealth(
                        name=name, message="", healthy=health_pb.HEALTH_STATUS_ENUM_HEALTHY
                    )
                )
            except Exception as error:  # a failed check is the answer, not an rpc error
                services.append(
                    health_pb.CheckHealthResponse.ServiceHealth(
                        name=name,
                        message=str(error),
                        healthy=health_pb.HEALTH_STATUS_ENUM_UNHEALTHY,
                    )
                )
        return health_pb.CheckHealthResponse(services=services)


class Authentication(AuthenticationServicer):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    @rpc
    async def GetCurrentUser(
        self, request: auth_pb.GetCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb.GetCurrentUserResponse:
        username, roles, permissions = self.authenticator.current_user(current_identity())
        return auth_pb.GetCurrentUserResponse(
            user=auth_pb.User(username=username, roles=roles, permissions=permissions)
        )
