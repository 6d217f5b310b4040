"""``make idl`` reproduces the committed generated code exactly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "gateway" / "examples" / "gen"


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> contents of every file under ``root``, bytecode caches left out."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.skipif(
    shutil.which("thrift") is None or shutil.which("make") is None,
    reason="needs the thrift compiler and make",
)
def test_make_idl_reproduces_the_committed_code(tmp_path: Path) -> None:
    """Regenerating into a scratch directory gives byte-for-byte the committed tree."""
    out = tmp_path / "gen"
    done = subprocess.run(
        ["make", "--no-print-directory", "idl", f"GEN={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert tree(out) == tree(COMMITTED)
    assert not (tmp_path / "gen.tmp").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_idl_without_thrift_leaves_the_target_alone(tmp_path: Path) -> None:
    """A missing compiler fails before anything is deleted."""
    out = tmp_path / "gen"
    out.mkdir()
    (out / "keep.py").write_text("kept\n")
    done = subprocess.run(
        ["make", "--no-print-directory", "idl", f"GEN={out}", "THRIFT=no-such-thrift-compiler"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "not found" in done.stderr
    assert (out / "keep.py").read_text() == "kept\n"
