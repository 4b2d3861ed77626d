"""The positive-control model: a tiny Llama trained on the tasks' prompts with the
real SmolLM2 tokenizer learns, is reproducible, never sees a test weight, and is saved as a
model the pipeline loads like any other."""

import copy
import json
import math
from collections import Counter

import pytest
import torch
import yaml

from minormech.answer_errors import answer_errors, answer_span, greedy_answers, training_mean_answer
from minormech.config import ConfigError, load_schema, validate_config
from minormech.control_model import (
    Runtime,
    TrainingPrompts,
    TrainSettings,
    evaluate,
    held_out_examples,
    make_example,
    output_value_mask,
    save,
    train,
    training_batches,
)
from minormech.models import load_model, resolve_model_spec
from minormech.prompts import format_example, output_spans
from minormech.tasks import get_task, make_weight_table

TASKS = ["LR", "MD"]
TINY = {
    "tokenizer_of": "smollm2-135m",
    "hidden_size": 32,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "intermediate_size": 64,
    "steps": 25,
    "batch_size": 4,
    "lr": 1e-2,
    "seed": 0,
    "loss": "outputs",
}
#: Fine-tuning the tokenizer's model (SmolLM2-135M) under bfloat16 autocast.
PRETRAINED = {
    "tokenizer_of": "smollm2-135m",
    "init": "pretrained",
    "autocast": "bfloat16",
    "steps": 2,
    "batch_size": 2,
    "lr": 1e-4,
    "seed": 0,
    "loss": "outputs",
}
BUDGET = 64  # prompts.max_prompt_tokens: 2-3 examples, short sequences


@pytest.fixture(scope="module")
def tables():
    return {name: make_weight_table(get_task(name), 40, 0) for name in TASKS}


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer, tables):
    return TrainingPrompts(TASKS, tables, smollm2_tokenizer, BUDGET)


@pytest.fixture(scope="module")
def trained(prompts):
    return train(TrainSettings(**TINY), prompts)


def test_train_entry_gives_layers_and_widths_before_training():
    spec = resolve_model_spec(
        {"id": "tiny-icl", "train": {**TINY, "hidden_size": 64, "layers": 4, "heads": 4, "kv_heads": 2}}
    )
    assert (spec.source, spec.location, spec.num_layers) == ("trained", "smollm2-135m", 4)
    assert spec.site_widths == {
        "q": 64,
        "k": 32,
        "v": 32,
        "o": 64,
        "mlp": 64,
        "resid_pre": 64,
        "resid_mid": 64,
        "resid_post": 64,
    }


def test_config_accepts_a_train_entry_and_names_bad_ones(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    schema = load_schema(repo_root / "config" / "config.schema.yaml")
    config["layers"], config["patching"]["layers"] = "all", [0]
    config["models"] = [{"id": "tiny-icl", "train": dict(TINY)}]
    validate_config(config, schema)  # the tokenizer's model need not be analysed itself
    bad = [
        ({"hidden_size": 36}, r"^models\[0\]\.train\.hidden_size: 36 does not split into 4 heads of even width"),
        ({"kv_heads": 3}, r"^models\[0\]\.train\.kv_heads: 3 does not divide heads=4"),
        (
            {"tokenizer_of": "tiny-icl"},
            r"^models\[0\]\.train\.tokenizer_of: 'tiny-icl' is not a known or configured untrained model",
        ),
        (
            {"loss": "answer"},
            r"^models\[0\]\.train\.loss: 'answer' is not allowed; allowed values: \['outputs', 'all'\]$",
        ),
        (
            {"init": "pretrained"},
            r"^models\[0\]\.train\.hidden_size: not allowed with init: pretrained \(the architecture is that of "
            r"tokenizer_of, 'smollm2-135m'\); allowed: remove it, or init: scratch$",
        ),
        ({"autocast": "float16"}, r"^models\[0\]\.train\.autocast: 'float16' is not allowed"),
    ]
    for change, message in bad:
        broken = copy.deepcopy(config)
        broken["models"][0]["train"].update(change)
        with pytest.raises(ConfigError, match=message):
            validate_config(broken, schema)
    shapeless = copy.deepcopy(config)
    del shapeless["models"][0]["train"]["layers"]
    with pytest.raises(ConfigError, match=r"^models\[0\]\.train\.layers: required with init: scratch"):
        validate_config(shapeless, schema)
    fine_tuned = copy.deepcopy(config)
    fine_tuned["models"][0]["train"] = {**PRETRAINED, "steps": 10}
    validate_config(fine_tuned, schema)


def test_a_fine_tuned_entry_has_the_shape_of_the_model_it_starts_from():
    spec = resolve_model_spec({"id": "smollm2-icl", "train": PRETRAINED})
    smollm2 = resolve_model_spec({"id": "smollm2-135m"})
    assert (spec.source, spec.location) == ("trained", "smollm2-135m")
    assert (spec.num_layers, spec.site_widths, spec.query_heads) == (30, smollm2.site_widths, 9)


def test_autocast_is_float32_on_the_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert TrainSettings(**TINY).autocast_dtype(Runtime("cpu", "auto"), cpu) is None
    assert TrainSettings(**{**TINY, "autocast": "bfloat16"}).autocast_dtype(Runtime(), cpu) == torch.bfloat16
    assert TrainSettings(**{**TINY, "autocast": "float32"}).autocast_dtype(Runtime("cuda", "auto"), cpu) is None


def test_fine_tuning_starts_from_the_pretrained_weights(smollm2, prompts):
    """init: pretrained trains the tokenizer's own model: before training it scores the
    held-out answers as SmolLM2 does (far better than a random model), every weight is
    trained, and the architecture is SmolLM2's."""
    model, _ = smollm2
    settings = TrainSettings(**{**PRETRAINED, "steps": 2, "batch_size": 2, "lr": 1e-4})
    tuned, record = train(settings, prompts, pretrained=copy.deepcopy(model))
    _, scratch = train(TrainSettings(**{**TINY, "steps": 1}), prompts)
    for name in TASKS:
        assert record["held_out_before"][name]["answer_loss"] < 0.5 * scratch["held_out_before"][name]["answer_loss"]
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    original = model.state_dict()
    changed = [key for key, value in tuned.state_dict().items() if not torch.equal(value, original[key])]
    assert len(changed) == len(original)  # full fine-tuning: every tensor moved
    assert all(p.requires_grad is False for p in model.parameters())  # the shared model is untouched


def test_loss_scores_exactly_the_output_digits(smollm2_tokenizer, prompts):
    text = "ctx\n\n" + "\n\n".join(format_example(x, y) for x, y in (([3, 22], 968), ([1, 0], 17)))
    assert text == "ctx\n\n\nFeature 0: 3\nFeature 1: 22\nOutput: 968\n\n\nFeature 0: 1\nFeature 1: 0\nOutput: 17"
    spans = output_spans([[3, 22], [1, 0]], [968, 17], len("ctx\n\n"))
    assert [text[a:b] for a, b in spans] == ["968", "17"]
    encoded = smollm2_tokenizer(text, return_offsets_mapping=True)
    scored = [
        smollm2_tokenizer.decode([t])
        for t, s in zip(encoded["input_ids"], output_value_mask(spans, encoded["offset_mapping"]))
        if s
    ]
    assert scored == ["9", "6", "8", "1", "7"]
    outputs, answer = (make_example(prompts, "LR", 0, 0, "control_model", score) for score in ("outputs", "answer"))
    n_answer = sum(t != -100 for t in answer.labels)
    assert (
        outputs.input_ids == answer.input_ids and outputs.labels[-n_answer:] == answer.labels[-n_answer:]
    )  # the answer is scored too
    assert sum(t != -100 for t in outputs.labels) > n_answer  # and so are the earlier Output values


def test_training_uses_only_training_weights(prompts, tables):
    for name in TASKS:
        drawn = {make_example(prompts, name, 0, i, "control_model", "outputs").weight_id for i in range(300)}
        assert drawn <= set(tables[name].train_ids.tolist()) and len(drawn) > 100


def test_prompt_workers_build_the_same_batches(prompts):
    """GPU runs build prompts in worker processes; the batches are those built in-process."""
    settings = TrainSettings(**{**TINY, "steps": 4})
    assert [[e.input_ids for e in batch] for batch in training_batches(prompts, settings, workers=2)] == [
        [e.input_ids for e in batch] for batch in training_batches(prompts, settings, workers=0)
    ]


def test_training_reduces_the_loss(trained):
    _, record = trained
    curve = record["loss_curve"]
    assert len(curve) == TINY["steps"] and sum(curve[-3:]) / 3 < 0.6 * sum(curve[:3]) / 3
    for name in TASKS:
        assert record["held_out_after"][name]["answer_loss"] < 0.6 * record["held_out_before"][name]["answer_loss"]


def test_same_seed_same_weights(prompts):
    """Two short runs with equal settings end with identical weights; another seed differs."""
    runs = [
        train(TrainSettings(**{**TINY, "steps": 3, "seed": seed, "loss": "all"}), prompts)[0].state_dict()
        for seed in (0, 0, 1)
    ]
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])
    assert not torch.equal(runs[0]["model.embed_tokens.weight"], runs[2]["model.embed_tokens.weight"])


def test_saved_model_loads_like_any_model(trained, smollm2_tokenizer, tmp_path):
    model, record = trained
    manifest = save(
        model, smollm2_tokenizer, record, "tiny-icl", tmp_path / "model", tmp_path / "model" / "training.json"
    )
    assert list((tmp_path / "model").glob("*.safetensors")) and not list((tmp_path / "model").glob("*.bin"))
    spec = resolve_model_spec({"id": "tiny-icl", "train": TINY})
    assert (manifest.source, manifest.num_layers, manifest.site_widths) == (
        "trained",
        spec.num_layers,
        spec.site_widths,
    )
    loaded, tokenizer = load_model(manifest, "cpu", "float32")
    ids = tokenizer("Feature 0: 3\nFeature 1: 4\nOutput: ", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert json.loads((tmp_path / "model" / "training.json").read_text())["settings"] == {
        **TINY,
        "init": "scratch",
        "autocast": "auto",
    }


def test_greedy_answers_are_what_the_teacher_forced_check_scores(trained, prompts, smollm2_tokenizer):
    """Decoding an answer greedily picks, at its first token, the argmax the held-out check
    scores; the mean predictor's error is that of the true answers against the mean; and the
    decoded exact count agrees with the check's accuracy."""
    model, _ = trained
    pad_id = smollm2_tokenizer.eos_token_id
    held_out = held_out_examples(prompts, TINY["seed"])["MD"][:6]
    truths = [int(smollm2_tokenizer.decode(e.input_ids[answer_span(e)])) for e in held_out]
    for example, decoded in zip(held_out, greedy_answers(model, held_out, pad_id)):
        start = answer_span(example).start
        with torch.no_grad():
            first = model(torch.tensor([example.input_ids[:start]])).logits[0, -1].argmax().item()
        assert decoded[0] == first and len(decoded) == len(example.input_ids[answer_span(example)])
    errors = answer_errors(model, smollm2_tokenizer, held_out, 100.0, pad_id)
    forced = evaluate(model, held_out, pad_id, torch.device("cpu"), None)
    assert errors.exact == round(forced["accuracy"] * len(held_out))
    assert errors.mean_predictor_error == pytest.approx(sum(abs(t - 100.0) for t in truths) / len(truths))
    assert errors.prompts == len(held_out) and 0 <= errors.unparsed <= len(held_out)
    assert training_mean_answer(smollm2_tokenizer, held_out) == pytest.approx(sum(truths) / len(truths))


def digit_frequency_loss(prompts: TrainingPrompts, task: str, examples) -> float:
    """Answer loss (nats per answer token) of a predictor that knows only how often each
    token occurs in the answers of 2000 training prompts of the task (add-one smoothed over
    the tokens seen there and in the scored answers): what learning the answers' format
    alone gives."""
    counts = Counter(
        label
        for i in range(2000)
        for label in make_example(prompts, task, 0, i, "control_model", "answer").labels
        if label != -100
    )
    answers = [label for example in examples for label in example.labels if label != -100]
    vocabulary = set(counts) | set(answers)
    total = sum(counts.values()) + len(vocabulary)
    return -sum(math.log((counts[token] + 1) / total) for token in answers) / len(answers)


@pytest.mark.slow
def test_fine_tuned_control_beats_the_digit_frequencies(smollm2, smollm2_tokenizer, tables):
    """The fine-tuning route of the positive control learns more than the answers' format:
    after 80 steps of 8 prompts of 128 tokens (about 5 minutes on 2 cores) its held-out
    answer loss on the unseen test weights is below the digit-frequency level of each task
    (run with `pytest -m slow`)."""
    prompts = TrainingPrompts(TASKS, tables, smollm2_tokenizer, 128)
    model, _ = smollm2
    settings = TrainSettings(**{**PRETRAINED, "steps": 80, "batch_size": 8, "lr": 2e-4})
    _, record = train(settings, prompts, pretrained=copy.deepcopy(model))
    held_out = held_out_examples(prompts, settings.seed)
    for name in TASKS:
        level = digit_frequency_loss(prompts, name, held_out[name])
        assert record["held_out_after"][name]["answer_loss"] < level, (name, record["held_out_after"][name], level)
