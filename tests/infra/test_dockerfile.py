"""The worker image (infra/Dockerfile) carries what the code needs at run time: the Debian packages that
scripts/setup.sh installs for the product, and every top-level folder the code reads beside its packages."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "Dockerfile"
# setup.sh's packages that only the tests use, with the reason; the product code must not mention them
TEST_ONLY_APT = {"chromium": "headless browser the report and dashboard tests inspect pages in"}


def dockerfile_instructions() -> list[str]:
    """Instructions with their continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def image_apt_packages() -> set[str]:
    packages = set()
    for instruction in dockerfile_instructions():
        for command in re.split(r"&&|;", instruction.removeprefix("RUN ")):
            if "apt-get" not in command:
                continue
            words = shlex.split(command)
            if "install" in words:
                packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def setup_apt_packages() -> set[str]:
    match = re.search(r"^APT_PACKAGES=\(([^)]*)\)", (REPO / "scripts" / "setup.sh").read_text(), re.M)
    return set(match[1].split())


def product_python_files() -> list[Path]:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return [f for p in include for f in (REPO / p.rstrip("*")).rglob("*.py")]


def test_image_installs_every_run_time_apt_package_of_setup_sh():
    setup = setup_apt_packages()
    assert {"ffmpeg", "opencv-data"} <= setup, setup  # the parse found the list
    image = image_apt_packages()
    assert "ffmpeg" in image, image
    assert setup - set(TEST_ONLY_APT) <= image, f"missing from the image: {sorted(setup - set(TEST_ONLY_APT) - image)}"
    for package in TEST_ONLY_APT:
        users = [str(f.relative_to(REPO)) for f in product_python_files() if package in f.read_text()]
        assert not users, f"{package} is exempted as test-only but the product uses it: {users}"


def test_image_copies_every_top_level_folder_the_code_reads_and_installs_it_in_place():
    copied = set(re.findall(r"^COPY .* \./(\w+)\s*$", DOCKERFILE.read_text(), re.M))
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    # folders found from a module's own path: REPO_ROOT / "configs" (training.loops' DeepSpeed configs)
    read = {name for f in product_python_files()
            for name in re.findall(r'REPO_ROOT\s*/\s*"(\w+)"', f.read_text())}
    assert "configs" in read, read
    assert packages | read <= copied, f"not copied: {sorted((packages | read) - copied)}"
    # REPO_ROOT is the installed code's parent: only an in-place (editable) install puts it beside configs/
    installs = [i for i in dockerfile_instructions() if re.search(r"pip install .*--no-build-isolation", i)]
    assert installs and all(re.search(r"\s(-e|--editable)\s+\.(\s|$)", i) for i in installs), installs
