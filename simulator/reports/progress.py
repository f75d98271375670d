"""A progress bar on stderr without dependencies: one line rewritten in place, with % and ETA.

Long simulations (millions of moments) should show they are alive; a pipe or a log file should
not fill with carriage returns, so the bar draws only on a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _hms(seconds: float) -> str:
    s = int(max(0.0, seconds) + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Callable with the fraction done (0..1); redraws at most every `interval` seconds."""

    def __init__(self, label: str = "simulating", stream: TextIO | None = None, width: int = 30,
                 interval: float = 0.2, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled if enabled is not None else _isatty(self.stream)
        self.label, self.width, self.interval = label, width, interval
        self.start = time.monotonic()
        self._last = -1.0
        self._drawn = False
        self.frac = 0.0
        self.detail = ""

    def __call__(self, frac: float, detail: str | None = None) -> None:
        """Record progress (and a short note such as "12/200 points") and redraw if it is time."""
        self.frac = min(1.0, max(0.0, float(frac))) if frac == frac else self.frac  # NaN: keep
        if detail is not None:
            self.detail = detail
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and self.frac < 1.0:
            return
        self._last = now
        self.stream.write("\r" + self.line(now - self.start))
        self.stream.flush()
        self._drawn = True

    def line(self, elapsed: float) -> str:
        f = self.frac
        filled = int(round(f * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        eta = _hms(elapsed * (1 - f) / f) if f > 0.001 else "?"
        note = f" {self.detail}" if self.detail else ""
        return f"{self.label} {f:6.1%} [{bar}]{note} {_hms(elapsed)} elapsed, ETA {eta} "

    def close(self) -> None:
        """Erase the line so what is printed next starts clean."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * (len(self.line(0)) + 20) + "\r")
            self.stream.flush()
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
