"""Data-parallel helpers for training loops that do not use ``DistributedDataParallel`` (as
StyleGAN3's), and for starting every rank from the same state.

Every rank must call each function with the same module architecture (the same parameters and
buffers, in the same order) and in the same order: they are collectives of ``torch.distributed``.
Call them on the ranks of ``group`` only: a process outside it gets a ``ValueError``.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import _checks


def _by_device_and_dtype(tensors):
    """Tensors grouped by (device, dtype), in the order of ``tensors``, so each group flattens into one buffer."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups.values()


def all_reduce_gradients(module, group=None):
    """Averages the gradients of ``module``'s parameters over the ranks of ``group`` (default: all
    ranks), in place, with one all-reduce of one flattened buffer (one per device and dtype when
    the parameters mix them).

    A parameter may have a gradient on some ranks and none (``None``) on others, e.g. when a branch
    of the model ran only on some ranks. Its missing gradients count as zeros, and one presence flag
    per parameter travels in the same buffer: a parameter without a gradient on every rank keeps
    ``None`` on every rank, any other gets the average on every rank (each rank's gradient divided
    by the world size, then summed, as DDP does, so that fp16 gradients overflow only where their
    average does).
    So all ranks send buffers of the same size and end with the same gradients. NaN and infinite
    gradients are kept, so that a diverged rank stays visible.

    Call it after ``backward()`` and before ``optimizer.step()``.
    """
    _checks.module(module, "module")
    if isinstance(module, DistributedDataParallel):
        raise ValueError(
            "module is a DistributedDataParallel, whose backward already averages the gradients; "
            "call all_reduce_gradients only on modules that DDP does not wrap"
        )
    _checks.process_group_rank(group)
    world_size = dist.get_world_size(group)
    params = [p for p in module.parameters() if p.requires_grad]
    for name, p in module.named_parameters():
        if p.grad is not None and p.grad.layout != torch.strided:
            raise ValueError(
                f"the gradient of {name} is {p.grad.layout}; all_reduce_gradients handles dense gradients only"
            )
    with torch.no_grad():
        for members in _by_device_and_dtype(params):
            present = torch.tensor(
                [p.grad is not None for p in members], dtype=members[0].dtype, device=members[0].device
            )
            flat = torch.cat(
                [p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in members] + [present]
            )
            # Divided before the sum, as DDP does: the sum of fp16 gradients can overflow where
            # their average does not (two ranks' 40000 would average to inf).
            flat[: -len(members)].div_(world_size)
            dist.all_reduce(flat, group=group)
            grads = flat[: -len(members)].split([p.numel() for p in members])
            present_anywhere = flat[-len(members) :] > 0
            for p, grad, keep in zip(members, grads, present_anywhere.tolist()):
                if not keep:
                    continue
                if p.grad is None:
                    p.grad = grad.view_as(p).clone()
                else:
                    p.grad.copy_(grad.view_as(p.grad))


def broadcast_state(module, src=0, group=None):
    """Copies rank ``src``'s parameters and buffers of ``module`` to every rank of ``group`` (default:
    all ranks), in place: spectral norm's randomly initialised ``u``, ``v`` included. ``src`` is a
    global rank of a member of ``group``, as in ``torch.distributed.broadcast``. One broadcast per
    device and dtype.

    Use it once after building the model on every rank, so that all ranks start from the same state
    without seeding them alike (DistributedDataParallel does the same when it wraps a module).
    """
    _checks.module(module, "module")
    _checks.process_group_rank(group)
    world_size = dist.get_world_size()
    src = _checks.integer(src, "src")
    if not 0 <= src < world_size:
        raise ValueError(f"src must be a rank in [0, {world_size}), got {src}")
    ranks = dist.get_process_group_ranks(group)
    if src not in ranks:
        raise ValueError(
            f"src={src} is not a rank of group, whose global ranks are {ranks}: src is a global rank, "
            "as in torch.distributed.broadcast"
        )
    tensors = list(module.parameters()) + list(module.buffers())
    with torch.no_grad():
        for members in _by_device_and_dtype(tensors):
            flat = torch.cat([t.flatten() for t in members])
            dist.broadcast(flat, src=src, group=group)
            for t, value in zip(members, flat.split([t.numel() for t in members])):
                t.copy_(value.view_as(t))


def global_std(x, group=None):
    """The population standard deviation of all elements of ``x`` on all ranks of ``group``
    (default: all ranks), on every rank: what ``x.std(correction=0)`` gives one process on the
    concatenated batch. Ranks may hold different numbers of samples. Not differentiable.

    For DRAGAN under data parallelism: ``penalties.dragan(D, real, std=global_std(real))``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    _checks.process_group_rank(group)
    # Accumulated in float64: a float32 (let alone fp16) element count is inexact beyond 2^24.
    values = x.detach().to(torch.float64)
    # Two passes (mean, then squared deviations), as x.std does, rather than E[x^2] - E[x]^2,
    # which cancels catastrophically when the mean is large against the spread.
    local_count = torch.tensor(float(values.numel()), dtype=values.dtype, device=values.device)
    count_and_sum = torch.stack([local_count, values.sum()])
    dist.all_reduce(count_and_sum, group=group)
    count, total = count_and_sum.tolist()
    if count == 0:
        raise ValueError("x is empty on every rank: its standard deviation is undefined")
    squared_deviations = (values - total / count).square().sum()
    dist.all_reduce(squared_deviations, group=group)
    return (squared_deviations / count).sqrt().to(x.dtype)


class _AllGatherBatch(torch.autograd.Function):
    """Every rank's batch concatenated along dim 0, in rank order. The gradient for this rank's
    batch is the sum over ranks of their gradients for its rows: _SumScatterBatch, whose own
    gradient is this gather again, so derivatives of any order (a penalty's double backward) work.
    Written here rather than taken from torch.distributed.nn.functional.all_gather, which is
    deprecated, and whose backward uses a reduce-scatter that gloo emulates by an all-to-all."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return _SumScatterBatch.apply(grad, ctx.group), None


class _SumScatterBatch(torch.autograd.Function):
    """This rank's rows of the sum over ranks of ``x`` (the concatenated batch's shape)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        rows = x.shape[0] // dist.get_world_size(group)
        rank = dist.get_rank(group)
        return total[rank * rows : (rank + 1) * rows]

    @staticmethod
    def backward(ctx, grad):
        return _AllGatherBatch.apply(grad, ctx.group), None


# Every dtype of torch in a fixed order, so that a rank can send its x's dtype as a number.
_DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)


def _check_same_shape_on_every_rank(x, group):
    """Raises the same ValueError on every rank of ``group`` unless all pass ``x`` of one shape and
    dtype: all_gather of unequal tensors is not checked by torch (gloo fills the larger rank's
    result with uninitialised memory, silently, and aborts the smaller rank's process). One
    all-gather of 5 integers per rank, read on the host."""
    # hash of a tuple of ints is the same in every process (only str and bytes hashes are salted).
    meta = torch.tensor(
        [x.dim(), _DTYPES.index(x.dtype), x.shape[0], x.numel(), hash(tuple(x.shape))],
        dtype=torch.int64,
        device=x.device,
    )
    gathered = [torch.empty_like(meta) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, meta, group=group)
    if all(torch.equal(m, gathered[0]) for m in gathered[1:]):
        return
    # Every rank saw the same mismatch, so every rank takes this collective too.
    shapes = [None] * len(gathered)
    dist.all_gather_object(shapes, (list(x.shape), str(x.dtype)), group=group)
    described = ", ".join(
        f"shape {shape} and dtype {dtype} on group rank {r}" for r, (shape, dtype) in enumerate(shapes)
    )
    raise ValueError(f"x must have the same shape and dtype on every rank of group, got {described}")


def all_gather_batch(x, group=None):
    """Every rank's ``x`` concatenated along dim 0 in rank order, on every rank of ``group``
    (default: all ranks), differentiably to any order: the gradient reaching this rank's ``x`` sums
    what every rank's loss sends to it. Every rank must pass a tensor of the same shape and dtype,
    and run the forward and every backward in step with the other ranks: a rank whose shape or dtype
    differs makes every rank raise the same ``ValueError`` (checked by one small all-gather, read on
    the host, before the gather itself)."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError(f"x must be a torch.Tensor with a batch dimension, got {getattr(x, 'shape', type(x).__name__)}")
    _checks.process_group_rank(group)
    _check_same_shape_on_every_rank(x, group)
    return _AllGatherBatch.apply(x, group)
