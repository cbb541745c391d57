"""write_secret_file: owner-only, atomic replacement of files holding keys and tokens."""

from __future__ import annotations

import os
import stat

import pytest

from sealedml.secretfile import write_secret_file


def test_creates_an_owner_only_file_in_a_private_new_folder(tmp_path):
    target = tmp_path / "keys" / "nested" / "secret.bin"
    write_secret_file(target, b"first")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700


def test_replaces_an_existing_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "token"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    write_secret_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "token"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_secret_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
