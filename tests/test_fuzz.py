"""The fuzz targets (fuzz/) as a quick smoke run: every seed, plus mutations of the seeds.

The targets are plain functions, so this needs no atheris; ``make fuzz`` is the real
campaign. A failure here is a broken wire-layer invariant: the target's assertion says which.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from fuzz import make_corpus
from fuzz.body_targets import callkey
from fuzz.stream_targets import theader
from fuzz.targets import TARGETS

CORPUS = Path(make_corpus.__file__).parent / "corpus"
MUTATIONS = 1000  # per target: about 6000 inputs in all, a few seconds


def _seeds(target: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / target).iterdir())]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """What libFuzzer does most: change, insert or erase a few bytes."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        at = rng.randrange(len(out) + 1)
        if op == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif op == 1:
            out[at:at] = bytes([rng.randrange(256)] * rng.randrange(1, 5))
        else:
            del out[at : at + rng.randrange(1, 5)]
    return bytes(out)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_holds_on_seeds_and_mutations(target: str) -> None:
    """Each fuzz target's invariants hold on its seed corpus and on mutations of it."""
    seeds = _seeds(target)
    assert len(seeds) >= 10, "the seed corpus is missing: python -m fuzz.make_corpus"
    rng = random.Random(target)
    run = TARGETS[target]
    for seed in seeds:
        run(seed)
    for _ in range(MUTATIONS):
        run(_mutate(rng, rng.choice(seeds)))


def test_committed_corpus_is_what_the_generator_writes(tmp_path: Path) -> None:
    """fuzz/corpus/ is exactly the output of ``python -m fuzz.make_corpus`` (deterministic)."""
    make_corpus.main(["--out", str(tmp_path)])
    for target in TARGETS:
        made = {p.name: p.read_bytes() for p in (tmp_path / target).iterdir()}
        committed = {p.name: p.read_bytes() for p in (CORPUS / target).iterdir()}
        assert made == committed, f"fuzz/corpus/{target} is stale: python -m fuzz.make_corpus"


# Issue 16 defects the targets caught before the `wire` merge fixed them (they were
# KNOWN_DEFECTS, fuzz/model.py, with strict xfails here): the inputs that showed them, checked
# with every invariant on.
BOOL2 = b"\x02\x00\x01\x02\x00"  # binary body: bool field 1 sent as byte 0x02
# callkey input: binary, largest limits, op 0 (replace a byte), at 3 (the bool), by 0x01.
BOOL2_VS_TRUE = b"\x00" + b"\x02\x02\x02\x02" + b"\x00" + b"\x00\x03" + b"\x01" + BOOL2
# theader inputs, max_frame_size 512: an encoded frame (mode 1) listing zlib 8 times around
# 416 incompressible bytes, and a raw frame (mode 0) listing it 126 times.
NOISE = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(13))
EIGHT_ZLIBS = (
    b"\x01\x00\x00\x00" + b"\x01" + b"\x00" + b"\0\0\0\x01" + b"\0\0" + b"\x08\x00" + NOISE
)
MANY_ZLIBS = (
    b"\x01\x00\x00\x00" + b"\x00" + b"\x0f\xff\0\0\0\0\0\0\0\x20" + b"\0\x7e"
    + b"\x01" * 126 + b"\0\0\0\0"
)  # fmt: skip


def test_binary_bool_two_does_not_share_the_key_of_true() -> None:
    """A binary bool byte 0x02 (false to Java and Go) never shares the key of true (0x01)."""
    callkey(BOOL2_VS_TRUE, known=frozenset())


@pytest.mark.parametrize("frame", [EIGHT_ZLIBS, MANY_ZLIBS], ids=["encoded-8", "raw-126"])
def test_listing_zlib_many_times_costs_at_most_four_inflations(frame: bytes) -> None:
    """A THeader frame listing zlib many times inflates at most 4 x max_frame_size bytes."""
    theader(frame, known=frozenset())
