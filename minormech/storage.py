"""The storage plan: how many bytes of activation shards a config would write, and where
probes therefore read their activations from (probe.source).

Shards hold every token of every probe prompt for every configured (site, layer). At the
paper's scale that is terabytes per task, so `probe.source: auto` trains a model's probes
from streamed activations (minormech.stream) when its shards would exceed
`storage.limit_gb`, and from shards otherwise. Every run prints the plan before any job.

A model whose widths or depth are not known before it is made (a hub model whose config.json
is not yet in the model cache) has sizes the plan prints as unknown, never as a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from minormech.config import prompt_count
from minormech.models import ModelSpec
from minormech.shards import shard_bytes

#: Tokens a prompt adds to its example budget: the context sentence, the blank line after
#: it and special tokens (about 25-30 with the Llama 3 and SmolLM2 tokenizers; rounded up).
CONTEXT_TOKENS = 40

PROBE_SETS = ("probe_train", "probe_test", "probe_control")


def probe_sets(config: dict) -> tuple[str, ...]:
    """The prompt sets probes read: training and test, and the control task's evaluation
    prompts when the control task is on."""
    return PROBE_SETS if config["controls"]["control_task"] else PROBE_SETS[:2]


@dataclass(frozen=True)
class ModelPlan:
    """Shard bytes one model's probes would need (None: widths or layer count unknown
    before the model is loaded), per site and prompt set, and the source its probes use."""

    model: str
    site_bytes: dict[str, dict[str, int | None]]  # site -> prompt set -> bytes, all tasks
    source: str  # shards | stream
    reason: str

    @property
    def shard_mode_bytes(self) -> int | None:
        """Bytes shard mode would write for this model's probes (None if unknown)."""
        return _total(self.site_bytes)

    def written_bytes(self, test_shards_needed: bool) -> int | None:
        """Bytes this run writes: every probe shard in shard mode; in stream mode only the
        probe-test shards, and only when something else reads them (expected gradients).
        None when they are not known before the model is made."""
        if self.source == "shards":
            return self.shard_mode_bytes
        if not test_shards_needed:
            return 0
        return _total({site: {"probe_test": sets["probe_test"]} for site, sets in self.site_bytes.items()})


def _total(site_bytes: dict[str, dict[str, int | None]]) -> int | None:
    sizes = [b for sets in site_bytes.values() for b in sets.values()]
    return None if any(b is None for b in sizes) else sum(sizes)


def planned_bytes(plans: list[ModelPlan], test_shards_needed: bool) -> tuple[int, list[str]]:
    """Shard bytes the run writes for the models whose sizes are known, and the models whose
    sizes are not (what the storage checks can and cannot bound)."""
    written = {plan.model: plan.written_bytes(test_shards_needed) for plan in plans}
    return sum(b for b in written.values() if b is not None), [m for m, b in written.items() if b is None]


def test_shards_needed(config: dict) -> bool:
    """Expected-gradients attribution takes its baselines from probe-test shards."""
    return config["attribution"]["method"] == "expected_gradients"


def plan_storage(config: dict, models: dict[str, ModelSpec]) -> list[ModelPlan]:
    """One ModelPlan per model, from prompt counts and an upper estimate of prompt length
    (max_prompt_tokens + CONTEXT_TOKENS tokens per prompt). With `auto`, models are taken
    in config order and each keeps shards while the shards of all the run's models still
    fit in storage.limit_gb; the rest stream."""
    tokens_per_prompt = config["prompts"]["max_prompt_tokens"] + CONTEXT_TOKENS
    limit_gb = config["storage"]["limit_gb"]
    chosen = config["probe"]["source"]
    planned = 0  # bytes written by the models planned so far
    plans = []
    for model_id, spec in models.items():
        n_layers = spec.num_layers if config["layers"] == "all" else len(config["layers"])
        site_bytes = {}
        for site in config["sites"]:
            known = n_layers is not None and site in spec.site_widths
            site_bytes[site] = {
                prompt_set: shard_bytes(
                    prompt_count(config, prompt_set) * len(config["tasks"]) * tokens_per_prompt,
                    spec.site_widths,
                    [site],
                    n_layers,
                    config["activations"]["store_dtype"],
                )
                if known
                else None
                for prompt_set in probe_sets(config)
            }
        total = _total(site_bytes)
        if chosen != "auto":
            source, reason = chosen, f"probe.source: {chosen}"
        elif total is None:
            source, reason = (
                "shards",
                "probe.source: auto, size unknown until its config.json is downloaded; "
                "set probe.source: stream to be sure",
            )
        elif planned + total > limit_gb * 1e9:
            source, reason = "stream", f"probe.source: auto, shards would exceed storage.limit_gb={limit_gb:g}"
        else:
            source, reason = "shards", f"probe.source: auto, shards fit in storage.limit_gb={limit_gb:g}"
        plan = ModelPlan(model_id, site_bytes, source, reason)
        planned += plan.written_bytes(test_shards_needed(config)) or 0  # an unknown size bounds nothing
        plans.append(plan)
    return plans


def size_text(n_bytes: float) -> str:
    """A size for a message: GB from 1 GB up, MB below (a small config's shards are a few
    hundred MB, which "0 GB" would hide)."""
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.0f} MB"


def free_disk_problem(still_to_write: int, free: int) -> str | None:
    """The one-line storage error of a run whose shards still to write exceed the free
    space under results/ (checked when a real run starts), or None when they fit."""
    if still_to_write <= free:
        return None
    return (
        f"storage error: about {size_text(still_to_write)} of shards still to write but only "
        f"{size_text(free)} free under results/; free space or set storage.check_free_disk: false"
    )


def _gb(n_bytes: int | None) -> str:
    return "unknown" if n_bytes is None else f"{n_bytes / 1e9:,.1f} GB"


def format_plan(plans: list[ModelPlan], config: dict) -> str:
    """The plan every run prints: shard-mode bytes per (model, site), each model's probe
    source and the bytes this run will write."""
    needed = test_shards_needed(config)
    lines = ["storage plan (activation shards of the probe prompts, all tasks, estimated):"]
    width = max([16, *(len(plan.model) for plan in plans)])
    for plan in plans:
        for site, sets in plan.site_bytes.items():
            lines.append(f"  {plan.model:<{width}} site {site:<4} {_gb(_total({site: sets})):>12} in shard mode")
        lines.append(f"  {plan.model:<{width}} all sites {_gb(plan.shard_mode_bytes):>12} in shard mode")
        written = plan.written_bytes(needed)
        lines.append(
            f"  {plan.model:<{width}} probes from {plan.source} ({plan.reason}): "
            f"writes {'an unknown amount' if written is None else _gb(written)} of shards"
        )
    known, unknown = planned_bytes(plans, needed)
    total = _gb(known)
    if unknown:
        total = f"{total} plus unknown for {', '.join(unknown)}" if len(unknown) < len(plans) else "unknown"
    lines.append(f"  total written {total} (storage.limit_gb={config['storage']['limit_gb']:g})")
    if unknown:
        lines.append(
            "  unknown: sizes of a model not made yet whose config.json is not at hand (a hub model's are "
            "known once its config.json is in the model cache: after its download, or hf download <hub> config.json)"
        )
    return "\n".join(lines)
