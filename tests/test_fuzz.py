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


# The known defects (fuzz/model.py KNOWN_DEFECTS), each as the input that shows it. Strict
# xfails: once the `wire` fix lands they pass, this fails, and the name leaves the list.
BOOL2 = b"\x02\x00\x01\x02\x00"  # binary body: bool field 1 sent as byte 0x02
# callkey input: binary, largest limits, op 0 (replace a byte), at 3 (the bool), by 0x01.
BOOL2_VS_TRUE = b"\x00" + b"\x02\x02\x02\x02" + b"\x00" + b"\x00\x03" + b"\x01" + BOOL2
# theader input: max_frame_size 512, an encoded frame (mode 1) listing zlib 8 times around
# 416 incompressible bytes, so that every layer inflates to about 420 bytes.
NOISE = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(13))
EIGHT_ZLIBS = (
    b"\x01\x00\x00\x00" + b"\x01" + b"\x00" + b"\0\0\0\x01" + b"\0\0" + b"\x08\x00" + NOISE
)


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="issue 16 defect 2: binary bool 0x02 keys as true"
)
def test_binary_bool_two_does_not_share_the_key_of_true() -> None:
    """A binary bool byte 0x02 (false to Java and Go) never shares the key of true (0x01)."""
    callkey(BOOL2_VS_TRUE, known=frozenset())


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="issue 16 defect 3: every listed transform inflates"
)
def test_listing_zlib_many_times_costs_at_most_four_inflations() -> None:
    """A THeader frame listing zlib eight times inflates at most 4 x max_frame_size bytes."""
    theader(EIGHT_ZLIBS, known=frozenset())


def test_known_defect_inputs_pass_while_the_defects_are_known() -> None:
    """With the defects listed as known, their inputs pass (so ``make fuzz`` runs past them)."""
    callkey(BOOL2_VS_TRUE)
    theader(EIGHT_ZLIBS)
