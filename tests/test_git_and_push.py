"""Building repositories at given commits, and pushing to a real registry."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster import Cluster, free_port
from tests.services import GitServer, Registry

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

DOCKERFILE_IN_REPO = "FROM busybox\nCOPY . /src/\nRUN cat /src/*.txt\n"


@dataclass
class Project:
    """A served repository: two branches that merge cleanly, one that conflicts."""

    url: str
    base: str  # main: hello.txt, shared.txt, Dockerfile
    main: str  # main, after base: main.txt, shared.txt changed
    feature: str  # branch from base: feature.txt
    conflict: str  # branch from base: shared.txt changed otherwise


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    server = GitServer(tmp_path / "git")
    yield server
    server.stop()


@pytest.fixture
def project(git_server: GitServer) -> Project:
    repo = git_server.new_repo("project.git")
    base = repo.commit(
        "base",
        {"hello.txt": "hello from base\n", "shared.txt": "shared v1\n",
         "Dockerfile": DOCKERFILE_IN_REPO, "docker/alt.Dockerfile":
         "FROM busybox\nCOPY hello.txt /\nRUN echo alt dockerfile && cat /hello.txt\n"},
    )  # fmt: skip
    repo.git("checkout", "-q", "-b", "feature")
    feature = repo.commit("feature", {"feature.txt": "feature work\n"})
    repo.git("checkout", "-q", "-b", "conflict", base)
    conflict = repo.commit("conflict", {"shared.txt": "shared from conflict\n"})
    repo.git("checkout", "-q", "main")
    main = repo.commit("main", {"main.txt": "main work\n", "shared.txt": "shared v2\n"})
    return Project(git_server.url("project.git"), base, main, feature, conflict)


@pytest.fixture
def local_dockerfile(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "Dockerfile.local"
        path.write_text(text)
        return path

    return write


def test_builds_a_repository_at_one_commit(cluster: Cluster, project: Project) -> None:
    cluster.start_worker("w1")
    result = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", "--no-cache", project.url, project.base
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello from base" in result.stdout
    assert "shared v1" in result.stdout
    assert "feature work" not in result.stdout
    assert "$ git" in result.stdout  # git's work is in the log


def test_merges_further_commits_in_order(cluster: Cluster, project: Project) -> None:
    cluster.start_worker("w1")
    result = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", "--no-cache", project.url, project.main,
        project.feature,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("main work", "feature work", "shared v2", "hello from base"):
        assert text in result.stdout


def test_conflicting_merge_names_commit_and_files(
    cluster: Cluster, project: Project
) -> None:
    cluster.start_worker("w1")
    result = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", project.url, project.main, project.conflict
    )
    assert result.returncode == 1
    assert f"merging commit {project.conflict} into {project.main}" in result.stderr
    assert "conflicts in: shared.txt" in result.stderr


def test_missing_commit_is_named(cluster: Cluster, project: Project) -> None:
    cluster.start_worker("w1")
    missing = "0123456789abcdef0123456789abcdef01234567"
    result = cluster.submit_repo("--dockerfile-path=Dockerfile", project.url, missing)
    assert result.returncode == 1
    assert f"commit {missing} not found in {project.url}" in result.stderr


def test_unreachable_repository_fails_clearly(
    cluster: Cluster, project: Project
) -> None:
    cluster.start_worker("w1")
    url = project.url.replace("project.git", "no-such-repo.git")
    result = cluster.submit_repo("--dockerfile-path=Dockerfile", url, project.base)
    assert result.returncode == 1
    assert f"cannot fetch {url}" in result.stderr


def test_local_dockerfile_with_a_repository_context(
    cluster: Cluster, project: Project, local_dockerfile
) -> None:
    cluster.start_worker("w1")
    dockerfile = local_dockerfile(
        "FROM busybox\nCOPY feature.txt /\nRUN cat /feature.txt\n"
    )
    result = cluster.submit_repo(dockerfile, "--no-cache", project.url, project.feature)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "feature work" in result.stdout


def test_dockerfile_path_inside_the_repository(
    cluster: Cluster, project: Project
) -> None:
    cluster.start_worker("w1")
    result = cluster.submit_repo(
        "--dockerfile-path=docker/alt.Dockerfile",
        "--no-cache",
        project.url,
        project.base,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alt dockerfile" in result.stdout


def test_missing_dockerfile_path_is_named(cluster: Cluster, project: Project) -> None:
    cluster.start_worker("w1")
    result = cluster.submit_repo(
        "--dockerfile-path=nope/Dockerfile", project.url, project.base
    )
    assert result.returncode == 1
    assert "no Dockerfile at nope/Dockerfile" in result.stderr


def test_second_build_uses_the_mirror_without_fetching(
    cluster: Cluster, project: Project, git_server: GitServer
) -> None:
    cluster.start_worker("w1")
    first = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", project.url, project.base
    )
    assert first.returncode == 0, first.stderr
    assert "Fetching" in first.stdout
    git_server.stop()  # the mirror alone must do
    second = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", "--no-cache", project.url, project.base
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "All commits are in the local mirror" in second.stdout
    assert "Fetching" not in second.stdout


def test_concurrent_builds_of_one_repository_share_the_mirror(
    cluster: Cluster, project: Project
) -> None:
    cluster.start_worker("w1", capacity=3)
    commits = [project.base, project.main, project.feature]
    procs = [
        cluster.submit_repo_in_background(
            "--dockerfile-path=Dockerfile", "--no-cache", project.url, commit
        )
        for commit in commits
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    [mirror] = [p for p in (cluster.worker_state("w1") / "git").iterdir() if p.is_dir()]
    fsck = subprocess.run(
        ["git", "-C", str(mirror), "fsck"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stderr


# Pushing


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry")
    yield registry
    registry.stop()


def push_args(
    registry: Registry, tmp_path: Path, repository: str, *, password: str = ""
):
    secret = tmp_path / "registry-password"
    secret.write_text((password or registry.password) + "\n")
    return [
        f"--push-to={registry.address}/{repository}:latest",
        f"--push-user={registry.user}",
        f"--push-password={secret}",
    ]


def test_push_returns_the_repo_id_that_the_registry_serves(
    cluster: Cluster, registry: Registry, tmp_path: Path, local_dockerfile
) -> None:
    allowed = f"{registry.address}/app"
    cluster.start_worker("w1", extra=[f"--allow-push={allowed}"])
    dockerfile = local_dockerfile("FROM busybox\nRUN echo pushed-image > /marker\n")
    result = cluster.submit(dockerfile, *push_args(registry, tmp_path, "app"))
    assert result.returncode == 0, result.stdout + result.stderr
    repo_id = result.stdout.strip().splitlines()[-1]
    assert repo_id.startswith(f"{allowed}@sha256:")
    digest = repo_id.split("@", 1)[1]
    assert registry.manifest_exists("app", digest)
    # The worker dropped its local tag again.
    images = ["docker", "images", "--format", "{{.Repository}}"]
    tags = subprocess.run(images, capture_output=True, text=True, check=True).stdout
    assert allowed not in tags.split()
    assert_password_absent(registry.password, cluster, result)


def test_wrong_password_fails_with_the_registry_message(
    cluster: Cluster, registry: Registry, tmp_path: Path, local_dockerfile
) -> None:
    cluster.start_worker("w1", extra=[f"--allow-push={registry.address}/app"])
    dockerfile = local_dockerfile("FROM busybox\nRUN echo wrong-password\n")
    wrong = "not-the-Password-9d1c"
    result = cluster.submit(
        dockerfile, *push_args(registry, tmp_path, "app", password=wrong)
    )
    assert result.returncode == 1
    assert "push to" in result.stderr
    assert (
        "unauthorized" in result.stderr.lower()
        or "authentication" in result.stderr.lower()
    )
    assert "retrying" not in result.stdout  # a refusal is not retried
    assert_password_absent(wrong, cluster, result)


def test_push_to_a_repository_not_allowed_is_refused_before_building(
    cluster: Cluster, registry: Registry, tmp_path: Path, local_dockerfile
) -> None:
    cluster.start_worker("w1", extra=[f"--allow-push={registry.address}/app"])
    dockerfile = local_dockerfile("FROM busybox\nRUN echo should-not-run\n")
    result = cluster.submit(dockerfile, *push_args(registry, tmp_path, "other"))
    assert result.returncode == 1
    assert f"this worker may not push to {registry.address}/other" in result.stderr
    assert "should-not-run" not in result.stdout
    assert "Step 1" not in result.stdout


def test_transient_push_failure_is_retried_and_said(
    cluster: Cluster, tmp_path: Path, local_dockerfile
) -> None:
    # Nothing listens on this port: the engine reports "connection refused".
    address = f"127.0.0.1:{free_port()}"
    cluster.start_worker("w1", extra=[f"--allow-push={address}/app"])
    dockerfile = local_dockerfile("FROM busybox\nRUN echo retry-me\n")
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    result = cluster.submit(dockerfile, f"--push-to={address}/app:v1",
                            "--push-user=u", f"--push-password={secret}")  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.count("retrying in") == 2
    assert "attempt 3 of 3" in result.stdout
    assert "connection refused" in result.stderr.lower()


def assert_password_absent(password: str, cluster: Cluster, *results) -> None:
    """No log of any process, nor any output, holds the password."""
    texts = [p.log for p in cluster.processes]
    texts += [r.stdout + r.stderr for r in results]
    assert texts and all(password not in text for text in texts)


def test_option_disguised_as_repository_runs_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_worker("w1")
    marker = tmp_path / "pwned"
    result = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", "--", f"--upload-pack=touch {marker};", "abcd"
    )
    assert result.returncode == 1
    assert "must be a git://, http://, https://, ssh:// URL" in result.stderr
    assert not marker.exists()


def test_repository_cannot_redirect_the_clients_dockerfile(
    cluster: Cluster, git_server: GitServer, tmp_path: Path, local_dockerfile
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("ORIGINAL\n")
    repo = git_server.new_repo("trap.git")
    (repo.path / ".build-worker.Dockerfile").symlink_to(victim)
    commit = repo.commit("trap", {"hello.txt": "hi\n"})
    cluster.start_worker("w1")
    dockerfile = local_dockerfile(
        "FROM busybox\nCOPY hello.txt /\nRUN cat /hello.txt\n"
    )
    result = cluster.submit_repo(dockerfile, git_server.url("trap.git"), commit)
    assert victim.read_text() == "ORIGINAL\n"
    assert result.returncode == 0, result.stdout + result.stderr
