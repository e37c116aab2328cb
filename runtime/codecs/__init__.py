"""The codec registry: the one place that maps a codec name to its class."""

from __future__ import annotations

from runtime.codecs.base import Codec, Progress
from runtime.codecs.binary import BinaryCodec
from runtime.codecs.fp16 import Fp16Codec
from runtime.codecs.fp32 import Fp32Codec
from runtime.codecs.pq import PqCodec
from runtime.codecs.rowwise import Int2Codec, Int4Codec, Int8Codec
from runtime.errors import UnknownCodec

CODECS: dict[str, type[Codec]] = {
    cls.name: cls for cls in (Fp32Codec, Fp16Codec, Int8Codec, Int4Codec, Int2Codec, BinaryCodec, PqCodec)
}


def codec_class(name: str) -> type[Codec]:
    try:
        return CODECS[name]
    except KeyError:
        raise UnknownCodec(f"unknown codec {name!r}; known codecs: {', '.join(CODECS)}") from None


__all__ = ["CODECS", "Codec", "Progress", "codec_class"]
