"""A fitted law with its bootstrap uncertainty, saved as JSON that `chinchax optimal --law` reads back.

The JSON keeps the bootstrap draws of the allocation law (N_opt = k·C^a per resample), so intervals
for N_opt and D_opt can be computed later at any budget, not only the ones asked for at fit time.
Approach-3 fits also keep each resample's parameters (log E, log A, log B, alpha, beta, and gamma for
Kaplan's form), so `predict_loss` and `frontier` give bootstrap intervals for the loss anywhere.

Predictions are computed in log space (log L = logaddexp(log E, gamma·logaddexp(log A - alpha·log N,
log B - beta·log D)); gamma = 1 is Chinchilla's form) and exponentiated last: a bootstrap draw with an
extreme coefficient (A = e^800) is a finite number there, where A/N^alpha in floats would overflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from chinchax import jsonio
from chinchax.compute import FLOPS_PER_PARAM_TOKEN, tokens_for_budget
from chinchax.errors import UserError
from chinchax.fileio import read_user_json, write_text_atomic
from chinchax.scaling.laws import Allocation, ParametricLaw

CONFIDENCE = 0.95
# Per-draw parameters of a parametric (approach-3) fit, as fitted: the coefficients in log space; Kaplan's
# form adds its outer exponent "gamma" (absent: 1, Chinchilla's form).
THETA_NAMES = ("log_E", "log_A", "log_B", "alpha", "beta")
_LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))
PARAMETRIC_LAWS = ("chinchilla-3", "kaplan-3")


class ScalingFitWarning(UserWarning):
    """A fit went ahead, but dropped data or rests on a weak design (the message says which and why)."""


@dataclass
class FitResult:
    law: str  # kaplan | chinchilla-1 | chinchilla-2 | chinchilla-3 | kaplan-3 | data-constrained
    params: dict[str, float]
    stderr: dict[str, float]
    intervals: dict[str, list[float]]  # 95% bootstrap percentile interval per parameter
    n_runs: int
    n_rows: int
    n_bootstrap: int
    seed: int
    allocation: dict[str, float]  # {"n_coef", "n_exp"}: N_opt = n_coef · C^n_exp
    bootstrap_allocation: list[list[float]] = field(default_factory=list)  # [[n_coef, n_exp], ...]
    holdout: dict | None = None
    extra: dict = field(default_factory=dict)  # fit-specific details (e.g. isoFLOP minima)
    # approach 3: {name: [value per resample]} for THETA_NAMES (columns, to keep the JSON small)
    bootstrap_params: dict[str, list[float]] = field(default_factory=dict)

    def parametric_law(self) -> ParametricLaw:
        """The fitted loss L(N, D) of an approach-3 fit (either form) at its point estimate."""
        self._parametric_theta("parametric_law")  # a clear error for a fit that models no loss
        p = self.params
        return ParametricLaw(p["E"], p["A"], p["B"], p["alpha"], p["beta"], p.get("gamma", 1.0))

    def allocation_law(self) -> Allocation:
        return Allocation(self.law, self.allocation["n_coef"], self.allocation["n_exp"], "fit")

    def n_opt(self, flops: float) -> tuple[float, float, float]:
        """(N_opt, low, high) at `flops`, the interval from the bootstrap draws (nan if none)."""
        best = float(self.allocation_law().n_opt(flops))
        draws_S2 = np.array(self.bootstrap_allocation, dtype=np.float64).reshape(-1, 2)
        draws_S2 = draws_S2[draws_S2[:, 0] > 0]
        if not len(draws_S2):
            return best, float("nan"), float("nan")
        # in log space: k·C^a overflows for an extreme exponent where its logarithm is an ordinary number
        log_n_S = np.log(draws_S2[:, 0]) + draws_S2[:, 1] * np.log(float(flops))
        lo, hi = safe_exp(_interval(log_n_S))
        return best, float(lo), float(hi)

    def d_opt(self, flops: float) -> tuple[float, float, float]:
        n, lo, hi = self.n_opt(flops)
        d = lambda x: tokens_for_budget(float(flops), x)
        return d(n), d(hi), d(lo)  # more parameters means fewer tokens

    # ------------------------------------------------------------ approach-3 predictions
    def predict_loss(self, n_params, n_tokens):
        """(loss, low, high) of a model with `n_params` parameters trained on `n_tokens` tokens, the
        CONFIDENCE interval over the bootstrap draws (nan when the fit kept none). Arrays broadcast;
        scalars in, floats out."""
        point, draws = self._parametric_theta("predict_loss")
        log_n, log_d = _positive_log(n_params, "n_params"), _positive_log(n_tokens, "n_tokens")
        value = safe_exp(_log_loss(point, log_n, log_d))
        if draws is None:
            nan = np.full_like(value, np.nan)
            return _out(value), _out(nan), _out(nan)
        log_loss_S = _log_loss({k: v.reshape(-1, *([1] * np.ndim(value))) for k, v in draws.items()}, log_n, log_d)
        lo, hi = safe_exp(_interval(log_loss_S))
        return _out(value), _out(lo), _out(hi)

    def frontier(self, flops: float) -> dict:
        """The compute-optimal point for a budget of `flops` = 6·N·D: N_opt, D_opt and the loss there, each
        with its bootstrap interval (every draw at its own optimum; draws without one are left out)."""
        point, draws = self._parametric_theta("frontier")
        if not (np.isfinite(flops) and flops > 0):
            raise UserError(f"the compute budget must be a positive number of FLOPs, got {flops}")
        log_c6 = float(np.log(flops / FLOPS_PER_PARAM_TOKEN))
        log_n, log_d = _optimum(point, log_c6)
        if not np.isfinite(log_n):
            raise UserError(f"this {self.law} fit has no compute-optimal point (alpha = {self.params['alpha']:.3g}, "
                            f"beta = {self.params['beta']:.3g}: both must be positive); refit with more runs")
        out = {"flops": float(flops), "n_opt": float(np.exp(log_n)), "d_opt": float(np.exp(log_d)),
               "loss": float(safe_exp(_log_loss(point, log_n, log_d)))}
        if draws is None:
            return {**out, **dict.fromkeys(("n_opt_lo", "n_opt_hi", "d_opt_lo", "d_opt_hi", "loss_lo", "loss_hi"),
                                           float("nan")), "n_draws": 0}
        log_n_S, log_d_S = _optimum(draws, log_c6)
        ok_S = np.isfinite(log_n_S)
        kept = {k: v[ok_S] for k, v in draws.items()}
        (n_lo, n_hi), (d_lo, d_hi) = safe_exp(_interval(log_n_S[ok_S])), safe_exp(_interval(log_d_S[ok_S]))
        loss_lo, loss_hi = safe_exp(_interval(_log_loss(kept, log_n_S[ok_S], log_d_S[ok_S])))
        return {**out, "n_opt_lo": float(n_lo), "n_opt_hi": float(n_hi), "d_opt_lo": float(d_lo),
                "d_opt_hi": float(d_hi), "loss_lo": float(loss_lo), "loss_hi": float(loss_hi),
                "n_draws": int(ok_S.sum())}

    def score_holdout(self, held) -> dict:
        """Predicted vs measured loss of held-out runs (a DataFrame with n_params, n_tokens, loss, run), scored
        as Gadre et al. 2024 do: mean and max |relative error|; and how many fall inside the interval."""
        pred, lo, hi = self.predict_loss(held["n_params"].to_numpy(), held["n_tokens"].to_numpy())
        obs = held["loss"].to_numpy()
        inside = (lo <= obs) & (obs <= hi)
        return {**relative_errors(np.atleast_1d(pred), held), "predicted_lo": np.atleast_1d(lo).tolist(),
                "predicted_hi": np.atleast_1d(hi).tolist(), "n_inside_interval": int(np.sum(inside))}

    def _parametric_theta(self, what: str):
        """(point theta, draws theta or None) as {name: array} over THETA_NAMES."""
        if self.law not in PARAMETRIC_LAWS:
            raise UserError(f"{what} needs an approach-3 fit (law chinchilla-3 or kaplan-3), which models the loss; "
                            f"this is a {self.law} fit. Refit with `chinchax fit TABLE --law chinchilla-3`")
        p = self.params
        with np.errstate(divide="ignore"):  # a coefficient that underflowed to 0: log -inf, its term vanishes
            point = {"log_E": np.log(p["E"]), "log_A": np.log(p["A"]), "log_B": np.log(p["B"]),
                     "alpha": p["alpha"], "beta": p["beta"], "gamma": p.get("gamma", 1.0)}
        if not self.bootstrap_params:
            return point, None
        names = [*THETA_NAMES, *(["gamma"] if "gamma" in self.bootstrap_params else [])]
        draws = {k: np.asarray(self.bootstrap_params[k], dtype=np.float64) for k in names}
        ok_S = np.all([np.isfinite(v) for v in draws.values()], axis=0)
        return point, ({k: v[ok_S] for k, v in draws.items()} if ok_S.any() else None)

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, jsonio.dumps(asdict(self), indent=1))  # strict JSON: nan or inf as null
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> FitResult:
        path = Path(path)
        if not path.exists():
            raise UserError(f"fit file {path} does not exist; write one with `chinchax fit ... --out`")
        # not UTF-8, cut short or otherwise not JSON: one line with file:line:column
        data = read_user_json(path, what="fit file", fix="pass a fit written by `chinchax fit ... --out`")
        fix = "write one with `chinchax fit TABLE --out FIT.json`"
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a chinchax fit: it holds a JSON {type(data).__name__}, not a fit object; {fix}")
        missing = sorted({"law", "params", "allocation"} - set(data))
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if missing or unknown or not all(isinstance(data[k], dict) for k in ("params", "allocation")):
            what = [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown keys {', '.join(unknown[:5])}"] * bool(unknown)
            raise UserError(f"{path} is not a chinchax fit ({'; '.join(what) or 'params/allocation are not objects'}); {fix}")
        return cls(**_nan_for_null(data))


def summarise(best: dict[str, float], draws: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(stderr, intervals) from bootstrap draws of each parameter (non-finite draws ignored)."""
    stderr, intervals = {}, {}
    for name in best:
        x = np.asarray(draws.get(name, []), dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size < 2:
            stderr[name], intervals[name] = float("nan"), [float("nan"), float("nan")]
            continue
        # A coefficient the data cannot pin down can span 200 decades: scale before squaring.
        scale = float(np.max(np.abs(x)))
        stderr[name] = float(np.std(x / scale, ddof=1) * scale) if scale > 0 else 0.0
        lo, hi = np.percentile(x, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        intervals[name] = [float(lo), float(hi)]
    return stderr, intervals


def resample_runs(runs: np.ndarray, n_bootstrap: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """[n_bootstrap, n_rows] integer weights: how often each row's run is drawn in each resample.

    Runs (not rows) are the unit: every row of a drawn run comes along (a loss curve stays whole).
    With `strata`, runs are drawn within each stratum (e.g. per isoFLOP budget) so that every
    resample keeps each budget's design.
    """
    rng = np.random.default_rng(seed)
    uniq, row_to_run = np.unique(runs, return_inverse=True)
    run_strata = np.zeros(len(uniq), dtype=np.int64)
    if strata is not None:
        _, s = np.unique(strata, return_inverse=True)
        run_strata[row_to_run] = s
    counts = np.zeros((n_bootstrap, len(uniq)))
    for s in np.unique(run_strata):
        members = np.nonzero(run_strata == s)[0]
        draws = rng.integers(0, members.size, size=(n_bootstrap, members.size))
        for k in range(n_bootstrap):
            np.add.at(counts[k], members[draws[k]], 1.0)
    return counts[:, row_to_run]


def relative_errors(predicted: np.ndarray, held) -> dict:
    """Predicted vs observed loss of held-out runs: mean and max |relative error|, RMSE of log loss."""
    obs = held["loss"].to_numpy()
    rel = (predicted - obs) / obs
    return {"runs": held["run"].tolist(), "predicted_loss": np.asarray(predicted).tolist(),
            "observed_loss": obs.tolist(), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))),
            "rmse_log_loss": float(np.sqrt(np.mean((np.log(predicted) - np.log(obs)) ** 2)))}


def _log_loss(theta: dict, log_n, log_d):
    """log L(N, D) = logaddexp(log E, gamma·logaddexp(log A - alpha·log N, log B - beta·log D)), broadcast over
    arrays (gamma 1 when theta has none: Chinchilla's form)."""
    bracket = np.logaddexp(theta["log_A"] - theta["alpha"] * log_n, theta["log_B"] - theta["beta"] * log_d)
    return np.logaddexp(theta.get("gamma", 1.0) * bracket, theta["log_E"])


def _optimum(theta: dict, log_c6):
    """(log N_opt, log D_opt) for C/6 = e^log_c6: N_opt = G·(C/6)^a, G = (alpha·A/(beta·B))^(1/(alpha+beta)),
    a = beta/(alpha+beta) (for either form: gamma > 0 does not move the bracket's minimum). NaN where alpha,
    beta or gamma is not positive (the loss then has no optimum on C = 6ND)."""
    alpha, beta = np.asarray(theta["alpha"], np.float64), np.asarray(theta["beta"], np.float64)
    ok = (alpha > 0) & (beta > 0) & (np.asarray(theta.get("gamma", 1.0), np.float64) > 0)
    a_, b_ = np.where(ok, alpha, 1.0), np.where(ok, beta, 1.0)  # placeholders keep the logs finite
    log_g = (np.log(a_) + theta["log_A"] - np.log(b_) - theta["log_B"]) / (a_ + b_)
    log_n = np.where(ok, log_g + b_ / (a_ + b_) * log_c6, np.nan)
    return log_n, log_c6 - log_n


def _interval(x_S: np.ndarray) -> np.ndarray:
    """The CONFIDENCE percentile interval over the first axis."""
    return np.percentile(x_S, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)], axis=0)


def safe_exp(x):
    """e^x, inf above the largest float's logarithm (without computing the overflow)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > _LOG_FLOAT_MAX, np.inf, np.exp(np.minimum(x, _LOG_FLOAT_MAX)))


def _positive_log(x, name: str):
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x) & (x > 0)):
        raise UserError(f"{name} must be positive and finite, got {x}")
    return np.log(x)


def _out(x):
    return float(x) if np.ndim(x) == 0 else np.asarray(x)


def _nan_for_null(data: dict) -> dict:
    """The floats to_json wrote as null (nan, inf) read back as nan: in params, stderr, intervals and draws."""
    nan = lambda v: float("nan") if v is None else v  # noqa: E731
    out = dict(data)
    for key in ("params", "stderr", "allocation"):
        if isinstance(out.get(key), dict):
            out[key] = {k: nan(v) for k, v in out[key].items()}
    for key in ("intervals", "bootstrap_params"):
        if isinstance(out.get(key), dict):
            out[key] = {k: [nan(x) for x in v] if isinstance(v, list) else nan(v) for k, v in out[key].items()}
    if isinstance(out.get("bootstrap_allocation"), list):
        out["bootstrap_allocation"] = [[nan(x) for x in r] if isinstance(r, list) else r
                                       for r in out["bootstrap_allocation"]]
    return out
