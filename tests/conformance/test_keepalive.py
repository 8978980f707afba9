"""Keepalive: clients pinging every 10 s keep their connection, idle or with a call in flight,
as on ArmoniK's Kestrel (the Java SDK with keepalive on was cut off after 90-120 s).

How long the connections are watched: PYARMONIK_KEEPALIVE_SECONDS (45 by default; the
acceptance's 5 minutes with 300). 45 s is enough to catch a regression to gRPC's default
policy: it refuses pings without calls, and more than one every 5 minutes with calls, and
closes the connection at the third refused ping; a 10 s pinger is cut off at about 30-40 s.
The control (a client pinging every second) shows that the test sees a closed connection.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKSessions
from armonik.protogen.client import events_service_pb2_grpc, versions_service_pb2_grpc
from armonik.protogen.common import events_common_pb2, versions_common_pb2

from tests.conformance.conftest import OPTIONS
from tests.conformance.support import Stream
from tests.helpers import BackgroundControlPlane, control_plane

WATCH_SECONDS = float(os.environ.get("PYARMONIK_KEEPALIVE_SECONDS", "45"))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundControlPlane]:
    """One embedded control plane: the policy is the gRPC server's, not the backends'."""
    with control_plane(Path(tmp_path_factory.mktemp("control"))) as running:
        yield running


class Watched:
    """A channel of its own (no connection shared with other channels) pinging every
    `every` seconds, with a record of its connectivity states."""

    def __init__(self, endpoint: str, every: float):
        self.channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.keepalive_time_ms", int(every * 1000)),
                ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
                # gRPC clients stop pinging after 2 pings without data by default; Java's and
                # .NET's do not.
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.states: list[grpc.ChannelConnectivity] = []
        self.lock = threading.Lock()
        self.versions = versions_service_pb2_grpc.VersionsStub(self.channel)
        self.versions.ListVersions(versions_common_pb2.ListVersionsRequest(), timeout=10)
        self.channel.subscribe(self._record, try_to_connect=False)

    def _record(self, state: grpc.ChannelConnectivity) -> None:
        with self.lock:
            self.states.append(state)

    def left_ready(self) -> bool:
        """Whether the connection was lost (the channel went out of READY) since it opened."""
        with self.lock:
            return any(s != grpc.ChannelConnectivity.READY for s in self.states)

    def close(self) -> None:
        self.channel.unsubscribe(self._record)
        self.channel.close()


def _quiet_stream(channel: grpc.Channel, session_id: str) -> Stream:
    """An Events stream on a session where nothing happens: a call in flight, no data."""
    stub = events_service_pb2_grpc.EventsStub(channel)
    return Stream(stub.GetEvents(events_common_pb2.EventSubscriptionRequest(session_id=session_id)))


@pytest.mark.timeout(WATCH_SECONDS + 120)  # the suite's 300 s would cut a 5-minute watch
def test_clients_pinging_every_10_s_keep_their_connection(plane: BackgroundControlPlane) -> None:
    session_id = ArmoniKSessions(grpc.insecure_channel(plane.endpoint)).create_session(OPTIONS)
    idle = Watched(plane.endpoint, every=10)
    busy = Watched(plane.endpoint, every=10)
    stream = _quiet_stream(busy.channel, session_id)
    try:
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            assert not idle.left_ready(), f"the idle connection was closed: {idle.states}"
            assert not busy.left_ready(), f"the busy connection was closed: {busy.states}"
            assert stream.silent(1.0), f"the stream ended: {stream.error!r}"
        # Still the same connections, and usable.
        idle.versions.ListVersions(versions_common_pb2.ListVersionsRequest(), timeout=10)
        busy.versions.ListVersions(versions_common_pb2.ListVersionsRequest(), timeout=10)
        assert not idle.left_ready() and not busy.left_ready()
    finally:
        stream.cancel()
        idle.close()
        busy.close()


def test_a_client_pinging_every_second_is_cut_off(plane: BackgroundControlPlane) -> None:
    """The control: a ping flood still costs the connection (GOAWAY too_many_pings after three
    pings under 5 s apart), and the test sees it; its channel reconnects for the next call."""
    session_id = ArmoniKSessions(grpc.insecure_channel(plane.endpoint)).create_session(OPTIONS)
    flood = Watched(plane.endpoint, every=1)
    stream = _quiet_stream(flood.channel, session_id)
    try:
        deadline = time.monotonic() + 30
        while not flood.left_ready():
            assert time.monotonic() < deadline, "a client pinging every second was tolerated"
            time.sleep(0.2)
        assert stream.ended(10)
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
        flood.versions.ListVersions(versions_common_pb2.ListVersionsRequest(), timeout=10)
    finally:
        stream.cancel()
        flood.close()
