"""The demo's progress display on stderr: one live, redrawn line on a terminal, plain lines
(one per round change, at most one a second otherwise) when stderr is a file or a pipe."""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Feed it ``update(answered, backend_calls)`` as often as you like; ``finish()`` once."""

    def __init__(
        self, stream: TextIO, *, rounds: int, calls_per_round: int, live: bool | None = None
    ) -> None:
        self._stream = stream
        self._rounds = rounds
        self._per_round = max(1, calls_per_round)
        self._total = rounds * calls_per_round
        self.live = stream.isatty() if live is None else live
        self._last_line = ""
        self._last_round = 0
        self._last_plain = 0.0

    def round_of(self, answered: int) -> int:
        """The round under way: rounds run one after another, each ``calls_per_round`` calls."""
        return max(1, min(self._rounds, answered // self._per_round + 1))

    def line(self, answered: int, backend_calls: int) -> str:
        round_ = self.round_of(answered)
        return (
            f"round {round_}/{self._rounds}: {answered}/{self._total} calls answered,"
            f" {backend_calls} backend calls"
        )

    def update(self, answered: int, backend_calls: int) -> None:
        answered = min(answered, self._total)
        text = self.line(answered, backend_calls)
        if self.live:
            done = answered * BAR_WIDTH // max(1, self._total)
            bar = "#" * done + "." * (BAR_WIDTH - done)
            redrawn = f"\r[{bar}] {text}\x1b[K"
            if redrawn != self._last_line:
                self._stream.write(redrawn)
                self._stream.flush()
                self._last_line = redrawn
            return
        round_, now = self.round_of(answered), time.monotonic()
        changed = text != self._last_line
        if changed and (round_ != self._last_round or now - self._last_plain >= 1.0):
            self._emit(text, round_, now)

    def finish(self, answered: int, backend_calls: int) -> None:
        """The final state, always shown, and the live line ended with a newline."""
        self.update(answered, backend_calls)
        if self.live:
            self._stream.write("\n")
            self._stream.flush()
            return
        text = self.line(min(answered, self._total), backend_calls)
        if text != self._last_line:
            self._emit(text, self.round_of(answered), time.monotonic())

    def _emit(self, text: str, round_: int, now: float) -> None:
        print(text, file=self._stream, flush=True)
        self._last_line, self._last_round, self._last_plain = text, round_, now
