"""A positive control: a model trained on the tasks' ICL prompts, from scratch or from
pretrained weights.

Probes on pretrained models land near the baseline (predicting the mean training weight,
MSE about 44), which leaves open whether the models hold no w or the pipeline cannot find
it. A model trained on nothing but these prompts must infer w in context to predict the
Output values, so its probes should beat the baseline in some layer; the pipeline runs on
it like on any other model (`models: [{id: ..., train: {...}}]`). `init: scratch` trains a
small Llama of the configured shape; `init: pretrained` fine-tunes every weight of the
model whose tokenizer it uses (for the embedded default, SmolLM2-135M, which already does
MD in context in part).

Training data are fresh prompts built exactly as the pipeline builds them (§5.4, Algorithm 1,
`minormech.prompts.build_prompt`, with the tokenizer of `train.tokenizer_of` and the
configured token budget), followed by their answer. Their weights come only from each
task's training weights: the probes are tested on the test weights, which the model must
never have seen. Prompt i of the run is seeded by stable_seed(seed, task, "control_model",
i) and the weights by torch.manual_seed(seed), so equal settings give identical weights on
the CPU.

Schedule: AdamW (weight decay 0.01, gradient norm clipped to 1) with a linear warm-up over
the first 10% of the steps, then a cosine decay to 10% of the peak rate: the usual recipe
for small transformers, stable at the high peak rates (1e-3 to 1e-2) they train with. The
loss scores only the digits of the Output values by default (`train.loss`),
and the vocabulary projection runs only at scored positions: with the 49k-token
vocabulary of SmolLM2 and Llama 3 it would otherwise cost more than the model itself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minormech.models import (
    ModelManifest,
    _facts_from_config,
    resolve_device,
    resolve_dtype,
)
from minormech.prompts import Tokenizer, build_prompt, output_spans
from minormech.runner import batched, no_progress, right_padded
from minormech.storage import CONTEXT_TOKENS
from minormech.tasks import WeightTable, get_task, stable_seed

#: Where training starts: a new Llama of the configured shape, or the tokenizer's model.
INITS = ("scratch", "pretrained")
#: Losses: `outputs` scores only the digits of every Output value (the only tokens that
#: depend on w; everything else is fixed text or uniformly drawn features), `all` every token.
LOSSES = ("outputs", "all")
#: Held-out prompts per task (test weights) scored before and after training.
EVAL_PROMPTS = 32
#: Share of the steps spent warming up, and the final rate as a share of the peak.
WARMUP_FRACTION = 0.1
FINAL_LR_FRACTION = 0.1
#: Tokens an answer may add beyond the prompt (answers up to 968 are 3 digits; margin).
ANSWER_TOKENS = 16
#: Held-out prompts per forward pass of the held-out check.
EVAL_BATCH_SIZE = 16


@dataclass(frozen=True)
class TrainSettings:
    """The `train:` mapping of a `models:` entry (config/config.schema.yaml describes each key)."""

    tokenizer_of: str
    steps: int
    batch_size: int
    lr: float
    seed: int
    loss: str
    hidden_size: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate_size: int | None = None
    init: str = "scratch"
    autocast: str = "auto"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss: {self.loss!r}; allowed values: {list(LOSSES)}")
        if self.init not in INITS:
            raise ValueError(f"train.init: {self.init!r}; allowed values: {list(INITS)}")

    def autocast_dtype(self, runtime: Runtime, device: torch.device) -> torch.dtype | None:
        """The dtype training computes in under autocast (None: float32, no autocast)."""
        if self.autocast in ("bfloat16", "float32"):
            return torch.bfloat16 if self.autocast == "bfloat16" else None
        compute = resolve_dtype(runtime.dtype, device)
        return compute if device.type == "cuda" and compute != torch.float32 else None


@dataclass(frozen=True)
class TrainingPrompts:
    """Where the training and held-out prompts come from: the tasks (prompt i of the run is
    of task tasks[i % len(tasks)]), each task's weight table, the tokenizer and the token
    budget of Algorithm 1 (`prompts.max_prompt_tokens`)."""

    tasks: Sequence[str]
    tables: dict[str, WeightTable]
    tokenizer: Tokenizer
    max_prompt_tokens: int


@dataclass(frozen=True)
class Runtime:
    """Where training runs: the device, the compute dtype ("auto": bfloat16 on CUDA,
    float32 on the CPU) and the job's cores (on CUDA all but one build prompts)."""

    device: str = "cpu"
    dtype: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class Example:
    """One tokenized prompt + answer; labels are -100 where the loss ignores a token."""

    task: str
    weight_id: int
    input_ids: list[int]
    labels: list[int]


def llama_config(settings: TrainSettings, tokenizer, max_prompt_tokens: int):
    """The model's architecture: vocabulary and special tokens of the tokenizer, input and
    output embeddings tied (the vocabulary is large, the model small), and positions for
    the longest prompt the pipeline builds (budget + context sentence + answer)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        max_position_embeddings=max_prompt_tokens + CONTEXT_TOKENS + ANSWER_TOKENS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def output_value_mask(spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token (character span `offsets`): does it lie inside the digits of an
    Output value (character `spans`, minormech.prompts.output_spans)?"""
    return [end > start and any(s <= start and end <= e for s, e in spans) for start, end in offsets]


def make_example(prompts: TrainingPrompts, task_name: str, seed: int, index: int, purpose: str, score: str) -> Example:
    """Prompt `index` of one purpose: "control_model" (training) draws a training weight,
    "control_model_eval" (the held-out check) a test weight. `score` picks the labelled
    tokens: one of LOSSES, or "answer" (the final answer only, for the held-out check)."""
    task, table = get_task(task_name), prompts.tables[task_name]
    rng = np.random.default_rng(stable_seed(seed, task.name, purpose, index))
    weight_id = int(rng.choice(table.train_ids if purpose == "control_model" else table.test_ids))
    text, answer, prompt_ids, answer_ids, example_x, example_y = build_prompt(
        task, table.weights[weight_id], rng, prompts.tokenizer, prompts.max_prompt_tokens
    )
    ids = prompt_ids + answer_ids
    if score == "all":
        labels = list(ids)
    elif score == "outputs":
        offsets = prompts.tokenizer(text + answer, return_offsets_mapping=True)["offset_mapping"]
        spans = output_spans(example_x, example_y, len(task.context) + 2)
        labels = [t if scored else -100 for t, scored in zip(ids, output_value_mask(spans, offsets))]
    elif score == "answer":
        labels = [-100] * len(prompt_ids) + list(answer_ids)
    else:
        raise ValueError(f"score: {score!r}; allowed values: {[*LOSSES, 'answer']}")
    return Example(task=task.name, weight_id=weight_id, input_ids=ids, labels=labels)


def training_examples(prompts: TrainingPrompts, settings: TrainSettings, start: int, count: int) -> list[Example]:
    """Training prompts start..start+count-1; prompt i is of task tasks[i % len(tasks)], so
    every batch mixes the tasks evenly."""
    tasks = prompts.tasks
    return [
        make_example(prompts, tasks[i % len(tasks)], settings.seed, i, "control_model", settings.loss)
        for i in range(start, start + count)
    ]


class TrainingBatches(torch.utils.data.Dataset):
    """The prompts of training step i (item i), for a DataLoader: on a GPU its worker
    processes build them while the model trains. At 600 tokens a prompt takes ~8 ms to
    build, so a batch of 64 costs ~0.5 s of one core, far more than a small model's step."""

    def __init__(self, prompts: TrainingPrompts, settings: TrainSettings):
        self.prompts = prompts
        self.settings = settings

    def __len__(self) -> int:
        return self.settings.steps

    def __getitem__(self, step: int) -> list[Example]:
        return training_examples(self.prompts, self.settings, step * self.settings.batch_size, self.settings.batch_size)


def _unchanged(batch: list[Example]) -> list[Example]:
    return batch


def training_batches(prompts: TrainingPrompts, settings: TrainSettings, workers: int) -> torch.utils.data.DataLoader:
    """Step by step, the list of that step's training examples; with workers > 0 built
    ahead in that many processes, in the same order."""
    return torch.utils.data.DataLoader(
        TrainingBatches(prompts, settings),
        batch_size=None,
        collate_fn=_unchanged,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )


def collate(
    examples: Sequence[Example], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) tensors; padding is never scored."""
    ids, mask = right_padded([e.input_ids for e in examples], pad_id, device)
    labels, _ = right_padded([e.labels for e in examples], -100, device)
    return ids, mask, labels


def scored_logits(
    model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of the scored positions only: position p predicts token p + 1, and
    the vocabulary projection (the bulk of the compute with a 49k vocabulary and a narrow
    model) runs only where a label is set."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != -100
    return model.lm_head(hidden[scored]).float(), targets[scored]


def lr_factor(step: int, steps: int) -> float:
    """Multiplier of the peak rate at `step`: linear warm-up, then cosine to FINAL_LR_FRACTION."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model, examples: Sequence[Example], pad_id: int, device: torch.device, autocast: torch.dtype | None
) -> dict[str, float]:
    """Answer-token loss and greedy accuracy on prompts scored on their answer only. An
    answer counts as right when every answer token is the argmax given the true tokens
    before it, which is exactly when greedy decoding reproduces it."""
    model.eval()
    loss, wrong_answers, right_tokens, tokens = 0.0, 0, 0, 0
    for batch in batched(examples, EVAL_BATCH_SIZE):
        ids, mask, labels = collate(batch, pad_id, device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits, targets = scored_logits(model, ids, mask, labels)
        hits = logits.argmax(-1) == targets
        rows = (labels[:, 1:] != -100).nonzero()[:, 0]
        loss += F.cross_entropy(logits, targets, reduction="sum").item()
        wrong_answers += len(rows[~hits].unique())
        right_tokens += int(hits.sum())
        tokens += len(targets)
    model.train()
    return {
        "answer_loss": loss / tokens,
        "accuracy": 1 - wrong_answers / len(examples),
        "digit_accuracy": right_tokens / tokens,
    }


def held_out_examples(prompts: TrainingPrompts, seed: int, count: int = EVAL_PROMPTS) -> dict[str, list[Example]]:
    """`count` prompts per task from the test weights, scored on the final answer (the
    first EVAL_PROMPTS are the training record's held-out check)."""
    return {
        name: [make_example(prompts, name, seed, i, "control_model_eval", "answer") for i in range(count)]
        for name in prompts.tasks
    }


@dataclass
class TrainingStep:
    """One optimizer step on a batch of examples: AdamW (weight decay 0.01) on every
    parameter, the warm-up and cosine schedule of lr_factor, gradients clipped to norm 1,
    the passes under autocast to `autocast` (None: float32). Calling it returns the loss."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    pad_id: int
    device: torch.device
    autocast: torch.dtype | None

    @classmethod
    def of(cls, model, settings: TrainSettings, pad_id: int, device: torch.device, autocast) -> TrainingStep:
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings.steps))
        return cls(model, optimizer, schedule, pad_id, device, autocast)

    def __call__(self, batch: Sequence[Example]) -> float:
        ids, mask, labels = collate(batch, self.pad_id, self.device)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits, targets = scored_logits(self.model, ids, mask, labels)
        loss = F.cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        return loss.item()


def initial_model(settings: TrainSettings, prompts: TrainingPrompts, pretrained: torch.nn.Module | None):
    """The model training starts from: the pretrained one (init: pretrained, every
    parameter trainable, float32) or a new Llama of the configured shape drawn from seed."""
    from transformers import LlamaForCausalLM

    if settings.init == "pretrained":
        if pretrained is None:
            raise ValueError(f"train.init: pretrained needs the weights of {settings.tokenizer_of!r}")
        return pretrained.float().requires_grad_(True)
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(llama_config(settings, prompts.tokenizer, prompts.max_prompt_tokens))


def train(
    settings: TrainSettings,
    prompts: TrainingPrompts,
    runtime: Runtime = Runtime(),
    log: logging.Logger | None = None,
    progress: Callable[[Iterable, int], Iterable] = no_progress,
    pretrained: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train the control model (from `pretrained` with init: pretrained); returns it
    (float32, on the CPU, eval mode) and the training record written to training.json.
    Weights and optimizer state are float32; the passes run under autocast to
    settings.autocast_dtype (by default bfloat16 on CUDA, none on the CPU). On the CPU each
    step's prompts are built in the job's process (its `threads` cores run the model); on
    CUDA threads - 1 worker processes build them. The order of prompts is the same either way."""
    log = log or logging.getLogger(__name__)
    tasks, tokenizer = prompts.tasks, prompts.tokenizer
    torch_device = resolve_device(runtime.device)
    autocast = settings.autocast_dtype(runtime, torch_device)
    model = initial_model(settings, prompts, pretrained).to(torch_device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held_out = held_out_examples(prompts, settings.seed)
    before = {name: evaluate(model, examples, pad_id, torch_device, autocast) for name, examples in held_out.items()}

    step_of = TrainingStep.of(model, settings, pad_id, torch_device, autocast)
    log_every = max(1, settings.steps // 20)
    curve: list[float] = []
    workers = runtime.threads - 1 if torch_device.type == "cuda" else 0
    batches = training_batches(prompts, settings, workers)
    started, started_cpu = time.perf_counter(), time.process_time()
    model.train()
    for step, batch in progress(enumerate(batches), settings.steps):
        curve.append(step_of(batch))
        if (step + 1) % log_every == 0 or step + 1 == settings.steps:
            log.info(
                "step %d/%d: loss %.4f (mean of the last %d steps), lr %.2e",
                step + 1,
                settings.steps,
                float(np.mean(curve[-log_every:])),
                log_every,
                step_of.schedule.get_last_lr()[0],
            )
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    after = {name: evaluate(model, examples, pad_id, torch_device, autocast) for name, examples in held_out.items()}
    for name in tasks:
        log.info(
            "%s held-out answers: loss %.3f -> %.3f, accuracy %.3f -> %.3f",
            name,
            before[name]["answer_loss"],
            after[name]["answer_loss"],
            before[name]["accuracy"],
            after[name]["accuracy"],
        )
    record = {
        "settings": asdict(settings),
        "tasks": list(tasks),
        "max_prompt_tokens": prompts.max_prompt_tokens,
        "steps": settings.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": float(np.mean(curve[-log_every:])),
        "final_loss_steps": log_every,
        "loss_curve": curve,
        "held_out_prompts_per_task": EVAL_PROMPTS,
        "held_out_before": before,
        "held_out_after": after,
        "wall_time_s": wall,
        "seconds_per_step": wall / settings.steps,
        "cpu_time_s": cpu,
        "device": str(torch_device) if torch_device.type == "cpu" else torch.cuda.get_device_name(torch_device),
        "autocast": str(autocast) if autocast else None,
    }
    return model.float().cpu().eval(), record


def save(model, tokenizer, record: dict, model_id: str, out_dir: str | Path, record_path: str | Path) -> ModelManifest:
    """Write the model (safetensors) and tokenizer to out_dir and the training record to
    record_path; returns the manifest through which later jobs load the model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    Path(record_path).write_text(json.dumps(record, indent=1) + "\n")
    num_layers, widths = _facts_from_config(model.config.to_dict())
    return ModelManifest(
        id=model_id, source="trained", load_from=str(out_dir.resolve()), num_layers=num_layers, site_widths=widths
    )
