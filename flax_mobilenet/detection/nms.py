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

Three exact solvers of the greedy recursion keep[i] = valid[i] and not any(keep[j] and S[j, i], j < i):
  'greedy'      K sequential steps of O(K) work (a fori_loop): O(K^2) in all, predictable; on an accelerator
                every step is a loop iteration (kernel launches, a predicate read back), whatever its work.
  'fixed_point' iterate the recursion on the whole vector until it stops changing (a while_loop):
                O(K^2) per sweep, as many sweeps as the longest suppression chain + 1 (<= K + 1, usually 3-6).
  'blockwise'   the candidates in ceil(K / BLOCK) balanced blocks in visiting order: when a block's turn comes
                every earlier box is final, so its own recursion is solved by fixed-point sweeps on its B x B
                sub-matrix, then its kept boxes suppress the later ones in one masked reduction.  K / B blocks of
                a few sweeps each (SSDLite's 300 candidates per class: 3 blocks of 100, ~3 sweeps each; at worst
                B + 1 sweeps), O(K^2) work plus O(K * B) per round of sweeps.
All three give the same keep mask.  Greedy NMS is the lexicographically first maximal independent set of the
suppression graph, a P-complete problem: no exact solver is known that needs few parallel steps on every input.

The default, DEFAULT_METHOD = 'auto', is `default_method()`, chosen here and nowhere else by the backend jit
compiles for (jax.default_backend(), at trace time): 'blockwise' on GPU/TPU, where it replaces K sequential loop
steps by ~K / B blocks of a few sweeps; 'greedy' on CPU, where a step costs its O(K) work only and a sweep costs
O(B^2): with long suppression chains (the dense, equally scored candidates of an untrained SSDLite) the sweeps cost
1.5-3x what the greedy steps do, on easy inputs about the same; 'fixed_point' costs several times more there
(benchmarks/postprocess.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from .boxes import box_iou, float32_above

METHODS = ("greedy", "fixed_point", "blockwise")
DEFAULT_METHOD = "auto"  # default_method()
BLOCK = 128  # the most candidates per block ('blockwise'); blocks are balanced: ceil(K / ceil(K / BLOCK)) each

# A `solve_greedy` method ('auto' or one of METHODS), or a function (boxes (..., K, 4), valid (..., K),
# iou_threshold) -> the keep mask of the same greedy NMS over boxes in index order (the ONNX export passes one that
# becomes ONNX's NonMaxSuppression).
NMSMethod = Union[str, Callable[[jax.Array, jax.Array, float], jax.Array]]


def default_method() -> str:
    """The solver 'auto' means: the fastest exact one on the default backend (module docstring)."""
    return "greedy" if jax.default_backend() == "cpu" else "blockwise"


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


def _suppressed_by(keep: jax.Array, suppress: jax.Array) -> jax.Array:
    """(..., M): which columns of S (..., K, M) a kept row (keep (..., K)) suppresses."""
    return jnp.any(keep[..., :, None] & suppress, axis=-2)


def _fixed_point(suppress: jax.Array, valid: jax.Array) -> jax.Array:
    """Greedy NMS by whole-vector sweeps until nothing changes: after sweep t the first t entries are final, so it
    stops after at most K + 1 sweeps (usually a few: as many as the longest suppression chain)."""
    k = valid.shape[-1]

    def sweep(keep):
        return valid & ~_suppressed_by(keep, suppress)

    def cond(state):
        keep, previous, it = state
        return jnp.any(keep != previous) & (it <= k)

    def body(state):
        keep, _, it = state
        return sweep(keep), keep, it + 1

    keep, _, _ = lax.while_loop(cond, body, (sweep(valid), valid, jnp.int32(1)))
    return keep


def _blockwise(suppress: jax.Array, valid: jax.Array, block: int) -> jax.Array:
    """Greedy NMS block by block: when a block's turn comes every earlier box is final, so its candidates (valid
    and not suppressed so far) follow the recursion restricted to the block, solved by `_fixed_point` on its
    sub-matrix; its kept rows then suppress the later boxes in one reduction (S is strictly upper triangular:
    earlier columns are untouched)."""
    k = valid.shape[-1]
    blocks = -(-k // block)
    b = -(-k // blocks)
    pad = blocks * b - k  # < blocks
    if pad:
        suppress = jnp.pad(suppress, [(0, 0)] * (suppress.ndim - 2) + [(0, pad), (0, pad)])
        valid = jnp.pad(valid, [(0, 0)] * (valid.ndim - 1) + [(0, pad)])

    def solve_block(i, keep):
        start = i * b
        rows = lax.dynamic_slice_in_dim(suppress, start, b, axis=suppress.ndim - 2)  # (..., b, K + pad)
        candidates = lax.dynamic_slice_in_dim(keep, start, b, axis=keep.ndim - 1)
        kept = _fixed_point(lax.dynamic_slice_in_dim(rows, start, b, axis=rows.ndim - 1), candidates)
        keep = keep & ~_suppressed_by(kept, rows)
        return lax.dynamic_update_slice_in_dim(keep, kept, start, axis=keep.ndim - 1)

    return lax.fori_loop(0, blocks, solve_block, valid)[..., :k]


def solve_greedy(suppress: jax.Array, valid: jax.Array, method: str = DEFAULT_METHOD) -> jax.Array:
    """The keep mask (..., K) of greedy NMS over boxes in visiting order, given S (..., K, K) from
    `suppression_matrix` (strictly upper triangular) and the validity mask (..., K)."""
    if method == "auto":
        method = default_method()
    if method not in METHODS:
        raise ValueError(f"unknown NMS method {method!r}; known: 'auto', {', '.join(METHODS)}")
    k = valid.shape[-1]
    if k == 0:
        return valid
    if method == "greedy":
        def step(i, keep):  # keep[..., i] is final here: every j < i has been decided
            row = lax.dynamic_index_in_dim(suppress, i, axis=suppress.ndim - 2, keepdims=False)
            kept = lax.dynamic_index_in_dim(keep, i, axis=keep.ndim - 1, keepdims=True)
            return keep & ~(kept & row)
        return lax.fori_loop(0, k, step, valid)
    if method == "fixed_point":
        return _fixed_point(suppress, valid)
    return _blockwise(suppress, valid, BLOCK)


def greedy_keep(boxes: jax.Array, valid: jax.Array, iou_threshold: float,
                method: NMSMethod = DEFAULT_METHOD) -> jax.Array:
    """The keep mask (..., K) of greedy NMS over boxes (..., K, 4) xyxy already in visiting order, valid (..., K);
    `method` a `solve_greedy` method, or a function of (boxes, valid, iou_threshold) that computes it itself."""
    if callable(method):
        return method(boxes, valid, iou_threshold)
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
                iou_threshold: float, max_output: Optional[int] = None, method: str = DEFAULT_METHOD) -> NMSResult:
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
