"""The real Snakemake DAG, end to end, on a tiny config with the real embedded model.

The workflow is copied into a temporary directory, as a fresh clone would be, and run
through the `snakemake` command line (the Python API has no stable reference in 9.x).
"""

import os
import shutil

import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    TINY,
    copy_workflow,
    error_lines,
    job_counts,
    rewrite_first_prompt_tokens,
    run,
)

from minormech.shards import recorded_prompts

# The `workdir` and `finished` fixtures (the tiny config's whole DAG, run once per session
# and shared with tests/test_reliability.py) are in conftest.py.


def test_dag_runs_to_every_figure(workdir, finished):
    figures = workdir / "results" / "smollm2-135m" / "figures"
    for site in ("k", "v"):
        for number in range(1, 6):
            for suffix in (".pdf", ".png", ".csv"):
                assert (figures / f"fig{number}_{site}{suffix}").stat().st_size > 0
        table = pd.read_csv(figures / f"fig1_{site}.csv")
        assert sorted(table["task"].unique()) == ["LR", "MD"]
        assert sorted(table["layer"].unique()) == list(range(30))
        assert table["test_mse"].notna().all() and (table["test_mse"] > 0).all()
        assert (table["baseline_mse"] > 20).all()
        # the ridge readouts, beside every unfiltered probe, with their intervals
        for column in ("ridge_mean_mse", "ridge_last_mse"):
            assert table[column].notna().all() and (table[column] > 0).all()
            assert (table[f"{column}_ci_low"] <= table[column]).all()
    summary = (workdir / "results" / "smollm2-135m" / "summary.md").read_text()
    assert "ridge lowest (mean-pooled; last token)" in summary
    xi = pd.read_csv(figures / "fig2_k.csv")
    assert len(xi) == 30 * 192 and xi["xi"].abs().max() <= 191
    filtered = pd.read_csv(figures / "fig3_k.csv")
    assert set(filtered["variant"]) == {"ge0.5", "le0.5"}
    assert set(filtered.loc[filtered["variant"] == "ge0.5", "n_kept"]) <= set(range(1, 97))
    eq41 = pd.read_csv(figures / "fig3_k_eq41.csv")
    assert list(eq41["layer"]) == list(range(30)) and eq41["eq41_holds"].dtype == bool
    patching = pd.read_csv(figures / "fig5_k.csv")
    assert len(patching) == 8 * 2 * 3 and patching["rho"].between(0, 4).all()  # settings x layers x (xi, random, noop)
    for rule in (
        "prompts",
        "activations",
        "probe",
        "attribution",
        "rank_difference",
        "patching",
        "plot_fig5",
        "model",
        "summary",
        "head_views",
        "head_xi",
        "plot_heads",
    ):
        assert list((workdir / "logs" / rule).rglob("*.log")), f"no log for {rule}"


def test_head_views_make_their_figures(workdir, finished):
    """Head-level views (heads.enabled; knockouts of layer 29 only in the tiny config): 30 layers x 9
    query heads per task with I and its interval, attention rows of the top 2 heads over
    each prompt's examples, per-head xi of k and v (3 key/value heads), four figures."""
    model = workdir / "results" / "smollm2-135m"
    for task in ("LR", "MD"):
        table = pd.read_csv(model / "heads" / f"{task}.csv")
        assert len(table) == 30 * 9 and table["n_prompts"].eq(2).all()
        assert (
            table["logprob_increase"].notna().all()
            and (table["logprob_increase_ci_low"] <= table["logprob_increase_ci_high"]).all()
        )
        knocked = table["layer"].eq(29)  # heads.knockout_layers: [29]
        assert table.loc[knocked, "knockout_dlogp"].notna().all() and knocked.sum() == 9
        assert table.loc[~knocked, ["knockout_dlogp", "knockout_dcorrect"]].isna().all().all()
        attention = pd.read_csv(model / "heads" / f"{task}_attention.csv")
        assert attention["rank"].nunique() == 2 and attention["attention"].between(0, 1).all()
    xi = pd.read_csv(model / "heads" / "xi.csv")
    assert sorted(xi["site"].unique()) == ["k", "v"] and len(xi) == 2 * 30 * 3
    for figure in ("heads_increase", "heads_knockout", "heads_attention", "heads_xi"):
        for suffix in (".pdf", ".png", ".csv"):
            assert (model / "figures" / f"{figure}{suffix}").stat().st_size > 0
    correlations = pd.read_csv(model / "figures" / "heads_attention.csv")
    assert len(correlations) == 2 * 2 and {"spearman_before_query", "spearman_distance"} <= set(correlations)


def test_one_head_figure_is_its_own_target(workdir, finished):
    """Removing the per-head xi figure and asking for it reruns that plot only."""
    (workdir / "results/smollm2-135m/figures/heads_xi.pdf").unlink()
    counts = job_counts(
        run(workdir, "results/smollm2-135m/figures/heads_xi.pdf", "-n", "--configfile", "tiny.yaml").stdout
    )
    assert counts == {"plot_heads": 1}, counts
    run(workdir, "results/smollm2-135m/figures/heads_xi.pdf", "--cores", "1", "--configfile", "tiny.yaml")


def test_one_figure_plans_only_what_it_needs(finished):
    """Figure 1 of site k needs the unfiltered probes of both tasks, for the model and its
    random-init control (controls.random_init), and no attribution or patching."""
    one_figure, everything = finished
    assert (
        one_figure["probe"] == 2 * 2 and everything["probe"] == 2 * 2 * 2 + 2 * 2
    )  # model: (LR, MD) x (k, v) x (unfiltered, filtered); control: unfiltered
    assert one_figure["plot_fig1"] == 1 and everything["plot_fig1"] == 2
    assert (
        one_figure["activations"] == everything["activations"] == 2 * 2 * (2 + 1 + 1)
    )  # (model, control) x tasks x chunks (training, test, control-task prompts)
    assert one_figure["model"] == 2 and everything["summary"] == 1  # the model and its random-init control
    assert "attribution" not in one_figure and "patching" not in one_figure


def test_nothing_is_rerun_and_figure_script_change_reruns_only_figures(workdir, finished):
    assert "Nothing to be done" in run(workdir, "-n", "--configfile", "tiny.yaml").stdout
    (workdir / "workflow" / "scripts" / "plot_fig1_probes.py").touch()
    counts = job_counts(run(workdir, "-n", "--configfile", "tiny.yaml").stdout)
    assert set(counts) == {"plot_fig1", "all"}, counts


def test_probe_setting_change_reruns_only_probes_and_figures(workdir, finished):
    changed = {**TINY, "probe": {**TINY["probe"], "improved": {**TINY["probe"]["improved"], "lr": 2.0e-3}}}
    (workdir / "changed.yaml").write_text(yaml.safe_dump(changed))
    counts = job_counts(run(workdir, "-n", "--configfile", "changed.yaml").stdout)
    assert set(counts) <= {"probe", "plot_fig1", "plot_fig3", "plot_fig4", "summary", "all"}, counts
    assert counts["probe"] == 8 + 4


def test_config_with_keys_in_another_order_reruns_nothing(workdir, finished):
    """Params hold whole config sections; a config whose keys come in another order (as
    yaml.safe_dump or an editor may write them) must not rerun any job."""

    def reversed_keys(node):
        if isinstance(node, dict):
            return {key: reversed_keys(node[key]) for key in reversed(list(node))}
        return node

    merged = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    for key, value in TINY.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    (workdir / "reordered.yaml").write_text(yaml.safe_dump(reversed_keys(merged), sort_keys=False))
    plans = [
        run(workdir, "-n", "--configfile", "tiny.yaml", *extra).stdout
        for extra in ([], ["--configfile", "reordered.yaml"])
    ]
    # Other tests in this module touch scripts; whatever the plan is, the order of keys must not change it.
    counts = [job_counts(plan) if "Job stats:" in plan else {} for plan in plans]
    assert counts[0] == counts[1], counts
    assert "Params have changed" not in plans[1]


def test_bad_config_stops_before_any_job_with_one_line(workdir):
    (workdir / "bad.yaml").write_text("sites: [k, z]\n")
    result = run(workdir, "-n", "--configfile", "tiny.yaml", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    assert (
        result.stderr.strip() == "config error: sites[1]: 'z' is not allowed; allowed values: "
        "['q', 'k', 'v', 'o', 'mlp', 'resid_pre', 'resid_mid', 'resid_post']"
    )
    assert "Job stats" not in result.stdout


def test_lint_is_clean(workdir):
    result = run(workdir, "--lint", check=False)
    assert result.returncode == 0 and "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_report_renders_every_figure(workdir, finished):
    run(workdir, "--configfile", "tiny.yaml", "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    for number in range(1, 6):
        assert f"fig{number}_k.png" in html and f"fig{number}_v.png" in html
    for figure in ("heads_increase", "heads_knockout", "heads_attention", "heads_xi"):
        assert f"{figure}.png" in html
    # The summary is inlined (its caption includes summary.rst), tables as HTML, headline first.
    summary = (workdir / "results" / "smollm2-135m" / "summary.md").read_text()
    lr_row = next(line for line in summary.splitlines() if line.startswith("| LR |"))
    test_mse = lr_row.split(" | ")[2]
    assert f"<td>{test_mse}</td>" in html, test_mse
    assert "Task accuracy (greedy answers to the unpatched patching prompts)" in html
    assert "minormech: minor mathematical mechanisms in large language models" in html  # the workflow description


def test_truncated_shard_gives_one_clear_line(workdir, finished):
    """A damaged shard stops the job that reads it with a line naming the file and what to do;
    nothing downstream is computed from it. The shard and the probe table are restored
    afterwards: the tiny run is shared by later test modules."""
    shard = workdir / "results" / "smollm2-135m" / "activations" / "LR" / "probe_train" / "chunk000.safetensors"
    intact = shard.read_bytes()
    target = "results/smollm2-135m/probes/LR/k/unfiltered.csv"
    try:
        shard.write_bytes(intact[: len(intact) // 3])
        result = run(workdir, target, "--cores", "2", "--configfile", "tiny.yaml", "--forcerun", "probe", check=False)
        assert result.returncode != 0
        lines = error_lines(result.stderr)
        assert (
            len(lines) == 1
            and "chunk000.safetensors: not a readable safetensors shard" in lines[0]
            and "delete it and rerun" in lines[0]
        ), result.stderr[-2000:]
        assert not (workdir / target).exists()  # Snakemake removed the failed job's output
    finally:
        shard.write_bytes(intact)
        run(workdir, target, "--cores", "2", "--configfile", "tiny.yaml")


@pytest.mark.slow  # 117 s on 2 cores; tests/test_stream.py checks the same equality on the modules
def test_stream_mode_matches_shard_mode_through_the_workflow(tmp_path, workdir, finished):
    """probe.source: stream on a copy of the finished tiny run (results hard-linked, probe
    results and what is drawn from them removed): only the stream jobs and the probe figures run, no activation shard
    is read, and every (task, site, variant, layer) test MSE matches shard mode's. Shards
    hold float16 and stream mode the model's float32, so they agree to float16 rounding:
    measured at most 3.2e-4 of the baseline MSE for the probes (bound 1e-3), 7.8e-2 for
    the ridge readouts (bound 0.1)."""
    copy = tmp_path / "stream"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("results", "logs", ".snakemake"))
    shutil.copytree(workdir / "results", copy / "results", copy_function=os.link)
    for model in ("smollm2-135m", "smollm2-135m-random-init"):
        shutil.rmtree(copy / "results" / model / "probes")
        shutil.rmtree(copy / "results" / model / "activations")  # stream mode must not need them
    # And what is drawn from the probes: Snakemake does not remake a missing file whose
    # consumers are present and newer than their other inputs.
    analysed = copy / "results" / "smollm2-135m"
    for made in [*analysed.glob("figures/fig[134]_*"), *analysed.glob("summary.*")]:
        made.unlink()
    (copy / "stream.yaml").write_text(yaml.safe_dump({**TINY, "probe": {**TINY["probe"], "source": "stream"}}))
    plan = run(copy, "-n", "--configfile", "stream.yaml")
    # A stream job per (model, task); rule probe puts each (task, site, kind)'s files in place.
    expected = {
        "stream_probes": 4,
        "probe": 2 * 2 * 2 + 2 * 2,
        "plot_fig1": 2,
        "plot_fig3": 2,
        "plot_fig4": 2,
        "summary": 1,
        "all": 1,
    }
    assert job_counts(plan.stdout) == expected
    run(copy, "--cores", "2", "--configfile", "stream.yaml")
    for task in ("LR", "MD"):
        for site in ("k", "v"):
            for kind in ("unfiltered", "filtered"):
                relative = f"results/smollm2-135m/probes/{task}/{site}/{kind}.csv"
                shards, stream = pd.read_csv(workdir / relative), pd.read_csv(copy / relative)
                assert list(stream["variant"]) == list(shards["variant"]) and list(stream["layer"]) == list(
                    shards["layer"]
                )
                columns = ["test_mse", "gain"]
                if kind == "unfiltered":
                    columns += ["control_mse", "selectivity"]  # the controls too
                scale = shards["baseline_mse"]  # differences can be near zero: compare on the MSE scale
                difference = (stream[columns] - shards[columns]).abs().div(scale, axis=0).max().max()
                assert difference <= 1e-3, f"{relative}: {difference:.2e}"
                if kind == "unfiltered":
                    # The ridge readouts fit 192-512 features on 48 prompts, ill-conditioned at their
                    # smallest penalties, so float16 rounding moves them more: measured at most 7.8e-2
                    # of the baseline MSE (MD v, last token, layer 17: 28.4 against 26.5).
                    ridge = ["ridge_mean_mse", "ridge_last_mse"]
                    difference = (stream[ridge] - shards[ridge]).abs().div(scale, axis=0).max().max()
                    assert difference <= 0.1, f"{relative} ridge: {difference:.2e}"
    assert "stream" in (copy / "logs" / "stream_probes" / "smollm2-135m" / "LR.log").read_text()


def test_expected_gradients_record_and_check_the_prompts_of_their_baselines(tmp_path, workdir, finished):
    """attribution.method: expected_gradients on a copy of the finished tiny run: the map
    records the probe-test prompt files of its baseline shards beside its own prompts, and
    once one of those files holds other token sequences than its shards were made from,
    the job stops with one line naming the stale shard."""
    copy = tmp_path / "gradients"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("results", "logs", ".snakemake"))
    shutil.copytree(workdir / "results", copy / "results", copy_function=os.link)
    # One site and one sample per prompt: the job costs 501 s at the tiny config's two sites and 8 samples.
    gradients = {"method": "expected_gradients", "samples": 1, "baseline_prompts": 2}
    (copy / "eg.yaml").write_text(yaml.safe_dump({**TINY, "sites": ["k"], "attribution": gradients}))
    prompts = "results/smollm2-135m/prompts"
    target = "results/smollm2-135m/attribution/LR.safetensors"
    run(copy, target, "--cores", "2", "--configfile", "eg.yaml", "--forcerun", "attribution")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(copy)
        assert sorted(recorded_prompts(target)) == [
            f"{prompts}/LR/attribution.jsonl",
            f"{prompts}/LR/probe_test.jsonl",
            f"{prompts}/MD/probe_test.jsonl",
        ]
    rewrite_first_prompt_tokens(copy / prompts / "MD/probe_test.jsonl")
    failed = run(copy, target, "--cores", "2", "--configfile", "eg.yaml", "--forcerun", "attribution", check=False)
    assert error_lines(failed.stderr) == [
        "error: results/smollm2-135m/activations/MD/probe_test/chunk000.safetensors: made from other prompts than "
        "the prompt file holds; the shard is stale: delete it and rerun "
        "(details: logs/attribution/smollm2-135m/LR.log)"
    ], failed.stderr[-3000:]


@pytest.mark.slow
def test_default_config_end_to_end(tmp_path, repo_root):
    """The README's main job: the embedded default config through all five figures
    (about 11 minutes on 2 cores; run with `pytest -m slow`)."""
    copy_workflow(repo_root, tmp_path)
    run(tmp_path, "--cores", "2")
    for number in range(1, 6):
        assert (tmp_path / "results" / "smollm2-135m" / "figures" / f"fig{number}_k.pdf").stat().st_size > 0


@pytest.mark.slow
def test_llama_3b_shaped_cpu_config_end_to_end(tmp_path, repo_root):
    """config/llama-3.2-3b-shaped-cpu.yaml: the paper's structure on Llama-3.2-3B's shapes
    and the Llama 3 tokenizer, every figure and the summary (measured 42 minutes and 19.5 GB
    on 2 cores; docs/PERFORMANCE.md; run with `pytest -m slow`)."""
    copy_workflow(repo_root, tmp_path)
    run(tmp_path, "--cores", "2", "--configfile", "config/llama-3.2-3b-shaped-cpu.yaml")
    model = tmp_path / "results" / "llama-3.2-3b-shaped"
    for number in range(1, 6):
        for site in ("q", "k", "v", "o", "mlp"):
            assert (model / "figures" / f"fig{number}_{site}.pdf").stat().st_size > 0
    for name in ("heads_increase", "heads_knockout", "heads_attention", "heads_xi"):
        assert (model / "figures" / f"{name}.pdf").stat().st_size > 0
    assert "## Site mlp" in (model / "summary.md").read_text()
    heads = pd.read_csv(model / "heads" / "LR.csv")
    assert len(heads) == 28 * 24 and heads.loc[heads["layer"] == 27, "knockout_dlogp"].notna().all()
