"""MkDocs hooks: the front page is the README (its links into docs/ made relative to the site), and
the committed results (figures, tables, provenance) are published with the pages, so that every
figure shown and every number quoted links to the file it comes from (`results/...`); the table of
kernel methods is rendered from `ntk.methods`."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
KINDS = (".png", ".csv", ".md", ".json", ".yaml")


def on_files(files, config):
    readme = (ROOT / "README.md").read_text().replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=readme))
    for path in sorted((ROOT / "results").rglob("*")):
        if path.is_file() and path.suffix in KINDS and ".parts" not in path.parts:
            uri = path.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


METHODS_MARKER = "<!-- ntk.methods.methods_table -->"


def on_page_markdown(markdown, page, config, files):
    """The table of kernel methods comes from the library's own table (`ntk.methods.METHODS`), never
    copied by hand: a page that holds the marker gets it there."""
    if METHODS_MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:  # mkdocs runs from anywhere: the library is the checkout's own
        sys.path.insert(0, str(ROOT))
    from ntk.methods import methods_table  # imported only for a page that needs it

    return markdown.replace(METHODS_MARKER, methods_table())
