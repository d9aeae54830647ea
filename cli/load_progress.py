"""Progress of ``recs load events|items|users``: a bar with rows per second.

On a terminal the bar is redrawn in place at most four times a second::

    events [##########..........]  50%  1,250,000 rows  310,402 rows/s  file 3/6

Elsewhere (a log, CI) a plain line is printed every ``every_s`` seconds (10), so a long
load shows it is alive without flooding the log; a load shorter than that prints none.
"""

from __future__ import annotations

import time
from typing import TextIO

WIDTH = 20


def bar_line(p) -> str:
    """The bar for a :class:`jobs.ingest.generic.Progress`."""
    filled = int(round(p.fraction * WIDTH))
    return (f"{p.kind} [{'#' * filled}{'.' * (WIDTH - filled)}] {p.fraction:4.0%}  "
            f"{p.rows:,} rows  {p.rows_per_s:,.0f} rows/s  file {p.file_index}/{p.files}")


class LoadProgress:
    """A ``progress`` callback for jobs.ingest.generic.load writing to ``out``."""

    def __init__(self, out: TextIO, every_s: float = 10.0, tty: bool | None = None,
                 clock=time.monotonic) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every_s = 0.25 if self.tty else every_s
        self.clock = clock
        self._next = clock() + self.every_s
        self._drawn = False
        self.lines = 0

    def __call__(self, p) -> None:
        now = self.clock()
        if now < self._next and p.fraction < 1.0:
            return
        if p.fraction >= 1.0 and not self._drawn:
            return  # a short load: the closing report line says it all
        self._next = now + self.every_s
        if self.tty:
            self.out.write("\r" + bar_line(p))
        else:
            self.out.write(bar_line(p) + "\n")
        self.out.flush()
        self._drawn = True
        self.lines += 1

    def close(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\n")
            self.out.flush()
