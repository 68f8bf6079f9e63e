"""A synthetic sagittal T2 lumbar spine, built in code: test data that needs no file.

Drawn after the look of clinical sagittal T2 slices: dark background and soft tissue, vertebral
bodies as grey blocks with dark cortical rims, discs between them with a brighter nucleus, bright
CSF behind the bodies and grey posterior elements, with lordosis, blur and noise. The truth
labelmap marks the discs (1).
"""

from __future__ import annotations

import cv2
import numpy as np

from ivdseg.io.geometry import Volume


def _body(canvas, centre, size, angle, value, rim):
    box = cv2.boxPoints((centre, size, angle)).astype(np.int32)
    cv2.fillConvexPoly(canvas, box, rim)
    inner = cv2.boxPoints((centre, (size[0] - 4, size[1] - 4), angle)).astype(np.int32)
    cv2.fillConvexPoly(canvas, inner, value)


def synthetic_spine_slices(n_slices=15, height=320, width=256, levels=6, seed=0):
    """(image (N, H, W) float32, discs (N, H, W) uint8): rows superior->inferior, columns anterior->posterior."""
    rng = np.random.default_rng(seed)
    image = np.zeros((n_slices, height, width), np.float32)
    truth = np.zeros((n_slices, height, width), np.uint8)
    mid = n_slices // 2
    body_w, body_h, disc_h = 40, 30, 12
    step = body_h + disc_h
    for n in range(n_slices):
        lateral = abs(n - mid) / max(mid, 1)
        sl = np.full((height, width), 12.0, np.float32)
        cv2.ellipse(sl, (int(width * 0.55), height // 2), (int(width * 0.42), int(height * 0.6)), 0, 0, 360, 45.0, -1)
        centres = []
        for level in range(levels):
            y = 20 + level * step + body_h / 2
            x = width * 0.55 - 14 * np.sin(np.pi * y / height)  # lordosis
            angle = -12 * np.cos(np.pi * y / height)
            centres.append((x, y, angle))
        if lateral < 0.75:  # CSF and posterior elements
            pts = np.array([[int(x + body_w / 2 + 10), int(y)] for x, y, _ in centres], np.int32)
            pts = np.vstack([[pts[0][0], 0], pts, [pts[-1][0] + 6, height]])
            cv2.polylines(sl, [pts], False, 210.0 * (1 - 0.6 * lateral), 9)
            for x, y, _ in centres:
                cv2.ellipse(sl, (int(x + body_w / 2 + 36), int(y + 6)), (12, 16), 0, 0, 360, 85.0, -1)
        if lateral < 0.9:
            for k, (x, y, angle) in enumerate(centres):
                _body(sl, (x, y), (body_w, body_h), angle, 95.0, 35.0)
                if k + 1 < len(centres) and lateral < 0.7:
                    nx, ny, nangle = centres[k + 1]
                    cx, cy = (x + nx) / 2, (y + ny) / 2
                    axes = (int(body_w * 0.5 * (1 - 0.4 * lateral)), int(disc_h / 2))
                    a = (angle + nangle) / 2
                    mask = np.zeros((height, width), np.uint8)
                    cv2.ellipse(mask, (int(cx), int(cy)), axes, a, 0, 360, 1, -1)
                    sl[mask > 0] = 75.0
                    cv2.ellipse(sl, (int(cx), int(cy)), (axes[0] // 2, max(axes[1] // 2, 1)), a, 0, 360, 130.0, -1)
                    truth[n] |= mask
        sl = cv2.GaussianBlur(sl, (5, 5), 1.0) + rng.normal(0, 7, sl.shape).astype(np.float32)
        image[n] = np.clip(sl, 0, None)
    return image, truth


def synthetic_spine_volume(spacing_mm=(1.0, 1.0, 3.0), seed=0):
    """(image Volume, truth Volume): the slices of :func:`synthetic_spine_slices` as a PSR-like volume.

    Voxel i runs anterior->posterior, j superior->inferior and k left->right, so array (K, J, I) is
    exactly the slice stack; spacing (i, j, k) in mm.
    """
    image, truth = synthetic_spine_slices(seed=seed)
    si, sj, sk = spacing_mm
    ijk_to_ras = np.array([[0.0, 0.0, sk, -20.0],
                           [-si, 0.0, 0.0, 60.0],
                           [0.0, -sj, 0.0, 120.0],
                           [0.0, 0.0, 0.0, 1.0]])
    return Volume(image, ijk_to_ras), Volume(truth, ijk_to_ras.copy())
