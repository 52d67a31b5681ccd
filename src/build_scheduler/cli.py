"""The ``build-scheduler`` command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import capnp
import click

from build_api import __version__
from build_api.address import TcpAddress, parse_tcp_address
from build_api.errors import ConfigError
from build_scheduler.http_metrics import DEFAULT_WORKER_TIMEOUT_SECONDS
from build_scheduler.scheduler import DEFAULT_MAX_ATTEMPTS
from build_scheduler.server import SchedulerConfig, run_scheduler
from build_scheduler.sessions import Heartbeat


def _address(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> TcpAddress | None:
    if value is None:
        return None
    try:
        return parse_tcp_address(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _metrics_address(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> TcpAddress | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    try:
        return parse_tcp_address(f"tcp:{host or '0.0.0.0'}:{port}")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _pools(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    pools = [name.strip() for name in value.split(",") if name.strip()]
    if not pools:
        raise click.BadParameter("name at least one pool")
    for name in pools:
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise click.BadParameter(
                f"pool name {name!r} may use only letters, digits, - _ ."
            )
    return pools


def _default_public(listen: TcpAddress) -> TcpAddress:
    if listen.host in ("0.0.0.0", "::", ""):
        logging.getLogger(__name__).warning(
            "No --capnp-public-address given: the .cap files will name 127.0.0.1, "
            "which only this machine can dial"
        )
        return TcpAddress("127.0.0.1", listen.port)
    return listen


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="build-scheduler")
@click.option(
    "--capnp-secret-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="RSA key in PEM; made on first start. The .cap files are written beside it.",
)
@click.option(
    "--capnp-listen-address",
    callback=_address,
    required=True,
    help="Where to accept connections, as tcp:HOST:PORT.",
)
@click.option(
    "--capnp-public-address",
    callback=_address,
    help="The address clients and workers dial, as tcp:HOST:PORT "
    "(default: the listen address).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the scheduler's state.",
)
@click.option(
    "--pools", callback=_pools, required=True, help="Comma-separated pool names."
)
@click.option(
    "--listen-prometheus",
    callback=_metrics_address,
    metavar="[HOST:]PORT",
    help="Serve Prometheus metrics over HTTP (all interfaces unless HOST is given; "
    "no authentication).",
)
@click.option(
    "--worker-metrics-timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_WORKER_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for a worker's metrics before answering 504.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=Heartbeat.interval,
    show_default=True,
    help="Seconds between pings to each worker.",
)
@click.option(
    "--heartbeat-timeout",
    type=click.FloatRange(min=0.1),
    default=Heartbeat.timeout,
    show_default=True,
    help="Seconds a worker has to answer a ping before it counts as lost.",
)
@click.option(
    "--job-retries",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_ATTEMPTS - 1,
    show_default=True,
    help="How many times a job whose worker was lost mid-build is tried again.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(
    capnp_secret_key_file: Path,
    capnp_listen_address: TcpAddress,
    capnp_public_address: TcpAddress | None,
    state_dir: Path,
    pools: list[str],
    listen_prometheus: TcpAddress | None,
    worker_metrics_timeout: float,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    job_retries: int,
    verbose: bool,
) -> None:
    """Queue build jobs in pools and hand them to the workers of each pool."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = SchedulerConfig(
        secret_key_file=capnp_secret_key_file,
        listen=capnp_listen_address,
        public=capnp_public_address or _default_public(capnp_listen_address),
        state_dir=state_dir,
        pools=pools,
        prometheus=listen_prometheus,
        worker_metrics_timeout=worker_metrics_timeout,
        heartbeat=Heartbeat(heartbeat_interval, heartbeat_timeout),
        job_retries=job_retries,
    )
    try:
        asyncio.run(capnp.run(run_scheduler(config)))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
