"""ICL prompts (paper §5.4, Algorithm 1).

A prompt is the task's context sentence, a blank line, and examples
``\\nFeature 0: {x0}\\nFeature 1: {x1}\\nOutput: {y}`` joined by blank lines. Examples
are drawn independently (with replacement) from D_w, as Algorithm 1 draws
``f_sample(1, D_w)`` afresh each iteration, and appended while the tokenized example
text stays within ``max_prompt_tokens``. The last example's answer is cut off: the
prompt ends right before the answer tokens, which are the target.

Every prompt has its own random generator seeded from (seed, task, prompt set, index),
so the draws for prompt i do not depend on the tokenizer or on how many examples
earlier prompts used: two models see the same examples, truncated at their own budget.

A prompt record keeps its examples' values (x and y of each, the query last), so code
that needs them (least-squares ceiling, head views, the control model's loss) reads them
rather than parsing the text back. A prompt file is JSON lines: a header record with the
format version, the recipe the file was made with (seed, token budget, count) and the
SHA-256 of the records, then one prompt per line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from minormech.atomic_files import written_in_place_of
from minormech.tasks import Task, WeightTable, examples_for, stable_seed

#: Prompt sets made per (model, task); `prompt_weight_ids` says which weights each draws.
PROMPT_SETS = ("probe_train", "probe_test", "probe_control", "attribution", "patching", "patching_ref")
#: The first line of a prompt file; version 2 added each prompt's examples.
PROMPT_FORMAT = "minormech prompts"
#: 4: the header holds the recipe; 3 added the SHA-256 of the records; 1 had no header and no examples.
PROMPT_FORMAT_VERSION = 4


class Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict: ...


@dataclass(frozen=True)
class PromptRecipe:
    """What a prompt file is made with besides the weight table and the tokenizer (inputs
    whose changes Snakemake sees): the master seed, the token budget per prompt, the number
    of prompts and, for the control-task evaluation prompts (which draw from the weights of
    the probe-training prompts), the number of probe-training prompts. The header records
    it, so that a reader given the config's recipe refuses a file made with another config,
    such as one copied from another run."""

    seed: int
    max_prompt_tokens: int
    count: int
    train_count: int | None = None

    def differences(self, other: PromptRecipe) -> str:
        """'seed 1, count 8' for each field where self differs from other ('' if none)."""
        return ", ".join(f"{name} {value}" for name, value in asdict(self).items() if value != getattr(other, name))


@dataclass(frozen=True)
class Prompt:
    """One ICL prompt with its target; `input_ids` already include special tokens.

    example_x [n_examples][d] and example_y [n_examples] are the drawn examples in prompt
    order, the query last (its y is the answer, cut off the text). Prompts built by hand
    (tests) may leave them empty."""

    id: int
    weight_id: int
    weight: list[int]
    n_examples: int
    text: str
    answer: str
    input_ids: list[int]
    answer_ids: list[int]
    example_x: list[list[int]] = field(default_factory=list)
    example_y: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    def output_spans(self) -> list[tuple[int, int]]:
        """Character [start, stop) of every example's output value in text + answer (the
        query's is the answer): the examples end the text, so they start where their own
        text, as format_example writes it, begins."""
        body = len("\n\n".join(format_example(x, y) for x, y in zip(self.example_x, self.example_y)))
        return output_spans(self.example_x, self.example_y, len(self.text) + len(self.answer) - body)


def format_example(x: Sequence[int], y: int) -> str:
    """One example as Algorithm 1 writes it: a line per feature, then the output."""
    features = "".join(f"\nFeature {k}: {int(v)}" for k, v in enumerate(x))
    return f"{features}\nOutput: {int(y)}"


def output_spans(example_x: Sequence[Sequence[int]], example_y: Sequence[int], start: int) -> list[tuple[int, int]]:
    """Character [start, stop) of each example's output value in a text whose examples,
    written by format_example and joined by blank lines as Algorithm 1 joins them, begin at
    character `start`: where the output digits are, known from the format rather than
    searched for in the text."""
    spans, end = [], start
    for x, y in zip(example_x, example_y):
        end += len(format_example(x, y))
        spans.append((end - len(str(int(y))), end))
        end += 2
    return spans


def _count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _longest_prefix_within(n_tokens_of, max_tokens: int, draw_more) -> int:
    """Largest k with n_tokens_of(k) <= max_tokens (token counts grow with k).

    Gallops up (drawing examples only as needed) then bisects, so a 600-token prompt
    costs about a dozen tokenizations instead of one per example.
    """
    if n_tokens_of(1) > max_tokens:
        return 0
    low, high = 1, 2
    while True:
        draw_more(high)
        if n_tokens_of(high) > max_tokens:
            break
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if n_tokens_of(mid) <= max_tokens:
            low = mid
        else:
            high = mid
    return low


def build_prompt(
    task: Task,
    weight: np.ndarray,
    rng: np.random.Generator,
    tokenizer: Tokenizer,
    max_prompt_tokens: int,
) -> tuple[str, str, list[int], list[int], list[list[int]], list[int]]:
    """Algorithm 1 for one weight vector.

    Returns (prompt text without answer, answer text, prompt ids, answer ids, the examples'
    x and y in prompt order, the query last). Raises ValueError when not even one example
    fits.
    """
    xs, ys = examples_for(task, weight)
    examples: list[str] = []
    drawn: list[int] = []

    def draw_more(k: int) -> None:
        while len(examples) < k:
            i = int(rng.integers(len(xs)))
            drawn.append(i)
            examples.append(format_example(xs[i], ys[i]))

    def n_tokens_of(k: int) -> int:
        draw_more(k)
        return _count_tokens(tokenizer, "\n\n".join(examples[:k]))

    k = _longest_prefix_within(n_tokens_of, max_prompt_tokens, draw_more)
    if k < 1:
        raise ValueError(
            f"prompts.max_prompt_tokens={max_prompt_tokens} cannot hold one example "
            f"({n_tokens_of(1)} tokens for {examples[0]!r})"
        )
    body = "\n\n".join(examples[:k])
    answer = body.rsplit("Output: ", 1)[1]
    full_text = task.context + "\n\n" + body
    text = full_text[: len(full_text) - len(answer)]
    prompt_ids = list(tokenizer(text)["input_ids"])
    full_ids = list(tokenizer(full_text)["input_ids"])
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ValueError(
            "the tokenizer merges the answer with the end of the prompt, so answer tokens "
            f"cannot be separated: prompt ends {text[-20:]!r}, answer {answer!r}"
        )
    example_x = [[int(v) for v in xs[i]] for i in drawn[:k]]
    example_y = [int(ys[i]) for i in drawn[:k]]
    return text, answer, prompt_ids, full_ids[len(prompt_ids) :], example_x, example_y


def prompt_weight_ids(
    prompt_set: str, table: WeightTable, seed: int, count: int, train_count: int | None = None
) -> np.ndarray:
    """Which weight each of the set's `count` prompts uses.

    probe_train: draws with replacement from the training weights (one per training
    step in the paper). probe_test: count / (number of test weights) prompts for each
    test weight. probe_control: draws with replacement from the distinct weights of the
    `train_count` probe_train prompts, so that a probe has seen every one of them (new
    prompts of seen weights: the control task's evaluation set). attribution: draws with
    replacement from all weights (paper eq. 33).
    """
    rng = np.random.default_rng(stable_seed(seed, table.task, prompt_set, "weights"))
    if prompt_set == "probe_train":
        return rng.choice(table.train_ids, size=count, replace=True)
    if prompt_set == "probe_control":
        if train_count is None:
            raise ValueError("probe_control prompts need the number of probe_train prompts (train_count)")
        seen = np.unique(prompt_weight_ids("probe_train", table, seed, train_count))
        return rng.choice(seen, size=count, replace=True)
    if prompt_set in ("attribution", "patching", "patching_ref"):
        return rng.choice(len(table.weights), size=count, replace=True)
    if prompt_set == "probe_test":
        if count % len(table.test_ids):
            raise ValueError(f"{count} probe-test prompts do not split evenly over {len(table.test_ids)} test weights")
        return np.repeat(table.test_ids, count // len(table.test_ids))
    raise ValueError(f"unknown prompt set {prompt_set!r}; known: {PROMPT_SETS}")


def generate_prompts(
    task: Task,
    table: WeightTable,
    weight_ids: Iterable[int],
    prompt_set: str,
    tokenizer: Tokenizer,
    max_prompt_tokens: int,
    seed: int,
    progress=lambda it, total: it,
) -> list[Prompt]:
    """One prompt per entry of weight_ids, each with its own seeded generator."""
    weight_ids = list(weight_ids)
    prompts = []
    for i, wid in progress(enumerate(weight_ids), len(weight_ids)):
        rng = np.random.default_rng(stable_seed(seed, task.name, prompt_set, i))
        w = table.weights[wid]
        text, answer, ids, answer_ids, example_x, example_y = build_prompt(task, w, rng, tokenizer, max_prompt_tokens)
        prompts.append(
            Prompt(
                id=i,
                weight_id=int(wid),
                weight=[int(v) for v in w],
                n_examples=len(example_y),
                text=text,
                answer=answer,
                input_ids=ids,
                answer_ids=answer_ids,
                example_x=example_x,
                example_y=example_y,
            )
        )
    return prompts


def write_prompts(path: str | Path, prompts: Sequence[Prompt], recipe: PromptRecipe) -> None:
    """JSON lines: the format header (with the recipe and the SHA-256 of the record lines,
    so that a reader refuses a file of another config or one edited by hand, whatever its
    timestamp), then one prompt each; written to a temporary name and renamed, so an
    interrupted job never leaves a half-written prompt file behind."""
    path = Path(path)
    records = [json.dumps(asdict(prompt)) + "\n" for prompt in prompts]
    header = {
        "format": PROMPT_FORMAT,
        "version": PROMPT_FORMAT_VERSION,
        "recipe": asdict(recipe),
        "records_sha256": _records_sha256(records),
    }
    with written_in_place_of(path) as tmp, open(tmp, "w") as handle:
        handle.write(json.dumps(header) + "\n")
        handle.writelines(records)


def _records_sha256(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
    return digest.hexdigest()


def read_prompts(path: str | Path, expected: PromptRecipe | None = None) -> list[Prompt]:
    """Read a prompt file; a missing, damaged, incomplete, foreign or edited file raises
    ValueError naming it.

    The first line must be the header of the current format version: a file of an older
    format is refused. Prompt ids must run 0..n-1 in order; with `expected` (the config's
    recipe) n must equal its count, so that a file cut at a line boundary is refused rather
    than read as a smaller prompt set, and the header's recipe must equal it. Last, the
    records must match the header's checksum.
    """
    path = _existing(path)
    prompts, lines = [], []
    with open(path) as handle:
        header = _check_header(path, handle.readline())
        for line_no, line in enumerate(handle, 2):
            lines.append(line)
            try:
                prompt = Prompt(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(
                    f"{path}:{line_no}: not a prompt record ({error}); the file is damaged: delete it and rerun"
                ) from None
            if prompt.id != line_no - 2:
                raise ValueError(
                    f"{path}:{line_no}: prompt id {prompt.id}, expected {line_no - 2}; "
                    "the file is damaged: delete it and rerun"
                )
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: prompt file is empty; delete it and rerun")
    if expected is not None:
        _check_recipe(path, header, len(prompts), expected)
    _check_records(path, header, lines)
    return prompts


def _check_records(path: Path, header: dict, lines: Iterable[str]) -> str:
    """The header's records checksum, refused unless the record lines match it."""
    if header.get("records_sha256") != _records_sha256(lines):
        raise ValueError(
            f"{path}: its prompts do not match the checksum in its header (the file was edited after it was "
            "written); delete it and rerun, which makes it again from the config and seed"
        )
    return header["records_sha256"]


def read_drawn_prompts(path: str | Path, recipe: PromptRecipe, table: WeightTable, prompt_set: str) -> list[Prompt]:
    """read_prompts for a job that trains on the prompts' weights: also refuses a file whose
    weights are not the ones the config and seed draw from the weight table (check_drawn)."""
    prompts = read_prompts(path, recipe)
    check_drawn(Path(path), prompts, table, prompt_set, recipe)
    return prompts


def check_drawn(
    path: Path, prompts: Sequence[Prompt], table: WeightTable, prompt_set: str, recipe: PromptRecipe
) -> None:
    """ValueError naming the line of the first prompt whose weight id is not the one the
    recipe's seed draws for the set (prompt_weight_ids), or whose weight is not the table's
    for that id. Needs no tokenizer, so a probe job can afford it: it refuses a file edited
    under a recomputed checksum, or one made from another dataset, before a probe trains on
    its targets."""
    drawn = prompt_weight_ids(prompt_set, table, recipe.seed, recipe.count, recipe.train_count)
    for line_no, (prompt, weight_id) in enumerate(zip(prompts, drawn), 2):
        expected = table.weights[weight_id].tolist()
        if prompt.weight_id != weight_id or list(prompt.weight) != expected:
            raise ValueError(
                f"{path}:{line_no}: prompt {prompt.id} has weight id {prompt.weight_id}, w = {prompt.weight}, but "
                f"the config and seed draw weight id {weight_id}, w = {expected}, from the dataset; the file was "
                "edited or comes from another dataset: delete it and rerun"
            )


def _check_recipe(path: Path, header: dict, n_prompts: int, expected: PromptRecipe) -> None:
    if n_prompts != expected.count:
        raise ValueError(
            f"{path}: {n_prompts} prompts but the config asks for {expected.count}; "
            "the file is incomplete or stale: delete it and rerun"
        )
    try:
        made = PromptRecipe(**header["recipe"])
    except (KeyError, TypeError):
        raise ValueError(
            f"{path}:1: the header has no valid recipe; the file is damaged: delete it and rerun"
        ) from None
    if made != expected:
        raise ValueError(
            f"{path}: made with {made.differences(expected)}, but the config asks for "
            f"{expected.differences(made)}; the file comes from another run or config: delete it and rerun"
        )


def recorded_digest(path: str | Path) -> str:
    """The records' SHA-256 in a prompt file's header, checked against the records (one pass
    over the file, no parsing): what results computed from the file record, see
    minormech.provenance. A reader of such a result opens no other view of the prompt file,
    so an edit under an intact header is refused here too."""
    path = _existing(path)
    with open(path) as handle:
        return _check_records(path, _check_header(path, handle.readline()), handle)


def _existing(path: str | Path) -> Path:
    """`path` as a Path; ValueError naming it when the prompt file does not exist."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: prompt file does not exist; rerun snakemake, which remakes it (rule prompts)")
    return path


def _check_header(path: Path, line: str) -> dict:
    """The header of a prompt file; refused unless it is the current format's."""
    if not line:
        raise ValueError(f"{path}: prompt file is empty; delete it and rerun")
    try:
        header = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}:1: not a prompt file header ({error}); the file is damaged: delete it and rerun"
        ) from None
    if not isinstance(header, dict) or header.get("format") != PROMPT_FORMAT:
        raise ValueError(
            f"{path}: prompt file of an old format (no format header, prompts without their examples); "
            "delete it and rerun"
        )
    if header.get("version") != PROMPT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: prompt format {header.get('version')!r}, expected {PROMPT_FORMAT_VERSION!r}; delete it and rerun"
        )
    return header


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """SHA-256 over ids and token ids (what the model reads; the examples are spelled out in
    the tokens): shards record it so a reader can tell whether the activations were made
    from exactly these prompts."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps([prompt.id, prompt.input_ids]).encode())
    return digest.hexdigest()
