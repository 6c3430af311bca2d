"""Progress of a conformance run, on stderr, so a slow run can be told from a stuck one.

- On a terminal: one line redrawn in place, in the style of the load progress bar::

      conform cases [##########----------]  212/431  1 failed  y_many_tensors [cpu]  38s

- Elsewhere (a CI log, a pipe): a short line every ``every`` seconds and at each phase's end::

      conform: cases 212/431 done, 1 failed, running y_many_tensors [cpu] (38 s)

- Quiet: nothing.

A run has phases (the reference loader's verdicts on corrupted property cases, the cases, the
comparison with upstream), each with its own total. Messages the run logs (``log``) are printed
on lines of their own without breaking the bar. stdout is never written, so ``--json -`` stays
clean.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, TextIO

#: How often a line is written where stderr is not a terminal.
EVERY_S = 5.0
#: The bar is redrawn at most this often.
REDRAW_S = 0.1


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """``mode``: ``"auto"`` (a bar on a terminal, lines elsewhere), ``"bar"``, ``"lines"`` or
    ``"quiet"``. Thread-safe: the run's worker threads report from several threads."""

    def __init__(self, stream: Optional[TextIO] = None, mode: str = "auto", every: float = EVERY_S,
                 width: int = 20, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "lines"
        if mode not in ("bar", "lines", "quiet"):
            raise ValueError(f"progress mode {mode!r}: expected auto, bar, lines or quiet")
        self.mode = mode
        self.every = every
        self.width = width
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._phase = ""
        self._total = 0
        self._done = 0
        self._failed = 0
        self._current = ""
        self._last = -1.0
        self._bar_shown = False
        self._phase_ended = ""
        # A case can run for minutes (up to --timeout): a ticker keeps the elapsed time and the
        # periodic lines coming while nothing else is reported.
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    # -- what the run reports ----------------------------------------------------------

    def phase(self, name: str, total: int) -> None:
        """A new phase of ``total`` items begins."""
        with self._lock:
            self._end_line()
            self._phase, self._total, self._done, self._current = name, total, 0, ""
            self._last = -1.0
            self._show(force=True)
            if self._ticker is None and self.mode != "quiet":
                self._ticker = threading.Thread(target=self._tick, name="conform-progress", daemon=True)
                self._ticker.start()

    def start(self, what: str) -> None:
        with self._lock:
            self._current = what
            self._show()

    def done(self, failed: bool = False) -> None:
        with self._lock:
            self._done += 1
            self._failed += int(failed)
            self._show(force=self._done == self._total)

    def log(self, message: str) -> None:
        """A message on a line of its own."""
        with self._lock:
            self._clear()
            self._write(message + "\n")
            self._show(force=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._end_line()
            self._clear()

    @property
    def failed(self) -> int:
        return self._failed

    # -- drawing ---------------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                self._show(force=self.mode == "bar")

    def _elapsed(self) -> str:
        return f"{self._clock() - self._start:.0f}s"

    def _show(self, force: bool = False) -> None:
        if self.mode == "quiet" or not self._phase:
            return
        now = self._clock()
        if self.mode == "bar":
            if force or now - self._last >= REDRAW_S:
                self._last = now
                frac = self._done / self._total if self._total else 1.0
                filled = int(min(max(frac, 0.0), 1.0) * self.width)
                failed = f"  {self._failed} failed" if self._failed else ""
                line = (f"conform {self._phase} [{'#' * filled}{'-' * (self.width - filled)}] "
                        f"{self._done:>4}/{self._total}{failed}  {self._current}  {self._elapsed()}")
                self._write("\r" + line[:160] + "\x1b[K")
                self._bar_shown = True
        elif self._done == self._total and self._done:
            self._end_line()
        elif self._last < 0 or now - self._last >= self.every:
            if self._last >= 0 or force:
                self._line()

    def _end_line(self) -> None:
        """The phase's last line (lines mode), once."""
        if self.mode == "lines" and self._phase and self._phase_ended != self._phase:
            self._phase_ended = self._phase
            self._line()

    def _line(self) -> None:
        self._last = self._clock()
        running = f", running {self._current}" if self._current and self._done < self._total else ""
        self._write(f"conform: {self._phase} {self._done}/{self._total} done, {self._failed} failed{running} "
                    f"({self._clock() - self._start:.0f} s)\n")

    def _clear(self) -> None:
        if self.mode == "bar" and self._bar_shown:
            self._write("\r\x1b[K")
            self._bar_shown = False

    def _write(self, text: str) -> None:
        if self.mode == "quiet":
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stderr never fails a run
            self.mode = "quiet"
