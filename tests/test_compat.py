"""heat_fast.compat reproduces each public codebase per training step.

Each test runs a compat function and an oracle side by side in lockstep on copies of one small
model (same weights, same RNG state, same batch) and compares losses, perturbations, weights
and BN running statistics after every step. The oracles are plain torch, written here from
the public algorithms' published descriptions (never calling heat_fast). Tolerances: float32
rounding of a few small SGD steps (the fused kernels and the oracles order their float32 sums
differently); three SGD steps with momentum amplify those ~1e-7 differences about tenfold,
hence 5e-5 relative. TRADES L2 runs in float64 instead: its first step follows the gradient
of a KL divergence at δ = 0.001·N(0, I), which float32 resolves only to about 1e-4 relative,
and three steps amplified that to 9e-4 relative in the BN running mean on an AVX2 CPU (1e-5
on an AVX-512 one). In float64 what remains is the documented difference of the ε-ball
projection (ε/‖δ‖ against the official ε/(‖δ‖ + 1e-7), 2e-7 relative at ε = 0.5): at most
8e-7 relative after three steps, hence TOL_FLOAT64.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heat_fast import HELinear
from heat_fast.compat import at_he, bag_of_tricks, fast_adversarial, free_at, trades

CLASSES = 10
TOL = dict(rtol=5e-5, atol=5e-6)
TOL_FLOAT64 = dict(rtol=1e-5, atol=1e-7)


class SmallNet(nn.Module):
    """conv-BN-ReLU-pool and a linear head; with ``he`` AT_HE's head: normalized features, and
    the stored head weight overwritten by its normalization at every forward (``.data``)."""

    def __init__(self, he: bool, channels: int = 3):
        super().__init__()
        self.he = he
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, CLASSES, bias=not he)

    def forward(self, x):
        z = F.relu(self.bn(self.conv(x))).mean((2, 3))
        if self.he:
            z = F.normalize(z, dim=1)
            self.fc.weight.data = F.normalize(self.fc.weight, dim=1)
        return self.fc(z)


def pair(he: bool, seed: int = 0, channels: int = 3, dtype: torch.dtype = torch.float32):
    """Two identical models (parameters in ``dtype``) with their own SGD optimizers."""
    torch.manual_seed(seed)
    model = SmallNet(he, channels).to(dtype)
    twin = copy.deepcopy(model)
    return [(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
            for m in (model, twin)]


def batch(seed: int, n: int = 8, channels: int = 3, size: int = 6):
    """Images in [0, 1] with about a third of the pixels saturated at 0 or 1 (as in real
    images, where the box binds), and labels."""
    g = torch.Generator().manual_seed(seed)
    x = (1.5 * torch.rand(n, channels, size, size, generator=g) - 0.25).clamp(0, 1)
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def assert_same_state(a: nn.Module, b: nn.Module, tol: dict = TOL):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{name}: {m}")


def train_step(fn, model: nn.Module, opt, x, y, seed: int) -> torch.Tensor:
    """One step of loss function ``fn`` from RNG state ``seed``; returns the loss."""
    torch.manual_seed(seed)
    loss = fn(model, x, y, opt)
    loss.backward()
    opt.step()
    return loss.detach()


def lockstep(loss_fn, oracle_fn, he: bool, steps: int = 3, dtype: torch.dtype = torch.float32):
    """``steps`` training steps of each loss function on its own copy, from the same RNG
    state and batch each step, in ``dtype``; losses, weights and BN statistics must agree."""
    tol = TOL if dtype == torch.float32 else TOL_FLOAT64
    (model, opt), (twin, twin_opt) = pair(he, dtype=dtype)
    for step in range(steps):
        x, y = batch(100 + step)
        x = x.to(dtype)
        got = train_step(loss_fn, model, opt, x, y, step)
        want = train_step(oracle_fn, twin, twin_opt, x, y, step)
        torch.testing.assert_close(got, want, **tol)
        assert_same_state(model, twin, tol)


# --- oracles: the public algorithms in plain torch -------------------------------------------

def oracle_start(x):
    return x.detach() + 0.001 * torch.randn(x.shape).to(x.device)


def oracle_linf(loss_at, x_adv, x, step_size, epsilon, steps):
    for _ in range(steps):
        x_adv.requires_grad_()
        grad = torch.autograd.grad(loss_at(x_adv), [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad)
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)
    return x_adv


def oracle_he_loss(cos, y, s, m):
    """AT_HE's HELoss: −mean(s(cos_y − m) − log(e^{s(cos_y − m)} + Σ_{j≠y} e^{s·cos_j}))."""
    num = s * (cos.gather(1, y[:, None])[:, 0] - m)
    others = torch.exp(s * cos).sum(1) - torch.exp(s * cos.gather(1, y[:, None])[:, 0])
    return -torch.mean(num - torch.log(torch.exp(num) + others))


def kl_sum(logits_adv, probs):
    return F.kl_div(F.log_softmax(logits_adv, dim=1), probs, reduction="sum")


def oracle_at_he(kind, he, s, m, beta, step_size=0.007, epsilon=0.031, steps=3):
    def ce(out, y, margin):
        return oracle_he_loss(out, y, s, margin) if he else F.cross_entropy(out, y)

    def loss_fn(model, x, y, opt):
        sc = s if he else 1.0
        model.eval()
        x_adv = oracle_start(x)
        if kind == "trades":
            craft = lambda xa: kl_sum(sc * model(xa), F.softmax(sc * model(x), dim=1))  # noqa: E731
        else:
            craft = lambda xa: ce(model(xa), y, 0.0)  # noqa: E731
        x_adv = oracle_linf(craft, x_adv, x, step_size, epsilon, steps)
        model.train()
        x_adv = x_adv.clamp(0.0, 1.0).detach()
        opt.zero_grad()
        if kind == "pgd":
            return ce(model(x_adv), y, m)
        logits, logits_adv = model(x), model(x_adv)
        if kind == "alp":
            return 0.5 * ce(logits, y, m) + 0.5 * ce(logits_adv, y, m) + beta * F.mse_loss(
                logits, logits_adv)
        robust = kl_sum(sc * logits_adv, F.softmax(sc * logits, dim=1)) / len(x)
        return ce(logits, y, m) + beta * robust
    return loss_fn


def oracle_trades(distance, step_size=0.007, epsilon=0.031, steps=3, beta=6.0):
    """The official TRADES trades_loss (Zhang et al. 2019, github.com/yaodongyu/TRADES)."""
    def loss_fn(model, x, y, opt):
        model.eval()
        x_adv = oracle_start(x)
        craft = lambda xa: kl_sum(model(xa), F.softmax(model(x), dim=1))  # noqa: E731
        if distance == "l_inf":
            x_adv = oracle_linf(craft, x_adv, x, step_size, epsilon, steps)
        else:
            delta = (0.001 * torch.randn(x.shape)).to(x).requires_grad_()
            delta_opt = torch.optim.SGD([delta], lr=epsilon / steps * 2)
            for _ in range(steps):
                delta_opt.zero_grad()
                (-craft(x + delta)).backward()
                norms = delta.grad.view(len(x), -1).norm(p=2, dim=1)
                delta.grad.div_(norms.view(-1, 1, 1, 1))
                if (norms == 0).any():
                    delta.grad[norms == 0] = torch.randn_like(delta.grad[norms == 0])
                delta_opt.step()
                delta.data.add_(x).clamp_(0, 1).sub_(x)
                delta.data.renorm_(p=2, dim=0, maxnorm=epsilon)
            x_adv = x + delta.detach()
        model.train()
        x_adv = x_adv.clamp(0.0, 1.0).detach()
        opt.zero_grad()
        logits = model(x)
        natural = F.cross_entropy(logits, y)
        return natural + beta * kl_sum(model(x_adv), F.softmax(model(x), dim=1)) / len(x)
    return loss_fn


# --- AT_HE -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,he,s,m,beta", [
    ("pgd", False, None, None, 1.0), ("pgd", True, 10.0, 0.2, 1.0),
    ("alp", False, None, None, 0.5), ("alp", True, 20.0, 0.3, 0.5),
    ("trades", False, None, None, 6.0), ("trades", True, 15.0, 0.2, 6.0),
])
def test_at_he_losses_match_public_per_step(kind, he, s, m, beta):
    fn = getattr(at_he, f"{kind}_loss")
    name = f"{kind}_he" if he else kind

    def compat(model, x, y, opt):
        return fn(model=model, x_natural=x, y=y, optimizer=opt, step_size=0.007, epsilon=0.031,
                  perturb_steps=3, beta=beta, loss=name, distance="l_inf", m=m, s=s)
    lockstep(compat, oracle_at_he(kind, he, s, m, beta), he)


class ProjectHeadNet(SmallNet):
    """SmallNet whose head is heat_fast's HELinear in AT_HE's weight-norm form."""

    def __init__(self, model: SmallNet):
        super().__init__(he=True)
        self.load_state_dict(model.state_dict())
        self.head = HELinear(8, CLASSES, weight_norm="project")
        with torch.no_grad():
            self.head.weight.copy_(model.fc.weight)
        del self.fc

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_at_he_pgd_loss_with_a_project_head_matches_the_data_overwrite_model():
    """Porting AT_HE's model head too: HELinear(weight_norm="project") trains as the
    ``fc.weight.data`` overwrite does, through compat's pgd_loss."""
    torch.manual_seed(0)
    model = SmallNet(he=True)
    twin = ProjectHeadNet(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            for m in (model, twin)]
    def fn(m, x, y, o):
        return at_he.pgd_loss(m, x, y, o, step_size=0.007, perturb_steps=3, loss="pgd_he",
                              m=0.2, s=10.0)
    for step in range(3):
        x, y = batch(60 + step)
        losses = [train_step(fn, m, o, x, y, step) for m, o in zip((model, twin), opts)]
        torch.testing.assert_close(losses[0], losses[1], **TOL)
        torch.testing.assert_close(model.fc.weight, twin.head.weight, **TOL)
        torch.testing.assert_close(model.conv.weight, twin.conv.weight, **TOL)


def test_at_he_losses_run_on_a_data_parallel_model():
    """AT_HE wraps its model in nn.DataParallel; compat only calls it and switches modes."""
    (model, opt), (twin, twin_opt) = pair(True)
    wrapped = nn.DataParallel(twin)
    x, y = batch(70)

    def fn(m, x, y, o):
        return at_he.trades_loss(m, x, y, o, perturb_steps=2, beta=6.0, loss="trades_he",
                                 m=0.2, s=15.0)
    torch.testing.assert_close(train_step(fn, model, opt, x, y, 0),
                               train_step(fn, wrapped, twin_opt, x, y, 0), rtol=0, atol=0)
    assert wrapped.training and twin.training


def test_at_he_heloss_matches_public_formula():
    torch.manual_seed(0)
    cos = F.normalize(torch.randn(6, CLASSES), dim=1).requires_grad_()
    y = torch.randint(0, CLASSES, (6,))
    got = at_he.HELoss(s=15.0)(cos, y, cm=0.2)
    (g_got,) = torch.autograd.grad(got, cos)
    want = oracle_he_loss(cos, y, 15.0, 0.2)
    (g_want,) = torch.autograd.grad(want, cos)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(g_got, g_want, **TOL)


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="pgd_cos"), "loss must be one of"),
    (dict(loss="pgd_he", s=None, m=0.2), "needs the scale s"),
    (dict(distance="l_2"), "distance must be one of"),
])
def test_at_he_bad_arguments_are_named(kwargs, match):
    (model, opt), _ = pair(False)
    x, y = batch(0)
    with pytest.raises(ValueError, match=match):
        at_he.pgd_loss(model, x, y, opt, **kwargs)


# --- official TRADES -------------------------------------------------------------------------

@pytest.mark.parametrize("distance,epsilon,dtype", [("l_inf", 0.031, torch.float32),
                                                   ("l_2", 0.5, torch.float64)])
def test_trades_matches_official_per_step(distance, epsilon, dtype):
    """L2 with ε = 0.5 on images with saturated pixels: the box binds, so clipping before
    projecting (the official order) differs from projecting first. L2 in float64: see the
    module docstring."""
    def compat(model, x, y, opt):
        return trades.trades_loss(model, x, y, opt, step_size=0.007, epsilon=epsilon,
                                  perturb_steps=3, beta=6.0, distance=distance)
    lockstep(compat, oracle_trades(distance, epsilon=epsilon), he=False, dtype=dtype)


class CraftBlindNet(SmallNet):
    """While crafting (eval mode) examples 0 and 1 are blanked, so their input gradient is
    exactly 0; training forwards see them."""

    def forward(self, x):
        if not self.training:
            x = x * (torch.arange(len(x)) >= 2).view(-1, 1, 1, 1)
        return super().forward(x)


def test_trades_l2_zero_gradient_takes_the_official_random_step():
    torch.manual_seed(0)
    model = CraftBlindNet(he=False)
    twin = copy.deepcopy(model)
    x, y = batch(7)

    def compat(m, x, y, o):
        return trades.trades_loss(m, x, y, o, epsilon=0.5, perturb_steps=3, beta=6.0,
                                  distance="l_2")
    got, want = (train_step(fn, m, torch.optim.SGD(m.parameters(), lr=0.1), x, y, 3)
                 for fn, m in ((compat, model), (oracle_trades("l_2", epsilon=0.5), twin)))
    torch.testing.assert_close(got, want, **TOL)
    assert_same_state(model, twin)


def test_trades_rejects_unknown_distance():
    (model, opt), _ = pair(False)
    x, y = batch(0)
    with pytest.raises(ValueError, match="distance must be one of"):
        trades.trades_loss(model, x, y, opt, distance="l1")


# --- fast_adversarial ------------------------------------------------------------------------

EPS = (8 / 255.) / fast_adversarial.std
ALPHA = (2 / 255.) / fast_adversarial.std
LOWER, UPPER = fast_adversarial.lower_limit, fast_adversarial.upper_limit


def oracle_clamp(t, lo, hi):
    return torch.max(torch.min(t, hi), lo)


def oracle_uniform(X, epsilon):
    delta = torch.zeros_like(X)
    for c in range(len(epsilon)):
        delta[:, c].uniform_(-epsilon[c].item(), epsilon[c].item())
    return oracle_clamp(delta, LOWER - X, UPPER - X)


def oracle_attack_pgd(model, X, y, epsilon, alpha, iters, restarts):
    """Wong, Rice & Kolter 2020's evaluation PGD in normalized space (utils.attack_pgd)."""
    max_loss, max_delta = torch.zeros(len(y)), torch.zeros_like(X)
    for _ in range(restarts):
        delta = oracle_uniform(X, epsilon).requires_grad_()
        for _ in range(iters):
            output = model(X + delta)
            idx = torch.where(output.max(1)[1] == y)[0]
            if len(idx) == 0:
                break
            F.cross_entropy(output, y).backward()
            d = oracle_clamp(delta[idx] + alpha * torch.sign(delta.grad[idx]), -epsilon, epsilon)
            delta.data[idx] = oracle_clamp(d, LOWER - X[idx], UPPER - X[idx])
            delta.grad.zero_()
        loss = F.cross_entropy(model(X + delta), y, reduction="none").detach()
        max_delta[loss >= max_loss] = delta.detach()[loss >= max_loss]
        max_loss = torch.max(max_loss, loss)
    return max_delta


def normalized_batch(seed, n=8):
    x, y = batch(seed, n)
    return (x - fast_adversarial.mu) / fast_adversarial.std, y


def test_fast_adversarial_attack_pgd_matches_public():
    (model, _), (twin, _) = pair(False)
    model.eval()
    twin.eval()
    X, y = normalized_batch(1, n=16)
    torch.manual_seed(5)
    got = fast_adversarial.attack_pgd(model, X, y, EPS, ALPHA, 4, 2)
    torch.manual_seed(5)
    want = oracle_attack_pgd(twin, X, y, EPS, ALPHA, 4, 2)
    torch.testing.assert_close(got, want, **TOL)
    assert (got != 0).any()
    assert (got.abs() <= EPS * (1 + 1e-6)).all()


def test_fast_adversarial_fgsm_training_matches_public_per_step():
    """train_fgsm.py's loop with ``--delta-init previous``: a full-batch δ carried over,
    one FGSM step (α = 1.25ε) in train mode, then the weight update on X + δ."""
    (model, opt), (twin, twin_opt) = pair(False)
    alpha = 1.25 * EPS
    deltas = [torch.zeros(8, 3, 6, 6), torch.zeros(8, 3, 6, 6)]
    for step, n in enumerate((8, 5, 8)):
        X, y = normalized_batch(20 + step, n)
        torch.manual_seed(step)
        deltas[0] = fast_adversarial.fgsm_delta_step(model, X, y, deltas[0], EPS, alpha)
        delta = deltas[1].requires_grad_()
        F.cross_entropy(twin(X + delta[:n]), y).backward()
        delta.data = oracle_clamp(delta + alpha * torch.sign(delta.grad), -EPS, EPS)
        delta.data[:n] = oracle_clamp(delta[:n], LOWER - X, UPPER - X)
        deltas[1] = delta.detach()
        torch.testing.assert_close(deltas[0], deltas[1], **TOL)
        for m, o, d in ((model, opt, deltas[0]), (twin, twin_opt, deltas[1])):
            loss = F.cross_entropy(m(X + d[:n]), y)
            o.zero_grad()
            loss.backward()
            o.step()
        assert_same_state(model, twin)


def test_fast_adversarial_uniform_start_matches_public():
    X, _ = normalized_batch(2)
    torch.manual_seed(9)
    got = fast_adversarial.uniform_delta(X, EPS)
    torch.manual_seed(9)
    torch.testing.assert_close(got, oracle_uniform(X, EPS), rtol=0, atol=0)


# --- FreeAT ----------------------------------------------------------------------------------

@pytest.mark.parametrize("he", [False, True])
def test_free_at_replays_match_public_per_step(he):
    """main_free.py: 2 minibatches × 3 replays, the global noise carried throughout."""
    (model, opt), (twin, twin_opt) = pair(he)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    step, eps = 4 / 255, 4 / 255
    s, m = 10.0, 0.2
    noise = [torch.zeros(8, 3, 6, 6), torch.zeros(8, 3, 6, 6)]
    criterion = nn.CrossEntropyLoss()
    for i, n in enumerate((8, 6)):
        x, y = batch(40 + i, n)
        for _ in range(3):
            out, loss = free_at.replay_step(model, criterion, opt, x, y, noise[0], mean, std,
                                            step, eps, s_HE=s if he else None,
                                            angular_margin_HE=m)
            noise_batch = noise[1][:n].clone().requires_grad_()
            in1 = (x + noise_batch).clamp(0, 1.0).sub(mean).div(std)
            twin_out = twin(in1)
            logits = s * (twin_out - m * F.one_hot(y, CLASSES)) if he else twin_out
            twin_loss = F.cross_entropy(logits, y)
            twin_opt.zero_grad()
            twin_loss.backward()
            noise[1][:n] += step * torch.sign(noise_batch.grad)
            noise[1].clamp_(-eps, eps)
            twin_opt.step()
            torch.testing.assert_close(loss.detach(), twin_loss.detach(), **TOL)
            torch.testing.assert_close(out.detach(), twin_out.detach(), **TOL)
            torch.testing.assert_close(noise[0], noise[1], **TOL)
            assert_same_state(model, twin)
    assert noise[0].abs().max() == pytest.approx(eps)


# --- Bag of Tricks ---------------------------------------------------------------------------

def oracle_bot_smoothing(pred, target, smoothing, classes=CLASSES):
    """BoT's LabelSmoothingLoss: 1 − ε on the label, ε/(C − 1) elsewhere."""
    true_dist = torch.full_like(pred, smoothing / (classes - 1))
    true_dist.scatter_(1, target[:, None], 1.0 - smoothing)
    return torch.mean(torch.sum(-true_dist * pred.log_softmax(-1), dim=-1))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_bag_of_tricks_he_loss_matches_public(smoothing):
    torch.manual_seed(1)
    cos = F.normalize(torch.randn(8, CLASSES), dim=1).requires_grad_()
    y = torch.randint(0, CLASSES, (8,))
    s, m = 15.0, 0.2
    got = bag_of_tricks.he_loss(cos, y, s_FN=s, m_FN=m, labelsmoothvalue=smoothing)
    logits = s * cos - m * s * F.one_hot(y, CLASSES)
    want = (oracle_bot_smoothing(logits, y, smoothing) if smoothing
            else F.cross_entropy(logits, y))
    for a, b in ((got, want), (torch.autograd.grad(got, cos)[0],
                               torch.autograd.grad(want, cos)[0])):
        torch.testing.assert_close(a, b, **TOL)


def test_bag_of_tricks_label_smoothing_loss_matches_public():
    torch.manual_seed(2)
    pred = (3 * torch.randn(8, CLASSES)).requires_grad_()
    y = torch.randint(0, CLASSES, (8,))
    got = bag_of_tricks.LabelSmoothingLoss(smoothing=0.3)(pred, y)
    want = oracle_bot_smoothing(pred, y, 0.3)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0],
                               torch.autograd.grad(want, pred)[0], **TOL)
    with pytest.raises(ValueError, match=r"pred must have shape \(B, 10\)"):
        bag_of_tricks.LabelSmoothingLoss(smoothing=0.3)(torch.randn(4, 7), y[:4])
