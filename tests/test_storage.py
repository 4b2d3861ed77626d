"""The storage plan: shard bytes per config and each model's probe source (probe.source)."""

import copy

import pytest
import yaml
from workflow_helpers import copy_workflow, job_counts, run

from minormech.config import model_specs
from minormech.storage import format_plan, free_disk_problem, plan_storage, planned_bytes


@pytest.fixture(scope="module")
def configs(repo_root):
    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    merged = {}
    for name in ("llama-3.2-3b", "llama-3.1-8b"):
        config = copy.deepcopy(default)
        config.update(yaml.safe_load((repo_root / "config" / f"{name}.yaml").read_text()))
        merged[name] = config
    return {"default": default, **merged}


def _plan(config):
    (plan,) = plan_storage(config, {spec.id: spec for spec in model_specs(config)})
    return plan


def test_paper_configs_stream_their_probes_and_write_no_shards(configs):
    for name, terabytes in (("llama-3.2-3b", 21.0), ("llama-3.1-8b", 30.5)):
        plan = _plan(configs[name])
        # 2 tasks x 26000 probe prompts (training, test, control task) x 640 tokens x layers
        # x (sum of widths) x 2 bytes (README table)
        assert plan.shard_mode_bytes / 1e12 == pytest.approx(terabytes, abs=0.05)
        assert plan.source == "stream" and "exceed storage.limit_gb=1000" in plan.reason
        assert plan.written_bytes(test_shards_needed=False) == 0
        # expected-gradients attribution still reads probe-test shards: only those are written
        test_bytes = plan.written_bytes(test_shards_needed=True)
        assert 0 < test_bytes < plan.shard_mode_bytes / 5


def test_auto_keeps_shards_under_the_limit_and_explicit_sources_win(configs):
    default = _plan(configs["default"])
    assert default.source == "shards" and 0.5e9 < default.shard_mode_bytes < 1e9  # site k, 2 tasks
    assert default.written_bytes(False) == default.shard_mode_bytes
    small_limit = copy.deepcopy(configs["default"])
    small_limit["storage"]["limit_gb"] = 0.5
    assert _plan(small_limit).source == "stream"
    for source in ("shards", "stream"):
        forced = copy.deepcopy(configs["llama-3.2-3b"])
        forced["probe"]["source"] = source
        assert _plan(forced).source == source and _plan(forced).reason == f"probe.source: {source}"


def test_paper_config_dry_run_prints_the_plan_and_plans_stream_jobs(tmp_path, repo_root):
    work = copy_workflow(repo_root, tmp_path / "work")
    result = run(work, "-n", "--configfile", "config/llama-3.2-3b.yaml")
    assert "llama-3.2-3b             site k      1,908.4 GB in shard mode" in result.stderr
    assert "llama-3.2-3b-random-init site k      1,908.4 GB in shard mode" in result.stderr
    assert (
        "llama-3.2-3b             probes from stream (probe.source: auto, "
        "shards would exceed storage.limit_gb=1000): writes 0.0 GB of shards" in result.stderr
    )
    assert "total written 0.0 GB (storage.limit_gb=1000)" in result.stderr
    counts = job_counts(result.stdout)
    # One stream job per (model, task) for the model and its random-init control; rule probe
    # only puts each (task, site, kind)'s files in place: 2 tasks x 5 sites x (2 kinds + 1).
    assert counts["stream_probes"] == 2 * 2 and "activations" not in counts and counts["probe"] == 2 * 5 * 3
    assert counts["model"] == 2 and counts["download_model"] == 1  # the model (from the hub) and its control

    (work / "shards.yaml").write_text(yaml.safe_dump({"probe": {"source": "shards"}}))
    refused = run(work, "-n", "--configfile", "config/llama-3.2-3b.yaml", "shards.yaml", check=False)
    assert refused.returncode == 1
    assert (
        "storage error: the configured shards need about 41,985 GB, more than storage.limit_gb=1000; "
        "set probe.source: stream (or auto)" in refused.stderr
    )


def test_auto_counts_the_shards_of_every_model_against_one_limit(configs):
    """Models are planned in config order: the second would fit the limit alone (4.5 GB of
    5) but not beside the first's 0.9 GB, so it streams and the run stays under the limit."""
    config = copy.deepcopy(configs["default"])
    config["models"] = [{"id": "smollm2-135m"}, {"id": "llama-3.2-3b"}]
    config["storage"]["limit_gb"] = 5.0
    first, second = plan_storage(config, {spec.id: spec for spec in model_specs(config)})
    assert first.source == "shards" and second.source == "stream"
    assert second.shard_mode_bytes < 5e9 < first.shard_mode_bytes + second.shard_mode_bytes
    assert first.written_bytes(False) + second.written_bytes(False) < 5e9


def test_a_model_of_unknown_size_is_planned_as_unknown_never_as_zero(configs):
    """A hub model whose config.json is not in the model cache has no shard size before its
    download: the plan names it as unknown beside the known total, and the storage checks
    bound only what is known."""
    config = copy.deepcopy(configs["default"])
    config["model_cache"] = "/nonexistent/model-cache"
    config["models"] = [{"id": "smollm2-135m"}, {"id": "mine", "hub": "Qwen/Qwen2.5-0.5B"}]
    config["layers"] = [0, 1]
    known, unknown = plan_storage(config, {spec.id: spec for spec in model_specs(config)})
    assert unknown.shard_mode_bytes is None and unknown.written_bytes(False) is None
    assert planned_bytes([known, unknown], False) == (known.written_bytes(False), ["mine"])
    printed = format_plan([known, unknown], config)
    assert (
        "mine             probes from shards (probe.source: auto, size unknown until its config.json is downloaded; "
        "set probe.source: stream to be sure): writes an unknown amount of shards" in printed
    )
    assert "mine             site k         unknown in shard mode" in printed
    assert f"total written {known.written_bytes(False) / 1e9:,.1f} GB plus unknown for mine" in printed


def test_the_free_disk_check_says_small_sizes_in_megabytes():
    """What a real run prints when its shards do not fit the free space: sizes below 1 GB
    in MB, never "about 0 GB ... only 0 GB free"."""
    assert free_disk_problem(300_000_000, 400_000_000) is None
    assert free_disk_problem(312_400_000, 48_000_000) == (
        "storage error: about 312 MB of shards still to write but only 48 MB free under results/; "
        "free space or set storage.check_free_disk: false"
    )
    assert free_disk_problem(1_908_400_000_000, 250_000_000_000).startswith(
        "storage error: about 1,908.4 GB of shards still to write but only 250.0 GB free"
    )
