"""Time left in training, from a smoothed time per iteration (shown in the progress line)."""

from __future__ import annotations


class Eta:
    """Seconds per optimizer step, an exponential moving average over log intervals (validation excluded,
    so it does not jump after each one), and the time the remaining steps take at that pace."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing  # the weight of the newest interval
        self.seconds_per_iter: float | None = None

    def update(self, seconds: float, iterations: int) -> None:
        if iterations <= 0:
            return
        pace = seconds / iterations
        old = self.seconds_per_iter
        self.seconds_per_iter = pace if old is None else (1 - self.smoothing) * old + self.smoothing * pace

    def left(self, iterations_left: int) -> str:
        """h:mm:ss for the remaining iterations ("?" before the first interval)."""
        if self.seconds_per_iter is None:
            return "?"
        total = round(self.seconds_per_iter * max(iterations_left, 0))
        return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"
