"""MoE's values and gradients under Keras's JAX backend, against references.

The test suite checks `MoE` under TensorFlow (`tests/test_moe.py`). This script
checks the same layer code under the JAX backend, on whatever device JAX finds:
it is how the layer was checked on a GPU machine that has JAX but not
TensorFlow, before timing it there with `benchmarks/moe_scaling.py --backend jax`.

- top_k == num_experts, top-2 and top-1 (Switch) with nothing dropped, in
  training and at inference: the outputs equal a NumPy float64 top-k mixture;
- 64 experts at inference with a router skewed so that the busiest expert
  takes 9.5× the mean load (several capacity chunks run), under `jax.jit`;
- gradients of every weight and of the input through the sparse dispatch equal
  those of a dense top-2 mixture written in `jax.numpy`.

    KERAS_BACKEND=jax PYTHONPATH=. python scripts/check_moe_jax.py

Prints one line per check and exits with status 1 if any fails.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer import MoE  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
print("devices:", jax.devices(), "keras", keras.__version__, "jax", jax.__version__)
keras.utils.set_random_seed(0)


def weights(layer):
    return [np.asarray(w, dtype="float64") for w in (
        layer.router_kernel, layer.inner_kernel, layer.inner_bias,
        layer.output_kernel, layer.output_bias)]


def reference(layer, x, top_k):
    """Top-k mixture with nothing dropped (float64): gates renormalized over the
    chosen k, except top-1, which keeps the probability (Switch)."""
    wr, w1, b1, w2, b2 = weights(layer)
    x = np.asarray(x, "float64").reshape(-1, x.shape[-1])
    logits = x @ wr
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    chosen = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    gates = np.take_along_axis(p, chosen, -1)
    if top_k > 1:
        gates /= gates.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for j in range(top_k):
        e = chosen[:, j]
        hidden = np.maximum(0, np.einsum("gd,gdf->gf", x, w1[e]) + b1[e])
        out += gates[:, j:j + 1] * (np.einsum("gf,gfd->gd", hidden, w2[e]) + b2[e])
    return out


def check(name, got, want, atol):
    err = float(np.max(np.abs(np.asarray(got, "float64").reshape(want.shape) - want)))
    print(f"{'ok  ' if err <= atol else 'FAIL'} {name}: max |error| {err:.2e} (atol {atol})")
    return err <= atol


results = []
x = keras.random.normal((4, 64, 32), seed=1)
for experts, top_k in ((4, 4), (8, 1), (8, 2)):
    layer = MoE(experts, 64, top_k=top_k, capacity_factor=experts)  # nothing dropped
    got = layer(x, training=True)
    want = reference(layer, x, top_k)
    results.append(check(f"E={experts} k={top_k} training", got, want, 1e-5))
    results.append(check(f"E={experts} k={top_k} inference", layer(x), want, 1e-5))

# Inference at 64 experts with a skewed router: several capacity chunks run,
# compiled with jax.jit.
layer = MoE(64, 64, top_k=2)
x = keras.random.normal((8, 256, 32), seed=2)
layer(x)
kernel = np.asarray(layer.router_kernel).copy()
kernel[:, 0] += 0.5 * np.sign(np.asarray(x).reshape(-1, 32).mean(0))
layer.router_kernel.assign(kernel)
routing = layer.compute_routing(x)
load = np.bincount(np.asarray(routing["expert_index"])[np.asarray(routing["kept"])],
                   minlength=64)
print("busiest / mean load:", load.max() / load.mean())
trainable = [v.value for v in layer.trainable_variables]
non_trainable = [v.value for v in layer.non_trainable_variables]
compiled = jax.jit(lambda t, x: layer.stateless_call(t, non_trainable, x)[0])
results.append(check("E=64 k=2 skewed inference, jit", compiled(trainable, x),
                     reference(layer, x, 2), 1e-5))

# Gradients through the sparse dispatch equal those of a dense top-2 mixture in jnp.
layer = MoE(8, 64, top_k=2, capacity_factor=8)
x = keras.random.normal((2, 128, 32), seed=3)
layer(x)
cotangent = jax.random.normal(jax.random.PRNGKey(4), (2, 128, 32))
trainable = [v.value for v in layer.trainable_variables]
non_trainable = [v.value for v in layer.non_trainable_variables]
names = [v.path for v in layer.trainable_variables]


def sparse_loss(t, x):
    return jnp.sum(layer.stateless_call(t, non_trainable, x, training=True)[0] * cotangent)


def dense_loss(t, x):
    by_name = dict(zip((n.split("/")[-1] for n in names), t))
    wr, w1, b1 = by_name["router_kernel"], by_name["inner_kernel"], by_name["inner_bias"]
    w2, b2 = by_name["output_kernel"], by_name["output_bias"]
    tokens = x.reshape(-1, 32)
    p = jax.nn.softmax(tokens @ wr, axis=-1)
    top, chosen = jax.lax.top_k(p, 2)
    gates = jnp.sum(jax.nn.one_hot(chosen, 8) * (top / top.sum(-1, keepdims=True))[..., None], 1)
    hidden = jax.nn.relu(jnp.einsum("gd,edf->egf", tokens, w1) + b1[:, None])
    out = jnp.einsum("ge,egd->gd", gates, jnp.einsum("egf,efd->egd", hidden, w2) + b2[:, None])
    return jnp.sum(out.reshape(x.shape) * cotangent)


got = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(trainable, x)
want = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(trainable, x)
for name, g, w in zip(names + ["input"], got[0] + [got[1]], want[0] + [want[1]]):
    scale = float(jnp.max(jnp.abs(w)))
    results.append(check(f"gradient {name.split('/')[-1]} (scale {scale:.2e})", g,
                         np.asarray(w, "float64"), 1e-5 * max(1.0, scale)))
print(f"{sum(results)} of {len(results)} checks passed")
sys.exit(0 if all(results) else 1)
