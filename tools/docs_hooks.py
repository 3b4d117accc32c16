"""MkDocs hooks (mkdocs.yml `hooks:`): every `<!-- reference: NAME -->` ...
`<!-- /reference -->` block of a page becomes the reference made from the code
(tools/reference.py) while the site builds, so the reference pages cannot drift
from the code. Between the markers the page says so to whoever reads its source."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import reference

MARKER = re.compile(r"<!--\s*reference:\s*([\w-]+)\s*-->.*?<!--\s*/reference\s*-->", re.S)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: reference.page(m.group(1)), markdown)
