"""Reliability: a run killed with SIGKILL while activation shards are being
written resumes to the same results; damaged or foreign inputs stop the job that reads them
with one line naming the file and what to do; bad configs stop before any job; the same
config and seed give identical outputs; nothing is loaded through pickle and nothing is
written outside the working directory.

The uninterrupted reference is the tiny config's whole DAG (the session fixture `finished`,
also used by tests/test_workflow.py), with safetensors shards. The interrupted run uses the
same config with HDF5 shards (activations.format: hdf5) in another directory, so every file
it writes comes from processes independent of the reference's: comparing the two checks
resuming, determinism and that both shard formats give the same results at once; the
damaged-input tests below then run on HDF5 shards (tests/test_shards.py runs every reader
check on both formats). README, "Interrupted runs and
errors", lists what the user sees in each case.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import psutil
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_config import BAD
from workflow_helpers import (
    SNAKEMAKE,
    TINY,
    copy_workflow,
    edit_first_prompt_weight,
    error_lines,
    isolated_env,
    job_counts,
    rewrite_first_prompt_weight,
    run,
)

from minormech.models import ModelManifest, load_model, prepare_model, resolve_model_spec
from minormech.prompts import read_prompts
from minormech.shards import open_tensor_file

MODEL = "results/smollm2-135m"
#: The interrupted run's config: the reference's, with HDF5 shards.
KILLED = {**TINY, "activations": {**TINY["activations"], "format": "hdf5"}}
#: What the interrupted run asks for: the probe tables of site k (both tasks) and figure 2
#: (xi, from the attribution of both tasks). Every activation shard of the model is needed
#: and none of its random-init control's (figure 1 would need those too). Patching reads
#: neither shards nor anything a kill interrupts (xi and prompts, compared below), so it is
#: left to the reference run.
TARGETS = [
    f"{MODEL}/probes/LR/k/unfiltered.csv",
    f"{MODEL}/probes/MD/k/unfiltered.csv",
    f"{MODEL}/figures/fig2_k.csv",
]
N_SHARDS = 2 * sum(TINY["activations"]["chunks"].values())  # both tasks, every probe prompt set


def shards(work: Path) -> list[Path]:
    return sorted(work.glob(f"{MODEL}/activations/*/*/chunk*.h5"))


def shards_in_progress(work: Path) -> list[Path]:
    """Logs of activation jobs that are computing their shard: their forward passes have
    started (the log shows the progress bar) and the shard is not written yet."""
    logs = (work / "logs" / "activations" / "smollm2-135m").glob("*/*/chunk*.log")
    return [
        log
        for log in logs
        if not (
            work
            / MODEL
            / "activations"
            / log.relative_to(work / "logs" / "activations" / "smollm2-135m").with_suffix(".h5")
        ).exists()
        and "forward passes" in log.read_text(errors="replace")
    ]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every process below it (its jobs), as a power cut or the OOM
    killer would: nobody gets to clean up."""
    victims = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)  # the session Popen started: Snakemake and its jobs
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, repo_root, workdir, finished):
    """The tiny config killed (SIGKILL) while an activation job computes its shard, after at
    least one shard was written, then resumed exactly as the README says. HOME and TMPDIR point at empty
    directories throughout, to see what a run writes outside its working directory.

    The model manifest is copied from the reference run (it points at the model that run
    prepared), which spares the ~30 s GGUF conversion; everything after it is computed here.
    """
    root = tmp_path_factory.mktemp("resume")
    work = copy_workflow(repo_root, root / "work")
    (work / "tiny.yaml").write_text(yaml.safe_dump(KILLED))
    (work / MODEL / "model").mkdir(parents=True)
    (work / MODEL / "model" / "manifest.json").write_bytes((workdir / MODEL / "model" / "manifest.json").read_bytes())
    env = isolated_env(root / "outside_killed")

    with open(root / "killed.out", "w") as out:
        process = subprocess.Popen(
            [*SNAKEMAKE, *TARGETS, "--cores", "2", "--configfile", "tiny.yaml"],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while not (shards(work) and shards_in_progress(work)):
            assert process.poll() is None, (
                f"the run ended before it could be killed:\n{(root / 'killed.out').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no activation job started within 10 minutes"
            time.sleep(0.02)
        in_progress = shards_in_progress(work)
        kill_tree(process)
    at_kill = shards(work)
    leftovers = sorted(p.name for p in work.glob(f"{MODEL}/activations/*/*/*.tmp"))
    locks = sorted(p.name for p in (work / ".snakemake" / "locks").iterdir())

    env = isolated_env(root / "outside")
    not_unlocked = run(work, *TARGETS, "--cores", "2", "--configfile", "tiny.yaml", check=False, env=env)
    # The README's two commands, with the killed run's targets and config.
    run(work, "--unlock", env=env)
    without_rerun_incomplete = run(work, *TARGETS, "-n", "--configfile", "tiny.yaml", env=env)
    resumed_run = run(work, *TARGETS, "--cores", "2", "--rerun-incomplete", "--configfile", "tiny.yaml", env=env)
    return {
        "work": work,
        "outside_killed": root / "outside_killed",
        "outside": root / "outside",
        "at_kill": at_kill,
        "in_progress": in_progress,
        "leftovers": leftovers,
        "locks": locks,
        "not_unlocked": not_unlocked,
        "without_rerun_incomplete": without_rerun_incomplete,
        "resumed": resumed_run,
    }


def identical_files(first: Path, second: Path, pattern: str) -> list[str]:
    """Relative paths matching pattern under both roots; asserts both hold the same files
    with the same bytes (safetensors included: minormech.shards.save_tensors sorts the header)."""
    names = sorted(str(p.relative_to(first)) for p in first.glob(pattern))
    assert names and names == sorted(str(p.relative_to(second)) for p in second.glob(pattern)), pattern
    differ = [name for name in names if (first / name).read_bytes() != (second / name).read_bytes()]
    assert not differ, f"differ between the runs: {differ}"
    return names


# ----------------------------------------------------------------------------- kill and resume


def test_killed_run_resumes_to_the_results_of_an_uninterrupted_run(resumed, workdir):
    work = resumed["work"]
    assert 1 <= len(resumed["at_kill"]) < N_SHARDS, "the kill came outside the activation stage"
    assert resumed["in_progress"], "no activation job was computing its shard when the run was killed"
    assert resumed["locks"], "SIGKILL leaves Snakemake's lock behind"
    assert not [name for name in resumed["leftovers"] if not name.endswith(".h5.tmp")]
    # Without --unlock Snakemake refuses and says what to do.
    assert (
        resumed["not_unlocked"].returncode != 0
        and "--unlock" in resumed["not_unlocked"].stdout + resumed["not_unlocked"].stderr
    )
    # The killed job had written no output (a shard appears only complete), so nothing is
    # incomplete: even without --rerun-incomplete the next run plans just the missing shards.
    planned = job_counts(resumed["without_rerun_incomplete"].stdout)
    assert planned["activations"] == N_SHARDS - len(resumed["at_kill"]), planned
    # The resumed run makes only the shards the killed run had not finished.
    log = resumed["resumed"].stdout + resumed["resumed"].stderr
    assert len(re.findall(r"^rule activations:$|^localrule activations:$", log, re.MULTILINE)) == N_SHARDS - len(
        resumed["at_kill"]
    ), log[-3000:]
    assert not list(work.glob(f"{MODEL}/activations/*/*/*.tmp")), "a killed job's temporary shard was left behind"
    # Final tables: identical bytes, so identical probe MSEs (CPU, fixed seeds, the same
    # thread count in both runs) from HDF5 shards as from safetensors ones.
    identical_files(work, workdir, f"{MODEL}/probes/*/k/unfiltered.csv")
    identical_files(work, workdir, f"{MODEL}/figures/fig2_k.csv")
    identical_files(work, workdir, f"{MODEL}/xi/*.safetensors")


# ----------------------------------------------------------------------------- determinism


def identical_shards(work: Path, reference: Path) -> int:
    """How many shards the two runs hold; asserts that each HDF5 shard of `work` has the
    metadata (tensor checksums included) and the bit-identical tensors of the reference's
    safetensors shard of the same name."""

    def stems(root: Path, suffix: str) -> list[Path]:
        return sorted(p.relative_to(root).with_suffix("") for p in root.glob(f"{MODEL}/activations/*/*/*{suffix}"))

    names = stems(reference, ".safetensors")
    assert names == stems(work, ".h5")
    for name in names:
        with safe_open(str(reference / f"{name}.safetensors"), framework="pt") as expected:
            hdf5 = open_tensor_file(work / f"{name}.h5")
            assert hdf5.metadata() == expected.metadata(), name
            for key in expected.keys():
                same = hdf5.get_tensor(key).view(torch.uint8).equal(expected.get_tensor(key).view(torch.uint8))
                assert same, f"{name}: {key} differs between the formats"
    return len(names)


def test_same_config_and_seed_give_identical_outputs(resumed, workdir):
    """Datasets, prompts, attribution maps and xi of two runs of the same config and seed,
    in different directories and processes, are bitwise identical; so are the activations,
    stored as HDF5 in one run and as safetensors in the other."""
    work = resumed["work"]
    identical_files(work, workdir, "results/datasets/*.tsv")
    # Both tasks' probe and attribution prompt sets (the killed run makes no patching prompts).
    assert len(identical_files(work, workdir, f"{MODEL}/prompts/*/probe_*.jsonl")) == 2 * 3
    assert len(identical_files(work, workdir, f"{MODEL}/prompts/*/attribution.jsonl")) == 2
    assert identical_shards(work, workdir) == N_SHARDS
    identical_files(work, workdir, f"{MODEL}/attribution/*.safetensors")
    identical_files(work, workdir, f"{MODEL}/xi/*.safetensors")


# ----------------------------------------------------------------------------- safety


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_nothing_written_outside_the_working_directory(resumed):
    """HOME and TMPDIR of the resumed run (which ran plots, probes, attribution and
    patching) hold no file: matplotlib's font cache went to .snakemake/matplotlib. Empty
    directories are allowed: Snakemake creates ~/.cache/snakemake/snakemake/source-cache on
    every start, and torch's fused Adam creates $TMPDIR/torchinductor_$USER, both empty.
    The killed run leaves only Snakemake's own scratch copies of the workflow (in its
    runtime source cache and $TMPDIR/snakemake*), which it deletes when it exits normally."""
    assert files_under(resumed["outside"]) == []
    assert list((resumed["work"] / ".snakemake" / "matplotlib").glob("fontlist*.json"))
    killed = files_under(resumed["outside_killed"])
    assert all(
        name.startswith(("home/.cache/snakemake/snakemake/source-cache/snakemake-runtime-cache/", "tmp/snakemake"))
        for name in killed
    ), killed


PICKLE_PATTERNS = {
    "pickle module": re.compile(
        r"\bimport (c?pickle|dill|joblib|cloudpickle)\b"
        r"|\bfrom (c?pickle|dill|joblib|cloudpickle) import\b|\bpickle\.loads?\("
    ),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas read_pickle": re.compile(r"read_pickle\("),
    "remote code": re.compile(r"trust_remote_code\s*=\s*True"),
}


def test_pipeline_code_loads_nothing_through_pickle(repo_root):
    files = [
        *(repo_root / "minormech").glob("*.py"),
        *(repo_root / "workflow" / "scripts").glob("*.py"),
        *(repo_root / "rules").glob("*.smk"),
        repo_root / "Snakefile",
    ]
    found = [
        f"{path.relative_to(repo_root)}:{n}: {what}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for what, pattern in PICKLE_PATTERNS.items()
        if pattern.search(line)
    ]
    assert not found, found
    # Every transformers model load asks for safetensors (the GGUF conversion reads GGUF).
    models_py = (repo_root / "minormech" / "models.py").read_text()
    loads = re.findall(r"AutoModelForCausalLM\.from_pretrained\(([^\n]*)\)", models_py)
    assert loads and all("use_safetensors=True" in args or "gguf_file=" in args for args in loads), loads


def test_pickle_checkpoint_is_refused(tmp_path, tiny):
    """A model directory with only pytorch_model.bin (a pickle) is refused before anything
    reads it, when prepared and when loaded."""
    model = tiny
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # written, never loaded
    message = (
        r"has no \*\.safetensors weights \(found \['pytorch_model\.bin'\]\); this pipeline loads no pickle checkpoints"
    )
    with pytest.raises(FileNotFoundError, match=message):
        prepare_model(resolve_model_spec({"id": "pickled", "path": str(tmp_path)}), tmp_path / "out")
    manifest = ModelManifest(id="pickled", source="path", load_from=str(tmp_path), num_layers=2, site_widths={})
    with pytest.raises(FileNotFoundError, match=message):
        load_model(manifest, "cpu", "float32")


# ----------------------------------------------------------------------------- corrupt inputs


def rewrite_shard(path: Path, model_id: str | None = None, keep_site: str | None = None) -> None:
    """Turn a shard into one from another model (header) or another site (tensors and header)."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as handle:
            if model_id:
                handle.attrs["model_id"] = model_id
            if keep_site:
                for name in [n for n in handle if n.startswith("blocks.") and not n.endswith(f"hook_{keep_site}")]:
                    del handle[name]
                handle.attrs["sites"] = f'["{keep_site}"]'
        return
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(path))
    if model_id:
        meta["model_id"] = model_id
    if keep_site:
        tensors = {
            name: value
            for name, value in tensors.items()
            if not name.startswith("blocks.") or name.endswith(f"hook_{keep_site}")
        }
        meta["sites"] = f'["{keep_site}"]'
    save_file(tensors, str(path), metadata=meta)


def run_on_damaged_files(work: Path, damages: dict, targets: list[str], forcerun: list[str]) -> dict:
    """Damage each file (damages[key] = (path, function that damages it)), run the targets
    with --keep-going and --forcerun, then restore every file's bytes and modification
    time. The run must fail with one error line per damaged file and write no target;
    returns each key's line (None when no line names its file)."""
    intact = {key: (path.read_bytes(), path.stat().st_mtime_ns) for key, (path, _) in damages.items()}
    try:
        for path, damage in damages.values():
            damage(path)
        result = run(
            work, *targets, "--cores", "2", "--keep-going", "--configfile", "tiny.yaml",
            "--forcerun", *forcerun, check=False,
        )  # fmt: skip
    finally:
        for key, (path, _) in damages.items():
            path.write_bytes(intact[key][0])
            os.utime(path, ns=(intact[key][1],) * 2)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == len(damages), result.stderr[-3000:]
    for target in targets:
        assert not (work / target).exists(), f"{target} was written from a damaged input"
    return {
        key: next((line for line in lines if str(path.relative_to(work)) in line), None)
        for key, (path, _) in damages.items()
    }


@pytest.fixture(scope="module")
def corrupted(resumed):
    """One run of four jobs (--keep-going), each reading one damaged input: LR's first
    training shard taken from another model, MD's from another site (v only), LR's
    attribution prompts cut at a line boundary, MD's with one prompt's weight edited (a
    valid record, the file's old timestamp restored, so Snakemake sees no change). The
    inputs are restored afterwards."""
    work = resumed["work"]

    def cut_short(path: Path) -> None:
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))

    damages = {
        "model": (
            work / MODEL / "activations/LR/probe_train/chunk000.h5",
            lambda path: rewrite_shard(path, model_id="llama-3.2-3b"),
        ),
        "site": (
            work / MODEL / "activations/MD/probe_train/chunk001.h5",
            lambda path: rewrite_shard(path, keep_site="v"),
        ),
        "prompts": (work / MODEL / "prompts/LR/attribution.jsonl", cut_short),
        "edited_prompts": (work / MODEL / "prompts/MD/attribution.jsonl", edit_first_prompt_weight),
    }
    targets = [
        f"{MODEL}/probes/LR/k/unfiltered.csv",
        f"{MODEL}/probes/MD/k/unfiltered.csv",
        f"{MODEL}/attribution/LR.safetensors",
        f"{MODEL}/attribution/MD.safetensors",
    ]
    return run_on_damaged_files(work, damages, targets, ["probe", "attribution"])


#: What the user sees for each damaged input of the `corrupted` fixture (one line each).
CORRUPT_INPUT_LINES = {
    "model": r"error: results/smollm2-135m/activations/LR/probe_train/chunk000\.h5: "
    r"shard has model_id='llama-3\.2-3b' but this run "
    r"expects 'smollm2-135m'; it was made by another configuration: delete it and rerun "
    r"\(details: logs/probe/smollm2-135m/LR/k/unfiltered\.log\)",
    "site": r"error: results/smollm2-135m/activations/MD/probe_train/chunk001\.h5: "
    r"has no blocks\.0\.attn\.hook_k \(it holds sites \['v'\], "
    r"layers \[0, .*, 29\]\); it was made by another configuration: delete it and rerun "
    r"\(details: logs/probe/smollm2-135m/MD/k/unfiltered\.log\)",
    "prompts": r"error: results/smollm2-135m/prompts/LR/attribution\.jsonl: "
    r"7 prompts but the config asks for 8; the file is incomplete or "
    r"stale: delete it and rerun \(details: logs/attribution/smollm2-135m/LR\.log\)",
    "edited_prompts": r"error: results/smollm2-135m/prompts/MD/attribution\.jsonl: its prompts do not match the "
    r"checksum in its header \(the file was edited after it was written\); delete it and rerun, which makes it "
    r"again from the config and seed \(details: logs/attribution/smollm2-135m/MD\.log\)",
}


@pytest.mark.parametrize(
    "damage",
    sorted(CORRUPT_INPUT_LINES),
    ids=["prompt_file_edited", "shard_from_another_model", "prompt_file_cut_short", "shard_from_another_site"],
)
def test_corrupt_input_gives_one_clear_line(corrupted, damage):
    """A shard from another model, a shard from another site, a prompt file cut short, a
    prompt file edited by hand under its old timestamp."""
    assert corrupted[damage] and re.fullmatch(CORRUPT_INPUT_LINES[damage], corrupted[damage]), corrupted[damage]


def replace_tensor(path: Path, name: str, damage) -> None:
    """Rewrite one tensor of a safetensors or HDF5 file, header and the other tensors
    intact, and keep the file's modification time, so that only a reader can notice."""
    stamp = path.stat().st_mtime_ns
    if path.suffix == ".h5":  # the tiny config stores float16, which HDF5 keeps as it is
        with h5py.File(path, "r+") as handle:
            values = damage(torch.from_numpy(handle[name][()])).contiguous()
            del handle[name]
            handle.create_dataset(name, data=values.numpy())
        os.utime(path, ns=(stamp, stamp))
        return
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    tensors[name] = damage(tensors[name]).contiguous()
    save_file(tensors, str(path), metadata=meta)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture(scope="module")
def damaged_values(resumed):
    """One run of five jobs (--keep-going), each reading a file whose values are damaged
    but whose header is intact: a shard with NaN in one tensor (MD's first test shard, v of
    layer 5), a shard with one tensor narrower than the model's site (LR's second training
    shard, v of layer 3), a shard with one tensor zeroed (LR's control shard, k of layer 4:
    finite and of the right shape, so only its checksum tells), a shard with one tensor in
    another dtype than its header's (MD's first training shard, k of layer 1), an
    attribution map with NaN (MD's, k of layer 2). The files are restored afterwards."""
    work = resumed["work"]
    # The `corrupted` run's failed attribution job took MD's map with it; make it again.
    run(work, f"{MODEL}/attribution/MD.safetensors", "--cores", "2", "--configfile", "tiny.yaml")

    def nan(t):
        return torch.full_like(t, float("nan"))

    damages = {
        "nan_shard": (
            work / MODEL / "activations/MD/probe_test/chunk000.h5",
            lambda path: replace_tensor(path, "blocks.5.attn.hook_v", nan),
        ),
        "narrow_shard": (
            work / MODEL / "activations/LR/probe_train/chunk001.h5",
            lambda path: replace_tensor(path, "blocks.3.attn.hook_v", lambda t: t[:, :-8]),
        ),
        "zeroed_shard": (
            work / MODEL / "activations/LR/probe_control/chunk000.h5",
            lambda path: replace_tensor(path, "blocks.4.attn.hook_k", torch.zeros_like),
        ),
        "dtype_shard": (
            work / MODEL / "activations/MD/probe_train/chunk000.h5",
            lambda path: replace_tensor(path, "blocks.1.attn.hook_k", lambda t: t.float()),
        ),
        "nan_attribution": (
            work / MODEL / "attribution/MD.safetensors",
            lambda path: replace_tensor(path, "blocks.2.attn.hook_k", nan),
        ),
    }
    targets = [
        f"{MODEL}/probes/MD/v/unfiltered.csv",
        f"{MODEL}/probes/LR/v/unfiltered.csv",
        f"{MODEL}/probes/LR/k/unfiltered.csv",
        f"{MODEL}/probes/MD/k/unfiltered.csv",
        f"{MODEL}/xi/LR-MD.safetensors",
    ]
    return run_on_damaged_files(work, damages, targets, ["probe", "rank_difference"])


#: What the user sees for each file of the `damaged_values` fixture (one line each).
DAMAGED_VALUE_LINES = {
    "nan_shard": r"error: results/smollm2-135m/activations/MD/probe_test/chunk000\.h5: "
    r"blocks\.5\.attn\.hook_v holds NaN or infinite values; the file is damaged: delete it and rerun "
    r"\(details: logs/probe/smollm2-135m/MD/v/unfiltered\.log\)",
    "narrow_shard": r"error: results/smollm2-135m/activations/LR/probe_train/chunk001\.h5: "
    r"blocks\.3\.attn\.hook_v has shape \[\d+, 184\], but the model's site is 192 wide; "
    r"the file is damaged or from another model: delete it and rerun "
    r"\(details: logs/probe/smollm2-135m/LR/v/unfiltered\.log\)",
    "zeroed_shard": r"error: results/smollm2-135m/activations/LR/probe_control/chunk000\.h5: "
    r"blocks\.4\.attn\.hook_k does not match the checksum in its header \(its values were changed after it "
    r"was written\); the file is damaged: delete it and rerun "
    r"\(details: logs/probe/smollm2-135m/LR/k/unfiltered\.log\)",
    "dtype_shard": r"error: results/smollm2-135m/activations/MD/probe_train/chunk000\.h5: "
    r"blocks\.1\.attn\.hook_k is stored as float32, but its header says store_dtype float16; "
    r"the file is damaged: delete it and rerun \(details: logs/probe/smollm2-135m/MD/k/unfiltered\.log\)",
    "nan_attribution": r"error: results/smollm2-135m/attribution/MD\.safetensors: "
    r"blocks\.2\.attn\.hook_k holds NaN or infinite values; the file is damaged: delete it and rerun "
    r"\(details: logs/rank_difference/smollm2-135m/LR-MD\.log\)",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_VALUE_LINES))
def test_damaged_values_give_one_clear_line(damaged_values, damage):
    """A NaN shard, a narrow shard, a zeroed shard, a shard of another dtype than its
    header's and a NaN attribution map stop the first job that reads them, naming the
    file, before anything is computed from them."""
    line = damaged_values[damage]
    assert line and re.fullmatch(DAMAGED_VALUE_LINES[damage], line), line


def test_results_of_other_prompts_than_the_prompt_file_holds_are_refused(resumed):
    """LR's attribution prompts replaced by a valid file of the same recipe with other
    prompts, under the old timestamp: nothing reruns the attribution map or xi, so xi now
    describes other prompts than the file holds. The next job that reads xi (figure 2,
    forced) stops with one line naming xi and the prompt file. The file is restored
    afterwards."""
    work = resumed["work"]
    # The damaged-values run's failed rank_difference job took xi with it; make it again.
    run(work, f"{MODEL}/figures/fig2_k.pdf", "--cores", "2", "--configfile", "tiny.yaml")
    damages = {"replaced_prompts": (work / MODEL / "prompts/LR/attribution.jsonl", rewrite_first_prompt_weight)}
    lines = run_on_damaged_files(work, damages, [f"{MODEL}/figures/fig2_k.pdf"], ["plot_fig2"])
    assert lines["replaced_prompts"] == (
        f"error: {MODEL}/xi/LR-MD.safetensors: computed from other prompts than {MODEL}/prompts/LR/attribution.jsonl "
        "holds now (the prompt file was remade or replaced after the result was written); touch "
        f"{MODEL}/prompts/LR/attribution.jsonl and rerun snakemake, which remakes everything computed from it "
        "(details: logs/plot_fig2/smollm2-135m/k.log)"
    ), lines
    # With the file restored, figure 2 is drawn again from the same xi.
    run(work, f"{MODEL}/figures/fig2_k.pdf", "--cores", "1", "--configfile", "tiny.yaml")


#: A job that writes its output, then works on (as a probe job writes its table before its
#: predictions): killed in between, its output exists but is incomplete. The marker file
#: `resume` shortens the second attempt.
WRITES_THEN_WORKS = """
rule table:
    output: "table.csv"
    shell: "echo 1 > {output} && if [ ! -e resume ]; then sleep 120; fi"
"""


def test_a_job_killed_after_writing_an_output_is_rerun_only_with_rerun_incomplete(tmp_path):
    """What the README says of a job killed after it wrote one of its outputs: after
    --unlock, Snakemake refuses the output (IncompleteFilesException) until the run is
    repeated with --rerun-incomplete, which reruns the job."""
    (tmp_path / "Snakefile").write_text(WRITES_THEN_WORKS)
    with open(tmp_path / "killed.out", "w") as out:
        process = subprocess.Popen(
            [*SNAKEMAKE, "--cores", "1"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while not (tmp_path / "table.csv").exists():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.out").read_text()
            time.sleep(0.05)
        kill_tree(process)
    run(tmp_path, "--unlock")
    refused = run(tmp_path, "--cores", "1", check=False)
    assert refused.returncode != 0
    assert "IncompleteFilesException:\nThe files below seem to be incomplete." in refused.stderr, refused.stderr
    (tmp_path / "resume").touch()
    rerun = run(tmp_path, "--cores", "1", "--rerun-incomplete")
    assert "Finished jobid: 0 (Rule: table)" in rerun.stderr, rerun.stderr


def test_deleted_prompt_file_is_made_again_identically(resumed):
    """A deleted prompt file is an output Snakemake can make: the next run plans its job
    (reason 'Missing output files') and everything that reads it, and the file comes back
    byte for byte, since prompts are seeded."""
    work = resumed["work"]
    path = work / MODEL / "prompts/LR/probe_test.jsonl"
    intact = path.read_bytes()
    path.unlink()
    # A plain run (every target) plans it, as does a run of one table that reads it.
    plain = run(work, "-n", "--configfile", "tiny.yaml")
    assert f"reason: Missing output files: {MODEL}/prompts/LR/probe_test.jsonl" in plain.stdout
    plan = run(work, f"{MODEL}/probes/LR/k/unfiltered.csv", "-n", "--configfile", "tiny.yaml")
    assert f"reason: Missing output files: {MODEL}/prompts/LR/probe_test.jsonl" in plan.stdout
    counts = job_counts(plan.stdout)
    assert counts["prompts"] == 1 and counts["activations"] == 1, counts  # the file, and the shard made from it
    run(work, str(path.relative_to(work)), "--cores", "2", "--configfile", "tiny.yaml")
    assert path.read_bytes() == intact


def test_prompt_file_deleted_under_a_running_job_is_one_clear_line(tmp_path):
    """What a job reports when its prompt file vanished (deleted while the run was going)."""
    with pytest.raises(
        ValueError,
        match=r"missing\.jsonl: prompt file does not exist; rerun snakemake, which remakes it \(rule prompts\)$",
    ):
        read_prompts(tmp_path / "missing.jsonl")


def test_model_directory_gone(resumed):
    """The prepared model directory a manifest names has disappeared (moved, cleaned up):
    the job that loads it says which manifest to delete."""
    work = resumed["work"]
    manifest, shard = (
        work / MODEL / "model/manifest.json",
        work / MODEL / "activations/MD/probe_test/chunk000.h5",
    )
    intact = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (manifest, shard)}
    try:
        manifest.write_text(manifest.read_text().replace('"load_from": "', '"load_from": "/nonexistent'))
        os.utime(manifest, ns=(intact[manifest][1],) * 2)  # only the directory is gone: nothing downstream looks stale
        result = run(
            work,
            str(shard.relative_to(work)),
            "--cores",
            "2",
            "--configfile",
            "tiny.yaml",
            "--forcerun",
            "activations",
            check=False,
        )
    finally:
        for path, (data, mtime) in intact.items():
            path.parent.mkdir(parents=True, exist_ok=True)  # Snakemake removed the failed job's output and its folder
            path.write_bytes(data)
            os.utime(path, ns=(mtime, mtime))
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        f"error: {MODEL}/model/manifest.json: the model directory it names, "
        f"/nonexistent{ModelManifest.read(manifest).load_from}, does not exist; "
        "delete the manifest and rerun, which prepares the model again "
        "(details: logs/activations/smollm2-135m/MD/probe_test/chunk000.log)"
    ], result.stderr[-2000:]


# ----------------------------------------------------------------------------- bad configs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, repo_root):
    return copy_workflow(repo_root, tmp_path_factory.mktemp("pristine"))


def overlay(key: str, value) -> dict:
    """A config overlay setting one dotted key (Snakemake merges overlays into the default)."""
    *parents, last = key.split(".")
    node = {last: value}
    for part in reversed(parents):
        node = {part: node}
    return node


#: One case of each way a config fails before any job: the schema (an unknown key; h out of
#: its bounds), a check the schema cannot express (the prompt budget) and a model path.
#: Every kind is covered by tests/test_config.py::test_bad_values_name_their_key, which
#: calls validate_config, the function the workflow runs first.
WORKFLOW_BAD = [
    case
    for case in BAD
    if (case[0], case[1], str(case[2]))
    in {
        ("unknown key", "probe.improved.lr_rate", "0.001"),
        ("max_prompt_tokens too small", "prompts.max_prompt_tokens", "40"),
        ("h outside (0, 1)", "patching.h", "1.5"),
        ("model path missing", "models", str([{"id": "mine", "path": "/nonexistent/model"}])),
    }
]


@pytest.mark.parametrize("kind,key,value,message", WORKFLOW_BAD, ids=[f"{c[0]}: {c[1]}" for c in WORKFLOW_BAD])
def test_bad_config_stops_before_any_job(pristine, kind, key, value, message):
    (pristine / "bad.yaml").write_text(yaml.safe_dump(overlay(key, value)))
    result = run(pristine, "--cores", "2", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    # Snakemake's own notice that an overlay extends config/config.yaml, then our one line.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not line.startswith("Config file config/config.yaml is extended")
    ]
    assert (
        len(lines) == 1
        and lines[0].startswith("config error: ")
        and re.match(message, lines[0].removeprefix("config error: "))
    ), result.stderr
    assert not (pristine / "results").exists() and not (pristine / "logs").exists()


#: Config files Snakemake reads without complaint that the workflow refuses before planning,
#: and the line it prints (the file's absolute path first).
REFUSED_FILES = {
    "yte": (
        '__use_yte__: true\nseed: ?__import__("pathlib").Path("yte_ran").touch() or 1\n',
        r"bad\.yaml: __use_yte__: true makes Snakemake evaluate the file's expressions as Python code; "
        r"this workflow refuses such configs: write plain values",
    ),
    "repeated key": (
        "probe:\n  d_proj: 32\n  seed: 1\n  d_proj: 64\n",
        r"bad\.yaml: key 'd_proj' appears twice \(line 4\); allowed values: each key once per mapping",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_FILES))
def test_a_config_file_with_yte_or_a_repeated_key_is_refused_before_planning(pristine, case):
    """A YTE config's expressions are run by Snakemake itself when it reads the file, before
    this workflow's code (README, "Safety": the marker file appears); the workflow then
    refuses the file, so no job is planned from the values they computed."""
    text, message = REFUSED_FILES[case]
    (pristine / "bad.yaml").write_text(text)
    (pristine / "yte_ran").unlink(missing_ok=True)
    result = run(pristine, "-n", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert len(lines) == 1 and re.fullmatch(rf"config error: {re.escape(str(pristine))}/{message}", lines[0]), (
        result.stderr
    )
    assert "Job stats" not in result.stdout + result.stderr
    assert (pristine / "yte_ran").exists() == (case == "yte")
    assert not (pristine / "results").exists() and not (pristine / "logs").exists()
