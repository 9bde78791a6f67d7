"""Which form of approach 3 to extrapolate with: Chinchilla's additive L = E + A/N^alpha + B/D^beta or Kaplan's
joint form with an irreducible loss, L = E + (A/N^alpha + B/D)^gamma (scaling/fit_parametric.py).

Both have five parameters, so the data cannot prefer one for having more freedom; what matters for a
prediction is how each extrapolates. The test is the one a prediction faces, repeated along the budgets
(an expanding window, as forecasts are backtested): for every budget with enough runs below it to fit five
parameters (with 4-5 sizes a budget, the third budget up), each form is fitted on the budgets below it
alone and predicts that budget's runs; the form with the lower RMSE of log
loss over all those predictions is selected. (With four budgets that is 2 fits and ~10 predicted runs per
form, where holding out only the largest budget scores 5 runs: on saved CPU demos, that noisier test once
picked the form whose held-out prediction was 4.3% off instead of 1.9%.) When no budget can be predicted
(too few runs below it to fit five parameters), the form with the lower in-sample objective (the Huber
loss both minimise) is selected. Both forms' fits and scores are kept, so a report can show the choice
and the alternative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fit_parametric import FORMS, fit_approach3, form_grid
from chinchax.scaling.table import budgets, final_rows


def backtest(table: pd.DataFrame, form: str, *, coarse: bool = False) -> dict:
    """`form` fitted on the budgets below each budget in turn and scored on that budget's runs: {rmse_log_loss,
    mean_log_error (> 0: the form predicted too high a loss), max_abs_rel_error, runs, budgets (those
    predicted)}, or {error} when no budget could be predicted."""
    grid = form_grid(form, coarse=coarse)
    final = final_rows(table)
    budget_R = budgets(final)
    log_errors, predicted, last_error = [], [], "the table has fewer than 2 budgets"
    for budget in np.unique(budget_R)[1:]:
        below, held = final[budget_R < budget], final[budget_R == budget]
        try:
            fit = fit_approach3(below, n_bootstrap=0, form=form, grid=grid)
        except UserError as e:  # too few runs below this budget for five parameters
            last_error = str(e)
            continue
        loss, _, _ = fit.predict_loss(held["n_params"].to_numpy(float), held["n_tokens"].to_numpy(float))
        log_errors += list(np.log(np.atleast_1d(loss)) - np.log(held["loss"].to_numpy(float)))
        predicted.append(float(budget))
    if not log_errors:
        return {"error": last_error}
    log_error = np.array(log_errors)
    return {"rmse_log_loss": float(np.sqrt(np.mean(log_error**2))), "mean_log_error": float(log_error.mean()),
            "max_abs_rel_error": float(np.max(np.abs(np.expm1(log_error)))), "runs": int(log_error.size),
            "budgets": predicted}


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
