"""The ``build-worker`` command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import capnp
import click

from build_api import __version__
from build_api.cli_support import UsageError
from build_api.errors import BuildSystemError
from build_worker.agent import WorkerConfig, run_worker
from build_worker.metrics import DEFAULT_NODE_EXPORTER_URL


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="build-worker")
@click.argument("pool_cap", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="This worker's name, unique in its pool.")
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many builds to run at once.",
)
@click.option(
    "--docker-host",
    envvar="DOCKER_HOST",
    help="The Docker engine's address (default: the local socket).",
)
@click.option(
    "--build-network",
    help="Network mode for RUN steps (for example 'host'); default: the engine's.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/build-worker"),
    show_default=True,
    help="Where the worker keeps its git mirrors.",
)
@click.option(
    "--allow-push",
    "allow_push",
    multiple=True,
    metavar="REPOSITORY",
    help="A repository jobs may push images to; repeat for more.",
)
@click.option(
    "--node-exporter-url",
    default=DEFAULT_NODE_EXPORTER_URL,
    show_default=True,
    help="Where this host's prometheus-node-exporter serves its metrics.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(
    pool_cap: Path,
    name: str,
    capacity: int,
    docker_host: str | None,
    build_network: str | None,
    state_dir: Path,
    allow_push: tuple[str, ...],
    node_exporter_url: str,
    verbose: bool,
) -> None:
    """Build the jobs of the pool named by POOL_CAP, a pool's .cap file."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = WorkerConfig(
        cap_file=pool_cap,
        name=name,
        capacity=capacity,
        state_dir=state_dir,
        docker_host=docker_host,
        build_network=build_network,
        allowed_pushes=frozenset(allow_push),
        node_exporter_url=node_exporter_url,
    )
    try:
        asyncio.run(capnp.run(run_worker(config)))
    except BuildSystemError as exc:
        raise UsageError(str(exc)) from None
