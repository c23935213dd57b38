"""Why a solve produced no weights. The rebalancer keeps its last good targets on `SolveError`
and applies `on_short_history` on `InsufficientHistory`."""

from __future__ import annotations


class SolveError(RuntimeError):
    """The solve produced no usable weights: infeasible, solver failure, or bad inputs."""


class InsufficientHistory(SolveError):
    """Fewer bars than the configured minimum; `needed` and `got` count bars."""

    def __init__(self, needed: int, got: int) -> None:
        self.needed, self.got = needed, got
        super().__init__(f"insufficient history: needed {needed} bars, got {got}")

    def __reduce__(self):  # exceptions pickle by args; ours has two (the solve is in a worker)
        return (type(self), (self.needed, self.got))
