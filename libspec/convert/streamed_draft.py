"""A draft model for the numerical check that holds one module's weights at a time.

The check runs spec-tools' model of the algorithm in float32 over the written checkpoint. A
float32 copy of a whole 2 GB bf16 draft would be 4 GB; instead the model is built with its
parameters on the meta device (no memory; buffers such as rotary tables stay real), and each
module's parameters are read from the checkpoint just before its forward and dropped right
after it, so at most one module's weights are in memory at any time.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

Loader = Callable[[str], torch.Tensor]  # checkpoint tensor name -> float32 tensor


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get meta parameters (shapes only) and real buffers."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=False)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@contextlib.contextmanager
def streamed_parameters(model: nn.Module, load: Loader) -> Iterator[nn.Module]:
    """While inside, every module reads its parameters through `load` for the length of its forward."""
    handles = []
    for prefix, module in model.named_modules():
        names = [name for name, _ in module.named_parameters(recurse=False)]
        if names:
            handles.append(module.register_forward_pre_hook(_loader_hook(prefix, names, load)))
            handles.append(module.register_forward_hook(_dropper_hook(names)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _loader_hook(prefix: str, names: list[str], load: Loader):
    def before(module: nn.Module, args) -> None:
        for name in names:
            tensor = load(f"{prefix}.{name}" if prefix else name)
            module._parameters[name] = nn.Parameter(tensor, requires_grad=False)

    return before


def _dropper_hook(names: list[str]):
    def after(module: nn.Module, args, output) -> None:
        for name in names:
            module._parameters[name] = nn.Parameter(module._parameters[name].to("meta"), requires_grad=False)

    return after
