"""Disc-centre point lists: written by the core in Slicer's markups JSON, read back by Slicer's own markups
storage node (slicer-core) and by the core."""

from __future__ import annotations

import json

import pytest
from conftest import require_slicer_core

from ivdseg.errors import IvdsegError
from ivdseg.io.markups import Point, read_points, write_points

POINTS = [Point("L4-L5", (12.5, -30.25, 101.0), "L4-L5 intervertebral disc centre"),
          Point("L5-S1", (11.0, -25.5, 64.75), "fixed by the user", locked=True)]


def test_slicer_reads_the_points_at_their_positions(mrml, tmp_path):
    slicer = require_slicer_core()
    path = write_points(tmp_path / "discs.mrk.json", POINTS, name="Disc centres")
    node = slicer.vtkMRMLMarkupsFiducialNode()
    mrml.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    mrml.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert node.GetNumberOfControlPoints() == 2
    for n, p in enumerate(POINTS):
        assert node.GetNthControlPointLabel(n) == p.label
        assert node.GetNthControlPointDescription(n) == p.description
        assert node.GetNthControlPointLocked(n) == p.locked
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(n, pos)  # RAS, as Slicer shows it
        assert pos == pytest.approx(list(p.ras))


def test_points_round_trip_in_the_core_and_in_ras_files(tmp_path):
    path = write_points(tmp_path / "discs.mrk.json", POINTS)
    assert read_points(path) == POINTS
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["coordinateSystem"] == "LPS"
    assert doc["markups"][0]["controlPoints"][0]["position"] == [-12.5, 30.25, 101.0]
    doc["markups"][0]["coordinateSystem"] = "RAS"
    path.write_text(json.dumps(doc))
    assert read_points(path)[0].ras == (-12.5, 30.25, 101.0)
    with pytest.raises(IvdsegError, match="exists"):
        write_points(path, POINTS)


def test_a_file_that_is_not_a_point_list_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.mrk.json"
    bad.write_text('{"markups": []}')
    with pytest.raises(IvdsegError, match="is not a Slicer markups point list"):
        read_points(bad)
    with pytest.raises(IvdsegError, match="does not exist"):
        read_points(tmp_path / "missing.mrk.json")
