import ast
import importlib.metadata
import re
import sys
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


def _imported_top_level_modules(paths) -> set[str]:
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return {module for module in modules if module not in sys.stdlib_module_names} - {"hespotex"}


def test_every_package_the_code_imports_is_a_declared_dependency():
    """What hespotex imports is in pyproject.toml (and so in envs/hespotex.yaml). The
    SpatialData exporter runs in the viewers' environment instead, whose test runs it."""
    exporter = REPO / "hespotex" / "outputs" / "spatialdata_export.py"
    package = [path for path in (REPO / "hespotex").rglob("*.py") if path != exporter]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(requirement) for requirement in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in _imported_top_level_modules(package)
        if not {_name(name) for name in providers.get(module, [])} & declared
    }
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
