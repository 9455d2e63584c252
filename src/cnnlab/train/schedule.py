"""Learning-rate schedules as pure functions of the global step (resumable by construction).

- "constant": the notes' recipe (Adam at a fixed 1e-3).
- "onecycle": linear warm-up from peak/10 to the peak over the first `warmup` share of the
  steps, then cosine decay to zero (Smith & Topin 2018, as in airbench).
- "cosine": cosine decay from the peak to zero, no warm-up.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "onecycle", "cosine")


def lr_at(
    step: float, total: int, peak: float, kind: str = "constant", warmup: float = 0.2
) -> float:
    """Learning rate at 0-based `step` of `total` steps (a fractional step: the clock budget's
    position, cnnlab.train.budget.Clock).

    Examples
    --------
    >>> [round(lr_at(s, 10, 1.0, "onecycle", warmup=0.2), 3) for s in (0, 2, 10)]
    [0.1, 1.0, 0.0]
    """
    if kind == "constant" or total <= 0:
        return peak
    frac = min(max(step / total, 0.0), 1.0)
    if kind == "onecycle":
        if frac < warmup:
            return peak * (0.1 + 0.9 * frac / warmup)
        frac = (frac - warmup) / (1.0 - warmup)
    elif kind != "cosine":
        raise ValueError(f"unknown schedule '{kind}' (known: {', '.join(SCHEDULES)})")
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))
