"""The compiled programs of a fine-tune: what `chinchax.train.programs.Programs` is to pretraining
(`abstract`, `init_state`, `train_step`, `eval_step`), for a state whose params are
{"trainable", "frozen"} (chinchax.posttrain.finetune).

The train step IS the pretraining step (`train.step.train_step`: loss, z-loss, microbatch accumulation,
AdamW direction times the step's rate), run on the trainable part alone, with a `ModelParts` bound to
the frozen part: its `merge` builds the model from `Method.params(trainable, frozen)`. Gradients exist
only for the trainable leaves (the NF4 codes are integers and could have none).

LoRA/QLoRA run the model built with adapters (`Transformer(cfg, lora=method.lora_spec)`, `adapted_parts`):
its graph and RNG streams are the plain model's plus the adapters' and, with dropout, their
`lora_dropout` stream. The step folds its number into every stream's key (train.step), so LoRA dropout
masks, like pretraining dropout's, depend on the step alone and a resumed run draws the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.train import state as state_lib
from chinchax.train import step as step_lib
from chinchax.train.optimizer import make_direction


@dataclass
class _Bound:
    """A ModelParts look-alike whose params are the trainable part; the frozen part is fixed (traced)."""

    parts: Any
    method: Any
    frozen: Any

    def rng_keys(self):
        return self.parts.rng_keys()

    def merge(self, trainable, rng_keys=None):
        model = self.parts.merge(self.method.params(trainable, self.frozen), rng_keys)
        return _wrap_prompt(self.method, model, trainable)


def _wrap_prompt(method, model, trainable):
    if method.spec.method != "prompt_tuning":
        return model
    from chinchax.model.soft_prompt import PromptedModel

    return PromptedModel(model, trainable["prompt_PD"])


def _shardings(abs_state, param_specs, base_flat: dict, mesh):
    """A leaf whose path ends in a base parameter's path and has its shape (the frozen base, full
    fine-tuning's params and their Adam moments) is sharded like it; the rest (adapters, prompts, NF4
    codes, counters) is replicated: small, or, for NF4 codes, packed in a layout the specs don't describe."""
    from chinchax.model.convert.hf import flatten

    specs = flatten(param_specs)

    def sharding(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        for start in range(len(keys)):
            dotted = ".".join(keys[start:])
            if dotted in base_flat and dotted in specs and tuple(base_flat[dotted].shape) == tuple(leaf.shape):
                return NamedSharding(mesh, specs[dotted])
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, abs_state)


def adapted_parts(model_cfg, mesh, seed: int, lora) -> state_lib.ModelParts:
    """`train.state.model_parts` of the model with LoRA adapters `lora` (model/layers.LoraSpec). Its params,
    dropout streams and their keys are the plain model's (same seeds; the adapters draw no `params` key),
    plus the adapters' A, B and the `lora_dropout` stream (from the seed too)."""
    import flax.linen as nn
    from flax import nnx

    from chinchax.model import Transformer
    from chinchax.model.layers import LORA_DROPOUT_STREAM
    from chinchax.sharding import LOGICAL_AXIS_RULES

    def new_model():
        streams = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1),
                   LORA_DROPOUT_STREAM: jax.random.fold_in(jax.random.key(seed), 0x10CA)}
        return Transformer(model_cfg, rngs=nnx.Rngs(**streams), lora=lora)

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        graphdef, abs_params, _, _ = nnx.split(nnx.eval_shape(new_model), nnx.Param, nnx.RngKey, ...)
        specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_params))
        mask = state_lib.decay_mask_from_variables(abs_params)

    @jax.jit
    def rng_state():
        _, _, keys, other = nnx.split(new_model(), nnx.Param, nnx.RngKey, ...)
        return jax.tree.map(jax.random.key_data, nnx.to_pure_dict(keys)), nnx.to_pure_dict(other)

    key_data, other = jax.device_get(rng_state())
    return state_lib.ModelParts(graphdef, key_data, other, specs, mask)


class FinetunePrograms:
    def __init__(self, cfg, mesh, method, base_flat: dict):
        self.cfg, self.mesh, self.method = cfg, mesh, method
        if method.lora_spec is None:
            self.parts = state_lib.model_parts(cfg.model, mesh, cfg.trainer.seed)
        else:
            self.parts = adapted_parts(cfg.model, mesh, cfg.trainer.seed, method.lora_spec)
        trainable, frozen = method.split(base_flat, cfg.trainer.seed)
        decay, scales = None, None
        if method.spec.method == "full":  # a µP base keeps its multipliers (adapters and prompts take the given lr)
            decay, scales = self.parts.decay_mask, self.parts.update_scales
        elif method.spec.method == "prompt_tuning":
            decay = jax.tree.map(lambda _: False, trainable)  # soft prompts: no decay (Lester et al.)
        self.tx = make_direction(cfg.optimizer, decay, scales)
        self._host = {"trainable": trainable, "frozen": frozen}
        abs_state = jax.eval_shape(self._make_state, self._host)
        self.shardings = _shardings(abs_state, self.parts.param_specs, base_flat, mesh)
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_state, self.shardings
        )
        self.n_trainable = int(sum(np.size(x) for x in jax.tree.leaves(trainable)))
        self.frozen_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(frozen.get("base", {}))))
        self.frozen_bytes += int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(frozen.get("nf4", {}))))
        self._train: dict = {}
        self._eval: dict = {}

    def _make_state(self, params):
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params["trainable"])}

    def init_state(self, cfg) -> dict:
        with jax.set_mesh(self.mesh):
            return jax.jit(self._make_state, out_shardings=self.shardings)(self._host)

    def _bound(self, frozen):
        return _Bound(self.parts, self.method, frozen)

    def train_step(self, batch_keys, steps_per_call: int = 1):
        key = (tuple(sorted(batch_keys)), steps_per_call)
        if key not in self._train:
            tc = self.cfg.trainer

            def step(state, batch, lr):
                frozen = state["params"]["frozen"]
                inner = {"step": state["step"], "params": state["params"]["trainable"], "opt_state": state["opt_state"]}
                new, metrics = step_lib.train_step(
                    inner, batch, lr, parts=self._bound(frozen), tx=self.tx, microbatches=tc.microbatches,
                    z_loss=self.cfg.optimizer.z_loss,
                )
                params = {"trainable": new["params"], "frozen": frozen}
                return {"step": new["step"], "params": params, "opt_state": new["opt_state"]}, metrics

            fn = step if steps_per_call == 1 else step_lib.scanned(step)
            self._train[key] = step_lib.jit_update(fn, self.mesh, self.shardings, key[0], steps_per_call)
        return self._train[key]

    def eval_step(self, batch_keys):
        key = tuple(sorted(batch_keys))
        if key not in self._eval:

            def evaluate(params, batch):
                parts = self._bound(params["frozen"])
                return step_lib.eval_step(params["trainable"], batch, parts=parts)

            data = step_lib.batch_sharding(self.mesh)
            self._eval[key] = jax.jit(
                step_lib.in_mesh(evaluate, self.mesh),
                in_shardings=(self.shardings["params"], {k: data for k in key}),
                out_shardings=data,
            )
        return self._eval[key]

    def merged_params(self, params) -> dict:
        """The plain model params of a fine-tuned state (adapters merged, NF4 dequantized), host numpy."""
        merged = jax.jit(lambda p: self.method.merged(p["trainable"], p["frozen"]))(params)
        return jax.tree.map(np.asarray, merged)

    def export_merged(self, out_dir: Path, *, tokenizer: str | None, info: dict) -> None:
        """merged/: the fine-tuned model as a plain model dir (adapters merged, NF4 dequantized), from the
        run's last checkpoint. A prompt-tuned model is not a plain model: its prompt is saved beside it."""
        from chinchax.model.convert.hf import flatten
        from chinchax.posttrain.model_dir import write_model_dir
        from chinchax.train.checkpoint import load_numpy_state

        steps = sorted(int(p.name) for p in (out_dir.parent / "checkpoints").iterdir() if p.name.isdigit())
        state = load_numpy_state(out_dir.parent / "checkpoints" / str(steps[-1]))
        merged = flatten(self.merged_params(state["params"]))
        write_model_dir(out_dir, self.cfg.model, merged, tokenizer=tokenizer, info=info)
        if self.method.spec.method == "prompt_tuning":
            np.save(out_dir / "prompt_PD.npy", np.asarray(state["params"]["trainable"]["prompt_PD"]))
        self.last_trainable = state["params"]["trainable"]
