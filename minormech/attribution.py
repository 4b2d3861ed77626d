"""Feature attribution of p(answer | prompt) to site activations (paper §4.2.1, App. A).

FA(site, layer) = mean over prompts of reduce_positions(attribution of p w.r.t. the
site's activations A [positions, features]); positions are the prompt's own tokens
(the teacher-forced answer tokens and padding are excluded). Reductions: ``sum`` of the
signed values (the default), ``mean``, ``abs_sum``, ``last`` (last prompt position).

Methods and where they come from:
- ``saliency`` (default, eq. 14) and ``input_x_gradient``: captum's
  ``LayerGradientXActivation`` over the list of every (site, layer) module gives all
  signed gradients (or gradient x activation) from one forward and one backward pass
  per batch. Captum makes each hooked output a graph root only where it does not
  already require grad, so paths through later sites are kept.
- ``integrated_gradients`` and ``expected_gradients``: captum's ``IntegratedGradients``
  and ``GradientShap`` applied to g(A) = p(answer | prompt, site <- A), one (site, layer)
  at a time. Captum's layer variants of these take baselines in token space, which is
  not what the paper's activation-space definitions mean, hence the wrapper g.
  IG baseline: zeros.
  Expected gradients: baselines are probe-test activations of both tasks, aligned
  from the first position (the shared context sentence) and zero-padded or cut to the
  prompt's length; GradientShap draws one baseline and one path point per sample.
- ``smoothgrad`` is written here: the noise std is 0.1 x std(A) of each prompt over its own
  positions (App. A.2; not its padding or fed answer tokens), and captum's ``NoiseTunnel``
  takes one std per input tensor, not per example (and draws from the global RNG; this
  one draws from a seed of its own per (batch, site, layer), derived from the config seed).
- ``idgi`` (Yang et al. 2023) is not in captum; it is written here on the same
  Riemann path as IG: sum_k g_k^2 / ||g_k||^2 * (g(x_{k+1}) - g(x_k)).
Path and noise methods cost `steps` or `samples` forward+backward passes per prompt and
(site, layer); budget them with `attribution.prompts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, LayerGradientXActivation, Saliency

from minormech.hooks import record_sites, site_hooks, site_module
from minormech.prompts import Prompt
from minormech.runner import AnswerBatch, answer_prob, batched, teacher_forced_batch
from minormech.shards import Shard
from minormech.sites import INPUT, get_site
from minormech.tasks import stable_seed

METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "expected_gradients", "idgi")
REDUCTIONS = ("sum", "mean", "abs_sum", "last")


@dataclass(frozen=True)
class AttributionSettings:
    """Config key `attribution` (minus the prompt count)."""

    method: str = "saliency"
    reduce: str = "sum"
    batch_size: int = 4
    steps: int = 16  # integrated_gradients, idgi
    samples: int = 8  # smoothgrad, expected_gradients
    noise_scale: float = 0.1  # smoothgrad
    seed: int = 0  # smoothgrad's noise: the config seed, drawn per (batch, site, layer)


def reduce_positions(attributions: torch.Tensor, prompt_lengths: torch.Tensor, how: str) -> torch.Tensor:
    """[B, S, d] -> [B, d] over each prompt's own positions 0..length-1."""
    positions = torch.arange(attributions.shape[1], device=attributions.device)
    mask = (positions[None, :] < prompt_lengths[:, None]).to(attributions.dtype)[..., None]
    if how == "sum":
        return (attributions * mask).sum(1)
    if how == "mean":
        return (attributions * mask).sum(1) / prompt_lengths[:, None].to(attributions.dtype)
    if how == "abs_sum":
        return (attributions.abs() * mask).sum(1)
    if how == "last":
        return attributions[torch.arange(attributions.shape[0]), prompt_lengths - 1]
    raise ValueError(f"attribution.reduce: unknown reduction {how!r}; choose from {REDUCTIONS}")


def layer_gradients(
    model, batch: AnswerBatch, sites: Sequence[str], layers: Sequence[int], multiply_by_inputs: bool
) -> dict[tuple[str, int], torch.Tensor]:
    """Signed d p / d A (or A * d p / d A) for every (site, layer): [B, S, d] each. One
    backward for the sites that are module outputs and, if any are asked for, one for those
    that are module inputs (minormech.sites; captum's attribute_to_layer_input)."""
    keys = [(site, layer) for layer in layers for site in sites]

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        return answer_prob(model, replace(batch, input_ids=input_ids))

    found = {}
    for to_input in (False, True):
        group = [(site, layer) for site, layer in keys if (get_site(site).kind == INPUT) == to_input]
        if not group:
            continue
        modules = [site_module(model, site, layer) for site, layer in group]
        method = LayerGradientXActivation(forward, modules, multiply_by_inputs=multiply_by_inputs)
        attributions = method.attribute(batch.input_ids, attribute_to_layer_input=to_input)
        # an input attribution is a tuple over the module's positional inputs: the hidden states
        found.update({key: (a[0] if isinstance(a, tuple) else a).float() for key, a in zip(group, attributions)})
    return {key: found[key] for key in keys}


def site_function(model, site: str, layer: int) -> Callable[..., torch.Tensor]:
    """g(A, *batch tensors) = p(answer | prompt, site <- A), the function path methods attribute.

    Captum repeats the batch tensors alongside A for every path point or noise sample."""

    def g(activations, input_ids, attention_mask, answer_positions, answer_ids, answer_mask):
        batch = AnswerBatch(input_ids, attention_mask, torch.zeros(0), answer_positions, answer_ids, answer_mask)
        with site_hooks(model, [site], [layer], lambda _s, _l, _out: activations):
            return answer_prob(model, batch)

    return g


def idgi(
    g: Callable[..., torch.Tensor], inputs: torch.Tensor, baseline: torch.Tensor, steps: int, extra: tuple
) -> torch.Tensor:
    """Important Direction Gradient Integration on the straight path baseline -> inputs."""
    alphas = torch.linspace(0, 1, steps + 1, device=inputs.device, dtype=inputs.dtype)
    path = (baseline[None] + alphas.view(-1, *[1] * inputs.dim()) * (inputs - baseline)[None]).detach()
    path = path.reshape(-1, *inputs.shape[1:]).requires_grad_()
    repeated = tuple(t.repeat(steps + 1, *[1] * (t.dim() - 1)) for t in extra)
    values = g(path, *repeated)
    (grads,) = torch.autograd.grad(values.sum(), path)
    values = values.detach().view(steps + 1, inputs.shape[0])
    grads = grads.view(steps + 1, *inputs.shape)
    squared = grads[:-1] ** 2
    norms = squared.flatten(2).sum(-1).clamp_min(torch.finfo(squared.dtype).tiny)
    weights = (values[1:] - values[:-1]) / norms  # [steps, B]
    return (squared * weights.view(steps, inputs.shape[0], *[1] * (inputs.dim() - 1))).sum(0)


def prompt_std(inputs: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1] std of each prompt's activations [B, S, d] over its own positions
    0..length-1 and all features: padding and the fed answer tokens are not the prompt's."""
    positions = torch.arange(inputs.shape[1], device=inputs.device)
    own = (positions[None, :] < prompt_lengths.to(inputs.device)[:, None])[..., None].expand_as(inputs)
    return torch.stack([row[mask].std() for row, mask in zip(inputs, own)]).view(-1, 1, 1)


def smoothgrad(
    g: Callable[..., torch.Tensor], inputs: torch.Tensor, extra: tuple, settings: AttributionSettings, noise: NoiseDraw
) -> torch.Tensor:
    """Mean gradient over `settings.samples` noisy copies, noise std = noise_scale x std(A)
    of each prompt over its own positions (App. A.2), drawn from `noise`'s seed."""
    samples, noise_scale = settings.samples, settings.noise_scale
    generator = torch.Generator(device=inputs.device).manual_seed(noise.seed)
    std = noise_scale * prompt_std(inputs, noise.prompt_lengths).to(inputs.dtype)
    noise = torch.randn((samples, *inputs.shape), generator=generator, device=inputs.device, dtype=inputs.dtype)
    noisy = (inputs[None] + noise * std[None]).reshape(-1, *inputs.shape[1:]).requires_grad_()
    repeated = tuple(t.repeat(samples, *[1] * (t.dim() - 1)) for t in extra)
    (grads,) = torch.autograd.grad(g(noisy, *repeated).sum(), noisy)
    return grads.view(samples, *inputs.shape).mean(0)


@dataclass(frozen=True)
class NoiseDraw:
    """SmoothGrad's noise for one (batch, site, layer): its own seed, derived from the
    config seed, and the prompts' lengths (the positions its std is taken over)."""

    seed: int
    prompt_lengths: torch.Tensor

    @classmethod
    def of(cls, settings: AttributionSettings, batch_index: int, site: str, layer: int, lengths) -> NoiseDraw:
        parts = stable_seed(settings.seed, "smoothgrad", batch_index, site, layer)
        return cls(int(np.random.SeedSequence(parts).generate_state(1)[0]), lengths)


def path_attribution(
    g: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    extra: tuple,
    settings: AttributionSettings,
    baselines: torch.Tensor | None = None,
    noise: NoiseDraw | None = None,
) -> torch.Tensor:
    """Attribution of g at `inputs` [B, ...] with the configured activation-space method
    (`baselines`: expected gradients'; `noise`: smoothgrad's seed and prompt lengths)."""
    inputs = inputs.detach()
    method = settings.method
    if method == "saliency":
        return Saliency(g).attribute(inputs, additional_forward_args=extra, abs=False)
    if method == "input_x_gradient":
        return inputs * Saliency(g).attribute(inputs, additional_forward_args=extra, abs=False)
    if method == "smoothgrad":
        every_position = torch.full((inputs.shape[0],), inputs.shape[1])
        return smoothgrad(g, inputs, extra, settings, noise or NoiseDraw(settings.seed, every_position))
    if method == "integrated_gradients":
        return IntegratedGradients(g).attribute(
            inputs, baselines=torch.zeros_like(inputs), n_steps=settings.steps, additional_forward_args=extra
        )
    if method == "expected_gradients":
        if baselines is None:
            raise ValueError("expected_gradients needs baseline activations")
        return GradientShap(g).attribute(
            inputs, baselines=baselines, n_samples=settings.samples, stdevs=0.0, additional_forward_args=extra
        )
    if method == "idgi":
        return idgi(g, inputs, torch.zeros_like(inputs), settings.steps, extra)
    raise ValueError(f"attribution.method: unknown method {method!r}; choose from {METHODS}")


def align_baselines(pool: torch.Tensor, pool_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[K, T_max, d] baseline activations (zero-padded) -> [K, width, d], aligned at position 0."""
    out = torch.zeros(pool.shape[0], width, pool.shape[-1], dtype=pool.dtype)
    n = min(width, pool.shape[1])
    out[:, :n] = pool[:, :n]
    positions = torch.arange(width)
    return out * (positions[None, :] < pool_lengths[:, None]).to(pool.dtype)[..., None]


def baseline_pool(
    shards_by_task: dict[str, Sequence[Shard]], sites: Sequence[str], layers: Sequence[int], per_task: int, rng
) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """Expected-gradients baselines: `per_task` probe-test prompts of every task (seeded
    choice), as (site, layer) -> (activations [K, longest, d] zero-padded, lengths [K])."""
    picked: list[tuple[Shard, int]] = []
    for shards in shards_by_task.values():
        prompts = [(shard, i) for shard in shards for i in range(len(shard.lengths))]
        picked += [prompts[j] for j in rng.choice(len(prompts), size=min(per_task, len(prompts)), replace=False)]
    pool = {}
    for site in sites:
        for layer in layers:
            rows = [shard.read(site, layer)[shard.offsets[i] : shard.offsets[i + 1]].float() for shard, i in picked]
            pool[(site, layer)] = (
                torch.nn.utils.rnn.pad_sequence(rows, batch_first=True),
                torch.tensor([len(r) for r in rows]),
            )
    return pool


def attribute_prompts(
    model,
    prompts: Sequence[Prompt],
    sites: Sequence[str],
    layers: Sequence[int],
    settings: AttributionSettings,
    pad_id: int,
    baseline_pool: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
) -> dict[tuple[str, int], torch.Tensor]:
    """FA[(site, layer)] = [d] float32: the method's attributions reduced over positions and
    averaged over the prompts."""
    device = next(model.parameters()).device
    totals: dict[tuple[str, int], torch.Tensor] = {}

    def add(key, attributions, batch):
        reduced = reduce_positions(attributions.float(), batch.prompt_lengths, settings.reduce).sum(0)
        totals[key] = totals.get(key, 0) + reduced.cpu()

    batches = batched(prompts, settings.batch_size)
    for batch_index, chunk in enumerate(progress(batches, len(batches))):
        batch = teacher_forced_batch(chunk, pad_id, device)
        if settings.method in ("saliency", "input_x_gradient"):
            for key, attributions in layer_gradients(
                model, batch, sites, layers, settings.method == "input_x_gradient"
            ).items():
                add(key, attributions, batch)
            continue
        with torch.no_grad(), record_sites(model, sites, layers) as recorded:
            answer_prob(model, batch)
            activations = dict(recorded)
        extra = (batch.input_ids, batch.attention_mask, batch.answer_positions, batch.answer_ids, batch.answer_mask)
        for (site, layer), inputs in activations.items():
            baselines = None
            if baseline_pool is not None:
                pool, lengths = baseline_pool[(site, layer)]
                baselines = align_baselines(pool, lengths, inputs.shape[1]).to(device, inputs.dtype)
            noise = NoiseDraw.of(settings, batch_index, site, layer, batch.prompt_lengths)
            g = site_function(model, site, layer)
            add((site, layer), path_attribution(g, inputs, extra, settings, baselines, noise), batch)
    return {key: total / len(prompts) for key, total in totals.items()}
