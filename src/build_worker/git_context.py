"""Build contexts from git: a local mirror per repository, merged commits.

Each repository gets a bare mirror under the worker's state directory. A job
first looks for its commits in the mirror and fetches only when one is
missing, so a second build of the same commits reaches no remote at all.
The job's context is a clone of the mirror that shares its objects; the
first commit is checked out and each further commit merged into it, in
order, the way a pull request is merged into its target branch.

Jobs of the same repository take turns on the mirror (an asyncio lock inside
the worker, a file lock across processes) while they fetch and clone; the
builds themselves run in separate directories and do not wait for each
other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prometheus_client import Histogram

from build_api.errors import BuildError

logger = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 600.0
ALLOWED_SCHEMES = frozenset({"git", "http", "https", "ssh"})
# scheme://user:password@ -- up to the last @ of the URL.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^\s]*@")
_COMMIT = re.compile(r"^[0-9a-fA-F]{4,64}$")
# Identity for merge commits, which exist only inside the build context.
_MERGE_IDENTITY = [
    "-c",
    "user.name=build-worker",
    "-c",
    "user.email=build-worker@localhost",
]


def redact_url(url: str) -> str:
    """The URL without any user name or password, for logs.

    Everything between the scheme and the last ``@`` goes, so a password
    holding characters a URL parser would stop at (``#``, ``?``, ``/``)
    goes with it.
    """
    return _USERINFO.sub(r"\1", url)


def credentials_of(url: str) -> str:
    """The user name and password part of ``url`` (empty if none)."""
    match = _USERINFO.match(url)
    return match.group(0)[len(match.group(1)) : -1] if match else ""


def check_repository_url(url: str) -> None:
    """Refuse what git must not be handed: options, local paths, odd transports.

    A URL starting with ``-`` would be read as an option (``--upload-pack``
    runs a command); a local path or ``file://`` would read the worker's own
    disk; git's ``ext::`` transport runs commands.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ALLOWED_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in sorted(ALLOWED_SCHEMES))
        raise BuildError(f"repository {redact_url(url)!r} must be a {allowed} URL")


class GitMirrors:
    """The worker's mirrors of the repositories it has built."""

    def __init__(self, root: Path, *, fetch_duration: Histogram | None = None) -> None:
        self._root = root
        self._fetch_duration = fetch_duration
        self._locks: dict[str, asyncio.Lock] = {}

    def _mirror_path(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        return self._root / "git" / digest

    async def checkout(
        self,
        url: str,
        commits: list[str],
        destination: Path,
        write_log: Callable[[bytes], None],
    ) -> None:
        """Fill ``destination`` with ``commits`` of ``url``, merged in order."""
        check_repository_url(url)
        if not commits:
            raise BuildError("a repository was given without any commit to build")
        for commit in commits:
            if not _COMMIT.match(commit):
                raise BuildError(f"{commit!r} is not a commit hash")
        mirror = self._mirror_path(url)
        async with self._exclusive(url, mirror):
            await self._ensure_commits(url, mirror, commits, write_log)
            await _git(write_log, "clone", "--quiet", "--shared", "--no-checkout",
                       str(mirror), str(destination))  # fmt: skip
        await self._merge(url, commits, destination, write_log)
        # The clone's objects live in the mirror: the context carries no .git.
        shutil.rmtree(destination / ".git")

    @contextlib.asynccontextmanager
    async def _exclusive(self, url: str, mirror: Path) -> AsyncIterator[None]:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            mirror.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{mirror}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    async def _ensure_commits(
        self,
        url: str,
        mirror: Path,
        commits: list[str],
        write_log: Callable[[bytes], None],
    ) -> None:
        if not (mirror / "HEAD").exists():
            await _git(write_log, "init", "--quiet", "--bare", str(mirror))
            # Objects of a merge context come from the mirror: never collect them.
            await _git(write_log, "-C", str(mirror), "config", "gc.auto", "0")
        missing = [c for c in commits if not await _has_commit(mirror, c)]
        shown = redact_url(url)
        if not missing:
            write_log(f"All commits are in the local mirror of {shown}\n".encode())
            return
        write_log(f"Fetching {shown}\n".encode())
        all_branches = "+refs/heads/*:refs/heads/*"
        started = time.monotonic()
        try:
            await _git(write_log, "-C", str(mirror), "fetch", "--quiet", "--prune",
                       "--tags", "--", url, all_branches)  # fmt: skip
        except BuildError as exc:
            raise BuildError(f"cannot fetch {shown}: {exc}") from None
        finally:
            if self._fetch_duration is not None:
                self._fetch_duration.observe(time.monotonic() - started)
        still_missing = [c for c in missing if not await _has_commit(mirror, c)]
        for commit in still_missing:
            # Not on any branch: ask for the commit itself (servers may refuse).
            with contextlib.suppress(BuildError):
                await _git(
                    write_log, "-C", str(mirror), "fetch", "--quiet", "--", url, commit
                )
        absent = [c for c in still_missing if not await _has_commit(mirror, c)]
        if absent:
            raise BuildError(
                f"commit {', '.join(absent)} not found in {redact_url(url)}"
            )

    async def _merge(
        self,
        url: str,
        commits: list[str],
        context: Path,
        write_log: Callable[[bytes], None],
    ) -> None:
        first, *others = commits
        await _git(
            write_log, "-C", str(context), "checkout", "--quiet", "--detach", first
        )
        for commit in others:
            try:
                await _git(write_log, "-C", str(context), *_MERGE_IDENTITY, "merge",
                           "--no-edit", "--no-ff", commit)  # fmt: skip
            except BuildError:
                conflicts = await _output("-C", str(context), "diff", "--name-only",
                                          "--diff-filter=U")  # fmt: skip
                files = ", ".join(conflicts.split()) or "unknown files"
                raise BuildError(
                    f"merging commit {commit} into {first} conflicts in: {files}"
                ) from None


async def _has_commit(mirror: Path, commit: str) -> bool:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", str(mirror), "cat-file", "-e", f"{commit}^{{commit}}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await process.wait() == 0


async def _output(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    stdout, _ = await process.communicate()
    return stdout.decode(errors="replace")


async def _git(write_log: Callable[[bytes], None], *args: str) -> None:
    """Run git, copying its output into the job log; raise if it fails."""
    shown = " ".join(redact_url(a) if "://" in a else a for a in args)
    write_log(f"$ git {shown}\n".encode())
    secrets = [c.encode() for a in args if "://" in a if (c := credentials_of(a))]
    # Only network transports for repositories; local paths are our own.
    env = dict(
        os.environ,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        GIT_ALLOW_PROTOCOL="git:http:https:ssh:file",
    )
    process = await asyncio.create_subprocess_exec(
        "git", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BuildError(
            f"git {args[-1]} took longer than {GIT_TIMEOUT_SECONDS:.0f} s"
        ) from None
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    for secret in secrets:  # in case git repeats the URL as given
        output = output.replace(secret, b"***")
    write_log(output)
    if process.returncode != 0:
        last = output.decode(errors="replace").strip().splitlines()
        raise BuildError(last[-1] if last else f"git exited with {process.returncode}")
