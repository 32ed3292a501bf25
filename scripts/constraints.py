"""Write constraints.txt: the installed version of every package the kit and its extras need, and nothing else.

`make constraints` runs it in .venv after the tests pass there; `make` installs with `-c constraints.txt`, so a
fresh clone gets the versions the published numbers were made with. Local labels (+cu130, +cpu) are dropped so one
file serves CPU and CUDA builds. pip freeze would also pin whatever else sits in the environment.
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRAS = ("pandas", "dev", "cluster", "tensorboard", "wandb", "inception")


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{distribution name: installed version} of everything `root[extras]` requires, transitively."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (canonicalize_name(name), wanted) in seen:
            continue
        seen.add((canonicalize_name(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency, not installed here
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(root):
            found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            environment = [{"extra": extra} for extra in wanted or {""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environment):
                todo.append((req.name, frozenset(req.extras)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("constraints.txt"))
    args = parser.parse_args()
    pins = closure("imgcollapse", EXTRAS)
    lines = [f"{name}=={re.sub(r'[+].*$', '', version)}" for name, version in sorted(pins.items())]
    header = ("# The versions the kit's published numbers and tests ran with (Python "
              f"{'.'.join(map(str, __import__('sys').version_info[:2]))}); refresh: make constraints\n")
    args.out.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(lines)} packages")


if __name__ == "__main__":
    main()
