"""Interactive point correction: the user drags one point, the keypoint network moves the others.

:class:`PointCorrection` observes a markups point list. When the user finishes dragging a point
(``PointEndInteractionEvent``, not every mouse move), every point the user has placed so far becomes a hint, the
keypoint model runs again, and the points the user has not placed move to the new prediction; the placed ones stay
exactly where the user left them and are locked. ``undo()`` restores the points as they were before the last
correction. The model runs through ``predict(fixed) -> {label: (x, y, z)}`` (RAS mm), in Slicer a
:class:`KeypointServer` (a worker that keeps the model loaded), in tests any function.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import slicer
import vtk

from ivdseg.models.terminology import TYPES

MOVED_MM = 1e-3  # a point that moved less than this was not moved by the user


class PointCorrection:
    """Keeps a point list in step with a keypoint model while the user corrects it.

    Args:
        pointsNode: a vtkMRMLMarkupsFiducialNode whose control point labels are keypoint names (e.g. "L4-L5").
        predict: ``predict({label: (x, y, z)}) -> {label: (x, y, z)}``, RAS mm; returns every keypoint it knows.
        onCorrected: optional ``onCorrected(movedLabels, seconds)`` after each correction (e.g. to rename segments).
        onError: optional ``onError(exception)`` for a model that failed after a drag (an observer cannot raise
            to the GUI); without it the error is raised.
        known: the labels the model has (default: all); points with other labels are neither hints nor moved.
    """

    def __init__(self, pointsNode, predict, onCorrected=None, onError=None, known=None):
        self.pointsNode = pointsNode
        self.predict = predict
        self.known = set(known) if known is not None else None
        self.onCorrected = onCorrected
        self.onError = onError
        self.userPlaced: set[str] = {self._label(n) for n in range(pointsNode.GetNumberOfControlPoints())
                                     if pointsNode.GetNthControlPointLocked(n)}
        self._snapshot = self._positions()
        self._undo: list[tuple[np.ndarray, set[str]]] = []
        self._observer = None
        self.lastSeconds = None

    # ------------------------------------------------------------ observing
    def start(self):
        if self._observer is None:
            self._observer = self.pointsNode.AddObserver(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                                                         self.onPointEndInteraction)

    def stop(self):
        if self._observer is not None:
            self.pointsNode.RemoveObserver(self._observer)
            self._observer = None

    def onPointEndInteraction(self, caller=None, event=None):
        """After a drag: the points that moved since the last correction are the user's; the model moves the rest."""
        moved = [n for n, (now, before) in enumerate(zip(self._positions(), self._snapshot))
                 if np.linalg.norm(now - before) > MOVED_MM]
        if not moved:
            return
        try:
            self.correct([self._label(n) for n in moved])
        except ValueError as exc:
            if self.onError is None:
                raise
            self.onError(exc)

    # ------------------------------------------------------------ correcting
    def correct(self, movedLabels):
        """Makes ``movedLabels`` user-placed, re-runs the model with every user-placed point as a hint, and moves
        the other points; raises ValueError (points unchanged) when the model fails."""
        before = self._snapshot.copy()
        placed = self.userPlaced | set(movedLabels)
        positions = self._positions()
        fixed = {self._label(n): tuple(positions[n]) for n in range(len(positions))
                 if self._label(n) in placed and (self.known is None or self._label(n) in self.known)}
        started = time.perf_counter()
        predicted = self.predict(fixed)
        self.lastSeconds = time.perf_counter() - started
        self._undo.append((before, set(self.userPlaced)))
        self.userPlaced = placed
        self._apply(predicted, placed, positions)
        if self.onCorrected:
            self.onCorrected(list(movedLabels), self.lastSeconds)

    def undo(self) -> bool:
        """Restores the points (and which of them the user had placed) as before the last correction."""
        if not self._undo:
            return False
        positions, placed = self._undo.pop()
        self.userPlaced = placed
        labels = [self._label(n) for n in range(len(positions))]
        self._apply(dict(zip(labels, map(tuple, positions))), placed, positions, moveAll=True)
        return True

    def _apply(self, targets: dict, placed: set, positions, moveAll=False):
        node = self.pointsNode
        wasModifying = node.StartModify()
        try:
            for n in range(node.GetNumberOfControlPoints()):
                label = self._label(n)
                if label in targets and (moveAll or label not in placed):
                    node.SetNthControlPointPosition(n, *(float(v) for v in targets[label]))
                elif label in placed:
                    node.SetNthControlPointPosition(n, *(float(v) for v in positions[n]))  # exactly as left
                node.SetNthControlPointLocked(n, label in placed)
        finally:
            node.EndModify(wasModifying)
        self._snapshot = self._positions()

    # ------------------------------------------------------------ helpers
    def _label(self, n) -> str:
        return self.pointsNode.GetNthControlPointLabel(n)

    def _positions(self) -> np.ndarray:
        node = self.pointsNode
        out = np.zeros((node.GetNumberOfControlPoints(), 3))
        for n in range(len(out)):
            node.GetNthControlPointPosition(n, out[n])
        return out


class KeypointServer:
    """``ivdseg serve-keypoints IMAGE --model PKG`` kept running: the model loads once, then each correction costs
    one network run. Calls are synchronous but bounded by ``timeout`` seconds, so a dead worker never freezes the
    GUI; ``close()`` ends it (closing its stdin ends the loop)."""

    def __init__(self, imagePath, modelPath, python=None, timeout=10.0, startTimeout=120.0):
        from IVDSegmentationLib.worker import processOptions, workerEnvironment

        self.timeout = timeout
        self.python = python or sys.executable
        from ivdseg.stop import STOP_ON_STDIN_EOF_ENV

        env = workerEnvironment(self.python)
        env.pop(STOP_ON_STDIN_EOF_ENV, None)  # no stdin watcher: stdin carries the requests (its end ends the loop)
        try:
            self.process = subprocess.Popen(
                [self.python, "-m", "ivdseg", "serve-keypoints", str(imagePath), "--model", str(modelPath)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                errors="replace", env=env, **processOptions())
        except OSError as exc:
            raise ValueError(f"The worker Python {self.python} could not be started ({exc.strerror or exc}).") from None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self._stderr.append), daemon=True).start()
        ready = self._answer(startTimeout)
        if ready.get("event") != "ready":
            self.close()
            raise ValueError(ready.get("error") or "The keypoint worker did not start.")
        self.labels = list(ready["keypoints"])

    @staticmethod
    def _read(stream, put):
        for line in stream:
            put(line)

    def _answer(self, timeout) -> dict:
        """The next JSON line of the worker; a worker that ended or stays silent for ``timeout`` s is an error
        naming its last stderr line (e.g. its one-sentence refusal of the image)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.05)
            except queue.Empty:
                if self.process.poll() is not None and self._lines.empty():
                    time.sleep(0.1)  # let the reader threads take the last lines
                    if self._lines.empty():
                        break
                continue
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's stray line on stdout
        self.close()
        errors = [line.strip() for line in self._stderr if line.strip().startswith("ivdseg ")]
        reason = errors[-1] if errors else "".join(self._stderr[-2:]).strip()
        raise ValueError("The keypoint worker stopped" + (f": {reason}" if reason else " without an answer."))

    def __call__(self, fixed: dict) -> dict:
        if self.process.poll() is not None:
            raise ValueError("The keypoint worker has ended; start the correction again.")
        request = {"fixed": {label: [float(v) for v in xyz] for label, xyz in fixed.items()}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self._answer(self.timeout)
        if "error" in answer:
            raise ValueError(answer["error"])
        return dict(zip(self.labels, map(tuple, answer["points"])))

    def close(self):
        from IVDSegmentationLib.worker import killProcessTree

        try:
            self.process.stdin.close()
            self.process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            killProcessTree(self.process)


def _isDisc(segment) -> bool:
    """Whether a segment is a disc: its terminology says so, or its name does (the results name each disc "L4-L5
    intervertebral disc", or "intervertebral disc 3" while numbered); a spine model's vertebra and canal are not."""
    entry = vtk.reference("")
    coded = segment.GetTag("TerminologyEntry", entry) and f"^{TYPES['intervertebral disc'][1]}^" in str(entry)
    return bool(coded) or "disc" in segment.GetName().lower()


def renameSegmentsByPoints(segmentationNode, pointsNode, suffix=" intervertebral disc"):
    """After a correction: each disc segment takes the level of the nearest point (closest pairs first, each point
    and each segment once), so the names follow the corrected points. Returns {segment ID: level}; segments left
    without a point keep their name, and so do segments that are not discs (the vertebrae and canal of a spine
    model)."""
    labels, points = [], []
    for n in range(pointsNode.GetNumberOfControlPoints()):
        p = np.zeros(3)
        pointsNode.GetNthControlPointPosition(n, p)
        labels.append(pointsNode.GetNthControlPointLabel(n))
        points.append(p)
    segmentation = segmentationNode.GetSegmentation()
    centres = {}
    for n in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(n)
        if not _isDisc(segmentation.GetSegment(segmentId)):
            continue
        centre = segmentationNode.GetSegmentCenterRAS(segmentId)
        if centre is not None:
            centres[segmentId] = np.asarray(centre, float)
    pairs = sorted((float(np.linalg.norm(c - p)), label, segmentId)
                   for label, p in zip(labels, points) for segmentId, c in centres.items())
    named, usedLabels = {}, set()
    for _, label, segmentId in pairs:  # closest pairs first, each point and each segment once
        if segmentId not in named and label not in usedLabels:
            named[segmentId] = label
            usedLabels.add(label)
    for segmentId, label in named.items():
        segmentation.GetSegment(segmentId).SetName(f"{label}{suffix}")
    return named
