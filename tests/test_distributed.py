"""DDP training on CPU/gloo with 2 processes on 127.0.0.1: equal ranks, equality with one
process on the whole batch, ``heat-fast train`` under torchrun and a bit-exact DDP resume.

One pair of processes (module fixture, ``torch.multiprocessing``) runs every in-process check and saves
what each rank saw; the tests compare. The single-process comparison uses a BN-free model:
with BatchNorm in train mode each rank normalizes its own half of the batch, which a
full-batch step cannot reproduce, so equality with one process is only defined without BN.
Crafting starts at x (``start="none"``), so the attack draws no random numbers; each
example's adversarial image then depends on that example alone and the DDP step (mean of
the ranks' mean losses over equal halves) equals the full-batch step up to float rounding.
"""
import faulthandler
import gc
import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from heat_fast.data import TensorLoader, load_dataset
from heat_fast.models import build_model
from heat_fast.models.base import Classifier
from heat_fast.training import Trainer, load_model
from heat_fast.training.distributed import TIMEOUT_VAR, rank_seed, setup

WORLD = 2
WORKER_DEADLINE_S = 300
STUCK_WORKER_S = 90
BATCH, STEPS = 32, 2
# name -> (framework, he, BN-free model, attack start)
CASES = {
    "pgd-at-he": ("pgd-at", True, True, "none"),
    "pgd-at": ("pgd-at", False, True, "none"),
    "alp-he": ("alp", True, True, "none"),          # two DDP forwards per step
    "small-cnn-bn": ("pgd-at", True, False, "uniform"),  # BN, per-rank random starts
}
CLI = ["--dataset", "digits", "--framework", "pgd-at", "--he", "--max-steps-per-epoch", "2",
       "--steps", "1", "--batch-size", "16", "--crop-padding", "1", "--schedule", "constant",
       "--eval-examples", "8", "--eval-steps", "1", "--no-progress"]


def _free_ports(count: int) -> list:
    """``count`` distinct ports that are free now and that the OS never hands out itself.

    The workers' ports are picked before they start and used minutes later. OS-assigned
    ports lie in the ephemeral range, where gloo's own connections take ports meanwhile (seen
    in CI: a rank reached a stale socket and the rendezvous timed out), so pick below it.
    """
    low = _ephemeral_range()[0]
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    held = []
    try:
        for _ in range(50 * count):
            if len(held) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", rng.randrange(max(1024, low - 12000), low)))
            except OSError:
                s.close()
                continue
            held.append(s)
        if len(held) < count:
            raise RuntimeError(f"found {len(held)} of {count} free ports below {low}")
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _free_port() -> int:
    return _free_ports(1)[0]


def _ephemeral_range() -> tuple:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
        return int(low), int(high)
    except OSError:
        return 32768, 60999


def _data():
    data = load_dataset("digits")
    return data, data.train_x[:BATCH * STEPS], data.train_y[:BATCH * STEPS]


def _model(data, he: bool, bn_free: bool) -> nn.Module:
    torch.manual_seed(0)
    if not bn_free:
        return build_model("small-cnn", 10, he, 1, 8, data.mean, data.std)
    body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten())
    return Classifier(body, 32, 10, he, 1, data.mean, data.std)


def train_case(name: str, ctx=None) -> dict:
    """STEPS steps of case ``name`` on the first BATCH·STEPS digits, in order; with ``ctx``
    each rank takes its half of every batch. Returns the model state, the epoch statistics
    and how many forwards went through DDP."""
    framework, he, bn_free, start = CASES[name]
    data, x, y = _data()
    model = _model(data, he, bn_free)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    loader = TensorLoader(x, y, BATCH, shuffle=False, rank=rank, world_size=world)
    # float32: equality with one process is up to float32 rounding, which bf16 would swamp
    trainer = Trainer(model, optimizer, loader, framework, he=he, eps=0.1, steps=2, start=start,
                      seed=rank_seed(1, rank), progress=False, distributed=ctx, bf16=False)
    forwards = []
    if ctx is not None:
        trainer.train_model.ddp.register_forward_pre_hook(lambda *_: forwards.append(1))
    stats = trainer.train_epoch()
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "stats": stats,
            "ddp_forwards": len(forwards)}


def _cli_runs(rank: int, ports, out) -> None:
    from heat_fast.cli.train import main

    for port, argv in zip(ports, (
            [*CLI, "--epochs", "2", "--out", str(out / "full")],
            [*CLI, "--epochs", "1", "--out", str(out / "cut")],
            ["--resume", "--epochs", "2", "--no-progress", "--out", str(out / "cut")])):
        os.environ["MASTER_PORT"] = str(port)
        assert main(argv) == 0, (rank, argv)


def _failing_cli_runs(rank: int, ports, out) -> None:
    """Runs that leave the process group while an exception holds the DDP model in its frames:
    a resume from a one-process checkpoint (fails after the model is wrapped) and a training
    step that raises."""
    from heat_fast.cli.train import main
    from heat_fast.training.frameworks.base import Framework

    os.environ["MASTER_PORT"] = str(ports[0])
    assert main(["--resume", "--no-progress", "--out", str(out / "single")]) == 2, rank

    def failing_step(self, model, *args, **kwargs):
        raise RuntimeError(f"injected failure with {type(model).__name__}")

    os.environ["MASTER_PORT"] = str(ports[1])
    original, Framework.train_step = Framework.train_step, failing_step
    try:
        with pytest.raises(RuntimeError, match="injected failure with DistributedModel"):
            main([*CLI, "--epochs", "1", "--out", str(out / "failing")])
    finally:
        Framework.train_step = original


def _record_teardowns(out, rank: int) -> None:
    """Make every ``destroy_process_group`` append to ``out/teardown{rank}.json`` how many
    DDP reducers were alive then: one alive would free the gloo group later, in the reducer's
    destructor under the GIL, which can deadlock with gloo's threads at exit."""
    destroy = torch.distributed.destroy_process_group

    def recording_destroy(*args, **kwargs):
        alive = sum(getattr(o, "reducer", None) is not None for o in gc.get_objects()
                    if isinstance(o, DistributedDataParallel))
        with open(out / f"teardown{rank}.json", "a") as f:
            f.write(json.dumps(alive) + "\n")
        return destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = recording_destroy


def _worker(rank: int, ports, out) -> None:
    # A worker still running this late is stuck (a run takes ~15 s): its threads' stacks go to
    # the captured stderr, so a rendezvous timeout in the other rank comes with the reason.
    faulthandler.dump_traceback_later(STUCK_WORKER_S)
    torch.set_num_threads(1)
    _record_teardowns(out, rank)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    ctx = setup("cpu")
    try:
        results = {name: train_case(name, ctx) for name in CASES}
    finally:
        ctx.close()
    torch.save(results, out / f"rank{rank}.pt")
    _cli_runs(rank, ports[1:4], out)
    _failing_cli_runs(rank, ports[4:], out)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault(TIMEOUT_VAR, "120")
    from heat_fast.cli.train import main

    # A one-process checkpoint, which the workers fail to resume (_failing_cli_runs)
    assert main([*CLI, "--epochs", "1", "--out", str(out / "single")]) == 0
    # fork: the children start with torch and heat_fast imported and drop to one thread
    # first. Spawned children re-importing under pytest stalled here; the deadline below
    # turns any stall into a failure instead of a hung CI.
    workers = mp.start_processes(_worker, args=(_free_ports(6), out),
                                 nprocs=WORLD, start_method="fork", join=False)
    deadline = time.monotonic() + WORKER_DEADLINE_S
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the DDP workers did not finish within {WORKER_DEADLINE_S} s")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_parameters_and_buffers_are_identical_across_ranks(spawned):
    _, (rank0, rank1) = spawned
    for name in CASES:
        for key, value in rank0[name]["state"].items():
            assert torch.equal(value, rank1[name]["state"][key]), (name, key)
        assert rank0[name]["stats"]["steps"] == STEPS


def test_ddp_reducers_are_freed_before_the_process_group(spawned):
    out, _ = spawned
    for rank in range(WORLD):
        alive = [json.loads(line) for line in (out / f"teardown{rank}.json").read_text().split()]
        assert alive == [0] * 6, rank  # in-process cases, three CLI runs, two failing ones


def test_only_the_training_forward_goes_through_ddp(spawned):
    _, (rank0, _) = spawned
    per_step = {"pgd-at": 1, "alp": 2}  # the attack (2 PGD steps) runs on the plain model
    for name, (framework, *_) in CASES.items():
        assert rank0[name]["ddp_forwards"] == STEPS * per_step[framework], name


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2]])
def test_ddp_step_equals_one_process_on_the_whole_batch(spawned, name):
    _, (rank0, _) = spawned
    single = train_case(name)
    for key, value in single["state"].items():
        torch.testing.assert_close(rank0[name]["state"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name} {key}: {m}")
    for key in ("loss", "train_clean_acc", "train_adv_acc"):
        assert rank0[name]["stats"][key] == pytest.approx(single["stats"][key], rel=1e-5), key


def _metrics(path):
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in path.read_text().splitlines()]


def test_cli_checkpoint_loads_in_one_process_and_resume_is_bit_exact(spawned):
    out, _ = spawned
    full, cut = out / "full", out / "cut"
    model, config = load_model(full / "last.pt")
    assert config["he"] and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, cut))
    assert a["epoch"] == b["epoch"] == 2 and len(a["ranks"]) == WORLD
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert _metrics(full / "metrics.jsonl") == _metrics(cut / "metrics.jsonl")
    assert [m["epoch"] for m in _metrics(full / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in full.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl",
                                                     "training_curves.png"]


def test_torchrun_runs_heat_fast_train(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "heat_fast", "train", *CLI,
               "--epochs", "1", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 1 epoch in") == 1  # only rank 0 prints
    model, _ = load_model(out / "last.pt")
    assert model.he


@pytest.mark.parametrize("env,extra,message", [
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, [], "torchrun environment incomplete: RANK"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, ["--dist-backend", "nccl"],
     "'nccl' process-group backend is not available"),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, ["--sync-bn"], "--sync-bn needs CUDA"),
])
def test_distributed_setup_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys, env,
                                                        extra, message):
    if "nccl" in extra and torch.distributed.is_nccl_available():
        pytest.skip("this torch build has nccl")
    from heat_fast.cli.train import main

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main([*CLI, "--device", "cpu", "--epochs", "1", *extra, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not torch.distributed.is_initialized() and not (tmp_path / "x").exists()
