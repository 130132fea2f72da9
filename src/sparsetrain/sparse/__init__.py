"""Sparse execution: CSR layers that train and serve on sparse kernels, and when to use them.

Masked-dense execution (what every method does by default) multiplies zeros at full dense cost.
This package stores a sparse weight as CSR and runs forward, input gradient and weight-value
gradient on sparse kernels (see ``_csr.py``), so time and optimizer memory scale with ``nnz``.
It is faster than dense only where a measurement says so (``bench.py``): use it per layer.

Public pieces:

- :class:`SparseLinear` (train) and :class:`SparseInferenceLinear` (serve).
- :func:`to_sparse_linear` / :func:`to_dense_linear` and the in-model :func:`swap_to_sparse` /
  :func:`swap_to_dense`, which also move the weight's optimizer state (:func:`gather_state` /
  :func:`scatter_state`) and keep the param-group index.
- :func:`bench_layer`, :func:`bench_conv2d`, :func:`plan_layers`: measured per-layer choices.

Design note: wiring ``execution="sparse"`` into a hard-mask method
--------------------------------------------------------------------
The method stays the single owner of masks (``Target.mask``); the sparse layer's structure is a
*copy of that decision* in CSR form, rebuilt only on topology updates.

1. **attach**: after ``_on_attach`` set the initial masks, call
   ``plan_layers(model, batch_size, masks=..., mode="train")`` (or honour a user override) and,
   for each target Linear chosen ``"sparse"``, ``swap_to_sparse(model, module_name, t.mask,
   optimizer)``. Keep a ``name -> SparseLinear`` map; ``t.param`` still names the old dense
   Parameter, so the method should point a sparse target at ``layer.values`` and skip the
   per-step hard-mask work for it: its gradient exists only at live positions and pruned
   weights do not exist, so ``grad.mul_(mask)`` and the post-step re-zeroing are no-ops to drop.
2. **dense gradient only on update steps**: in ``after_optimizer_step(k)``, if step ``k + 1``
   is an update step of a method with ``dense_grad="update"`` (RigL growth, MEST, SNIP), set
   ``layer.capture_dense_grad = True``; the next backward leaves ``∂L/∂W`` in
   ``layer.dense_grad`` (one dense matmul, that step only). Read it in ``after_backward`` where
   the dense path reads ``p.grad``, then set the flag back and ``layer.dense_grad = None``.
3. **topology update**: criteria take dense tensors: give them ``layer.to_dense()`` (weights),
   ``layer.dense_grad`` and the momentum scattered to dense if needed (transient, per layer),
   compute the new mask exactly as today, then call
   ``layer.set_structure(new_mask, optimizer, reset=grown)``: kept weights keep their value and
   every value-shaped optimizer state entry; dropped ones vanish; grown ones start at zero
   (value and state), which is the method's default regrowth policy. The ``values`` Parameter
   object is unchanged, so nothing else needs rewiring. ``t.mask.copy_(new_mask)`` as today.
4. **state_dict / resume**: a ``SparseLinear`` keeps the face of the ``nn.Linear`` it
   replaced: ``layer.weight`` reads the dense weight (read-only) and ``state_dict`` holds
   ``weight`` (dense, zeros at pruned positions) and ``bias``, so a model checkpoint loads into
   the plain model and back. A dense weight loaded into a sparse layer fills the values at its
   structure; the method's ``load_state_dict`` then rebuilds the structure from its masks (the
   truth), taking the other live weights from that loaded weight and keeping optimizer state
   loaded since as it is (``set_structure(..., keep_state=True)``): the README's resume order
   continues bit for bit. Optimizer state stays sized to the live values.
5. **detach / squash**: ``swap_to_dense(model, name, optimizer)`` for every sparse layer gives
   back ``nn.Linear`` modules with the original parameter names and zeros at pruned positions.

Measured on the project's 2-core CPU (``benchmarks/sparse_speed.py``, table and command in
its header): a full training step of MLP 784-1024-1024-10 at batch 128 takes 0.66× dense at 90%
sparsity and 0.33× at 98% (784-4096-4096-10: 0.64× and 0.18×); batch-1 inference 0.74× and
0.56×. Layers that are narrow or denser can be slower than dense, which is why the choice is per
layer and measured.
"""

from sparsetrain.sparse._csr import (
    CSRStructure,
    SparseLinearFunction,
    flat_indices,
    sparse_linear,
    structure_from_mask,
    structure_mask,
)
from sparsetrain.sparse.bench import (
    LayerDecision,
    bench_conv2d,
    bench_layer,
    format_decisions,
    plan_layers,
    random_mask,
    time_interleaved,
)
from sparsetrain.sparse.convert import (
    gather_state,
    replace_param,
    scatter_state,
    swap_to_dense,
    swap_to_sparse,
    to_dense_linear,
    to_sparse_linear,
)
from sparsetrain.sparse.layers import SparseInferenceLinear, SparseLinear, remap_values

__all__ = [
    "CSRStructure",
    "LayerDecision",
    "SparseInferenceLinear",
    "SparseLinear",
    "SparseLinearFunction",
    "bench_conv2d",
    "bench_layer",
    "flat_indices",
    "format_decisions",
    "gather_state",
    "plan_layers",
    "random_mask",
    "remap_values",
    "replace_param",
    "scatter_state",
    "sparse_linear",
    "structure_from_mask",
    "structure_mask",
    "swap_to_dense",
    "swap_to_sparse",
    "time_interleaved",
    "to_dense_linear",
    "to_sparse_linear",
]
