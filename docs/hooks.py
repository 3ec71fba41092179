"""MkDocs hooks: the front page is the README (its links into docs/ made relative to the site), and
the committed results (figures, tables, provenance) are published with the pages, so that every
figure shown and every number quoted links to the file it comes from (`results/...`)."""

from __future__ import annotations

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
