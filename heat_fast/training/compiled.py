"""The compiled K-step attack (``compile=True``): one attack step compiled whole, run K times.

The step (forward, input gradient, projection: :func:`heat_fast.training.crafting.attack_step`)
is compiled by ``torch.compile(fullgraph=True)`` with ``torch.autograd.grad`` traced into the
graph (dynamo's ``trace_autograd_ops``), so forward, backward and the PGD update are one
graph, and with the parameters frozen (:func:`~heat_fast.training.crafting.crafting`) it
computes no weight gradient. On CUDA the K steps are captured once per batch signature in a
CUDA graph and replayed for every batch of that signature (the random start is drawn before
the replay). A graph reads the parameters and BN statistics where they live, so it stays valid
while the optimizer updates them in place; a model whose tensors move gets a new capture.

Importing this module imports no compiler; the first call does.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Optional, Tuple

import torch
from torch import Tensor, nn

StepFn = Callable[[nn.Module, Tensor, Tensor, Any], Tensor]
MAX_GRAPHS = 4


def _tracing_autograd():
    """Dynamo settings under which ``torch.autograd.grad`` is traced into the graph."""
    import torch._dynamo

    return torch._dynamo.config.patch(trace_autograd_ops=True)


class CompiledAttack:
    """Run ``step(net, x_adv, x_nat, target) -> x_adv'`` K times, compiled (and on CUDA,
    captured in a CUDA graph). ``step`` must make no host synchronisation."""

    def __init__(self, step: StepFn, cuda_graphs: bool = True):
        self.step, self.cuda_graphs = step, cuda_graphs
        self._compiled: Optional[StepFn] = None
        self._graphs: "OrderedDict[Hashable, Tuple[Any, List[Tensor], Tensor]]" = OrderedDict()

    def _loop(self, net: nn.Module, x_adv: Tensor, x_nat: Tensor, target: Any,
              steps: int) -> Tensor:
        if self._compiled is None:
            self._compiled = torch.compile(self.step, fullgraph=True)
        with _tracing_autograd():
            for _ in range(steps):
                x_adv = self._compiled(net, x_adv, x_nat, target)
        return x_adv

    def __call__(self, net: nn.Module, x_start: Tensor, x_nat: Tensor, target: Any,
                 steps: int) -> Tensor:
        """The attack's last iterate from ``x_start`` (x_start itself for 0 steps)."""
        if steps == 0:
            return x_start
        if not (self.cuda_graphs and x_start.is_cuda):
            return self._loop(net, x_start, x_nat, target, steps)
        key = _signature(net, (x_start, x_nat, target), steps)
        entry = self._graphs.get(key)
        if entry is None:
            return self._capture(key, net, x_start, x_nat, target, steps)
        self._graphs.move_to_end(key)
        graph, inputs, output = entry
        for static, value in zip(inputs, (x_start, x_nat, target)):
            static.copy_(value)
        graph.replay()
        return output.clone()

    def _capture(self, key: Hashable, net: nn.Module, x_start: Tensor, x_nat: Tensor,
                 target: Tensor, steps: int) -> Tensor:
        """Run the attack for this batch on a side stream (compiling and warming up), then
        capture the same K steps on static copies of the inputs."""
        side = torch.cuda.Stream(x_start.device)
        side.wait_stream(torch.cuda.current_stream(x_start.device))
        with torch.cuda.stream(side):
            result = self._loop(net, x_start, x_nat, target, steps)
        current = torch.cuda.current_stream(x_start.device)
        current.wait_stream(side)
        result.record_stream(current)
        inputs = [t.clone() for t in (x_start, x_nat, target)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._loop(net, *inputs, steps)
        self._graphs[key] = (graph, inputs, output)
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return result


def _signature(net: nn.Module, tensors: Tuple[Any, ...], steps: int) -> Hashable:
    """What a captured graph depends on: the inputs' shapes, layouts and dtypes, the step
    count, and the model's identity, modes and tensor addresses."""
    if not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError("a CUDA-graph attack takes tensors only (x_start, x_nat, target)")
    layout = tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)
    state = tuple(t.data_ptr() for t in (*net.parameters(), *net.buffers()))
    modes = tuple(m.training for m in net.modules())
    return steps, layout, id(net), state, modes
