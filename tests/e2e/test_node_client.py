"""A Node.js client (@grpc/grpc-js and @grpc/proto-loader, versions pinned by
tests/node/package-lock.json and installed from npm's registry by `npm ci`) runs a session end
to end against `pyarmonik local` and the official Python worker: payloads and outputs created,
a task with an output and one without any, the session's events until the output completes,
its download, then a batch cancelled while it runs or waits (tests/node/session.mjs).

The Node client knows nothing of pyarmonik: its API comes from ArmoniK's public protos, as
compiled into the `armonik` Python package (which ships their descriptors, not the .proto
texts), written as a FileDescriptorSet that proto-loader reads."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import armonik.protogen.client
import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKTasks
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from tests.helpers import REPO, LocalProcess, local_cluster

NODE_DIR = REPO / "tests" / "node"
LOCK = NODE_DIR / "package-lock.json"
# Written after a complete `npm ci`: the digest of the lock it installed.
STAMP = NODE_DIR / "node_modules" / ".pyarmonik-lock-sha256"
MIN_NODE = 18
TEXT = "hello from node"  # what session.mjs asks the worker to upper-case


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


def _node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed (apt-get install nodejs npm)")
    assert node is not None
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE:
        _unavailable(f"node {version} is too old (>= {MIN_NODE} needed)")
    return node


def _install() -> None:
    """`npm ci` unless node_modules already holds what the lock pins."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    npm = shutil.which("npm")
    assert npm is not None
    # No install scripts: the pinned packages are plain JavaScript and need none.
    done = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    STAMP.write_text(digest)


def descriptor_set() -> bytes:
    """Every client service of ArmoniK's public protos and everything they import, as a
    FileDescriptorSet (dependencies before the files that import them)."""
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        file.CopyToProto(files.file.add())

    package = armonik.protogen.client
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.name.endswith("_service_pb2"):
            add(importlib.import_module(f"{package.__name__}.{module.name}").DESCRIPTOR)
    return files.SerializeToString()


@pytest.fixture(scope="module")
def node() -> str:
    node = _node()
    _install()
    return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    with local_cluster(Path(tmp_path_factory.mktemp("node")), agents=2) as running:
        yield running


def run_session(node: str, endpoint: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    protos = tmp_path / "armonik-protos.pb"
    protos.write_bytes(descriptor_set())
    marker = tmp_path / "silent-marker"
    done = subprocess.run(
        [node, str(NODE_DIR / "session.mjs"), endpoint, str(protos), str(marker)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,  # the script gives up by itself after 240 s
    )
    try:
        summary = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"node printed no summary ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0 and summary["ok"], f"{json.dumps(summary)}\n{done.stderr}"
    return summary, marker


@pytest.mark.timeout(600)
def test_a_node_grpc_js_client_runs_a_session(
    node: str, cluster: LocalProcess, tmp_path: Path
) -> None:
    summary, marker = run_session(node, cluster.endpoint, tmp_path)
    print(json.dumps(summary, indent=1))  # shown on failure, or with -s

    # Payloads created with their data, outputs as metadata only.
    statuses = summary["created_result_statuses"]
    assert statuses["output"] == statuses["never-produced"] == "RESULT_STATUS_CREATED"
    assert statuses["upper"] == statuses["silent"] == "RESULT_STATUS_COMPLETED"

    # The output, completed as a live event and downloaded.
    assert summary["output_completed_by"] == "result_status_update"
    assert base64.b64decode(summary["downloaded_base64"]) == TEXT.upper().encode()
    assert {"new_result", "new_task", "task_status_update", "result_status_update"} <= set(
        summary["event_kinds"]
    )

    # The task without outputs was accepted as such, ran (its marker holds its id), completed.
    with_output, without_output = summary["submitted"]
    assert with_output["expected_output_ids"] == [summary["output_id"]]
    assert without_output["expected_output_ids"] == []
    assert summary["completed"] == {
        summary["task_with_output"]: "TASK_STATUS_COMPLETED",
        summary["task_without_output"]: "TASK_STATUS_COMPLETED",
    }
    assert marker.read_text() == summary["task_without_output"]

    # The second batch: one task running, one waiting on a result nobody produces, cancelled.
    sleeping, waiting = summary["cancelled_task_ids"]
    assert summary["before_cancel"][sleeping] == "TASK_STATUS_PROCESSING"
    assert summary["before_cancel"][waiting] in ("TASK_STATUS_PENDING", "TASK_STATUS_CREATING")
    assert set(summary["cancel_reply"]) == {sleeping, waiting}
    assert set(summary["cancel_reply"].values()) <= {
        "TASK_STATUS_CANCELLING",
        "TASK_STATUS_CANCELLED",
    }
    assert summary["cancelled"] == {
        sleeping: "TASK_STATUS_CANCELLED",
        waiting: "TASK_STATUS_CANCELLED",
    }
    assert set(summary["cancelled_outputs"].values()) == {"RESULT_STATUS_ABORTED"}
    assert summary["session_status"] == "SESSION_STATUS_CANCELLED"

    # What the Node client did, as the official Python client reads it.
    with grpc.insecure_channel(cluster.endpoint) as channel:
        session_id = summary["session_id"]
        data = ArmoniKResults(channel).download_result_data(summary["output_id"], session_id)
        assert data == TEXT.upper().encode()
        silent = ArmoniKTasks(channel).get_task(summary["task_without_output"])
        assert silent.expected_output_ids == []
