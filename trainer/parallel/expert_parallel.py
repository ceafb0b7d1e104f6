"""Expert parallelism: routed experts sharded over an ``ep`` process group, tokens exchanged by all-to-all.

With P = ep ranks and E experts, rank k holds experts [k*E/P, (k+1)*E/P) (``E_l = E/P`` of them, in the
same stacked ``w_gate_EDF``/``w_up_EDF``/``w_down_EFD`` parameters, now E_l long); the router, its expert
bias and the shared experts stay replicated. One MoE forward on each rank (GShard, Lepikhin et al. 2020,
arXiv 2006.16668, sec. 2.2; the dropless variant of Megatron-Core's ``MoEAlltoAllTokenDispatcher``):

1. route the local tokens (T of them) and sort the T*K token-slots by global expert id: the slots for the
   experts of rank p are then contiguous, ``send_P[p]`` of them;
2. exchange the per-expert counts (all-to-all of ``group_sizes_E``), then the slots themselves
   (``all_to_all_single`` with uneven splits): rank k receives, from every source rank p, the slots for its
   own experts, sorted by expert within each source's chunk;
3. re-sort the received rows by local expert (stable), run the SwiGLU experts as grouped GEMMs
   (``trainer.model.moe.expert_matmul``), undo the re-sort;
4. all-to-all the outputs back (splits swapped) and combine y_t = sum_k g_tk * y_(t,k) as the one-process
   layer does.

The all-to-all is differentiable: its backward is the all-to-all with send and receive splits swapped
(``_AllToAll``). gloo (CPU) implements ``all_to_all_single`` with uneven splits; on CUDA the same call runs on
NCCL's all-to-all. Gradients of the local experts sum the contributions of the whole ``ep`` group's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.model.moe import MoE, expert_swiglu

EXPERT_PARAMS = ("w_gate_EDF", "w_up_EDF", "w_down_EFD")  # stacked routed experts, expert dim first


class _AllToAll(torch.autograd.Function):
    """y = all_to_all(x): rows x[sum(in_splits[:p]) : sum(in_splits[:p+1])] go to rank p; the backward sends
    the gradient rows back along the same routes (an all-to-all with the splits swapped)."""

    @staticmethod
    def forward(
        ctx: Any, x_SD: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        y_RD = x_SD.new_empty((sum(out_splits), *x_SD.shape[1:]))
        dist.all_to_all_single(y_RD, x_SD.contiguous(), out_splits, in_splits, group=group)
        return y_RD

    @staticmethod
    def backward(ctx: Any, grad_RD: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        grad_SD = grad_RD.new_empty((sum(in_splits), *grad_RD.shape[1:]))
        dist.all_to_all_single(grad_SD, grad_RD.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_SD, None, None, None


def all_to_all(x_SD: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
    """Differentiable uneven all-to-all of rows over ``group`` (``in_splits[p]`` rows to rank p,
    ``out_splits[p]`` rows from rank p)."""
    return _AllToAll.apply(x_SD, out_splits, in_splits, group)


class ExpertParallelMoE(MoE):
    """A ``MoE`` whose routed experts are sharded over an ``ep`` group (see the module docstring).

    Built from a one-process ``MoE`` by ``from_moe``: same submodules (router, shared experts) and buffers,
    so state-dict keys are unchanged; the three expert stacks hold this rank's ``E_l`` experts. Balancing,
    MaxVio and the aux losses are the parent's: loads and scores cover the local tokens, all E experts.
    """

    ep_group: Any
    ep_rank: int
    ep_size: int

    @classmethod
    def from_moe(cls, moe: MoE, group: Any, ep_rank: int, ep_size: int) -> ExpertParallelMoE:
        E = moe.moe_cfg.n_experts
        if E % ep_size:
            raise ValueError(f"ep ({ep_size}) must divide n_experts ({E})")
        obj = cls.__new__(cls)
        state = dict(moe.__dict__)
        for key in ("_parameters", "_buffers", "_modules"):
            state[key] = dict(state[key])
        obj.__dict__.update(state)
        obj.ep_group, obj.ep_rank, obj.ep_size = group, ep_rank, ep_size
        e_local = E // ep_size
        lo = ep_rank * e_local
        for name in EXPERT_PARAMS:
            full = getattr(moe, name)
            obj._parameters[name] = nn.Parameter(full.detach()[lo : lo + e_local].clone(), full.requires_grad)
        return obj

    @property
    def n_local_experts(self) -> int:
        return self.moe_cfg.n_experts // self.ep_size

    def _routed_experts(
        self, x_SD: torch.Tensor, group_sizes_E: torch.Tensor, gate_S: torch.Tensor
    ) -> torch.Tensor:
        """g_s * SwiGLU_{e(s)}(x_s) for expert-sorted slots whose experts live on any rank of the group
        (routing, combine, balance metrics and aux losses are ``MoE.forward``'s; the gate is applied here,
        after the return all-to-all, because gates stay on the token's own rank)."""
        P, El = self.ep_size, self.n_local_experts
        # counts: recv_PEl[p, e] = slots rank p sends to this rank's local expert e
        recv_PEl = torch.empty_like(group_sizes_E)
        dist.all_to_all_single(recv_PEl, group_sizes_E.contiguous(), group=self.ep_group)
        recv_PEl = recv_PEl.view(P, El)
        in_splits = group_sizes_E.view(P, El).sum(1).tolist()
        out_splits = recv_PEl.sum(1).tolist()
        x_RD = all_to_all(x_SD, out_splits, in_splits, self.ep_group)

        # received rows are ordered (source rank, local expert): re-sort them expert-major
        local_R = torch.repeat_interleave(
            torch.arange(El, device=x_RD.device).repeat(P), recv_PEl.reshape(-1)
        )
        perm_R = torch.argsort(local_R, stable=True)
        sizes_El = recv_PEl.sum(0)
        xl_RD = x_RD.index_select(0, perm_R)
        yl_RD = expert_swiglu(
            xl_RD, self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD, sizes_El, precision_cfg=self.precision_cfg
        )
        y_RD = torch.empty_like(yl_RD).index_copy(0, perm_R, yl_RD)
        y_SD = all_to_all(y_RD, in_splits, out_splits, self.ep_group)
        return y_SD * gate_S.to(y_SD.dtype).unsqueeze(1)


def shard_experts(model: nn.Module, group: Any, ep_rank: int, ep_size: int) -> list[ExpertParallelMoE]:
    """Replace every ``MoE`` in ``model`` by its ``ExpertParallelMoE`` (this rank's experts only).

    The model must hold the full, identically initialised experts on every rank (same seed). A
    ``Transformer`` keeps a plain list of its MoE layers (``_moe_layers``, used by ``update_expert_bias`` and
    ``moe_balance``): it is refreshed so those see the new modules.
    """
    replaced = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoE) and not isinstance(child, ExpertParallelMoE):
                ep_moe = ExpertParallelMoE.from_moe(child, group, ep_rank, ep_size)
                setattr(parent, name, ep_moe)
                replaced.append(ep_moe)
    if hasattr(model, "_moe_layers"):
        model._moe_layers = [m for m in model.modules() if isinstance(m, MoE)]
    return replaced


def expert_parameter_names(model: nn.Module) -> list[str]:
    """State-dict names of the sharded expert stacks."""
    return [
        f"{mod_name}.{p}" if mod_name else p
        for mod_name, m in model.named_modules()
        if isinstance(m, ExpertParallelMoE)
        for p in EXPERT_PARAMS
    ]


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The sharded expert parameters (empty without expert parallelism)."""
    return [getattr(m, p) for m in model.modules() if isinstance(m, ExpertParallelMoE) for p in EXPERT_PARAMS]


def _gather_dim0(t: torch.Tensor, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def gather_expert_state(
    model: nn.Module, state: dict[str, torch.Tensor], group: Any
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (this rank's state dict) with each expert stack all-gathered to all E experts
    (gathered from the live parameters on their device, as NCCL cannot gather CPU tensors; returned on
    the CPU)."""
    out = dict(state)
    for name in expert_parameter_names(model):
        out[name] = _gather_dim0(model.get_parameter(name).detach(), group).cpu()
    return out


def shard_expert_state(model: nn.Module, state: dict[str, torch.Tensor], ep_rank: int, ep_size: int) -> dict:
    """A copy of a full state dict with each expert stack cut to this rank's experts."""
    out = dict(state)
    for name in expert_parameter_names(model):
        full = state[name]
        n = full.shape[0] // ep_size
        out[name] = full[ep_rank * n : (ep_rank + 1) * n].clone()
    return out


def _expert_slots(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[int]:
    """Indices, in ``optimizer.state_dict()`` numbering, of the sharded expert parameters."""
    ids = {id(p) for p in expert_parameters(model)}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return {i for i, p in enumerate(params) if id(p) in ids}


def _map_expert_moments(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    opt_state: dict[str, Any],
    fn: Callable[[torch.Tensor, nn.Parameter], torch.Tensor],
) -> dict[str, Any]:
    """``opt_state`` with ``fn(moment, param)`` applied to every non-scalar tensor in the state of each
    expert parameter (other parameters and scalars such as ``step`` are left as they are)."""
    slots = _expert_slots(model, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = dict(opt_state["state"])
    for i in sorted(slots):
        if i in state:
            state[i] = {
                k: fn(v, params[i]) if torch.is_tensor(v) and v.ndim > 0 else v for k, v in state[i].items()
            }
    return {**opt_state, "state": state}


def gather_expert_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, opt_state: dict[str, Any], group: Any
) -> dict[str, Any]:
    """``optimizer.state_dict()`` with the per-expert moments (``exp_avg``, ``exp_avg_sq``: shaped like the
    expert stack) all-gathered over the ``ep`` group; scalars (``step``) are left as they are."""

    def gather(v: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
        return _gather_dim0(v, group) if v.shape == p.shape else v

    return _map_expert_moments(model, optimizer, opt_state, gather)


def shard_expert_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, opt_state: dict[str, Any], ep_rank: int, ep_size: int
) -> dict[str, Any]:
    """Inverse of ``gather_expert_optimizer_state``: keep this rank's rows of each expert moment."""

    def shard(v: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
        n = p.shape[0]
        if v.shape[0] == n * ep_size and v.shape[1:] == p.shape[1:]:
            return v[ep_rank * n : (ep_rank + 1) * n].clone()
        return v

    return _map_expert_moments(model, optimizer, opt_state, shard)
