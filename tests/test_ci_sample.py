"""The GitHub Actions workflow in the README's *Continuous integration* section: valid YAML with the
structure GitHub needs, and every `edgepack` command in it one the CLI has, with options it accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from edgepack.bundle.gates import parse_gates
from edgepack.cli import app
from edgepack.inputs import parse_input_spec

README = Path(__file__).resolve().parent.parent / "README.md"


def _workflow_text() -> str:
    section = README.read_text(encoding="utf-8").split("## Continuous integration\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one yaml block"
    return blocks[0]


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(_workflow_text())


def _commands(workflow: dict) -> list[list[str]]:
    """Every `edgepack ...` command line of every `run:` step, split like a shell would (up to a pipe,
    redirection or `&&`)."""
    found = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                for part in re.split(r"&&|\|\||\|", line):
                    words = shlex.split(part.split(">")[0])
                    if words and words[0] == "edgepack":
                        found.append(words)
    return found


def test_the_workflow_is_a_github_actions_workflow(workflow):
    assert workflow["name"] and workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    uses = [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    assert all(("run" in step) != ("uses" in step) for step in job["steps"])
    assert "dist/" in job["steps"][-1]["with"]["path"]


def test_the_workflow_builds_verifies_and_compares(workflow):
    assert [c[1] for c in _commands(workflow)] == ["build", "verify", "verify", "compare"]


def test_every_edgepack_command_in_the_workflow_exists_with_its_options(workflow):
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for words in _commands(workflow):
        command = commands.get(words[1])
        assert command is not None, f"no `edgepack {words[1]}` command"
        context = command.make_context("edgepack " + words[1], list(words[2:]), resilient_parsing=False)
        values = context.params
        if words[1] == "build":
            assert values["target"] == ["android", "iot"] and values["archive"] and values["json_output"]
            for spec in values["input"]:
                parse_input_spec(spec)
        if words[1] == "compare":
            assert parse_gates(values["fail_on"])  # the rule text is one the CLI reads


def test_the_check_can_fail_on_an_unknown_option():
    command = typer.main.get_command(app).commands["compare"]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="No such option: --fail-if") as refused:  # typer may carry its own click
        command.make_context("edgepack compare", ["a", "b", "--fail-if", "size=+5%"])
    assert type(refused.value).__name__ == "NoSuchOption"
