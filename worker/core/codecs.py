"""Every compression codec a Kafka producer may use must decode here.

A partition holding one batch the worker cannot decompress stops (see
`worker.pipeline.fetching`); a missing codec library is found at start-up instead,
before joining the group, with one line saying what to install.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import codec

SAMPLE = b'{"event": "codec check"}' * 8
# name -> (compress, decompress), as aiokafka's record batches use them.
CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (codec.gzip_encode, codec.gzip_decode),
    "snappy": (codec.snappy_encode, codec.snappy_decode),
    "lz4": (codec.lz4_encode, codec.lz4_decode),
    "zstd": (codec.zstd_encode, codec.zstd_decode),
}


class CodecError(RuntimeError):
    """A compression codec is not available."""


def check_codecs() -> list[str]:
    """The codecs that work (all of them), or CodecError naming the first
    that does not."""
    for name, (compress, decompress) in CODECS.items():
        try:
            ok = decompress(compress(SAMPLE)) == SAMPLE
            problem = "" if ok else "decodes to different bytes"
        except Exception as exc:  # any failure: the library is missing or broken
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            raise CodecError(
                f"cannot decode {name}-compressed records ({problem}); the cramjam package "
                "provides snappy, lz4 and zstd: reinstall the worker with its dependencies"
            )
    return list(CODECS)
