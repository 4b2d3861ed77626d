"""Distributed alignment search (minormech.das): the intervention is the activation patch
when it rotates by the identity and selects everything, and nothing when it selects
nothing; training runs from the layer's cached input and lowers its loss; pairs whose
counterfactual answer is the base's own are never scored."""

import numpy as np
import pytest
import torch
from conftest import random_prompts

from minormech.das import (
    DasSettings,
    boundary_mask,
    cache_batch,
    counterfactual_log_prob,
    counterfactual_pairs,
    evaluate,
    hard_mask,
    interchange,
    intervened_first_logits,
    random_rotation,
    train_rotation,
)
from minormech.patching import patched_first_logits
from minormech.prompts import generate_prompts
from minormech.runner import rerun_from, unpatched_run
from minormech.sites import ModelShape, site_widths
from minormech.tasks import get_task, make_weight_table

SITE, LAYER, PAD = "k", 1, 0


def site_width(model, site: str) -> int:
    return site_widths(ModelShape.of_config(model.config))[site]


def source_last(model, prompts):
    run = unpatched_run(model, prompts, [SITE], [LAYER], PAD)
    return run.sites[(SITE, LAYER)][torch.arange(len(prompts)), run.lengths - 1]


def test_identity_rotation_with_the_full_boundary_is_the_activation_patch_of_the_last_token(tiny):
    bases, sources = random_prompts(3, seed=1), random_prompts(3, seed=2)
    width = site_width(tiny, SITE)
    base, source = unpatched_run(tiny, bases, [SITE], [LAYER], PAD), unpatched_run(tiny, sources, [SITE], [LAYER], PAD)
    patched, _ = patched_first_logits(tiny, base, source, SITE, LAYER, torch.ones(width, dtype=torch.bool), "last")
    with torch.inference_mode():
        intervened, _ = intervened_first_logits(
            tiny, base, SITE, LAYER, source_last(tiny, sources), torch.eye(width), torch.ones(width)
        )
    assert torch.equal(intervened, patched)
    assert not torch.equal(intervened, base.first_logits)  # the patch does change something


def test_an_empty_boundary_changes_nothing(tiny):
    bases, sources = random_prompts(3, seed=1), random_prompts(3, seed=2)
    width = site_width(tiny, SITE)
    base = unpatched_run(tiny, bases, [SITE], [LAYER], PAD)
    with torch.inference_mode():
        unchanged, _ = rerun_from(tiny, base, LAYER)
        intervened, _ = intervened_first_logits(
            tiny, base, SITE, LAYER, source_last(tiny, sources), random_rotation(width, 3), torch.zeros(width)
        )
    torch.testing.assert_close(intervened, unchanged, rtol=0, atol=1e-5)  # R^T R = I up to rounding


def test_interchange_swaps_exactly_the_selected_rotated_coordinates():
    rotation = random_rotation(6, seed=0)
    base, source = torch.randn(4, 6), torch.randn(4, 6)
    mask = hard_mask(2, 6)
    out = interchange(base, source, rotation, mask)
    torch.testing.assert_close((out @ rotation.T)[:, :2], (source @ rotation.T)[:, :2])
    torch.testing.assert_close((out @ rotation.T)[:, 2:], (base @ rotation.T)[:, 2:])
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(6), rtol=0, atol=1e-6)


def test_the_soft_boundary_selects_the_first_coordinates():
    mask = boundary_mask(torch.tensor(0.5), 8, temperature=0.01)
    assert mask.round().tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


@pytest.fixture(scope="module")
def lr_prompts(smollm2_tokenizer):
    task = get_task("LR")
    table = make_weight_table(task, n_test=8, seed=0)
    return task, generate_prompts(task, table, table.train_ids[:12], "probe_train", smollm2_tokenizer, 60, seed=0)


def test_pairs_join_other_weights_and_keep_only_answers_that_change(lr_prompts, smollm2_tokenizer):
    task, prompts = lr_prompts
    pairs = counterfactual_pairs(prompts, task, smollm2_tokenizer, n_pairs=8, seed=0)
    assert pairs and len({p.base.id for p in pairs}) == len(pairs)
    for pair in pairs:
        assert pair.base.weight != pair.source.weight and pair.answer != pair.base.answer
        x = np.array(pair.base.example_x[-1])
        assert int(pair.answer) == int(task.output(x, np.array(pair.source.weight)))
        ids = smollm2_tokenizer(pair.base.text + pair.answer)["input_ids"]
        assert list(pair.base.input_ids) + list(pair.answer_ids) == list(ids)
    assert pairs == counterfactual_pairs(prompts, task, smollm2_tokenizer, n_pairs=8, seed=0)


def test_training_from_the_cached_layer_input_lowers_the_loss_and_evaluates_every_pair(smollm2, lr_prompts):
    model, tokenizer = smollm2
    task, prompts = lr_prompts
    pairs = counterfactual_pairs(prompts, task, tokenizer, n_pairs=8, seed=0)
    width = site_width(model, "k")
    batch = cache_batch(model, pairs, "k", 10, tokenizer.pad_token_id or 0)
    settings = DasSettings(epochs=6, batch_size=8, lr=1e-2)
    rotation, log = train_rotation(model, [batch], "k", 10, width, settings)
    assert log.loss[-1] < log.loss[0]
    with torch.no_grad():
        full = counterfactual_log_prob(model, batch, "k", 10, torch.eye(width), torch.ones(width))
    scores = evaluate(model, pairs, "k", 10, torch.eye(width), torch.ones(width), 4, tokenizer.pad_token_id or 0)
    assert scores.exact.shape == (len(pairs),)
    np.testing.assert_allclose(scores.logp, full.numpy(), rtol=0, atol=1e-3)  # cached pass == decode on the cache
