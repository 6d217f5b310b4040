"""The fuzz targets by name (``python -m fuzz.run NAME``, ``fuzz/corpus/NAME/``)."""

from __future__ import annotations

from collections.abc import Callable

from fuzz.body_targets import binscan, callkey, transcode_target, walk
from fuzz.stream_targets import framing, theader

TARGETS: dict[str, Callable[[bytes], None]] = {
    "framing": framing,
    "theader": theader,
    "binscan": binscan,
    "walk": walk,
    "callkey": callkey,
    "transcode": transcode_target,
}
