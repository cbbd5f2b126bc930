"""``make bench``: figures on this machine, printed as tables and written to
``bench_results/<section>.json``. Sections: ``data`` (tests/bench_data.py),
``features`` (tests/bench_features.py), ``models`` (tests/bench_models.py) and
``serving`` (tests/bench_serving.py).
"""

import json
import sys
from pathlib import Path

SECTIONS = {"data": bench_data.benchmark, "features": bench_features.benchmark,
            "models": bench_models.benchmark, "serving": bench_serving.benchmark}


def main() -> None:
    """``python -m tests.bench [data] [serving]`` (all sections when none is named)."""
    names = sys.argv[1:] or list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    out = Path("bench_results")
    out.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name} ==")
        results = SECTIONS[name]()
        (out / f"{name}.json").write_text(json.dumps(results, indent=2))
        print(f"written to {out / f'{name}.json'}\n")


if __name__ == "__main__":
    main()
