"""FP8Linear / fp8_grouped_matmul (CPU reference path) and the FP8 safeguard; the FP8-vs-FP32 training gap."""

import math
import time

import pytest
import torch

from kernels.reference import qdq_blocks, qdq_rows
from trainer.config import PrecisionConfig
from trainer.fp8 import (
    FP8Linear,
    fp8_grouped_matmul,
    fp8_safeguard_stats,
    quant_error_stats,
    set_fp8_monitor,
)
from trainer.model.moe import expert_matmul


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    if not torch.isfinite(a64).all():
        return math.inf
    return float((a64 - b64).norm() / b64.norm())


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))


@pytest.mark.parametrize("d_in,d_out,block", [(64, 96, 128), (256, 128, 128), (100, 40, 32)])
def test_fp8_linear_matches_fp32_within_fp8_tolerance(d_in: int, d_out: int, block: int, gen) -> None:
    """Forward, dx and dW vs fp32 autograd of the same layer: a few % (E4M3); exactly the emulated formula."""
    torch.set_num_threads(1)
    lin = FP8Linear(d_in, d_out, block=block)
    assert isinstance(lin, torch.nn.Linear) and lin.bias is None and lin.weight.shape == (d_out, d_in)
    ref = torch.nn.Linear(d_in, d_out, bias=False)
    ref.weight.data.copy_(lin.weight.data)
    x = torch.randn(3, 50, d_in, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    dy = torch.randn(3, 50, d_out, generator=gen)
    y, y_ref = lin(x), ref(x_ref)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    assert _rel(y, y_ref) < 0.08
    assert _rel(x.grad, x_ref.grad) < 0.08
    assert _rel(lin.weight.grad, ref.weight.grad) < 0.08
    assert _rel(y, y_ref) > 1e-4  # it really is quantised
    # exact emulation formula: y = Q1(x) Q_B(W)^T, dW = Q1T(dy)^T Q1T(x)
    x2, dy2 = x.detach().reshape(-1, d_in), dy.reshape(-1, d_out)
    assert _rel(y.reshape(-1, d_out), qdq_rows(x2, block) @ qdq_blocks(lin.weight.detach(), block).t()) < 1e-6
    dw_formula = qdq_rows(dy2.t().contiguous(), block) @ qdq_rows(x2.t().contiguous(), block).t()
    assert _rel(lin.weight.grad, dw_formula) < 1e-6


def test_fp8_linear_bf16_and_bias(gen) -> None:
    lin = FP8Linear(64, 32, bias=True, block=32).to(torch.bfloat16)
    x = torch.randn(8, 64, generator=gen).bfloat16().requires_grad_(True)
    y = lin(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert (
        x.grad.dtype == torch.bfloat16
        and lin.weight.grad.dtype == torch.bfloat16
        and lin.bias.grad is not None
    )
    assert torch.isfinite(lin.weight.grad.float()).all()


def test_bad_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        FP8Linear(8, 8, backend="cublas")


def test_fp8_grouped_matmul_gradients(gen) -> None:
    """Experts as a stacked w_EDF on expert-sorted tokens (one expert empty) vs fp32 autograd of the loop."""
    torch.set_num_threads(1)
    E, D, F = 4, 64, 48
    sizes = torch.tensor([30, 0, 7, 60])
    T = int(sizes.sum())
    x = torch.randn(T, D, generator=gen, requires_grad=True)
    w = (torch.randn(E, D, F, generator=gen) * 0.05).requires_grad_(True)
    x_ref, w_ref = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    y = fp8_grouped_matmul(x, w, sizes, block=32)
    y_ref = torch.cat([x_ref[lo:hi] @ w_ref[e] for e, lo, hi in [(0, 0, 30), (2, 30, 37), (3, 37, 97)]])
    dy = torch.randn(T, F, generator=gen)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    assert y.shape == (T, F)
    for a, b in ((y, y_ref), (x.grad, x_ref.grad), (w.grad, w_ref.grad)):
        assert 1e-4 < _rel(a, b) < 0.08
    assert w.grad[1].abs().sum() == 0
    # safeguard stats of named expert matrices held by one module
    moe = torch.nn.Module()
    moe.fp8_stats = {}
    fp8_grouped_matmul(x, w, sizes, block=32, stats=moe.fp8_stats, stats_name="w_up").sum().backward()
    stats = fp8_safeguard_stats(torch.nn.ModuleDict({"ffn": moe}))
    for op in ("", ".weight", ".grad"):
        assert 0.99 < stats[f"fp8/cosine/ffn.w_up{op}"] <= 1 + 1e-12
    # the MoE's expert GEMM runs this FP8 path under an fp8 precision config (never a silent fallback)
    y_moe = expert_matmul(x, w, sizes, PrecisionConfig(dtype="fp8", fp8_block=32))
    assert torch.equal(y_moe, fp8_grouped_matmul(x, w, sizes, block=32))
    with pytest.raises(ValueError, match="sum to"):
        fp8_grouped_matmul(x, w, torch.tensor([1, 2, 3, 4]))


def test_quant_error_stats() -> None:
    x = torch.tensor([1.0, 0.0, 1e-9, -2.0])
    uf, cos = quant_error_stats(x, torch.tensor([1.0, 0.0, 0.0, -2.0]))
    assert uf == pytest.approx(1 / 3) and cos == pytest.approx(1.0)
    assert quant_error_stats(torch.zeros(4), torch.zeros(4)) == (0.0, 1.0)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict({"q_proj": FP8Linear(128, 64)})])
        self.out = FP8Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers[0]["q_proj"](x))


def test_safeguard_stats_and_alerts(gen) -> None:
    model = _Tiny()
    x = torch.randn(16, 128, generator=gen)
    dy = torch.randn(16, 16, generator=gen)  # random output gradient (a .sum() can cancel to ~1e-9 entries)
    (model(x) * dy).sum().backward()
    assert fp8_safeguard_stats(model) == {}  # sampling off: nothing recorded
    assert set_fp8_monitor(model, True) == 2
    (model(x) * dy).sum().backward()
    stats = fp8_safeguard_stats(model)
    for op in ("", ".weight", ".grad"):
        assert 0 <= stats[f"fp8/underflow/layers.0.q_proj{op}"] < 0.01
        assert 0.99 < stats[f"fp8/cosine/out{op}"] <= 1.0 + 1e-12
    assert stats["fp8/alerts"] == 0
    # a tile with one huge outlier: every other element underflows -> alert on underflow and cosine
    x_bad = torch.full((16, 128), 1e-4)
    x_bad[:, 0] = 1e4
    set_fp8_monitor(model, True)
    model(x_bad)
    stats = fp8_safeguard_stats(model, underflow_alert=0.01, cosine_alert=0.99)
    assert stats["fp8/underflow/layers.0.q_proj"] > 0.9
    assert stats["fp8/alerts"] >= 1 and stats["fp8/underflow_max"] > 0.9
    set_fp8_monitor(model, False)
    assert not model.out.fp8_monitor


def test_safeguard_on_real_model(gen) -> None:
    """build_model with precision fp8 makes FP8Linear layers; sampling one step yields per-layer stats."""
    from trainer.config import ModelConfig, PrecisionConfig
    from trainer.model import build_model

    torch.set_num_threads(1)
    moe = {"n_experts": 4, "top_k": 2, "n_shared_experts": 1, "d_expert": 32, "n_dense_layers": 1}
    mc = ModelConfig(
        vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=128, seq_len=32, moe=moe
    )
    model = build_model(mc, PrecisionConfig(dtype="fp8", fp8_block=32))
    n_fp8 = set_fp8_monitor(model, True)
    assert n_fp8 >= 8
    idx = torch.randint(0, 128, (2, 32), generator=gen)
    model(idx, idx).loss.backward()
    stats = fp8_safeguard_stats(model)
    layer_keys = [k for k in stats if k.startswith("fp8/underflow/") and k.count(".") >= 2]
    assert len(layer_keys) >= 3 * n_fp8 - 1
    assert all(0.0 <= stats[k] <= 1.0 for k in layer_keys)
    assert 0.9 < stats["fp8/cosine_min"] <= 1.0 + 1e-12 and stats["fp8/alerts"] >= 0


@pytest.mark.slow
def test_fp8_training_gap(tmp_path) -> None:
    """FP8 (CPU emulation) vs FP32 training of a tiny MoE for 300 steps: final validation loss gap <= 1%."""
    torch.set_num_threads(1)
    from trainer.config import RunConfig
    from trainer.loop import train

    base = {
        "seed": 0,
        "model": {
            "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ffn": 128,
            "seq_len": 64, "moe": {"n_experts": 8, "top_k": 2, "n_shared_experts": 1, "d_expert": 32,
                                   "n_dense_layers": 1},
        },
        "data": {"max_corpus_bytes": 2_000_000, "cache_dir": str(tmp_path / "cache")},
        "optim": {"lr": 3e-3, "batch_size": 8, "tokens": 300 * 8 * 64},
        "schedule": {"kind": "wsd", "warmup_fraction": 0.05},
        "eval_interval": 300, "eval_batches": 4, "log_interval": 50,
        "precision": {"dtype": "fp32", "fp8_block": 32},
        "device": "cpu",
    }  # fmt: skip
    results = {}
    for dtype in ("fp32", "fp8"):
        cfg = RunConfig.from_dict({**base, "precision": {"dtype": dtype, "fp8_block": 32}})
        assert cfg.steps == 300
        cpu0 = time.process_time()
        res = train(cfg, workdir=tmp_path / dtype, resume=False)
        cpu_s = time.process_time() - cpu0
        assert res.status == "finished", res
        results[dtype] = res.val_loss
        print(
            f"{dtype}: val_loss={res.val_loss:.4f} final_loss={res.final_loss:.4f} "
            f"wall={res.wall_s:.1f}s cpu={cpu_s:.1f}s"
        )
    gap = (results["fp8"] - results["fp32"]) / results["fp32"]
    print(f"val_loss fp32={results['fp32']:.4f} fp8={results['fp8']:.4f} gap={gap:+.4%}")
    assert math.isfinite(results["fp8"]) and abs(gap) <= 0.01
