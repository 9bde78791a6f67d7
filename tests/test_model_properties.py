"""What attention patterns must guarantee, checked by gradients and by perturbing inputs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.transformer import REMAT_POLICIES

L = 8


def build(preset, *overrides):
    return Transformer(load_model_config(preset, list(overrides)), rngs=nnx.Rngs(0))


def dependency(model, *, prefix_len=None, encoder_len=None):
    """dep[i, j] = True iff the logits at position i have a nonzero gradient w.r.t. input embedding j."""
    tokens = jax.random.randint(jax.random.key(1), (1, L), 0, model.cfg.vocab_size)
    x_BLD = model.embed(tokens)
    positions = jnp.arange(L)[None]
    kwargs = {}
    if prefix_len is not None:
        kwargs["prefix_mask_BL"] = positions < prefix_len
    if encoder_len is not None:
        kwargs["encoder_BSD"] = model.encode(jnp.ones((1, encoder_len), jnp.int32))
    graphdef, state = nnx.split(model)

    def logits_sum(x_BLD):  # a pure function of x: jax transforms must not close over nnx modules
        m = nnx.merge(graphdef, state, copy=True)
        stack = m.decoder if hasattr(m, "decoder") else m.encoder
        hidden = stack(x_BLD, positions_BL=positions, segment_ids_BL=None, **kwargs)
        return m.logits(hidden)[0].sum(-1)

    jac_L1LD = jax.jacrev(logits_sum)(x_BLD)
    return np.asarray(jnp.abs(jac_L1LD[:, 0]).sum(-1) > 0)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-bloom", "tiny-t5"])
def test_causal_no_position_sees_a_later_one(preset):
    model = build(preset)
    expected = np.tril(np.ones((L, L), bool))
    if preset == "tiny-t5":  # the decoder stack of an encoder-decoder
        np.testing.assert_array_equal(dependency(model, encoder_len=5), expected)
    else:
        np.testing.assert_array_equal(dependency(model), expected)


def test_prefix_lm_sees_the_whole_prefix_and_nothing_later():
    model = build("tiny-llama", "attention=prefix")
    prefix = 3
    i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    expected = (j <= i) | ((i < prefix) & (j < prefix))
    np.testing.assert_array_equal(dependency(model, prefix_len=prefix), expected)


def test_encoder_sees_everything():
    np.testing.assert_array_equal(dependency(build("tiny-bert")), np.ones((L, L), bool))


def test_decoder_of_encoder_decoder_sees_all_encoder_positions():
    model = build("tiny-bart")
    encoder_tokens = jax.random.randint(jax.random.key(2), (1, 6), 0, 512)
    graphdef, state = nnx.split(model)

    def decoder_logits_sum(encoder_x_BSD):
        model = nnx.merge(graphdef, state, copy=True)
        enc = model.encoder(encoder_x_BSD, positions_BL=jnp.arange(6)[None], segment_ids_BL=None)
        dec_in = jnp.ones((1, L), jnp.int32)
        hidden = model.decoder(model.embed(dec_in), positions_BL=jnp.arange(L)[None], segment_ids_BL=None, encoder_BSD=enc)
        return model.logits(hidden)[0].sum(-1)

    jac = jax.jacrev(decoder_logits_sum)(model.embed(encoder_tokens))
    assert bool((jnp.abs(jac[:, 0]).sum(-1) > 0).all())


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-bert", "tiny-llama", "tiny-bloom", "tiny-t5", "tiny-bart"])
def test_padding_changes_no_real_output(preset):
    model = build(preset)
    rng = np.random.default_rng(0)
    lengths = np.array([5, 8, 3])
    real = np.arange(L)[None] < lengths[:, None]
    segment_ids = real.astype(np.int32)
    tokens_a = rng.integers(1, 512, (3, L)).astype(np.int32)
    tokens_b = np.where(real, tokens_a, rng.integers(1, 512, (3, L))).astype(np.int32)
    kwargs = {}
    if model.cfg.variant == "encoder_decoder":
        encoder_ids = (np.arange(6)[None] < np.array([[6], [2], [4]])).astype(np.int32)
        enc_a = rng.integers(1, 512, (3, 6)).astype(np.int32)
        enc_b = np.where(encoder_ids == 1, enc_a, rng.integers(1, 512, (3, 6))).astype(np.int32)
        out_a = model(tokens_a, segment_ids=segment_ids, encoder_inputs=enc_a, encoder_segment_ids=encoder_ids)
        out_b = model(tokens_b, segment_ids=segment_ids, encoder_inputs=enc_b, encoder_segment_ids=encoder_ids)
    else:
        out_a = model(tokens_a, segment_ids=segment_ids, **kwargs)
        out_b = model(tokens_b, segment_ids=segment_ids, **kwargs)
    assert not np.array_equal(tokens_a, tokens_b)
    np.testing.assert_array_equal(np.asarray(out_a)[real], np.asarray(out_b)[real])


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_packed_documents_equal_separate_documents(preset):
    """Two documents packed in one row (segment ids, restarted positions) give each its own logits."""
    model = build(preset)
    rng = np.random.default_rng(1)
    doc1, doc2 = rng.integers(1, 512, 5).astype(np.int32), rng.integers(1, 512, 3).astype(np.int32)
    packed = np.concatenate([doc1, doc2])[None]
    segments = np.array([[1] * 5 + [2] * 3], np.int32)
    positions = np.array([list(range(5)) + list(range(3))], np.int32)
    kwargs, kwargs1, kwargs2 = {}, {}, {}
    if model.cfg.variant == "encoder_decoder":
        enc = rng.integers(1, 512, (1, 6)).astype(np.int32)
        kwargs = dict(encoder_inputs=enc, encoder_segment_ids=np.array([[1] * 4 + [2] * 2], np.int32),
                      encoder_positions=np.array([[0, 1, 2, 3, 0, 1]], np.int32))
        kwargs1, kwargs2 = dict(encoder_inputs=enc[:, :4]), dict(encoder_inputs=enc[:, 4:])
    out_packed = np.asarray(model(packed, segment_ids=segments, positions=positions, **kwargs))[0]
    out1 = np.asarray(model(doc1[None], **kwargs1))[0]
    out2 = np.asarray(model(doc2[None], **kwargs2))[0]
    np.testing.assert_allclose(out_packed[:5], out1, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out_packed[5:], out2, atol=1e-5, rtol=1e-5)


def test_same_seed_same_model_and_dropout_only_in_train_mode():
    a, b = build("tiny-gpt2", "dropout=0.5"), build("tiny-gpt2", "dropout=0.5")
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a, nnx.Param)), nnx.to_flat_state(nnx.state(b, nnx.Param)), strict=True):
        assert pa == pb
        np.testing.assert_array_equal(va.get_value(), vb.get_value())
    tokens = jnp.ones((2, L), jnp.int32)
    a.eval()
    np.testing.assert_array_equal(a(tokens), a(tokens))
    a.train()
    assert not np.array_equal(a(tokens), a(tokens))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build("tiny-llama", "dtype=bfloat16")
    logits = model(jnp.ones((2, L), jnp.int32))
    assert logits.dtype == jnp.float32
    assert all(v.get_value().dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    reference = Transformer(model.cfg.replace(dtype="float32"), rngs=nnx.Rngs(0))(jnp.ones((2, L), jnp.int32))
    np.testing.assert_allclose(logits, reference, atol=5e-2)  # bf16 rounding of a tiny model, not a bug budget


def logits_and_grads(cfg, tokens):
    """(logits, gradients of a scalar of them w.r.t. every parameter, the program's jaxpr as text), jitted."""
    graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss(params):  # a pure function of the parameters: merge a copy, never close over the module
        logits = nnx.merge(graphdef, params, rest, copy=True)(tokens)
        return jnp.std(logits), logits

    traced = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(params)
    (_, logits), grads = traced.lower().compile()(params)
    return logits, grads, str(traced.jaxpr)


@pytest.fixture(scope="module")
def reference_and_unrolled():
    cfg = load_model_config("tiny-llama")
    tokens = jax.random.randint(jax.random.key(3), (2, L), 0, 512)
    return cfg, tokens, logits_and_grads(cfg, tokens), logits_and_grads(cfg.replace(scan_layers=False), tokens)


REMAT_OP = re.compile(r"\b(?:remat2?|checkpoint)\[")  # jax.checkpoint's primitive, as jaxprs print it


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_and_unrolled_layers_compute_the_same_function(remat, reference_and_unrolled):
    cfg, tokens, (expected, expected_grads, plain_jaxpr), unrolled = reference_and_unrolled
    assert not REMAT_OP.search(plain_jaxpr)
    for variant, (logits, grads, jaxpr) in ((cfg.replace(remat=remat), logits_and_grads(cfg.replace(remat=remat), tokens)),
                                            (cfg.replace(scan_layers=False), unrolled)):
        np.testing.assert_allclose(logits, expected, atol=1e-6)
        # remat changes only what the backward pass recomputes: the gradients must be the same ones
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, expected_grads)
        if variant.remat != "none":  # the flag really put a checkpoint, with its policy, into the program
            assert len(REMAT_OP.findall(jaxpr)) == 1 and f"policy={REMAT_POLICIES[remat]}" in jaxpr


def test_prefix_mask_on_a_causal_model_is_an_error():
    model = build("tiny-gpt2")
    with pytest.raises(ValueError, match="attention=prefix"):
        model(jnp.ones((1, L), jnp.int32), prefix_mask=jnp.ones((1, L), bool))
