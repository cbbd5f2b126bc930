"""``make bench``: figures on this machine, printed as tables and written to
``bench_results/<section>.json``. Sections: ``data`` (bench/data.py), ``features``
(bench/features.py), ``models`` (bench/models.py), ``serving`` (bench/serving.py),
``faults`` (bench/faults.py), ``retrieval`` (bench/retrieval.py), ``text``
(bench/text.py); not run by
default, they take from tens of minutes to hours: ``engine`` (bench/engine.py),
``scale`` (bench/scale.py) and ``scale_serving`` (bench/scale_serving.py).
``python -m bench --docs`` regenerates docs/benchmarks.md from the JSON.
"""

import json
import os
import sys

from bench import (
    data,
    engine,
    faults,
    features,
    models,
    report,
    retrieval,
    scale,
    scale_serving,
    serving,
    text,
)

SECTIONS = {"data": data, "features": features, "models": models, "serving": serving,
            "faults": faults, "retrieval": retrieval, "text": text, "engine": engine,
            "scale": scale, "scale_serving": scale_serving}
# Not by default: each takes from tens of minutes to hours.
DEFAULT = [name for name in SECTIONS if name not in ("engine", "scale", "scale_serving")]


def _noted(document: dict, module) -> dict:
    """``document`` with the section's own note on its results, if it has one
    (``report`` prints it above the tables)."""
    note = module.notes(document["results"]) if hasattr(module, "notes") else None
    rest = {key: value for key, value in document.items() if key != "notes"}
    return {**rest, "notes": note} if note else rest


def main() -> None:
    """``python -m bench [data] [serving] ...`` (all sections when none is named)."""
    args = sys.argv[1:]
    if args == ["--docs"]:
        # Tables are derived from the stored results: render them with the current
        # code (a column added later shows for an earlier run too).
        for name, module in SECTIONS.items():
            path = report.RESULTS_DIR / f"{name}.json"
            if path.exists():
                document = _noted(json.loads(path.read_text()), module)
                document["tables"] = module.tables(document["results"])
                if hasattr(module, "figures"):  # charts beside the tables, in docs/
                    charts = module.figures(document["results"])
                    for file_name, content in charts.items():
                        (report.DOCS / file_name).write_bytes(content)
                    document["figures"] = sorted(charts)
                path.write_text(json.dumps(document, indent=2))
        for path in report.write_docs():
            print(f"written {path}")
        return
    names = args or DEFAULT
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    report.RESULTS_DIR.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name} ==")
        module = SECTIONS[name]
        results = module.benchmark()
        tables = module.tables(results)
        print(report.markdown(tables))
        knobs = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                         if k.startswith("BENCH_") and k != "BENCH_HOME")
        command = f"{knobs} make bench SECTIONS={name}".strip()
        document = _noted(report.record(name, command, results, tables), module)
        path = report.RESULTS_DIR / f"{name}.json"
        path.write_text(json.dumps(document, indent=2))
        print(f"written to {path}\n")


if __name__ == "__main__":
    main()
