"""The ``build-client`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import capnp
import click

from build_api import __version__
from build_api.cli_support import EXIT_FAILED, UsageError, configure_logging
from build_api.errors import ConfigError, ConnectError, ServiceError
from build_api.sturdy import read_cap_file
from build_client.show import show as show_pool
from build_client.submit import SubmitRequest
from build_client.submit import submit as submit_job

T = TypeVar("T")

_cap_path = click.Path(dir_okay=False, path_type=Path)


class RequestFailed(click.ClickException):
    """The scheduler refused the request."""

    exit_code = EXIT_FAILED


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
@click.argument("dockerfile", type=click.File("r"))
@click.option("--pool", required=True, help="The pool to build in.")
@click.option("--urgent", is_flag=True, help="Put the job ahead of non-urgent ones.")
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A build argument; repeat for more.",
)
@click.option("--target", default="", help="The Dockerfile stage to build.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--squash", is_flag=True, help="Squash the new layers into one.")
@click.option("--cache-hint", default="", help="Jobs with the same hint share a cache.")
def submit(
    submission_cap: Path,
    dockerfile: Any,
    pool: str,
    urgent: bool,
    build_args: tuple[str, ...],
    target: str,
    no_cache: bool,
    squash: bool,
    cache_hint: str,
) -> None:
    """Build DOCKERFILE ('-' for standard input) in a pool and stream its log.

    The log goes to standard output as it arrives, then the image id. Exits
    0 when the build succeeds, 1 when it fails, 2 when the request cannot be
    made. Ctrl-C cancels the job before exiting.
    """
    for item in build_args:
        if "=" not in item:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE", param_hint="--build-arg"
            )
    request = SubmitRequest(
        cap_file=submission_cap,
        pool=pool,
        dockerfile=dockerfile.read(),
        urgent=urgent,
        build_args=list(build_args),
        target=target,
        no_cache=no_cache,
        squash=squash,
        cache_hint=cache_hint,
    )
    code = _run(submit_job(_read_ref(submission_cap), request))
    sys.exit(code)


@main.command()
@click.argument("admin_cap", type=_cap_path)
@click.argument("pool", required=False)
def show(admin_cap: Path, pool: str | None) -> None:
    """List the pools, or show one POOL's workers and queue."""
    click.echo(_run(show_pool(_read_ref(admin_cap), pool)))
