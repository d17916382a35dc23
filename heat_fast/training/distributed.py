"""Data-parallel training through ``torch.distributed`` (SPEC §6), launched by ``torchrun``.

:func:`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: nccl for CUDA (one GPU per process, cuda:LOCAL_RANK),
gloo for CPU. :class:`DistributedModel` wraps a model in ``DistributedDataParallel`` for the
outer (training) forward only: it exposes ``model(x)``, ``features(x)`` and ``head`` as
:class:`~heat_fast.training.objective.Objective` expects, while :func:`unwrap` gives the
plain model the attack runs on, so PGD steps trigger neither buffer broadcasts nor DDP hooks.
"""
from __future__ import annotations

import gc
import inspect
import os
import sys
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_map

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT_VAR = "HEAT_FAST_DIST_TIMEOUT"
RANK_SEED_STRIDE = 10_007


class DistributedError(RuntimeError):
    """The torchrun environment asks for a process group that cannot be set up."""


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (rank 0 keeps ``seed``)."""
    return seed + RANK_SEED_STRIDE * rank


def _to_cpu(obj: Any) -> Any:
    return tree_map(lambda v: v.cpu() if isinstance(v, Tensor) else v, obj)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the joined process group and its training device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    _wrapped: "weakref.WeakSet[DistributedModel]" = field(
        default_factory=weakref.WeakSet, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """Element-wise sum of ``values`` over all ranks (a new float64 tensor on the device)."""
        total = values.detach().to(self.device, torch.float64, copy=True)
        dist.all_reduce(total)
        return total

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` (tensors moved to CPU) as a list on rank 0; None elsewhere."""
        objects = [None] * self.world_size if self.is_main else None
        dist.gather_object(_to_cpu(obj), objects, dst=0)
        return objects

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> "DistributedModel":
        """``model`` (already on :attr:`device`) in DDP, its BatchNorm layers made
        ``SyncBatchNorm`` first if ``sync_bn`` (CUDA only: torch's SyncBatchNorm has no CPU path)."""
        if sync_bn:
            if self.device.type != "cuda":
                raise DistributedError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm "
                                       "does not run on CPU tensors")
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = DistributedModel(model, self.device)
        self._wrapped.add(wrapped)
        return wrapped

    def barrier(self) -> None:
        """Wait until every rank got here."""
        dist.barrier()

    def close(self) -> None:
        """Leave the process group (idempotent); the models :meth:`wrap` gave cannot train
        through DDP afterwards.

        DDP reducers go first, while the group is still registered: the reducers of the
        wrapped models (still referenced, say, by the frames of an exception on its way up)
        and those of unreachable DDP wrappers. A reducer freed after the group would drop the
        last reference to the gloo group while holding the GIL, and the group's destructor
        then joins worker threads that may need the GIL to free the last collective's
        tensors (a deadlock at exit). Freed from Python by ``destroy_process_group``, the
        group's destructor runs without the GIL.
        """
        if dist.is_initialized():
            for wrapped in list(self._wrapped):
                wrapped.release_reducer()
            gc.collect()
            dist.destroy_process_group()


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise DistributedError(f"torchrun environment incomplete: {name}="
                               f"{os.environ.get(name)!r} (expected an integer; set "
                               f"{', '.join(ENV_VARS)} or launch with torchrun)") from None


def launched_by_torchrun() -> bool:
    """True when WORLD_SIZE is set, as torchrun (or any env:// launcher) does."""
    return "WORLD_SIZE" in os.environ


def setup(device: str, backend: Optional[str] = None) -> Optional[Distributed]:
    """Join the process group torchrun describes; None when not launched by torchrun.

    ``device`` is the run's device type ("cpu" or "cuda"; an index is replaced by LOCAL_RANK).
    ``backend`` defaults to nccl on CUDA and gloo on CPU. Collectives give up after
    HEAT_FAST_DIST_TIMEOUT seconds (default 1800) instead of waiting for a lost peer forever.
    Raises :class:`DistributedError` when the environment is incomplete, the backend
    unavailable, or the GPU missing.
    """
    if not launched_by_torchrun():
        return None
    rank, world_size, local_rank = (_env_int(name) for name in ENV_VARS)
    device_type = torch.device(device).type
    backend = backend or ("nccl" if device_type == "cuda" else "gloo")
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE is set but this torch build has no torch.distributed")
    if not dist.is_backend_available(backend):
        raise DistributedError(f"WORLD_SIZE is set but the {backend!r} process-group backend is "
                               f"not available in this torch build (torch {torch.__version__}; "
                               "CPU runs use gloo: --dist-backend gloo)")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} needs cuda:{local_rank}, but torch "
                                   f"sees {torch.cuda.device_count()} GPU(s) on this node")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device(device_type)
    if not dist.is_initialized():
        try:
            timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_VAR, 1800)))
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the {backend} process group as rank {rank} of "
                                   f"{world_size}: {str(exc).splitlines()[0]}") from None
    return Distributed(rank, world_size, local_rank, torch_device)


class _TrainingForward(nn.Module):
    """The module DDP wraps: ``forward(x, features)`` is ``model.features(x)`` or ``model(x)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        return self.model.features(x) if features else self.model(x)


# DDP's switch for broadcasting buffers at every forward: renamed in torch 2.13
_DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_OPTIONS
                           else {"broadcast_buffers": False})


class DistributedModel(nn.Module):
    """A model whose forward and ``features`` run through ``DistributedDataParallel``.

    Gradients of every parameter are averaged over the ranks during backward, the HE head's
    weight included: :attr:`head` is the inner model's, and DDP's reducer hooks sit on the
    parameters themselves, so a loss built from ``features(x)`` and ``head.weight`` reduces
    the weight's gradient as well. Buffers are not broadcast per forward; call
    :meth:`sync_buffers` after each optimizer step. :attr:`module` is the plain model.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        device_ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_TrainingForward(model), device_ids=device_ids,
                                           **_NO_FORWARD_BUFFER_SYNC)

    @property
    def module(self) -> nn.Module:
        return self.ddp.module.model

    @property
    def head(self) -> nn.Module:
        return self.module.head

    def forward(self, x: Tensor) -> Tensor:
        return self.ddp(x)

    def features(self, x: Tensor) -> Tensor:
        return self.ddp(x, features=True)

    def release_reducer(self) -> None:
        """Free DDP's gradient reducer (and the logger that holds it) now; the model cannot
        train through DDP afterwards (see :meth:`Distributed.close`)."""
        for name in ("logger", "reducer"):
            if getattr(self.ddp, name, None) is not None:
                setattr(self.ddp, name, None)

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN running statistics), so all ranks craft
        with the same model. One broadcast per buffer dtype."""
        groups: Dict[torch.dtype, List[Tensor]] = {}
        for buffer in self.module.buffers():
            groups.setdefault(buffer.dtype, []).append(buffer)
        for buffers in groups.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, 0)
            for buffer, values in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(values.view_as(buffer))


def _compiled_module_type() -> Optional[type]:
    """torch.compile's wrapper class, if torch._dynamo is loaded (else no model can be one)."""
    if "torch._dynamo" not in sys.modules:
        return None
    from torch._dynamo.eval_frame import OptimizedModule
    return OptimizedModule


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside any nesting of :class:`DistributedModel`,
    ``DistributedDataParallel``, ``nn.DataParallel`` and torch.compile's ``OptimizedModule``
    (e.g. ``torch.compile(nn.DataParallel(net))`` gives ``net``); other modules as they are."""
    compiled = _compiled_module_type()
    while True:
        if isinstance(model, (DistributedModel, DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model
