"""A bench's claims, declared before the run that decides them, and the decision.

A claim fixes its metric, target, direction, budget and seeds in code; a bench measures the
metric once per declared seed and `Claim.decide` says whether the claim holds: the mean over the
seeds meets the target (with `every_seed`, each seed's value must). The decision keeps every seed's value and names the seeds that miss, so a
claim that holds on average still shows where it does not. Fewer values than declared seeds leave
the claim "not decided" (a stored single-seed figure never reads as a pass). A bench stores
`decision["claim"]` (the declaration) in its JSON beside the figures.

Timing ratios come from interleaved rounds: `median_of_ratios` pairs the rounds, so load that
slowed one round slows both sides of its ratio.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

# "<=" / ">=": a value equal to the target meets it; "<" / ">": it must be strictly below / above.
DIRECTIONS = ("<=", ">=", "<", ">")
SYMBOLS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
HEADER = ["| claim | target | measured | holds | seeds that miss |", "|---|---|---|---|---|"]


@dataclass(frozen=True)
class Claim:
    key: str  # a stable name in the bench's JSON
    text: str  # what is claimed, in words, for the table
    metric: str  # the name of the measured figure in the bench's results
    target: float
    direction: str  # one of DIRECTIONS: "<=" at most the target, ">=" at least, "<" below, ">" above
    budget: Mapping[str, Any] = field(default_factory=dict)  # what one seed's measurement may spend
    seeds: tuple[int, ...] = (0, 1, 2)
    # True: every seed must meet the target, not only their mean (a bound that must hold each
    # time, such as a recovery time).
    every_seed: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds!r}")

    def meets(self, value: float) -> bool:
        return {"<=": value <= self.target, ">=": value >= self.target,
                "<": value < self.target, ">": value > self.target}[self.direction]

    def declaration(self) -> dict[str, Any]:
        """The claim as stored in a bench's JSON."""
        out = asdict(self)
        out["budget"], out["seeds"] = dict(self.budget), list(self.seeds)
        if not self.every_seed:
            del out["every_seed"]  # the usual rule: declarations stored before it existed read the same
        return out

    def decide(self, values: Mapping[int, Optional[float]]) -> dict[str, Any]:
        """The decision from one value per seed. A value of None is a seed whose run never produced
        the metric (e.g. a search that never reached its target): it misses. Values for seeds the
        claim did not declare are refused, since the seeds are fixed before the run."""
        undeclared = sorted(set(values) - set(self.seeds))
        if undeclared:
            raise ValueError(f"claim {self.key!r} declares seeds {list(self.seeds)}, got values for {undeclared}")
        per_seed = [{"seed": s, "value": values[s]} for s in self.seeds if s in values]
        measured = [v["value"] for v in per_seed if v["value"] is not None]
        missing_value = [v["seed"] for v in per_seed if v["value"] is None]
        decided = len(per_seed) == len(self.seeds)
        mean = statistics.fmean(measured) if measured else None
        holds = None
        if decided:
            holds = not missing_value and mean is not None and self.meets(mean) and not (
                self.every_seed and any(not self.meets(v) for v in measured))
        return {
            "claim": self.declaration(),
            "per_seed": per_seed,
            "seeds_measured": len(per_seed),
            "mean": mean,
            "std": statistics.stdev(measured) if len(measured) > 1 else (0.0 if measured else None),
            "min": min(measured) if measured else None,
            "max": max(measured) if measured else None,
            "decided": decided,
            "holds": holds,
            "seeds_missing": [v["seed"] for v in per_seed
                              if v["value"] is None or not self.meets(v["value"])],
        }


def verdict(decision: dict[str, Any]) -> str:
    """yes / no / not decided: k of n seeds measured."""
    if not decision["decided"]:
        declared = len(decision["claim"]["seeds"])
        return f"not decided: {decision['seeds_measured']} of {declared} seed{'s' * (declared != 1)} measured"
    return "yes" if decision["holds"] else "**no**"


def _number(value: Optional[float], fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def claim_row(decision: dict[str, Any], fmt: str = ".3f", detail: str = "") -> str:
    """One Markdown row under HEADER: claim | target | mean ± std (min..max) over N seeds | holds |
    seeds that miss (each with its value). `detail` is appended to the measured cell."""
    claim = decision["claim"]
    n = sum(v["value"] is not None for v in decision["per_seed"])
    if n == 0:
        measured = "not measured"
    elif n == 1:
        measured = f"{_number(decision['mean'], fmt)} over 1 seed"
    else:
        measured = (f"{decision['mean']:{fmt}} ± {decision['std']:{fmt}} "
                    f"({decision['min']:{fmt}}..{decision['max']:{fmt}}) over {n} seeds")
    if detail:
        measured += f"; {detail}"
    values = {v["seed"]: v["value"] for v in decision["per_seed"]}
    misses = ", ".join(f"seed {s} ({'no value' if values[s] is None else format(values[s], fmt)})"
                       for s in decision["seeds_missing"]) or "—"
    target = f"{SYMBOLS[claim['direction']]} {claim['target']:g}"
    return f"| {claim['text']} | {target} | {measured} | {verdict(decision)} | {misses} |"


def median_of_ratios(a_rounds: Sequence[float], b_rounds: Sequence[float]) -> float:
    """The median over rounds of a_i / b_i: each round's two figures were measured side by side."""
    if len(a_rounds) != len(b_rounds) or not a_rounds:
        raise ValueError(f"need the same number of rounds on both sides, at least one; got "
                         f"{len(a_rounds)} and {len(b_rounds)}")
    if any(b == 0 or not math.isfinite(b) for b in b_rounds):
        raise ValueError(f"the denominators must be finite and non-zero, got {list(b_rounds)}")
    return statistics.median(a / b for a, b in zip(a_rounds, b_rounds))
