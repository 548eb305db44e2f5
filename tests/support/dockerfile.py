"""Just enough Dockerfile reading for the image tests: instructions with their continuation
lines joined, the final stage's ENV, and the exec-form (JSON) command lines."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, name: str) -> str | None:
        found = [args for inst, args in self.instructions if inst == name]
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (``$PATH``-style references are left as written)."""
        values: dict[str, str] = {}
        for inst, args in self.instructions:
            if inst == "ENV":
                for word in shlex.split(args):
                    key, sep, value = word.partition("=")
                    assert sep, f"ENV in the legacy 'key value' form: {args}"
                    values[key] = value
        return values

    def exec_form(self, name: str) -> list[str]:
        """The JSON array of ENTRYPOINT or CMD (shell form is refused: no signal forwarding)."""
        args = self.last(name)
        assert args is not None, f"no {name}"
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(a, str) for a in value), f"{name} not exec form"
        return value

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as interval, the CMD as an exec-form list)."""
        args = self.last("HEALTHCHECK")
        assert args is not None, "no HEALTHCHECK"
        head, sep, command = args.partition("CMD ")
        assert sep, f"HEALTHCHECK without CMD: {args}"
        options = dict(word.removeprefix("--").split("=", 1) for word in head.split())
        value = json.loads(command)
        assert isinstance(value, list)
        return options, value


def read_dockerfile(path: Path) -> list[Stage]:
    """The stages in order; ARGs before the first FROM are substituted into FROM lines."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        inst, _, args = line.partition(" ")
        inst, args = inst.upper(), args.strip()
        if inst == "FROM":
            base = args.split()[0]
            for key, value in global_args.items():
                base = base.replace("${" + key + "}", value).replace("$" + key, value)
            stages.append(Stage(base))
        elif not stages:
            assert inst == "ARG", f"{path}: {inst} before FROM"
            key, _, value = args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((inst, args))
    return stages
