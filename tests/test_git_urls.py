"""What the worker hands to git: only network URLs, never an option."""

from __future__ import annotations

import asyncio

import pytest

from build_api.errors import BuildError
from build_worker.builder import BuildCancelled
from build_worker.git_context import check_repository_url, credentials_of, redact_url
from build_worker.job import _unless_cancelled


@pytest.mark.parametrize(
    "url",
    ["--upload-pack=touch /tmp/x;", "-c", "file:///etc", "/srv/repo", "ext::sh -c id",
     "host:path/repo.git", ""],
)  # fmt: skip
def test_urls_git_must_not_see_are_refused(url: str) -> None:
    with pytest.raises(BuildError, match="must be a git://, http://, https://, ssh://"):
        check_repository_url(url)


@pytest.mark.parametrize(
    "url", ["git://h/r.git", "https://h/r", "HTTP://h:8080/r", "ssh://git@h/r"]
)
def test_network_urls_are_accepted(url: str) -> None:
    check_repository_url(url)


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("https://alice:pw@h/r.git", "https://h/r.git", "alice:pw"),
        ("https://alice:S3CR#ET?x@h:1/r.git", "https://h:1/r.git", "alice:S3CR#ET?x"),
        ("https://alice:pa/ss@h/r", "https://h/r", "alice:pa/ss"),
        ("https://a:pw@h:notaport/r", "https://h:notaport/r", "a:pw"),
        ("git://h/r", "git://h/r", ""),
    ],
)
def test_credentials_never_reach_the_log(url: str, shown: str, secret: str) -> None:
    assert redact_url(url) == shown
    assert credentials_of(url) == secret


async def test_a_cancel_stops_work_in_progress() -> None:
    cancelled = asyncio.Event()
    stopped = asyncio.Event()

    async def endless_git() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    asyncio.get_running_loop().call_later(0.01, cancelled.set)
    with pytest.raises(BuildCancelled):
        await asyncio.wait_for(_unless_cancelled(endless_git(), cancelled), 5)
    assert stopped.is_set()
