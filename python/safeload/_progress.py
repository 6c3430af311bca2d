"""A progress bar for long loads, on stderr, with no dependency.

``load_checkpoint(progress=...)`` turns its argument into a callable of
``(bytes_done, bytes_total)`` with :func:`resolve`:

- ``True``: a bar on stderr, whatever stderr is;
- ``None`` (the default): a bar only when stderr is a terminal and the load
  is long: it has run for :data:`SHOW_AFTER_S` seconds without finishing, or
  it is at least :data:`SHOW_ABOVE_BYTES` in total. A short load prints
  nothing, a load written to a log file or a pipe prints nothing;
- ``False``: nothing;
- a callable: called as is.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO, Union

#: A load shows a bar (``progress=None``) once it has run this long ...
SHOW_AFTER_S = 2.0
#: ... or from its start when it is at least this many bytes.
SHOW_ABOVE_BYTES = 1 << 30
#: The bar is redrawn at most this often.
REDRAW_S = 0.1

Progress = Union[bool, None, Callable[[int, int], None]]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # unreachable


class ProgressBar:
    """``bar(done, total)`` draws ``label [#####-----] 42% 1.20/2.86 GiB
    1.9 GB/s ETA 1s`` on one line of ``stream``, redrawn in place; the line
    is ended when ``done == total``. ``always=False`` keeps it silent until
    the load proves long (see the module docstring)."""

    def __init__(self, label: str = "loading", stream: Optional[TextIO] = None, *,
                 always: bool = True, width: int = 30,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.always = always
        self.width = width
        self._clock = clock
        self._start = clock()
        self._last_draw = -1.0
        self._shown = False
        self._finished = False

    @property
    def shown(self) -> bool:
        """Whether anything was written."""
        return self._shown

    def __call__(self, done: int, total: int) -> None:
        if self._finished:
            return
        now = self._clock()
        finished = total >= 0 and done >= total
        if not self._shown and not self.always:
            long = total >= SHOW_ABOVE_BYTES or now - self._start >= SHOW_AFTER_S
            if not long or finished:
                if finished:
                    self._finished = True
                return
        if not finished and now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        self._draw(done, total, now - self._start, finished)
        if finished:
            self._finished = True

    def _draw(self, done: int, total: int, elapsed: float, finished: bool) -> None:
        frac = done / total if total > 0 else 1.0
        frac = min(max(frac, 0.0), 1.0)
        filled = int(frac * self.width)
        rate = done / elapsed if elapsed > 0 else 0.0
        tail = f"{rate / 1e9:.2f} GB/s"
        if finished:
            tail += f" in {elapsed:.1f}s"
        elif rate > 0:
            tail += f" ETA {max(total - done, 0) / rate:.0f}s"
        line = (f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {frac * 100:3.0f}% "
                f"{_size(done)}/{_size(total)} {tail}")
        try:
            self.stream.write("\r" + line + ("\n" if finished else ""))
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream never fails a load
            self._finished = True
            return
        self._shown = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def resolve(progress: Progress, label: str = "loading",
            stream: Optional[TextIO] = None) -> Optional[Callable[[int, int], None]]:
    """The callable a load reports ``(bytes_done, bytes_total)`` to, or None
    for no reporting at all."""
    if progress is False:
        return None
    if progress is True:
        return ProgressBar(label, stream)
    if progress is None:
        stream = stream if stream is not None else sys.stderr
        if not _is_terminal(stream):
            return None
        return ProgressBar(label, stream, always=False)
    if callable(progress):
        return progress
    raise TypeError(f"progress must be True, False, None or a callable of (bytes_done, bytes_total), "
                    f"not {type(progress).__name__}")
