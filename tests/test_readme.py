"""The README and the docs/ pages, as a new user meets them, cannot rot:

- every ```python block (README.md and docs/*.md) runs as written, in a fresh interpreter, against the session's
  stack with an API of its own in open mode (`WANQ_AUTH_OPEN=true`, as `wanq dev` runs: the same Redis, dispatcher, workers and S3). The one thing
  substituted is the base URL: the README says http://127.0.0.1:8000 (`wanq dev`'s), this API listens on a free port.
  A block preceded by `<!-- readme-test: skip: why -->` is not run; its reason must name the test that makes the
  same calls on the models `wanq dev` serves (today: the 15-second extension example, which needs a real TI2V-5B);
- every relative link between them points at a file that exists, and an `#anchor` at one of its headings;
- every ```python block type-checks with mypy (the project's settings), so the `openai` SDK's literal types are met;
- every command the shell blocks show (`make X`, `wanq ...`, `hf ...`) exists: each `wanq` line parses with the real
  parser, each make target is in the Makefile, `hf` is the command huggingface_hub installs;
- the GPU host's install path (`make install-worker`) installs nothing of the dev extra, makes no venv and keeps
  torch, and the code a worker host runs imports nothing that only the dev extra installs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.catalog import PRESETS
from shared.lora_files import family_of
from tests.api_process import api_process
from wanq.cli import build_parser
from wanq.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_URL = "http://127.0.0.1:8000"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.+?)\s*-->\s*$")


def blocks(language: str) -> list[tuple[str, str, str | None]]:
    """(where: "page:line", code, skip reason) of each fenced block in that language, in README.md and docs/*.md."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() == f"```{language}":
                end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
                before = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
                skip = SKIP.search(before)
                where = f"{page.relative_to(ROOT)}:{number + 1}"
                found.append((where, "\n".join(lines[number + 1 : end]) + "\n", skip.group(1) if skip else None))
    return found


PYTHON = blocks("python")


def test_the_readme_has_the_snippets_this_file_runs() -> None:
    assert len(PYTHON) >= 2 and sum(skip is None for _, _, skip in PYTHON) >= 2
    assert all("tests/" in skip for _, _, skip in PYTHON if skip), "a skipped snippet names the test that runs its calls"
    assert "huggingface-cli" not in README  # huggingface_hub 2.x has no such command


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check here
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in _anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


@pytest.fixture(scope="module")
def open_api(stack: Stack) -> Iterator[str]:
    """An API process in open mode on the session's stack, as `wanq dev` runs its API."""
    with api_process(stack, "api-readme", {"WANQ_AUTH_OPEN": "true", "WANQ_DISPATCH_IN_API": "false"}) as url:
        yield url


@pytest.mark.parametrize(("line", "code", "skip"), PYTHON, ids=[line for line, _, _ in PYTHON])
def test_a_python_snippet_runs_as_written(open_api: str, tmp_path: Path, line: str, code: str, skip: str | None) -> None:
    if skip:
        pytest.skip(skip)
    assert README_URL in code, "a snippet talks to `wanq dev`'s URL"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    done = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, open_api)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    printed = done.stdout.splitlines()
    if "videos.create_and_poll" in code:
        assert printed[0] == "completed 64x64 4.125", printed  # as the comment in the snippet says
        assert (tmp_path / "corgi.mp4").read_bytes()[4:8] == b"ftyp"
        assert json.loads(printed[1].replace("'", '"').replace("None", "null"))["variant"] == "ti2v-5b"
    if "wanq.client" in code:
        statuses = [event.split()[0] for event in printed if event.split()[0] in ("queued", "in_progress", "completed")]
        assert statuses[-1] == "completed" and "in_progress" in statuses, printed
        assert (tmp_path / "fox.mp4").read_bytes()[4:8] == b"ftyp" and (tmp_path / "fox.webp").exists()
        assert "completed" in printed and "canceled" in printed, printed
        assert "49 17" in printed, printed  # the extension: the whole video's frames, the new part's, as the comment says
        assert printed[-1].startswith("400 model_not_available model model 'sora-2' is not served here;"), printed


def test_the_python_snippets_type_check(tmp_path: Path) -> None:
    for number, (_, code, _) in enumerate(PYTHON):
        (tmp_path / f"snippet_{number}.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# The shell blocks' commands --------------------------------------------------------------------------------


def _commands() -> list[str]:
    lines = []
    for _, code, _ in blocks("sh"):
        joined = re.sub(r"\\\n\s*", " ", code)  # a command continued over lines with a backslash is one command
        for raw in joined.splitlines():
            command = raw.split("  #", 1)[0].strip().rstrip("&").strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def test_every_wanq_command_the_readme_shows_parses() -> None:
    parser = build_parser()
    shown = [c for c in _commands() if c.startswith("wanq ")]
    assert any("--model-path Wan-AI/" in c for c in shown)
    for command in shown:
        if "[" in command:  # a synopsis, e.g. `wanq status ID [--json]`: its plain form
            command = re.sub(r"\s*\[[^]]*\]", "", command)
        args = shlex.split(command.replace("ID", "video_0"))[1:]
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"README: `{command}` does not parse ({exc})")
        model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model"), None)
        # A LoRA may name a model family (its models share the transformer blocks) instead of one model
        families = {family_of(spec) for spec in PRESETS.values()} if args[:2] == ["loras", "upload"] else set()
        assert model is None or model in PRESETS or model in families, command


def test_every_other_command_the_readme_shows_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    hub_commands = {ep.name for ep in importlib.metadata.distribution("huggingface_hub").entry_points}
    for command in _commands():
        words = shlex.split(command)
        if words[0] == "make":
            assert all(t in targets for t in words[1:] if "=" not in t), command
        elif words[0] == "hf":
            assert "hf" in hub_commands, command
    shown = " ".join(_commands())
    assert "make install-worker" in shown and "make demo" in shown


# The GPU host's install -------------------------------------------------------------------------------------


def _dev_only() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = re.compile(r"^[A-Za-z0-9._-]+")
    wanted = {
        m.group(0).lower() for r in project["dependencies"] + project["optional-dependencies"]["worker"] if (m := name.match(r))
    }
    dev = {m.group(0).lower() for r in project["optional-dependencies"]["dev"] if (m := name.match(r))}
    return dev - wanted


def test_install_worker_names_nothing_of_the_dev_extra() -> None:
    done = subprocess.run(
        ["make", "-n", "install-worker", "PYTHON=python3.11"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    recipe = done.stdout
    assert 'python3.11 -m pip install ".[worker]" "torch==$(python3.11 -c' in recipe  # that torch, pinned
    assert "[worker,dev]" not in recipe and ".[dev]" not in recipe
    assert "venv" not in recipe and "apt-get" not in recipe and "chromium" not in recipe
    for package in _dev_only():
        assert package not in recipe.lower(), package


def test_a_worker_host_imports_nothing_only_the_dev_extra_installs() -> None:
    by_module = importlib.metadata.packages_distributions()
    dev_only = _dev_only()
    found = []
    # What `wanq api`, `wanq worker` and the other processes of a deployment import. wanq dev and the demo (moto's
    # server, a local stack) are development tools and need the dev extra.
    for package in ("api", "shared", "worker", "wanq"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name in ("dev.py", "stack.py") and package == "wanq":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    dists = {d.lower() for d in by_module.get(name.split(".")[0], [])}
                    if dists & dev_only:
                        found.append(f"{path.relative_to(ROOT)}: {name} ({', '.join(dists)})")
    assert found == []
