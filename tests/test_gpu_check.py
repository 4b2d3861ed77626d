"""benchmarks/gpu-check, the prepared GPU check, in its CPU variant on a tiny stand-in of
Llama-3.2-3B's architecture, so that the script a GPU session runs first cannot rot."""

import subprocess
import sys


def test_gpu_check_runs_on_the_cpu_and_prints_its_table(repo_root):
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--prompts", "8"]
    result = subprocess.run([*command, "--max-prompt-tokens", "60"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "gpu-check: tiny llama-3.2-3b-shaped, bfloat16 on cpu, 8 prompts"
    stages = [line.split("  ")[0].strip() for line in lines[2:-1]]
    assert stages == [
        "draw",
        "caching",
        "stream (probe batch 8)",
        "stream (probe batch 1)",
        "stacked probes (k)",
        "attribution (saliency)",
        "no-op patch",
    ]
    assert "'identical_to_rerun': True" in lines[-2]
