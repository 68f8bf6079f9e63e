"""An RLE mask table (the Kaggle layout of UW-Madison's train.csv: id, class, segmentation) plus a folder of its
images, as a source of the training panel beside the scene's pairs.

The panel reads the table once to show what it holds (images, cases, and per class the images with and without a
mask: empty slices are kept by the export and said), and the export itself runs ``ivdseg export`` on a spec of kind
``rle_csv`` in the worker (:mod:`ivdseg.data.rle_source`), where every row, RLE and image is checked.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

COLUMNS = ("id", "class", "segmentation")
# UW-Madison: <image folder>/case123/case123_day20/scans/slice_0065_<w>_<h>_<sx>_<sy>.png
IMAGE_TEMPLATE = "{case}/{case}_{day}/scans/slice_{slice}_*.png"
CASE_OF_ID = re.compile(r"^(case\d+)_")


def outputClassName(tableClass: str) -> str:
    """The dataset's name of a table class: "large_bowel" -> "large bowel"."""
    return tableClass.replace("_", " ").strip()


def rleTableSummary(csvPath) -> dict:
    """What a table holds, from its id and class columns (RLEs are not decoded; cheap for a table of 100 000 rows).

    Returns:
        {"images": n, "cases": k, "imagesWithoutMask": e, "classes": {table class: {"withMask": a, "empty": b}}}:
        an image is empty for a class when its cell is empty or the table has no row for it.

    Raises:
        ValueError: the file is missing or unreadable, or lacks one of the columns id, class, segmentation.
    """
    path = Path(csvPath)
    masks: dict[str, set] = {}  # table class -> ids with a mask
    ids: set = set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ValueError(f"{path.name} lacks the column(s) {', '.join(missing)}; the panel reads tables with "
                                 f"the columns {', '.join(COLUMNS)} (other layouts: ivdseg export --spec).")
            at = [header.index(c) for c in COLUMNS]
            for row in reader:
                if len(row) <= max(at) or not row[at[0]].strip():
                    continue
                image, cls, rle = (row[i].strip() for i in at)
                ids.add(image)
                hits = masks.setdefault(cls, set())
                if rle:
                    hits.add(image)
    except FileNotFoundError:
        raise ValueError(f"The table {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"The table {path} cannot be read ({exc}).") from None
    if not ids:
        raise ValueError(f"The table {path.name} has no rows.")
    cases = {m.group(1) for m in map(CASE_OF_ID.match, ids) if m}
    anyMask = set().union(*masks.values())
    return {"images": len(ids), "cases": len(cases), "imagesWithoutMask": len(ids - anyMask),
            "classes": {c: {"withMask": len(hit), "empty": len(ids) - len(hit)} for c, hit in sorted(masks.items())}}


def summaryText(summary: dict) -> str:
    """One paragraph for the panel: images, cases, per class the images with a mask and the empty ones."""
    perClass = "; ".join(f"{outputClassName(c)}: {n['withMask']} with a mask, {n['empty']} empty"
                         for c, n in summary["classes"].items())
    return (f"{summary['images']} images of {summary['cases']} cases, {summary['imagesWithoutMask']} without any mask "
            f"(kept: a network that never sees an empty image never learns to predict nothing). {perClass}.")


def writeRleSpec(csvPath, imageFolder, tableClasses, folder, overlapping=True) -> Path:
    """Writes the export spec of a table and its image folder into ``folder`` (the job's private folder).

    Args:
        csvPath: the table.
        imageFolder: the folder holding the case folders (UW-Madison's ``train/``).
        tableClasses: the table's class names to export, each its own output class (:func:`outputClassName`).
        overlapping: keep overlapping classes (one bit each); False refuses an overlap, naming the image.

    Raises:
        ValueError: no class, or the image folder does not exist.
    """
    if not tableClasses:
        raise ValueError("The table names no class to export.")
    if not Path(imageFolder).is_dir():
        raise ValueError(f"The image folder {imageFolder} does not exist.")
    classMap = {outputClassName(c): [c] for c in tableClasses}
    spec = {"classes": list(classMap), "overlapping": bool(overlapping),
            "sources": [{"name": "rle_table", "kind": "rle_csv", "root": str(Path(imageFolder).resolve()),
                         "csv": str(Path(csvPath).resolve()), "image_template": IMAGE_TEMPLATE,
                         "classes": classMap}]}
    path = Path(folder) / "spec.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path
