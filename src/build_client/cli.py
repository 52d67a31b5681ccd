"""The ``build-client`` command line."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

import capnp
import click

from build_api import __version__
from build_api.cli_support import UsageError, configure_logging
from build_api.errors import ConfigError, ConnectError, ServiceError
from build_api.sturdy import read_cap_file, write_cap_file
from build_client import admin
from build_client.submit import SubmitRequest, attach_job, cancel_job
from build_client.submit import submit as submit_job

T = TypeVar("T")

_COMMIT = re.compile(r"[0-9a-fA-F]{4,64}")
# REPOSITORY:TAG, where a registry's port (host:5000/app) is not the tag.
_PUSH_TARGET = re.compile(r"[^\s:]+(:[0-9]+)?(/[^\s:]+)*:[\w][\w.-]{0,127}")

_cap_path = click.Path(dir_okay=False, path_type=Path)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` with the Cap'n Proto event loop, mapping errors to exit codes."""
    try:
        result: T = asyncio.run(capnp.run(coro))
        return result
    except (ConfigError, ConnectError) as exc:
        raise UsageError(str(exc)) from None
    except ServiceError as exc:
        raise UsageError(str(exc)) from None


def _read_ref(path: Path) -> Any:
    try:
        return read_cap_file(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="build-client")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Submit builds to a build scheduler, and look after its pools."""
    configure_logging(verbose)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)


@main.command()
@click.argument("submission_cap", type=_cap_path)
@click.argument("sources", nargs=-1, metavar="[DOCKERFILE] [REPOSITORY COMMIT...]")
@click.option("--pool", required=True, help="The pool to build in.")
@click.option(
    "--dockerfile-path",
    default="",
    help="Use this Dockerfile inside the repository instead of a local one.",
)
@click.option("--urgent", is_flag=True, help="Put the job ahead of non-urgent ones.")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
              help="A build argument; repeat for more.")  # fmt: skip
@click.option("--target", default="", help="The Dockerfile stage to build.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option(
    "--squash",
    is_flag=True,
    help="Squash the new layers into one (engines with experimental features only).",
)
@click.option(
    "--cache-hint",
    default="",
    help="A label for jobs likely to share build cache: the scheduler prefers "
    "a worker that built the same label recently.",
)
@click.option(
    "--estimate",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="How long the build may take without cache, until the pool has measured it.",
)
@click.option("--push-to", default="", metavar="REPOSITORY:TAG",
              help="Push the image there; the result is its RepoId.")  # fmt: skip
@click.option("--push-user", default="", help="User name for the registry.")
@click.option(
    "--push-password",
    "push_password_file",
    type=click.File("r"),
    help="File holding the registry password.",
)
def submit(
    submission_cap: Path,
    sources: tuple[str, ...],
    pool: str,
    dockerfile_path: str,
    urgent: bool,
    build_args: tuple[str, ...],
    target: str,
    no_cache: bool,
    squash: bool,
    cache_hint: str,
    estimate: float,
    push_to: str,
    push_user: str,
    push_password_file: TextIO | None,
) -> None:
    """Build in a pool and stream the log.

    DOCKERFILE is a local Dockerfile ('-' for standard input); leave it out
    with --dockerfile-path. REPOSITORY and COMMITs make the build context:
    the first commit is checked out and the others merged into it in order.

    The log goes to standard output as it arrives, then the image id (or the
    pushed RepoId). Exits 0 when the build succeeds, 1 when it fails, 2 when
    the request cannot be made, 130 when interrupted: Ctrl-C (or SIGTERM)
    cancels the job before exiting.
    """
    for item in build_args:
        if "=" not in item:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE", param_hint="--build-arg"
            )
    dockerfile, repository, commits = _split_sources(sources, dockerfile_path)
    for commit in commits:
        if not _COMMIT.fullmatch(commit):
            raise UsageError(f"{commit!r} is not a commit hash (4 to 64 hex digits)")
    if push_to and not _PUSH_TARGET.fullmatch(push_to):
        raise UsageError(f"--push-to {push_to!r} is not REPOSITORY:TAG")
    if (push_user or push_password_file) and not push_to:
        raise UsageError("--push-user and --push-password need --push-to")
    if push_to and bool(push_user) != (push_password_file is not None):
        raise UsageError("--push-user and --push-password FILE go together")
    password = push_password_file.read().rstrip("\r\n") if push_password_file else ""
    request = SubmitRequest(
        cap_file=submission_cap,
        pool=pool,
        dockerfile=dockerfile,
        dockerfile_path=dockerfile_path,
        repository=repository,
        commits=commits,
        push_to=push_to,
        push_user=push_user,
        push_password=password,
        urgent=urgent,
        build_args=list(build_args),
        target=target,
        no_cache=no_cache,
        squash=squash,
        cache_hint=cache_hint,
        estimate=estimate,
    )
    code = _run(submit_job(_read_ref(submission_cap), request))
    sys.exit(code)


def _split_sources(
    sources: tuple[str, ...], dockerfile_path: str
) -> tuple[str, str, list[str]]:
    """The Dockerfile's contents, the repository and the commits."""
    args = list(sources)
    contents = ""
    if not dockerfile_path:
        if not args:
            raise UsageError(
                "give a DOCKERFILE, or --dockerfile-path with a repository"
            )
        contents = _read_dockerfile(args.pop(0))
    if not args:
        if dockerfile_path:
            raise UsageError("--dockerfile-path needs a REPOSITORY and a COMMIT")
        return contents, "", []
    repository, *commits = args
    if not commits:
        raise UsageError(f"give at least one COMMIT of {repository} to build")
    return contents, repository, commits


def _read_dockerfile(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Dockerfile {name}: {exc}") from None


@main.command()
@click.argument("submission_cap", type=_cap_path)
@click.argument("job_id")
def attach(submission_cap: Path, job_id: str) -> None:
    """Follow a job submitted earlier: its log from the start, then its result.

    Works from any terminal with the client's own submission capability,
    also after a restart of the scheduler. Exits as submit does; Ctrl-C
    stops following and leaves the job alone.
    """
    ref = _read_ref(submission_cap)
    sys.exit(_run(attach_job(ref, submission_cap, job_id)))


@main.command()
@click.argument("cap_file", type=_cap_path, metavar="SUBMISSION_OR_ADMIN_CAP")
@click.argument("job_id")
def cancel(cap_file: Path, job_id: str) -> None:
    """Cancel a job: a client's own, with its submission capability, or
    anyone's, with admin.cap.

    A queued job leaves the queue; a running build is stopped.
    """
    state = _run(cancel_job(_read_ref(cap_file), job_id))
    click.echo(f"Job {job_id} is {state}")


@main.command()
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool", required=False)
def show(admin_cap: Path, pool: str | None) -> None:
    """List the pools, or show one POOL's workers, clients and queue."""
    click.echo(_run(admin.show(_read_ref(admin_cap), pool)))


@main.command("add-client")
@click.argument("admin_cap", type=_cap_path)
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the client's .cap file (default: NAME.cap).",
)
def add_client(admin_cap: Path, name: str, output: Path | None) -> None:
    """Add a client and write its own submission capability to a file."""
    output = output or Path(f"{name}.cap")
    if output.exists():
        raise UsageError(f"{output} exists already; remove it or give --output")
    # The secret is shown only once: make sure it can be written first.
    try:
        output.touch(mode=0o600, exist_ok=False)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    try:
        ref = _run(admin.add_client(_read_ref(admin_cap), name))
    except BaseException:
        output.unlink()
        raise
    write_cap_file(output, ref)
    click.echo(f"Wrote the submission capability of client {name} to {output}")


@main.command("remove-client")
@click.argument("admin_cap", type=_cap_path)
@click.argument("name")
def remove_client(admin_cap: Path, name: str) -> None:
    """Revoke a client's capability at once and cancel its queued jobs."""
    _run(admin.remove_client(_read_ref(admin_cap), name))
    click.echo(f"Removed client {name}")


@main.command("list-clients")
@click.argument("admin_cap", type=_cap_path)
def list_clients(admin_cap: Path) -> None:
    """List the clients that may submit."""
    for name in _run(admin.list_clients(_read_ref(admin_cap))):
        click.echo(name)


@main.command("set-rate")
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool")
@click.argument("client")
@click.argument("rate", type=click.FloatRange(min=0, min_open=True))
def set_rate(admin_cap: Path, pool: str, client: str, rate: float) -> None:
    """Set CLIENT's share of POOL: with jobs queued, clients get builder
    time in proportion to their rates (1 unless set)."""
    _run(admin.set_rate(_read_ref(admin_cap), pool, client, rate))
    click.echo(f"Client {client} has rate {rate:g} in pool {pool}")


@main.command()
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool")
@click.argument("worker")
@click.option(
    "--wait", is_flag=True, help="Then wait until its running jobs have finished."
)
def pause(admin_cap: Path, pool: str, worker: str, wait: bool) -> None:
    """Give WORKER no new jobs; its queued jobs go back to the pool.

    The pause lasts, across the worker's reconnections and the scheduler's
    restarts, until unpause. It works for a worker that is not connected.
    """
    ref = _read_ref(admin_cap)
    absent = " (not connected: it gets no jobs when it connects)"
    if not wait:
        connected = _run(admin.set_active(ref, pool, worker, False))
        click.echo(
            f"Paused worker {worker} of pool {pool}{'' if connected else absent}"
        )
        return

    def report(running: int) -> None:
        noun = "job" if running == 1 else "jobs"
        if running:
            click.echo(f"Worker {worker} is paused; {running} {noun} still running")

    connected = _run(admin.drain(ref, pool, worker, report))
    click.echo(
        f"Worker {worker} is paused and runs no jobs{'' if connected else absent}"
    )


@main.command()
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool")
@click.argument("worker")
def unpause(admin_cap: Path, pool: str, worker: str) -> None:
    """Let WORKER take jobs again."""
    _run(admin.set_active(_read_ref(admin_cap), pool, worker, True))
    click.echo(f"Worker {worker} of pool {pool} takes jobs again")


@main.command()
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool")
@click.argument("worker")
def forget(admin_cap: Path, pool: str, worker: str) -> None:
    """Drop the records (pause, cache) of a worker that is not connected."""
    _run(admin.forget(_read_ref(admin_cap), pool, worker))
    click.echo(f"Forgot worker {worker} of pool {pool}")
