"""The trainer across processes: init from torchrun's environment, process groups from the config's
parallel layout, and the rank-aware steps of the training loop.

Layout (``RunConfig.parallel``; docs/PARALLEL.md has the whole mapping): world = tp * pp * dp processes.
Implemented: data parallel (dp) and expert parallel (ep, carved out of the dp ranks as in Megatron-Core:
ep divides dp). Rank r = edp_index * ep + ep_rank, so the ``ep`` group of r is the block of ``ep``
consecutive ranks that share one copy of the routed experts (each holds E/ep of them) and the expert
data-parallel (``edp``) group of r is the dp/ep ranks with the same ep_rank (they hold the same experts).
Tensor (tp) and pipeline (pp) parallelism are designed only: ``tp > 1`` or ``pp > 1`` is refused with a
``ConfigError`` naming the field.

Data parallel semantics: the global batch of step s is ``TokenData.batch(s, batch_size)`` whatever the world
size; it is split into micro-batches of ``micro_batch_size`` sequences (global, as the recommender writes it),
and rank r reads the r-th of dp equal slices of every micro-batch (``local_rows``). Each rank minimises the
mean loss over its own tokens; gradients are summed over the ranks that hold a parameter and divided by dp,
which is the gradient of the global mean loss:
    grad = (1/dp) * sum_r grad L_r,  L_r = mean over rank r's tokens,  (1/dp) * sum_r L_r = L_global
(every rank holds the same number of tokens). Expert-bias balancing sums the expert loads over all ranks
before the update, so every rank applies the same bias update as one process would.

A world of one process (no torchrun) is a no-op everywhere: the loop then runs exactly as before.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.config import ConfigError, RunConfig

TIMEOUT_ENV = "WT_DIST_TIMEOUT_S"  # collective timeout in seconds (default 600): a dead peer fails the run


def env_rank() -> int:
    """This process's global rank from torchrun's ``RANK`` (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """World size from torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on global rank 0 (the rank that reports, prints and writes files)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def check_layout(run_cfg: RunConfig, world_size: int) -> tuple[int, int]:
    """Validate the parallel layout against the launch; returns (dp, ep) as the trainer will run them.

    Raises ``ConfigError`` naming the field: tp/pp > 1 (not implemented), tp*pp*dp != world size when
    launched with several processes, ep not dividing dp, or dp not dividing the (micro-)batch. A single
    process runs any layout's global batch unsharded (dp and ep do not apply; a warning says so).
    """
    par = run_cfg.parallel
    problems = []
    if par.tp > 1:
        problems.append(
            f"parallel.tp: tensor parallelism (tp={par.tp}) is designed (docs/PARALLEL.md) but not "
            "implemented in the trainer; set parallel.tp=1"
        )
    if par.pp > 1:
        problems.append(
            f"parallel.pp: pipeline parallelism (pp={par.pp}) is designed (docs/PARALLEL.md) but not "
            "implemented in the trainer; set parallel.pp=1"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    ep = par.ep if run_cfg.model.moe is not None else 1
    if world_size == 1:
        if par.dp > 1 or ep > 1:
            warnings.warn(
                f"parallel.dp={par.dp}, parallel.ep={par.ep} but one process was launched: training the "
                "global batch in this process (launch with torchrun --nproc_per_node for the layout)",
                stacklevel=3,
            )
        return 1, 1
    if par.dp != world_size:
        raise ConfigError(
            f"parallel.dp: tp*pp*dp = {par.dp} but torchrun launched {world_size} processes; "
            f"set parallel.dp={world_size} (e.g. --set parallel.dp={world_size})"
        )
    if par.dp % ep:
        raise ConfigError(
            f"parallel.ep: ep ({ep}) must divide dp ({par.dp}) (experts are sharded over dp ranks)"
        )
    micro = run_cfg.optim.micro_batch_size or run_cfg.optim.batch_size
    if micro % par.dp:
        name = "optim.micro_batch_size" if run_cfg.optim.micro_batch_size else "optim.batch_size"
        raise ConfigError(
            f"{name}: {micro} sequences per micro-batch must be a multiple of parallel.dp ({par.dp})"
        )
    return par.dp, ep


def local_rows(batch_size: int, micro_batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rows of the global batch that ``rank`` reads: the rank-th of ``world_size`` equal slices of each
    micro-batch, micro-batches in order, so local micro-batch i is rank's slice of global micro-batch i.

    >>> local_rows(8, 4, 1, 2).tolist()
    [2, 3, 6, 7]
    """
    if batch_size % micro_batch_size or micro_batch_size % world_size:
        raise ValueError(
            f"world {world_size} must divide micro {micro_batch_size}, which must divide {batch_size}"
        )
    per = micro_batch_size // world_size
    starts = np.arange(0, batch_size, micro_batch_size)[:, None] + rank * per
    return (starts + np.arange(per)[None, :]).reshape(-1).astype(np.int64)


@dataclass
class ParallelContext:
    """This process's place in the layout and the collectives the training loop needs.

    ``ep_group``/``edp_group`` are None when that group has one member (nothing to communicate).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp: int = 1
    ep: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ep_group: Any = None
    edp_group: Any = None
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    # ---- data -----------------------------------------------------------------------------------
    def batch_rows(self, batch_size: int, micro_batch_size: int) -> np.ndarray | None:
        """Rows of the global batch for this rank (None: all of them, one process)."""
        if not self.distributed:
            return None
        return local_rows(batch_size, micro_batch_size, self.rank, self.world_size)

    def local_micro(self, micro_batch_size: int) -> int:
        """Sequences per forward on this rank."""
        return micro_batch_size // self.world_size

    def shard_batches(
        self, batches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's equal slice of each (validation) batch; with ``mean`` of the per-rank mean losses
        this is the mean over the whole batch (all slices have the same size)."""
        if not self.distributed:
            return batches
        out = []
        for x_BT, y_BT in batches:
            per = x_BT.shape[0] // self.world_size
            sl = slice(self.rank * per, (self.rank + 1) * per)
            out.append((x_BT[sl], y_BT[sl]))
        return out

    # ---- collectives ----------------------------------------------------------------------------
    def mean(self, *values: float) -> tuple[float, ...]:
        """Mean of each float over all ranks (one all-reduce); NaN anywhere gives NaN everywhere, so every
        rank takes the same divergence decision."""
        if not self.distributed:
            return tuple(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return tuple(float(v) / self.world_size for v in t.tolist())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` of rank 0 on every rank (pickled; used for checkpoints, so no shared disk is needed)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def sync_expert_loads(self, model: nn.Module) -> None:
        """Sum every MoE layer's accumulated expert loads over all ranks (one all-reduce) so that the
        aux-loss-free bias update b_i += u*(sign(mean(load) - load_i) - mean_j sign(.)) (DeepSeek-V3 sec.
        2.1.2) sees the global load and stays identical on every rank. Loads are token counts: the sum is
        exact, so the biases are bitwise equal across ranks."""
        if not self.distributed:
            return
        loads = [b for name, b in model.named_buffers() if name.endswith("load_accum_E")]
        if not loads:
            return
        flat = torch.cat([b.reshape(-1) for b in loads])
        dist.all_reduce(flat)
        offset = 0
        for b in loads:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()

    def _grad_buckets(self, model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(replicated params: dense parts, router, shared experts; expert-sharded params)."""
        from trainer.parallel.expert_parallel import expert_parameters

        sharded = {id(p) for p in expert_parameters(model)}
        dense, expert = [], []
        for p in model.parameters():
            if p.requires_grad:
                (expert if id(p) in sharded else dense).append(p)
        return dense, expert

    @staticmethod
    def _all_reduce_grads(params: list[nn.Parameter], group: Any, scale: float, reduce: bool = True) -> None:
        """g <- scale * sum over ``group`` (None: all ranks) of g, as one flat all-reduce (None grads count
        as zeros); ``reduce=False`` only scales (a group of one)."""
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if reduce:
            dist.all_reduce(flat, group=group)
        flat.mul_(scale)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> float:
        """Average gradients over the data-parallel ranks, then clip to the global norm; returns the norm.

        One process: ``torch.nn.utils.clip_grad_norm_`` (unchanged). Several: replicated parameters are
        summed over all ranks, expert-sharded ones over their ``edp`` group (the ranks holding the same
        experts; each expert's gradient already sums its ``ep`` group's tokens through the all-to-all
        backward), both divided by dp. The norm is ||g|| = sqrt(sum_dense g^2 + sum_ep-group sum_expert g^2)
        and gradients are scaled by min(1, max_norm / (||g|| + 1e-6)), torch's clip_grad_norm_ rule.
        """
        if not self.distributed:
            return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        dense, expert = self._grad_buckets(model)
        scale = 1.0 / self.world_size
        self._all_reduce_grads(dense, None, scale)
        self._all_reduce_grads(expert, self.edp_group, scale, reduce=self.edp_group is not None)
        sq = torch.zeros((), dtype=torch.float32)
        for p in dense:
            sq = sq + p.grad.float().pow(2).sum()
        sq_expert = torch.zeros((), dtype=torch.float32)
        for p in expert:
            sq_expert = sq_expert + p.grad.float().pow(2).sum()
        if expert and self.ep_group is not None:
            dist.all_reduce(sq_expert, group=self.ep_group)
        norm = float((sq + sq_expert).sqrt())
        coef = min(1.0, max_norm / (norm + 1e-6))
        if coef < 1.0:
            for p in dense + expert:
                p.grad.mul_(coef)
        return norm

    # ---- model and checkpoints --------------------------------------------------------------------
    def wrap_model(self, model: nn.Module, run_cfg: RunConfig) -> nn.Module:
        """Shard the routed experts over the ``ep`` group (a no-op when ep = 1). Call before building the
        optimizer: the expert parameters are replaced by this rank's slices."""
        if self.ep > 1:
            from trainer.parallel.expert_parallel import shard_experts

            shard_experts(model, self.ep_group, self.ep_rank, self.ep)
        return model

    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict on the CPU with the experts gathered from the ``ep`` group (a collective:
        every rank calls it; every rank gets the full state)."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.ep > 1:
            from trainer.parallel.expert_parallel import gather_expert_state

            state = gather_expert_state(model, state, self.ep_group)
        return state

    def load_full_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full (layout-independent) state dict, keeping this rank's experts."""
        if self.ep > 1:
            from trainer.parallel.expert_parallel import shard_expert_state

            state = shard_expert_state(model, state, self.ep_rank, self.ep)
        model.load_state_dict(state)

    def training_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """``trainer.checkpoint.training_state`` with experts and their optimizer state gathered (a
        collective): the checkpoint has the keys and shapes of a one-process checkpoint, whatever the
        layout."""
        from trainer.checkpoint import training_state

        state = training_state(model, optimizer, step, extra)
        if self.ep > 1:
            from trainer.parallel.expert_parallel import gather_expert_optimizer_state

            state["model"] = self.full_model_state(model)
            state["optimizer"] = gather_expert_optimizer_state(
                model, optimizer, state["optimizer"], self.ep_group
            )
        return state

    def restore_training_state(
        self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> int:
        """``trainer.checkpoint.restore_training_state`` from a full checkpoint (this rank's experts kept)."""
        from trainer.checkpoint import restore_training_state

        if self.ep > 1:
            from trainer.parallel.expert_parallel import shard_expert_optimizer_state, shard_expert_state

            state = dict(state)
            state["model"] = shard_expert_state(model, state["model"], self.ep_rank, self.ep)
            state["optimizer"] = shard_expert_optimizer_state(
                model, optimizer, state["optimizer"], self.ep_rank, self.ep
            )
        return restore_training_state(state, model, optimizer)

    def close(self) -> None:
        """Destroy the default process group if ``init_parallel`` created it."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_process_group = False


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))


def init_parallel(run_cfg: RunConfig, device: torch.device) -> ParallelContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``), join
    or create the default process group (gloo on the CPU, NCCL on CUDA, cuda:LOCAL_RANK per process),
    check the layout (``check_layout``) and build the ``ep`` and ``edp`` groups.

    Without torchrun (WORLD_SIZE unset or 1) and no process group: a one-process context.
    """
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else env_world_size()
    dp, ep = check_layout(run_cfg, world)
    if world == 1:
        return ParallelContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not initialized:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_timeout())
        owns = True
    rank = dist.get_rank()
    ctx = ParallelContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        dp=dp,
        ep=ep,
        device=device,
        owns_process_group=owns,
    )
    if ep > 1:
        # every rank creates every group, in the same order (torch.distributed.new_group's contract)
        ep_blocks = [list(range(i, i + ep)) for i in range(0, world, ep)]
        edp_sets = [list(range(j, world, ep)) for j in range(ep)]
        for ranks in ep_blocks:
            g = dist.new_group(ranks)
            if rank in ranks:
                ctx.ep_group = g
        for ranks in edp_sets:
            g = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                ctx.edp_group = g
    return ctx
