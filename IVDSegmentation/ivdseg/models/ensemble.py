"""Ensembles: segmentation packages of one recipe (trainings with other seeds, the folds of a cross-validation)
averaged into one network.

The ensemble is itself a Keras model: the members, each wrapped as a sub-model, read the same input and a Keras
``Average`` layer averages their probabilities. So it saves, loads in safe mode, exports to ONNX and runs through
every backend, test-time augmentation and post-processing like any package; it costs the members' summed inference
time, and its package holds every member's weights.
"""

from __future__ import annotations

from pathlib import Path

from ivdseg.errors import IvdsegError

# What inference repeats from a card: members that differ in any of these cannot share one input or one output.
MUST_AGREE = ("input_size", "channels", "context_slices", "overlapping", "normalization", "slice_plane",
              "slice_axes", "preprocessing", "classes", "label_priority", "rle_class_names", "rle_order")


# Descriptive entries kept from the members when they all say the same (the data licences above all).
KEPT_WHEN_EQUAL = ("description", "intended_use", "limitations", "training_data_licences", "keypoint_model")
# Entries of a card's "instances" that were chosen on one member's validation discs, not the ensemble's.
PER_MODEL_INSTANCE_KEYS = ("review_threshold", "review_chosen_on")


def _agreeing(card: dict, key: str):
    """What inference makes of ``key``: a card written before ``context_slices`` existed means 0."""
    value = card.get(key)
    return (value or 0) if key == "context_slices" else value


def check_members(cards: list[dict], names: list[str]) -> None:
    """Raises IvdsegError, naming the first disagreement, unless the cards can be averaged into one network."""
    if len(cards) < 2:
        raise IvdsegError("An ensemble needs at least two model packages.")
    if len({str(n) for n in names}) < len(names):
        raise IvdsegError("The same model package is named twice; an ensemble averages different models.")
    for card, name in zip(cards, names):
        if card.get("task", "segmentation") != "segmentation":
            raise IvdsegError(f"{name} is a {card['task']} package; only segmentation packages can be averaged.")
    for key in MUST_AGREE:
        for card, name in zip(cards[1:], names[1:]):
            if _agreeing(card, key) != _agreeing(cards[0], key):
                raise IvdsegError(f"{name} differs from {names[0]} in {key!r} ({card.get(key)!r} against "
                                  f"{cards[0].get(key)!r}); only models trained for the same input and classes "
                                  "can be averaged.")


def ensemble_network(models):
    """One keras.Model averaging the members' outputs (each member a named sub-model reading the shared input)."""
    import keras

    inputs = keras.Input(tuple(models[0].input_shape[1:]), name="image")
    outputs = [keras.Model(m.input, m.output, name=f"member_{i}")(inputs) for i, m in enumerate(models)]
    mean = keras.layers.Average(name="ensemble_mean", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name="ensemble")


def _same_or_none(cards, key, pick=lambda v: v):
    values = [pick(card.get(key)) for card in cards]
    return values[0] if all(v == values[0] for v in values) else None


def _instances(cards):
    """The members' named-instance rules (disc levels) when they agree, without what each member chose alone."""
    def rules(value):
        return {name: {k: v for k, v in spec.items() if k not in PER_MODEL_INSTANCE_KEYS}
                for name, spec in (value or {}).items()} or None
    return _same_or_none(cards, "instances", rules)


def ensemble_card(cards: list[dict], name: str, version: str, command: str) -> dict:
    """The card of the averaged network: what inference repeats (shared by every member), the members, and the
    training data of the first member (the members of one recipe share it). Test-time augmentation is kept only
    when every member enables the same; post-processing is chosen again on the validation patients."""
    card = {key: cards[0][key] for key in MUST_AGREE if key in cards[0]}
    first = cards[0].get("training", {})
    card.update({
        "name": name, "version": version, "network": "ensemble",
        "architecture": {"members": len(cards),
                         "parameters": sum(int(c.get("architecture", {}).get("parameters", 0)) for c in cards)},
        "ensemble": [{"name": c["name"], "version": c["version"], "network": c["network"],
                      "seed": c.get("training", {}).get("seed"), "best_epoch": c.get("training", {}).get("best_epoch"),
                      "validation_mean_dice": c.get("validation", {}).get("overall", {}).get("mean_dice")}
                     for c in cards],
        "training": {"sources": first.get("sources", {}), "train_patients": first.get("train_patients"),
                     "val_patients": first.get("val_patients"), "test_patients": first.get("test_patients"),
                     "ensemble_of": len(cards), "command": command},
        "licence": _same_or_none(cards, "licence") or "unspecified",
        "citations": cards[0].get("citations", []),
    })
    for key in KEPT_WHEN_EQUAL:
        value = _same_or_none(cards, key)
        if value is not None:
            card[key] = value
    instances = _instances(cards)
    if instances:
        card["instances"] = instances
    # the same augmentation in every member (its figures were each member's own, so they are not copied)
    tta = _same_or_none(cards, "tta", lambda t: {k: (t or {}).get(k) for k in ("enabled", "scales")})
    if tta and tta["enabled"]:
        card["tta"] = {**tta, "chosen_by": "every member's own validation"}
    return card


def dropped_entries(cards: list[dict], card: dict) -> list[str]:
    """What the members' cards hold and the ensemble's does not."""
    said = set(card) | {"format", "format_version", "architecture", "training", "validation", "test", "backends",
                        "postprocessing", "crossval", "reproduce", "inference_time", "test_without_tta"}
    return sorted({key for c in cards for key in c} - said)


def say_dropped(cards: list[dict], card: dict, reporter) -> None:
    """Tells the user what the ensemble's card leaves out, rather than losing it silently."""
    dropped = dropped_entries(cards, card)
    if dropped:
        reporter.message("The ensemble's card leaves out what its members' cards disagree on or chose alone: "
                         + ", ".join(dropped) + ".")


def read_members(packages) -> list[dict]:
    """The member packages' cards, checked to be averageable (before any network is loaded)."""
    from ivdseg.models.package import read_card

    cards = [read_card(Path(p)) for p in packages]
    check_members(cards, [str(Path(p).resolve()) for p in packages])
    return cards


def weights_storage(cards: list[dict]) -> str:
    """float16 when every member stores float16 weights: the averaged network holds the members' weights unchanged,
    so it stores them as exactly; otherwise float32."""
    return "float16" if all(c.get("weights_storage") == "float16" for c in cards) else "float32"


def load_networks(packages) -> list:
    """The members' networks, each loaded safely (their cards checked first by :func:`read_members`)."""
    from ivdseg.models.package import load_package

    return [load_package(Path(p))[0] for p in packages]
