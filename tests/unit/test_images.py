"""The images' supply chain, read from the files (no container engine needed): bases pinnable by digest,
third-party packages only from hashed locks that match pyproject.toml, and each image holding only the
package it runs."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PACKAGES = {"controller", "job", "envtest"}
# image -> (lock file, pyproject extra, the packages it runs)
IMAGE_SPECS = {
    "controller": ("requirements-controller.lock", "controller", {"controller"}),
    "worker-cpu": ("requirements-worker.lock", "job", {"job"}),
    "worker-ascend": ("requirements-worker.lock", "job", {"job"}),
}
LOCK_ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux"}
RELOCK = "run `make lock` to regenerate images/requirements-*.lock"
# A registry reference: [host[:port]/]path[:tag]; the digest form appends @sha256:<64 hex>.
IMAGE_REF = re.compile(
    r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?"
)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines() if line.strip())
    ]


def copied_from_the_context(image: str) -> list[str]:
    """The build-context paths an image's COPY instructions name (not those from another stage)."""
    steps = instructions(IMAGES / f"{image}.Dockerfile")
    return [
        source.rstrip("/")
        for op, arg in steps
        if op == "COPY" and not arg.startswith("--from")
        for source in arg.split()[:-1]
    ]


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> dict[str, Pin]:
    """uv/pip-compile output: `name==version \\`, `--hash=sha256:...` lines, then `# via` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in path.read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if match := re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", text):
            current = pins[canonicalize_name(match[1])] = Pin(match[2])
        elif text.startswith("--hash="):
            assert current is not None, f"{path.name}: a hash before any pin"
            current.hashes.append(text.removeprefix("--hash="))
        elif current is not None and (via := re.fullmatch(r"#\s+(?:via\s+)?(\S.*)", text)):
            if via[1] != "via":
                current.via.append(via[1])
        elif text and not text.startswith("#"):
            raise AssertionError(f"{path.name}: not an exact pin: {line!r} ({RELOCK})")
    return pins


def direct_requirements(extra: str) -> list[Requirement]:
    """What an image installs for `extra`: the base dependencies, the extra's, and the build backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"][extra]]
    texts += project["build-system"]["requires"]  # installed from the lock, then --no-build-isolation
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({**LOCK_ENV, "extra": extra})]


@pytest.mark.parametrize("image", sorted(IMAGE_SPECS))
def test_the_base_image_comes_from_a_build_arg_that_takes_a_digest(image):
    dockerfile = IMAGES / f"{image}.Dockerfile"
    steps = instructions(dockerfile)
    first_from = next(i for i, (op, _) in enumerate(steps) if op == "FROM")
    args = dict(arg.split("=", 1) for op, arg in steps[:first_from] if op == "ARG" and "=" in arg)
    bases = [arg.split()[0] for op, arg in steps if op == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        name = re.fullmatch(r"\$\{(\w+)\}", base)
        assert name and name[1] in args, f"FROM {base}: the base must be a build arg declared before FROM"
        default = args[name[1]]
        assert IMAGE_REF.fullmatch(default), f"{name[1]} default {default!r} is not an image reference"
        assert "@" not in default or re.search(r"@sha256:[0-9a-f]{64}$", default)
    # the header tells how to pin: --build-arg NAME=...@sha256:<digest>
    assert re.search(rf"{name[1]}=\S*@sha256:<digest>", dockerfile.read_text())


@pytest.mark.parametrize("image", sorted(IMAGE_SPECS))
def test_third_party_packages_come_only_from_the_hashed_lock(image):
    lock_name, _, _ = IMAGE_SPECS[image]
    steps = instructions(IMAGES / f"{image}.Dockerfile")
    copied = {arg.split()[1] for op, arg in steps if op == "COPY" and arg.split()[0] == f"images/{lock_name}"}
    assert len(copied) == 1, f"{image} must COPY images/{lock_name}"
    (target,) = copied
    pip_installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert pip_installs, "no pip install"
    locked, project = pip_installs[0], pip_installs[1:]
    assert "--require-hashes" in locked and "--no-deps" in locked and f"-r {target}" in locked
    assert len(project) == 1, "after the lock, only the project itself is installed"
    for flag in ("--no-deps", "--no-build-isolation", "--no-index"):
        assert flag in project[0], f"the project install must use {flag}: nothing unhashed is fetched"
    assert re.search(r"pip install( --[\w-]+)* \.( |$)", project[0])


@pytest.mark.parametrize("image", sorted(IMAGE_SPECS))
def test_each_image_copies_only_the_package_it_runs(image):
    _, _, runs = IMAGE_SPECS[image]
    sources = copied_from_the_context(image)
    assert "." not in sources, "COPY . would bring every package"
    assert {s for s in sources if s in PACKAGES} == runs


@pytest.mark.parametrize(
    ("package", "forbidden"), [("controller", {"job", "envtest"}), ("job", PACKAGES - {"job"})]
)
def test_a_package_never_imports_one_its_image_lacks(package, forbidden):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not offenders, f"the {package} image does not hold these: {offenders}"


@pytest.mark.parametrize("lock_name, extra", sorted({(v[0], v[1]) for v in IMAGE_SPECS.values()}))
def test_every_requirement_is_pinned_in_the_lock_with_hashes(lock_name, extra):
    pins = read_lock(IMAGES / lock_name)
    for requirement in direct_requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) is not in images/{lock_name}: {RELOCK}"
        pin = pins[name]
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"images/{lock_name} pins {name}=={pin.version}, pyproject.toml wants {requirement}: {RELOCK}"
        )
    for name, pin in pins.items():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), name


@pytest.mark.parametrize("lock_name, extra", sorted({(v[0], v[1]) for v in IMAGE_SPECS.values()}))
def test_the_lock_holds_nothing_pyproject_no_longer_asks_for(lock_name, extra):
    """Roots (`# via deeplab-operator` or the build input) are exactly pyproject's requirements, and every
    other pin is needed by another pin: a dependency dropped from pyproject.toml fails here."""
    pins = read_lock(IMAGES / lock_name)
    wanted = {canonicalize_name(r.name) for r in direct_requirements(extra)}
    roots = {
        name for name, pin in pins.items() if any(v.startswith(("deeplab-operator", "-r ")) for v in pin.via)
    }
    assert roots == wanted, (
        f"images/{lock_name} roots {sorted(roots ^ wanted)} differ from pyproject: {RELOCK}"
    )
    for name, pin in pins.items():
        parents = {canonicalize_name(v) for v in pin.via if not v.startswith(("deeplab-operator", "-r "))}
        assert name in roots or parents & pins.keys(), (
            f"{name} in images/{lock_name} is needed by nothing: {RELOCK}"
        )


def test_the_worker_lock_holds_mindspore_for_x86_64_and_aarch64():
    pin = read_lock(IMAGES / "requirements-worker.lock")["mindspore"]
    assert pin.version == "2.10.0"
    # every file PyPI has for 2.10.0 (manylinux x86_64, the `none-any` wheel aarch64 hosts get, ...)
    assert len(pin.hashes) >= 10


def test_make_lock_writes_the_files_the_images_use():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    for lock_name, extra, _ in IMAGE_SPECS.values():
        assert f"--extra {extra} -o images/{lock_name}" in recipe
    assert "--generate-hashes" in makefile and "--python-version 3.11" in makefile


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins; a pattern
    that matches a parent directory matches what is in it)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.removeprefix("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not line.startswith("!")
    return ignored


@pytest.mark.parametrize("image", sorted(IMAGE_SPECS))
def test_everything_an_image_copies_is_in_the_build_context(image):
    missing = [source for source in copied_from_the_context(image) if dockerignored(source)]
    assert not missing, f".dockerignore leaves {missing} out of the build context"
    assert dockerignored("tests/unit/test_images.py") and dockerignored("controller/__pycache__/x.pyc")
