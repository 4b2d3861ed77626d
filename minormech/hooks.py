"""Sites of a Hugging Face Llama and forward hooks that record them (SPEC "Sites").

Site names follow the paper: per layer i, ``q``/``k``/``v`` are the outputs of
q_proj/k_proj/v_proj (before rotary embeddings), ``o`` the output of o_proj and ``mlp``
the output of the MLP block. Each (site, layer) has a hook name in the style of
TransformerLens, ``blocks.{layer}.hook_{site}``, used as the tensor key in shards.

A plain ``register_forward_hook`` on the module is all that is needed; o_proj is
hooked rather than self_attn because self_attn returns a tuple.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from minormech.models import SITES


def hook_name(site: str, layer: int) -> str:
    return f"blocks.{layer}.hook_{site}"


def site_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The module whose output is `site` at `layer` in a LlamaForCausalLM-style model."""
    block = model.model.layers[layer]
    if site in ("q", "k", "v", "o"):
        return getattr(block.self_attn, f"{site}_proj")
    if site == "mlp":
        return block.mlp
    raise KeyError(f"unknown site {site!r}; known sites: {SITES}")


HookFn = Callable[[str, int, torch.Tensor], torch.Tensor | None]


@contextmanager
def site_hooks(model: nn.Module, sites: Sequence[str], layers: Sequence[int], fn: HookFn) -> Iterator[None]:
    """Call fn(site, layer, output) after each hooked module; a tensor it returns replaces
    the module's output (patching). Hooks are removed on exit, also after an error."""
    handles = []

    def make(site: str, layer: int):
        def hook(_module, _inputs, output):
            return fn(site, layer, output)

        return hook

    try:
        for layer in layers:
            for site in sites:
                handles.append(site_module(model, site, layer).register_forward_hook(make(site, layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_sites(
    model: nn.Module, sites: Sequence[str], layers: Sequence[int]
) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Record the outputs of the given sites during forward passes inside the block.

    The dict is filled (site, layer) -> output tensor [batch, seq, width] by each forward
    and overwritten by the next one; tensors are detached (no graph is kept).
    """
    recorded: dict[tuple[str, int], torch.Tensor] = {}

    def keep(site: str, layer: int, output: torch.Tensor) -> None:
        recorded[(site, layer)] = output.detach()

    with site_hooks(model, sites, layers, keep):
        yield recorded
