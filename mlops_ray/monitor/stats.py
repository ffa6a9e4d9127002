"""Binned drift statistics with null distributions calibrated to the window's size.

In: per feature, two count vectors over the same bins: the reference profile's counts and
a live window's counts (the window binned with the reference's quantile edges, or counted
over the reference's categories plus ``__other__``). Numeric features also bring the
interior edges, the min/max of both samples and the reference std. Out: plain numbers and
JSON-able dicts (``numeric_report`` / ``categorical_report``) with a verdict per feature.

Bins follow ``np.searchsorted(edges, x, side="right")``: bin 0 holds x < e0, bin i holds
e_{i-1} <= x < e_i, the last bin x >= e_last (for continuous data the closed side is moot).

Why calibrate: a fixed cut-off on a raw statistic means different things at different
window sizes. On a 1M-row window every test p-value is tiny for any real but harmless
shift; on 100 rows distances such as PSI are mostly sampling noise (PSI of a window drawn
from the reference itself is about (k-1)/n, i.e. ~0.2 for 20 bins and 100 rows). So a
feature is flagged only when (a) its statistic exceeds the statistic's own null
distribution at this window's size, simulated from the reference counts, and (b) the
effect size (the distance itself, in interpretable units) is at least ``min_effect``.

Every statistic is vectorised over a leading axis: counts may be (k,) or (B, k), and the
result is a float or a (B,) array. That is what makes a few thousand null draws cost
milliseconds. No Ray, no pandas.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import numpy as np
from scipy import special
from scipy import stats as sps

StatFn = Callable[[np.ndarray, np.ndarray], "float | np.ndarray"]
MAX_DRAWS = 20_000


def _arr(counts) -> np.ndarray:
    a = np.asarray(counts, dtype=np.float64)
    if a.ndim not in (1, 2):
        raise ValueError(f"counts must be 1-D (k,) or 2-D (B, k), got shape {a.shape}")
    return a


def _pair(ref, win) -> tuple[np.ndarray, np.ndarray]:
    r, w = _arr(ref), _arr(win)
    if r.shape[-1] != w.shape[-1]:
        raise ValueError(f"reference has {r.shape[-1]} bins, window {w.shape[-1]}")
    return r, w


def _shares(c: np.ndarray) -> np.ndarray:
    # An empty row gives zero shares instead of NaN; the report functions never get that far.
    n = c.sum(axis=-1, keepdims=True)
    return np.divide(c, n, out=np.zeros_like(c), where=n > 0)


def _out(x) -> float | np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def psi(ref, win, smoothing: float = 0.5) -> float | np.ndarray:
    """Population stability index, sum (pw - pr) * ln(pw / pr), with share = (c+s)/(n+s*k).

    The additive smoothing keeps empty bins finite; it must be > 0 for that."""
    if smoothing < 0:
        raise ValueError("smoothing must be >= 0")
    r, w = _pair(ref, win)
    k = r.shape[-1]
    pr = (r + smoothing) / (r.sum(-1, keepdims=True) + smoothing * k)
    pw = (w + smoothing) / (w.sum(-1, keepdims=True) + smoothing * k)
    return _out(((pw - pr) * np.log(pw / pr)).sum(-1))


def ks_binned(ref, win) -> float | np.ndarray:
    """KS D of binned data: max |F_ref - F_win| over the bin boundaries."""
    r, w = _pair(ref, win)
    return _out(np.abs(np.cumsum(_shares(r), -1) - np.cumsum(_shares(w), -1)).max(-1))


def ks_pvalue(d, n_ref: float, n_win: float) -> float | np.ndarray:
    """Asymptotic two-sample KS p-value: Q_KS((en + 0.12 + 0.11/en) * d), en = sqrt(n1 n2 / (n1 + n2)).

    With binned data D can only be computed at the bin boundaries, so it is <= the D of the
    raw samples and this p-value is conservative (too large), more so with fewer bins."""
    if n_ref <= 0 or n_win <= 0:
        return _out(np.ones_like(np.asarray(d, dtype=np.float64)))
    en = math.sqrt(n_ref * n_win / (n_ref + n_win))
    return _out(np.clip(special.kolmogorov((en + 0.12 + 0.11 / en) * np.asarray(d, dtype=np.float64)), 0, 1))


def outer_bounds(edges, lo: float, hi: float, tail_width: float = 2.5) -> tuple[float, float]:
    """Outer bounds for the first and last bins of ``wasserstein_binned``.

    The raw sample min/max are poor bounds: uniform mass over [min, e0] puts the tail far
    too wide (a 0.1 sigma shift of a normal reads 0.124 with 20 bins, a 10 % rescale of a
    lognormal 0.33 instead of 0.08) and one outlier row stretches it without limit. So each
    outer bin is capped at ``tail_width`` times its neighbour's width (a uniform bin with
    the tail's true mean is ~2.2x wide for normal tails, ~2.9x for exponential ones).
    Non-finite lo/hi (no min/max known) use the cap; with a single edge there is no
    neighbour and the raw bounds are kept (or +-1 if unknown)."""
    e = np.asarray(edges, dtype=np.float64)
    if e.size == 0:   # one bin: W1 is 0 whatever the bounds
        return (float(lo), float(hi)) if np.isfinite([lo, hi]).all() and lo < hi else (0.0, 1.0)
    cap_lo = tail_width * (e[1] - e[0]) if e.size > 1 else math.inf
    cap_hi = tail_width * (e[-1] - e[-2]) if e.size > 1 else math.inf

    def side(raw: float, cap: float) -> float:
        span = max(raw, 0.0) if np.isfinite(raw) else math.inf
        span = min(span, cap)
        return span if np.isfinite(span) else 1.0

    return float(e[0] - side(e[0] - lo, cap_lo)), float(e[-1] + side(hi - e[-1], cap_hi))


def wasserstein_binned(ref, win, edges, lo: float, hi: float, scale: float) -> float | np.ndarray:
    """W1 between the binned distributions, divided by ``scale`` (the reference std).

    Model: mass is uniform inside each bin, so both CDFs are linear between the boundaries
    [lo, e0, ..., e_last, hi] and the integral of |F_ref - F_win| is computed exactly, bin
    by bin (a trapezoid, or two triangles where the difference changes sign). lo/hi are
    the outer bounds of the first/last bins; pass ``outer_bounds(...)`` of the min/max of
    both samples. A scale <= 0 or non-finite counts as 1."""
    r, w = _pair(ref, win)
    e = np.asarray(edges, dtype=np.float64)
    if r.shape[-1] != e.size + 1:
        raise ValueError(f"{e.size} edges need {e.size + 1} bins, got {r.shape[-1]}")
    if e.size and not np.isfinite([lo, hi]).all():
        raise ValueError("lo and hi must be finite (see outer_bounds)")
    b = np.concatenate([[min(lo, e[0])], e, [max(hi, e[-1])]]) if e.size else np.array([lo, hi], float)
    diff = np.cumsum(_shares(r), -1) - np.cumsum(_shares(w), -1)
    d = np.concatenate([np.zeros(diff.shape[:-1] + (1,)), diff], -1)     # F_ref - F_win at each boundary
    a, c = np.abs(d[..., :-1]), np.abs(d[..., 1:])
    crossing = d[..., :-1] * d[..., 1:] < 0
    s = a + c
    mean_abs = np.where(crossing, np.divide(a * a + c * c, 2 * s, out=np.zeros_like(s), where=s > 0), s / 2)
    scale = scale if scale is not None and np.isfinite(scale) and scale > 0 else 1.0
    return _out((np.diff(b) * mean_abs).sum(-1) / scale)


def chi2_stat(ref, win) -> float | np.ndarray:
    """Pearson chi-square statistic of the 2 x k homogeneity table; vectorised.

    Categories empty on both sides have zero expected count and contribute nothing."""
    r, w = np.broadcast_arrays(*_pair(ref, win))
    n_r, n_w = r.sum(-1, keepdims=True), w.sum(-1, keepdims=True)
    col, n = r + w, n_r + n_w
    total = np.zeros(np.broadcast_shapes(r.shape[:-1], ()))
    for obs, row in ((r, n_r), (w, n_w)):
        exp = np.divide(row * col, n, out=np.zeros_like(col), where=n > 0)
        total = total + np.divide((obs - exp) ** 2, exp, out=np.zeros_like(col), where=exp > 0).sum(-1)
    return _out(total)


def chi2_test(ref, win) -> tuple[float, float, int]:
    """(statistic, p_value, dof) of the chi-square homogeneity test on 1-D counts.

    dof = (non-empty categories) - 1; fewer than 2 of them, or an empty side, gives (0, 1, 0)."""
    r, w = _pair(ref, win)
    if r.ndim != 1 or w.ndim != 1:
        raise ValueError("chi2_test takes 1-D counts; use chi2_stat for batches")
    kept = int(((r + w) > 0).sum())
    if kept < 2 or r.sum() <= 0 or w.sum() <= 0:
        return 0.0, 1.0, 0
    stat = chi2_stat(r, w)
    return float(stat), float(sps.chi2.sf(stat, kept - 1)), kept - 1


def js_distance(ref, win) -> float | np.ndarray:
    """Jensen-Shannon distance, base 2: sqrt of the divergence, in [0, 1]; 0 * log 0 = 0."""
    p, q = (_shares(x) for x in _pair(ref, win))
    m = (p + q) / 2

    def kl_to_m(x: np.ndarray) -> np.ndarray:
        ratio = np.divide(x, m, out=np.ones_like(x * m), where=x > 0)
        return (x * np.log2(ratio)).sum(-1)

    return _out(np.sqrt(np.clip((kl_to_m(p) + kl_to_m(q)) / 2, 0, 1)))


def tv_distance(ref, win) -> float | np.ndarray:
    """Total variation distance, 0.5 * sum |p_ref - p_win|, in [0, 1]."""
    p, q = (_shares(x) for x in _pair(ref, win))
    return _out(0.5 * np.abs(p - q).sum(-1))


def null_counts(ref_counts, n_window: int, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample null at the window's size: (ref_draws, win_draws), each (draws, k).

    With p = ref / ref.sum(): win_draws ~ Multinomial(n_window, p) and ref_draws ~
    Multinomial(ref.sum(), p). For binned statistics drawing window-sized bootstrap
    subsamples of the reference rows (with replacement) and binning them is exactly this
    multinomial, so no raw reference rows are needed and a few thousand draws take
    milliseconds. Re-drawing the reference too accounts for its own sampling noise (it is
    a sample as well); if the edges are quantiles of the very same rows, the reference
    counts are flatter than multinomial and the null is slightly conservative."""
    r = np.asarray(ref_counts, dtype=np.float64)
    if r.ndim != 1 or (r < 0).any() or r.sum() <= 0:
        raise ValueError("ref_counts must be a 1-D non-negative vector with a positive total")
    p = r / r.sum()
    ref_draws = rng.multinomial(int(round(r.sum())), p, size=draws)
    win_draws = rng.multinomial(int(n_window), p, size=draws)
    return ref_draws, win_draws


EARLY_DRAWS = 1000


def calibrated(statistic_fn: StatFn, ref_counts, win_counts, draws: int, rng: np.random.Generator,
               alpha: float) -> dict:
    """{"value", "threshold", "p_value"} of ``statistic_fn(ref, win)`` against its null.

    threshold = the null's (1 - alpha) quantile (method "higher"); p_value = (1 + #(null >=
    observed)) / (draws + 1), so it is never 0 and its floor is 1 / (draws + 1). A 2-D
    ``win_counts`` (B windows of equal size) shares one null and gives (B,) values/p-values."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    w = _arr(win_counts)
    sizes = np.unique(np.round(np.atleast_2d(w).sum(-1)))
    if sizes.size != 1:
        raise ValueError("all windows in a batch must have the same number of rows")
    observed = np.asarray(statistic_fn(ref_counts, w), dtype=np.float64)
    # Sequential draws: batches of 1000, doubling, stopping once every p-value is clearly above
    # alpha (ten times it). A column that did not move is settled by 1000 draws; only one that
    # looks significant pays for the full ``draws`` (needed to resolve a Bonferroni-split alpha).
    parts, done, batch = [], 0, min(draws, EARLY_DRAWS)
    while done < draws:
        b = min(batch, draws - done)
        parts.append(np.asarray(statistic_fn(*null_counts(ref_counts, int(sizes[0]), b, rng)), dtype=np.float64))
        done += b
        null = np.sort(np.concatenate(parts)) if len(parts) > 1 else np.sort(parts[0])
        at_least = null.size - np.searchsorted(null, observed, side="left")      # #(null >= observed)
        if np.all((1 + at_least) / (null.size + 1) > 10 * alpha):
            break
        batch *= 2
    return {"value": _out(observed), "threshold": float(np.quantile(null, 1 - alpha, method="higher")),
            "p_value": _out((1 + at_least) / (null.size + 1)), "draws": int(null.size)}


def required_draws(alpha: float, min_draws: int = 1000) -> int:
    """Null draws needed to resolve a p-value at alpha: max(min_draws, ceil(20 / alpha)), at most 20000.

    Past the cap (alpha < 1/20001, e.g. a Bonferroni-split 0.01 over > 200 features) the
    smallest possible p-value exceeds alpha and the calibrated rule can never fire."""
    return int(min(MAX_DRAWS, max(min_draws, math.ceil(20 / alpha - 1e-9))))


def judge(p_value: float | None, effect: float | None, alpha: float, min_effect: float) -> str:
    """"drift" if the p-value is <= alpha AND the effect is material; "insufficient" if unknown."""
    if p_value is None or effect is None:
        return "insufficient"
    return "drift" if p_value <= alpha and effect >= min_effect else "ok"


def bonferroni(alpha: float, m: int) -> float:
    """Per-test alpha for m features: alpha / max(m, 1)."""
    return alpha / max(m, 1)


def _fixed_rule(fixed: dict, allowed: tuple[str, ...]) -> tuple[str, float]:
    if len(fixed) != 1 or next(iter(fixed)) not in allowed:
        raise ValueError(f"fixed must be one of {{{', '.join(allowed)}: threshold}}, got {fixed}")
    key, value = next(iter(fixed.items()))
    return key, float(value)


def _finite(*xs) -> list[float]:
    # A window's min/max may be None/NaN (no finite values); ignore those.
    return [float(x) for x in xs if x is not None and np.isfinite(x)]


def _report(statistic: str, value, threshold, p_value, effect, min_effect: float, verdict: str, tests: dict) -> dict:
    return {"statistic": statistic, "value": value, "threshold": threshold, "p_value": p_value,
            "effect": effect, "min_effect": min_effect, "verdict": verdict, "tests": tests}


def numeric_report(ref_counts, win_counts, edges, ref_min: float, ref_max: float, win_min: float | None,
                   win_max: float | None, ref_std: float, *, alpha: float, min_effect: float, draws: int | None,
                   rng: np.random.Generator, fixed: dict | None = None) -> dict:
    """Drift report of one numeric feature; the calibrated statistic is the normalised W1.

    ``fixed`` = {"psi": x} (drift if PSI > x) or {"ks_pvalue": x} (drift if KS p < x)
    replaces the calibrated rule (no null draws). A window (or reference) with no rows
    gives verdict "insufficient" and None values."""
    r, w = _arr(ref_counts), _arr(win_counts)
    if r.ndim != 1 or w.ndim != 1 or r.size != len(edges) + 1 or w.size != r.size:
        raise ValueError(f"{len(edges)} edges need 1-D counts of length {len(edges) + 1}")
    key, x = _fixed_rule(fixed, ("psi", "ks_pvalue")) if fixed else (None, None)
    name = {"psi": "psi", "ks_pvalue": "ks", None: "wasserstein"}[key]
    n_ref, n_win = float(r.sum()), float(w.sum())
    if n_ref <= 0 or n_win <= 0:
        return _report(name, None, None, None, None, min_effect, "insufficient",
                       {"psi": None, "ks": {"d": None, "p_value": None}, "wasserstein": None})
    lo, hi = outer_bounds(edges, min(_finite(ref_min, win_min), default=math.nan),
                          max(_finite(ref_max, win_max), default=math.nan))
    w1 = partial(wasserstein_binned, edges=edges, lo=lo, hi=hi, scale=ref_std)
    d = ks_binned(r, w)
    tests = {"psi": psi(r, w), "ks": {"d": d, "p_value": ks_pvalue(d, n_ref, n_win)}, "wasserstein": w1(r, w)}
    effect = tests["wasserstein"]
    if key == "psi":
        return _report("psi", tests["psi"], x, None, effect, min_effect, "drift" if tests["psi"] > x else "ok", tests)
    if key == "ks_pvalue":
        p = tests["ks"]["p_value"]
        return _report("ks", d, x, p, effect, min_effect, "drift" if p < x else "ok", tests)
    cal = calibrated(w1, r, w, draws or required_draws(alpha), rng, alpha)
    return {**_report("wasserstein", cal["value"], cal["threshold"], cal["p_value"], effect, min_effect,
                      judge(cal["p_value"], effect, alpha, min_effect), tests), "null_draws": cal["draws"]}


def categorical_report(ref_counts, win_counts, *, alpha: float, min_effect: float, draws: int | None,
                       rng: np.random.Generator, fixed: dict | None = None) -> dict:
    """Drift report of one categorical feature; the calibrated statistic is the JS distance.

    ``fixed`` = {"chi2_pvalue": x} (drift if chi-square p < x) or {"js": x} (drift if JS
    distance > x) replaces the calibrated rule. Empty window/reference: "insufficient"."""
    r, w = _arr(ref_counts), _arr(win_counts)
    if r.ndim != 1 or w.shape != r.shape:
        raise ValueError("categorical counts must be 1-D vectors over the same categories")
    key, x = _fixed_rule(fixed, ("chi2_pvalue", "js")) if fixed else (None, None)
    name = "chi2" if key == "chi2_pvalue" else "js"
    if r.sum() <= 0 or w.sum() <= 0:
        return _report(name, None, None, None, None, min_effect, "insufficient",
                       {"chi2": {"statistic": None, "p_value": None, "dof": None}, "js": None, "tv": None})
    stat, p, dof = chi2_test(r, w)
    tests = {"chi2": {"statistic": stat, "p_value": p, "dof": dof}, "js": js_distance(r, w), "tv": tv_distance(r, w)}
    effect = tests["js"]
    if key == "chi2_pvalue":
        return _report("chi2", stat, x, p, effect, min_effect, "drift" if p < x else "ok", tests)
    if key == "js":
        return _report("js", effect, x, None, effect, min_effect, "drift" if effect > x else "ok", tests)
    cal = calibrated(js_distance, r, w, draws or required_draws(alpha), rng, alpha)
    return {**_report("js", cal["value"], cal["threshold"], cal["p_value"], effect, min_effect,
                      judge(cal["p_value"], effect, alpha, min_effect), tests), "null_draws": cal["draws"]}
