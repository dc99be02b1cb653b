"""Summary statistics over examples: mean, standard error and percentile-bootstrap intervals;
rates of yes/no outcomes with Wilson score intervals.

Conventions: statistics run over the *last* axis (examples), so a ``[layer, head, example]``
tensor gives ``[layer, head]`` summaries. Bootstrap resamples examples with replacement, the same
resample indices for every component (so intervals of different heads are comparable), seeded.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

__all__ = [
    "Summary",
    "summarize",
    "bootstrap_ci",
    "Proportion",
    "proportion",
    "wilson_interval",
    "PairedComparison",
    "SMALL_SAMPLE",
    "mcnemar_exact",
    "paired_comparison",
    "PairedDifference",
    "sign_flip_p",
    "paired_difference",
    "RateDifference",
    "rate_difference",
    "DetectableDifference",
    "detectable_difference",
    "pooled_detectable_difference",
]


# Below this many examples an interval is flagged as resting on few of them: a percentile
# bootstrap of 4 or 6 values looks precise and is not.
SMALL_SAMPLE = 20


def _check(values: torch.Tensor) -> None:
    if values.shape[-1] == 0:
        raise ValueError("no examples to summarize (last axis is empty)")
    if torch.isnan(values).any():
        raise ValueError(
            "values contain NaN; check the metric (e.g. a raw-logit ratio dividing by ~0)"
        )


def bootstrap_ci(
    values: Float[torch.Tensor, "... example"],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Float[torch.Tensor, "..."], Float[torch.Tensor, "..."]]:
    """Percentile bootstrap interval of the mean over the last axis.

    Raises:
        ValueError: no examples, NaN values, or ``level`` outside (0, 1).
    """
    _check(values)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = values.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    means = values.double()[..., idx].mean(-1)  # [..., n_boot]
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    low, high = torch.quantile(means, q, dim=-1)
    return low.to(values.dtype), high.to(values.dtype)


@dataclass(frozen=True)
class Summary:
    """Mean, standard error and bootstrap interval of a per-example quantity."""

    mean: float
    se: float
    ci_low: float
    ci_high: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("a summary needs at least one example")

    @property
    def small(self) -> bool:
        """Fewer than :data:`SMALL_SAMPLE` examples: the interval is not to be trusted."""
        return self.n < SMALL_SAMPLE

    def __str__(self) -> str:
        few = ", few examples" if self.small else ""
        return f"{self.mean:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] (n={self.n}{few})"

    def to_json(self) -> dict[str, float | int | bool]:
        """Every field by name (NaN as null)."""
        return {
            "mean": self.mean,
            "se": self.se,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "small": self.small,
        }


def summarize(
    values: Float[torch.Tensor, " example"], *, n_boot: int = 2000, seed: int = 0
) -> Summary:
    """Summary of a 1-D per-example tensor (SE uses the n-1 sample standard deviation)."""
    if values.ndim != 1:
        raise ValueError(
            f"summarize expects a 1-D tensor of examples, got shape {tuple(values.shape)}"
        )
    _check(values)
    n = values.numel()
    se = float(values.double().std(unbiased=True) / n**0.5) if n > 1 else float("nan")
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return Summary(float(values.double().mean()), se, float(low), float(high), n)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``k / n``; ``(nan, nan)`` when ``n == 0``.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at ``k = 0`` or ``n``.

    Raises:
        ValueError: ``k`` outside ``[0, n]`` or ``level`` outside (0, 1).
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return math.nan, math.nan
    z = (
        torch.distributions.Normal(0.0, 1.0)
        .icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64))
        .item()
    )
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """A rate ``k / n`` with its Wilson interval; ``n == 0`` gives NaN rate and bounds (not an
    error).

    Attributes:
        k: number of items with the outcome.
        n: number of items considered.
        rate: ``k / n`` (NaN when ``n == 0``).
        ci_low, ci_high: Wilson interval at ``level``.
        level: interval level.
    """

    k: int
    n: int
    rate: float
    ci_low: float
    ci_high: float
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.k <= self.n:
            raise ValueError(f"need 0 <= k <= n, got k={self.k}, n={self.n}")

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        few = ", few items" if self.n < SMALL_SAMPLE else ""
        return (
            f"{100 * self.rate:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] "
            f"({self.k}/{self.n}{few})"
        )

    def to_json(self) -> dict[str, float | int | None]:
        """``k``, ``n``, the rate and its interval (NaN as null), the level, and whether it is
        small."""
        nan = lambda x: None if math.isnan(x) else x  # noqa: E731 (JSON has no NaN)
        return {
            "k": self.k,
            "n": self.n,
            "rate": nan(self.rate),
            "ci_low": nan(self.ci_low),
            "ci_high": nan(self.ci_high),
            "level": self.level,
            "small": self.n < SMALL_SAMPLE,
        }


def proportion(k: int, n: int, level: float = 0.95) -> Proportion:
    """:class:`Proportion` of ``k`` out of ``n`` with a Wilson interval at ``level``.

    Raises:
        ValueError: ``k`` outside ``[0, n]`` or ``level`` outside (0, 1).
    """
    low, high = wilson_interval(k, n, level)
    return Proportion(k, n, k / n if n else math.nan, low, high, level)


# --------------------------------------------------------------------------- paired comparisons


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    ``b`` items have the outcome under A only, ``c`` under B only; under the null each discordant
    item is a fair coin, so ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c,
    1/2)``; ``1.0`` when there is no discordant item.

    Raises:
        ValueError: a negative count.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _json_fields(record) -> dict[str, float | int | bool | None]:
    """A dataclass's fields for JSON, NaN as ``None`` (JSON has no NaN)."""
    nan = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
    return {k: nan(v) for k, v in record.__dict__.items()}


def _paired_bootstrap(
    diffs: torch.Tensor, n_boot: int, level: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of the mean of per-item ``diffs``, items resampled (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diffs), (n_boot, len(diffs)), generator=gen)
    alpha = (1 - level) / 2
    quantiles = torch.tensor([alpha, 1 - alpha], dtype=diffs.dtype)
    return tuple(torch.quantile(diffs[idx].mean(-1), quantiles))


class _Paired:
    """What the paired results share: ``"+d [lo, hi] points, <test> (..., n=N)"`` and their JSON
    form; a subclass names its test (:meth:`_test`). Needs ``n``, ``diff``, ``ci_low``,
    ``ci_high`` and ``small`` fields."""

    def _test(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (no common items)"
        flag = ", few items" if self.small else ""
        return (
            f"{100 * self.diff:+.1f} [{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}] points, "
            f"{self._test()}{flag})"
        )

    def to_json(self) -> dict[str, float | int | bool | None]:
        """Every field by name (NaN as null)."""
        return _json_fields(self)


@dataclass(frozen=True)
class PairedComparison(_Paired):
    """Two methods' rates of an outcome on the same items, compared paired.

    Attributes:
        n: items scored by both.
        rate_a, rate_b: the two rates.
        diff: ``rate_a - rate_b``.
        ci_low, ci_high: paired percentile-bootstrap interval of ``diff`` (items resampled).
        b, c: discordant items (outcome under A only, under B only).
        p_value: exact McNemar p-value (:func:`mcnemar_exact`).
        small: fewer than :data:`SMALL_SAMPLE` items.
    """

    n: int
    rate_a: float
    rate_b: float
    diff: float
    ci_low: float
    ci_high: float
    b: int
    c: int
    p_value: float
    small: bool

    def _test(self) -> str:
        return f"McNemar p = {self.p_value:.3g} (b={self.b}, c={self.c}, n={self.n}"


def paired_comparison(
    a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """Compare the rates of a yes/no outcome of methods A and B scored on the same items.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or ``level`` outside (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(a)
    if n == 0:
        nan = math.nan
        return PairedComparison(0, nan, nan, nan, nan, nan, 0, 0, 1.0, True)
    x = torch.tensor([float(v) for v in a], dtype=torch.float64)
    y = torch.tensor([float(v) for v in b], dtype=torch.float64)
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    low, high = _paired_bootstrap(x - y, n_boot, level, seed)
    rate_a, rate_b = float(x.mean()), float(y.mean())
    return PairedComparison(
        n,
        rate_a,
        rate_b,
        rate_a - rate_b,
        float(low),
        float(high),
        only_a,
        only_b,
        mcnemar_exact(only_a, only_b),
        n < SMALL_SAMPLE,
    )


# Up to this many non-zero differences the sign-flip test enumerates every flip (2**16 rows).
_EXACT_FLIPS = 16


def sign_flip_p(
    diffs: Sequence[float | int], *, n_flips: int = 20000, seed: int = 0
) -> tuple[float, bool]:
    """Two-sided sign-flip (paired permutation) p-value of ``mean(diffs) = 0``, and whether exact.

    Under the null each item's difference is as likely to have either sign, so ``p`` is the share
    of sign assignments whose ``|mean|`` reaches the observed one. Zero differences cannot change
    under a flip and are left out of the enumeration. With at most 16 non-zero differences every
    assignment is enumerated (exact); beyond, ``n_flips`` seeded random assignments give
    ``(1 + hits) / (1 + n_flips)``. ``1.0`` when every difference is 0.

    Raises:
        ValueError: a non-finite difference or ``n_flips < 1``.
    """
    values = torch.tensor([float(d) for d in diffs], dtype=torch.float64)
    if not torch.isfinite(values).all() or n_flips < 1:
        raise ValueError("differences must be finite and n_flips >= 1")
    nonzero = values[values != 0]
    m = len(nonzero)
    if m == 0:
        return 1.0, True
    observed = float(nonzero.sum().abs())
    if m <= _EXACT_FLIPS:
        bits = (torch.arange(2**m).unsqueeze(1) >> torch.arange(m)) & 1
        signs = 1 - 2 * bits.to(torch.float64)
        sums = (signs * nonzero).sum(-1).abs()
        # A relative tolerance: sums equal to the observed one must count despite rounding.
        return float((sums >= observed * (1 - 1e-12)).double().mean()), True
    gen = torch.Generator().manual_seed(seed)
    signs = 1 - 2 * torch.randint(0, 2, (n_flips, m), generator=gen).to(torch.float64)
    hits = int(((signs * nonzero).sum(-1).abs() >= observed * (1 - 1e-12)).sum())
    return (1 + hits) / (1 + n_flips), False


@dataclass(frozen=True)
class PairedDifference(_Paired):
    """Two scores per item (``a`` and ``b``, e.g. one method's outcome and the mean outcome of
    several random draws on the same item), compared paired.

    Attributes:
        n: items.
        mean_a, mean_b: the two means.
        diff: ``mean_a - mean_b``.
        ci_low, ci_high: paired percentile-bootstrap interval of ``diff`` (items resampled).
        p_value: two-sided sign-flip p-value (:func:`sign_flip_p`).
        exact: the p-value enumerated every sign assignment.
        small: fewer than :data:`SMALL_SAMPLE` items.
    """

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    exact: bool
    small: bool

    def _test(self) -> str:
        return f"sign-flip p = {self.p_value:.3g} (n={self.n}"


def paired_difference(
    a: Sequence[float | int],
    b: Sequence[float | int],
    *,
    n_boot: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Compare per-item scores ``a`` and ``b`` paired: bootstrap interval and sign-flip p-value.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, a non-finite score, or ``level`` outside
            (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not a:
        nan = math.nan
        return PairedDifference(0, nan, nan, nan, nan, nan, 1.0, True, True)
    x = torch.tensor([float(v) for v in a], dtype=torch.float64)
    y = torch.tensor([float(v) for v in b], dtype=torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("paired scores must be finite")
    d = x - y
    low, high = _paired_bootstrap(d, n_boot, level, seed)
    p, exact = sign_flip_p(d.tolist(), seed=seed)
    return PairedDifference(
        len(d),
        float(x.mean()),
        float(y.mean()),
        float(d.mean()),
        float(low),
        float(high),
        p,
        exact,
        len(d) < SMALL_SAMPLE,
    )


# ----------------------------------------------------------------- independent rates compared


@dataclass(frozen=True)
class RateDifference:
    """The difference of two rates measured on *different* items (not paired), with Newcombe's
    hybrid score interval.

    Attributes:
        a, b: the two rates (:class:`Proportion`), ``diff = a.rate - b.rate``.
        diff: the difference (NaN when either rate has no items).
        ci_low, ci_high: Newcombe's interval (method 10 of Newcombe 1998), built from the two
            Wilson intervals; inside [-1, 1] and sensible at 0 or n, like Wilson's.
        small: either rate rests on fewer than :data:`SMALL_SAMPLE` items.
    """

    a: Proportion
    b: Proportion
    diff: float
    ci_low: float
    ci_high: float
    small: bool

    def __str__(self) -> str:
        if math.isnan(self.diff):
            return f"n/a (n={self.a.n} and {self.b.n})"
        flag = ", few items" if self.small else ""
        return (
            f"{self.diff:+.2f} [{self.ci_low:+.2f}, {self.ci_high:+.2f}] "
            f"({self.a.k}/{self.a.n} - {self.b.k}/{self.b.n}{flag})"
        )

    def to_json(self) -> dict[str, object]:
        """The difference, its interval and both rates (NaN as null)."""
        nan = lambda x: None if math.isnan(x) else x  # noqa: E731
        return {
            "diff": nan(self.diff),
            "ci_low": nan(self.ci_low),
            "ci_high": nan(self.ci_high),
            "small": self.small,
            "a": self.a.to_json(),
            "b": self.b.to_json(),
        }


def rate_difference(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> RateDifference:
    """``k1/n1 - k2/n2`` for two independent groups of items, with Newcombe's hybrid score
    interval: with Wilson intervals ``(l1, u1)`` and ``(l2, u2)``,
    ``[d - sqrt((p1 - l1)^2 + (u2 - p2)^2), d + sqrt((u1 - p1)^2 + (p2 - l2)^2)]``.

    Chosen over a bootstrap because it is deterministic, needs no resampling seed, and keeps its
    coverage near the nominal level at small n and at rates of 0 or 1, where a percentile
    bootstrap collapses to a point (Newcombe 1998, Statistics in Medicine 17:873). An empty group
    gives NaN (not an error).

    Raises:
        ValueError: a count outside ``[0, n]`` or ``level`` outside (0, 1).
    """
    a, b = proportion(k1, n1, level), proportion(k2, n2, level)
    small = min(n1, n2) < SMALL_SAMPLE
    if n1 == 0 or n2 == 0:
        return RateDifference(a, b, math.nan, math.nan, math.nan, small)
    d = a.rate - b.rate
    low = d - math.hypot(a.rate - a.ci_low, b.ci_high - b.rate)
    high = d + math.hypot(a.ci_high - a.rate, b.rate - b.ci_low)
    return RateDifference(a, b, d, low, high, small)


# ----------------------------------------------------------------- power of a paired comparison


def _z(p: float) -> float:
    """The standard normal quantile of ``p``."""
    return statistics.NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class DetectableDifference:
    """The smallest true paired difference of rates a comparison detects with the stated power.

    Attributes:
        difference: ``max((z_{1-alpha/2} + z_power) * sd / sqrt(n), z^2 / n)`` on the 0-1 scale,
            ``z = z_{1-alpha/2} + z_power``: the normal approximation, floored where the
            observed spread is too small to rest on (see :attr:`floored`).
        sd: the standard deviation of one item's difference it rests on.
        n: items.
        draws: control draws pooled per item (None: one comparison item by item).
        alpha: two-sided level of the test.
        power: probability of detecting a true difference of ``difference``.
        floored: the floor ``z^2 / n`` set the value: a true difference ``d`` of 0/1 outcomes
            needs the two sides to differ on at least a share ``d`` of the items, so the spread
            under the alternative is at least ``sqrt(d)``; a comparison whose observed items
            barely differ (a ceiling) cannot claim more power than that.
    """

    difference: float
    sd: float
    n: int
    draws: int | None
    alpha: float = 0.05
    power: float = 0.8
    floored: bool = False

    def __str__(self) -> str:
        pooled = "" if self.draws is None else f", {self.draws} draws pooled"
        floor = ", at its floor" if self.floored else ""
        return (
            f"{100 * self.difference:.1f} points (n={self.n}{pooled}, alpha {self.alpha}, "
            f"power {self.power:.0%}{floor})"
        )

    def to_json(self) -> dict[str, float | int | bool | None]:
        """The fields as a JSON-serializable dict."""
        return {
            "difference": self.difference,
            "sd": self.sd,
            "n": self.n,
            "draws": self.draws,
            "alpha": self.alpha,
            "power": self.power,
            "floored": self.floored,
        }

    def items_for(self, target: float) -> int:
        """Items needed to detect a true difference of ``target`` (same sd, alpha and power,
        the floor included).

        Raises:
            ValueError: ``target`` not in (0, 1].
        """
        if not 0 < target <= 1:
            raise ValueError(f"target must be in (0, 1], got {target}")
        z = _z(1 - self.alpha / 2) + _z(self.power)
        return max(math.ceil((z * self.sd / target) ** 2), math.ceil(z * z / target))


def _check_power(n: int, alpha: float, power: float) -> None:
    if n < 1:
        raise ValueError(f"need at least one item, got n={n}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")


def _detectable(sd: float, n: int, draws: int | None, alpha: float, power: float):
    z = _z(1 - alpha / 2) + _z(power)
    normal, floor = z * sd / math.sqrt(n), z * z / n
    return DetectableDifference(max(normal, floor), sd, n, draws, alpha, power, floor > normal)


def detectable_difference(
    p_discordant: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> DetectableDifference:
    """McNemar's minimum detectable difference for two methods scored 0/1 on the same ``n``
    items: ``(z_{1-alpha/2} + z_power) * sqrt(p_discordant / n)``, where ``p_discordant`` is the
    share of items on which the two disagree (the normal approximation to the exact test, under
    which an item's difference is -1, 0 or 1 with variance about ``p_discordant``); never below
    ``z^2 / n`` (:attr:`DetectableDifference.floored`).

    Raises:
        ValueError: ``p_discordant`` outside [0, 1], ``n < 1``, alpha or power outside (0, 1).
    """
    _check_power(n, alpha, power)
    if not 0 <= p_discordant <= 1:
        raise ValueError(f"p_discordant must be in [0, 1], got {p_discordant}")
    return _detectable(math.sqrt(p_discordant), n, None, alpha, power)


def pooled_detectable_difference(
    method: Float[torch.Tensor, " item"],
    controls: Float[torch.Tensor, "item draw"],
    *,
    n: int | None = None,
    draws: int | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> DetectableDifference:
    """The detectable difference of a method against control draws pooled per item (an item's
    difference is the method's 0/1 outcome minus the draws' mean outcome), planned from observed
    outcomes for ``n`` items and ``draws`` draws (``None``: as observed).

    The variance of an item's difference splits into a part that pooling cannot shrink and the
    draws' own spread: ``Var(D_d) = A + W / d``, with ``W`` the mean over items of the
    across-draw variance of the control outcome (unbiased, ``ddof=1``) and ``A`` the rest of the
    observed variance (floored at 0). Planning ``d'`` draws uses ``sd^2 = A + W / d'``; more draws
    help only as far as ``W / d`` is a large part of the variance. Never below ``z^2 / n``
    (:attr:`DetectableDifference.floored`). The items are those the comparison keeps (initially
    correct under the method and every draw): with more draws that set can only shrink.

    Raises:
        ValueError: mismatched shapes, fewer than 2 items or 2 draws observed, or as
            :func:`detectable_difference`.
    """
    if method.ndim != 1 or controls.ndim != 2 or controls.shape[0] != method.shape[0]:
        raise ValueError(
            f"need method [item] and controls [item, draw] on the same items, got "
            f"{tuple(method.shape)} and {tuple(controls.shape)}"
        )
    items, observed = controls.shape
    if items < 2 or observed < 2:
        raise ValueError(f"need at least 2 items and 2 draws observed, got {items} and {observed}")
    n = items if n is None else n
    draws = observed if draws is None else draws
    _check_power(n, alpha, power)
    if draws < 1:
        raise ValueError(f"need at least one draw to plan for, got {draws}")
    x, y = method.double(), controls.double()
    within = float(y.var(1, unbiased=True).mean())
    total = float((x - y.mean(1)).var(unbiased=True))
    sd = math.sqrt(max(0.0, total - within / observed) + within / draws)
    return _detectable(sd, n, draws, alpha, power)
