"""A dependency-free progress line with an ETA, written to stderr."""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """``Progress(total, label).advance(note)``: prints ``label  k/total  elapsed  ETA  note``."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def eta(self) -> float:
        if self.done == 0:
            return float("nan")
        elapsed = time.perf_counter() - self.start
        return elapsed / self.done * (self.total - self.done)

    def line(self, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        eta = self.eta()
        eta_text = format_seconds(eta) if eta == eta else "?"
        counts = f"{self.label}  {self.done}/{self.total}"
        return f"{counts}  elapsed {format_seconds(elapsed)}  ETA {eta_text}  {note}".rstrip()

    def advance(self, note: str = "", amount: int = 1) -> None:
        self.done += amount
        if not self.enabled:
            return
        end = "\r" if self._interactive and self.done < self.total else "\n"
        print(self.line(note), file=self.stream, end=end, flush=True)

    def close(self) -> None:
        if self.enabled and self._interactive:
            print(file=self.stream, flush=True)
