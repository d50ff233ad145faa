"""The package's layers, checked on its source: no import goes upward, and none goes round.

Layers, bottom to top: the root modules (errors, units, encoder_specs, config, paths,
stage_table, metrics), io, encoder, network, stages, outputs, viewer, pipeline, training,
evaluation, demo, cli. A module may import its own layer and those below it;
lazy imports inside functions count too, since they run all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

import hespotex

PACKAGE = REPO / "hespotex"
LAYERS = (
    "",
    "io",
    "encoder",
    "network",
    "stages",
    "outputs",
    "viewer",
    "pipeline",
    "training",
    "evaluation",
    "demo",
    "cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == "hespotex.__main__":  # `python -m hespotex`: the command line
        return LAYERS.index("cli")
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""
    return LAYERS.index(sub)


def imported_modules(module: str) -> set[str]:
    """The hespotex modules ``module`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hespotex"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hespotex"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    found.discard(module)
    return found


def test_the_layer_map_knows_every_module():
    assert "hespotex.stages.features" in MODULES and "hespotex.cli.main" in MODULES
    assert layer("hespotex.config") == 0 and layer("hespotex") == 0
    assert layer("hespotex.io") == 1 and layer("hespotex.cli.main") == len(LAYERS) - 1
    assert layer("hespotex.stage_table") == 0 and layer("hespotex.pipeline.engine") == 7
    unknown = [
        name for name in MODULES if name.count(".") >= 2 and name.split(".")[1] not in LAYERS
    ]
    assert not unknown


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    upward = sorted(target for target in imported_modules(module) if layer(target) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)] or 'root'}) imports {upward}"


def test_the_checker_catches_an_upward_import(monkeypatch, tmp_path):
    rogue = tmp_path / "rogue.py"
    rogue.write_text("def f():\n    from hespotex.cli.main import main\n")
    monkeypatch.setitem(MODULES, "hespotex.io.rogue", rogue)
    assert "hespotex.cli.main" in imported_modules("hespotex.io.rogue")
    assert layer("hespotex.cli.main") > layer("hespotex.io.rogue")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module → modules it imports) as a path, or None."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*trail, module, target]
            if target not in state and (cycle := visit(target, [*trail, module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


def test_no_import_cycle():
    graph = {module: imported_modules(module) & MODULES.keys() for module in MODULES}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("sub", [name for name in LAYERS if name])
def test_each_layer_says_what_it_holds_and_may_import(sub):
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
    assert doc and "import" in doc.lower(), f"hespotex/{sub}/__init__.py needs a docstring"
    assert len(doc.splitlines()) <= 5


def test_the_package_docstring_lists_the_layers():
    for sub in LAYERS[1:]:
        assert f"``{sub}``" in hespotex.__doc__


def test_every_stage_of_the_table_has_a_sub_command_a_run_and_its_files():
    from hespotex.cli.main import build_parser
    from hespotex.paths import SlidePaths
    from hespotex.pipeline.engine import STAGE_RUNS
    from hespotex.stage_table import JOBS, STAGE_TABLE, STAGES

    sub_commands = build_parser()._subparsers._group_actions[0].choices
    assert all(stage in sub_commands for stage in STAGES)
    assert tuple(STAGE_RUNS) == STAGES
    assert sum(JOBS.values(), ()) == STAGES, "the workflow's jobs run every stage once, in order"
    for stage in STAGE_TABLE:
        for name in (*stage.reads, *stage.writes):
            assert name in ("slide", "checkpoint") or hasattr(SlidePaths, name), (stage, name)
