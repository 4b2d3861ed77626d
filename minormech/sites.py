"""The sites of a Llama-family decoder layer: one table that every stage reads.

A site is an activation of every decoder layer i, [batch, positions, width]. The table
says, per site name, which module of the decoder layer carries it (a dotted path inside
``model.model.layers[i]``; ``""`` is the decoder layer itself), whether it is that
module's output (a forward hook) or its first positional input (a forward pre-hook),
its width from the model's shape, how it splits into attention heads, and its hook
name, used as the tensor key in shards and in attribution and xi files. Hook names
follow TransformerLens (``blocks.{layer}.attn.hook_q``, ``blocks.{layer}.hook_resid_pre``,
...); TransformerLens keeps q/k/v as [batch, pos, head, d_head], here they are
flattened to [batch, pos, head * d_head] in the model's own order (head-major).

Paper sites (§2.1 eq. 3-5, §5.1):

- ``q``, ``k``, ``v``: outputs of self_attn.q_proj, k_proj, v_proj (eq. 3), before
  rotary embeddings. q splits into the query heads, k and v into the key/value heads
  (grouped-query attention: fewer key/value heads than query heads).
- ``o``: the output of self_attn.o_proj, the attention block's output f_att(q, k, v)
  *before* it is added to the residual stream (TransformerLens' ``hook_attn_out``). The
  paper's eq. 4 defines its o-site as the residual plus that output,
  A_{o,i} = A_{a,i-1} + f_att(...): that quantity is the site ``resid_mid``. o_proj's
  output mixes all heads (residual-stream coordinates), so ``o`` has no head slices.
- ``mlp``: the output of the MLP block (eq. 5), before it is added to the residual.

Residual-stream sites (width = hidden size, no head slices):

- ``resid_pre``: the hidden states entering the decoder layer (its input; layer 0: the
  token embeddings).
- ``resid_mid``: residual + attention output, the input of post_attention_layernorm
  (= resid_pre + o; the paper's eq. 4 quantity). The decoder layer also keeps this value
  as the residual it adds the MLP output to, which no hook can reach (a local variable);
  so a replacement R' of resid_mid also replaces the layer's output by R' + mlp output
  (minormech.hooks), and a replacement reaches the residual stream as at resid_pre.
- ``resid_post``: the decoder layer's output, resid_mid + mlp (= resid_pre of the next
  layer; the last layer's is taken before the model's final norm).

Architectures: the table fits the transformers causal LMs of SUPPORTED_ARCHITECTURES, of
the Llama family. Their decoder layers have these modules and compute these sums, apply
Llama's rotary embeddings to the q and k sites, and have an o_proj without bias (a head's
slice of o_proj is then its whole contribution to the residual, which the head views of
minormech.heads read); Qwen2's q/k/v biases are part of the q, k, v sites. Mistral's and
Qwen2's sliding-window attention equals full causal attention while a prompt is shorter
than the window (4,096 tokens or more in their published configs; the pipeline's prompts
have a few hundred). Classes with the same module names that compute otherwise are not
listed: Qwen3 and OLMo 2 normalise q and k after the projections, Gemma 2 normalises the
attention output before the residual add, Granite scales it. Any other class is refused
by name.

This module needs neither torch nor transformers: config checks and storage plans read
it before any model is loaded. minormech.hooks attaches hooks by it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OUTPUT = "output"  # the module's output: register_forward_hook
INPUT = "input"  # the module's first positional input: register_forward_pre_hook
QUERY_HEADS = "query"  # splits into the model's query heads of head_dim features
KV_HEADS = "key_value"  # splits into the key/value heads of head_dim features


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts site widths depend on."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of_config(cls, config: Mapping[str, Any] | Any) -> ModelShape:
        """From a Llama-style transformers config (a config object or its to_dict() / a
        config.json mapping): kv heads default to heads, head_dim to hidden / heads."""
        get = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key, None)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(hidden, heads, get("num_key_value_heads") or heads, get("head_dim") or hidden // heads)


@dataclass(frozen=True)
class Site:
    """One row of the site table."""

    name: str
    module: str  # dotted path inside a decoder layer; "" = the decoder layer itself
    kind: str  # OUTPUT or INPUT
    width: Callable[[ModelShape], int]
    heads: str | None  # QUERY_HEADS, KV_HEADS or None (no head slices)
    hook: str  # hook name template with {layer}
    description: str
    #: For an input-kind site whose value the decoder layer also keeps as the residual that
    #: it adds this submodule's output to: a replacement of the site must reach that sum too.
    rejoins: str | None = None

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    def head_count(self, heads: int, kv_heads: int) -> int | None:
        """How many heads of head_dim features the site splits into in a model with `heads`
        query heads and `kv_heads` key/value heads (None: no head slices)."""
        return {QUERY_HEADS: heads, KV_HEADS: kv_heads}.get(self.heads)


# fmt: off
_TABLE = (
    Site("q", "self_attn.q_proj", OUTPUT, lambda s: s.heads * s.head_dim, QUERY_HEADS, "blocks.{layer}.attn.hook_q",
         "output of q_proj (before rotary embeddings)"),
    Site("k", "self_attn.k_proj", OUTPUT, lambda s: s.kv_heads * s.head_dim, KV_HEADS, "blocks.{layer}.attn.hook_k",
         "output of k_proj (before rotary embeddings)"),
    Site("v", "self_attn.v_proj", OUTPUT, lambda s: s.kv_heads * s.head_dim, KV_HEADS, "blocks.{layer}.attn.hook_v",
         "output of v_proj"),
    Site("o", "self_attn.o_proj", OUTPUT, lambda s: s.hidden, None, "blocks.{layer}.hook_attn_out",
         "output of o_proj: the attention block's output before the residual add"),
    Site("mlp", "mlp", OUTPUT, lambda s: s.hidden, None, "blocks.{layer}.hook_mlp_out",
         "output of the MLP block before the residual add"),
    Site("resid_pre", "", INPUT, lambda s: s.hidden, None, "blocks.{layer}.hook_resid_pre",
         "residual stream entering the decoder layer"),
    Site("resid_mid", "post_attention_layernorm", INPUT, lambda s: s.hidden, None, "blocks.{layer}.hook_resid_mid",
         "residual + attention output (input of post_attention_layernorm; the paper's eq. 4 o)", rejoins="mlp"),
    Site("resid_post", "", OUTPUT, lambda s: s.hidden, None, "blocks.{layer}.hook_resid_post",
         "the decoder layer's output (residual + attention + MLP)"),
)
# fmt: on

#: name -> Site, in the order configs and figures list them.
SITE_TABLE: dict[str, Site] = {site.name: site for site in _TABLE}
#: Every site name.
SITES: tuple[str, ...] = tuple(SITE_TABLE)
#: The five sites the paper analyses (§5.1).
PAPER_SITES: tuple[str, ...] = ("q", "k", "v", "o", "mlp")

#: The transformers model classes whose decoder layers have the module layout this table
#: names (self_attn.{q,k,v,o}_proj, mlp, post_attention_layernorm) and compute what it says
#: (module docstring), by class name with their config.json `model_type`; any other is refused.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
#: The config.json keys the site widths and layer count are read from (every supported class has them).
CONFIG_KEYS: tuple[str, ...] = ("num_hidden_layers", "hidden_size", "num_attention_heads")
#: The sites with per-head slices (q: query heads; k, v: key/value heads).
HEAD_SITES: tuple[str, ...] = tuple(name for name, site in SITE_TABLE.items() if site.heads is not None)


def get_site(name: str) -> Site:
    """The table row of `name`; an unknown name raises KeyError listing the known ones."""
    try:
        return SITE_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; known sites: {list(SITES)}") from None


def hook_name(site: str, layer: int) -> str:
    """The tensor key of (site, layer), e.g. hook_name('k', 3) = 'blocks.3.attn.hook_k'."""
    return get_site(site).hook_name(layer)


def site_widths(shape: ModelShape) -> dict[str, int]:
    """Width of every site of the table for a model of this shape."""
    return {name: site.width(shape) for name, site in SITE_TABLE.items()}


def head_count(site: str, heads: int, kv_heads: int) -> int | None:
    """Heads of head_dim features that `site` splits into, or None (no head slices)."""
    return get_site(site).head_count(heads, kv_heads)


def architecture_of(config: Mapping[str, Any]) -> str:
    """The model class a config.json describes: its first `architectures` entry (what
    save_pretrained writes), else the supported class of its `model_type`, else that type."""
    named = config.get("architectures") or []
    if named:
        return str(named[0])
    model_type = config.get("model_type")
    by_type = {kind: name for name, kind in SUPPORTED_ARCHITECTURES.items()}
    return by_type.get(model_type, f"model_type {model_type!r}" if model_type else "unnamed")


def architecture_problem(config: Mapping[str, Any]) -> str | None:
    """Why the site table does not fit the model of this config.json (a phrase naming its
    architecture and the supported ones, to follow the model's name), or None when it does."""
    architecture = architecture_of(config)
    if architecture in SUPPORTED_ARCHITECTURES:
        return None
    return f"holds a {architecture} model; supported architectures: {list(SUPPORTED_ARCHITECTURES)}"
