"""Import direction of the product package, read from the source with ``ast`` (docs/architecture.md).

cli → workflows → {train, eval} → {losses, model, data} → config; tracking is used by train, eval and
workflows; ``mmclip_devtools`` depends on ``mmclip_dist``, never the reverse. Imports inside functions count
too: a lazy import still makes the dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmclip_dist"

# (importer, forbidden import): a module at or below ``importer`` must not import anything at or below the other.
FORBIDDEN: list[tuple[str, str]] = [
    ("mmclip_dist", "mmclip_devtools"),
    ("mmclip_dist.eval", "mmclip_dist.train"),
    ("mmclip_dist.train", "mmclip_dist.eval"),
    *[
        (low, high)
        for low in ("mmclip_dist.model", "mmclip_dist.losses", "mmclip_dist.data", "mmclip_dist.config")
        for high in ("mmclip_dist.train", "mmclip_dist.eval", "mmclip_dist.workflows", "mmclip_dist.cli")
    ],
    *[(low, "mmclip_dist.workflows") for low in ("mmclip_dist.train", "mmclip_dist.eval", "mmclip_dist.tracking")],
    *[
        (low, "mmclip_dist.cli")
        for low in ("mmclip_dist.train", "mmclip_dist.eval", "mmclip_dist.workflows", "mmclip_dist.tracking")
    ],
    ("mmclip_dist.tracking", "mmclip_dist.train"),
    ("mmclip_dist.tracking", "mmclip_dist.eval"),
    ("mmclip_dist.config", "mmclip_dist.tracking"),
    ("mmclip_dist.model", "mmclip_dist.tracking"),
    ("mmclip_dist.losses", "mmclip_dist.tracking"),
    ("mmclip_dist.data", "mmclip_dist.tracking"),
]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, anywhere in the file, as absolute names.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative imports are
    resolved against ``module`` (``is_package``: the file is an ``__init__.py``).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def violations(imports: dict[str, set[str]], forbidden: list[tuple[str, str]] = FORBIDDEN) -> list[str]:
    """``"importer -> imported (rule importer ↛ forbidden)"`` for every import that breaks a rule."""
    out = []
    for module, names in sorted(imports.items()):
        for importer, banned in forbidden:
            if not _within(module, importer):
                continue
            for name in sorted(names):
                if _within(name, banned) and not _within(name, importer):
                    out.append(f"{module} -> {name} (rule: {importer} must not import {banned})")
    return out


def package_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module name: modules it imports}`` for every ``.py`` file under ``root``."""
    imports = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        module = ".".join(parts)
        imports[module] = imported_modules(path.read_text(), module, is_package)
    return imports


# --- the checker itself can fail ------------------------------------------------------------------


def test_checker_finds_a_lazy_import_of_the_dev_harness() -> None:
    source = "import os\n\ndef f():\n    from mmclip_devtools.s3_server import LocalS3Server\n"
    imports = {"mmclip_dist.data.storage": imported_modules(source, "mmclip_dist.data.storage")}
    assert violations(imports) == [
        "mmclip_dist.data.storage -> mmclip_devtools.s3_server (rule: mmclip_dist must not import mmclip_devtools)",
        "mmclip_dist.data.storage -> mmclip_devtools.s3_server.LocalS3Server "
        "(rule: mmclip_dist must not import mmclip_devtools)",
    ]


def test_checker_resolves_relative_imports_and_from_package_imports() -> None:
    source = "from ..train import loop\nfrom mmclip_dist import train\nfrom . import metrics\n"
    names = imported_modules(source, "mmclip_dist.eval.runner")
    assert {"mmclip_dist.train.loop", "mmclip_dist.train", "mmclip_dist.eval.metrics"} <= names
    found = violations({"mmclip_dist.eval.runner": names})
    assert found and all("rule: mmclip_dist.eval must not import mmclip_dist.train" in v for v in found)
    # the same imports from an __init__.py resolve one level lower
    assert "mmclip_dist.eval.metrics" in imported_modules("from .metrics import x\n", "mmclip_dist.eval", True)


def test_checker_allows_the_stated_direction() -> None:
    imports = {
        "mmclip_dist.workflows.ablation": {"mmclip_dist.train.trainer", "mmclip_dist.eval.runner"},
        "mmclip_dist.train.loop": {"mmclip_dist.losses", "mmclip_dist.model", "mmclip_dist.tracking"},
        "mmclip_dist.training_notes": {"mmclip_dist.eval"},  # a prefix of the name is not the package
    }
    assert violations(imports) == []


# --- the product package ----------------------------------------------------------------------------


def test_every_module_of_the_product_imports_in_the_stated_direction() -> None:
    imports = package_imports()
    assert len(imports) > 50 and "mmclip_dist.train.loop" in imports  # the walk saw the package
    assert violations(imports) == []


def test_training_entry_points_load_no_dev_harness_and_no_eval() -> None:
    code = (
        "import json, sys\n"
        "import mmclip_dist.train.loop, mmclip_dist.train.trainer\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "mmclip_dist.train.trainer" in loaded
    banned = ("mmclip_devtools", "mmclip_dist.eval", "mmclip_dist.workflows", "mmclip_dist.cli")
    assert [m for m in loaded if any(_within(m, b) for b in banned)] == []
    # the dev servers' modules by their own names, wherever they might be moved
    assert [m for m in loaded if m.rsplit(".", 1)[-1] in ("s3_server", "mlflow_server", "local_ray")] == []
