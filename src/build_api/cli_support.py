"""What the three command lines share: logging set-up and exit codes."""

from __future__ import annotations

import logging

import click

EXIT_FAILED = 1  # the build (or the request) failed
EXIT_USAGE = 2  # a mistake in the command, a bad file, or no scheduler
EXIT_INTERRUPTED = 130


class UsageError(click.ClickException):
    """A problem the person running the command can fix; exits with 2."""

    exit_code = EXIT_USAGE


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
