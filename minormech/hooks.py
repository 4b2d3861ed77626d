"""Forward hooks that record or replace sites of a Hugging Face Llama-family model (one of
minormech.sites.SUPPORTED_ARCHITECTURES).

What each site is, and which module carries it, is the site table in minormech.sites
(paper §2.1 eq. 3-5; the residual-stream sites resid_pre, resid_mid and resid_post
beside the paper's q, k, v, o, mlp). Each (site, layer) has a TransformerLens-style hook
name (``blocks.{layer}.attn.hook_k``, ``blocks.{layer}.hook_resid_pre``, ...), the tensor
key in shards, attribution maps and xi files.

A site of kind ``output`` is a module's output, hooked with ``register_forward_hook``; one
of kind ``input`` is a module's first positional input (the hidden states), hooked with
``register_forward_pre_hook``. o_proj is hooked rather than self_attn because self_attn
returns a tuple; a decoder layer that returns a tuple (older transformers) is read at its
first element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from minormech.sites import INPUT, get_site
from minormech.sites import hook_name as hook_name  # re-exported: the tensor key of (site, layer)


def site_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The module of a Llama-family model that carries `site` at `layer`: its output or,
    for an input-kind site, its first positional input (minormech.sites)."""
    return model.model.layers[layer].get_submodule(get_site(site).module)


HookFn = Callable[[str, int, torch.Tensor], torch.Tensor | None]


def _output_hook(site: str, layer: int, fn: HookFn):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):  # a decoder layer of an older transformers: (hidden, ...)
            replaced = fn(site, layer, output[0])
            return None if replaced is None else (replaced, *output[1:])
        return fn(site, layer, output)

    return hook


def _input_hook(site: str, layer: int, fn: HookFn, replaced_to: dict | None = None):
    def hook(_module, args, kwargs):
        if args:
            replaced = fn(site, layer, args[0])
            result = None if replaced is None else ((replaced, *args[1:]), kwargs)
        elif "hidden_states" in kwargs:
            replaced = fn(site, layer, kwargs["hidden_states"])
            result = None if replaced is None else (args, {**kwargs, "hidden_states": replaced})
        else:
            raise RuntimeError(f"{hook_name(site, layer)}: the module was called without hidden states to hook")
        if replaced_to is not None:
            replaced_to["value"] = replaced
        return result

    return hook


def _rejoin_hooks(block: nn.Module, rejoins: str, replaced: dict) -> list:
    """Carry a replacement R' of a site that the decoder layer `block` also keeps as a
    residual (resid_mid) into the layer's output: R' + the output of submodule `rejoins`
    (what the layer computes as residual + MLP output had its residual been R'; a no-op
    replacement gives the same bits). The submodule's output is read after every hook
    registered before, and the layer's output is rewritten before any other of its hooks."""

    def keep_output(_module, _inputs, output):
        if replaced.get("value") is not None:
            replaced["rejoined"] = output

    def rewrite(_module, _inputs, output):
        value, rejoined = replaced.pop("value", None), replaced.pop("rejoined", None)
        if value is None or rejoined is None:
            return None
        if isinstance(output, tuple):
            return (value + rejoined, *output[1:])
        return value + rejoined

    return [
        block.get_submodule(rejoins).register_forward_hook(keep_output),
        block.register_forward_hook(rewrite, prepend=True),
    ]


@contextmanager
def site_hooks(model: nn.Module, sites: Sequence[str], layers: Sequence[int], fn: HookFn) -> Iterator[None]:
    """Call fn(site, layer, activation) at each hooked site: after its module for an
    output-kind site, before it for an input-kind site. A tensor fn returns replaces the
    activation (patching): the module's output, or the input its module then runs on (and,
    for resid_mid, the residual the layer adds the MLP output to: minormech.sites).
    Hooks are removed on exit, also after an error."""
    handles = []
    rejoining = []
    try:
        for layer in layers:
            for site in sites:
                module = site_module(model, site, layer)
                row = get_site(site)
                if row.kind == INPUT:
                    replaced = {} if row.rejoins else None
                    handles.append(
                        module.register_forward_pre_hook(_input_hook(site, layer, fn, replaced), with_kwargs=True)
                    )
                    if row.rejoins:
                        rejoining.append((model.model.layers[layer], row.rejoins, replaced))
                else:
                    handles.append(module.register_forward_hook(_output_hook(site, layer, fn)))
        for block, rejoins, replaced in rejoining:  # after the others: they see the submodule's final output
            handles.extend(_rejoin_hooks(block, rejoins, replaced))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_sites(
    model: nn.Module, sites: Sequence[str], layers: Sequence[int]
) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Record the activations of the given sites during forward passes inside the block.

    The dict is filled (site, layer) -> tensor [batch, seq, width] by each forward and
    overwritten by the next one; tensors are detached (no graph is kept).
    """
    recorded: dict[tuple[str, int], torch.Tensor] = {}

    def keep(site: str, layer: int, output: torch.Tensor) -> None:
        recorded[(site, layer)] = output.detach()

    with site_hooks(model, sites, layers, keep):
        yield recorded
