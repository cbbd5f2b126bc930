"""HTML reports a person opens, under ``$RECSYS_HOME/reports/``: drift, skew, the
champion's metrics and training curves, and ``index.html`` linking them with the
latest Great Expectations Data Docs. Charts are matplotlib PNGs embedded in the
page, so each report is one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from feature_repo.skew import SkewReport  # noqa: E402
from infra.files import atomic_write_text  # noqa: E402
from orchestration.drift import FeatureDrift  # noqa: E402

INDEX, DRIFT, SKEW, CHAMPION = "index.html", "drift.html", "skew.html", "champion.html"
TOP_CATEGORIES = 20
COLOURS = {"OK": "#2e7d32", "WARN": "#ef6c00", "ERROR": "#c62828"}
STYLE = """<style>body{font-family:sans-serif;margin:2em;max-width:1100px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}table{border-collapse:collapse}
img{max-width:100%}.chart{display:inline-block;width:49%;vertical-align:top}</style>"""


def _page(title: str, body: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title>{STYLE}</head><body><h1>{html.escape(title)}</h1>{body}"
            f"<p><small>written {stamp}</small></p></body></html>")


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _severity(level: str) -> str:
    return f'<b style="color:{COLOURS.get(level, "#000")}">{level}</b>'


def _drift_chart(feature: FeatureDrift) -> str:
    figure, axis = plt.subplots(figsize=(6, 3))
    if feature.kind == "categorical":
        shares = (feature.reference.value_counts(normalize=True).rename("reference").to_frame()
                  .join(feature.current.value_counts(normalize=True).rename("current"),
                        how="outer").fillna(0.0))
        shares = shares.loc[(shares["reference"] + shares["current"]).nlargest(
            TOP_CATEGORIES).index]
        x = np.arange(len(shares))
        axis.bar(x - 0.2, shares["reference"], 0.4, label="reference")
        axis.bar(x + 0.2, shares["current"], 0.4, label="current")
        axis.set_xticks(x, [str(c)[:14] for c in shares.index], rotation=60, fontsize=7)
        axis.set_ylabel("share")
    else:
        values = np.concatenate([feature.reference.to_numpy(float),
                                 feature.current.to_numpy(float)])
        bins = np.histogram_bin_edges(values, bins=30) if len(values) else 10
        axis.hist(feature.reference, bins=bins, density=True, alpha=0.5, label="reference")
        axis.hist(feature.current, bins=bins, density=True, alpha=0.5, label="current")
        axis.set_ylabel("density")
    axis.set_title(f"{feature.name} ({feature.severity})")
    axis.legend()
    return _png(figure)


def _stat(name: str, value: float) -> str:
    return f"{name} {value:,}" if isinstance(value, int) else f"{name} {value:.4g}"


def drift_html(features: list[FeatureDrift], summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f.name)}</td><td>{f.kind}</td><td>{_severity(f.severity)}</td>"
        f"<td>{html.escape(', '.join(_stat(k, v) for k, v in f.statistics.items()))}</td></tr>"
        for f in features)
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
                    for k, v in summary.items())
    charts = "".join(f'<div class="chart">{_drift_chart(f)}</div>' for f in features)
    return _page("Drift: current window vs the champion's training reference", (
        f"<ul>{facts}</ul><table><tr><th>feature</th><th>kind</th><th>severity</th>"
        f"<th>statistics</th></tr>{rows}</table><h2>Reference vs current</h2>{charts}"))


def skew_html(report: SkewReport, features: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f)}</td><td>{len(report.mismatches.get(f, []))}</td>"
        f"<td>{report.rate(f):.2%}</td>"
        f"<td>{html.escape(', '.join(report.mismatches.get(f, [])[:10]))}</td></tr>"
        for f in features)
    return _page("Training/serving skew", (
        f"<p>{report.users} users sampled; {report.compared} compared online (Redis) against "
        "offline (point in time, as of each user's newest offline row); "
        f"{len(report.fresher_online)} had newer real-time events online and were not "
        "compared.</p><table><tr><th>feature</th><th>mismatching users</th><th>rate</th>"
        f"<th>examples</th></tr>{rows}</table>"))


def champion_html(version: str, metrics: dict[str, float],
                  curves: dict[str, list[tuple[int, float]]]) -> str:
    """``curves``: metric name -> [(epoch, value)] (per-epoch training history)."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in sorted(metrics.items()))
    plots = ""
    for group in (["train_loss"], [k for k in curves if k.startswith("val_")]):
        present = [k for k in group if curves.get(k)]
        if not present:
            continue
        figure, axis = plt.subplots(figsize=(6, 3))
        for name in present:
            epochs, values = zip(*curves[name], strict=True)
            axis.plot(epochs, values, marker="o", label=name)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=7)
        plots += f'<div class="chart">{_png(figure)}</div>'
    return _page(f"Champion: behaviour_encoder v{version}", (
        f"<h2>Training curves</h2>{plots}<h2>Metrics (test, once; baselines on the same "
        f"split)</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"))


def write(reports_dir: Path, name: str, text: str) -> Path:
    """Write one report atomically (a reader never sees half a page)."""
    return atomic_write_text(reports_dir / name, text)


def index_html(reports_dir: Path, data_docs: Path, notes: dict[str, str]) -> str:
    """Links to each report that exists, with a one-line note each (e.g. its severity)."""
    entries = [("Data quality (Great Expectations Data Docs)", data_docs),
               ("Drift", reports_dir / DRIFT), ("Training/serving skew", reports_dir / SKEW),
               ("Champion model: metrics and training curves", reports_dir / CHAMPION)]
    items = []
    for title, path in entries:
        note = html.escape(notes.get(path.name if path.parent == reports_dir else "data_docs",
                                     ""))
        if path.exists():
            when = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M")
            items.append(f'<li><a href="{path.as_uri()}">{html.escape(title)}</a> '
                         f"(updated {when} UTC) {note}</li>")
        else:
            items.append(f"<li>{html.escape(title)}: not produced yet</li>")
    return _page("Recommendation platform reports", f"<ul>{''.join(items)}</ul>")
