"""What a pod runs: a revision's container as a command, its environment and its name.

The local runtime runs commands, not images: the container's `command` + `args`, the
program found as a container would find it (a path relative to the working directory,
or on the pod's `PATH`), with the environment a Knative container gets.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from wakegate.serving.model import DEFAULT_PROBE, EnvVar, Probe
from wakegate.serving.revision import Revision

CONTAINER_PATH = "spec.template.spec.containers[0]"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz"
"""Lowercase consonants, so a random suffix never spells a word."""
_MAX_NAME = 63


class PodError(RuntimeError):
    """A pod that cannot be started; the message is one line meant for the user."""


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What a pod runs: the container of one revision, placed in a working directory."""

    namespace: str
    service: str
    revision: str
    command: tuple[str, ...]
    working_dir: Path
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    readiness_probe: Probe = DEFAULT_PROBE
    image: str = ""

    @property
    def configuration(self) -> str:
        """A Knative Service's Configuration has the Service's name."""
        return self.service

    @classmethod
    def from_revision(cls, revision: Revision, base_dir: str | os.PathLike[str]) -> PodSpec:
        """The revision's container; a relative `workingDir` (or none) is under `base_dir`,
        typically the folder of the applied manifest."""
        container = revision.template.container
        return cls(
            namespace=revision.namespace,
            service=revision.service,
            revision=revision.name,
            command=container.command,
            args=container.args,
            env=container.env,
            working_dir=Path(base_dir).absolute() / container.working_dir,
            readiness_probe=container.readiness_probe,
            image=container.image,
        )

    def environment(self, host: str, port: int) -> dict[str, str]:
        """What a container would get, not the runtime's own environment (which may hold
        cloud credentials and tokens): the few variables a process needs to run
        (`inherited_environment`), then `HOST`, the container's `env`, `PORT`, `K_*`."""
        env = inherited_environment(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # so `logs` shows output as it is printed
        env["HOST"] = host
        env.update((var.name, var.value) for var in self.env)
        env["PORT"] = str(port)
        env["K_SERVICE"] = self.service
        env["K_CONFIGURATION"] = self.configuration
        env["K_REVISION"] = self.revision
        return env


INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ",
                       "TMPDIR"})  # fmt: skip
"""Variables a pod takes from the runtime's environment, besides `LC_*`: where programs
are, the user, the locale, the time zone, where temporary files go. Anything else a pod
needs goes in its container's `env`."""


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a pod gets: `INHERITED` and the locale's `LC_*`."""
    return {
        name: value
        for name, value in environ.items()
        if name in INHERITED or name.startswith("LC_")
    }


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_current_python(name: str) -> bool:
    """`python`, `python3` or `python3.<this minor>`: run this interpreter directly, which
    skips a version manager's shim (pyenv's costs ~55 ms per start)."""
    version = sys.version_info
    return bool(sys.executable) and name in (
        "python",
        f"python{version.major}",
        f"python{version.major}.{version.minor}",
    )


def resolve_command(spec: PodSpec, env: Mapping[str, str]) -> list[str]:
    """The argv to exec, with the program as an absolute path; PodError if it cannot run."""
    if not spec.working_dir.is_dir():
        raise PodError(
            f"{CONTAINER_PATH}.workingDir: {quoted(str(spec.working_dir))} is not a directory"
        )
    if not spec.command:
        image = f" {quoted(spec.image)}" if spec.image else ""
        raise PodError(
            f"{CONTAINER_PATH}.command: missing; the local runtime runs commands, not images: "
            f"give the command (and args) that start the app instead of only the image{image}"
        )
    program = spec.command[0]
    found: str | None
    if _is_current_python(program):
        found = sys.executable
    elif "/" in program:
        path = spec.working_dir / program
        found = str(path.absolute()) if path.is_file() else None
        if found is not None and not os.access(found, os.X_OK):
            raise PodError(
                f"{CONTAINER_PATH}.command: {quoted(program)} is not executable "
                f"(chmod +x it, or run it with its interpreter)"
            )
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise PodError(
            f"{CONTAINER_PATH}.command: {quoted(program)} not found "
            "(the local runtime runs commands, not images)"
        )
    return [found, *spec.command[1:], *spec.args]


def pod_name(revision: str, taken: Iterable[str] = ()) -> str:
    """`<revision>-<5 random lowercase letters>`, cut to a 63-character DNS label."""
    base = revision[: _MAX_NAME - 6].rstrip("-")
    used = set(taken)
    while True:
        name = f"{base}-{''.join(random.choices(_NAME_CHARS, k=5))}"
        if name not in used:
            return name
