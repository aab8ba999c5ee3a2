"""Progress of long loops and a clean stop on Ctrl-C: for the training loop, the test and `maml_tf.compare`."""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from typing import Optional


class Progress:
    """Progress of a long loop: a one-line bar on a terminal; elsewhere (nohup, a log file) a line with the rate
    and ETA within the first `first_s` seconds, then every `every_s` seconds. The rate is the recent one (the
    last `window_s` seconds), not the average since start-up, which tracing and data loading drag down. `clock`:
    the time in seconds (a test's own clock)."""

    def __init__(self, total: int, enabled: bool, first_s: float = 20.0, every_s: float = 60.0,
                 window_s: float = 60.0, clock=time.time):
        self.total, self.clock = total, clock
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.first_s, self.every_s, self.window_s = first_s, every_s, window_s
        self.last = clock()
        self.printed = False
        self.samples = collections.deque()  # (time, iterations done) since the first finished iteration.

    def rate(self, itr: Optional[int] = None) -> float:
        """Iterations per second over the recent window (`itr`: the last finished 0-based iteration)."""
        now = self.clock()
        if itr is not None:
            self._sample(now, itr + 1)
        if len(self.samples) < 2:
            return 0.0
        t_old, n_old = self.samples[0]
        t_new, n_new = self.samples[-1]
        return (n_new - n_old) / max(t_new - t_old, 1e-9)

    def _sample(self, now: float, done: int) -> None:
        if not self.samples or done != self.samples[-1][1]:
            self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.popleft()

    def eta(self, itr: int) -> str:
        rate = self.rate(itr)
        if rate <= 0:
            return "unknown"
        return time.strftime("%H:%M:%S", time.gmtime((self.total - itr - 1) / rate))

    def update(self, itr: int):
        now = self.clock()
        self._sample(now, itr + 1)
        if self.terminal and now - self.last >= 0.5:
            self.last = now
            frac = (itr + 1) / max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * int(30 * frac):<30}] {itr + 1}/{self.total} {self.rate():.1f} it/s "
                             f"ETA {self.eta(itr)}")
            sys.stderr.flush()
        elif (self.lines and len(self.samples) > 1
              and now - self.last >= (self.every_s if self.printed else self.first_s)):
            self.last, self.printed = now, True
            print(f"[{itr + 1}/{self.total}: {self.rate():.2f} it/s, ETA {self.eta(itr)}]", flush=True)

    def close(self):
        if self.terminal:
            sys.stderr.write("\n")


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the running iteration, save, stop. A second Ctrl-C
    stops at once (the last checkpoint stays)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # Only there can Python handle signals.
            self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
