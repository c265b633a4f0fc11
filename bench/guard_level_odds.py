"""How likely is "≥ 99 % of the test split accepted" when the guard's threshold is a validation
quantile? The threshold's own sampling error, with no shift at all.

If the test images' OOD scores were exchangeable with the validation images', a threshold that
leaves k of the n_val validation scores above it refuses a share of new images distributed as
Beta(k + 1, n_val - k) (the coverage of an order statistic), so the number refused among n new
images is beta-binomial. For each k this prints the validation share accepted, the expected
number refused among the test images that reach the score, the probability that at most
`--allowed` are refused (the goal, after the image-statistics refusals), and the probability of
at least `--seen` refusals. Reads only sizes and counts; no image or score.

    python bench/guard_level_odds.py [--n-val 816] [--n 1307] [--allowed 9] [--seen 18] \
        [--out bench/results/shipped/guard_level_odds.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import betabinom


def odds(n_val: int, n: int, allowed: int, seen: int, ks: list[int]) -> list[dict]:
    rows = []
    for k in ks:
        b = betabinom(n, k + 1, n_val - k)
        rows.append(
            {
                "validation_above": k,
                "validation_accepted": round((n_val - k) / n_val, 5),
                "expected_refused": round(float(b.mean()), 2),
                "p_at_most_allowed": round(float(b.cdf(allowed)), 4),
                "p_at_least_seen": round(float(b.sf(seen - 1)), 4),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-val", type=int, default=816, help="validation images under the score")
    ap.add_argument("--n", type=int, default=1307, help="test images that reach the score")
    ap.add_argument("--allowed", type=int, default=9, help="score refusals the goal leaves")
    ap.add_argument("--seen", type=int, default=18, help="score refusals measured")
    ap.add_argument("--k", type=int, nargs="+", default=[0, 1, 2, 3, 4, 8])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = odds(args.n_val, args.n, args.allowed, args.seen, args.k)
    for r in rows:
        print(r)
    if args.out is not None:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=1) + "\n")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
