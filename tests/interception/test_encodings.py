"""Content encodings decoded as httpx decodes them, in bounded pieces (llmbudget.encodings)."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest

from llmbudget.encodings import PIECE_BYTES, decoder_for

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # before Python 3.14
    from backports import zstd

BODY = json.dumps({"choices": [{"message": {"content": "word " * 5000}}], "usage": {"prompt_tokens": 9}}).encode()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODE = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}


def _decode(encoding: str, body: bytes, step: int) -> list[bytes]:
    decode = decoder_for(encoding)
    assert decode is not None
    return [piece for i in range(0, len(body), step) for piece in decode(body[i:i + step])]


@pytest.mark.parametrize("encoding", sorted(ENCODE))
@pytest.mark.parametrize("step", [1, 997, 1 << 30])  # byte by byte, chunks, all at once
def test_every_encoding_decodes_whole_in_any_chunking(encoding, step):
    assert b"".join(_decode(encoding, ENCODE[encoding](BODY), step)) == BODY


def test_raw_deflate_and_several_zstd_frames_are_read_as_httpx_reads_them():
    assert b"".join(_decode("deflate", _raw_deflate(BODY), 50)) == BODY
    frames = [zstd.compress(BODY[:1000]), zstd.compress(BODY[1000:5000]), zstd.compress(BODY[5000:])]
    assert b"".join(_decode("zstd", b"".join(frames), 1 << 30)) == BODY  # in one chunk
    decode = decoder_for("zstd")
    assert b"".join(piece for frame in frames for piece in decode(frame)) == BODY  # a frame a chunk


@pytest.mark.parametrize("encoding", sorted(ENCODE))
def test_a_small_body_that_expands_hugely_comes_in_bounded_pieces(encoding):
    bomb = ENCODE[encoding](b"\n" * (64 << 20))  # a few KB on the wire
    assert len(bomb) < 200_000
    sizes = [len(piece) for piece in _decode(encoding, bomb, 1 << 30)]
    assert sum(sizes) == 64 << 20 and max(sizes) <= 2 * PIECE_BYTES  # (brotli's bound is loose: about 2 MiB)
    assert len(sizes) >= 30  # 64 MiB came out a piece at a time, never whole


@pytest.mark.parametrize("encoding", sorted(ENCODE))
def test_a_body_not_in_its_encoding_raises(encoding):
    decode = decoder_for(encoding)
    with pytest.raises(Exception):  # noqa: B017 - each library's own error
        list(decode(b"\xff\xfe not compressed at all " * 10))


def test_a_coding_httpx_does_not_read_is_passed_over_as_httpx_passes_it():
    assert decoder_for("compress") is None and decoder_for("x-custom") is None and decoder_for("identity") is None
    # (x-gzip, which httpx does not read, is: the app fails on the body, but the answer was billed as generated)
    assert b"".join(_decode("x-gzip", gzip.compress(BODY), 997)) == BODY
    for encoding in ("gzip, x-custom", "x-custom, gzip", "compress, gzip, x-custom"):  # the rest is undone
        assert b"".join(_decode(encoding, gzip.compress(BODY), 997)) == BODY


@pytest.mark.parametrize("step", [1, 997, 1 << 30])
def test_several_codings_are_undone_last_first_in_bounded_pieces(step):
    body = brotli.compress(gzip.compress(BODY))  # "gzip, br": gzip applied first
    assert b"".join(_decode("gzip, br", body, step)) == BODY
    assert b"".join(_decode("Identity, GZIP , identity", gzip.compress(BODY), step)) == BODY
    bomb = gzip.compress(gzip.compress(b"\n" * (64 << 20)))
    sizes = [len(piece) for piece in _decode("gzip, gzip", bomb, step if step > 1 else 4096)]
    assert sum(sizes) == 64 << 20 and max(sizes) <= PIECE_BYTES


def test_zstd_through_python_zstandard_as_httpx_reads_it():
    from llmbudget.encodings import _zstandard

    frames = zstd.compress(BODY[:3000]) + zstd.compress(BODY[3000:])
    for step in (1, 700, 1 << 30):
        decode = _zstandard()
        assert b"".join(piece for i in range(0, len(frames), step) for piece in decode(frames[i:i + step])) == BODY
    sizes = [len(piece) for piece in _zstandard()(zstd.compress(b"\n" * (256 << 20)))]
    assert sum(sizes) == 256 << 20 and max(sizes) <= 32 << 20  # bounded by the input slice
