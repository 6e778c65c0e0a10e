"""The before/after snapshot every hostile case compares (:func:`.conftest.files_under`)."""

from __future__ import annotations

import os

import pytest

from .conftest import files_under


def test_a_file_rewritten_in_place_is_a_change(tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "result.png"
    target.write_bytes(b"the user's bytes")
    before = files_under(tmp_path)
    assert files_under(tmp_path) == before  # nothing touched: equal
    target.write_bytes(b"THE USER'S BYTES")  # same name, same size, other bytes
    assert files_under(tmp_path) != before
    target.write_bytes(b"the user's bytes")
    os.symlink("result.png", tmp_path / "out" / "link")
    assert files_under(tmp_path) != before  # a new entry
    (tmp_path / "out" / "link").unlink()
    assert files_under(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_special_file_is_recorded_without_being_read(tmp_path):
    """A named pipe is never opened (reading one would wait forever); replacing it by a
    regular file of the same name is a change."""
    fifo = tmp_path / "scores.json"
    os.mkfifo(fifo)
    before = files_under(tmp_path)
    assert files_under(tmp_path) == before
    fifo.unlink()
    fifo.write_text("{}")
    assert files_under(tmp_path) != before
