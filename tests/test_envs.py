"""The conda environment every rule names (envs/minormech.yaml, for `snakemake --sdm conda`).

Snakemake creates it from a copy of the file under .snakemake/conda/ (or under
--conda-prefix), and one environment serves every checkout that shares that prefix. So the
file pins the third-party packages of pyproject.toml by name only, and rule scripts get the
minormech package from the workflow that runs them, whatever Python runs them.
"""

import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from workflow_helpers import copy_workflow, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, where pytest brings tomli instead
    import tomli as tomllib

#: Jobs import Snakemake from the Snakemake that runs them (its script preamble puts that
#: installation on the job's path), so the environment does not install it.
NOT_IN_THE_ENVIRONMENT = {"snakemake"}


def conda_pip_section(env_file: Path) -> list[str]:
    """The pip entries of a conda environment file, as conda hands them to pip."""
    dependencies = yaml.safe_load(env_file.read_text())["dependencies"]
    return next(entry["pip"] for entry in dependencies if isinstance(entry, dict) and "pip" in entry)


def test_every_pip_entry_is_a_pinned_package_name(repo_root):
    """A path (`-e ..`, `.`) would resolve against Snakemake's copy of the file, and a URL
    or an option line would not be a pin: each entry is `name==version`, nothing else."""
    entries = conda_pip_section(repo_root / "envs" / "minormech.yaml")
    assert entries
    for entry in entries:
        assert not entry.lstrip().startswith(("-", ".", "/", "~")), entry
        requirement = Requirement(entry)
        assert requirement.url is None and not requirement.extras and requirement.marker is None, entry
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and "*" not in specifier.version, entry


def pins(entries: list[str]) -> dict[str, str]:
    """{normalised name: version specifier} of requirement strings."""
    return {Requirement(entry).name.lower().replace("_", "-"): str(Requirement(entry).specifier) for entry in entries}


def test_environment_pins_what_pyproject_pins(repo_root):
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    pinned = pins(pyproject["project"]["dependencies"])
    environment = pins(conda_pip_section(repo_root / "envs" / "minormech.yaml"))
    assert environment == {name: pin for name, pin in pinned.items() if name not in NOT_IN_THE_ENVIRONMENT}
    assert "minormech" not in environment


def test_a_job_in_any_python_imports_the_workflows_own_package(tmp_path, repo_root):
    """A job started by the workflow, in a Python that has no minormech installed (`-S`: no
    site-packages, as in a conda environment without it) and another working directory,
    imports minormech from the copy of the workflow that runs it, not from this checkout."""
    workflow = copy_workflow(repo_root, tmp_path / "clone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    find_plan = "import importlib.util; print(importlib.util.find_spec('minormech.plan').origin)"
    (workflow / "where.smk").write_text(
        'include: "Snakefile"\n\n\n'
        "rule where_is_minormech:\n"
        "    output:\n"
        '        "where.txt",\n'
        "    params:\n"
        f"        python={sys.executable!r},\n"
        f"        elsewhere={str(elsewhere)!r},\n"
        f"        code={find_plan!r},\n"
        "    shell:\n"
        '        "out=$PWD/{output}; cd {params.elsewhere} && {params.python} -S -c {params.code:q} > $out"\n'
    )
    run(workflow, "-s", "where.smk", "--cores", "1", "where.txt")
    assert Path((workflow / "where.txt").read_text().strip()) == workflow / "minormech" / "plan.py"
