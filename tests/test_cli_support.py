"""The pieces behind the command line: thread choice, progress and ETA, budgets, schedules,
weight EMA, label smoothing."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from heat_fast import progress, threads
from heat_fast.budget import BudgetError, check_budget, format_eps, parse_budget
from heat_fast.training.ema import WeightEMA
from heat_fast.training.objective import Objective
from heat_fast.training.schedules import lr_factor


# --- threads -----------------------------------------------------------------------------
@pytest.mark.parametrize("usable,busy,expected", [
    (2, 0.0, 2), (2, 0.3, 2), (2, 0.31, 1), (2, 1.2, 1), (2, 2.0, 1), (16, 3.5, 12), (1, 0.0, 1)])
def test_auto_threads_leave_the_busy_cpus_free(monkeypatch, usable, busy, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: usable)
    choice = threads.choose_threads(busy=lambda cpus: busy)
    assert choice.count == expected and choice.source.startswith(f"auto: {usable} usable CPU")


def test_explicit_threads_win_and_oversubscription_is_warned(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(busy=lambda cpus: 0.0) == threads.ThreadChoice(3, "OMP_NUM_THREADS")
    assert threads.choose_threads(1, busy=lambda cpus: 2.0).warning is None
    assert "exceeds the 2 usable CPUs" in threads.choose_threads(4, busy=lambda cpus: 0.0).warning
    assert "many times slower than --threads 1" in threads.choose_threads(2, busy=lambda cpus: 1.0).warning
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WORLD_SIZE", "2")  # two processes share the CPUs
    assert threads.choose_threads(busy=lambda cpus: 0.0).count == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # torchrun: one of them on this machine
    assert threads.choose_threads(busy=lambda cpus: 0.0).count == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    ignored = threads.choose_threads(busy=lambda cpus: 0.0)
    assert ignored.count == 2 and "OMP_NUM_THREADS='many' is not an integer" in ignored.warning


def test_cgroup_quota_and_proc_stat_sampling(tmp_path, monkeypatch):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "none") == 1.5
    v2.write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "none") is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_limit(tmp_path / "absent", v1) == 4.0
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: cpu0 busy 30 of 100 jiffies, cpu1 idle
    snapshots = iter(["cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n",
                      "cpu  0 0 0 0 0 0 0 0\ncpu0 120 0 10 170 0 0 0 0\ncpu1 0 0 0 300 0 0 0 0\n"])
    stat.write_text(next(snapshots))
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat.write_text(next(snapshots)))
    assert threads.busy_cpus([0, 1], stat=stat) == pytest.approx(2 * 30 / 200)


def test_using_threads_restores_the_count():
    before = torch.get_num_threads()
    with threads.using_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --- progress ----------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_tracker_eta_covers_the_whole_run_at_the_measured_rate():
    clock, stream = FakeClock(), io.StringIO()
    with progress.Tracker(1000, mode="lines", stream=stream, interval=30, clock=clock,
                          unit_costs={"train": 50}) as tracker:
        bar = progress.bar(10, "epoch 1", kind="train")
        clock.now += 10
        bar.update()  # 50 of 1000 units in 10 s: 190 s left
        assert tracker.eta() == pytest.approx(190)
        clock.now += 10
        bar.update()  # within the 30 s interval: no line
        clock.now += 40
        bar.set_postfix(loss="0.5")
        bar.update(2)  # 200 units in 60 s: 800 units take 240 s
        evaluation = tracker.bar(3, "eval", units_per_step=0)
        evaluation.update(units=100, detail="pgd20-cw eps 8/255")
    assert stream.getvalue().splitlines() == [
        "epoch 1 1/10 (10%)  run 5%, 0:10 elapsed, ETA 3:10",
        "epoch 1 4/10 (40%)  loss=0.5  run 20%, 1:00 elapsed, ETA 4:00"]
    assert tracker.fraction == pytest.approx(0.3) and progress.active() is None
    assert progress.format_duration(3 * 86400 + 3723) == "3d 1:02:03"
    assert progress.format_duration(None) == "?"


def test_bars_outside_a_tracker_and_switched_off(capsys):
    with progress.bar(4, "solo", enabled=False) as bar:
        bar.update()
    with progress.Tracker(10, mode="off"):
        progress.bar(2, "x").update()
    assert capsys.readouterr().err == ""
    stream = io.StringIO()
    with progress.bar(4, "solo", stream=stream) as bar:
        bar.update(units=1000)  # a standalone bar counts its own steps
    assert stream.getvalue().startswith("solo 1/4 (25%)  ETA ")
    assert progress.attack_passes("pgd20-cw") == 21 and progress.attack_passes("apgd-dlr") == 101
    assert progress.attack_passes("pgd10-ce-r3") == 31 and progress.attack_passes("fgsm") == 2
    with pytest.raises(ValueError, match="progress mode"):
        progress.Tracker(1, mode="fancy")


# --- budgets -----------------------------------------------------------------------------
def test_budgets_parse_check_and_print_one_way():
    assert parse_budget("8/255") == 8 / 255 and parse_budget(" 0.031") == 0.031
    for bad, message in (("8/0", "like 8/255"), ("x", "like 8/255"), ("-1", ">= 0"), ("inf", "finite")):
        with pytest.raises(BudgetError, match=message):
            parse_budget(bad)
    with pytest.raises(BudgetError, match=r"did you mean 8/255\?"):
        check_budget(8.0)
    assert check_budget(8.0, norm="l2") == 8.0
    assert [format_eps(v) for v in (0.0, 8 / 255, 2 / 255, 0.1, 0.031, 2.0, 8 / 255 / 4, 0.0313725)] == [
        "0", "8/255", "2/255", "0.1", "0.031", "2", "2/255", "0.03137"]


# --- schedules, EMA, label smoothing -----------------------------------------------------
def test_cosine_with_warmup_and_warmup_on_any_schedule():
    f = lr_factor("cosine", epochs=4, iters_per_epoch=5, warmup_iters=5)
    assert [f(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert [f(i) for i in (5, 10, 15, 20)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * t / 15)) for t in (0, 5, 10, 15)])
    plain = lr_factor("cosine", 2, 10)
    assert plain(0) == 1 and plain(10) == pytest.approx(0.5) and plain(20) == pytest.approx(0)
    multi = lr_factor("multistep", 4, 5, [2], 0.1, warmup_iters=2)
    assert [multi(i) for i in (0, 1, 9, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="warmup_iters"):
        lr_factor("cosine", 1, 5, warmup_iters=6)


def test_weight_ema_follows_the_published_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for t in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the BN running statistics
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for got, want in zip(ema.model.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6) and not got.requires_grad
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
    copy = WeightEMA(model, 0.5)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 4 and torch.equal(copy.model[0].weight, ema.model[0].weight)


@pytest.mark.parametrize("he", [False, True])
def test_label_smoothing_applies_to_training_losses_only(he):
    from heat_fast.reference.he_loss import he_cross_entropy as reference
    from heat_fast.training.objective import Outputs
    torch.manual_seed(1)
    features, weight = torch.randn(6, 5), torch.randn(4, 5)
    y = torch.randint(0, 4, (6,))
    out = Outputs(features=features, weight=weight) if he else Outputs(logits=features @ weight.T)
    smooth = Objective(he=he, scale=10.0, margin=0.2, label_smoothing=0.1, backend="reference")
    if he:
        train = reference(features, weight, y, scale=10.0, margin=0.2, label_smoothing=0.1)
        craft = reference(features, weight, y, scale=10.0, margin=0.0)
    else:
        train = F.cross_entropy(features @ weight.T, y, label_smoothing=0.1)
        craft = F.cross_entropy(features @ weight.T, y)
    assert torch.allclose(smooth.cross_entropy(out, y, margin=True), train, atol=1e-5)
    assert torch.allclose(smooth.cross_entropy(out, y, margin=False), craft, atol=1e-5)
