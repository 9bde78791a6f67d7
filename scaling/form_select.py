"""Which form of approach 3 to extrapolate with: Chinchilla's additive L = E + A/N^alpha + B/D^beta or Kaplan's
joint form with an irreducible loss, L = E + (A/N^alpha + B/D)^gamma (scaling/fit_parametric.py).

Both have five parameters, so the data cannot prefer one for having more freedom; what matters for a
prediction is how each extrapolates. The test is the one a prediction faces: each form is fitted on every
budget but the largest and scored on the largest budget's runs (RMSE of log loss). The form with the lower
error is selected; when the table has too few runs below its largest budget for that, the form with the
lower in-sample objective (the Huber loss both minimise) is. Both forms' fits and scores are kept, so a
report can show the choice and the alternative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fit_parametric import FORMS, chinchilla_grid, fit_approach3, kaplan_grid


def backtest(table: pd.DataFrame, form: str, *, coarse: bool = False) -> dict:
    """`form` fitted without the largest budget's runs, scored on them: {rmse_log_loss, mean_log_error (> 0:
    the form predicted too high a loss), max_abs_rel_error, runs}, or {error} when it cannot be fitted."""
    grid = (kaplan_grid if form == "kaplan" else chinchilla_grid)(coarse=coarse)
    try:
        fit = fit_approach3(table, n_bootstrap=0, holdout="largest", form=form, grid=grid)
    except UserError as e:
        return {"error": str(e)}
    held = fit.holdout
    log_error = np.log(np.asarray(held["predicted_loss"])) - np.log(np.asarray(held["observed_loss"]))
    return {"rmse_log_loss": float(held["rmse_log_loss"]), "mean_log_error": float(log_error.mean()),
            "max_abs_rel_error": float(held["max_abs_rel_error"]), "runs": len(log_error)}


def select_form(table: pd.DataFrame, fits: dict, *, coarse: bool = False) -> dict:
    """{"selected": form, "by": "backtest" | "objective", "forms": {form: backtest(...) + objective}} over the
    forms in `fits` ({form: FitResult on the whole table})."""
    if not fits:
        raise UserError("no approach-3 form was fitted, so there is none to select")
    forms = {form: {**backtest(table, form, coarse=coarse), "objective": float(fit.extra["objective"]),
                    "law": FORMS[form]} for form, fit in fits.items()}
    scored = {f: v["rmse_log_loss"] for f, v in forms.items() if np.isfinite(v.get("rmse_log_loss", np.nan))}
    if len(scored) == len(fits):
        return {"selected": min(scored, key=scored.get), "by": "backtest", "forms": forms}
    return {"selected": min(forms, key=lambda f: forms[f]["objective"]), "by": "objective", "forms": forms}
