"""What each class is, in the codes Slicer and DICOM SEG use: SNOMED CT terminology, colours, segment tags.

Slicer's own terminology contexts ("General Anatomy", "DICOM master list") lack intervertebral disc (SNOMED CT
360499006), so the terminology selector could not show a disc segment's type. The extension ships its own
context, ``IVDSegmentation/Resources/Terminology/SegmentationCategoryTypeModifier-IVDSegmentation.term.json``
(loaded at module start-up), which lists every type of :data:`TYPES`; a test keeps the two in step.

One serialiser (:func:`terminology_entry`) and one segment builder (:func:`segment_descriptions`) serve both the
``.seg.nrrd`` writer of the command line and the segmentation nodes of the Slicer side, so a result has the same
names, colours and tags wherever it is made.
"""

from __future__ import annotations

CONTEXT_NAME = "Segmentation category and type - IVDSegmentation"
ANATOMIC_CONTEXT_NAME = "Anatomic codes - DICOM master list"
# Codes as (coding scheme, code value, code meaning).
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
TYPES = {
    "intervertebral disc": ("SCT", "360499006", "Intervertebral disc"),
    "vertebra": ("SCT", "51282000", "Vertebra"),
    "spinal canal": ("SCT", "180959008", "Spinal canal"),
}
DEFAULT_COLORS = [(0.0, 0.0, 0.0), (0.27, 0.80, 0.64), (0.89, 0.85, 0.62), (0.40, 0.52, 0.90),
                  (0.90, 0.45, 0.35), (0.70, 0.45, 0.85), (0.95, 0.70, 0.25)]
# Characters that end a header line or a tag ("|"), a terminology part ("~") or a code field ("^").
_FORBIDDEN = {"\n": "a line break", "\r": "a line break", "|": "'|'"}
_CODE_FORBIDDEN = {**_FORBIDDEN, "~": "'~'", "^": "'^'"}


def class_entries(class_names: list[str]) -> list[dict]:
    """Card entries for the foreground classes ``class_names[1:]`` (index = label value): value, name, colour
    (cycling through DEFAULT_COLORS after background's) and, for a known class, its terminology."""
    out = []
    for value, name in enumerate(class_names[1:], start=1):
        entry = {"value": value, "name": name, "color": list(DEFAULT_COLORS[1 + (value - 1) % (len(DEFAULT_COLORS) - 1)])}
        code = TYPES.get(name.lower())
        if code:
            entry["terminology"] = {"category": list(ANATOMICAL_STRUCTURE), "type": list(code)}
        out.append(entry)
    return out


def check_text(text, what: str, forbidden=_FORBIDDEN) -> str:
    """``text`` when it is a non-empty string that a segment header field can hold; else ValueError."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a non-empty string; got {text!r}.")
    for char, label in forbidden.items():
        if char in text:
            raise ValueError(f"{what} {text!r} contains {label}, which a segment's tags cannot hold.")
    return text


def _code(entry: dict | None, key: str, what: str) -> str:
    """``scheme^value^meaning`` of one (coding scheme, code value, code meaning) triple; ``^^`` when absent."""
    triple = (entry or {}).get(key)
    if not triple:
        return "^^"
    if len(triple) != 3:
        raise ValueError(f"{what} {key} must be [coding scheme, code value, code meaning]; got {triple!r}.")
    return "^".join(check_text(part, f"{what} {key}", _CODE_FORBIDDEN) for part in triple)


def terminology_entry(terminology: dict | None, what: str = "terminology") -> str:
    """Slicer's serialized terminology entry, as ``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry``.

    Seven ``~``-separated parts: context name (:data:`CONTEXT_NAME`), category, type, type modifier, anatomic
    context name, region, region modifier; each code is ``scheme^value^meaning``.

    Args:
        terminology: ``{"category": [scheme, value, meaning], "type": [...]}``, optionally ``"type_modifier"``,
            ``"region"``, ``"region_modifier"``; None or empty gives "".
        what: how error messages name the entry.

    Raises:
        ValueError: category or type missing, or a code that is not a triple of strings free of ``~^|``.
    """
    if not terminology:
        return ""
    for key in ("category", "type"):
        if not terminology.get(key):
            raise ValueError(f"{what} has no {key}; a terminology needs both a category and a type.")
    parts = [CONTEXT_NAME, _code(terminology, "category", what), _code(terminology, "type", what),
             _code(terminology, "type_modifier", what), ANATOMIC_CONTEXT_NAME, _code(terminology, "region", what),
             _code(terminology, "region_modifier", what)]
    return "~".join(parts)


def segment_descriptions(classes: list[dict], algorithm_name: str | None = None) -> list[dict]:
    """One segment per class of a card: what both the ``.seg.nrrd`` writer and the Slicer side create.

    Args:
        classes: card classes (``value`` 1..255, ``name``, ``color`` r, g, b in 0..1, optional ``terminology``).
        algorithm_name: for a model's output, e.g. "ivd-disc-2d 1.0.0": every segment is then tagged
            ``DICOM.SegmentAlgorithmType`` = AUTOMATIC and ``DICOM.SegmentAlgorithmName`` = this, which Slicer's
            DICOM SEG export reads.

    Returns:
        ``[{"id": "Segment_<value>", "name", "color": (r, g, b), "label_value", "tags": {key: value}}]`` in class
        order; ``tags`` holds ``TerminologyEntry`` when the class has a terminology.

    Raises:
        ValueError: a class without a valid value, name or colour, or with a bad terminology.
    """
    out = []
    for cls in classes:
        what = f"Class {cls.get('value')!r}"
        value = cls.get("value")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise ValueError(f"{what}: class values must be integers 1..255 (0 is background).")
        color = tuple(float(c) for c in cls.get("color", ()))
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"{what} needs a colour of three values in 0..1; got {cls.get('color')!r}.")
        tags = {}
        entry = terminology_entry(cls.get("terminology"), f"{what} terminology")
        if entry:
            tags["TerminologyEntry"] = entry
        if algorithm_name is not None:
            tags["DICOM.SegmentAlgorithmType"] = "AUTOMATIC"
            tags["DICOM.SegmentAlgorithmName"] = check_text(algorithm_name, "The algorithm name")
        out.append({"id": f"Segment_{value}", "name": check_text(cls.get("name"), f"{what} name"), "color": color,
                    "label_value": value, "tags": tags})
    return out
