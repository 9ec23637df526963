"""Class-aware non-maximum suppression with static shapes (jit-able on CPU, GPU and TPU).

Semantics are `torchvision.ops.batched_nms`: boxes are visited in decreasing score order, a box is kept
unless a kept box of the same label with a higher score overlaps it with IoU > `iou_threshold` (IoU in
float32 as torchvision's kernel, compared with the threshold as a double, as the kernel does). Equal
scores are visited in index order (a stable sort; torch's sort is not stable, so among exactly tied
scores torchvision's choice is unspecified). The kept indices come back in decreasing score order.

Cost: the (..., K, K) overlap matrix is built once (K^2 bytes per image for the bool matrix, plus the
float IoU XLA fuses into it), so K up to a few thousand per call is the intended range (K = 4096 is
16 MiB per image). For many classes with few candidates each, run it per class instead (leading
dimensions are batch dimensions), as `postprocess` does: that is torchvision's "vanilla" batched NMS.

Two exact solvers of the greedy recursion keep[i] = valid[i] and not any(keep[j] and S[j, i], j < i):
  'greedy'      K sequential steps of O(K) work (a fori_loop): O(K^2) in all, predictable.
  'fixed_point' iterate the recursion on the whole vector until it stops changing (a while_loop):
                O(K^2) per sweep, as many sweeps as the longest suppression chain (<= K, usually a few);
                wide parallel work, suited to GPU/TPU.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from .boxes import box_iou, float32_above

METHODS = ("greedy", "fixed_point")


def suppression_matrix(sorted_boxes: jax.Array, iou_threshold: float, sorted_valid: Optional[jax.Array] = None,
                       sorted_labels: Optional[jax.Array] = None) -> jax.Array:
    """S[..., i, j] (j after i in score order): box i, if kept, suppresses box j."""
    k = sorted_boxes.shape[-2]
    s = box_iou(sorted_boxes, sorted_boxes) > float32_above(iou_threshold)
    s = s & (jnp.arange(k)[:, None] < jnp.arange(k)[None, :])
    if sorted_labels is not None:
        s = s & (sorted_labels[..., :, None] == sorted_labels[..., None, :])
    if sorted_valid is not None:
        s = s & sorted_valid[..., :, None] & sorted_valid[..., None, :]
    return s


def solve_greedy(suppress: jax.Array, valid: jax.Array, method: str = "greedy") -> jax.Array:
    """The keep mask (..., K) of greedy NMS over boxes in visiting order, given S (..., K, K) from
    `suppression_matrix` (strictly upper triangular) and the validity mask (..., K)."""
    if method not in METHODS:
        raise ValueError(f"unknown NMS method {method!r}; known: {METHODS}")
    k = valid.shape[-1]
    if k == 0:
        return valid
    if method == "greedy":
        def step(i, keep):  # keep[..., i] is final here: every j < i has been decided
            row = lax.dynamic_index_in_dim(suppress, i, axis=suppress.ndim - 2, keepdims=False)
            kept = lax.dynamic_index_in_dim(keep, i, axis=keep.ndim - 1, keepdims=True)
            return keep & ~(kept & row)
        return lax.fori_loop(0, k, step, valid)

    def sweep(keep):
        return valid & ~jnp.any(keep[..., :, None] & suppress, axis=-2)

    def cond(state):
        keep, previous, it = state
        return jnp.any(keep != previous) & (it <= k)

    def body(state):
        keep, _, it = state
        return sweep(keep), keep, it + 1

    # After sweep t the first t entries are final, so this stops after at most K + 1 sweeps.
    keep, _, _ = lax.while_loop(cond, body, (sweep(valid), valid, jnp.int32(1)))
    return keep


def greedy_keep(boxes: jax.Array, valid: jax.Array, iou_threshold: float, method: str = "greedy") -> jax.Array:
    """The keep mask (..., K) of greedy NMS over boxes (..., K, 4) xyxy already in visiting order, valid (..., K)."""
    return solve_greedy(suppression_matrix(boxes, iou_threshold, valid), valid, method)


class NMSResult(NamedTuple):
    indices: jax.Array  # (..., max_output) int32: kept indices into K, decreasing score; 0 where not valid
    valid: jax.Array  # (..., max_output) bool
    num_kept: jax.Array  # (...) int32: kept boxes (may exceed max_output)
    keep: jax.Array  # (..., K) bool: the kept boxes, in input order


def sort_by_score(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Visiting order (..., K): valid boxes by decreasing score (stable), then the invalid ones."""
    return jnp.argsort(jnp.where(valid, scores, -jnp.inf), axis=-1, descending=True, stable=True)


def batched_nms(boxes: jax.Array, scores: jax.Array, labels: Optional[jax.Array], valid: Optional[jax.Array],
                iou_threshold: float, max_output: Optional[int] = None, method: str = "greedy") -> NMSResult:
    """Class-aware NMS, as `torchvision.ops.batched_nms` per image, with static shapes.

    boxes (..., K, 4) xyxy, scores (..., K), labels (..., K) ints (None: one class, plain `nms`),
    valid (..., K) bool (None: all). Leading dimensions are independent problems (images).
    Returns `NMSResult` with `max_output` (default K) slots. Jit it with `iou_threshold`,
    `max_output` and `method` static.
    """
    k = scores.shape[-1]
    max_output = k if max_output is None else int(max_output)
    valid = jnp.ones(scores.shape, bool) if valid is None else valid.astype(bool)
    order = sort_by_score(scores, valid)
    sorted_boxes = jnp.take_along_axis(boxes, order[..., None], axis=-2)
    sorted_valid = jnp.take_along_axis(valid, order, axis=-1)
    sorted_labels = None if labels is None else jnp.take_along_axis(labels, order, axis=-1)
    suppress = suppression_matrix(sorted_boxes, iou_threshold, sorted_valid, sorted_labels)
    keep_sorted = solve_greedy(suppress, sorted_valid, method)
    num_kept = jnp.sum(keep_sorted, axis=-1, dtype=jnp.int32)
    # Kept entries first, in visiting order (a stable partition), then pad/cut to max_output.
    first = jnp.argsort(~keep_sorted, axis=-1, stable=True)
    if max_output > k:
        first = jnp.concatenate([first, jnp.zeros((*first.shape[:-1], max_output - k), first.dtype)], axis=-1)
    first = first[..., :max_output]
    slots_valid = jnp.arange(max_output) < num_kept[..., None]
    indices = jnp.where(slots_valid, jnp.take_along_axis(order, first, axis=-1), 0).astype(jnp.int32)
    keep = jnp.zeros_like(valid)
    keep = jnp.put_along_axis(keep, order, keep_sorted, axis=-1, inplace=False)
    return NMSResult(indices, slots_valid, num_kept, keep)
