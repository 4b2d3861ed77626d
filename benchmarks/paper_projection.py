"""Project a small CPU run's measured cost per rule to a paper config on one GPU (computed,
not measured), and the GPU memory of the stream and probe state the paper configs ask for.

    python benchmarks/paper_projection.py RUN_DIR SMALL_OVERLAY PAPER_OVERLAY [PAPER_OVERLAY ...]

RUN_DIR is the working directory of a finished run of SMALL_OVERLAY (its
logs/benchmarks/ and logs/ are read); each overlay is merged onto config/config.yaml as
Snakemake merges --configfile. For every model-running rule:

    projected seconds = measured compute seconds x (W_paper / W_small)
                        x (F_paper / F_small) x (R_cpu / R_gpu)  [+ the probe optimizer term]

W is the rule's work in token-forwards (below), F a model's decoder FLOPs per token
(2 x its layers' weights), R_cpu the forward rate measured on the CPU that ran the small
run (--cpu-gflops) and R_gpu an assumed GPU rate (--gpu-tflops). Measured compute seconds
are a job's wall time minus its model load (--load-seconds, from the job logs). The stream
job's optimizer (Adam over every probe at every step: 28 bytes of memory traffic per probe
parameter) scales with steps x probe parameters, not with tokens, so it is added from
--gpu-tbps. Attention's S^2 term and the vocabulary projection are left out (at 611 tokens
they are a few per cent of a 3B model's per-token FLOPs).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

from minormech.models import (
    architecture_config,
    architecture_parameters,
    layer_matmul_parameters,
    resolve_model_spec,
)
from minormech.prompts import generate_prompts
from minormech.tasks import get_task, make_weight_table
from minormech.tokenizers import load_named_tokenizer

REPO = Path(__file__).resolve().parent.parent
RULES = ("stream_probes", "attribution", "patching", "head_views")
PATCH_PASSES = 20  # per (batch, layer): 8 xi, 8 random and 4 no-op patched passes
UNPATCHED_PASSES = 4  # per batch: reference and other prompts of both tasks
ADAM_BYTES = 28  # per parameter and step: read param, grad, m, v; write param, m, v (fp32)


def merged(*overlays: Path) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in overlays:
        _merge(config, yaml.safe_load(overlay.read_text()))
    return config


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    flops_per_token: float  # decoder: 2 x the layers' weights
    parameters: int  # layers and embeddings (input and, when untied, output)
    site_widths: dict[str, int]

    @classmethod
    def of(cls, config: dict) -> Shape:
        spec = resolve_model_spec(config["models"][0])
        arch = architecture_config(spec.location if spec.source == "shaped" else spec.id)
        flops = 2.0 * layer_matmul_parameters(arch) * spec.num_layers
        return cls(spec.num_layers, arch["num_attention_heads"], flops, architecture_parameters(arch), spec.site_widths)


def prompt_tokens(config: dict) -> int:
    """Tokens of an LR probe prompt at the config's budget (Llama 3: every prompt of a budget
    has the same length, since each number is one token)."""
    task = get_task("LR")
    table = make_weight_table(task, config["test_weights"], config["seed"])
    prompt = generate_prompts(
        task, table, [0], "probe_train", load_named_tokenizer("llama3"), config["prompts"]["max_prompt_tokens"], 0
    )
    return prompt[0].length


def rerun_fraction(layers: list[int], depth: int) -> float:
    """Forward passes of reruns from each listed layer: sum of (L - layer) / L."""
    return sum((depth - layer) / depth for layer in layers)


def listed(value, depth: int) -> list[int]:
    return list(range(depth)) if value == "all" else list(value)


def work(config: dict, shape: Shape, tokens: int) -> dict[str, float]:
    """Token-forwards of one job of each rule (stream and attribution per task, patching per
    site, head views per task); backward passes count as two forwards."""
    prompts, depth = config["prompts"], shape.layers
    n_test = config["test_weights"] * prompts["probe_test_per_weight"]
    n_control = prompts["probe_control"] if config["controls"]["control_task"] else 0  # predicted once, like the test
    epochs = 1 if config["probe"]["regime"] == "paper" else config["probe"]["improved"]["max_epochs"]
    heads = config["heads"]
    knocked = listed(heads["knockout_layers"], depth) if heads["knockout"] else []
    patched = listed(config["patching"]["layers"], depth)
    return {
        "stream_probes": (prompts["probe_train"] * epochs + n_test + n_control) * tokens,
        "attribution": 3 * prompts["attribution"] * tokens,
        "patching": prompts["patching"] * tokens * (UNPATCHED_PASSES + PATCH_PASSES * rerun_fraction(patched, depth)),
        "head_views": heads["prompts"] * tokens * (1 + shape.heads * rerun_fraction(knocked, depth)),
    }


def probe_parameters(config: dict, shape: Shape) -> int:
    """Parameters of every probe a stream job trains: per site d x d_proj projections for the
    unfiltered probe, its control task and the four filtered variants, each probe.seeds times."""
    variants = (1 + int(config["controls"]["control_task"]) + 4) * config["probe"]["seeds"]
    widths = sum(shape.site_widths[site] for site in config["sites"])
    return widths * config["probe"]["d_proj"] * shape.layers * variants


def measured(run_dir: Path, rule: str) -> list[tuple[float, float]]:
    """(wall seconds, peak RSS MB) of every job of a rule in the run's benchmark files."""
    rows = []
    for path in sorted((run_dir / "logs" / "benchmarks" / rule).rglob("*.tsv")):
        with open(path, newline="") as handle:
            row = list(csv.DictReader(handle, delimiter="\t"))[-1]
        rows.append((float(row["s"]), float(row["max_rss"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("small", type=Path)
    parser.add_argument("paper", type=Path, nargs="+")
    parser.add_argument("--cpu-gflops", type=float, required=True, help="measured float32 forward rate of the CPU")
    parser.add_argument("--load-seconds", type=float, required=True, help="model load time per job (job logs)")
    parser.add_argument("--gpu-tflops", type=float, default=125.0, help="assumed bf16 rate: 40%% of an A100's 312")
    parser.add_argument("--gpu-tbps", type=float, default=1.5, help="assumed memory bandwidth, TB/s (A100 80 GB)")
    args = parser.parse_args()
    small = merged(args.small)
    small_shape = Shape.of(small)
    small_work = work(small, small_shape, prompt_tokens(small))
    print("| rule | config | jobs | measured s per job (small) | projected s per job | projected GPU hours, all jobs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for paper_file in args.paper:
        paper = merged(paper_file)
        shape = Shape.of(paper)
        paper_work = work(paper, shape, prompt_tokens(paper))
        jobs = {
            "stream_probes": len(paper["tasks"]),
            "attribution": len(paper["tasks"]),
            "patching": len(paper["sites"]),
            "head_views": len(paper["tasks"]),
        }
        for rule in RULES:
            runs = measured(args.run_dir, rule)
            compute = sum(max(s - args.load_seconds, 0.0) for s, _ in runs) / len(runs)
            scale = (paper_work[rule] / small_work[rule]) * (shape.flops_per_token / small_shape.flops_per_token)
            seconds = compute * scale * args.cpu_gflops / (args.gpu_tflops * 1000)
            if rule == "stream_probes":
                steps = paper["probe"]["paper"]["steps"] if paper["probe"]["regime"] == "paper" else 0
                seconds += steps * probe_parameters(paper, shape) * ADAM_BYTES / (args.gpu_tbps * 1e12)
            print(
                f"| {rule} | {paper_file.name} | {jobs[rule]} | {compute:.0f} | {seconds:.0f} "
                f"| {seconds * jobs[rule] / 3600:.1f} |"
            )
    for paper_file in args.paper:
        paper = merged(paper_file)
        shape = Shape.of(paper)
        model_gb = shape.parameters * 2 / 1e9
        probes_gb = probe_parameters(paper, shape) * 16 / 1e9
        batch = paper["activations"]["batch_size"]
        recorded_gb = (
            batch * prompt_tokens(paper) * sum(shape.site_widths[s] for s in paper["sites"]) * shape.layers * 2 / 1e9
        )
        print(
            f"{paper_file.name}: stream job GPU memory = weights {model_gb:.1f} GB (bf16) + probes with Adam "
            f"state {probes_gb:.1f} GB (float32) + one recorded batch {recorded_gb:.1f} GB "
            f"= {model_gb + probes_gb + recorded_gb:.1f} GB"
        )


if __name__ == "__main__":
    main()
