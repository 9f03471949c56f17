"""The README and docs/ stay true: every config key is in docs/cli.md with its default, every
`demp` command shown parses and loads its config, every link and repository path exists, the
help texts point at the reference, and the project speaks of itself."""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from demp.app.config import flat_config, load_config, yaml_load
from demp.app.methods import METHODS, setting_keys
from demp.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROSE = [*PAGES, *sorted((ROOT / "results").rglob("README.md"))]
FORBIDDEN = re.compile(r"\bsessions?\b|\bthe issue\b|\bplanners?\b", re.I)
SUBCOMMANDS = ("train", "export", "report", "sweep", "study")


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``, as rows of stripped cells (header and rule dropped)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append([r for r in rows[2:]])
            rows = []
    return tables


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _same(cell: str, expected: Any) -> bool:
    """A table's default (YAML in backticks) equals the config's value."""
    value = yaml_load(_ticked(cell)[0])
    if isinstance(expected, bool) or expected is None or isinstance(expected, (str, dict)):
        return value == expected
    if isinstance(expected, list):
        return isinstance(value, list) and [float(v) for v in value] == [float(v) for v in expected]
    return float(value) == float(expected)


REQUIRED = {"scratch": {"widths_from": "runs/source"}}
"""Settings a method cannot run without (their default is null; the docs say they are required)."""


def _method_defaults(name: str) -> dict[str, Any]:
    """``{key: default}`` of a method's settings as ``demp train --set method.name=NAME`` gives them."""
    required = REQUIRED.get(name, {})
    cfg = flat_config(load_config(None, [f"method.name={name}", *(f"method.{k}={v}" for k, v in required.items())]))
    keys = setting_keys(METHODS[name])
    aliases = METHODS[name].aliases
    return {k: None if k in required else cfg[f"method.{aliases.get(k, k)}"] for k in keys}


def test_cli_md_lists_every_config_key_with_its_default():
    tables = _tables((ROOT / "docs" / "cli.md").read_text())
    runs = {_ticked(r[0])[0]: r[1] for t in tables for r in t if len(r) == 3 and _ticked(r[0])}
    expected = {k: v for k, v in flat_config(load_config()).items() if not k.startswith("method.")}
    assert sorted(runs) == sorted(expected), "docs/cli.md's run settings differ from the config's keys"
    wrong = [k for k, v in expected.items() if not _same(runs[k], v)]
    assert not wrong, f"defaults in docs/cli.md differ from the config's: {wrong}"

    listed: dict[tuple[str, str], str] = {}
    for row in (r for t in tables for r in t if len(r) == 4 and _ticked(r[0])):
        for method in _ticked(row[1]):
            listed[(method, _ticked(row[0])[0].removeprefix("method."))] = row[2]
    expected_m = {(m, k): v for m in METHODS for k, v in _method_defaults(m).items()}
    assert sorted(listed) == sorted(expected_m), "docs/cli.md's method settings differ from the methods' keys"
    wrong = [k for k, v in expected_m.items() if not _same(listed[k], v)]
    assert not wrong, f"method defaults in docs/cli.md differ from the config's: {wrong}"


def _shell_lines(text: str) -> list[str]:
    """Lines of the ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for b in blocks for line in b.replace("\\\n", " ").splitlines() if line.strip()]


def _demp_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every `demp ...` or `... -m demp.cli ...` command in the pages' code blocks."""
    out = []
    for page in PAGES:
        for line in _shell_lines(page.read_text()):
            words = shlex.split(line, comments=True)
            while words and re.match(r"\w+=", words[0]):   # DEMP_DATA=... demp sweep ...
                words = words[1:]
            if words[:1] == ["demp"]:
                out.append((page.name, words[1:]))
            elif "demp.cli" in words and words[words.index("demp.cli") - 1] == "-m":
                out.append((page.name, words[words.index("demp.cli") + 1:]))
    return out


COMMANDS = _demp_commands()


@pytest.mark.parametrize("page, argv", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_every_command_in_the_docs_parses(page: str, argv: list[str], monkeypatch):
    """Each command parses, and its config (train), sweep or study file loads and plans."""
    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)
    if args.command == "train" and not args.resume:
        load_config(args.config, args.set)
    elif args.command == "sweep":
        from demp.experiments.spec import load_sweep, plan_runs, run_config
        sweep = load_sweep(args.sweep)
        for run in plan_runs(sweep):
            run_config(sweep, run)
    elif args.command == "study":
        from demp.experiments.spec import load_study, plan_study, study_config
        study = load_study(args.study)
        for run in plan_study(study):
            study_config(study, run)


def test_the_docs_show_each_command():
    shown = {argv[0] for _, argv in COMMANDS}
    assert shown >= set(SUBCOMMANDS)


def test_a_bad_override_in_a_doc_command_would_fail():
    """The check above catches the README's old `--set a=1 b=2` form."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--set", "sparse.method=rigl", "sparse.density=0.2"])


LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
PATH = re.compile(r"`((?:src|tests|examples|benchmarks|configs|results|docs|\.ci)/[^`\s*{}<>]+)`")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_paths_exist(page: Path):
    text = page.read_text()
    links = [(f, a) for f, a in LINK.findall(text) if not re.match(r"[a-z]+://", f)]
    targets = [(page.parent / f if f else page, f, a) for f, a in links]
    missing = [f for t, f, _ in targets if not t.exists()]
    missing += [f"{f}#{a}" for t, f, a in targets if a and t.is_file() and a not in _anchors(t)]
    missing += [p for p in PATH.findall(text) if not (ROOT / p.rstrip("/.,")).exists()]
    assert not missing, f"{page.name} points at missing files or headings: {missing}"


@pytest.mark.parametrize("page", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_project_speaks_of_itself(page: Path):
    found = [line.strip() for line in page.read_text().splitlines() if FORBIDDEN.search(line)]
    assert not found, f"{page.relative_to(ROOT)}: {found}"


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_screen = "\n".join(text.splitlines()[:60])
    assert "make demo" in first_screen and "demp.DemonPruner(" in first_screen
    assert len(list((ROOT / "docs").glob("*.md"))) >= 4


@pytest.mark.parametrize("page, options", [("README.md", "--means --optimizer adamw --knob 0.5 0.8"),
                                           ("docs/results.md", "--means")])
def test_results_tables_are_the_scripts_output(page: str, options: str):
    """A results table is what its command prints from the committed summary.csv."""
    text = (ROOT / page).read_text()
    command = f"python results/cifar10-vgg-cpu-12ep/table.py {options}"
    assert command in text
    out = subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() in text, f"{page}: rerun `{command}` and paste its table"


def test_guide_lists_every_demp_setting_with_its_default():
    from dataclasses import fields
    from demp.core.pruner import DemPConfig
    rows = {_ticked(r[0])[0]: _ticked(r[1])[0] for t in _tables((ROOT / "docs" / "guide.md").read_text())
            for r in t if len(r) == 3 and _ticked(r[0]) and _ticked(r[1])}
    names = [f.name for f in fields(DemPConfig)]
    assert sorted(k for k in rows if k in names) == sorted(names)
    for f in fields(DemPConfig):
        try:
            shown = ast.literal_eval(rows[f.name])
        except ValueError:
            shown = rows[f.name]
        assert shown == f.default, f"docs/guide.md: {f.name} default {rows[f.name]} but DemPConfig has {f.default!r}"


def test_docs_python_snippets_come_from_the_examples():
    """Every line of the docs' Python snippets that mentions demp appears in an example (as the
    README's do, tests/test_examples.py), so the snippets run."""
    examples = {line.strip() for p in (ROOT / "examples").glob("*.py") for line in p.read_text().splitlines()}
    missing = [line.strip() for page in PAGES for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
               for line in block.splitlines()
               if re.search(r"demp|pruner|Demon", line) and not line.strip().startswith("#")
               and line.strip() not in examples]
    assert not missing, f"snippet lines not in examples/: {missing}"


def test_help_points_at_the_reference():
    parser = build_parser()
    helps = [parser.format_help()] + [_subparser(parser, c).format_help() for c in SUBCOMMANDS]
    assert all("docs/cli.md" in h for h in helps)


def _subparser(parser, name: str):
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]
