"""Who may import whom (docs/architecture.md): `core` imports nothing else of this repository;
in `orchestrator_site` only the composition root imports the apps. Checked on the source (every
`import` and `from ... import` of every module, also those inside functions), not at run time."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = {"events", "releases", "rollouts", "crl", "notifications"}
PROJECT = "orchestrator_site"

# The composition root: settings, URLconf (with the fast-route table), ASGI, CLI and commands.
COMPOSITION_ROOT = {
    "orchestrator_site/settings.py",
    "orchestrator_site/urls.py",
    "orchestrator_site/asgi.py",
    "orchestrator_site/cli.py",
    "orchestrator_site/pgmigrate.py",
}
COMPOSITION_ROOT_DIRS = ("orchestrator_site/management/commands/",)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    """The top-level package of every absolute import in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from events import writer\n    import rollouts.models\n")
    assert _imported_top_levels(module) == {"events", "rollouts"}


def test_core_imports_no_app_and_not_the_project_package():
    modules = _modules("core")
    assert len(modules) > 5
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & (APPS | {PROJECT}))
        for path in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_composition_root_of_the_project_package_imports_apps():
    offenders = {}
    for path in _modules(PROJECT):
        rel = path.relative_to(ROOT).as_posix()
        if rel in COMPOSITION_ROOT or rel.startswith(COMPOSITION_ROOT_DIRS):
            continue
        apps = _imported_top_levels(path) & APPS
        if apps:
            offenders[rel] = sorted(apps)
    assert offenders == {}


def test_the_allowlists_name_existing_files():
    for rel in COMPOSITION_ROOT:
        assert (ROOT / rel).is_file(), rel


def test_the_agent_package_imports_nothing_of_the_server():
    """autonomy_agent runs on nodes without Django: standard library and cryptography only."""
    allowed = {"autonomy_agent", "cryptography", "__future__"}
    offenders = {}
    for path in _modules("autonomy_agent"):
        foreign = {
            name
            for name in _imported_top_levels(path) - allowed
            if name not in sys.stdlib_module_names
        }
        if foreign:
            offenders[str(path.relative_to(ROOT))] = sorted(foreign)
    assert offenders == {}
