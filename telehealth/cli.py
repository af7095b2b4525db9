"""`telehealth`: run the hub and administer the consortium from a shell."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from dicom_node.listener import SharedListener
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.config import Settings
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction
from telehealth.errors import DomainError
from telehealth.institutions import service as institutions
from telehealth.institutions.models import InstitutionLevel
from telehealth.storage import die_with_parent

if TYPE_CHECKING:
    from telehealth.hub import Hub

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Telehealth hub for county medical consortia (医共体).", no_args_is_help=True
)
institution_app = typer.Typer(help="Institutions of the consortium tree.", no_args_is_help=True)
user_app = typer.Typer(help="Users and their roles.", no_args_is_help=True)
ae_app = typer.Typer(help="AE titles of member institutions' modalities.", no_args_is_help=True)
app.add_typer(institution_app, name="institution")
app.add_typer(user_app, name="user")
routing_app = typer.Typer(help="Reading groups, routing rules, deadlines.", no_args_is_help=True)
app.add_typer(ae_app, name="ae")
app.add_typer(routing_app, name="routing")
retention_app = typer.Typer(help="How long raw data is kept.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")
console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: $TELEHEALTH_DATA_DIR or ./data)"),
]


def _hub(settings: Settings) -> Hub:
    """A Hub, imported here rather than at the top: it brings every domain and its libraries
    (~2 s of start-up), which admin commands like `ae add` do not need."""
    from telehealth.hub import Hub

    return Hub(settings)


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


@contextmanager
def _stop_signals() -> Iterator[Callable[[], None]]:
    """Yield a function that blocks until SIGTERM or SIGINT; for the whole of a command that
    runs until stopped, its cleanup included (a later signal does not cut the cleanup short).

    No lock is taken when a signal lands: a handler that sets a threading.Event deadlocks when
    a second signal interrupts it inside Event.set, and a DICOM worker of `serve` gets two
    SIGTERMs when serve stops (the parent-death signal and serve's own), so it lived on as an
    orphan. The interpreter writes each signal's number to a pipe (signal.set_wakeup_fd) and
    the waiting thread reads it. A signal before the wait makes the wait return at once.
    """
    stops = (signal.SIGTERM, signal.SIGINT)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    handlers = {number: signal.signal(number, lambda *_: None) for number in stops}

    def wait() -> None:
        while os.read(read_fd, 1)[0] not in stops:
            pass  # another signal with a handler (none today)

    try:
        yield wait
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


@contextmanager
def _admin_session(data_dir: Path | None) -> Iterator[Session]:
    """A migrated database session for one admin command; a domain error exits 1 with it."""
    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url())
    try:
        migrate(engine)
        with transaction(make_session_factory(engine)) as session:
            yield session
    except DomainError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


@app.command()
def serve(
    data_dir: DataDir = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8042)")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (default 11112)")] = None,
    ae_title: Annotated[str | None, typer.Option(help="The hub's AE title")] = None,
    http_host: Annotated[str | None, typer.Option(help="HTTP bind address")] = None,
    dicom_host: Annotated[str | None, typer.Option(help="DICOM bind address")] = None,
    dicom: Annotated[
        bool, typer.Option(help="Run the DICOM node too (off: API only, nodes run apart)")
    ] = True,
) -> None:
    """Run everything: HTTP API, DICOM node, uploads; embedded S3 and SQLite by default."""
    import uvicorn

    from telehealth.app import create_app

    settings = _settings(
        data_dir,
        http_port=http_port,
        dicom_port=dicom_port,
        ae_title=ae_title,
        http_host=http_host,
        dicom_host=dicom_host,
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hub = _hub(settings)
    workers: DicomWorkers | None = None
    listener: SharedListener | None = None
    try:
        hub.open()
        if dicom and settings.dicom_workers > 1:
            listener = SharedListener.open(
                settings.dicom_host, settings.dicom_port, settings.dicom_workers
            )
        hub.start(dicom=dicom, signaling=True, dicom_listener=listener)
        if listener is not None:
            workers = DicomWorkers(hub, listener)
        config = uvicorn.Config(
            create_app(hub),
            host=settings.http_host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,  # URLs carry patient IDs in filters; keep them out of logs
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            ssl_certfile=settings.http_tls_cert,
            ssl_keyfile=settings.http_tls_key,
        )
        # uvicorn handles SIGTERM: it stops accepting, finishes requests, then re-raises the
        # signal to the handler that was there before. With Python's default handler that
        # kills us before `hub.close()`; an empty handler lets the cleanup below run.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.Server(config).run()
    finally:
        if workers is not None:
            workers.stop()
        hub.close()
        if listener is not None:
            listener.close()


class DicomWorkers:
    """The `dicom_workers - 1` DICOM node processes beside `serve`'s own, one per slot of
    the shared listener. One that dies is started again; meanwhile its slot reads as not
    listening, so the others stop leaving new associations to it."""

    CHECK_SECONDS = 1.0
    # A worker that keeps dying (a bad setting, say) is started at most this often.
    RESTART_SECONDS = 10.0
    # A worker still there this long after SIGTERM is killed.
    STOP_SECONDS = 30.0

    def __init__(self, hub: Hub, listener: SharedListener) -> None:
        settings = hub.settings
        self._listener = listener
        self._env = dict(os.environ)
        self._env.update(
            TELEHEALTH_DATA_DIR=str(settings.data_dir.resolve()),
            TELEHEALTH_DICOM_PORT=str(listener.address[1]),
            TELEHEALTH_DICOM_HOST=settings.dicom_host,
            TELEHEALTH_AE_TITLE=settings.ae_title,
            TELEHEALTH_SECRET_KEY=hub.secret,
        )
        self._processes = {slot: self._start(slot) for slot in range(1, listener.processes)}
        self._started = dict.fromkeys(self._processes, time.monotonic())
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise, name="dicom-workers", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Stop every worker: SIGTERM, then SIGKILL for one still there after STOP_SECONDS
        (it answered no Success it did not keep; serve's own cleanup must still run)."""
        self._stopping.set()
        self._supervisor.join()
        for process in self._processes.values():
            process.terminate()
        deadline = time.monotonic() + self.STOP_SECONDS
        for process in self._processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("DICOM worker process %d did not stop; killing it", process.pid)
                process.kill()
                process.wait()

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        handoff_env, fds = self._listener.handoff(slot)
        return subprocess.Popen(
            [sys.executable, "-m", "telehealth.cli", "dicom-worker"],
            env=self._env | handoff_env,
            pass_fds=fds,
            preexec_fn=die_with_parent,
        )

    def _supervise(self) -> None:
        while not self._stopping.wait(self.CHECK_SECONDS):
            for slot, process in list(self._processes.items()):
                code = process.poll()
                if code is None:
                    continue
                self._listener.mark_not_listening(slot)
                if time.monotonic() - self._started[slot] < self.RESTART_SECONDS:
                    continue
                log.error(
                    "DICOM worker process %d exited with %s; starting another", process.pid, code
                )
                self._processes[slot] = self._start(slot)
                self._started[slot] = time.monotonic()


@app.command("dicom-worker", hidden=True)
def dicom_worker() -> None:
    """One more DICOM node process beside `telehealth serve` (started by it)."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listener = SharedListener.inherited()
    hub = _hub(settings)
    with _stop_signals() as wait_for_stop:
        try:
            hub.open(run_migrations=False)
            hub.start(background=False, dicom_listener=listener)
            wait_for_stop()
        finally:
            hub.close()
            if listener is not None:
                listener.close()


@app.command("dicom-node")
def dicom_node_command(
    data_dir: DataDir = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (default 11112)")] = None,
    dicom_host: Annotated[str | None, typer.Option(help="DICOM bind address")] = None,
    ae_title: Annotated[str | None, typer.Option(help="The hub's AE title")] = None,
) -> None:
    """Run a DICOM node without HTTP, beside `telehealth serve --no-dicom` processes.

    It has its own spool (its data folder) and uploads it, so after a crash it uploads what
    it had acknowledged when it starts again. Share the database, object store, secret key
    and Redis (TELEHEALTH_REDIS_URL) with the other processes.
    """
    settings = _settings(data_dir, dicom_port=dicom_port, dicom_host=dicom_host, ae_title=ae_title)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hub = _hub(settings)
    with _stop_signals() as wait_for_stop:
        try:
            hub.open()
            hub.start()
            wait_for_stop()
        finally:
            hub.close()


@app.command("signaling")
def signaling_command(
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8043)")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1)")] = None,
) -> None:
    """Run the consult signalling server alone (no database; it checks the hub's join tokens).

    It needs the hub's secret: $TELEHEALTH_SECRET_KEY, or the data folder's secret_key file.
    """
    import asyncio

    from signaling.server import server_from_settings

    settings = _settings(data_dir, signaling_port=port, signaling_host=host)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secret = settings.secret_key or auth.load_or_create_secret(settings.data_dir)
    server = server_from_settings(settings, secret)
    console.print(f"signalling on ws://{settings.signaling_host}:{settings.signaling_port}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())


@app.command("migrate")
def migrate_command(data_dir: DataDir = None) -> None:
    """Bring the database schema to the newest version."""
    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(create_db_engine(settings.resolved_database_url()))
    console.print("database is up to date")


@app.command()
def fsck(
    data_dir: DataDir = None,
    deep: Annotated[bool, typer.Option(help="Read every object back and compare SHA-256")] = False,
) -> None:
    """Check the index and storage agree; exit 1 on any disagreement."""
    from telehealth.archive.service import fsck as run_fsck

    hub = _hub(_settings(data_dir)).open()
    try:
        with transaction(hub.factory) as session:
            report = run_fsck(session, hub.spool, hub.store, deep=deep)
    finally:
        hub.close()
    console.print(
        f"instances={report.instances} stored={report.stored} spooled={report.spooled} "
        f"superseded={report.superseded} problems={len(report.problems)} "
        f"quarantined={len(report.quarantined)}"
    )
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}")
    for name in report.quarantined:
        console.print(f"[yellow]quarantined:[/yellow] {name} (unreadable, kept for inspection)")
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def backup(
    folder: Annotated[Path, typer.Argument(help="An empty or new folder for the backup")],
    data_dir: DataDir = None,
) -> None:
    """Dump the database and list every object of the store (objects: S3 replication)."""
    from telehealth.backup import backup as run_backup

    settings = _settings(data_dir)
    hub = _hub(settings).open(run_migrations=False)
    try:
        summary = run_backup(settings.resolved_database_url(), hub.engine, hub.store, folder)
    except (FileExistsError, RuntimeError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        hub.close()
    console.print(
        f"backup={summary.folder} database={summary.database} "
        f"revision={summary.schema_revision} objects={summary.objects} "
        f"object_bytes={summary.object_bytes}"
    )


@app.command()
def restore(
    folder: Annotated[Path, typer.Argument(help="A folder made by `telehealth backup`")],
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option(help="Replace a database that already holds data")] = False,
) -> None:
    """Load a backup into the configured database (stop the hub first), migrate it, and
    check the store still holds every object it lists; exit 1 when any is missing."""
    from telehealth.backup import RestoreRefused, restore_database, verify_objects

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        revision = restore_database(folder, settings.resolved_database_url(), force=force)
    except (RestoreRefused, RuntimeError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    hub = _hub(settings).open()  # migrates from the backup's revision to this version's
    try:
        summary = verify_objects(folder, hub.store)
    finally:
        hub.close()
    console.print(
        f"restored_revision={revision} objects_expected={summary.objects_expected} "
        f"objects_missing={len(summary.objects_missing)}"
    )
    for key in summary.objects_missing[:50]:
        err.print(f"[red]missing object:[/red] {key}", soft_wrap=True)
    if not summary.complete:
        raise typer.Exit(1)


@retention_app.command("apply")
def retention_apply(
    data_dir: DataDir = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing")
    ] = False,
) -> None:
    """Remove the objects the retention rules (TELEHEALTH_RETENTION_FILE) say have expired.

    The hub runs this by itself every TELEHEALTH_RETENTION_CHECK_HOURS; this is for a look
    (--dry-run) or a run now."""
    from pydantic import ValidationError

    from telehealth.retention import apply_policy, load_policy

    settings = _settings(data_dir)
    try:
        policy = load_policy(settings.retention_file)
    except (ValidationError, OSError) as exc:
        err.print(f"[red]error:[/red] retention file {settings.retention_file}: {exc}")
        raise typer.Exit(1) from exc
    hub = _hub(settings).open()
    try:
        report = apply_policy(hub.factory, hub.store, policy, hub.clock.now(), dry_run=dry_run)
    finally:
        hub.close()
    verb = "would purge" if dry_run else "purged"
    for rule in policy.rules:
        console.print(
            f"{rule.name}: {verb} {report.instances[rule.name]} instances "
            f"({report.bytes[rule.name]} bytes)"
        )
    console.print(f"audit events {'to remove' if dry_run else 'removed'}: "
                  f"{report.audit_events_removed}")  # fmt: skip
    if not policy.rules:
        console.print("no retention rules: nothing is removed")


@institution_app.command("add")
def institution_add(
    code: str,
    name: Annotated[str, typer.Option(help="Display name, e.g. 城关镇卫生院")],
    parent: Annotated[str | None, typer.Option(help="Code of the parent institution")] = None,
    level: Annotated[InstitutionLevel, typer.Option(help="Place in the tree")] = (
        InstitutionLevel.TOWNSHIP
    ),
    data_dir: DataDir = None,
) -> None:
    with _admin_session(data_dir) as session:
        institution = institutions.add_institution(
            session, code=code, name=name, level=level, parent_code=parent
        )
    console.print(f"institution {institution.code} added (id {institution.id})")


@institution_app.command("list")
def institution_list(data_dir: DataDir = None) -> None:
    with _admin_session(data_dir) as session:
        rows = institutions.list_institutions(session)
        by_id = {i.id: i.code for i in rows}
        table = Table("id", "code", "name", "level", "parent")
        for i in rows:
            table.add_row(str(i.id), i.code, i.name, i.level, by_id.get(i.parent_id or -1, ""))
    console.print(table)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[Role, typer.Option(help="technician, specialist, consult_doctor or admin")],
    institution: Annotated[str, typer.Option(help="Institution code")],
    display_name: Annotated[str, typer.Option(help="Name shown in the app")] = "",
    data_dir: DataDir = None,
) -> None:
    """Add a user; the password is read from standard input, or asked for at a terminal."""
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    with _admin_session(data_dir) as session:
        user = auth.create_user(
            session,
            username=username,
            password=password,
            role=role,
            institution_code=institution,
            display_name=display_name,
        )
    console.print(f"user {user.username} added as {user.role}")


@ae_app.command("add")
def ae_add(
    ae_title: str,
    institution: Annotated[str, typer.Option(help="Institution code")],
    host: Annotated[str | None, typer.Option(help="Accept calls only from this address")] = None,
    port: Annotated[int | None, typer.Option(help="Port for C-MOVE to this AE")] = None,
    tls: Annotated[bool, typer.Option(help="C-MOVE to this AE over TLS only")] = False,
    description: Annotated[str, typer.Option(help="e.g. DR room 1")] = "",
    data_dir: DataDir = None,
) -> None:
    with _admin_session(data_dir) as session:
        entity = institutions.add_application_entity(
            session,
            ae_title=ae_title,
            institution_code=institution,
            host=host,
            port=port,
            tls=tls,
            description=description,
        )
    console.print(f"AE title {entity.ae_title} registered")


@ae_app.command("list")
def ae_list(data_dir: DataDir = None) -> None:
    with _admin_session(data_dir) as session:
        table = Table("AE title", "institution id", "host", "port", "TLS", "description")
        for e in institutions.list_application_entities(session):
            table.add_row(
                e.ae_title,
                str(e.institution_id),
                e.host or "",
                str(e.port or ""),
                "yes" if e.tls else "",
                e.description,
            )
    console.print(table)


@routing_app.command("load")
def routing_load(
    file: Annotated[Path, typer.Argument(help="YAML routing file", exists=True, dir_okay=False)],
    data_dir: DataDir = None,
) -> None:
    """Apply a routing file: groups by code, every rule replaced, deadlines when given."""
    from telehealth.cases import service as cases

    with _admin_session(data_dir) as session:
        document = cases.parse_routing_file(file.read_text("utf-8"))
        report = cases.load_routing(session, None, document, cases.CaseContext())
    deadlines = "kept" if report.deadlines is None else str(report.deadlines)
    console.print(
        f"routing loaded: {report.groups} groups, {report.rules} rules, deadlines {deadlines}"
    )


@routing_app.command("show")
def routing_show(data_dir: DataDir = None) -> None:
    """Print the routing rules in evaluation order."""
    from telehealth.cases import service as cases

    with _admin_session(data_dir) as session:
        table = Table("position", "name", "group", "conditions", "enabled")
        for view in cases.list_rules(session, _cli_admin()):
            rule = view.rule
            conditions = {
                "modalities": rule.modalities,
                "sop_classes": rule.sop_classes,
                "body_parts": rule.body_parts,
                "services": rule.services,
                "priorities": rule.priorities,
                "institution": view.institution,
                "time": f"{rule.time_from}-{rule.time_to}" if rule.time_from else None,
            }
            shown = " ".join(f"{k}={v}" for k, v in conditions.items() if v is not None)
            table.add_row(str(rule.position), rule.name, view.group, shown, str(rule.enabled))
    console.print(table)


def _cli_admin() -> auth.Actor:
    """Whoever runs the CLI on the hub's machine administers it (as `user add` does)."""
    return auth.Actor(name="cli", role=Role.ADMIN, institution_id=0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
