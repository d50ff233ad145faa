import re
import tomllib

import yaml
from conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_environment_lists_the_same_packages_as_pyproject():
    environment = yaml.safe_load((REPO / "envs" / "hespotex.yaml").read_text())
    pip_section = next(item for item in environment["dependencies"] if isinstance(item, dict))
    conda_requirements = [entry for entry in pip_section["pip"] if not entry.startswith("-e")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(conda_requirements) == sorted(project["dependencies"])
    assert {_name(r) for r in conda_requirements} == {_name(r) for r in project["dependencies"]}
    assert "-e .." in pip_section["pip"], "the env must install hespotex itself"
    assert any(str(item).startswith("python=3.11") for item in environment["dependencies"])
