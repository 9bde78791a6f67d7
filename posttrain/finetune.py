"""`finetune(base, cfg)`: full, LoRA, QLoRA or prompt-tuning fine-tuning of a trained or converted model,
run by the pretraining trainer (chinchax.train.trainer.train) with fine-tuning programs.

The train state keeps the trainer's shape {"step", "params", "opt_state"}, with
    params = {"trainable": what the optimizer updates, "frozen": the base, untouched}
    full:           trainable = every base parameter              frozen = {}
    lora:           trainable = LoRA A, B per adapted kernel      frozen = the float32 base
    qlora:          trainable = LoRA A, B                         frozen = the base, kernels in NF4 (+ double quant)
    prompt_tuning:  trainable = P soft-prompt vectors             frozen = the float32 base
so the trainer's mesh, jitted steps (this module wraps `train.step.train_step`: gradients only of the
trainable part), orbax checkpoints with the data-iterator state (bitwise resume), metrics.jsonl, wandb
and run.json all serve a fine-tune unchanged. The run dir adds finetune.yaml (the method, checked on
resume), and at the end merged/ (model.yaml + params/, the format of a converted checkpoint: adapters
merged, NF4 dequantized), which `chinchax eval`/`generate` can load like any converted model.

The trainer runs with these programs in place of pretraining's (`train(..., programs=)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chinchax import rundir
from chinchax.data.config import DataConfig
from chinchax.errors import UserError
from chinchax.evaluation.run_loading import RunWeights, load_weights
from chinchax.posttrain import adapters as lora_lib
from chinchax.posttrain.adapters import LoraConfig
from chinchax.train.config import ExperimentConfig, OptimizerConfig, TrainerConfig

METHODS = ("full", "lora", "qlora", "prompt_tuning")


@dataclass(frozen=True)
class LoraSection:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])

    def lora(self) -> LoraConfig:
        return LoraConfig(self.rank, self.alpha, self.dropout, tuple(self.targets)).validate()


@dataclass(frozen=True)
class QloraSection:
    group_size: int = 64  # NF4 block size (QLoRA: 64)
    double_quant: bool = True


@dataclass(frozen=True)
class PromptSection:
    length: int = 20  # P soft-prompt vectors
    seed: int = 0  # which vocabulary rows initialise them


@dataclass(frozen=True)
class FinetuneSection:
    method: str = "lora"
    lora: LoraSection = field(default_factory=LoraSection)
    qlora: QloraSection = field(default_factory=QloraSection)
    prompt: PromptSection = field(default_factory=PromptSection)

    def validate(self) -> FinetuneSection:
        if self.method not in METHODS:
            raise UserError(f"finetune.method={self.method!r} is not a method; choose one of {', '.join(METHODS)}")
        if self.method in ("lora", "qlora"):
            self.lora.lora()
        if self.method == "prompt_tuning" and self.prompt.length <= 0:
            raise UserError(f"finetune.prompt.length={self.prompt.length} must be a positive number of vectors")
        return self


@dataclass(frozen=True)
class FinetuneConfig:
    """An experiment YAML for `chinchax finetune`: the sections of `chinchax train` but `model` (the base's)."""

    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> FinetuneConfig:
        self.finetune.validate()
        return self


# --- the base model (evaluation.run_loading.load_weights) ----------------------------------------------


def check_vocabulary(base: RunWeights, data: DataConfig) -> None:
    from chinchax.data.tokenizers import load_tokenizer

    if base.tokenizer is not None and base.tokenizer != data.tokenizer:
        raise UserError(
            f"data.tokenizer={data.tokenizer!r} is not the base model's vocabulary ({base.tokenizer!r}, from "
            f"{base.source}): its token ids would index other embeddings. Set data.tokenizer={base.tokenizer}"
        )
    vocab = load_tokenizer(data.tokenizer).vocab_size
    if vocab > base.model.vocab_size:
        raise UserError(
            f"data.tokenizer={data.tokenizer!r} has {vocab} tokens but the base model {base.source} embeds only "
            f"{base.model.vocab_size}; use the tokenizer the base was trained (or converted) with"
        )


# --- trainable / frozen split -----------------------------------------------------------------------------


@dataclass
class Method:
    """How one method splits the base into trainable and frozen parts and puts them back together."""

    spec: FinetuneSection
    model: Any
    shapes: dict  # flat base shapes
    targets: list = field(default_factory=list)  # AdaptedWeight, for lora/qlora

    @property
    def quant(self):
        from chinchax.posttrain.quantize import QuantSpec

        return QuantSpec("nf4", self.spec.qlora.group_size, self.spec.qlora.double_quant).validate()

    def split(self, flat: dict, seed: int) -> tuple[dict, dict]:
        import jax

        from chinchax.model.convert.hf import unflatten

        m = self.spec.method
        if m == "full":
            return unflatten(dict(flat)), {}
        if m == "prompt_tuning":
            from chinchax.posttrain.prompt_tuning import init_prompt

            return {"prompt_PD": init_prompt(flat["embedding_VD"], self.spec.prompt)}, {"base": unflatten(dict(flat))}
        adapters = lora_lib.init_adapters(self.targets, self.spec.lora.rank, jax.random.key(seed))
        trainable = {"lora": unflatten({f"{p}.{k}": v for p, ab in adapters.items() for k, v in ab.items()})}
        if m == "lora":
            return trainable, {"base": unflatten(dict(flat))}
        from chinchax.posttrain.quantize import quantize_flat

        stored = quantize_flat(flat, self.quant)
        rest = {k: v for k, v in flat.items() if k not in stored}
        return trainable, {"base": unflatten(rest), "nf4": unflatten({f"{p}.{k}": v for p, s in stored.items()
                                                                       for k, v in s.items()})}

    def base_flat(self, frozen: dict) -> dict:
        """The float32 base parameters (NF4 kernels dequantized)."""
        from chinchax.model.convert.hf import flatten

        flat = flatten(frozen["base"])
        if "nf4" in frozen:
            from chinchax.posttrain.quantize import dequantize_flat

            stored = _regroup(flatten(frozen["nf4"]))
            flat.update(dequantize_flat(stored, self.shapes, self.quant))
        return flat

    @property
    def lora_spec(self):
        """The adapters the trained model is built with (`Transformer(cfg, lora=...)`); None: the plain model."""
        if self.spec.method not in ("lora", "qlora"):
            return None
        return lora_lib.model_spec(self.spec.lora.lora(), self.targets)

    def params(self, trainable: dict, frozen: dict) -> dict:
        """The params pure dict of the model a step runs: the plain model's (full, prompt tuning), or for
        LoRA/QLoRA the adapted model's (`lora_spec`: base + A, B per adapted kernel, in activation space)."""
        from chinchax.model.convert.hf import flatten, unflatten

        m = self.spec.method
        if m == "full":
            return trainable
        flat = self.base_flat(frozen)
        if m in ("lora", "qlora"):
            flat = lora_lib.place(flat, _regroup(flatten(trainable["lora"])), self.targets)
        return unflatten(flat)

    def merged(self, trainable: dict, frozen: dict) -> dict:
        """The plain model's params (adapters merged into the weights, NF4 dequantized): for export."""
        from chinchax.model.convert.hf import flatten, unflatten

        if self.spec.method not in ("lora", "qlora"):
            return self.params(trainable, frozen)
        adapters = _regroup(flatten(trainable["lora"]))
        flat = lora_lib.merge(self.base_flat(frozen), adapters, self.targets, self.spec.lora.lora().scale)
        return unflatten(flat)


def _regroup(flat: dict) -> dict:
    """{"path.a": x, "path.b": y} -> {"path": {"a": x, "b": y}}."""
    out: dict = {}
    for key, value in flat.items():
        path, leaf = key.rsplit(".", 1)
        out.setdefault(path, {})[leaf] = value
    return out


def make_method(spec: FinetuneSection, model, shapes: dict) -> Method:
    method = Method(spec.validate(), model, shapes)
    if spec.method in ("lora", "qlora"):
        method.targets = lora_lib.find_targets(shapes, spec.lora.lora())
    if spec.method == "prompt_tuning":
        from chinchax.posttrain.prompt_tuning import check_model

        check_model(model)
    return method


# --- the run --------------------------------------------------------------------------------------------


def experiment(base: RunWeights, cfg: FinetuneConfig) -> ExperimentConfig:
    return ExperimentConfig(model=base.model, data=cfg.data, optimizer=cfg.optimizer, trainer=cfg.trainer)


def _check_same_method(run_dir: Path, cfg: FinetuneConfig) -> None:
    from chinchax import configlib

    path = run_dir / rundir.FINETUNE_YAML
    if path.is_file():
        old = configlib.read_yaml(path)
        new = configlib.to_dict(cfg.finetune)
        if old != new:
            raise UserError(
                f"{run_dir} holds a fine-tune with other finetune settings ({old} -> {new}); resuming would mix "
                "two experiments. Restore them, or use a new trainer.run_dir"
            )


def finetune(base_dir: str | Path, cfg: FinetuneConfig, *, data=None) -> dict:
    """Fine-tune `base_dir` (run dir or converted checkpoint); returns run.json (with a `finetune` entry).
    `data` as in `train.trainer.train` (tests pass in-memory streams)."""
    from chinchax import configlib
    from chinchax.fileio import write_text_atomic
    from chinchax.jsonio import write_json
    from chinchax.posttrain.finetune_programs import FinetunePrograms
    from chinchax.train.trainer import train

    cfg = cfg.validate()
    base = load_weights(base_dir)
    if data is None:
        check_vocabulary(base, cfg.data)
    method = make_method(cfg.finetune, base.model, {k: v.shape for k, v in base.flat.items()})
    exp = experiment(base, cfg)
    run_dir = Path(cfg.trainer.run_dir)
    _check_same_method(run_dir, cfg)
    import jax

    primary = jax.process_index() == 0
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / rundir.FINETUNE_YAML, configlib.dump_yaml(cfg.finetune))
    made: dict = {}

    def make(exp_cfg, mesh):
        made["programs"] = FinetunePrograms(exp_cfg, mesh, method, base.flat)
        return made["programs"]

    result = train(exp, data=data, programs=make)
    if not result or not primary:  # the trainer returns {} on the other hosts
        return result
    programs = made["programs"]
    info = {
        "method": cfg.finetune.method,
        "base": str(Path(base_dir).absolute()),
        "n_params_trainable": programs.n_trainable,
        "frozen_base_bytes": programs.frozen_bytes,
        "base_float32_bytes": int(sum(v.nbytes for v in base.flat.values())),
        "examples_seen": result["steps"] * cfg.trainer.batch_size,
        "settings": configlib.to_dict(cfg.finetune),
    }
    from chinchax.posttrain.model_dir import absolute_tokenizer

    programs.export_merged(run_dir / rundir.MERGED, tokenizer=absolute_tokenizer(cfg.data.tokenizer, Path.cwd()),
                           info={"source": str(run_dir.absolute()), "finetune": cfg.finetune.method})
    model_type = _converted_model_type(Path(base_dir))
    if model_type and cfg.finetune.method in ("lora", "qlora"):  # adapters also in peft's format
        from chinchax.model.convert.hf import flatten
        from chinchax.posttrain.peft_format import export_peft

        adapters = _regroup(flatten(programs.last_trainable["lora"]))
        export_peft(run_dir / "adapter", base.model, model_type, adapters, cfg.finetune.lora.lora(),
                    base_model=_converted_source(Path(base_dir)))
        info["peft_adapter"] = str((run_dir / "adapter").absolute())
    result = {**result, "finetune": info}
    write_json(run_dir / rundir.RUN_JSON, result)
    return result


def _converted_model_type(base_dir: Path) -> str | None:
    return rundir.conversion_record(base_dir).get("model_type")


def _converted_source(base_dir: Path) -> str | None:
    return rundir.conversion_record(base_dir).get("source")
