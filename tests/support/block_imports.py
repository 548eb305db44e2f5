"""``python -m tests.support.block_imports MOD[,MOD...] [pixelfleet args...]``: runs
``pixelfleet`` with those top-level modules made unimportable, as in an image built without
the extra that carries them. An import of one of them raises ImportError naming it, so a
command that needs it at start fails loudly instead of passing on this fully equipped box."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType


class BlockedImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is blocked: the image this command runs in does not install it")
        return None


def main(argv: list[str]) -> int:
    names = {n for n in argv[0].split(",") if n}
    already = sorted(n for n in names if n in sys.modules)
    if already:
        print(f"block_imports: already imported before blocking: {already}", file=sys.stderr)
        return 3
    sys.meta_path.insert(0, BlockedImports(names))
    from pixelfleet.cli import main as pixelfleet

    return pixelfleet(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
