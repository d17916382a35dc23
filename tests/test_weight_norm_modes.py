"""weight_norm="project": the HE head the way AT_HE's models normalize it (the stored weight
overwritten by its normalized rows on every forward, no gradient through the normalization),
against an oracle model written from that description, over ten SGD steps."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import heat_fast as hf
from conftest import require_backend


class OracleHead(nn.Module):
    """AT_HE-style head: fc.weight.data = normalize(fc.weight.data); cos = x̂ · Wᵀ."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, features):
        self.fc.weight.data = F.normalize(self.fc.weight.data, dim=1)
        return self.fc(F.normalize(features, dim=1))


def make_model(head):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), head)


def train(model, loss_fn, steps=10):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 12, generator=gen)
        y = torch.randint(0, 5, (32,), generator=gen)
        loss = loss_fn(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def oracle_loss(model, x, y):
    return F.cross_entropy(15.0 * (model(x) - 0.2 * F.one_hot(y, 5)), y)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_projected_head_trains_like_the_data_overwrite_model(backend):
    require_backend(backend)
    weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(2)) * 3
    oracle = make_model(OracleHead(weight))
    head = hf.HELinear(16, 5, weight_norm="project")
    with torch.no_grad():
        head.weight.copy_(weight)
    ours = make_model(head)
    ours.load_state_dict({k: v for k, v in copy.deepcopy(oracle.state_dict()).items()
                          if not k.startswith("2.")}, strict=False)

    def ours_loss(model, x, y):
        return hf.cos_margin_cross_entropy(model(x), y, 15.0, 0.2, backend=backend)

    expected, got = train(oracle, oracle_loss), train(ours, ours_loss)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    for a, b in zip(oracle[0].parameters(), ours[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ours(torch.randn(2, 12))  # the forward projects the last step's update
    oracle(torch.randn(2, 12))
    torch.testing.assert_close(ours[2].weight, oracle[2].fc.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[2].weight.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_loss_on_features_with_projected_weight(backend):
    """he_cross_entropy(features, W, weight_norm="project") gives AT_HE's gradient on W:
    dL/dŴ with no normalization backward, and leaves W unit-norm."""
    require_backend(backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 7, generator=gen)
    w = (torch.randn(4, 7, generator=gen) * 2).requires_grad_(True)
    y = torch.randint(0, 4, (9,), generator=gen)
    unit = F.normalize(w.detach(), dim=1).requires_grad_(True)
    expected = F.cross_entropy(15.0 * (F.normalize(x, dim=1) @ unit.t()
                                       - 0.2 * F.one_hot(y, 4)), y)
    expected.backward()
    loss = hf.he_cross_entropy(x, w, y, weight_norm="project", backend=backend)
    loss.backward()
    torch.testing.assert_close(w.detach().norm(dim=1), torch.ones(4))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, unit.grad, rtol=1e-5, atol=1e-6)


def test_differentiable_mode_differs_from_projected_mode():
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen) * 2
    y = torch.randint(0, 3, (6,), generator=gen)
    grads = []
    for mode in (True, "project"):
        weight = w.clone().requires_grad_(True)
        hf.he_cross_entropy(x, weight, y, weight_norm=mode).backward()
        grads.append(weight.grad)
    assert not torch.allclose(grads[0], grads[1])
    with pytest.raises(ValueError, match="weight_norm must be True, False or 'project'"):
        hf.he_cross_entropy(x, w, y, weight_norm="detach")
