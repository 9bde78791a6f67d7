"""Scaling-law formulas and the published parameter sets (numpy; works on any array-like).

Conventions: N = parameters, D = training tokens, C = 6·N·D training FLOPs. Every allocation law
here is a power law N_opt(C) = k·C^a, and D_opt(C) = C / (6·N_opt(C)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PF_DAY = 8.64e19  # FLOPs in one petaflop/s-day (1e15 FLOP/s x 86,400 s), Kaplan et al. 2020
FLOPS_PER_PARAM_TOKEN = 6.0

# Chinchilla (Hoffmann et al. 2022), Table 3: approach-1 optimal (parameters, FLOPs, tokens).
CHINCHILLA_TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)
GOPHER_FLOPS = 5.76e23


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        return chinchilla_loss(n, d, self.E, self.A, self.B, self.alpha, self.beta)

    @property
    def a(self) -> float:  # N_opt ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        # A fit with a non-positive exponent or coefficient has no finite optimum: NaN, not a complex number.
        base = self.alpha * self.A / (self.beta * self.B) if self.beta * self.B != 0 else float("nan")
        if not (base > 0 and self.alpha + self.beta > 0):
            return float("nan")
        return base ** (1.0 / (self.alpha + self.beta))

    def allocation(self, name: str = "parametric", source: str = "") -> Allocation:
        # Minimising L subject to C = 6ND gives N_opt = G·(C/6)^a, D_opt = G^-1·(C/6)^b.
        return Allocation(name, self.G * 6.0 ** (-self.a), self.a, source)


CHINCHILLA_3 = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CHINCHILLA_3_UNROUNDED = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.3392, beta=0.2849)


@dataclass(frozen=True)
class Allocation:
    """N_opt(C) = n_coef · C^n_exp (C in FLOPs); D_opt(C) = C / (6·N_opt)."""

    name: str
    n_coef: float
    n_exp: float
    source: str = ""

    def n_opt(self, flops):
        return self.n_coef * np.asarray(flops, dtype=np.float64) ** self.n_exp

    def d_opt(self, flops):
        flops = np.asarray(flops, dtype=np.float64)
        return flops / (FLOPS_PER_PARAM_TOKEN * self.n_opt(flops))


def chinchilla_loss(n, d, E, A, B, alpha, beta):
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return E + A / n**alpha + B / d**beta


def kaplan_loss_n(n, n_c, alpha_n):
    return (n_c / np.asarray(n, np.float64)) ** alpha_n


def kaplan_loss_d(d, d_c, alpha_d):
    return (d_c / np.asarray(d, np.float64)) ** alpha_d


def kaplan_loss_nd(n, d, n_c, d_c, alpha_n, alpha_d):
    """Kaplan et al. 2020 eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d


def effective_data(tokens, unique_tokens, r_star):
    """Muennighoff et al. 2023: D' = U + U·R*·(1 - exp(-R/R*)), R = D/U - 1 repeated epochs.
    Tokens seen within the first epoch count fully; each further epoch is worth less."""
    tokens, unique = np.asarray(tokens, np.float64), np.asarray(unique_tokens, np.float64)
    repeats = np.maximum(tokens / unique - 1.0, 0.0)
    return np.where(tokens <= unique, tokens, unique + unique * r_star * (1.0 - np.exp(-repeats / r_star)))


def _table3_fit() -> tuple[float, float]:
    n, c, _ = np.array(CHINCHILLA_TABLE3).T
    slope, intercept = np.polyfit(np.log10(c), np.log10(n), 1)
    return slope, intercept


def kaplan_allocation() -> Allocation:
    # Kaplan eq. 6.1: N_opt = 1.3e9 · C_min^0.73 with C_min in PF-days. As Chinchilla does when it
    # compares, take C_min = C/2 (C = total training FLOPs); this gives 4.68e9 params at 1e21 FLOPs.
    coef = 1.3e9 * (2.0 * PF_DAY) ** -0.73
    return Allocation("kaplan", coef, 0.73, "Kaplan et al. 2020, eq. 6.1 (C_min = C/2, 1 PF-day = 8.64e19 FLOPs)")


def published_allocations() -> dict[str, Allocation]:
    slope, intercept = _table3_fit()
    # Approach 2: exponent a = 0.49 (Table 2); the constant puts N_opt at 63B for Gopher's budget,
    # the projection Chinchilla's isoFLOP figure (Fig. 3) gives.
    a2 = 0.49
    return {
        "chinchilla-1": Allocation(
            "chinchilla-1", 10**intercept, slope,
            "Hoffmann et al. 2022, Table 3 regressed in log10 (as BloombergGPT: N = 0.498x - 1.004)",
        ),
        "chinchilla-2": Allocation(
            "chinchilla-2", 63e9 / GOPHER_FLOPS**a2, a2,
            "Hoffmann et al. 2022, Table 2 (a = 0.49) through 63B params at 5.76e23 FLOPs (Fig. 3)",
        ),
        "chinchilla-3": CHINCHILLA_3.allocation(
            "chinchilla-3", "Hoffmann et al. 2022, eq. 10: E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28"
        ),
        "kaplan": kaplan_allocation(),
    }
