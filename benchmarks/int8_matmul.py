"""int8 matmuls against bfloat16 ones, timed in one run (issue 16: the speed side of `chinchax quantize int8`).

    python benchmarks/int8_matmul.py                  # on a GPU: the 350M and 1.3B presets' projection shapes
    python benchmarks/int8_matmul.py --tiny --json    # the same plan on CPU at toy shapes (tests)

For each shape, tokens [T, D] times a kernel [D, F], three products, each jitted, warmed up and timed as the
fastest of --repeats calls:
- `bf16`: x·w in bfloat16, float32 accumulation: the baseline;
- `w8a8`: qwix.dot of x quantized to int8 per token (inside the timed function, as at inference) and w
  quantized to int8 per output channel ahead of time (as `chinchax quantize --format int8` stores it): an
  int8 x int8 product with int32 accumulation where the backend has one (tensor cores), then the scales;
- `w8`: the weight-only form `chinchax quantize` evaluates today: w stored int8, dequantized to bfloat16
  inside the timed function, then the bf16 product (what the memory saving costs in time).
Prints, per shape, bf16 time / int8 time (above 1: int8 faster) and each product's relative error against
float32. The ratio is what docs/benchmarks.md records; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import qwix

# (name, tokens, d_in, d_out): the MLP input projection of each preset (d_model -> 4 d_model) at 8 x 1024 tokens,
# and its output projection (4 d_model -> d_model).
SHAPES = [("350m mlp in", 8192, 1024, 4096), ("350m mlp out", 8192, 4096, 1024),
          ("1.3b mlp in", 8192, 2048, 8192), ("1.3b mlp out", 8192, 8192, 2048)]
TINY_SHAPES = [("tiny in", 64, 32, 128), ("tiny out", 64, 128, 32)]


def products(w_DF: jax.Array) -> dict:
    """{name: jitted f(x_TD) -> y_TF} for the three products, the kernel's int8 form made once, ahead."""
    w_bf16 = w_DF.astype(jnp.bfloat16)
    w_q = qwix.quantize(w_DF, jnp.int8, channelwise_axes=(1,))

    def bf16(x_TD):
        return jnp.dot(x_TD.astype(jnp.bfloat16), w_bf16, preferred_element_type=jnp.float32)

    def w8a8(x_TD):
        x_q = qwix.quantize(x_TD.astype(jnp.bfloat16), jnp.int8, channelwise_axes=(0,))
        return qwix.dot(x_q, w_q, preferred_element_type=jnp.float32)

    def w8(x_TD):
        w = qwix.dequantize(w_q).astype(jnp.bfloat16)
        return jnp.dot(x_TD.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)

    return {"bf16": jax.jit(bf16), "w8a8": jax.jit(w8a8), "w8": jax.jit(w8)}


def fastest(f, x, repeats: int) -> float:
    jax.block_until_ready(f(x))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        best = min(best, time.perf_counter() - t)
    return best


def measure(shape, repeats: int, seed: int = 0) -> dict:
    name, T, D, F = shape
    kx, kw = jax.random.split(jax.random.key(seed))
    x_TD = jax.random.normal(kx, (T, D), jnp.float32)
    w_DF = jax.random.normal(kw, (D, F), jnp.float32) / np.sqrt(D)
    exact = np.asarray(jnp.dot(x_TD, w_DF, precision="highest"))
    out = {"shape": name, "tokens": T, "d_in": D, "d_out": F}
    for key, f in products(w_DF).items():
        y = np.asarray(f(x_TD))
        out[f"{key}_s"] = fastest(f, x_TD, repeats)
        out[f"{key}_rel_error"] = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
    out["speedup_w8a8"] = out["bf16_s"] / out["w8a8_s"]
    out["speedup_w8"] = out["bf16_s"] / out["w8_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy shapes (a CPU check of the plan)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true", help="one JSON line per shape")
    args = p.parse_args(argv)
    device = jax.devices()[0].device_kind
    for shape in TINY_SHAPES if args.tiny else SHAPES:
        r = {**measure(shape, args.repeats), "device": device}
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{r['shape']:>14} [{r['tokens']}x{r['d_in']}]x[{r['d_in']}x{r['d_out']}] on {device}: "
                  f"bf16/w8a8 {r['speedup_w8a8']:.2f}x, bf16/w8 {r['speedup_w8']:.2f}x; relative error vs float32: "
                  f"bf16 {r['bf16_rel_error']:.1e}, w8a8 {r['w8a8_rel_error']:.1e}, w8 {r['w8_rel_error']:.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
