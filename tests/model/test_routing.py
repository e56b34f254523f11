"""Gates against a NumPy transcription of the paper's equations, ties included."""

import numpy as np
import pytest
import torch

from model.config import Routing
from model.routing import TaskRouter, ase_gate, moe_gate, naive_shared_gate, top_k_mask


def reference_ase_gate(z_routed: np.ndarray, z_shared: np.ndarray, k: int) -> np.ndarray:
    """Per token: top-k of the routed logits (ties: lowest index first), then one softmax over
    the k selected routed logits and all shared logits; zeros elsewhere."""
    routed = z_routed.shape[-1]
    flat_routed = z_routed.reshape(-1, routed)
    flat_shared = z_shared.reshape(flat_routed.shape[0], z_shared.shape[-1])
    out = np.zeros((flat_routed.shape[0], routed + flat_shared.shape[1]))
    for row, (z, zs) in enumerate(zip(flat_routed, flat_shared, strict=True)):
        chosen = np.argsort(-z, kind="stable")[:k]
        logits = np.concatenate([z[chosen], zs]).astype(np.float64)
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        out[row, chosen] = weights[:k]
        out[row, routed:] = weights[k:]
    return out.reshape(*z_routed.shape[:-1], -1)


CASES = [(15, 3, 1), (30, 6, 2), (60, 12, 4), (16, 4, 0), (4, 1, 3), (5, 0, 2)]


@pytest.mark.parametrize(("routed", "k", "shared"), CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_ase_gate_matches_paper_equations(routed, k, shared, ties):
    rng = np.random.default_rng(routed * 10 + k)
    shape = (3, 7)
    if ties:  # few distinct values: many ties, also across the top-k boundary
        z_routed = rng.integers(0, 3, (*shape, routed)).astype(np.float32)
        z_shared = rng.integers(0, 3, (*shape, shared)).astype(np.float32)
    else:
        z_routed = rng.normal(size=(*shape, routed)).astype(np.float32) * 3
        z_shared = rng.normal(size=(*shape, shared)).astype(np.float32) * 3
    weights = ase_gate(torch.from_numpy(z_routed), torch.from_numpy(z_shared), k)
    expected = reference_ase_gate(z_routed, z_shared, k)
    assert weights.shape == (*shape, routed + shared)
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1).numpy(), 1.0, atol=1e-6)
    assert bool(((weights > 0).sum(-1) == k + shared).all())


def test_ties_go_to_the_lowest_index():
    # torch.topk on CPU picks (2, 4) here; the contract is (1, 2).
    mask = top_k_mask(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 2)
    assert mask.tolist() == [False, True, True, False, False]
    all_equal = ase_gate(torch.zeros(6), torch.zeros(1), 3)
    assert all_equal.tolist() == pytest.approx([0.25, 0.25, 0.25, 0, 0, 0, 0.25])


def test_moe_gate_is_plain_top_k_softmax():
    z = torch.randn(4, 9, 8)
    weights = moe_gate(z, z.new_zeros(4, 9, 0), 2)
    top = torch.topk(z, 2)  # no ties with random floats
    expected = torch.zeros_like(z).scatter(-1, top.indices, torch.softmax(top.values, -1))
    torch.testing.assert_close(weights, expected)


def test_naive_shared_gate_fixes_shared_weights_at_one():
    z_routed, z_shared = torch.randn(5, 6), torch.randn(5, 2) * 10
    weights = naive_shared_gate(z_routed, z_shared, 3)
    assert torch.equal(weights[:, 6:], torch.ones(5, 2))
    torch.testing.assert_close(weights[:, :6].sum(-1), torch.ones(5))
    assert bool(((weights[:, :6] > 0).sum(-1) == 3).all())


@pytest.mark.parametrize("variant", ["ase", "moe", "naive_shared"])
def test_each_stream_uses_its_tasks_router(variant):
    torch.manual_seed(0)
    shared = 0 if variant == "moe" else 2
    router = TaskRouter(num_tasks=3, dim=16, routed=6, shared=shared, k=2, variant=Routing(variant))
    u, stream_task = torch.randn(4, 5, 16), torch.tensor([2, 0, 2, 1])
    out = router(u, stream_task)
    assert out.weights.shape == (4, 5, 6 + shared)
    for stream, task in enumerate(stream_task.tolist()):
        z = u[stream] @ router.routed_weight[task].T  # (tokens, routed)
        torch.testing.assert_close(out.routed_probs[stream], torch.softmax(z, -1))
        assert torch.equal(out.selected[stream].bool(), top_k_mask(z, 2))
    # shared experts: processed on every token; routed: k per token
    assert torch.equal(out.expert_tokens().sum(-1), torch.full((4,), 5.0 * (2 + shared)))


def test_ase_router_trains_its_shared_logits():
    router = TaskRouter(num_tasks=2, dim=8, routed=4, shared=1, k=1, variant=Routing.ASE)
    out = router(torch.randn(2, 3, 8), torch.tensor([0, 1]))
    out.shared_gate_mass().sum().backward()
    assert router.shared_weight.grad is not None and router.shared_weight.grad.abs().sum() > 0
    assert TaskRouter(2, 8, 4, 1, 1, Routing.NAIVE_SHARED).shared_weight is None


@pytest.mark.parametrize("k", [0, 1, 3, 7, 8])
def test_top_k_mask_equals_a_stable_descending_sort(k):
    logits = torch.randint(0, 3, (500, 8)).float()  # heavy ties
    expected = np.zeros((500, 8), dtype=bool)
    np.put_along_axis(
        expected, np.argsort(-logits.numpy(), axis=-1, kind="stable")[:, :k], True, -1
    )
    assert np.array_equal(top_k_mask(logits, k).numpy(), expected)
