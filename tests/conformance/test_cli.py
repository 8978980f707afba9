"""The official `armonik` CLI (armonik-cli 0.4.1), run as a subprocess against the plane; each
command's output is parsed and its effect checked with the client.

Result commands use `-o yaml`: `-o json` fails in the CLI itself on the bytes `opaque_id`.
Lists are sorted with `--sort-direction desc`: the CLI sends DESC whatever the option says
(it compares "asc".capitalize() with "ASC"), so ascending cannot be asked for.
Independent commands run concurrently: each CLI start costs most of a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, SessionStatus, TaskOptions, TaskStatus

from tests.conformance.support import submit_one
from tests.helpers import BackgroundControlPlane, control_plane

ARMONIK = str(Path(sys.executable).parent / "armonik")


class Cli:
    """Runs `armonik -e <plane> ...` with a private configuration folder."""

    def __init__(self, endpoint: str, home: Path):
        self.endpoint = endpoint
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
        for name in ("AK_ENDPOINT", "AK_OUTPUT", "AK_DEBUG", "AK_VERBOSE", "AKCONFIG"):
            self.env.pop(name, None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ARMONIK, "-e", self.endpoint, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def __call__(self, *args: str, output: str = "json") -> Any:
        """Run a command that must succeed; return its parsed output."""
        done = self.run(*args, "-o", output)
        assert done.returncode == 0, f"armonik {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout) if output == "json" else yaml.safe_load(done.stdout)

    def all(self, *commands: tuple[str, ...], output: str = "json") -> list[Any]:
        """Run independent commands concurrently; outputs in order."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda c: self(*c, output=output), commands))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundControlPlane]:
    """The embedded backends only: the CLI sees the API, whatever stores the data (and
    every CLI start costs most of a second)."""
    with control_plane(Path(tmp_path_factory.mktemp("cli-plane"))) as running:
        yield running


@pytest.fixture(scope="module")
def cli(plane: BackgroundControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(plane.endpoint, tmp_path_factory.mktemp("cli-config"))


def test_cluster_and_partitions(cli: Cli) -> None:
    info, health, listed, got = cli.all(
        ("cluster", "info"),
        ("cluster", "health"),
        ("partition", "list"),
        ("partition", "get", "other"),
    )
    assert info["Versions"]["API"] == "3.29.4"
    assert info["Versions"]["Core"].startswith("pyarmonik-")
    assert set(health) == {"database", "object", "queue"}
    assert all(service["status"] == 1 for service in health.values())  # HEALTHY
    assert sorted(p["Id"] for p in listed) == ["default", "other"]
    assert [p["Id"] for p in got] == ["other"]


def test_session_create_get_list(cli: Cli, sessions: ArmoniKSessions) -> None:
    created = cli(
        "session",
        "create",
        "--max-retries",
        "5",
        "--max-duration",
        "00:02:00",
        "--priority",
        "3",
        "--partition",
        "default",
        "--partition",
        "other",
        "--default-partition",
        "other",
        "--application-name",
        "cli-app",
        "--option",
        "k=v",
    )
    session_id = created["SessionId"]
    session = sessions.get_session(session_id)
    assert session.status == SessionStatus.RUNNING
    assert sorted(session.partition_ids) == ["default", "other"]
    assert session.options.partition_id == "other"
    assert (session.options.priority, session.options.max_retries) == (3, 5)
    assert session.options.max_duration == timedelta(minutes=2)
    assert session.options.application_name == "cli-app"
    assert session.options.options == {"k": "v"}

    got, listed = cli.all(
        ("session", "get", session_id),
        ("session", "list", "-f", f"session_id = '{session_id}' or status = cancelled"),
    )
    assert [s["SessionId"] for s in got] == [session_id]
    assert got[0]["Status"] == "Running"
    assert session_id in [s["SessionId"] for s in listed]
    assert {s["Status"] for s in listed if s["SessionId"] != session_id} <= {"Cancelled"}


def test_session_lifecycle(
    cli: Cli, sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    """Four sessions walk through the lifecycle side by side, in three rounds of commands."""
    options = TaskOptions(timedelta(seconds=30), priority=1, max_retries=1)
    paused, closed, stopped, doomed = (sessions.create_session(options) for _ in range(4))
    paused_task, closed_task, _, doomed_task = (
        submit_one(results, tasks, s) for s in (paused, closed, stopped, doomed)
    )

    pause, close, stop, cancel = cli.all(
        ("session", "pause", paused),
        ("session", "close", closed, "--confirm"),
        ("session", "stop-submission", stopped, "--clients", "--confirm"),
        ("session", "cancel", doomed, "--confirm"),
    )
    assert pause[0]["Status"] == "Paused"
    assert tasks.get_task(paused_task.task_id).status == TaskStatus.PAUSED
    assert close[0]["Status"] == "Closed"
    assert sessions.get_session(closed).status == SessionStatus.CLOSED
    assert (stop[0]["ClientSubmission"], stop[0]["WorkerSubmission"]) == (False, True)
    assert not sessions.get_session(stopped).client_submission
    assert cancel[0]["Status"] == "Cancelled"
    assert tasks.get_task(doomed_task.task_id).status == TaskStatus.CANCELLED
    assert results.get_result(doomed_task.output_ids[0]).status == ResultStatus.ABORTED

    resume, purge = cli.all(
        ("session", "resume", paused), ("session", "purge", closed, "--confirm")
    )
    assert resume[0]["Status"] == "Running"
    assert tasks.get_task(paused_task.task_id).status == TaskStatus.SUBMITTED
    assert purge[0]["Status"] == "Purged"
    assert results.get_result(closed_task.payload_id).status == ResultStatus.DELETED

    all_four = (paused, closed, stopped, doomed)
    deleted = cli("session", "delete", *all_four, "--confirm")
    assert [s["Status"] for s in deleted] == ["Deleted"] * 4
    for gone in all_four:
        with pytest.raises(grpc.RpcError) as error:
            sessions.get_session(gone)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_not_found(cli: Cli) -> None:
    with ThreadPoolExecutor(2) as pool:
        missing, skipped = pool.map(
            lambda args: cli.run(*args),
            [
                ("session", "get", "no-such-session"),
                # --skip-not-found relies on the NOT_FOUND code.
                ("session", "cancel", "no-such-session", "--confirm", "--skip-not-found"),
            ],
        )
    assert missing.returncode == 4
    assert "NOT_FOUND" in missing.stdout + missing.stderr
    assert skipped.returncode == 0


def test_task_commands(
    cli: Cli, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    one = submit_one(results, tasks, session_id)
    two = submit_one(results, tasks, session_id)
    created = results.create_results_metadata(["cli-out"], session_id)["cli-out"].result_id

    listed, got, made = cli.all(
        (
            "task",
            "list",
            "-f",
            f"session_id = '{session_id}' and status = submitted",
            "--sort-by",
            "created_at",
            "--sort-direction",
            "desc",
        ),
        ("task", "get", one.task_id, two.task_id),
        (
            "task",
            "create",
            "--session-id",
            session_id,
            "--payload-id",
            one.payload_id,
            "--expected-outputs",
            created,
            "--priority",
            "4",
            "--max-retries",
            "2",
            "--max-duration",
            "00:00:30",
        ),
    )
    # The CLI's task, created concurrently, may be listed first (newest).
    assert [t["Id"] for t in listed if t["Id"] != made["Id"]] == [two.task_id, one.task_id]
    assert {t["Id"]: t["Status"] for t in got} == {
        one.task_id: "Submitted",
        two.task_id: "Submitted",
    }
    assert got[0]["ExpectedOutputIds"] == one.output_ids
    new_task = tasks.get_task(made["Id"])
    assert new_task.status == TaskStatus.SUBMITTED
    assert new_task.expected_output_ids == [created]
    assert new_task.options.priority == 4

    assert cli.run("task", "cancel", one.task_id).returncode == 0  # prints nothing
    assert tasks.get_task(one.task_id).status == TaskStatus.CANCELLED
    assert tasks.get_task(two.task_id).status == TaskStatus.SUBMITTED


def test_result_commands(
    cli: Cli, results: ArmoniKResults, session_id: str, tmp_path: Path
) -> None:
    created = cli(
        "result", "create", session_id, "-r", "meta", "-r", "inline bytes hello", output="yaml"
    )
    by_name = {r["Name"]: r for r in created}
    meta, inline = by_name["meta"]["ResultId"], by_name["inline"]["ResultId"]
    assert by_name["meta"]["Status"] == "Created"
    assert by_name["inline"]["Status"] == "Completed"
    assert results.download_result_data(inline, session_id) == b"hello"

    cli("result", "upload-data", session_id, meta, "--from-bytes", "uploaded!", output="yaml")
    assert results.get_result(meta).status == ResultStatus.COMPLETED

    with ThreadPoolExecutor(1) as pool:
        # (Its printed output wraps long paths: only the files are checked.)
        download = pool.submit(
            cli.run,
            "result",
            "download-data",
            session_id,
            "--id",
            meta,
            "--id",
            inline,
            "--path",
            str(tmp_path),
        )
        got, listed = cli.all(
            ("result", "get", meta),
            (
                "result",
                "list",
                "-f",
                f"session_id = '{session_id}' and status = completed",
                "--sort-by",
                "name",
                "--sort-direction",
                "desc",
            ),
            output="yaml",
        )
        assert download.result().returncode == 0
    assert got[0]["ResultId"] == meta and got[0]["Size"] == len(b"uploaded!")
    assert [r["Name"] for r in listed] == ["meta", "inline"]
    assert (tmp_path / meta).read_bytes() == b"uploaded!"
    assert (tmp_path / inline).read_bytes() == b"hello"

    cli("result", "delete-data", inline, "--confirm", output="yaml")
    assert results.get_result(inline).status == ResultStatus.DELETED
