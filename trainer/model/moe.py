"""Mixture-of-experts FFN: Ling 2.0 / DeepSeek-V3 router and dropless grouped-GEMM dispatch.

Shapes: T tokens (B*T flattened), D d_model, E routed experts, G expert groups, K = top_k,
S = T*K token-slots, F expert width (d_expert).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig, PrecisionConfig
from trainer.fp8 import fp8_grouped_matmul
from trainer.model.layers import SwiGLU, swiglu

# the public F.grouped_mm where this torch has it, else the private op it wraps (torch < 2.10)
GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
# (device type, dtype) -> False once the grouped GEMM has no kernel there (then the loop fallback runs).
_GROUPED_MM_OK: dict[tuple[str, torch.dtype], bool] = {}


def _contiguous_grad(grad: torch.Tensor) -> torch.Tensor:
    # the grouped GEMM's CPU backward rejects expanded (stride-0) gradients, e.g. from ``.sum()``.
    return grad.contiguous()


def _grouped_mm(x_SD: torch.Tensor, w_EDF: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor | None:
    """``GROUPED_MM`` (F.grouped_mm), or None where it cannot run: no kernel for this device/dtype
    (remembered), or row strides that are not multiples of 16 bytes (the kernel requires it; checked
    per call)."""
    key = (x_SD.device.type, x_SD.dtype)
    if _GROUPED_MM_OK.get(key) is False or GROUPED_MM is None:
        return None
    align = 16 // x_SD.element_size()
    if x_SD.shape[1] % align or w_EDF.shape[2] % align or not w_EDF.is_contiguous():
        return None
    try:
        y_SF = GROUPED_MM(x_SD, w_EDF, offs=offs_E)
    except NotImplementedError:
        _GROUPED_MM_OK[key] = False
        return None
    except RuntimeError:
        return None
    if y_SF.requires_grad:
        y_SF.register_hook(_contiguous_grad)
    return y_SF


def expert_matmul(
    x_SD: torch.Tensor,
    w_EDF: torch.Tensor,
    group_sizes_E: torch.Tensor,
    precision_cfg: PrecisionConfig | None = None,
) -> torch.Tensor:
    """Grouped GEMM y[s] = x[s] @ w[e(s)] for token-slots sorted by expert (rows of expert e contiguous,
    ``group_sizes_E[e]`` of them). Works for any (E, In, Out) stack, e.g. ``w_down_EFD`` too.

    fp32/bf16: ``F.grouped_mm`` where it runs (CPU in torch 2.13, and bf16 on recent GPUs), otherwise a
    loop over experts on contiguous slices. fp8: ``trainer.fp8.fp8_grouped_matmul(x_SD, w_EDF,
    group_sizes_E, block)``.
    """
    if precision_cfg is not None and precision_cfg.dtype == "fp8":
        return fp8_grouped_matmul(x_SD, w_EDF, group_sizes_E, precision_cfg.fp8_block)
    device_type = x_SD.device.type
    # follow autocast as nn.Linear does (autocast does not cover grouped_mm)
    if torch.is_autocast_enabled(device_type):
        x_SD = x_SD.to(torch.get_autocast_dtype(device_type))
    w_EDF = w_EDF.to(x_SD.dtype)
    offs_E = torch.cumsum(group_sizes_E, 0).to(torch.int32)
    y_SF = _grouped_mm(x_SD.contiguous(), w_EDF, offs_E)
    if y_SF is not None:
        return y_SF
    ends = offs_E.tolist()
    starts = [0, *ends[:-1]]
    pieces = [x_SD[s:e] @ w_EDF[i] for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if e > s]
    if not pieces:
        return x_SD.new_zeros(x_SD.shape[0], w_EDF.shape[-1])
    return torch.cat(pieces, dim=0)


def expert_swiglu(
    x_SD: torch.Tensor,
    w_gate_EDF: torch.Tensor,
    w_up_EDF: torch.Tensor,
    w_down_EFD: torch.Tensor,
    group_sizes_E: torch.Tensor,
    gate_S: torch.Tensor | None = None,
    precision_cfg: PrecisionConfig | None = None,
) -> torch.Tensor:
    """Routed SwiGLU experts on expert-sorted token-slots (Shazeer 2020, eq. 6, per expert e = e(s)):
    y_s = (g_s * SiLU(x_s W_gate[e]) * (x_s W_up[e])) W_down[e], g_s the slot's gate (1 when None).

    fp32/bf16: the gate multiplies the F-wide hidden instead of the D-wide output (equal by linearity of
    W_down), and SiLU, product and gate are one autograd node (``trainer.model.layers.swiglu``). fp8: the gate
    multiplies the output, so W_down's FP8 input stays the ungated hidden. Gate and up stay two grouped GEMMs:
    on the CPU a fused ``cat([W_gate, W_up], -1)`` GEMM was no faster, and the per-step weight concatenation
    (and the split of its gradient) cost ~15% of the layer (benchmarks/results/trainer_cpu.md).
    """
    a_SF = expert_matmul(x_SD, w_gate_EDF, group_sizes_E, precision_cfg)
    b_SF = expert_matmul(x_SD, w_up_EDF, group_sizes_E, precision_cfg)
    if precision_cfg is not None and precision_cfg.dtype == "fp8":
        y_SD = expert_matmul(swiglu(a_SF, b_SF), w_down_EFD, group_sizes_E, precision_cfg)
        return y_SD if gate_S is None else y_SD * gate_S.to(y_SD.dtype).unsqueeze(1)
    h_SF = swiglu(a_SF, b_SF, None if gate_S is None else gate_S.to(a_SF.dtype))
    return expert_matmul(h_SF, w_down_EFD, group_sizes_E, precision_cfg)


class Router(nn.Module):
    """Ling 2.0 / DeepSeek-V3 router.

    s_TE = sigmoid(x W_r^T) (or softmax); selection uses s + b (b: expert bias buffer, no gradient,
    DeepSeek-V3 arXiv 2412.19437 eq. 16); group-limited routing keeps the ``topk_groups`` groups with the
    largest sum of their top-2 biased scores (DeepSeek-V3 sec. 2.1.2 / Ling 2.0 sec. 2); top-K within them;
    gates g_TK = s (un-biased) at the chosen experts, divided by their sum when ``norm_topk``, times
    ``route_scale``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.n_experts, self.top_k = moe.n_experts, moe.top_k
        self.n_groups, self.topk_groups = moe.n_groups, moe.topk_groups
        self.score_func, self.norm_topk, self.route_scale = moe.score_func, moe.norm_topk, moe.route_scale
        self.weight_ED = nn.Parameter(torch.empty(moe.n_experts, cfg.d_model))
        self.register_buffer("expert_bias_E", torch.zeros(moe.n_experts))

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (expert_idx_TK, gates_TK, scores_TE, logits_TE); router math in fp32."""
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight_ED.float())
            if self.score_func == "sigmoid":
                scores_TE = torch.sigmoid(logits_TE)
            else:
                scores_TE = torch.softmax(logits_TE, dim=-1)
        with torch.no_grad():
            sel_TE = scores_TE + self.expert_bias_E
            if self.n_groups > 1:
                T = sel_TE.shape[0]
                sel_TGe = sel_TE.view(T, self.n_groups, -1)
                top2 = min(2, sel_TGe.shape[-1])
                group_score_TG = sel_TGe.topk(top2, dim=-1).values.sum(-1)
                group_idx_Tg = group_score_TG.topk(self.topk_groups, dim=-1).indices
                keep_TG = torch.zeros_like(group_score_TG, dtype=torch.bool).scatter_(1, group_idx_Tg, True)
                sel_TGe = sel_TGe.masked_fill(~keep_TG.unsqueeze(-1), float("-inf"))
                sel_TE = sel_TGe.view(T, -1)
            expert_idx_TK = sel_TE.topk(self.top_k, dim=-1).indices
        gates_TK = scores_TE.gather(1, expert_idx_TK)
        if self.norm_topk:
            gates_TK = gates_TK / (gates_TK.sum(-1, keepdim=True) + 1e-20)
        return expert_idx_TK, gates_TK * self.route_scale, scores_TE, logits_TE


class MoE(nn.Module):
    """Routed SwiGLU experts (stacked ``w_gate_EDF``, ``w_up_EDF``, ``w_down_EFD``) plus always-on shared
    experts, dropless: token-slots are sorted by expert, run as one grouped GEMM per projection, and
    scatter-added back weighted by their gates.

    E_s shared experts of width F are one SwiGLU of width E_s*F (the sum of E_s SwiGLUs is a SwiGLU over
    the concatenated hidden units), so parameter and FLOP counts are unchanged.
    """

    def __init__(self, cfg: ModelConfig, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.moe_cfg = moe
        self.precision_cfg = precision_cfg
        E, D, Fe = moe.n_experts, cfg.d_model, moe.d_expert
        self.router = Router(cfg)
        self.w_gate_EDF = nn.Parameter(torch.empty(E, D, Fe))
        self.w_up_EDF = nn.Parameter(torch.empty(E, D, Fe))
        self.w_down_EFD = nn.Parameter(torch.empty(E, Fe, D))
        self.shared = SwiGLU(D, moe.n_shared_experts * Fe, precision_cfg) if moe.n_shared_experts else None
        # tokens per expert: of the last forward (balance metrics) and accumulated since the last bias update
        self.register_buffer("last_load_E", torch.zeros(E), persistent=False)
        self.register_buffer("load_accum_E", torch.zeros(E), persistent=False)

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        expert_idx_TK, gates_TK, scores_TE, logits_TE = self.router(x_TD)
        K = expert_idx_TK.shape[1]

        # dispatch: sort the T*K token-slots by expert id (stable, so token order holds within an expert)
        expert_S = expert_idx_TK.reshape(-1)
        order_S = torch.argsort(expert_S, stable=True)
        token_S = order_S // K
        group_sizes_E = torch.bincount(expert_S, minlength=self.moe_cfg.n_experts)
        x_SD = x_TD.index_select(0, token_S)
        gate_S = gates_TK.reshape(-1).index_select(0, order_S)
        y_SD = self._routed_experts(x_SD, group_sizes_E, gate_S)
        out_TD = torch.zeros_like(x_TD, dtype=y_SD.dtype).index_add_(0, token_S, y_SD)
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)

        load_E = group_sizes_E.detach().to(self.last_load_E.dtype)
        self.last_load_E.copy_(load_E)
        if self.training:
            self.load_accum_E.add_(load_E)

        aux: dict[str, torch.Tensor] = {}
        if self.moe_cfg.seq_aux_loss_coef > 0:
            aux["seq_aux_loss"] = self.moe_cfg.seq_aux_loss_coef * self._seq_aux_loss(
                scores_TE.view(B, T, -1), expert_idx_TK.view(B, T, K)
            )
        if self.moe_cfg.z_loss_coef > 0:
            aux["z_loss"] = self.moe_cfg.z_loss_coef * torch.logsumexp(logits_TE, dim=-1).square().mean()
        return out_TD.view(B, T, D).to(x_BTD.dtype), aux

    def _routed_experts(
        self, x_SD: torch.Tensor, group_sizes_E: torch.Tensor, gate_S: torch.Tensor
    ) -> torch.Tensor:
        """g_s * SwiGLU_{e(s)}(x_s) for the expert-sorted token-slots (all experts local; expert
        parallelism overrides this: ``trainer.parallel.expert_parallel``)."""
        return expert_swiglu(
            x_SD, self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD, group_sizes_E, gate_S, self.precision_cfg
        )

    def _seq_aux_loss(self, scores_BTE: torch.Tensor, expert_idx_BTK: torch.Tensor) -> torch.Tensor:
        """Sequence-wise balance loss, DeepSeek-V3 (arXiv 2412.19437) eqs. 17-20, per sequence then
        averaged: L = sum_i f_i P_i, f_i = E/(K T) sum_t 1[i in topK(t)], P_i = 1/T sum_t s'_{t,i},
        s' = s / sum_j s_j."""
        B, T, E = scores_BTE.shape
        K = expert_idx_BTK.shape[-1]
        counts_BE = torch.zeros(B, E, device=scores_BTE.device).scatter_add_(
            1, expert_idx_BTK.reshape(B, T * K), torch.ones(B, T * K, device=scores_BTE.device)
        )
        f_BE = counts_BE * (E / (K * T))
        p_BE = (scores_BTE / scores_BTE.sum(-1, keepdim=True)).mean(dim=1)
        return (f_BE * p_BE).sum(-1).mean()

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """Aux-loss-free balancing (DeepSeek-V3 sec. 2.1.2; Ling 2.0): with load_i the tokens routed to
        expert i since the last update and e_i = mean(load) - load_i,
        b_i += u * (sign(e_i) - mean_j sign(e_j)). Resets the accumulated loads."""
        load_E = self.load_accum_E
        if self.moe_cfg.balance != "bias" or load_E.sum() == 0:
            self.load_accum_E.zero_()
            return
        sign_E = torch.sign(load_E.mean() - load_E)
        self.router.expert_bias_E.add_(self.moe_cfg.bias_update_rate * (sign_E - sign_E.mean()))
        self.load_accum_E.zero_()

    def max_violation(self) -> float:
        """MaxVio = max_i load_i / mean(load) - 1 over the last forward's loads (Wang et al. 2024,
        "Auxiliary-Loss-Free Load Balancing", arXiv 2408.15664, eq. 4)."""
        load_E = self.last_load_E
        mean = load_E.mean()
        if mean <= 0:
            return 0.0
        return float(load_E.max() / mean - 1.0)
