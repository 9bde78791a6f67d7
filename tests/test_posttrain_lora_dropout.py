"""LoRA dropout (peft's `lora_dropout`) and the activation-space adapters that carry it.

The adapted model computes x·W + s·dropout(x)·A·B inside `layers.project`: with dropout 0 it gives the
weight-space merge's logits; in eval mode dropout changes nothing; in train mode the adapter's input (and
only it) is masked at rate p and scaled by 1/(1-p), checked against a hand computation with the same mask;
the adapted model keeps the plain model's RNG streams; a fine-tune with dropout 0.1 learns and resumes
bitwise; peft gives the same eval-mode logits with its dropout set, and reads lora_dropout from our export.
"""

from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import UserError
from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.convert.hf import flatten, model_from_params, unflatten
from chinchax.model.layers import LORA_DROPOUT_STREAM, LoraAdapter, LoraSpec, project
from chinchax.posttrain import adapters as lora_lib

V, B, L, S = 61, 2, 8, 6
RANK, ALPHA = 4, 8.0


def _tiny(preset):
    return load_model_config(preset).replace(vocab_size=V, d_model=16, d_ff=32, n_heads=4, max_len=32, dropout=0.0,
                                              attention_dropout=0.0)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-t5"])
def case(request):
    """A plain tiny model (llama: GQA, fused q|k|v, gated MLP; t5: encoder-decoder, cross-attention's separate
    q and k/v projections) and random adapters on every attention and MLP kernel (B non-zero)."""
    cfg = _tiny(request.param)
    plain = Transformer(cfg, rngs=nnx.Rngs(0))
    flat = {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(plain, nnx.Param))).items()}
    targets = lora_lib.find_targets({k: v.shape for k, v in flat.items()},
                                    lora_lib.LoraConfig(RANK, ALPHA, 0.0, ("attention", "mlp")).validate())
    adapters = lora_lib.init_adapters(targets, RANK, jax.random.key(1))
    for i, ab in enumerate(adapters.values()):  # a non-zero update
        ab["b"] = 0.3 * jax.random.normal(jax.random.key(100 + i), ab["b"].shape)
    rng = np.random.default_rng(0)
    inputs = {"inputs": jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)}
    if cfg.variant == "encoder_decoder":
        inputs["encoder_inputs"] = jnp.asarray(rng.integers(0, V, (B, S)), jnp.int32)
    return dict(cfg=cfg, plain=plain, flat=flat, targets=targets, adapters=adapters, inputs=inputs)


def _lora(case, dropout, adapters=None):
    spec = lora_lib.model_spec(lora_lib.LoraConfig(RANK, ALPHA, dropout, ("attention", "mlp")).validate(),
                               case["targets"])
    placed = lora_lib.place(case["flat"], adapters or case["adapters"], case["targets"])
    return lora_lib.lora_model(case["cfg"], placed, spec)


@nnx.jit
def _forward(model, inputs):
    return model(**inputs)


def _logits(model, case, train=False):
    model.train() if train else model.eval()
    return np.asarray(_forward(model, case["inputs"]))


def test_dropout_0_gives_the_weight_space_merge(case):
    model = _lora(case, 0.0)
    adapted = {k for k in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))) if "_lora." in k}
    assert adapted == {f"{lora_lib.adapter_path(t.path)}.{x}" for t in case["targets"] for x in "ab"}
    if case["cfg"].variant == "encoder_decoder":  # cross-attention's q, k, v, o are adapted too
        assert {f"decoder.blocks.cross_attention.{n}_lora.a" for n in "qkvo"} <= adapted
    merged = lora_lib.merge(case["flat"], case["adapters"], case["targets"], ALPHA / RANK)
    want = _logits(model_from_params(case["cfg"], unflatten(merged)), case)
    got = _logits(model, case)
    assert np.abs(want - _logits(case["plain"], case)).max() > 1e-2  # the adapters do change the output
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_eval_mode_drops_nothing_and_train_mode_drops_the_adapter_input_only(case):
    no_dropout = _logits(_lora(case, 0.0), case)
    model = _lora(case, 0.3)
    np.testing.assert_array_equal(_logits(model, case), no_dropout)
    trained = _logits(model, case, train=True)
    assert np.abs(trained - no_dropout).max() > 1e-3  # train mode does drop
    # B = 0: the adapters add nothing, so train mode must give the plain model's logits (the plain model has
    # dropout 0): LoRA dropout never touches the base product x·W. Not bit for bit: the extra (zero) terms
    # change XLA's fusions (measured 1e-6); a dropped base input would move the logits by O(1).
    zero_b = {p: {"a": ab["a"], "b": jnp.zeros_like(ab["b"])} for p, ab in case["adapters"].items()}
    np.testing.assert_allclose(_logits(_lora(case, 0.3, zero_b), case, train=True),
                               _logits(case["plain"], case, train=True), rtol=0, atol=1e-5)


def test_adapter_branch_equals_the_hand_computation_with_the_same_mask():
    """project(x, w, adapter) in train mode = x·W + s·(mask·x/(1-p))·A·B, the mask drawn at rate p."""
    p, D, H, K, r = 0.25, 16, 2, 4, 3
    spec = LoraSpec(r, 2.5, p, frozenset({"q"}))
    adapter = LoraAdapter((D, H, K), ("embed", "heads", "kv"), 1, spec, rngs=nnx.Rngs(**{LORA_DROPOUT_STREAM: 7}))
    keys = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(keys[0], (4, 64, D))
    w = jax.random.normal(keys[1], (D, H, K))
    adapter.a[...] = jax.random.normal(keys[2], (D, r))
    adapter.b[...] = jax.random.normal(keys[3], (r, H, K))
    adapter.train()
    y = project(x, w, adapter=adapter)
    # the same stream, forked the same way, draws the same mask
    twin = nnx.Dropout(p, rngs=nnx.Rngs(**{LORA_DROPOUT_STREAM: 7}), rng_collection=LORA_DROPOUT_STREAM)
    mask_scaled = np.asarray(twin(jnp.ones_like(x)))
    kept = mask_scaled != 0
    np.testing.assert_array_equal(mask_scaled[kept], np.float32(1 / (1 - p)))
    n = kept.size
    assert abs((~kept).mean() - p) < 5 * math.sqrt(p * (1 - p) / n), (~kept).mean()  # the rate is p
    a, b = np.asarray(adapter.a[...]), np.asarray(adapter.b[...]).reshape(r, H * K)
    xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64).reshape(D, H * K)
    want = xn @ wn + 2.5 * ((xn * mask_scaled) @ a) @ b
    np.testing.assert_allclose(np.asarray(y).reshape(4, 64, H * K), want, rtol=0, atol=2e-5)
    dropped_base = (xn * mask_scaled) @ wn + 2.5 * ((xn * mask_scaled) @ a) @ b
    assert np.abs(dropped_base - want).max() > 0.1  # the test tells a dropped base apart
    adapter.eval()
    np.testing.assert_allclose(np.asarray(project(x, w, adapter=adapter)).reshape(4, 64, H * K),
                               xn @ wn + 2.5 * (xn @ a) @ b, rtol=0, atol=2e-5)


def test_adapted_model_keeps_the_plain_models_rng_streams():
    """The base's dropout keys are the plain model's (a fine-tune's base dropout is unchanged by adapters);
    the adapters add a `lora_dropout` key per adapted kernel (per layer) only when dropout > 0."""
    from chinchax.posttrain.finetune_programs import adapted_parts
    from chinchax.sharding import single_device_mesh
    from chinchax.train.state import model_parts

    cfg = _tiny("tiny-llama").replace(dropout=0.1)
    mesh = single_device_mesh()
    plain = flatten(model_parts(cfg, mesh, 5).rng_key_data)
    spec = LoraSpec(RANK, 2.0, 0.1, frozenset({"q", "v", "wo"}))
    with_dropout = flatten(adapted_parts(cfg, mesh, 5, spec).rng_key_data)
    for key, value in plain.items():
        np.testing.assert_array_equal(with_dropout[key], value, err_msg=key)
    extra = sorted(set(with_dropout) - set(plain))
    assert extra == sorted(f"decoder.blocks.{m}_lora.dropout.rngs.key" for m in
                           ("self_attention.q", "self_attention.v", "mlp.wo")), extra
    assert with_dropout[extra[0]].shape[0] == cfg.n_layers  # one stream per layer
    without = flatten(adapted_parts(cfg, mesh, 5, spec.__class__(RANK, 2.0, 0.0, spec.targets)).rng_key_data)
    assert set(without) == set(plain)


def test_remat_recomputes_the_same_lora_dropout_masks():
    """Under remat the backward pass recomputes the blocks: it must redraw the same masks, so the loss and
    the adapters' gradients equal those without remat (the trainer's step keys, folded with the step)."""
    from chinchax.model.losses import token_cross_entropy
    from chinchax.posttrain.finetune_programs import adapted_parts
    from chinchax.sharding import single_device_mesh
    from chinchax.train.step import _fold

    cfg = _tiny("tiny-llama")
    spec = LoraSpec(RANK, 2.0, 0.3, frozenset({"q", "v", "o", "wi", "wo"}))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, V, (B, L + 1)), jnp.int32)
    results = []
    for remat in ("none", "full"):
        parts = adapted_parts(cfg.replace(remat=remat), single_device_mesh(), 0, spec)
        params = jax.tree.map(lambda x: 0.3 * jax.random.normal(jax.random.key(2), x.shape),
                              jax.eval_shape(lambda p=parts: nnx.to_pure_dict(nnx.state(
                                  Transformer(cfg, rngs=nnx.Rngs(0), lora=spec), nnx.Param))))

        def loss(params, parts=parts):
            model = parts.merge(params, _fold(parts.rng_keys(), jnp.int32(3)))
            model.train()
            ce, _ = token_cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
            return ce.mean()

        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (loss0, g0), (loss1, g1) = results
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for key, value in flatten(g0).items():
        if "_lora." in key:
            np.testing.assert_allclose(flatten(g1)[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, float("nan")])
def test_a_dropout_outside_0_1_names_the_key_and_the_fix(dropout):
    with pytest.raises(UserError) as e:
        lora_lib.LoraConfig(RANK, ALPHA, dropout, ("q",)).validate()
    assert "finetune.lora.dropout" in str(e.value) and "[0, 1)" in str(e.value) and "Set" in str(e.value)


# --- through the trainer ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from chinchax.configlib import load_config
    from chinchax.data.pipeline import register_memory_source
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import train

    out = tmp_path_factory.mktemp("lora-dropout") / "base"
    src = register_memory_source("lora-do-base", {"train": [f"def f{i}(x): return x * {i}\n" * 6 for i in range(20)],
                                                  "validation": ["def g(y): return y\n" * 6] * 2})
    train(load_config(ExperimentConfig, "experiments/tiny.yaml", [
        *_COMMON, f"data.source={src}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.d_ff=32",
        "model.max_len=32", "trainer.steps=2", f"trainer.run_dir={out}"]))
    return out


_COMMON = ["data.seq_len=32", "data.eval_batches=1", "trainer.batch_size=4", "trainer.progress_bar=false",
           "trainer.log_every=1", "optimizer.warmup_steps=0", "optimizer.schedule=constant"]


def _finetune(base_dir, run_dir, dropout):
    from chinchax.configlib import load_config
    from chinchax.data.pipeline import register_memory_source
    from chinchax.posttrain.finetune import FinetuneConfig, finetune

    src = register_memory_source("lora-do-task", {"train": ["the quick brown fox jumps over the lazy dog. " * 4] * 20,
                                                  "validation": ["the quick brown fox. " * 8] * 2})
    cfg = load_config(FinetuneConfig, None, [
        *_COMMON, f"data.source={src}", "trainer.steps=6", "trainer.checkpoint_every=3", "optimizer.learning_rate=0.02",
        "finetune.method=lora", "finetune.lora.targets=[attention,mlp]", f"finetune.lora.dropout={dropout}",
        f"trainer.run_dir={run_dir}"])
    return finetune(base_dir, cfg)


@pytest.mark.slow
def test_finetune_with_dropout_learns_and_resumes_bitwise(base_dir, tmp_path):
    from chinchax.train.checkpoint import load_numpy_state

    straight, resumed, no_dropout = tmp_path / "straight", tmp_path / "resumed", tmp_path / "no-dropout"
    result = _finetune(base_dir, straight, 0.1)
    losses = [r["loss"] for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert result["finetune"]["settings"]["lora"]["dropout"] == 0.1
    _finetune(base_dir, resumed, 0.1)
    shutil.rmtree(resumed / "checkpoints" / "6")  # a kill after step 3
    (resumed / "run.json").unlink()
    _finetune(base_dir, resumed, 0.1)
    a = jax.tree_util.tree_flatten_with_path(load_numpy_state(straight / "checkpoints" / "6"))[0]
    b = jax.tree_util.tree_flatten_with_path(load_numpy_state(resumed / "checkpoints" / "6"))[0]
    assert [p for p, _ in a] == [p for p, _ in b] and len(a) > 10
    for (path, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # the dropout is not a no-op: without it the adapters end elsewhere
    _finetune(base_dir, no_dropout, 0.0)
    c = flatten(load_numpy_state(no_dropout / "checkpoints" / "6")["params"]["trainable"])
    d = flatten(load_numpy_state(straight / "checkpoints" / "6")["params"]["trainable"])
    assert max(float(np.abs(c[k] - d[k]).max()) for k in c) > 1e-4


# --- peft ------------------------------------------------------------------------------------------------


def test_peft_parity_with_dropout_in_eval_mode_and_exported_lora_dropout(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from chinchax.model.convert.hf import config_from_hf, params_from_hf
    from chinchax.posttrain.peft_format import CONFIG, export_peft, import_peft

    torch.set_num_threads(1)
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    peft_model = peft.get_peft_model(base, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=modules,
                                                           lora_dropout=0.1, init_lora_weights=False)).eval()
    cfg = config_from_hf(config)
    params, _ = params_from_hf(cfg, "llama", {k: v.numpy() for k, v in base_state.items()})
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    lora = lora_lib.LoraConfig(RANK, ALPHA, 0.1, ("attention", "mlp")).validate()
    targets = lora_lib.find_targets({k: v.shape for k, v in flat.items()}, lora)
    state = {k: v.detach().numpy() for k, v in peft.get_peft_model_state_dict(peft_model).items()}
    adapters = import_peft(state, cfg, "llama", [t.path for t in targets])
    model = lora_lib.lora_model(cfg, lora_lib.place(flat, adapters, targets), lora_lib.model_spec(lora, targets))
    model.eval()
    tokens = np.random.default_rng(0).integers(0, V, (B, L))
    with torch.no_grad():
        expected = peft_model(torch.from_numpy(tokens)).logits.numpy()
    got = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    out = export_peft(tmp_path / "adapter", cfg, "llama", adapters, lora)
    assert json.loads((out / CONFIG).read_text())["lora_dropout"] == 0.1
    fresh = transformers.LlamaForCausalLM(config).eval()
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh, str(out)).eval()
    assert loaded.peft_config["default"].lora_dropout == 0.1
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(tokens)).logits.numpy(), got, rtol=0, atol=1e-5)
