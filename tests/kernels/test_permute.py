"""Token permute / unpermute (Triton under the interpreter, and the torch fallback) against the references."""

import pytest
import torch
from kernel_testutil import rel_err

from kernels.permute import make_permutation, permute, unpermute
from kernels.reference import permute_ref, unpermute_ref


def routing(gen: torch.Generator, T: int, K: int, E: int) -> torch.Tensor:
    """Top-K distinct experts per token; one random expert never chosen (zero tokens)."""
    unused = int(torch.randint(0, E, (1,), generator=gen))
    keep = torch.tensor([e for e in range(E) if e != unused])
    picks = [keep[torch.randperm(E - 1, generator=gen)[:K]] for _ in range(T)]
    return torch.stack(picks)


@pytest.mark.parametrize("use_triton", [True, False])
def test_permute_roundtrip(use_triton: bool, gen: torch.Generator, device: str, monkeypatch) -> None:
    if not use_triton and device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # take the torch path
    T, K, E, D, align = 37, 3, 6, 40, 16
    idx = routing(gen, T, K, E)
    x = torch.randn(T, D, generator=gen)
    gates = torch.rand(T, K, generator=gen)
    perm = make_permutation(idx, E, align)
    assert perm.layout.n_rows % align == 0
    assert (perm.layout.group_sizes_E == torch.bincount(idx.flatten(), minlength=E)).all()
    x_R = permute(x.to(device), perm)
    assert torch.equal(x_R.cpu(), permute_ref(x, idx, E, align))
    y_R = torch.randn(x_R.shape, generator=gen)
    out = unpermute(y_R.to(device), perm, gates.to(device))
    assert rel_err(out, unpermute_ref(y_R, idx, gates, E, align)) < 1e-6
    # unpermute(permute(x)) with gates summing to 1 gives x back
    gates_n = gates / gates.sum(1, keepdim=True)
    assert rel_err(unpermute(x_R, perm, gates_n.to(device)), x) < 1e-6


def test_every_row_of_expert_group_belongs_to_it(gen: torch.Generator) -> None:
    T, K, E, align = 50, 2, 8, 8
    idx = routing(gen, T, K, E)
    perm = make_permutation(idx, E, align)
    rows_TK = perm.slot_rows_S.view(T, K)
    owner = perm.layout.block_expert.repeat_interleave(align)
    assert torch.equal(owner[rows_TK].long(), idx)
    assert len(set(perm.slot_rows_S.tolist())) == T * K  # distinct rows
