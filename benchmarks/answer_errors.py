"""Greedy answers of saved models on held-out prompts: exact answers and mean absolute
error against the training-mean predictor (minormech.answer_errors), per task.

    python benchmarks/answer_errors.py OUT.json MODEL_DIR [MODEL_DIR ...] [--prompts 200]
        [--training-prompts 2000] [--max-prompt-tokens 128] [--seed 0]

Held-out prompts are the positive control's held-out check made larger: prompts of the
test weights of the default split (40 test weights), built by Algorithm 1 with the
model's tokenizer, scored on their final answer (minormech.control_model.make_example,
purpose "control_model_eval"; the first 32 are the training record's own). The mean
predictor answers the mean final answer of `--training-prompts` training prompts per task.
Every model reads the same prompts, so their numbers compare directly; each model's
exact count under teacher forcing (control_model.evaluate) is recorded beside the decoded
one as a check that the two agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from minormech.activations import pad_token_id
from minormech.answer_errors import answer_errors, training_mean_answer
from minormech.control_model import TrainingPrompts, evaluate, held_out_examples, make_example
from minormech.models import set_threads
from minormech.tasks import get_task, make_weight_table

TASKS = ("LR", "MD")
TEST_WEIGHTS = 40  # the default split (config/config.yaml test_weights)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help="folders of saved models (results/{id}/model)")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts per task")
    parser.add_argument("--training-prompts", type=int, default=2000)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="the train.seed of the control model")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.models[0])
    tables = {task: make_weight_table(get_task(task), TEST_WEIGHTS, 0) for task in TASKS}
    prompts = TrainingPrompts(TASKS, tables, tokenizer, args.max_prompt_tokens)
    held_out = held_out_examples(prompts, args.seed, args.prompts)

    def training(task: str) -> list:
        return [
            make_example(prompts, task, args.seed, i, "control_model", "answer") for i in range(args.training_prompts)
        ]

    means = {task: training_mean_answer(tokenizer, training(task)) for task in TASKS}
    record = {"arguments": {k: str(v) for k, v in vars(args).items()}, "training_mean_answer": means, "models": {}}
    pad_id = pad_token_id(tokenizer)
    for folder in args.models:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        scores = {}
        for task in TASKS:
            errors = answer_errors(model, tokenizer, held_out[task], means[task], pad_id)
            forced = evaluate(model, held_out[task], pad_id, torch.device("cpu"), None)
            scores[task] = {**vars(errors), "teacher_forced_accuracy": forced["accuracy"]}
            print(json.dumps({"model": str(folder), "task": task, **scores[task]}), flush=True)
        record["models"][str(folder)] = scores
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
