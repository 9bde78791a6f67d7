"""A sweep's plan: one PlannedRun per run (its shape, N, D, steps, learning rate, resolved config and, with WSD
branching, the trunk it starts from), as plan.json holds it. A run's config is typed (ExperimentConfig) from the
planner to the executor, which writes it as the YAML file `chinchax train` reads; plan.json holds it as plain
data. Reading a plan (sweep status, collect, the executors) imports no jax: the configs are plain dataclasses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from chinchax.configlib import from_dict, to_dict
from chinchax.errors import UserError
from chinchax.train.config import ExperimentConfig


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    family: str
    budget: float
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_params: int  # total
    n_params_embedding: int
    n_params_non_embedding: int
    n_tokens: int  # D = steps * batch_size * seq_len
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    flops: float  # 6 * N * D with the sweep's N convention (realised, after rounding steps)
    # The dotted overrides that turn the base experiment into this run: what plan.csv shows. The planner builds
    # `experiment` from typed values, and a test checks that these overrides give the same config.
    overrides: tuple[str, ...]
    # The run's resolved config (trainer.run_dir is the executor's to set: left at its default here, and out of
    # plan.json, whose "config" is `config` below)
    experiment: ExperimentConfig
    branch_of: str = ""  # WSD: the trunk run this run branches from ("" = trained from scratch)
    branch_step: int = 0  # WSD: the trunk step whose checkpoint this run starts from
    seed: int = 0  # trainer.seed and data.seed of this replicate of its grid point

    @property
    def config(self) -> dict:
        """The resolved config as plain data, as plan.json holds it (no trainer.run_dir): a fresh copy."""
        return plain_config(self.experiment)

    def row(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "experiment"}
        d["overrides"] = " ".join(self.overrides)
        return d

    def to_json(self) -> dict:
        """The run as plan.json holds it: its fields in order, the config as plain data under "config"."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "experiment":
                out["config"] = self.config
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> PlannedRun:
        try:
            experiment = from_dict(ExperimentConfig, data["config"])
        except UserError as e:
            raise UserError(f"the config of planned run {data.get('run_id')!r}: {e} (a sweep planned by another "
                            "version of chinchax? `chinchax sweep plan` it again)") from None
        fields = {k: v for k, v in data.items() if k != "config"}
        return cls(**{**fields, "overrides": tuple(data["overrides"])}, experiment=experiment)


def plain_config(experiment: ExperimentConfig) -> dict:
    """A planned run's config as plain data, without trainer.run_dir (the executor's to set): what plan.json
    holds and what names a run (plan.py's `_run_id`)."""
    config = to_dict(experiment)
    config["trainer"].pop("run_dir", None)
    return config


@dataclass(frozen=True)
class Plan:
    name: str
    n_convention: str
    experiment: str
    runs: tuple[PlannedRun, ...]
    dropped: tuple[str, ...]  # human-readable notes on grid points left out (too few steps, ...)
    flops_independent: float  # sum of 6 N D over runs, each trained from scratch
    flops_with_branching: float  # the same sweep with WSD stable phases shared

    @property
    def wsd_savings(self) -> float:
        return self.flops_independent - self.flops_with_branching

    def by_id(self) -> dict[str, PlannedRun]:
        return {r.run_id: r for r in self.runs}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "n_convention": self.n_convention,
            "experiment": self.experiment,
            "flops_independent": self.flops_independent,
            "flops_with_branching": self.flops_with_branching,
            "wsd_savings": self.wsd_savings,
            "dropped": list(self.dropped),
            "runs": [r.to_json() for r in self.runs],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        runs = tuple(PlannedRun.from_json(r) for r in data["runs"])
        return cls(
            data["name"], data["n_convention"], data["experiment"], runs, tuple(data["dropped"]),
            data["flops_independent"], data["flops_with_branching"],
        )

    def table(self) -> str:
        head = ("run", "budget", "d_model", "layers", "heads", "d_ff", "N", "N_non_emb", "D", "steps",
                "batch", "lr", "6ND", "branch")
        rows = [
            (r.run_id, f"{r.budget:.3g}", r.d_model, r.n_layers, r.n_heads, r.d_ff, _si(r.n_params),
             _si(r.n_params_non_embedding), _si(r.n_tokens), r.steps, r.batch_size, f"{r.lr:.3g}",
             f"{r.flops:.3g}", f"@{r.branch_step} of {r.branch_of}" if r.branch_of else "-")
            for r in self.runs
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in (head, *rows)]
        lines.append(
            f"{len(self.runs)} runs, {self.flops_independent:.3g} FLOPs trained from scratch (N = {self.n_convention})"
        )
        if self.wsd_savings > 0:
            pct = 100 * self.wsd_savings / self.flops_independent
            lines.append(
                f"WSD branching: {self.flops_with_branching:.3g} FLOPs, saves {self.wsd_savings:.3g} ({pct:.0f}%)"
            )
        lines += [f"dropped: {note}" for note in self.dropped]
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def config_hash(config: Mapping, budget: float) -> str:
    """Stable id of a run: sha256 of its resolved config (minus where it is written) and its budget."""
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    config.get("trainer", {}).pop("run_dir", None)
    if config.get("trainer", {}).get("cpu_threads", 0) is None:  # the default, added later: old ids stand
        config["trainer"].pop("cpu_threads")
    blob = json.dumps({"config": config, "budget": float(budget)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
