"""No text from a request or a file is ever compiled or run as a regular expression, and every pattern is ASCII-only.

A LoRA file's rank pattern, run as a regular expression, froze the API for a minute and a worker for good (issue
23). Read from the sources of api/, shared/, worker/ and wanq/ (AST, so that comments and strings do not count):

- a pattern given to `re` (compile, match, fullmatch, search, sub, subn, split, findall, finditer) or as a
  `pattern=` argument (pydantic's Field, FastAPI's Query) inside a function is a string literal or a module-level
  constant (of this module or one it imports from); at module level anything goes (it runs at import, before any
  request). The subject a compiled constant is matched against may be anything: that is what patterns are for.
- peft's and diffusers' helpers that run a LoRA file's patterns as regular expressions are not imported.
- a pattern written with `\\d`, `\\w`, `\\s` or `\\b` carries `re.ASCII` (Python's classes take '١' as a digit).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["api", "shared", "worker", "wanq"]
RE_FUNCTIONS = {"compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer"}
REGEX_FROM_FILES = {"get_pattern_key", "_create_lora_config", "get_peft_kwargs"}
"""peft's and diffusers' helpers that match a LoRA file's rank/alpha patterns as regular expressions."""
UNICODE_CLASSES = ("\\d", "\\w", "\\s", "\\b", "\\D", "\\W", "\\S")


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Names assigned at module level (and only there) -> their value."""
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            values[node.target.id] = node.value
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store) and inner.id in values:
                    del values[inner.id]  # rebound inside a function: not a constant
                if isinstance(inner, ast.Global):
                    for name in inner.names:
                        values.pop(name, None)
    return values


def imported_constants(tree: ast.Module, root: Path) -> dict[str, ast.expr]:
    """`from <project module> import NAME` where NAME is a module-level constant there."""
    found: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module or node.module.split(".")[0] not in PACKAGES:
            continue
        path = root / Path(*node.module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.exists():
            continue
        there = module_constants(ast.parse(path.read_text()))
        for alias in node.names:
            if alias.name in there:
                found[alias.asname or alias.name] = there[alias.name]
    return found


def check_source(source: str, filename: str, root: Path = ROOT) -> list[Finding]:
    tree = ast.parse(source, filename=filename)
    constants = module_constants(tree) | imported_constants(tree, root)
    findings: list[Finding] = []

    def where(node: ast.AST) -> str:
        return f"{filename}:{getattr(node, 'lineno', 0)}"

    def constant_text(node: ast.expr) -> str | None:
        """The pattern's text if it is fixed in the source; None if it comes from elsewhere."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return ast.unparse(constants[node.id])
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "re.escape":
            return ""  # escaped: a literal, whatever it holds
        return None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in REGEX_FROM_FILES:
                    findings.append(Finding(where(node), f"imports {alias.name}, which runs a LoRA file's text as a regex"))
            if node.module == "re":
                findings.append(Finding(where(node), "imports from re: call re.<function> so that this test sees it"))
        if not isinstance(node, ast.Call):
            return
        func = ast.unparse(node.func)
        patterns: list[ast.expr] = [kw.value for kw in node.keywords if kw.arg == "pattern"]
        is_re = func.startswith("re.") and func[3:] in RE_FUNCTIONS
        if is_re and node.args:
            patterns.append(node.args[0])
        for pattern in patterns:
            text = constant_text(pattern)
            if text is None and in_function:
                findings.append(
                    Finding(where(node), f"{func}() is given the pattern {ast.unparse(pattern)[:80]}, not a constant")
                )
            source_text = text if text is not None else ast.unparse(pattern)
            flags = ast.unparse(node)
            ascii_flag = "re.ASCII" in flags or "re.A)" in flags or "re.A," in flags or "(?a" in source_text
            if any(c in source_text for c in UNICODE_CLASSES) and not (is_re and ascii_flag):
                findings.append(
                    Finding(where(node), f"{func}() pattern uses a Unicode class without re.ASCII: {source_text[:80]}")
                )

    visit(tree, False)
    return findings


def test_no_request_or_file_text_runs_as_a_regular_expression() -> None:
    findings: list[Finding] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            findings += check_source(path.read_text(), str(path.relative_to(ROOT)))
    assert not findings, "\n".join(map(str, findings))


def test_the_check_finds_what_it_is_for(tmp_path: Path) -> None:
    """The old `pattern_key` (a file's text in an f-string pattern) and its kin are found; constants are not."""
    flagged = check_source(
        """
import re
from peft.utils.other import get_pattern_key

def pattern_key(patterns, name):
    for key in patterns:
        if re.match(rf"(.*\\.)?({key})$", name):
            return key

def search(text, needle):
    return re.search(needle, text) or re.compile("a" + needle)

def digits(text):
    return re.fullmatch(r"blocks\\.(\\d+)", text)
""",
        "bad.py",
    )
    assert [f.where for f in flagged] == ["bad.py:3", "bad.py:7", "bad.py:11", "bad.py:11", "bad.py:14"], flagged
    clean = check_source(
        """
import re
from pydantic import Field

BLOCK = r"blocks\\.([0-9]+)"
NAME = re.compile(BLOCK + "|" + "|".join(("a", "b")), re.ASCII)

class Body:
    name: str = Field(pattern=BLOCK)

def read(text, key):
    return NAME.fullmatch(text) or re.match(BLOCK, text) or re.search(re.escape(key), text) or re.sub(r"\\d", "", text, flags=re.ASCII)
""",
        "good.py",
    )
    assert clean == []
