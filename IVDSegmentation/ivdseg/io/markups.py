"""Slicer markups point lists (``.mrk.json``, Slicer's markups JSON schema) written and read without Slicer.

Slicer stores control points in LPS millimetres by default; the core works in RAS, so positions are converted on
the way out and in (a file that says ``"coordinateSystem": "RAS"`` is read as such).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import write_json

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
          "markups-schema-v1.0.3.json#")


@dataclass
class Point:
    """One control point: ``label`` (e.g. "L4-L5"), position in RAS mm, and whether the user fixed it."""

    label: str
    ras: tuple[float, float, float]
    description: str = ""
    locked: bool = False


def _lps(ras) -> list[float]:
    return [-float(ras[0]), -float(ras[1]), float(ras[2])]


def write_points(path, points: list[Point], name: str = "", overwrite=False) -> Path:
    """Writes a point list (Slicer "Fiducial" markups) atomically; ``name`` is shown in Slicer's Data module."""
    control_points = [{
        "id": str(n + 1), "label": p.label, "description": p.description, "associatedNodeID": "",
        "position": _lps(p.ras), "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
        "selected": True, "locked": bool(p.locked), "visibility": True, "positionStatus": "defined",
    } for n, p in enumerate(points)]
    markup = {"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
              "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
              "lastUsedControlPointNumber": len(points), "controlPoints": control_points, "measurements": []}
    if name:
        markup["name"] = name
    return write_json(Path(path), {"@schema": SCHEMA, "markups": [markup]}, overwrite=overwrite)


def read_points(path) -> list[Point]:
    """The control points of the first markup of a ``.mrk.json`` file, in RAS mm.

    Raises:
        IvdsegError: not a readable markups file, or a point without a position.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        markup = doc["markups"][0]
        system = markup.get("coordinateSystem", "LPS")
        if system not in ("LPS", "RAS"):
            raise IvdsegError(f"{path} uses the coordinate system {system!r}; only LPS and RAS are read.")
        out = []
        for cp in markup.get("controlPoints", []):
            x, y, z = (float(v) for v in cp["position"])
            ras = (-x, -y, z) if system == "LPS" else (x, y, z)
            out.append(Point(label=str(cp.get("label", "")), ras=ras, description=str(cp.get("description", "")),
                             locked=bool(cp.get("locked", False))))
        return out
    except FileNotFoundError:
        raise IvdsegError(f"{path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError):
        raise IvdsegError(f"{path} is not a Slicer markups point list (.mrk.json).") from None
