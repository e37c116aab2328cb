"""The codec registry: the one place that maps a codec name to its class."""

from __future__ import annotations

from typing import Any

from runtime.codecs.base import Codec, Option, Prepared, Progress, TrainedState
from runtime.codecs.binary import BinaryCodec
from runtime.codecs.fp16 import Fp16Codec
from runtime.codecs.fp32 import Fp32Codec
from runtime.codecs.pq import PqCodec
from runtime.codecs.rowwise import Int2Codec, Int4Codec, Int8Codec
from runtime.codecs.rq import RqCodec
from runtime.codecs.shared import SharedCodec
from runtime.errors import UnknownCodec

CODECS: dict[str, type[Codec]] = {
    cls.name: cls
    for cls in (Fp32Codec, Fp16Codec, Int8Codec, Int4Codec, Int2Codec, BinaryCodec, PqCodec, RqCodec, SharedCodec)
}


def codec_class(name: str) -> type[Codec]:
    try:
        return CODECS[name]
    except (KeyError, TypeError):  # TypeError: a JSON list or object given for the name
        raise UnknownCodec(f"unknown codec {name!r}; known codecs: {', '.join(CODECS)}") from None


def codec_options() -> dict[str, list[tuple[str, Option]]]:
    """Every declared option name -> the (codec, option) pairs that declare it (CLI flags)."""
    found: dict[str, list[tuple[str, Option]]] = {}
    for name, cls in CODECS.items():
        for option in cls.options:
            found.setdefault(option.name, []).append((name, option))
    return found


def example_configs() -> list[dict[str, Any]]:
    """One configuration a codec and one more for each non-default choice of each of its options
    (every bool both ways), with `quick` values: the warm-up list and the test matrix."""
    configs: list[dict[str, Any]] = []
    for name, cls in CODECS.items():
        quick = {o.name: o.quick for o in cls.options if o.quick is not None}
        configs.append({"codec": name, **quick})
        for option in cls.options:
            values = (True,) if option.kind is bool and not option.default else option.choices
            for value in values:
                if value != option.default:
                    configs.append({"codec": name, **quick, option.name: value})
    return configs


__all__ = [
    "CODECS",
    "Codec",
    "Option",
    "Prepared",
    "Progress",
    "TrainedState",
    "codec_class",
    "codec_options",
    "example_configs",
]
