"""How often the verdict engine decides when nothing is there: null studies simulated through the same arrays code
a study's verdicts use (stats.describe, split_levels, combine), for the claim shapes of a study's config.

`python -m imgcollapse.verdicts.simulate [study] [--sims N]` prints, per claim shape, n and metric correlation,
P(supported) and P(decided) under no effect; tests/test_verdicts.py asserts P(decided) <= alpha for every one.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcollapse._version import version_line
from imgcollapse.config import CONF_DIR
from imgcollapse.errors import exit_codes_text
from imgcollapse.verdicts import stats
from imgcollapse.verdicts.rules import RULE, claim_combine, normalised


@dataclass(frozen=True)
class Shape:
    """A claim's structure: how it joins its tests, and per test its number of voting metrics and how it joins them."""

    combine: str
    tests: tuple[tuple[int, str], ...]  # (metrics, combine) per test

    @property
    def metrics(self) -> int:
        return sum(m for m, _ in self.tests)

    def __str__(self) -> str:
        parts = [f"{m} metric{'s' * (m > 1)}" + (f" ({how})" if m > 1 else "") for m, how in self.tests]
        return parts[0] if len(parts) == 1 else f"{len(parts)} tests ({self.combine}): " + " + ".join(parts)


def shapes_of(study: Mapping[str, Any]) -> dict[str, Shape]:
    """Each claim's shape, every listed metric voting (the most parts, the widest Bonferroni split)."""
    rule = {**RULE, **normalised(study.get("rule"))}
    out = {}
    for name, claim in (study.get("claims") or {}).items():
        tests = []
        for test in claim["tests"]:
            metrics = test.get("metrics") or [test["metric"]]
            how = {**rule, **normalised(claim.get("rule")), **normalised(test.get("rule"))}["combine"]
            tests.append((1 if isinstance(metrics, str) else len(metrics), how))
        out[name] = Shape(claim_combine(claim), tuple(tests))
    return out


def decide(d: np.ndarray, shape: Shape, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(supported, contradicted) per simulated study. `d`: (sims, metrics, n) paired differences, the metrics in
    test order; the default rule (lo > 0, hi < 0) at the levels error control assigns, as judge.judge applies it."""
    claim_s, claim_c = stats.split_levels(alpha / 2, alpha / 2, len(shape.tests), shape.combine)
    sims, start = d.shape[0], 0
    test_sup, test_con = [], []
    for m, how in shape.tests:
        level_s, level_c = stats.split_levels(claim_s, claim_c, m, how)
        st = stats.describe(d[:, start:start + m, :], level_s, level_c)
        start += m
        sup = np.nan_to_num(st["lo"], nan=-np.inf) > 0
        con = np.nan_to_num(st["hi"], nan=np.inf) < 0
        s, c = stats.combine(sup, con, np.ones((sims, m), dtype=bool), how, conflict=True)
        test_sup.append(s)
        test_con.append(c)
    votes = np.ones((sims, len(shape.tests)), dtype=bool)
    return stats.combine(np.stack(test_sup, -1), np.stack(test_con, -1), votes, shape.combine)


KINDS = ("normal", "discrete", "skewed", "heavy")


def null_draws(sims: int, metrics: int, n: int, rho: float, rng: np.random.Generator,
               discrete: bool = False, kind: str = "normal") -> np.ndarray:
    """Paired differences under no effect (mean 0): Gaussian with correlation `rho` between metrics (equicorrelated);
    `discrete` (or kind "discrete"): a quantised column (each d in {-1, 0, 1}), where seeds often agree exactly;
    "skewed": a centred lognormal (σ = 1), "heavy": Student t with 3 degrees of freedom: where the t-test's normality
    fails."""
    common = rng.standard_normal((sims, 1, n))
    own = rng.standard_normal((sims, metrics, n))
    d = np.sqrt(rho) * common + np.sqrt(1 - rho) * own
    if discrete or kind == "discrete":
        return np.round(d / 1.5)
    if kind == "skewed":
        return np.exp(d) - np.exp(0.5)
    if kind == "heavy":
        chi = rng.chisquare(3, (sims, 1, n))
        return d / np.sqrt(chi / 3)
    return d


def crossed_chains(sims: int, metrics: int, n: int, rng: np.random.Generator, *, main: float = 0.0,
                   interaction: float = 0.0, generation: int = 2, rho: float = 0.0, noise: float = 1.0
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """A crossed design's four chains (A via B, A's own loop, B via A, B's own loop), simulated: every generation adds
    its learner's own excess error (family A 1, family B 1 + `main`: B a worse sampler whoever it learns from), plus
    `interaction` where the learner learns from the other family, plus noise (sd `noise`, correlation `rho` between
    metrics). Returns ([Δ per chain, each (sims, metrics, n)], A's and B's generation-0 excess error); the true
    interaction d is generation × `interaction`."""
    cost = {"A": 1.0, "B": 1.0 + main}
    chains = [["A", "B"], ["A"], ["B", "A"], ["B"]]
    shape = (sims, 1, n, generation + 1)
    deltas, excess0 = [], {}
    for turns in chains:
        common, own = rng.standard_normal(shape), rng.standard_normal((sims, metrics, n, generation + 1))
        e = noise * (np.sqrt(rho) * common + np.sqrt(1 - rho) * own)
        e[..., 0] += cost[turns[0]]
        for g in range(1, generation + 1):
            learner, source = turns[g % len(turns)], turns[(g - 1) % len(turns)]
            e[..., g] += e[..., g - 1] + cost[learner] + interaction * (learner != source)
        deltas.append(e[..., generation] - e[..., 0])
        excess0.setdefault(turns[0], e[..., 0])
    return deltas, excess0["A"], excess0["B"]


def crossed_draws(sims: int, metrics: int, n: int, rng: np.random.Generator, **kwargs: Any) -> np.ndarray:
    """A crossed design's d (sims, metrics, n) as judge makes it (stats.interaction, one scale: the two families'
    mean generation-0 excess error) from `crossed_chains`."""
    deltas, excess_a, excess_b = crossed_chains(sims, metrics, n, rng, **kwargs)
    scale = 0.5 * (excess_a.mean(-1, keepdims=True) + excess_b.mean(-1, keepdims=True))
    return stats.interaction(*deltas, scale=np.where(scale > 0, scale, 1.0))


def deceleration_draws(sims: int, metrics: int, n: int, rng: np.random.Generator, *, generation: int,
                       growth: str = "linear", rate: float = 1.0, noise: float = 1.0) -> np.ndarray:
    """A deceleration's d (sims, metrics, n) as judge makes it (stats.deceleration) from curves of excess error
    growing `linear`ly (`rate` a generation: no deceleration) or `saturating` (toward 3 × `rate`, an
    exponential approach with time constant 1 generation), plus noise per generation."""
    g = np.arange(generation + 1, dtype=np.float64)
    mean = rate * g if growth == "linear" else 3 * rate * (1 - np.exp(-g))
    curves = mean + noise * rng.standard_normal((sims, metrics, n, generation + 1))
    return stats.deceleration(curves)


def null_table(shapes: Mapping[str, Shape], ns: Sequence[int] = (3, 5), rhos: Sequence[float] = (0.0, 0.5, 0.8),
               sims: int = 20_000, alpha: float = 0.05, seed: int = 0, kind: str = "normal") -> list[dict[str, Any]]:
    """P(supported) and P(decided) for every shape × n × correlation, by simulation."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, shape in shapes.items():
        for n in ns:
            for rho in rhos:
                sup, con = decide(null_draws(sims, shape.metrics, n, rho, rng, kind=kind), shape, alpha)
                rows.append({"claim": name, "shape": str(shape), "n": n, "rho": rho, "sims": sims, "kind": kind,
                             "supported": float(sup.mean()), "decided": float((sup | con).mean())})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the null table of a study's claims (default: claims)."""
    parser = argparse.ArgumentParser(prog="python -m imgcollapse.verdicts.simulate", description=__doc__.split("\n")[0],
                                     epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("imgcollapse.verdicts.simulate"))
    parser.add_argument("study", nargs="?", default="claims", help="a study of conf/study (default: claims)")
    parser.add_argument("--sims", type=int, default=20_000, help="simulated null studies per cell")
    args = parser.parse_args(argv)
    import yaml

    study = yaml.safe_load((CONF_DIR / "study" / f"{args.study}.yaml").read_text())
    alpha = float({**RULE, **normalised(study.get("rule"))}["alpha"])
    print(f"| claim | shape | differences | n | metric correlation | P(supported) | P(decided) |  (alpha {alpha}, "
          f"{args.sims} sims)")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = null_table(shapes_of(study), sims=args.sims, alpha=alpha)
    for kind in KINDS[1:]:  # where the t-test's assumptions fail: independent metrics, the two seed counts
        rows += null_table(shapes_of(study), rhos=(0.0,), sims=args.sims, alpha=alpha, kind=kind)
    for row in rows:
        print(f"| {row['claim']} | {row['shape']} | {row['kind']} | {row['n']} | {row['rho']} | "
              f"{100 * row['supported']:.2f}% | {100 * row['decided']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
