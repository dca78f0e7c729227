"""Each program imports what it uses and no more: on a Pi every Python process pays in memory
for each module it loads (a few MiB for asyncio, pg8000's chain, or a client library)."""

import ast
import json
import subprocess
import sys

import pytest

from helpers import REPO

ONLY_WITH_A_DATABASE = ("pg8000", "scramp", "asn1crypto", "dateutil")
ONLY_WITH_A_WEBHOOK = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")
ONLY_THE_PUBLISHER = ("paho",)

# What each program loads as supervisord starts it: its package's __main__.
CASES = [
    (
        "energy_worker.programs.router.__main__",
        ONLY_WITH_A_DATABASE + ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER,
    ),
    ("energy_worker.programs.processor.__main__", ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER),
    # the pusher imports requests only when a webhook URL is set (sheet_client.SheetClient)
    ("energy_worker.programs.pusher.__main__", ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER),
    ("energy_worker.runtime.exit_listener", ("redis", *ONLY_WITH_A_DATABASE, *ONLY_WITH_A_WEBHOOK)),
]


def loaded_by(module: str) -> list[str]:
    """Every module a fresh interpreter has loaded once it imported `module`."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "services")},
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(("module", "unwanted"), CASES)
def test_a_program_loads_no_library_it_does_not_use(module, unwanted):
    loaded = {m.split(".")[0] for m in loaded_by(module)}
    assert not loaded & set(unwanted), sorted(loaded & set(unwanted))


# The package's folders are its layers. A module imports from its own layer and the ones below
# it, never above; a program imports no other program (only its own package), and the command
# loads no program's code.
PACKAGE = REPO / "services" / "energy_worker"
LAYERS = ("core", "adapters", "runtime", "programs", "cli")
# The core is pure: no I/O, no logging, no clock. What it may import from the standard library:
PURE = {"__future__", "collections", "dataclasses", "datetime", "decimal", "enum", "json", "re"}
PURE |= {"typing", "zoneinfo"}


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(module: str) -> set[str]:
    """Every module `module` imports, at its top or inside a function."""
    relative = module.replace(".", "/")
    path = PACKAGE.parent / relative / "__init__.py"
    if not path.exists():
        path = PACKAGE.parent / f"{relative}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import"
            assert node.module is not None
            found.add(node.module)
            # `from energy_worker.x import y`: y may be a module
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def allowed(importer: str, imported: str) -> bool:
    low, high = layer(imported), layer(importer)
    if low is None or high is None:
        return imported == "energy_worker"  # only the package itself stands outside the layers
    if LAYERS.index(low) > LAYERS.index(high):
        return False
    if low == "programs":  # a program imports only its own package
        own = importer.split(".")[2] if high == "programs" else None
        return imported.split(".")[2:3] in ([own], [])
    return not (high == "cli" and low == "programs")


@pytest.mark.parametrize("module", modules())
def test_imports_go_down_the_layers_only(module):
    ours = {m for m in imports_of(module) if m.split(".")[0] == "energy_worker"}
    known = set(modules())
    wrong = sorted(m for m in ours if m in known and not allowed(module, m))
    assert not wrong, f"{module} ({layer(module)}) imports {wrong}"


@pytest.mark.parametrize("module", [m for m in modules() if layer(m) == "core"])
def test_the_core_is_pure(module):
    outside = {m.split(".")[0] for m in imports_of(module)} - PURE - {"energy_worker"}
    assert not outside, f"{module} imports {sorted(outside)}"


def test_no_module_shares_a_name_with_the_standard_library_or_a_dependency():
    import importlib.metadata  # noqa: PLC0415

    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    taken.discard("energy_worker")  # the project itself, installed
    clashes = sorted(m for m in modules() if m.rsplit(".", 1)[-1] in taken)
    assert not clashes, clashes


def test_the_rule_catches_a_wrong_import():
    assert not allowed("energy_worker.core.ledger", "energy_worker.adapters.postgres")
    assert not allowed("energy_worker.adapters.config", "energy_worker.programs.pusher")
    assert not allowed("energy_worker.programs.router", "energy_worker.programs.pusher.outbox")
    assert not allowed("energy_worker.cli.status", "energy_worker.programs.processor")
    assert allowed("energy_worker.programs.pusher.outbox", "energy_worker.programs.pusher.settings")
    assert allowed("energy_worker.programs.router", "energy_worker.runtime.program")


def test_the_router_loads_no_home_assistant_google_or_totals_code():
    ours = loaded_by("energy_worker.programs.router.__main__")
    loaded = [m for m in ours if m.startswith("energy_worker")]
    unwanted = ("publisher", "pusher", "totals", "ledger", "postgres")
    assert not [m for m in loaded if any(word in m for word in unwanted)], loaded
