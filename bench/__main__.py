"""Run every `bench/*_bench.py` module's `main()` in turn; `python -m bench ca sidecar` runs some.

`python -m bench footprint` prints the sidecar process's RSS per import group (bench/footprint.py).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("*_bench.py"))
    names.append("footprint")  # not a load benchmark, but run with the others
    if argv:
        names = [n for n in names if n in argv or n.removesuffix("_bench") in argv]
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
