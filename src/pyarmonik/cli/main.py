"""The `pyarmonik` command."""

from __future__ import annotations

import os

# Before anything imports gRPC: agents and workers are started from processes that hold gRPC
# threads, where gRPC's fork handlers only print warnings, and no child uses gRPC's state.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from pyarmonik.cli.auth import app as auth_app
from pyarmonik.cli.inspect import register as register_inspection
from pyarmonik.config import PartitionSettings, Settings, load_settings
from pyarmonik.domain.errors import ArmoniKError

app = typer.Typer(
    no_args_is_help=True, help="pyarmonik: ArmoniK, the computation orchestrator, in Python."
)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML or JSON settings file.")]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder of the embedded backends.")
]
PartitionOption = Annotated[
    list[str] | None, typer.Option("--partition", help="A partition to serve (repeatable).")
]
DatabaseOption = Annotated[
    str | None, typer.Option("--database", envvar="PYARMONIK_DATABASE", help="Database URL.")
]
QueueOption = Annotated[
    str | None,
    typer.Option(
        "--queue",
        envvar="PYARMONIK_QUEUE",
        help="Queue URL ('table', amqp://, or an installed plugin's scheme: docs/plugins.md).",
    ),
]
ObjectsOption = Annotated[
    str | None, typer.Option("--objects", envvar="PYARMONIK_OBJECTS", help="Object storage URL.")
]
OfficialGuiOption = Annotated[
    Path | None,
    typer.Option(
        "--official-gui",
        help="Serve a build of ArmoniK's Admin GUI (its dist/admin/browser) at /admin/ on the "
        "HTTP port (docs/official-gui.md).",
    ),
]


def settings_from(
    config: Path | None,
    partitions: list[str] | None,
    **overrides: object,
) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except (ArmoniKError, ValueError) as error:
        raise typer.BadParameter(str(error)) from error
    if partitions:
        settings.partitions = [PartitionSettings(id=p) for p in partitions]
    return settings


def setup_logging(level: str) -> None:
    from pyarmonik.observability.logging import setup_logging as configure

    configure(level, os.environ.get("PYARMONIK_LOG_FORMAT", "auto"))


def run_until_signal(main: object) -> None:
    """Run a coroutine function taking a stop Event; SIGINT/SIGTERM set the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)  # type: ignore[operator]

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(runner())


@app.callback()
def _group() -> None:
    """pyarmonik: ArmoniK, the computation orchestrator, in Python."""
    # A callback keeps `pyarmonik control ...` a subcommand even while it is the only one
    # (typer would otherwise make a lone command the program itself).


@app.command()
def control(
    port: Annotated[int, typer.Option(help="gRPC port.")] = 5001,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[
        int, typer.Option(help="HTTP port of /metrics and health (ArmoniK's 1081).")
    ] = 1081,
    data_dir: DataDirOption = None,
    partition: PartitionOption = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM) of the gRPC and HTTP ports.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="CA of client certificates: mutual TLS (one is required on gRPC)."),
    ] = None,
    require_authentication: Annotated[
        bool | None,
        typer.Option(
            "--require-authentication/--no-require-authentication",
            help="Identify every caller (ArmoniK's Authenticator__RequireAuthentication).",
        ),
    ] = None,
    require_authorization: Annotated[
        bool | None,
        typer.Option(
            "--require-authorization/--no-require-authorization",
            help="Check each rpc's permission (Authenticator__RequireAuthorization).",
        ),
    ] = None,
    auth_file: Annotated[
        Path | None,
        typer.Option(help="Users, roles and certificates to load (ArmoniK's auth data file)."),
    ] = None,
    session_isolation: Annotated[
        bool | None,
        typer.Option(
            "--session-isolation/--no-session-isolation",
            help="A user sees only its own sessions (unless it holds General:AllSessions).",
        ),
    ] = None,
    official_gui: OfficialGuiOption = None,
) -> None:
    """Serve the ArmoniK API v3 (control plane)."""
    from pyarmonik.control.server import ControlPlane, exposure_warning

    settings = settings_from(
        config,
        partition,
        port=port,
        host=host,
        http_port=http_port,
        data_dir=data_dir,
        database=database,
        queue=queue,
        objects=objects,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        require_authentication=require_authentication,
        require_authorization=require_authorization,
        auth_file=auth_file,
        session_isolation=session_isolation,
        official_gui_dir=official_gui,
    )
    setup_logging(settings.log_level)
    if warning := exposure_warning(settings):
        typer.secho(warning, err=True, fg="red", bold=True)

    async def main(stop: asyncio.Event) -> None:
        plane = ControlPlane(settings)
        try:
            bound = await plane.start()
        except ArmoniKError as error:
            typer.echo(f"error: {error}", err=True)
            with contextlib.suppress(Exception):  # whatever did start
                await plane.stop()
            raise typer.Exit(2) from error
        typer.echo(f"pyarmonik control plane serving on {settings.host}:{bound}", err=True)
        await stop.wait()
        await plane.stop()

    run_until_signal(main)


@app.command()
def agent(
    partition: Annotated[
        list[str] | None,
        typer.Option(
            help="A partition whose tasks this agent runs (default: default). Repeated, the "
            "agent serves several, in this order: the first that has work (same worker)."
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(help="Command starting the worker (it gets ComputePlane__* variables)."),
    ] = None,
    worker_socket: Annotated[
        Path | None, typer.Option(help="Socket of a worker started by someone else (no --worker).")
    ] = None,
    worker_channel: Annotated[
        str | None,
        typer.Option(
            help="Where the worker serves: unix:///PATH, or tcp://HOST:PORT (its Address is then "
            "HOST:PORT, as the Python SDK reads it) or http://HOST:PORT (Address kept whole, as "
            "ArmoniK's C# SDK reads it). Default: a unix socket in --work-dir."
        ),
    ] = None,
    agent_channel: Annotated[
        str | None,
        typer.Option(
            help="Where the Agent API is served for the worker, same forms (port 0: any free "
            "one; no host: 127.0.0.1). Unauthenticated: on TCP, anyone reaching it can call it "
            "(docs/security.md). Default: a unix socket in --work-dir."
        ),
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="Folder for sockets and task data.")] = Path(
        "pyarmonik-agent"
    ),
    host: Annotated[
        str, typer.Option(help="Address other agents reach our liveness endpoint on.")
    ] = "127.0.0.1",
    http_port: Annotated[
        int,
        typer.Option(help="Port of the liveness HTTP endpoint on --host (0: any free port)."),
    ] = 0,
    lease: Annotated[
        float, typer.Option(help="Seconds a held queue message stays invisible.")
    ] = 30.0,
    agents: Annotated[
        int,
        typer.Option(
            min=1,
            help="Agents run by this process, each with its own worker and a folder "
            "--work-dir/N, sharing one database connection (docs/performance.md).",
        ),
    ] = 1,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """Run a polling agent: pull tasks of its partitions and have a worker run them."""
    from pyarmonik.compute.agent import Agent, AgentSettings
    from pyarmonik.compute.group import run_group
    from pyarmonik.compute.worker_process import Endpoint
    from pyarmonik.observability import tracing
    from pyarmonik.storage.factory import open_backends

    if worker is None and worker_socket is None and worker_channel is None:
        raise typer.BadParameter(
            "give --worker CMD, or --worker-socket PATH / --worker-channel URL of a running worker"
        )
    if agents > 1 and (worker is None or worker_channel or agent_channel or http_port):
        raise typer.BadParameter(
            "--agents N > 1 starts N workers: give --worker CMD, and no --worker-socket, "
            "--worker-channel, --agent-channel or --http-port (one address each cannot be shared)"
        )
    try:
        channels = [Endpoint.parse(c) for c in (worker_channel, agent_channel) if c]
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if agent_channel and not channels[-1].private:
        typer.secho(
            f"warning: the Agent API (no authentication) listens on {channels[-1]}: anyone "
            "reaching that address can read and write the data of the task running",
            err=True,
            fg="red",
            bold=True,
        )
    settings = settings_from(
        config, None, data_dir=data_dir, database=database, queue=queue, objects=objects
    )
    setup_logging(settings.log_level)
    served = list(dict.fromkeys(partition or ["default"]))
    agent_settings = AgentSettings(
        partition_id=served[0],
        also_serves=served[1:],
        worker_command=worker,
        worker_socket=worker_socket,
        worker_channel=worker_channel,
        agent_channel=agent_channel,
        work_dir=work_dir,
        host=host,
        http_port=http_port,
        lease=lease,
        data_chunk_max_size=settings.data_chunk_max_size,
        pause_idle_worker=settings.pause_idle_worker,
        worker_nice=settings.worker_nice,
    )

    async def main(stop: asyncio.Event) -> None:
        tracing.configure("pyarmonik-agent", settings.otlp_endpoint)
        try:
            if agents == 1:
                await Agent(open_backends(settings), agent_settings).run(stop)
            else:
                await run_group(agents, agent_settings, settings, stop)
        except ArmoniKError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error

    run_until_signal(main)


@app.command()
def local(
    port: Annotated[int, typer.Option(help="gRPC port of the control plane.")] = 5001,
    agents: Annotated[
        int | None, typer.Option(help="Agent/worker pairs (default: one per core).")
    ] = None,
    partition: Annotated[
        str, typer.Option(help="Partition of the agents (without --config).")
    ] = "default",
    worker: Annotated[
        str | None,
        typer.Option(help="Worker command of that partition (default: the SDK's function worker)."),
    ] = None,
    lease: Annotated[
        float, typer.Option(help="Seconds a held queue message stays invisible.")
    ] = 30.0,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port of /metrics and health (default: gRPC port + 1).")
    ] = None,
    agents_per_process: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Agents run by one process, sharing its database connection (default: a "
            "process each up to 4 per core, grouped beyond; agents_per_process in --config).",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
    official_gui: OfficialGuiOption = None,
) -> None:
    """A whole cluster on this machine: control plane and agent/worker pairs."""
    from pyarmonik.local import LocalCluster

    settings = settings_from(
        config,
        None,
        port=port,
        # By default next to the gRPC port, or any free port when that one is taken.
        http_port=(port + 1 if port else 0) if http_port is None else http_port,
        http_port_strict=http_port is not None,
        data_dir=data_dir,
        database=database,
        queue=queue,
        objects=objects,
        official_gui_dir=official_gui,
        agents_per_process=agents_per_process,
    )
    if not settings.partitions:
        settings.partitions = [PartitionSettings(id=partition, agents=agents, worker=worker)]
    setup_logging(settings.log_level)

    async def main(stop: asyncio.Event) -> None:
        cluster = LocalCluster(settings, default_agents=agents, lease=lease)
        try:
            endpoint = await cluster.start()
        except ArmoniKError as error:
            await cluster.stop()
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
        typer.echo(f"pyarmonik local cluster ready on {endpoint}", err=True)
        print(endpoint, flush=True)
        await cluster.wait(stop)
        await cluster.stop()

    run_until_signal(main)


register_inspection(app)
app.add_typer(auth_app, name="auth")

bench_app = typer.Typer(
    no_args_is_help=True, help="Measure the seed's workloads on a local cluster."
)
app.add_typer(bench_app, name="bench")
AgentsOption = Annotated[int, typer.Option(help="Agent/worker pairs.")]


def _backend_args(
    database: str | None, queue: str | None, objects: str | None
) -> tuple[list[str], str]:
    extra: list[str] = []
    for flag, value in (("--database", database), ("--queue", queue), ("--objects", objects)):
        if value:
            extra += [flag, value]
    names = [
        (database or "sqlite").split(":")[0],
        (queue or "table").split(":")[0],
        (objects or "file").split(":")[0],
    ]
    return extra, "+".join(names)


@bench_app.command("indep")
def bench_indep(
    tasks: Annotated[
        int, typer.Option(help="Independent no-op tasks, submitted in one batch.")
    ] = 10_000,
    agents: AgentsOption = 2,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """Indep: N independent no-op tasks with the official Python worker."""
    from pyarmonik.bench.run import indep

    extra, names = _backend_args(database, queue, objects)
    for line in indep(tasks, agents, extra, names).lines():
        typer.echo(line)


@bench_app.command("graph")
def bench_graph(
    depth: Annotated[
        int, typer.Option(help="Depth of the nested fork-join (3·2^D - 2 tasks).")
    ] = 10,
    agents: AgentsOption = 2,
    sdk: Annotated[
        bool, typer.Option("--sdk", help="The same graph written with the Pythonic SDK.")
    ] = False,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """Graph: nested fork-join built by delegation, with the official Python worker (or,
    with --sdk, written with the Pythonic SDK and run by its function worker)."""
    from pyarmonik.bench.run import graph, sdk_graph

    extra, names = _backend_args(database, queue, objects)
    for line in (sdk_graph if sdk else graph)(depth, agents, extra, names).lines():
        typer.echo(line)


@bench_app.command("ceiling")
def bench_ceiling(
    tasks: Annotated[int, typer.Option(help="Indep tasks, split over the pairs.")] = 10_000,
    agents: AgentsOption = 2,
    link: Annotated[
        str,
        typer.Option(
            help="The do-nothing agents' gRPC: grpcio (the ceiling as issue 13 set it) or "
            "lean (the agent's own link, compute/lean_grpc.py)."
        ),
    ] = "grpcio",
) -> None:
    """The ceiling for Indep on this machine: do-nothing agents that only call the official
    worker's Process and answer NotifyResultData (no database, queue or storage)."""
    from pyarmonik.bench.ceiling import LINKS, ceiling

    if agents < 1 or tasks < agents:
        raise typer.BadParameter("needs at least one agent and one task per agent")
    if link not in LINKS:
        raise typer.BadParameter(f"--link is one of {', '.join(LINKS)}")
    for key, value in ceiling(tasks, agents, link).items():
        typer.echo(f"{key:>22}: {value}")


@bench_app.command("gui")
def bench_gui(
    tasks: Annotated[
        int, typer.Option(help="Tasks of the session written into a fresh SQLite database.")
    ] = 100_000,
) -> None:
    """GUI: the size and time of each picture's data request on one big session (written
    straight into the database: nothing runs)."""
    from pyarmonik.bench.gui import gui

    if tasks < 1:
        raise typer.BadParameter("needs at least one task", param_hint="--tasks")
    for line in gui(tasks):
        typer.echo(line)


@bench_app.command("scale")
def bench_scale(
    agents: Annotated[
        str, typer.Option(help="Comma-separated agent counts, one fresh cluster each.")
    ] = "1,2,4,8,16,32,48,64",
    task_ms: Annotated[int, typer.Option(help="Milliseconds each task sleeps.")] = 200,
    work_seconds: Annotated[
        float, typer.Option(help="Seconds of tasks per agent (tasks = agents * this / task).")
    ] = 4.0,
    idle_seconds: Annotated[
        float, typer.Option(help="Seconds the cluster is measured idle before the tasks.")
    ] = 10.0,
    agents_per_process: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated `local --agents-per-process` values, a row each "
            "(default: the configured one)."
        ),
    ] = None,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """Efficiency (ideal time ÷ wall time) of sleep tasks on the official worker as agents are
    added, with CPU per task, RSS per agent and the CPU idle agents cost."""
    from pyarmonik.bench.scale import scale

    try:
        counts = [int(a) for a in agents.split(",") if a.strip()]
        groupings: list[int | None] = [
            int(a) for a in (agents_per_process or "").split(",") if a.strip()
        ]
    except ValueError as error:
        raise typer.BadParameter(f"counts like 1,2,4 expected: {error}") from error
    if not counts or min(counts) < 1 or task_ms < 0 or work_seconds <= 0 or idle_seconds <= 0:
        raise typer.BadParameter("agent counts ≥ 1, task_ms ≥ 0, positive durations")
    if any(g is not None and g < 1 for g in groupings):
        raise typer.BadParameter("--agents-per-process takes counts ≥ 1")
    extra, names = _backend_args(database, queue, objects)
    lines = scale(counts, task_ms, work_seconds, idle_seconds, extra, names, groupings or [None])
    for line in lines:
        typer.echo(line)


@bench_app.command("fib")
def bench_fib(
    n: Annotated[
        int, typer.Option("--n", help="fib(n) by delegation (fib(20): 32,836 tasks).")
    ] = 20,
    agents: AgentsOption = 2,
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """Recursive Fibonacci with the Pythonic SDK, every call a task, by delegation."""
    from pyarmonik.bench.run import sdk_fib

    extra, names = _backend_args(database, queue, objects)
    for line in sdk_fib(n, agents, extra, names).lines():
        typer.echo(line)


@bench_app.command("share")
def bench_share(
    a_tasks: Annotated[int, typer.Option(help="Tasks of application A, submitted first.")] = 2000,
    b_tasks: Annotated[int, typer.Option(help="Tasks of application B, submitted next.")] = 20,
    task_ms: Annotated[int, typer.Option(help="Milliseconds each task sleeps.")] = 10,
    agents: AgentsOption = 2,
    order: Annotated[
        str, typer.Option(help="Queue orders, comma-separated: fair, fifo (a cluster each).")
    ] = "fair,fifo",
    database: DatabaseOption = None,
    queue: QueueOption = None,
    objects: ObjectsOption = None,
) -> None:
    """B's wait behind A: two sessions on one partition at the same priority, B's time as a
    fraction of A's, with fair share between sessions and with strict FIFO."""
    from pyarmonik.bench.share import share

    orders = [o.strip() for o in order.split(",") if o.strip()]
    if not orders or set(orders) - {"fair", "fifo"}:
        raise typer.BadParameter(f"--order takes fair, fifo or both, not {order!r}")
    if min(a_tasks, b_tasks, agents) < 1 or task_ms < 0:
        raise typer.BadParameter("task counts and agents ≥ 1, task_ms ≥ 0")
    extra, names = _backend_args(database, queue, objects)
    for line in share(orders, a_tasks, b_tasks, task_ms, agents, extra, names):
        typer.echo(line)


@bench_app.command("compare")
def bench_compare(
    tasks: Annotated[int, typer.Option(help="Indep: no-op tasks submitted at once.")] = 5000,
    depth: Annotated[
        int, typer.Option(help="Graph: depth of the nested fork-join (2^(D+1) - 1 nodes).")
    ] = 10,
    round_trips: Annotated[
        int, typer.Option(help="Round trips of a tiny task, one after the other.")
    ] = 200,
    payloads: Annotated[int, typer.Option(help="Tasks given 1 MiB of bytes each.")] = 200,
    engines: Annotated[
        str, typer.Option(help="Comma-separated, among pyarmonik, ray, dask.")
    ] = "pyarmonik,ray,dask",
) -> None:
    r"""The same workloads on pyarmonik's SDK, Ray and Dask in one run (2 workers each), as
    one table with ratios. Ray and Dask: pip install -e '.\[bench]'."""
    from pyarmonik.bench.compare import ENGINES, Sizes, compare

    chosen = [e.strip() for e in engines.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in ENGINES]
    if unknown or not chosen:
        raise typer.BadParameter(f"engines among {', '.join(ENGINES)}, not {unknown or engines!r}")
    if min(tasks, depth + 1, round_trips, payloads) < 1:
        raise typer.BadParameter("sizes must be positive (depth may be 0)")
    for line in compare(list(dict.fromkeys(chosen)), Sizes(tasks, depth, round_trips, payloads)):
        typer.echo(line)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
