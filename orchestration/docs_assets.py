"""Great Expectations' Data Docs, readable offline.

GX renders its pages with jQuery, Bootstrap, Font Awesome, Vega and friends
loaded from CDNs, and a logo from S3 with the data context's id in the URL. This
module fetches exactly those versions once, at install time, with npm (``python
-m orchestration.docs_assets``, which ``make install`` runs), and after every
Data Docs build copies them beside the pages and points the pages at the copies.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Where the fetched packages live: with the installation, not the state.
ASSETS_DIR = Path(sys.prefix) / "share" / "recsys-data-docs-assets"
VENDOR = "static/vendor"  # under the Data Docs site
# npm package -> the CDN URLs of the pages that it serves, each with its file in the
# package (a directory: copied whole, for stylesheets that load fonts beside them).
PACKAGES: dict[str, dict[str, str]] = {
    "jquery@3.7.1": {"https://code.jquery.com/jquery-3.7.1.min.js": "dist/jquery.min.js"},
    "bootstrap@4.3.1": {
        "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
            "dist/css/bootstrap.min.css",
        "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
            "dist/js/bootstrap.min.js"},
    "popper.js@1.12.9": {
        "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
            "dist/umd/popper.min.js"},
    "bootstrap-table@1.19.1": {
        "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
            "dist/bootstrap-table.min.js",
        "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
            "dist/bootstrap-table.min.css",
        "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.js":
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
        "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.css":
            "dist/extensions/filter-control/bootstrap-table-filter-control.css",
        "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.css":
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"},
    "@fortawesome/fontawesome-free@6.6.0": {
        "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
            "css/all.min.css"},
    "bootstrap-datepicker@1.9.0": {
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
        "bootstrap-datepicker.min.js": "dist/js/bootstrap-datepicker.min.js",
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
        "bootstrap-datepicker.min.css": "dist/css/bootstrap-datepicker.min.css"},
    "@forevolve/bootstrap-dark@1.1.0": {
        "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
        "bootstrap-prefers-dark.css": "dist/css/bootstrap-prefers-dark.css"},
    "vega@5": {"https://cdn.jsdelivr.net/npm/vega@5": "build/vega.min.js"},
    "vega-lite@5": {"https://cdn.jsdelivr.net/npm/vega-lite@5": "build/vega-lite.min.js"},
    "vega-embed@6": {"https://cdn.jsdelivr.net/npm/vega-embed@6": "build/vega-embed.min.js"},
}
# Files a stylesheet loads relative to itself (Font Awesome's fonts).
ALONGSIDE = {"@fortawesome/fontawesome-free@6.6.0": "webfonts"}
# GX's own static files, linked from nested pages with too few "../" at times.
OWN_STATIC = re.compile(r'(src|href)="(?:\./|(?:\.\./)*)static/(?!vendor/)')
# GX's logo is fetched from S3 with the data context's id in its query string.
LOGO = re.compile(r'src="https://great-expectations-web-assets\.[^"]*"')
BLANK = 'src="data:image/gif;base64,R0lGODlhAQABAAAAACw="'


def _directory(package: str) -> str:
    return package.rsplit("@", 1)[0].lstrip("@").replace("/", "-")


def fetch(destination: Path = ASSETS_DIR) -> None:
    """``npm pack`` each package and unpack it under ``destination`` (once)."""
    destination.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        target = destination / _directory(package)
        if target.is_dir():
            continue
        with tempfile.TemporaryDirectory() as scratch:
            packed = subprocess.run(["npm", "pack", package, "--silent"], cwd=scratch,
                                    check=True, capture_output=True, text=True)
            archive = Path(scratch) / packed.stdout.strip().splitlines()[-1]
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            shutil.move(Path(scratch) / "package", target)


def localise(site: Path, assets: Path = ASSETS_DIR) -> bool:
    """Copy the assets into ``site`` and point its pages at them; False (pages left
    as GX wrote them, with a warning) when the assets were never fetched."""
    missing = [p for p in PACKAGES if not (assets / _directory(p)).is_dir()]
    if missing:
        log.warning("Data Docs keep their CDN links: %s not fetched (run "
                    "`python -m orchestration.docs_assets`)", ", ".join(missing))
        return False
    vendor = site / VENDOR
    urls: dict[str, str] = {}
    for package, files in PACKAGES.items():
        source = assets / _directory(package)
        for url, inside in files.items():
            copy = vendor / _directory(package) / inside
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / inside, copy)
            urls[url] = copy.relative_to(site).as_posix()
        if package in ALONGSIDE:
            shutil.copytree(source / ALONGSIDE[package],
                            vendor / _directory(package) / ALONGSIDE[package],
                            dirs_exist_ok=True)
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        depth = "../" * (len(page.relative_to(site).parts) - 1)
        new = OWN_STATIC.sub(rf'\1="{depth}static/', LOGO.sub(BLANK, text))
        for url, local in urls.items():
            new = new.replace(f'"{url}"', f'"{depth}{local}"')
        if new != text:
            page.write_text(new, encoding="utf-8")
    return True


if __name__ == "__main__":
    fetch()
    print(f"Data Docs assets in {ASSETS_DIR}")
