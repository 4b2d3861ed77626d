"""Learning curve of one positive-control route: fine-tuning the embedded pretrained model
(SmolLM2-135M-Instruct) on the tasks' prompts, measured on the CPU.

    python benchmarks/finetune_curve.py OUT.json [--steps 800] [--batch-size 8] [--lr 2e-4]
        [--max-prompt-tokens 128] [--minutes 40] [--autocast bfloat16|none]

Training prompts are made exactly as the positive control's (minormech.control_model:
Algorithm 1 with SmolLM2's tokenizer, weights from the training weights of the default
split, loss on the digits of every Output value), and each step is the control model's
own (control_model.TrainingStep: full fine-tuning with AdamW, its warm-up and cosine
schedule and gradient clipping). Every tenth of the steps
(and at the end) it scores the control model's held-out check: 32 prompts per task of the
test weights, on their final answer (answer loss in nats per token, exact-answer accuracy,
digit accuracy). OUT.json gets the curve against steps and training minutes (evaluation
time excluded) and the training loss of every step. It stops after `--minutes` of
training even if steps remain. Timings are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minormech.activations import pad_token_id
from minormech.control_model import (
    Runtime,
    TrainingPrompts,
    TrainingStep,
    TrainSettings,
    evaluate,
    held_out_examples,
    training_examples,
)
from minormech.models import prepare_model, resolve_model_spec, set_threads
from minormech.tasks import get_task, make_weight_table

TASKS = ("LR", "MD")
TEST_WEIGHTS = 40  # the default split (config/config.yaml test_weights)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=40.0, help="training time after which it stops")
    parser.add_argument("--autocast", choices=("bfloat16", "none"), default="bfloat16")
    parser.add_argument("--model-dir", type=Path, default=Path("results/smollm2-135m/model"))
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (args.model_dir / "config.json").exists():
        prepare_model(resolve_model_spec({"id": "smollm2-135m"}), args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tables = {task: make_weight_table(get_task(task), TEST_WEIGHTS, 0) for task in TASKS}
    prompts = TrainingPrompts(TASKS, tables, tokenizer, args.max_prompt_tokens)
    settings = TrainSettings(
        tokenizer_of="smollm2-135m",
        init="pretrained",
        autocast="bfloat16" if args.autocast == "bfloat16" else "float32",
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=0,
        loss="outputs",
    )
    pad_id, device = pad_token_id(tokenizer), torch.device("cpu")
    autocast = settings.autocast_dtype(Runtime(), device)
    held_out = held_out_examples(prompts, settings.seed)
    step_of = TrainingStep.of(model, settings, pad_id, device, autocast)
    record = {"arguments": {k: str(v) for k, v in vars(args).items()}, "curve": [], "train_loss": []}

    def check(step: int, minutes: float) -> None:
        scores = {task: evaluate(model, examples, pad_id, device, autocast) for task, examples in held_out.items()}
        point = {"step": step, "minutes": minutes, **{f"{t}_{k}": v for t, s in scores.items() for k, v in s.items()}}
        record["curve"].append(point)
        print(json.dumps(point), flush=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")

    check(0, 0.0)
    every, trained = max(1, args.steps // 10), 0.0
    model.train()
    for step in range(args.steps):
        started = time.perf_counter()
        record["train_loss"].append(
            step_of(training_examples(prompts, settings, step * args.batch_size, args.batch_size))
        )
        trained += time.perf_counter() - started
        out_of_time = trained > 60 * args.minutes
        if (step + 1) % every == 0 or step + 1 == args.steps or out_of_time:
            check(step + 1, trained / 60)
        if out_of_time:
            break


if __name__ == "__main__":
    main()
