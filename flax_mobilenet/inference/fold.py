"""BatchNorm folded into the conv before it, each norm with its own eps."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

TRACE_SIZE = 64  # input size at which a model is traced to read its norms


def batchnorm_eps(model: nn.Module) -> dict[tuple[str, ...], float]:
    """The eps of every BatchNorm in `model`, by its path in the variables (traced, nothing computed)."""
    found: dict[tuple[str, ...], float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            found[tuple(context.module.path)] = float(context.module.epsilon)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, TRACE_SIZE, TRACE_SIZE, 3), jnp.float32))
    return found


def fold_batchnorm(variables: dict[str, Any], eps: float | Mapping[tuple[str, ...], float]) -> dict[str, Any]:
    """Variables of the `fold_bn=True` model: every conv-BN pair becomes one conv with a bias.

    y = gamma * (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w * s) + (beta - mean * s),
    with s = gamma / sqrt(var + eps) per output channel (the last kernel axis, depthwise included).
    `eps` is one value for every norm, or each norm's own by path (`batchnorm_eps(model)`).
    """
    def fold(params: dict[str, Any], stats: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for name, value in params.items():
            if not isinstance(value, dict):
                out[name] = value
            elif set(value) == {"conv", "bn"}:
                bn, moments = value["bn"], stats[name]["bn"]
                norm_eps = eps if isinstance(eps, (int, float)) else eps[(*path, name, "bn")]
                scale = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(moments["var"], np.float64) + norm_eps)
                kernel = np.asarray(value["conv"]["kernel"], np.float64) * scale
                bias = np.asarray(bn["bias"], np.float64) - np.asarray(moments["mean"], np.float64) * scale
                out[name] = {"conv": {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}}
            else:
                out[name] = fold(value, stats.get(name, {}), (*path, name))
        return out

    if "batch_stats" not in variables:
        raise ValueError("variables have no 'batch_stats': expected {'params': ..., 'batch_stats': ...}")
    folded = {"params": fold(variables["params"], variables["batch_stats"], ())}
    # What is left of batch_stats belongs to norms that follow no conv (e.g. a pre-norm before attention).
    remaining = _without_folded(variables["batch_stats"], variables["params"])
    if remaining:
        folded["batch_stats"] = remaining
    return folded


def _without_folded(stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in stats.items():
        node = params.get(name, {})
        if isinstance(node, dict) and set(node) == {"conv", "bn"}:
            continue
        inner = _without_folded(value, node if isinstance(node, dict) else {}) if isinstance(value, dict) else value
        if not isinstance(inner, dict) or inner:
            out[name] = inner
    return out
