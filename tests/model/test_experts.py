"""Expert bank, its flattened pair and LoRA: sizes, equivalences, merges."""

import pytest
import torch
from torch import nn

from model.config import AdapterConfig
from model.experts import (
    LoRALinear,
    LowRankAdapter,
    LowRankExperts,
    flatten_bank,
    frozen_linear,
    gated_low_rank,
    unflatten_bank,
)

DIM = 32


@pytest.mark.parametrize("spec", ["16/3/1/4", "32/6/2/2", "64/12/4/1"])
def test_paper_grid_has_one_parameter_budget_and_active_rank(spec):
    adapters = AdapterConfig(spec=spec)
    bank = LowRankExperts(adapters.experts, DIM, adapters.rank)
    assert sum(p.numel() for p in bank.parameters()) == 2 * 64 * DIM
    assert adapters.active_rank == (adapters.k + adapters.shared) * adapters.rank == 16


def test_bank_equals_per_expert_sum():
    torch.manual_seed(0)
    bank = LowRankExperts(5, DIM, 3)
    bank.B.data.normal_()
    u, gates = torch.randn(4, 7, DIM), torch.rand(4, 7, 5)
    expected = sum(gates[..., i : i + 1] * (u @ bank.A[i].T @ bank.B[i].T) for i in range(5))
    torch.testing.assert_close(bank(u, gates), expected, rtol=1e-5, atol=1e-5)


def test_fresh_bank_is_a_no_op_and_zero_gates_switch_experts_off():
    bank = LowRankExperts(4, DIM, 2)
    u = torch.randn(3, DIM)
    assert torch.equal(bank(u, torch.rand(3, 4)), torch.zeros(3, DIM))
    bank.B.data.normal_()
    assert torch.equal(bank(u, torch.zeros(3, 4)), torch.zeros(3, DIM))


def test_flattened_bank_is_expert_major_and_round_trips():
    torch.manual_seed(0)
    bank = LowRankExperts(6, DIM, 2)
    bank.B.data.normal_()
    a_flat, b_flat = flatten_bank(bank.A, bank.B)
    assert a_flat.shape == (12, DIM) and b_flat.shape == (DIM, 12)
    # Experts 4..5 (the shared ones, say) are the last 2*r columns: one pair of rank S*r.
    u, gates = torch.randn(5, DIM), torch.rand(5, 6)
    last_two = (u @ a_flat[8:].T) * gates[:, 4:].repeat_interleave(2, -1) @ b_flat[:, 8:].T
    expected = sum(gates[:, i : i + 1] * (u @ bank.A[i].T @ bank.B[i].T) for i in (4, 5))
    torch.testing.assert_close(last_two, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gated_low_rank(u, a_flat, b_flat, gates), bank(u, gates))
    A, B = unflatten_bank(a_flat, b_flat, 6)
    assert torch.equal(A, bank.A) and torch.equal(B, bank.B)


def test_one_expert_with_unit_gate_is_a_plain_low_rank_adapter():
    torch.manual_seed(0)
    bank, adapter = LowRankExperts(1, DIM, 4), LowRankAdapter(DIM, 4)
    bank.B.data.normal_()
    adapter.A.data.copy_(bank.A[0])
    adapter.B.data.copy_(bank.B[0])
    u = torch.randn(6, DIM)
    torch.testing.assert_close(bank(u, torch.ones(6, 1)), adapter(u))


def test_lora_linear_merge_is_exact_and_base_frozen():
    torch.manual_seed(0)
    lora = LoRALinear(DIM, 48, rank=4, alpha=8)
    lora.B.data.normal_()
    x = torch.randn(5, DIM)
    merged = lora.merge()
    assert isinstance(merged, nn.Linear) and not merged.weight.requires_grad
    torch.testing.assert_close(merged(x), lora(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in lora.base.parameters())
    assert lora.A.requires_grad and lora.B.requires_grad
    assert not torch.allclose(merged(x), lora.base(x))  # the LoRA did something


def test_rank_zero_builds_a_plain_frozen_linear():
    plain = frozen_linear(DIM, DIM, 0)
    assert type(plain) is nn.Linear and not any(p.requires_grad for p in plain.parameters())
    assert isinstance(frozen_linear(DIM, DIM, 2), LoRALinear)
    with pytest.raises(ValueError, match="rank >= 1"):
        LoRALinear(DIM, DIM, rank=0)
