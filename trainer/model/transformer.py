"""Decoder-only transformer (dense or MoE) with DeepSeek-V3 style multi-token prediction.

Shapes: B batch, T time, D d_model, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig, PrecisionConfig
from trainer.model.layers import Attention, RMSNorm, SwiGLU
from trainer.model.moe import MoE


@dataclass
class ModelOutput:
    """``loss``: what the optimizer minimises (LM + weighted MTP + aux losses); ``lm_loss``: next-token CE."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    logits_BTV: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


class Block(nn.Module):
    """Pre-norm block: x = x + Attn(RMSNorm(x)); x = x + FFN(RMSNorm(x)), FFN dense SwiGLU or MoE."""

    def __init__(
        self, cfg: ModelConfig, moe_layer: bool, precision_cfg: PrecisionConfig | None = None
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, precision_cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn: nn.Module = (
            MoE(cfg, precision_cfg) if moe_layer else SwiGLU(cfg.d_model, cfg.d_ffn, precision_cfg)
        )

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD))
        h_BTD = self.ffn_norm(x_BTD)
        if isinstance(self.ffn, MoE):
            y_BTD, aux = self.ffn(h_BTD)
        else:
            y_BTD, aux = self.ffn(h_BTD), {}
        return x_BTD + y_BTD, aux


class MTPModule(nn.Module):
    """Multi-token prediction depth k (DeepSeek-V3, arXiv 2412.19437, sec. 2.2, eq. 21-22):
    h'_i = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))], h^k = TRM_k(h'), logits = Head(RMSNorm(h^k));
    embedding and output head are shared with the main model."""

    def __init__(self, cfg: ModelConfig, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.emb_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg, moe_layer=cfg.moe is not None, precision_cfg=precision_cfg)
        self.out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(
        self, h_BTD: torch.Tensor, emb_BTD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (hidden h^k for the next depth, normed output for the head, aux losses)."""
        x_BTD = self.proj(torch.cat([self.hidden_norm(h_BTD), self.emb_norm(emb_BTD)], dim=-1))
        h_BTD, aux = self.block(x_BTD)
        return h_BTD, self.out_norm(h_BTD), aux


class Transformer(nn.Module):
    """Embedding -> n_layers blocks (first ``moe.n_dense_layers`` dense) -> RMSNorm -> untied head (optionally
    tied), plus ``n_mtp_layers`` MTP modules that only run when targets are given."""

    def __init__(self, cfg: ModelConfig, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        n_dense = cfg.moe.n_dense_layers if cfg.moe is not None else cfg.n_layers
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(
            [Block(cfg, moe_layer=i >= n_dense, precision_cfg=precision_cfg) for i in range(cfg.n_layers)]
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.mtp = nn.ModuleList([MTPModule(cfg, precision_cfg) for _ in range(cfg.n_mtp_layers)])
        self._moe_layers = [m for m in self.modules() if isinstance(m, MoE)]  # plain list: not re-registered
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every matrix (embedding, projections, experts, router, head) ~ N(0, init_std); norms = 1."""
        for name, p in self.named_parameters():
            if p.is_meta:  # shapes only (dry run): nothing to initialise, and meta init is slow
                continue
            if p.ndim >= 2:
                nn.init.normal_(p, mean=0.0, std=self.cfg.init_std)
            elif name.endswith("weight"):
                nn.init.ones_(p)

    def moe_layers(self) -> list[MoE]:
        """The MoE FFNs of the blocks and of the MTP modules, in order."""
        return self._moe_layers

    def forward(
        self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None, return_logits: bool = False
    ) -> ModelOutput:
        """Logits of the next token; with ``targets_BT`` (= idx shifted left by one) the losses:
        lm_loss = CE(logits, targets); mtp_loss = mean_k CE(MTP_k) (depth k predicts t_{i+k+1});
        loss = lm_loss + mtp_loss_weight * mtp_loss + sum of MoE aux losses (DeepSeek-V3 eq. 24-25)."""
        aux_terms: dict[str, torch.Tensor] = {}

        def add_aux(aux: dict[str, torch.Tensor]) -> None:
            for k, v in aux.items():
                aux_terms[k] = aux_terms[k] + v if k in aux_terms else v

        x_BTD = self.embed(idx_BT)
        for block in self.blocks:
            x_BTD, aux = block(x_BTD)
            add_aux(aux)
        logits_BTV = self.head(self.norm(x_BTD))
        metrics: dict[str, float] = {}
        moe_layers = self.moe_layers()
        if targets_BT is None:
            return ModelOutput(None, None, logits_BTV, metrics)

        V = logits_BTV.shape[-1]
        lm_loss = F.cross_entropy(logits_BTV.float().reshape(-1, V), targets_BT.reshape(-1))
        loss = lm_loss
        metrics["lm_loss"] = float(lm_loss.detach())

        if len(self.mtp) > 0:
            T = idx_BT.shape[1]
            h_BTD = x_BTD
            mtp_losses = []
            for k, module in enumerate(self.mtp, start=1):
                if T - k < 1:
                    break
                # position i (< T-k) sees t_{i+k} = targets[:, i+k-1] and predicts t_{i+k+1} = targets[:, i+k]
                emb_BTD = self.embed(targets_BT[:, k - 1 : T - 1])
                h_BTD, out_BTD, aux = module(h_BTD[:, : T - k], emb_BTD)
                add_aux(aux)
                mtp_logits_BTV = self.head(out_BTD)
                mtp_losses.append(
                    F.cross_entropy(mtp_logits_BTV.float().reshape(-1, V), targets_BT[:, k:].reshape(-1))
                )
            if mtp_losses:
                mtp_loss = torch.stack(mtp_losses).mean()
                loss = loss + self.cfg.mtp_loss_weight * mtp_loss
                metrics["mtp_loss"] = float(mtp_loss.detach())

        for name, value in aux_terms.items():
            loss = loss + value
            metrics[name] = float(value.detach())
        if moe_layers:
            metrics["max_violation"] = self.moe_balance()["max_violation"]
        return ModelOutput(loss, lm_loss, logits_BTV if return_logits else None, metrics)

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """Aux-loss-free bias update in every MoE layer from the loads since the last update (no-op for
        a dense model)."""
        for m in self.moe_layers():
            m.update_expert_bias()

    def moe_balance(self) -> dict[str, float]:
        """``max_violation``: MaxVio averaged over MoE layers (last forward); ``max_violation_worst``: the
        worst layer; ``expert_bias_absmean``: mean |b_i|. Empty for a dense model."""
        layers = self.moe_layers()
        if not layers:
            return {}
        vio = [m.max_violation() for m in layers]
        bias = torch.cat([m.router.expert_bias_E for m in layers])
        return {
            "max_violation": sum(vio) / len(vio),
            "max_violation_worst": max(vio),
            "expert_bias_absmean": float(bias.abs().mean()),
        }

    def param_counts(self) -> dict[str, int]:
        """Counts from the built tensors: total/active without MTP (tied weights once), embedding, mtp.
        Active replaces each MoE layer's routed experts by top_k of them."""
        seen: set[int] = set()
        total = mtp = 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.startswith("mtp."):
                mtp += p.numel()
            else:
                total += p.numel()
        inactive = 0
        for m in self.blocks.modules():
            if isinstance(m, MoE):
                routed = m.w_gate_EDF.numel() + m.w_up_EDF.numel() + m.w_down_EFD.numel()
                E, K = m.moe_cfg.n_experts, m.moe_cfg.top_k
                inactive += routed // E * (E - K)
        embedding = self.embed.weight.numel() + (0 if self.cfg.tie_embeddings else self.head.weight.numel())
        return {"total": total, "active": total - inactive, "embedding": embedding, "mtp": mtp}


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Make torch.nn.init's random fills no-ops while building on ``meta``: a meta tensor has no values, and
    torch has no C++ meta kernel for ``normal_``/``uniform_``, so their Python fallback imports
    torch._dynamo (seconds, tens of seconds on a loaded machine) for nothing."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build_model(
    model_cfg: ModelConfig,
    precision_cfg: PrecisionConfig | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Build the model on ``device`` (``"meta"`` builds any size, 1T included, without memory)."""
    if device is None:
        return Transformer(model_cfg, precision_cfg)
    device = torch.device(device)
    with torch.device(device), _no_init() if device.type == "meta" else contextlib.nullcontext():
        return Transformer(model_cfg, precision_cfg)
