"""Make `dvc plots show` / `dvc plots diff` pages work offline: a local copy of vega, vega-lite and vega-embed.

    python scripts/vendor_vega.py            # run by `make setup`; idempotent

DVC's default page loads the three scripts from a CDN, so offline its loss and KL curves stay blank.
This fetches the exact versions DVC's renderer asks for (dvc-render 1.0.2) from the npm registry,
checks each tarball against the sha512 pinned below before reading it, and writes
`vendor/dvc_plots.html`: DVC's page template with the scripts inlined (so the page works wherever
`-o` puts it). It then points this repository's DVC at it (`dvc config --local plots.html_template`).
If the registry cannot be reached or answers badly (any network failure: an HTTP error, a timeout, a
bad status line, an answer cut off mid-body, a wrong checksum), it warns and leaves DVC's default
(CDN) template in place: the pipeline does not need it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "vendor" / "dvc_plots.html"
# name, version, file inside the tarball, npm's dist.integrity (sha512, base64)
PACKAGES = [
    ("vega", "5.20.2", "package/build/vega.min.js",
     "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
]
REGISTRY = "https://registry.npmjs.org"
FETCH_TIMEOUT_S = 60
# DVC fills {plot_divs} and {refresh_tag}; {scripts} (its CDN tags) is deliberately absent.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
SCRIPT_TAGS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch_script(name: str, version: str, member: str, integrity: str) -> str:
    """The minified script `member` of npm package name@version, after checking the tarball's sha512."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        tarball = response.read()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != integrity:
        raise ValueError(f"{url}: sha512 {digest} is not the pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        return archive.extractfile(member).read().decode("utf-8")


def main() -> int:
    if not TEMPLATE.exists():
        try:
            scripts = [fetch_script(*package) for package in PACKAGES]
        except (OSError, ValueError, http.client.HTTPException, tarfile.TarError) as error:
            # Any network failure (no route, HTTP error, timeout, a bad status line, an answer cut off
            # mid-body) or a tarball that is not the pinned one: warn, the pipeline does not need it.
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            print(f"vendor_vega: warning: could not fetch vega from {REGISTRY} ({reason}); "
                  "`dvc plots show` keeps DVC's default page, which loads vega from a CDN", file=sys.stderr)
            return 0
        # A literal "</script>" inside inlined code would end the tag early.
        inline = [code.replace("</script", "<\\/script") for code in scripts]
        tags = "\n".join("    <script>\n" + code + "\n    </script>" for code in inline)
        TEMPLATE.parent.mkdir(exist_ok=True)
        partial = TEMPLATE.with_suffix(".tmp")
        partial.write_text(PAGE.replace("SCRIPT_TAGS", tags), encoding="utf-8")
        partial.replace(TEMPLATE)
        print(f"vendor_vega: wrote {TEMPLATE.relative_to(ROOT)} (" +
              ", ".join(f"{name} {version}" for name, version, _, _ in PACKAGES) + ")")
    # Relative to .dvc/, as DVC resolves it; config.local is this clone's, not committed.
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", "../vendor/dvc_plots.html"],
                   cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
