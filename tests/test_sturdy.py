"""Sturdy references and `.cap` files: round trips and every malformed form."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from build_api.errors import CapFileError
from build_api.keys import SecretKey, b64url
from build_api.sturdy import SturdyRef, parse_sturdy_ref, read_cap_file, write_cap_file

FINGERPRINT = b64url(bytes(range(32)))
GOOD = f"capnp://sha-256:{FINGERPRINT}@sched.example:9000/{b64url(b'secret-id')}"


def test_round_trip() -> None:
    ref = parse_sturdy_ref(GOOD + "\n")
    assert ref == SturdyRef(FINGERPRINT, "sched.example", 9000, b"secret-id")
    assert str(ref) == GOOD


@pytest.mark.parametrize(
    "host", ["sched.example.org", "127.0.0.1", "my_host", "a-b.c."]
)
def test_ordinary_hosts_are_accepted(host: str) -> None:
    assert parse_sturdy_ref(f"capnp://sha-256:{FINGERPRINT}@{host}:1/eA").host == host


def test_ipv6_host_round_trip() -> None:
    ref = SturdyRef(FINGERPRINT, "::1", 9000, b"x")
    assert parse_sturdy_ref(str(ref)) == ref


def test_repr_hides_the_secret() -> None:
    assert "secret" not in repr(parse_sturdy_ref(GOOD))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("   \n", "it is empty"),
        ("http://x@y:1/abc", "does not start with 'capnp://'"),
        ("capnp://sched.example:9000/abc", "has no key fingerprint"),
        (
            f"capnp://md5:{FINGERPRINT}@h:1/abc",
            "fingerprint does not start with 'sha-256:'",
        ),
        ("capnp://sha-256:short@h:1/abc", "fingerprint is not a base64url SHA-256"),
        (f"capnp://sha-256:{FINGERPRINT}@:9000/abc", "it has no host"),
        (f"capnp://sha-256:{FINGERPRINT}@host/abc", "no valid port"),
        (f"capnp://sha-256:{FINGERPRINT}@host:99999/abc", "no valid port"),
        (f"capnp://sha-256:{FINGERPRINT}@host:\u00b2/abc", "no valid port"),
        (f"capnp://sha-256:{FINGERPRINT}@host:\u0661\u0662/abc", "no valid port"),
        (f"capnp://sha-256:{FINGERPRINT}@a..b:9000/abc", "is not a valid host"),
        (f"capnp://sha-256:{FINGERPRINT}@a\x00b:9000/abc", "is not a valid host"),
        (
            f"capnp://sha-256:{FINGERPRINT}@{'x' * 64}.org:9000/abc",
            "is not a valid host",
        ),
        (f"capnp://sha-256:{FINGERPRINT}@host:9000", "no service id"),
        (f"capnp://sha-256:{FINGERPRINT}@host:9000/", "no service id"),
        (f"capnp://sha-256:{FINGERPRINT}@host:9000/not*base64", "not valid base64url"),
    ],
)
def test_malformed_forms_each_have_their_own_message(text: str, message: str) -> None:
    with pytest.raises(CapFileError) as info:
        parse_sturdy_ref(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cap_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "submission.cap"
    ref = parse_sturdy_ref(GOOD)
    write_cap_file(path, ref)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_cap_file(path) == ref


def test_missing_cap_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CapFileError, match="does not exist"):
        read_cap_file(tmp_path / "nope.cap")


def test_malformed_cap_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.cap"
    path.write_text("garbage")
    with pytest.raises(CapFileError, match=r"bad.cap is malformed: it does not start"):
        read_cap_file(path)


def test_key_is_made_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "key.pem"
    first = SecretKey.load_or_generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = SecretKey.load_or_generate(path)
    assert first.fingerprint == second.fingerprint
    assert first.derive_secret("submission") == second.derive_secret("submission")
    assert first.derive_secret("submission") != first.derive_secret("admin")
