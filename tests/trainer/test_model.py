"""Dense and MoE decoder: gradients, causality, dispatch vs a per-token reference, routing and balancing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.config import ModelConfig, MoEConfig, PrecisionConfig
from trainer.model import build_model, expert_matmul, make_linear
from trainer.model import moe as moe_mod
from trainer.model.layers import PartialRoPE
from trainer.model.moe import MoE, Router

torch.set_num_threads(1)


def tiny_cfg(moe: bool = True, **kw: object) -> ModelConfig:
    moe_kw: dict = dict(n_experts=8, top_k=2, n_shared_experts=1, d_expert=16, n_dense_layers=1, n_groups=4)
    moe_kw["topk_groups"] = 2
    for key in list(kw):
        if key.startswith("moe_"):
            moe_kw[key[4:]] = kw.pop(key)
    base: dict = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=48, seq_len=16)
    base["init_std"] = 0.05
    base.update(kw)
    return ModelConfig(moe=MoEConfig(**moe_kw) if moe else None, **base)


def _batch(cfg: ModelConfig, B: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_cfg(moe=False),
        tiny_cfg(moe=True, n_mtp_layers=1, moe_seq_aux_loss_coef=0.01, moe_z_loss_coef=0.001),
        tiny_cfg(moe=True, moe_score_func="softmax", moe_n_groups=1, moe_topk_groups=1, tie_embeddings=True),
    ],
    ids=["dense", "moe_mtp_aux", "moe_softmax_tied"],
)
def test_forward_backward_finite(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg)
    x_BT, y_BT = _batch(cfg)
    out = model(x_BT, y_BT)
    assert out.loss is not None and out.lm_loss is not None and out.logits_BTV is None
    # near-uniform predictions at init
    assert abs(out.lm_loss.item() - math.log(cfg.vocab_size)) < 0.3
    expected = out.lm_loss
    if cfg.n_mtp_layers:
        expected = expected + cfg.mtp_loss_weight * out.metrics["mtp_loss"]
    for name in ("seq_aux_loss", "z_loss"):
        if name in out.metrics:
            assert out.metrics[name] > 0
            expected = expected + out.metrics[name]
    assert out.loss.item() == pytest.approx(float(expected.detach()), rel=1e-5)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    grad_norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
    assert grad_norm > 0
    if cfg.moe is not None:
        assert "max_violation" in out.metrics and out.metrics["max_violation"] >= 0
        assert model.moe_layers()[0].router.expert_bias_E.grad is None


@pytest.mark.parametrize("moe", [False, True])
def test_causal(moe: bool) -> None:
    torch.manual_seed(1)
    cfg = tiny_cfg(moe=moe)
    model = build_model(cfg).eval()
    x_BT, _ = _batch(cfg, B=2)
    t = 9
    x2_BT = x_BT.clone()
    x2_BT[:, t] = (x2_BT[:, t] + 1) % cfg.vocab_size
    with torch.no_grad():
        a = model(x_BT).logits_BTV
        b = model(x2_BT).logits_BTV
    assert a is not None and b is not None
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4


def _naive_moe(moe: MoE, x_TD: torch.Tensor) -> torch.Tensor:
    """Per-token reference: y_t = sum_k g_tk SwiGLU_{e_tk}(x_t) + shared(x_t)."""
    idx_TK, gates_TK, _, _ = moe.router(x_TD)
    rows = []
    for t in range(x_TD.shape[0]):
        y_D = moe.shared(x_TD[t]) if moe.shared is not None else torch.zeros_like(x_TD[t])
        for k in range(idx_TK.shape[1]):
            e = int(idx_TK[t, k])
            h = F.silu(x_TD[t] @ moe.w_gate_EDF[e]) * (x_TD[t] @ moe.w_up_EDF[e])
            y_D = y_D + gates_TK[t, k] * (h @ moe.w_down_EFD[e])
        rows.append(y_D)
    return torch.stack(rows)


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "loop_fallback"])
def test_dispatch_matches_per_token_reference(grouped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not grouped:
        monkeypatch.setitem(moe_mod._GROUPED_MM_OK, ("cpu", torch.float32), False)
    torch.manual_seed(2)
    cfg = tiny_cfg(moe=True, moe_n_experts=16, moe_top_k=4, moe_n_groups=4, moe_topk_groups=2)
    model = build_model(cfg)
    moe = model.moe_layers()[0]
    x_BTD = torch.randn(2, 7, cfg.d_model)
    out_BTD, _ = moe(x_BTD)
    ref_TD = _naive_moe(moe, x_BTD.reshape(-1, cfg.d_model))
    torch.testing.assert_close(out_BTD.reshape(-1, cfg.d_model), ref_TD, rtol=1e-5, atol=1e-6)
    # gradients through the dispatch equal those of the reference
    # (all weights and the router: the gate's gradient reaches the router through the gate values)
    params = [moe.w_gate_EDF, moe.w_up_EDF, moe.w_down_EFD, moe.router.weight_ED, moe.shared.w_gate.weight]
    g_fast = torch.autograd.grad(out_BTD.square().sum(), params)
    g_ref = torch.autograd.grad(_naive_moe(moe, x_BTD.reshape(-1, cfg.d_model)).square().sum(), params)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("D", "F_", "grouped"), [(8, 4, True), (6, 5, False)], ids=["aligned", "unaligned"])
def test_expert_matmul_empty_groups_and_sum_backward(
    D: int, F_: int, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = torch._grouped_mm

    def spy(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(torch, "_grouped_mm", spy)
    torch.manual_seed(3)
    sizes_E = torch.tensor([3, 0, 5, 0])
    x_SD = torch.randn(8, D, requires_grad=True)
    w_EDF = torch.randn(4, D, F_, requires_grad=True)
    y_SF = expert_matmul(x_SD, w_EDF, sizes_E)
    ref_SF = torch.cat([x_SD[:3] @ w_EDF[0], x_SD[3:] @ w_EDF[2]])
    torch.testing.assert_close(y_SF, ref_SF)
    y_SF.sum().backward()  # stride-0 gradient
    assert torch.isfinite(w_EDF.grad).all() and w_EDF.grad[1].abs().sum() == 0
    assert bool(calls) == grouped  # 16-byte-aligned rows use torch._grouped_mm, others the loop
    # a misaligned call disables nothing
    assert moe_mod._GROUPED_MM_OK.get(("cpu", torch.float32)) is not False


def test_bias_update_rule_toy() -> None:
    cfg = tiny_cfg(moe=True, moe_n_experts=4, moe_top_k=1, moe_n_groups=1, moe_topk_groups=1)
    moe = build_model(cfg).moe_layers()[0]
    moe.load_accum_E.copy_(torch.tensor([10.0, 2.0, 4.0, 4.0]))  # mean 5 -> e = [-5, 3, 1, 1]
    moe.update_expert_bias()
    u = cfg.moe.bias_update_rate
    sign = torch.tensor([-1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(moe.router.expert_bias_E, u * (sign - sign.mean()))
    assert moe.load_accum_E.sum() == 0  # loads reset after an update
    before = moe.router.expert_bias_E.clone()
    moe.update_expert_bias()  # no loads since: no change
    torch.testing.assert_close(moe.router.expert_bias_E, before)


def test_bias_balancing_reduces_violation() -> None:
    torch.manual_seed(4)
    cfg = tiny_cfg(moe=True, moe_n_groups=1, moe_topk_groups=1, moe_bias_update_rate=0.01)
    moe = build_model(cfg).moe_layers()[0]
    with torch.no_grad():
        moe.router.weight_ED[0] += 0.5  # expert 0 attracts most tokens
    x_BTD = torch.randn(4, 16, cfg.d_model) + 1.0
    with torch.no_grad():
        moe(x_BTD)
        start = moe.max_violation()
        for _ in range(150):
            moe(x_BTD)
            moe.update_expert_bias()
        moe(x_BTD)
    assert start > 1.0
    assert moe.max_violation() < 0.5 * start


def test_group_limited_routing_stays_in_chosen_groups() -> None:
    torch.manual_seed(5)
    cfg = tiny_cfg(moe=True, moe_n_experts=32, moe_top_k=4, moe_n_groups=8, moe_topk_groups=2)
    router = build_model(cfg).moe_layers()[0].router
    with torch.no_grad():
        router.expert_bias_E.copy_(torch.randn(32) * 0.05)
    x_TD = torch.randn(200, cfg.d_model) * 5
    idx_TK, _, scores_TE, _ = router(x_TD)
    sel_TGe = (scores_TE + router.expert_bias_E).view(200, 8, 4)
    group_score_TG = sel_TGe.topk(2, dim=-1).values.sum(-1)
    chosen_Tg = group_score_TG.topk(2, dim=-1).indices
    groups_TK = idx_TK // 4
    assert (groups_TK.unsqueeze(-1) == chosen_Tg.unsqueeze(1)).any(-1).all()
    # and the restriction is binding: plain top-k over all experts would have left the groups for some token
    plain_TK = (scores_TE + router.expert_bias_E).topk(4, dim=-1).indices
    assert not torch.equal(plain_TK.sort(-1).values, idx_TK.sort(-1).values)


def test_bias_changes_selection_not_gates() -> None:
    torch.manual_seed(6)
    cfg = tiny_cfg(moe=True, moe_n_groups=1, moe_topk_groups=1)
    router = build_model(cfg).moe_layers()[0].router
    x_TD = torch.randn(50, cfg.d_model)
    idx0_TK, gates0_TK, scores_TE, _ = router(x_TD)
    with torch.no_grad():
        router.expert_bias_E[5] = 10.0
    idx_TK, gates_TK, scores2_TE, _ = router(x_TD)
    torch.testing.assert_close(scores_TE, scores2_TE)  # scores themselves unbiased
    assert (idx_TK == 5).any(-1).all()  # every token now selects expert 5
    assert not torch.equal(idx0_TK, idx_TK)
    raw_TK = scores_TE.gather(1, idx_TK)
    expected_TK = raw_TK / raw_TK.sum(-1, keepdim=True) * cfg.moe.route_scale
    torch.testing.assert_close(gates_TK, expected_TK)
    assert gates_TK.sum(-1).sub(cfg.moe.route_scale).abs().max() < 1e-5
    assert (gates_TK < 0.9 * cfg.moe.route_scale).all()  # a +10 bias did not leak into the gate values


def test_loads_accumulate_only_in_training() -> None:
    cfg = tiny_cfg(moe=True)
    model = build_model(cfg)
    x_BT, y_BT = _batch(cfg, B=2)
    moe = model.moe_layers()[0]
    with torch.no_grad():
        model.eval()(x_BT)
    assert moe.load_accum_E.sum() == 0 and moe.last_load_E.sum() == 2 * cfg.seq_len * cfg.moe.top_k
    model.train()(x_BT, y_BT)
    model.train()(x_BT, y_BT)
    assert moe.load_accum_E.sum() == 2 * 2 * cfg.seq_len * cfg.moe.top_k
    bal = model.moe_balance()
    assert set(bal) >= {"max_violation", "max_violation_worst", "expert_bias_absmean"}
    model.update_expert_bias()
    assert model.moe_balance()["expert_bias_absmean"] > 0
    dense = build_model(tiny_cfg(moe=False))
    dense.update_expert_bias()
    assert dense.moe_balance() == {}


def test_partial_rope() -> None:
    rope = PartialRoPE(head_dim=16, rope_fraction=0.5, theta=10000.0, max_seq_len=8)
    x = torch.randn(1, 2, 12, 16)  # longer than the cache: it grows
    y = rope(x)
    torch.testing.assert_close(y[..., 8:], x[..., 8:])  # un-rotated half passes through
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # relative: <R_m q, R_n k> depends on m - n only
    q, k = torch.randn(16), torch.randn(16)
    seq = torch.zeros(1, 1, 12, 16)
    qs, ks = rope(seq + q), rope(seq + k)
    assert torch.dot(qs[0, 0, 5], ks[0, 0, 2]).item() == pytest.approx(
        torch.dot(qs[0, 0, 9], ks[0, 0, 6]).item(), 1e-4
    )


def test_make_linear() -> None:
    lin = make_linear(8, 4, PrecisionConfig(dtype="fp32"))
    assert type(lin) is torch.nn.Linear and lin.bias is None and lin.weight.shape == (4, 8)
    assert type(make_linear(8, 4, None)) is torch.nn.Linear
    from trainer.fp8 import FP8Linear

    lin8 = make_linear(256, 128, PrecisionConfig(dtype="fp8", fp8_block=128))
    assert isinstance(lin8, FP8Linear) and lin8.weight.shape == (128, 256)


def test_training_reduces_loss() -> None:
    torch.manual_seed(7)
    cfg = tiny_cfg(moe=True, n_mtp_layers=1, vocab_size=31, seq_len=12)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x_BT, y_BT = _batch(cfg, B=4)
    losses = []
    for _ in range(25):
        out = model(x_BT, y_BT)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        model.update_expert_bias()
        losses.append(out.metrics["lm_loss"])
    assert losses[-1] < losses[0] - 0.5


def test_mtp_alignment() -> None:
    """Depth k at position i sees token seq[i+k] and predicts seq[i+k+1] (seq = inputs + final target)."""
    torch.manual_seed(8)
    cfg = tiny_cfg(moe=False, n_mtp_layers=2, seq_len=10)
    model = build_model(cfg).eval()
    x_BT, y_BT = _batch(cfg, B=2)
    seq_BS = torch.cat([x_BT, y_BT[:, -1:]], dim=1)  # length T + 1
    T = cfg.seq_len
    with torch.no_grad():
        out = model(x_BT, y_BT)
        h = model.embed(x_BT)
        for block in model.blocks:
            h, _ = block(h)
        losses = []
        for k, mod in enumerate(model.mtp, start=1):
            positions = torch.arange(T - k)
            h, normed, _ = mod(h[:, positions], model.embed(seq_BS[:, positions + k]))
            logits = model.head(normed)
            losses.append(
                F.cross_entropy(logits.reshape(-1, cfg.vocab_size), seq_BS[:, positions + k + 1].reshape(-1))
            )
    assert out.metrics["mtp_loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-6)


def test_fp8_moe_forward_backward() -> None:
    torch.manual_seed(9)
    cfg = tiny_cfg(moe=True)
    model = build_model(cfg, PrecisionConfig(dtype="fp8", fp8_block=16))
    ref = build_model(cfg)
    ref.load_state_dict(model.state_dict())
    x_BT, y_BT = _batch(cfg)
    out = model(x_BT, y_BT)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert out.metrics["lm_loss"] == pytest.approx(ref(x_BT, y_BT).metrics["lm_loss"], rel=0.01)


@settings(max_examples=30, deadline=None)
@given(
    n_groups=st.sampled_from([1, 2, 4]),
    per_group=st.integers(2, 4),
    data=st.data(),
    score_func=st.sampled_from(["sigmoid", "softmax"]),
    norm_topk=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_router_invariants(
    n_groups: int, per_group: int, data: st.DataObject, score_func: str, norm_topk: bool, seed: int
) -> None:
    E = n_groups * per_group
    topk_groups = data.draw(st.integers(1, n_groups))
    top_k = data.draw(st.integers(1, topk_groups * per_group))
    cfg = tiny_cfg(
        moe=True,
        moe_n_experts=E,
        moe_top_k=top_k,
        moe_n_groups=n_groups,
        moe_topk_groups=topk_groups,
        moe_score_func=score_func,
        moe_norm_topk=norm_topk,
    )
    torch.manual_seed(seed)
    router = Router(cfg)
    torch.nn.init.normal_(router.weight_ED, std=0.05)
    idx_TK, gates_TK, scores_TE, _ = router(torch.randn(20, cfg.d_model))
    assert idx_TK.shape == (20, top_k) and gates_TK.shape == (20, top_k)
    assert (idx_TK.sort(-1).values.diff(dim=-1) > 0).all()  # distinct experts per token
    groups_per_token = torch.tensor([torch.unique(row // per_group).numel() for row in idx_TK])
    assert (groups_per_token <= topk_groups).all()
    assert (gates_TK > 0).all()
    if norm_topk:
        torch.testing.assert_close(gates_TK.sum(-1), torch.full((20,), cfg.moe.route_scale))
    else:
        torch.testing.assert_close(gates_TK, scores_TE.gather(1, idx_TK) * cfg.moe.route_scale)


def test_bf16_autocast_moe() -> None:
    torch.manual_seed(10)
    cfg = tiny_cfg(moe=True)
    model = build_model(cfg)
    x_BT, y_BT = _batch(cfg)
    ref = model(x_BT, y_BT).metrics["lm_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_BT, y_BT)
        x_SD = torch.randn(8, 16)
        y_SF = expert_matmul(x_SD, torch.randn(2, 16, 8), torch.tensor([5, 3]))
    assert y_SF.dtype == torch.bfloat16  # experts follow autocast like the linear layers
    out.loss.backward()
    assert out.metrics["lm_loss"] == pytest.approx(ref, rel=0.01)
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == torch.float32 for p in model.parameters())


# ---- hand-written autograd nodes and fused projections (CPU speed work): same math as the plain ops ----
def test_custom_autograd_nodes_gradcheck() -> None:
    """Finite differences in float64 against the hand-written backward formulas (a wrong sign, a missing
    term or a gradient left unset fails here)."""
    from trainer.model.layers import _RMSNormFn, _RoPEFn, swiglu

    g = torch.Generator().manual_seed(11)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFn.apply(x, w, 1e-6), (rnd(2, 3, 6), rnd(6)))
    cos = torch.rand(5, 2, generator=g, dtype=torch.float64)
    sin = (1 - cos.square()).sqrt()
    assert torch.autograd.gradcheck(lambda x: _RoPEFn.apply(x, cos, sin), (rnd(1, 2, 5, 6),))
    assert torch.autograd.gradcheck(lambda x: _RoPEFn.apply(x, cos, sin), (rnd(1, 2, 5, 4),))  # full rope
    assert torch.autograd.gradcheck(lambda a, b: swiglu(a, b), (rnd(4, 3), rnd(4, 3)))
    assert torch.autograd.gradcheck(lambda a, b, s: swiglu(a, b, s), (rnd(4, 3), rnd(4, 3), rnd(4)))


def test_fused_layers_equal_unfused_math() -> None:
    """RMSNorm, partial RoPE, fused-QKV attention and SwiGLU against the textbook formulas
    written with plain torch ops: outputs and all gradients equal within fp32 rounding."""
    from trainer.model.layers import Attention, RMSNorm, SwiGLU

    torch.manual_seed(12)
    cfg = tiny_cfg(moe=False)
    x_BTD = torch.randn(2, cfg.seq_len, cfg.d_model, requires_grad=True)

    def check(fast: torch.Tensor, ref_fn, params: list[torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
        dy = torch.randn_like(fast)
        grads = torch.autograd.grad(fast, [x_BTD, *params], dy)
        ref = ref_fn()
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, torch.autograd.grad(ref, [x_BTD, *params], dy), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    norm = RMSNorm(cfg.d_model)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    ref_norm = lambda: x_BTD * torch.rsqrt(x_BTD.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight  # noqa: E731
    check(norm(x_BTD), ref_norm, [norm.weight])

    ffn = SwiGLU(cfg.d_model, cfg.d_ffn)
    ref_ffn = lambda: ffn.w_down(F.silu(ffn.w_gate(x_BTD)) * ffn.w_up(x_BTD))  # noqa: E731
    check(ffn(x_BTD), ref_ffn, [ffn.w_gate.weight, ffn.w_up.weight, ffn.w_down.weight])

    attn = Attention(cfg)
    for p in attn.parameters():
        with torch.no_grad():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.2 if p.ndim == 1 else 0.1)
    assert attn._fused_qkv
    H, K, d, T = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim_, cfg.seq_len
    r = attn.rope.rope_dims

    def ref_rope(x_BHTd: torch.Tensor) -> torch.Tensor:  # RoFormer eq. 34, rotate_half pairing
        t_T = torch.arange(T, dtype=torch.float32)
        ang_Tr = torch.outer(t_T, 1.0 / cfg.rope_theta ** (torch.arange(0, r, 2) / r)).repeat(1, 2)
        x_rot, x_pass = x_BHTd[..., :r], x_BHTd[..., r:]
        rot = torch.cat([-x_rot[..., r // 2 :], x_rot[..., : r // 2]], dim=-1)
        return torch.cat([x_rot * ang_Tr.cos() + rot * ang_Tr.sin(), x_pass], dim=-1)

    def ref_attn() -> torch.Tensor:
        def heads(lin: torch.nn.Module, n: int, norm_: torch.nn.Module) -> torch.Tensor:
            h = lin(x_BTD).view(2, T, n, d).transpose(1, 2)
            return ref_rope(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * norm_.weight)

        q, k = heads(attn.wq, H, attn.q_norm), heads(attn.wk, K, attn.k_norm)
        v = attn.wv(x_BTD).view(2, T, K, d).transpose(1, 2)
        k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return attn.wo((s.softmax(-1) @ v).transpose(1, 2).reshape(2, T, H * d))

    check(attn(x_BTD), ref_attn, [attn.wq.weight, attn.wk.weight, attn.wv.weight, attn.q_norm.weight])


def test_fp8_layers_keep_separate_projections() -> None:
    """FP8 linears quantise their own weights: no fused QKV there."""
    from trainer.model.layers import Attention

    cfg = tiny_cfg(moe=False, d_model=32)
    assert not Attention(cfg, PrecisionConfig(dtype="fp8", fp8_block=16))._fused_qkv


def test_cli_threads_flag(tmp_path: Path) -> None:
    from trainer.__main__ import main
    from trainer.config import RunConfig

    cfg_path = tmp_path / "tiny.yaml"
    RunConfig(model=tiny_cfg(moe=True)).to_yaml(cfg_path)
    before = torch.get_num_threads()
    try:
        assert main(["--config", str(cfg_path), "--dry-run", "--json", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["--config", str(cfg_path), "--dry-run", "--threads", "0"]) == 2
    finally:
        torch.set_num_threads(before)
