"""docs/configuration.md lists every environment variable the code reads, and none it does not.

The page has one section per place that reads the environment, its source named in backticks in the heading
(``## Backend and workers (`backend/settings.py`)``), with a table whose first column names the variables. For each
section, the variables in that column must be exactly the ones its source reads: a variable renamed, added or
dropped in the code, or on the page, fails here.

What counts as a read:
- Python: ``env.get("X")``, ``env["X"]``, ``os.environ.get("X")``, ``os.getenv("X")``, and a helper called with the
  environment followed by the name (``_int(env, "X", ...)``, ``read_int(env, "X", ...)``). ``env`` is what the
  settings modules call the mapping their ``from_env`` reads.
- Shell: ``${X:-default}`` (or ``${X-default}``), the way the scripts read an optional variable.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"
# The settings modules: each says it reads every variable of its package in one place. Beyond reading the calls,
# every string in them that looks like a variable name must be one they read, so a read in a form the walker does
# not know fails loudly instead of going unlisted.
SETTINGS_MODULES = ("backend/settings.py", "training/settings.py")
NOT_VARIABLES = {"INFO"}  # string constants of the settings modules that are values, not variable names
VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
SHELL_READ = re.compile(r"\$\{([A-Z][A-Z0-9_]*):?[-=]")


def _is_environment(node: ast.AST, env_name: str | None) -> bool:
    """``os.environ``, or a name bound to the environment being read (``env`` in the settings modules)."""
    if isinstance(node, ast.Name):
        return node.id == env_name
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def python_reads(path: Path, env_name: str | None = "env") -> set[str]:
    """The environment variables a Python file reads (see the module docstring for the forms). ``env_name``: the
    name the file gives the environment it reads, None where it only reads ``os.environ`` (the e2e suite calls a
    child process's environment ``env``, which it writes, not reads)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            first = _string(node.args[0]) if node.args else None
            environment_get = (isinstance(func, ast.Attribute) and func.attr == "get"
                               and _is_environment(func.value, env_name))
            getenv = getattr(func, "attr", getattr(func, "id", None)) == "getenv"
            if first and (environment_get or getenv):
                found.add(first)
            for arg, following in zip(node.args, node.args[1:]):
                name = _string(following)
                if _is_environment(arg, env_name) and name:
                    found.add(name)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and _is_environment(node.value, env_name)):
            name = _string(node.slice)
            if name:
                found.add(name)
    return found


def shell_reads(path: Path) -> set[str]:
    """The variables a shell script reads with a default."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    return set(SHELL_READ.findall("\n".join(lines)))


def source_reads(source: str) -> set[str]:
    """What a source named in a heading of the page reads: a file, a glob or a folder of Python files."""
    folder = source.endswith("/")
    paths = sorted((ROOT / source).glob("*.py")) if folder else sorted(ROOT.glob(source))
    assert paths, f"docs/configuration.md names {source!r}, which matches no file"
    found: set[str] = set()
    for path in paths:
        if path.suffix != ".py":
            found |= shell_reads(path)
        else:  # a folder of ordinary code reads os.environ; only the settings modules take an ``env`` mapping
            found |= python_reads(path, env_name=None if folder else "env")
    return found


def page_sections() -> dict[str, set[str]]:
    """Source named in a ``##`` heading -> the variables in the first column of that section's tables."""
    sections: dict[str, set[str]] = {}
    heading, source = None, None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line
            named = re.findall(r"`([^`]+)`", line)
            source = named[-1] if named else None
            if source is not None:
                assert source not in sections, f"two sections of docs/configuration.md name {source}"
                sections[source] = set()
            continue
        if not line.startswith("|") or re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            continue
        first_cell = line.split("|")[1]
        names = re.findall(r"`([^`]+)`", first_cell)
        if not names:
            continue  # the header row
        assert source is not None, f"a table row outside a section that names its source: {line!r} ({heading})"
        for name in names:
            assert VARIABLE_NAME.fullmatch(name), f"{name!r} in the first column of {heading!r} is no variable name"
        sections[source] |= set(names)
    return sections


def test_the_page_has_a_section_for_each_settings_module():
    sections = page_sections()
    for module in SETTINGS_MODULES:
        assert module in sections, f"docs/configuration.md has no section for {module}"


@pytest.mark.parametrize("source", sorted(page_sections()))
def test_each_section_lists_exactly_what_its_source_reads(source):
    read, listed = source_reads(source), page_sections()[source]
    assert read, f"found no environment read in {source}: the walker no longer matches the code"
    assert not read - listed, f"{source} reads {sorted(read - listed)}, not listed in docs/configuration.md"
    assert not listed - read, f"docs/configuration.md lists {sorted(listed - read)} under {source}, which reads none"


@pytest.mark.parametrize("module", SETTINGS_MODULES)
def test_every_variable_name_in_a_settings_module_is_a_read(module):
    """A name the walker missed (read in some other form) would otherwise go unlisted without a failure."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and VARIABLE_NAME.fullmatch(node.value)} - NOT_VARIABLES
    unread = names - python_reads(ROOT / module)
    assert not unread, f"{module} holds {sorted(unread)} but the walker finds no read of them"


def test_no_other_package_module_reads_the_environment():
    """A variable read outside the settings modules would escape the page; the packages keep them in one place."""
    readers = {}
    for package in ("backend", "training", "sag"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in SETTINGS_MODULES and python_reads(path, env_name=None):
                readers[relative] = sorted(python_reads(path, env_name=None))
    assert not readers, f"read the environment outside {SETTINGS_MODULES}: {readers}"


def test_the_walker_sees_each_form_of_read(tmp_path):
    """The forms the settings modules use, so that a renamed variable is seen under its new name."""
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "def from_env(env):\n"
        "    a = env.get('A_VAR', 'x')\n"
        "    b = env['B_VAR']\n"
        "    c = _int(env, 'C_VAR', 3, 1)\n"
        "    d = os.environ.get('D_VAR')\n"
        "    e = os.getenv('E_VAR')\n"
        "    f = {'NOT_READ': 1}\n"
        "    env['WRITTEN'] = '1'\n"
        "    return a, b, c, d, e, f\n", encoding="utf-8")
    assert python_reads(module) == {"A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR"}
    assert python_reads(module, env_name=None) == {"D_VAR", "E_VAR"}
    script = tmp_path / "s.sh"
    script.write_text('# ${IN_A_COMMENT:-x}\nX=${ONE:-1}\nY="${TWO-2}"\nZ=${3:-no}\necho "$NOT_A_DEFAULT"\n',
                      encoding="utf-8")
    assert shell_reads(script) == {"ONE", "TWO"}
