"""Runs one fuzz target under atheris: ``python -m fuzz.run TARGET [libFuzzer flags] [DIR...]``.

The wire layer (``gateway.thrift``) is instrumented for coverage; the targets and thrift's
own library are not (their branches are not what we want the fuzzer to explore). Flags and
corpus directories go to libFuzzer as given: the first directory receives new inputs, so
``make fuzz`` passes a scratch directory first and the committed seeds second.
"""

from __future__ import annotations

import sys


def main() -> None:
    usage = "usage: python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]"
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__}")
        return
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(usage)
    import atheris  # the `fuzz` extra; the targets themselves never need it

    with atheris.instrument_imports(include=["gateway.thrift"]):
        from fuzz.targets import TARGETS
    name = sys.argv.pop(1)
    target = TARGETS.get(name)
    if target is None:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
