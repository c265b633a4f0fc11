"""Does a batch of inputs, as a whole, look like the images the model was checked on?

The input guard judges one file at a time and lets through brain MRI slices from a collection
the model never saw (docs/RESULTS.md §23: 95 % of external-dev, a third of it answered right).
As a batch, though, such slices sit high in the guard's score distribution. The model file keeps
the median OOD score of the images its guard threshold was set on (`guard.reference_median`);
for images like those, about half of a batch scores above it. `site_shift` counts the share of
a batch above that median and warns when the share is at least `SHIFT_SHARE` and a one-sided
binomial (sign) test gives p < `ALPHA`: the effect size keeps a large batch with a slight shift
quiet, the test keeps a small batch quiet by chance. SHIFT_SHARE was set on perturbed copies of
validation images (docs/RESULTS.md §24).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MIN_IMAGES = 20
"""Fewest scored images a batch needs before it is judged."""
SHIFT_SHARE = 0.75
"""Share of a batch above the reference median at or over which it counts as shifted: 0.05 above
the largest share of perturbed validation copies (blur, 0.70; docs/RESULTS.md §24.2)."""
ALPHA = 1e-3
"""One-sided p-value under which the share counts as more than chance."""


def reference_median(meta: dict[str, Any]) -> float | None:
    """The model file's reference median OOD score (None: no guard, or fitted before it)."""
    value = meta.get("guard", {}).get("reference_median")
    return None if value is None else float(value)


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, 0.5))


def site_shift(scores: Iterable[float | None], median: float | None) -> dict[str, Any] | None:
    """The batch's share above `median` and whether it counts as shifted; None when the model
    has no reference or fewer than MIN_IMAGES files were scored."""
    finite = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
    if median is None or len(finite) < MIN_IMAGES:
        return None
    k = sum(s > median for s in finite)
    share, p = k / len(finite), binomial_tail(k, len(finite))
    return {
        "n": len(finite),
        "above_reference_median": k,
        "share": share,
        "p_value": p,
        "shifted": share >= SHIFT_SHARE and p < ALPHA,
    }


def shift_message(res: dict[str, Any]) -> str:
    """The one warning line `predict` prints for a shifted batch."""
    return (
        f"warning: these {res['n']} images do not look like the images this model was checked "
        f"on: {res['share']:.0%} of them score above its reference median (about half would; "
        f"p = {res['p_value']:.1g}). Expect accuracy far below its benchmark figures (model "
        "card: 'An independent collection'); measure it on labelled images of this site "
        "(brainmri evaluate --data DIR) or adapt it (brainmri adapt)."
    )
