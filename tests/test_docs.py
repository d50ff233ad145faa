"""Every command in the README, docs/ and benchmarks/RESULTS.md is one its tool accepts.

The fenced ``bash``/``sh``/``shell``/``console`` blocks are read line by line (continuation
lines joined, comments dropped, ``A && B`` split, ``VAR=value`` and ``time`` prefixes taken
off), and each command is checked against the tool it calls, without running it:

- ``hespotex SUB ...``: the sub-command is one ``hespotex --help`` lists, every ``--option``
  is in ``hespotex SUB --help``, and where the command line's own parser can be built
  (``hespotex.cli.main.build_parser``) the whole line parses with it, so an argument in the
  wrong place (a slide id after ``--stages``) fails too;
- ``snakemake ...``: every flag is in ``snakemake --help``, and the files given to
  ``--configfile``, ``--profile`` and ``--snakefile`` exist in the repository (a name starting
  with ``my_`` stands for the reader's own file);
- ``make TARGET``: the Makefile has the target;
- ``python benchmarks/X.py ...`` and ``*.sh``: the script exists, and each ``--option`` is
  named in the script's source (its ``add_argument`` calls);
- any other program must be one of those listed as not checked (``source``, ``rm``, ...).

Besides: every ``test_x.py::test_name`` the docs cite exists in ``tests/``, every repository
path they quote in backticks exists, every relative link resolves, the table of stages in
docs/architecture.md is the command line's, and the README stays a page. The self-tests at the
end feed deliberately wrong lines through the same checks. Nothing of the package is imported
but the command line's parser (and the tests fall back on ``--help`` without it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmarks/HISTORY.md is left out: it keeps old figures with the commands of their time.
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks/RESULTS.md"]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
SEPARATORS = {"&&", "||", ";", "|", "&"}
WRAPPERS = {"time", "/usr/bin/time", "env", "nohup"}
NOT_CHECKED = {
    "source", ".", "cd", "rm", "mkdir", "cp", "mv", "ls", "cat", "echo", "export", "git",
    "tmux", "screen", "pip", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "ruff",
}  # fmt: skip
REPO_PATH = re.compile(r"^(hespotex|benchmarks|tests|config|workflow|docs|envs)/[\w./-]*$")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
CITED_TEST = re.compile(r"\b(test_\w+\.py)::(\w+)")
CITED_TEST_FILE = re.compile(r"(?<![\w/])(?:tests/)?(test_\w+\.py)\b")


# --- the tools' own answers, asked once -------------------------------------------------


def _tool(name: str) -> str:
    """The venv's copy of a console script (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed beside {sys.executable} nor on PATH")
    return found


@functools.cache
def help_text(*command: str) -> str:
    done = subprocess.run(
        [_tool(command[0]), *command[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},  # one line per sub-command's help
    )
    return done.stdout + done.stderr


@functools.cache
def hespotex_subcommands() -> frozenset[str]:
    choices = re.search(r"\{([\w,-]+)\}", help_text("hespotex"))
    assert choices, "`hespotex --help` lists no sub-commands"
    return frozenset(choices.group(1).split(","))


@functools.cache
def hespotex_parser():
    """The command line's own parser, where the entry point still builds it by name."""
    try:
        from hespotex.cli.main import build_parser
    except ImportError:
        return None
    return build_parser()


@functools.cache
def snakemake_options() -> frozenset[str]:
    return frozenset(OPTION.findall(help_text("snakemake")))


@functools.cache
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s#:=$][^:=]*?)\s*::?(?!=)", line)
        if rule:
            targets.update(name for name in rule.group(1).split() if "$" not in name)
    return frozenset(targets)


# --- reading the docs --------------------------------------------------------------------


def shell_commands(text: str):
    """(line number, argv) of every command in the fenced shell blocks of ``text``."""
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_BLOCKS:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", None
        for offset, line in enumerate(block.group(2).splitlines()):
            line = line.strip()  # blocks indented inside a list item
            if block.group(1) == "console" and not pending:
                if not line.startswith("$ "):
                    continue  # the output shown beside a prompt
                line = line[2:]
            start = first + offset if start is None else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            for argv in split_commands(pending + line):
                yield start, argv
            pending, start = "", None


def split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [strip_prefixes(command) for command in commands if command]


def strip_prefixes(argv: list[str]) -> list[str]:
    """``OMP_NUM_THREADS=1 /usr/bin/time -v hespotex ...`` → ``hespotex ...``."""
    while argv:
        if re.match(r"^[A-Za-z_]\w*=", argv[0]):
            argv = argv[1:]
        elif argv[0] in WRAPPERS:
            argv = argv[1:]
            while argv and argv[0].startswith("-"):
                argv = argv[1:]
        else:
            break
    return argv


# --- the checks ----------------------------------------------------------------------------


def check_command(argv: list[str]) -> list[str]:
    if not argv:
        return []
    program, args = argv[0], argv[1:]
    name = Path(program).name
    if name == "hespotex":
        return check_hespotex(args)
    if name == "snakemake":
        return check_snakemake(args)
    if name == "make":
        return check_make(args)
    if name in {"python", "python3"}:
        return check_python(args)
    if name == "pytest":
        return check_paths([arg.split("::")[0] for arg in args if "/" in arg or ".py" in arg])
    if program.endswith(".sh"):
        return check_paths([program])
    if name in NOT_CHECKED:
        return []
    return [f"`{program}`: not a program these docs are checked for (add a check or list it)"]


def check_hespotex(args: list[str]) -> list[str]:
    args = [arg.strip("[]") for arg in args if arg.strip("[]")]
    words = [arg for arg in args if not arg.startswith("-")]
    if not words:
        return ["`hespotex` without a sub-command"]
    sub = words[0]
    if sub not in hespotex_subcommands():
        return [f"`hespotex {sub}`: no such sub-command (hespotex --help lists them)"]
    command = [sub]
    nested = re.search(r"\{([\w,-]+)\}", help_text("hespotex", sub))
    if nested and len(words) > 1 and words[1] in nested.group(1).split(","):
        command.append(words[1])  # `hespotex sheet idc ...`: the nested command's options
    known = set(OPTION.findall(help_text("hespotex", *command))) | {"-v", "--verbose"}
    problems = [
        f"`hespotex {' '.join(command)} {option}`: no such option "
        f"(hespotex {' '.join(command)} --help)"
        for option in (arg.split("=")[0] for arg in args if arg.startswith("-"))
        if option not in known
    ]
    parser = hespotex_parser()
    if parser is None or problems:
        return problems
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):
            parser.parse_args(args)
    except SystemExit:
        problems.append(f"`hespotex {' '.join(args)}` does not parse: {refusal.getvalue().strip()}")
    return problems


def check_snakemake(args: list[str]) -> list[str]:
    problems = []
    for index, arg in enumerate(args):
        if not arg.startswith("-") or re.fullmatch(r"-\d+", arg):
            continue
        option = arg.split("=")[0]
        if option not in snakemake_options():
            problems.append(f"`snakemake {option}`: no such option (snakemake --help)")
        elif option in {"--configfile", "--configfiles", "--profile", "--snakefile", "-s"}:
            values = [arg.split("=", 1)[1]] if "=" in arg else []
            for value in args[index + 1 :] if not values else []:
                if value.startswith("-"):
                    break
                values.append(value)
            problems += check_paths([v for v in values if not Path(v).name.startswith("my_")])
    return problems


def check_make(args: list[str]) -> list[str]:
    targets = [arg for arg in args if not arg.startswith("-") and "=" not in arg]
    return [f"`make {target}`: the Makefile has no such target" for target in targets
            if target not in make_targets()]  # fmt: skip


def check_python(args: list[str]) -> list[str]:
    if args[:2] == ["-m", "hespotex"]:
        return check_hespotex(args[2:])
    if args[:1] == ["-m"]:
        return [] if args[1:2] in (["pytest"], ["pip"]) else [f"`python -m {args[1]}`: unchecked"]
    if not args or not args[0].endswith(".py"):
        return ["`python` without a script"]
    script = REPO / args[0]
    if not script.is_file():
        return [f"`{args[0]}` does not exist"]
    source = script.read_text()
    return [
        f"`{args[0]} {option}`: the script names no such option"
        for option in (arg.split("=")[0] for arg in args[1:] if arg.startswith("--"))
        if not any(f'"{name}"' in source or f"'{name}'" in source for name in spellings(option))
    ]


def spellings(option: str) -> list[str]:
    """How a script may name ``option``: itself, or ``--x`` for ``--no-x``
    (argparse.BooleanOptionalAction)."""
    return [option, "--" + option[5:]] if option.startswith("--no-") else [option]


def check_paths(paths: list[str]) -> list[str]:
    return [f"`{path}` does not exist in the repository" for path in paths
            if not (REPO / path).exists()]  # fmt: skip


def without_fences(text: str) -> str:
    return FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def reference_problems(text: str, folder: Path) -> list[str]:
    """Cited tests, quoted repository paths and relative links that do not exist."""
    problems = []
    tests = {path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py")}
    for file, name in CITED_TEST.findall(text):
        if file in tests and not re.search(
            rf"^(async )?def {re.escape(name)}\(", tests[file], re.M
        ):
            problems.append(f"`{file}::{name}`: no such test in tests/{file}")
    for file in sorted(set(CITED_TEST_FILE.findall(text))):
        if file not in tests:
            problems.append(f"`{file}`: no such test file in tests/")
    prose = without_fences(text)
    for quoted in re.findall(r"`([^`\n]+)`", prose):
        path = quoted.split("::")[0].rstrip(".,;:")
        if REPO_PATH.match(path) and not (REPO / path).exists():
            problems.append(f"`{path}` does not exist in the repository")
    for link in re.findall(r"\]\(([^)\s]+)\)", prose):
        target = link.split("#")[0]
        if target and not re.match(r"^[a-z]+:", target) and not (folder / target).exists():
            problems.append(f"link `{link}` does not resolve")
    return problems


def problems_in(text: str, folder: Path = REPO) -> list[str]:
    problems = [
        f"line {line}: {problem}"
        for line, argv in shell_commands(text)
        for problem in check_command(argv)
    ]
    return problems + reference_problems(text, folder)


# --- the docs as they are ------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_command_and_reference_in_the_docs_holds(doc):
    problems = problems_in(doc.read_text(), doc.parent)
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_docs_hold_commands_of_each_kind_the_checks_cover():
    """The checks above are not vacuous: the docs do call each tool they check."""
    programs = {
        Path(argv[0]).name for doc in DOCS for _, argv in shell_commands(doc.read_text()) if argv
    }
    assert {"hespotex", "snakemake", "make", "python"} <= programs, programs


def test_the_stage_table_in_architecture_md_is_the_command_lines():
    """docs/architecture.md's table of stages holds every stage, in order (as `hespotex run
    --stages` takes them), each with the help line the command line gives it: both come from
    the package's one table of stages."""
    stages = re.search(r"--stages \{([\w,-]+)\}", help_text("hespotex", "run"))
    assert stages, "`hespotex run --help` names no stages"
    helped = dict(re.findall(r"^ {4}([\w-]+) {2,}(\S.*)$", help_text("hespotex"), re.MULTILINE))
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| [\w-]+ \| ([^|]+?) \|", text, re.MULTILINE)
    assert [name for name, _ in rows] == stages.group(1).split(","), rows
    for name, does in rows:
        assert does == helped.get(name), f"{name}: {does!r} in the docs, {helped.get(name)!r}"


def test_the_readme_is_a_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail into docs/"


# --- the checks catch wrong lines ----------------------------------------------------------


def bash(*lines: str) -> str:
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def test_right_lines_pass():
    text = bash(
        "source .venv/bin/activate",
        "hespotex run --config C SLIDE_ID ... --stages graph decode outputs   # by hand",
        "OMP_NUM_THREADS=1 .venv/bin/hespotex crossval --config C --sections s.tsv \\",
        "    --out cv/ --seeds 0 1 2",
        "snakemake --profile workflow/profiles/local --configfile my_config.yaml --cores 2",
        "rm -rf demo && /usr/bin/time -v make demo",
        ".venv/bin/python benchmarks/read_throughput.py --work /tmp/x --side 8192 --ome-zarr",
        "hespotex sheet idc --collection tcga_brca --kind frozen --out s.tsv",
    )
    assert problems_in(text) == []


@pytest.mark.parametrize(
    ("line", "caught"),
    [
        ("hespotex tisue --config C S1", "no such sub-command"),
        ("hespotex tissue --confg C S1", "no such option"),
        (".venv/bin/hespotex train --config C --sectons s.tsv --out m.safetensors", "--sectons"),
        ("snakemake --cores 2 --rerun-incompleat", "no such option"),
        ("snakemake --cores 2 --configfile config/missing.yaml", "does not exist"),
        ("snakemake --profile workflow/profiles/slrum --configfile my_config.yaml", "slrum"),
        ("make tset", "no such target"),
        ("rm -rf demo && make demoo", "no such target"),
        (".venv/bin/python benchmarks/no_such_benchmark.py --work /tmp/x", "does not exist"),
        (".venv/bin/python benchmarks/read_throughput.py --wrok /tmp/x", "no such option"),
        ("hespotexx check --config C", "not a program"),
        ("hespotex sheet idc --manifest m.txt --out s.tsv", "hespotex sheet idc --manifest"),
        ("hespotex sheet gdc --root r --out s.tsv", "does not parse"),
    ],
)
def test_wrong_lines_are_caught(line, caught):
    problems = problems_in(bash(line))
    assert any(caught in problem for problem in problems), problems


def test_a_wrong_option_on_a_continuation_line_is_caught_with_the_commands_first_line():
    text = "intro\n\n" + bash(
        "hespotex train --config C \\", "    --sections s.tsv --valdation C4 --out m"
    )
    problems = problems_in(text)
    assert problems and problems[0].startswith("line 4:"), problems


def test_a_block_indented_in_a_list_item_is_read_too():
    text = "1. Run:\n\n   ```bash\n   make tset\n   ```\n"
    assert any("no such target" in problem for problem in problems_in(text))


def test_a_slide_id_after_stages_is_caught_by_the_command_lines_parser():
    if hespotex_parser() is None:
        pytest.skip("hespotex.cli.main.build_parser is gone; the --help checks still run")
    problems = problems_in(bash("hespotex run --config C --stages graph decode outputs SLIDE_ID"))
    assert any("does not parse" in problem and "SLIDE_ID" in problem for problem in problems)


def test_dead_citations_paths_and_links_are_caught():
    text = (
        "See `test_slide.py::test_that_was_never_written`, `test_nothing_here.py`,\n"
        "`hespotex/model/identity.py` and [the guide](docs/nowhere.md).\n"
    )
    problems = problems_in(text)
    for caught in (
        "test_that_was_never_written",
        "test_nothing_here.py",
        "hespotex/model/",
        "nowhere",
    ):
        assert any(caught in problem for problem in problems), (caught, problems)
