"""Response bodies' content encodings, decoded as the HTTP client decodes them, in bounded pieces.

The pipeline reads each answer as it passes to the app (its usage, its text) and must read it whatever the
server compressed it with: gzip and deflate (zlib's format or raw), and brotli and zstd with the packages httpx
decodes them with (it asks for an encoding only when it can decode it). A decoder is fed the body's chunks and
yields the decoded bytes in pieces of at most :data:`PIECE_BYTES`, so that a few compressed bytes that expand to a
gigabyte never sit in memory at once (the reader keeps what it needs of each piece and lets it go).
"""

from __future__ import annotations

import functools
import importlib
import zlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PIECE_BYTES", "Decoder", "codings", "decoder_for"]

#: The most a decoder yields at a time (brotli's bound is looser: about twice that).
PIECE_BYTES = 1 << 20

#: Feeds a chunk of the encoded body, yields its decoded pieces; raises on a body that is not validly encoded.
Decoder = Callable[[bytes], Iterator[bytes]]


def codings(header: str) -> list[str]:
    """The codings a ``Content-Encoding`` header lists, in the order they were applied, ``identity`` left out."""
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


def decoder_for(encoding: str) -> Decoder | None:
    """The decoder of a body sent with ``Content-Encoding: encoding`` (one coding, or several: ``gzip, br``, undone
    last first), or None when nothing is to be undone: as httpx does, a coding it does not read (``compress``, a
    name of the server's own, ``br`` without a brotli package) is passed over and the body read as the rest leave
    it, which the app's SDK then reads or fails on as the pipeline does."""
    decoders = [d for d in map(_decoder, codings(encoding)) if d is not None]
    if not decoders:
        return None
    chained = decoders[0]
    for inner in decoders[1:]:  # the last coding applied is undone first: each piece it yields goes through the rest
        chained = _chain(inner, chained)
    return chained


def _chain(first: Decoder, then: Decoder) -> Decoder:
    def decode(chunk: bytes) -> Iterator[bytes]:
        for piece in first(chunk):
            yield from then(piece)

    return decode


def _decoder(encoding: str) -> Decoder | None:
    """One coding's decoder."""
    if encoding in ("gzip", "x-gzip"):  # (httpx reads no x-gzip: the app fails on it, but it was billed as read)
        return _zlib(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
    if encoding == "deflate":
        return _zlib(zlib.decompressobj, raw_fallback=True)
    if encoding == "br":
        return _brotli()
    if encoding == "zstd":
        return _zstd()
    return None


def _zlib(make: Callable[[], Any], *, raw_fallback: bool = False) -> Decoder:
    """gzip or deflate; with ``raw_fallback``, raw deflate when the first bytes are not zlib's format."""
    state = {"decoder": make(), "read": False}

    def decode(chunk: bytes) -> Iterator[bytes]:
        decoder = state["decoder"]
        try:
            data = decoder.decompress(chunk, PIECE_BYTES)
        except zlib.error:
            if state["read"] or not raw_fallback:
                raise
            decoder = state["decoder"] = zlib.decompressobj(-zlib.MAX_WBITS)
            data = decoder.decompress(chunk, PIECE_BYTES)
        state["read"] = True
        while data:
            yield data
            if len(data) < PIECE_BYTES:  # short of the limit: zlib took all the input and gave all it could
                return
            data = decoder.decompress(decoder.unconsumed_tail, PIECE_BYTES)

    return decode


@functools.cache
def _module(*names: str) -> Any:
    """The first of the modules ``names`` that imports, or None; looked for once (a failed import searches the
    whole path again each time)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _brotli() -> Decoder | None:
    brotli = _module("brotli", "brotlicffi")  # Brotli's, and brotlicffi (the names httpx reads br with)
    if brotli is None:
        return None
    decompressor = brotli.Decompressor()
    step = getattr(decompressor, "process", None) or decompressor.decompress  # Brotli's name, brotlicffi's
    try:
        step(b"", output_buffer_limit=PIECE_BYTES)
    except TypeError:  # a release before 1.2, which cannot bound its output: a chunk at a time, as httpx reads it

        def whole(chunk: bytes) -> Iterator[bytes]:
            data = step(chunk)
            if data:
                yield data

        return whole

    def decode(chunk: bytes) -> Iterator[bytes]:
        data = step(chunk, output_buffer_limit=PIECE_BYTES)
        while data:
            yield data
            data = step(b"", output_buffer_limit=PIECE_BYTES)

    return decode


#: Compressed bytes given python-zstandard at a time: a zstd block expands at most 32,768 times, so a slice of
#: this much gives at most 32 MiB (it has no bound of its own on what one call returns).
_ZSTANDARD_SLICE = 1024


def _zstd() -> Decoder | None:
    module = _module("compression.zstd", "backports.zstd")  # Python 3.14's, and its backport (httpx2's choice)
    if module is None:
        return _zstandard()  # httpx's choice
    state = {"decoder": module.ZstdDecompressor()}

    def decode(chunk: bytes) -> Iterator[bytes]:
        data = chunk
        while True:
            decoder = state["decoder"]
            if decoder.eof:  # a body of several frames: the next one starts where this one ended
                data = decoder.unused_data + data
                if not data:
                    return
                decoder = state["decoder"] = module.ZstdDecompressor()
            piece = decoder.decompress(data, max_length=PIECE_BYTES)
            data = b""
            if piece:
                yield piece
            elif not decoder.eof:
                return
            if decoder.needs_input and not decoder.eof:
                return

    return decode


def _zstandard() -> Decoder | None:
    zstandard = _module("zstandard")
    if zstandard is None:
        return None
    state = {"decoder": zstandard.ZstdDecompressor().decompressobj()}

    def decode(chunk: bytes) -> Iterator[bytes]:
        for start in range(0, len(chunk), _ZSTANDARD_SLICE):
            data = chunk[start:start + _ZSTANDARD_SLICE]
            while data:
                decoder = state["decoder"]
                if decoder.eof:  # the next frame of a body of several (``data`` starts it)
                    decoder = state["decoder"] = zstandard.ZstdDecompressor().decompressobj()
                piece = decoder.decompress(data)
                data = decoder.unused_data if decoder.eof else b""
                if piece:
                    yield piece

    return decode
