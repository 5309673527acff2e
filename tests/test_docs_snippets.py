"""Every YAML block and every ``repfusion`` command in the README and the manual parses with the real CLI.

A renamed key, class or flag breaks this test, not a user. A YAML block says what it applies to in
the line before it: ``<!-- snippet: on configs/X.yaml -->`` (a whole config layered on X) or
``<!-- snippet: on configs/X.yaml at model.init_args -->`` (a fragment under that key).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from repfusion_pl.cli import SUBCOMMANDS, main
from repfusion_pl.cli.cache import cache_parser, split_arguments
from repfusion_pl.cli.commands import export_parser, probe_parser
from repfusion_pl.cli.embed import embed_parser
from repfusion_pl.cli.optimize import optimize_parser
from repfusion_pl.teachers.adm.convert import convert_adm_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", re.S | re.M)
NOTE = re.compile(r"<!-- snippet: on (\S+)(?: at (\S+))? -->\s*$")
#: Commands that need what the docs assume the reader made first, tested elsewhere with real files.
NEEDS_FILES = {
    "my_task.": "the custom task module: tests/test_cli.py::test_the_docs_custom_task_runs_through_the_cli",
}


def blocks(kind: str) -> list[tuple[str, str, str]]:
    """``(page:line, the line before the block, body)`` of every fenced block of ``kind``."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(2) != kind:
                continue
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found.append((f"{page.relative_to(ROOT)}:{line}", before, match.group(3)))
    return found


def command_lines(where: str, body: str) -> list[tuple[str, list[str]]]:
    """The ``repfusion`` commands in shell text (also after ``VAR=``, ``srun`` or ``-m repfusion_pl.cli``)."""
    found = []
    for line in body.replace("\\\n", " ").splitlines():
        if not re.search(r"(^\s*(\w+=\S+\s+)*(srun\s+)?repfusion\s|-m repfusion_pl\.cli\s)", line):
            continue
        words = shlex.split(line, comments=True)
        start = words.index("repfusion") + 1 if "repfusion" in words else words.index("repfusion_pl.cli") + 1
        if len(words) > start:
            found.append((where, words[start:]))
    return found


def commands() -> list[tuple[str, list[str]]]:
    """Every ``repfusion ...`` command in the pages' shell blocks and the SLURM templates."""
    found = [command for where, _, body in blocks("bash") for command in command_lines(where, body)]
    for script in sorted((ROOT / "configs" / "slurm").glob("*.sbatch")):
        found += command_lines(str(script.relative_to(ROOT)), script.read_text())
    return found


def parse_fit(args: list[str], capsys) -> dict:
    """``repfusion <fit|validate|test> ARGS --print_config``: the parsed config, or the parser's error."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code in (0, None), printed.err[-2000:]
    return yaml.safe_load(printed.out)


@pytest.mark.parametrize(
    ("where", "before", "body"), blocks("yaml"), ids=lambda v: v if ":" in str(v) else ""
)
def test_every_yaml_block_parses_on_the_config_it_names(where, before, body, tmp_path, monkeypatch, capsys):
    note = NOTE.search(before)
    assert note, f"{where}: say what this block applies to: <!-- snippet: on configs/X.yaml [at a.b] -->"
    fragment = yaml.safe_load(body)
    for key in reversed((note.group(2) or "").split(".") if note.group(2) else []):
        fragment = {key: fragment}
    layered = tmp_path / "snippet.yaml"
    layered.write_text(yaml.safe_dump(fragment))
    monkeypatch.chdir(ROOT)
    config = parse_fit(["fit", "--config", note.group(1), "--config", str(layered)], capsys)
    assert config["model"]["class_path"]


@pytest.mark.parametrize(("where", "args"), commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_repfusion_command_in_the_docs_parses(where, args, monkeypatch, capsys):
    line = " ".join(args)
    for marker, reason in NEEDS_FILES.items():
        if marker in line:
            pytest.skip(reason)
    assert args[0] in SUBCOMMANDS, f"{where}: `repfusion {args[0]}` is not a subcommand"
    monkeypatch.chdir(ROOT)
    name, rest = args[0], args[1:]
    if name in ("fit", "validate", "test"):
        if "--ckpt_path" in rest:  # the checkpoint is the reader's; its path is not parsed here
            index = rest.index("--ckpt_path")
            rest = rest[:index] + rest[index + 2 :]
            if not any(arg.startswith(("--config", "-c")) for arg in rest):
                pytest.skip("a checkpoint alone: tests/test_cli.py resumes one")
        parse_fit([name, *rest], capsys)
    elif name == "cache":
        own, fit_args = split_arguments(rest)
        cache_parser().parse_args(own)
        parse_fit(["fit", *fit_args], capsys)
    else:
        parsers = {"probe": probe_parser, "export": export_parser, "embed": embed_parser}
        parser = {**parsers, "optimize": optimize_parser, "convert-adm": convert_adm_parser}[name]()
        parser.parse_args(rest)


def test_the_snippet_finder_sees_the_pages_blocks():
    assert len(blocks("yaml")) >= 7 and len(commands()) >= 20
    assert any(where.startswith("configs/slurm/") for where, _ in commands())
    assert any(where.startswith("docs/scale.md") for where, _ in commands())
