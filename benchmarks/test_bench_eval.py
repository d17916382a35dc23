"""heat_fast's AutoAttack-equivalent default evaluation against the official AutoAttack.

One adversarially trained model (PGD-AT, small CNN, digits, 8 epochs, trained here in
seconds) and the same test images (N_EXAMPLES, ε = 0.1) for three variants, each timed once
in the same run:

- ``official``: ``pyautoattack``'s standard version called directly (the baseline);
- ``official-via-heat_fast``: the same package through ``build_attack("autoattack")``;
- ``heat_fast-default``: ``evaluate`` with the default attacks (PGD-20 CE/CW first pass,
  then APGD-CE, APGD-T, FAB-T, Square with AutoAttack's settings).

``extra_info`` holds each variant's robust accuracy (and heat_fast's seconds per attack), so
the speed-up is read next to the evidence that the two evaluations agree.
Run: ``python -m pytest benchmarks/test_bench_eval.py --benchmark-json eval.json``.
"""
import pytest
import torch

from heat_fast.attacks import build_attack, predict
from heat_fast.evaluation import DEFAULT_ATTACKS, WORST, checkpoints, evaluate

EPS = 0.1
N_EXAMPLES = 360
GROUP = f"autoattack-standard small-cnn PGD-AT digits n={N_EXAMPLES} eps={EPS} cpu"


@pytest.fixture(scope="module")
def digits_pgd_at(tmp_path_factory):
    from heat_fast.cli import train
    run = tmp_path_factory.mktemp("bench-eval") / "pgd-at"
    code = train.main(["--framework", "pgd-at", "--no-he", "--dataset", "digits", "--epochs", "8",
                       "--seed", "0", "--eval-examples", "50", "--out", str(run), "--no-progress"])
    assert code == 0
    ckpt = checkpoints.load(run)
    x, y = checkpoints.test_data(ckpt.config, N_EXAMPLES)
    return ckpt.model.eval(), x, y


def _official(model, x, y):
    package = pytest.importorskip("pyautoattack")
    adversary = package.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0,
                                   device=x.device)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return float((predict(model, x_adv) == y).double().mean())


def _through_heat_fast(model, x, y):
    pytest.importorskip("pyautoattack")
    x_adv = build_attack("autoattack", EPS)(model, x, y)
    return float((predict(model, x_adv) == y).double().mean())


VARIANTS = ("official", "official-via-heat_fast", "heat_fast-default")


@pytest.mark.parametrize("variant", VARIANTS)
def test_autoattack_standard(benchmark, digits_pgd_at, variant):
    model, x, y = digits_pgd_at
    result = {}

    def run():
        if variant == "official":
            result["robust"] = _official(model, x, y)
        elif variant == "official-via-heat_fast":
            result["robust"] = _through_heat_fast(model, x, y)
        else:
            evaluation = evaluate(model, x, y, EPS, DEFAULT_ATTACKS, batch_size=N_EXAMPLES,
                                  progress=False)
            result["robust"] = evaluation.accuracy[WORST]
            result["seconds"] = evaluation.seconds

    benchmark.group = GROUP
    benchmark.extra_info.update(backend=variant, baseline=variant == "official",
                                threads=torch.get_num_threads(), torch=torch.__version__)
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(robust_accuracy=result["robust"],
                                seconds_per_attack=result.get("seconds"))
