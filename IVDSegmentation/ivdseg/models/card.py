"""A readable MODEL_CARD.md rendered from a package's model.json."""

from __future__ import annotations


def _fmt(v):
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def size_text(summary: dict, classes: list[str]) -> str:
    """Predicted over true size of each class of an evaluation summary, e.g. "1.21" (20 % too large); "n/a" where
    unknown (no truth, or a card written before the figure existed)."""
    ratios = summary.get("volume_ratio", {})
    return ", ".join("n/a" if ratios.get(c) is None else f"{ratios[c]:.2f}" for c in classes)


def shares_text(shares: dict) -> str:
    """Each source's share of the training batches, e.g. "spider 59%, ivd_lumbar_t2 32%"."""
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.items())


def _dice_table(validation: dict, classes: list[str]) -> list[str]:
    rows = ["| source | patients | " + " | ".join(f"Dice {c}" for c in classes) + " | mean over patients "
            "| predicted / true size |", "|---|---|" + "---|" * len(classes) + "---|---|"]
    items = [("all sources (pooled)", validation["overall"])] + list(validation.get("per_source", {}).items())
    for name, s in items:
        pat = ", ".join(_fmt(s["dice_patient_mean"].get(c)) for c in classes)
        rows.append(f"| {name} | {s['patients']} | " + " | ".join(_fmt(s["dice"].get(c)) for c in classes)
                    + f" | {pat} | {size_text(s, classes)} |")
    return rows


UNTRAINED_NOTE = ("untrained: no training source of that fold labels the class, so the network never learnt it and "
                  "its Dice there estimates nothing (left out of the means).")


def untrained_classes(fold: dict, sources: dict) -> list[str]:
    """The classes a held-out source labels that no training source of its fold does (leave one source out).

    Args:
        fold: a cross-validation fold (its ``held_out_source``; none for folds by patient).
        sources: source name -> a summary with ``labelled_classes`` (a dataset's, or a card's training sources).
    """
    held_out = fold.get("held_out_source")
    if not held_out or held_out not in sources:
        return []
    taught = {c for name, s in sources.items() if name != held_out for c in s.get("labelled_classes", [])}
    return [c for c in sources[held_out].get("labelled_classes", []) if c not in taught]


def crossval_sources(card: dict) -> dict:
    """The sources (with their labelled classes) of a card's cross-validation: recorded with it, else the card's
    own training sources (the same dataset)."""
    return card["crossval"].get("sources") or card.get("training", {}).get("sources", {})


def untrained_text(dice, fmt=_fmt) -> str:
    return f"untrained ({fmt(dice)})"


def _crossval_table(crossval: dict, classes: list[str], sources: dict) -> list[str]:
    rows = ["| held out | patients | " + " | ".join(f"Dice {c}" for c in classes) + " |",
            "|---|---|" + "---|" * len(classes)]
    untrained = False
    for fold in crossval.get("folds", []):
        s, skip = fold["held_out"]["overall"], set(untrained_classes(fold, sources))
        untrained |= bool(skip)
        rows.append(f"| {fold['name']} | {s['patients']} | " + " | ".join(
            untrained_text(s["dice"].get(c)) if c in skip else _fmt(s["dice"].get(c)) for c in classes) + " |")
    return rows + (["", UNTRAINED_NOTE] if untrained else [])


def _fmt3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _measurement_table(result: dict) -> list[str]:
    """The agreement of ``ivdseg evaluate-measurements --record``: one row per source and measurement."""
    rows = ["| source | measurement | discs | bias (model - manual) | 95 % limits of agreement | mean absolute "
            "difference | manual mean ± sd |", "|---|---|---|---|---|---|---|"]
    for source, s in result.get("per_source", {}).items():
        for name, m in s["measures"].items():
            if m["n"]:
                unit = f" ({s['unit']})" if name.endswith("_mm") else ""
                rows.append(f"| {source} | {name.replace('_mm', '')}{unit} | {m['n']} | {m['bias']:.3f} | "
                            f"{m['limits'][0]:.3f} to {m['limits'][1]:.3f} | {m['mean_abs_difference']:.3f} | "
                            f"{m['manual_mean']:.3f} ± {_fmt3(m['manual_sd'])} |")
    return rows + ["", f"Each manual disc matched to the nearest predicted disc ({result.get('command', '')})."]


def _inference_lines(timing: dict | None) -> list[str]:
    if not timing:
        return []
    per_backend = ", ".join(f"{name} {t['process_seconds']:.1f} s for the whole command "
                            f"({t['segment_seconds']:.2f} s once loaded)" for name, t in timing["backends"].items())
    return [f"- inference time, {timing['volume']}, {timing['cpu_cores']} CPU cores ({timing['cpu']}): "
            f"{per_backend}; median of {timing['repeats']} (`{timing['command']}`)"]


def _keypoint_lines(card: dict) -> list[str]:
    t = card.get("training", {})
    shape = " x ".join(map(str, card["input_shape"]))
    lines = [f"# {card['name']} {card['version']}", "", card.get("description", ""), "", "## Network", "",
             f"- {card['network']} ({card.get('parameters', 'n/a')} parameters), input {shape} x {card['channels']} "
             f"+ one hint channel per keypoint, architecture {card.get('architecture', {})}",
             f"- reads: {card['slice_plane']} (letterboxed: aspect ratio kept); normalisation {card['normalization']}",
             f"- keypoints ({len(card['keypoints'])}): {', '.join(card['keypoints'])}",
             f"- hint / heatmap Gaussian sigma {card['hint_sigma_px']} input pixels", "", "## Training", "",
             f"- sources: {t.get('sources', {})}",
             f"- {t.get('train_patients')} training, {t.get('val_patients')} validation, {t.get('test_patients')} test "
             "patients (split by patient, within each source)",
             f"- simulated user: {t.get('mode')}; {t.get('epochs_run')} epochs (best {t.get('best_epoch')}, by "
             f"validation error before and after one correction) in {t.get('seconds')} s",
             f"- command: `{t.get('command', '')}`", ""]
    decode = card.get("decode")
    if decode:
        steps = ("from each keypoint to the same part of the level before (columns)" if decode.get("parents")
                 else "between consecutive keypoints")
        how = (f"as one chain (weight {decode['weight']:g} on the steps {steps} fitted to "
               f"{decode.get('fitted_on_samples', 'the')} training samples)" if decode["method"] == "chain"
               else "one peak per heatmap")
        scores = ", ".join(f"{k} {v:.2f}" for k, v in decode.get("validation_mre_px", {}).items())
        lines += ["## Decoding", "", f"- heatmaps decoded {how}; chosen by {decode.get('chosen_by', 'n/a')}: "
                  f"{scores} network pixels", ""]
    for key, title in (("test", "Test (these patients chose nothing)"),
                       ("validation", "Validation (chose the epoch and the decoding)")):
        if key not in card:
            continue
        lines += [f"## {title}: mean radial error after 0..{card[key]['rounds']} corrections", "",
                  "| source | cases | corrections | model revises the rest | by hand only |", "|---|---|---|---|---|"]
        for source, e in card[key]["per_source"].items():
            lines += [f"| {source} | {e['cases']} | {r} | {m:.2f} {e['unit']} | {h:.2f} {e['unit']} |"
                      for r, (m, h) in enumerate(zip(e["model"], e["manual"]))]
        lines.append("")
    for key in ("license", "citations"):
        if card.get(key):
            lines += [f"## {key.capitalize()}", "", str(card[key]), ""]
    return lines


def render(card: dict) -> str:
    """Markdown model card: what the model is, how it was trained and validated, and what to cite."""
    if card.get("task") == "keypoints":
        return "\n".join(_keypoint_lines(card)) + "\n"
    classes = [c["name"] for c in card["classes"]]
    t = card.get("training", {})
    lines = [f"# {card['name']} {card['version']}", "", card.get("description", ""), "",
             "## Network", "",
             f"- {card['network']}, input {card['input_size']} x {card['input_size']} x {card['channels']}, "
             f"architecture {card.get('architecture', {})}",
             *([f"- weights stored as {card['weights_storage']} (computed in float32)"]
               if card.get("weights_storage") else []),
             f"- slicing: {card['slice_plane']} ({card.get('slice_axes', '')}); normalisation {card['normalization']}",
             "- classes: " + ", ".join(f"{c['value']} = {c['name']}" for c in card["classes"]),
             f"- post-processing: {card.get('postprocessing', {'enabled': False})}",
             *_inference_lines(card.get("inference_time")), "",
             "## Training", "",
             f"- sources: {t.get('sources', {})}",
             f"- {t.get('train_patients')} training patients, {t.get('val_patients')} validation patients, "
             f"{t.get('test_patients', 0)} test patients (split by patient, within each source)",
             *([] if card.get("ensemble") else [  # an ensemble's members were trained; it was not
                 f"- loss {t.get('loss')}, {t.get('optimizer')} lr {t.get('learning_rate')}, batch "
                 f"{t.get('batch_size')}, {t.get('epochs_run')} epochs (best {t.get('best_epoch')}), on the "
                 f"{str(t.get('device')).upper()} in {t.get('seconds')} s"
                 + (f", initialised from {t['init_from']}" if t.get("init_from") else "")]),
             *([f"- batches drawn from the sources ({t.get('source_sampling', 'slices')}): "
                + shares_text(t["source_shares"])] if t.get("source_shares") else []),
             f"- command: `{t.get('command', '')}`", ""]
    if card.get("ensemble"):
        lines += ["## Ensemble", "", f"The average of {len(card['ensemble'])} models' probabilities:", ""]
        lines += [f"- {m['name']} {m['version']} ({m['network']}, seed {m.get('seed')}, best epoch "
                  f"{m.get('best_epoch')}, validation Dice {m.get('validation_mean_dice')})" for m in card["ensemble"]]
        lines.append("")
    if "test" in card:
        lines += ["## Test (native resolution; these patients chose nothing)", ""]
        lines += _dice_table(card["test"], classes) + [""]
    if "crossval" in card:
        lines += ["## Leave one source out (a hospital never seen)", ""]
        lines += _crossval_table(card["crossval"], classes, crossval_sources(card)) + [""]
    if "measurements" in card:
        lines += ["## The disc table against the manual labels' (test patients)", ""]
        lines += _measurement_table(card["measurements"]) + [""]
    if "validation" in card:
        lines += ["## Validation (native resolution; these patients chose the checkpoint and post-processing)", ""]
        lines += _dice_table(card["validation"], classes) + [""]
    for key, title in (("comparison", "Against the baseline"), ("reproduce", "Reproduce")):
        if key in card:
            lines += [f"## {title}", ""] + [f"- {x}" for x in card[key]] + [""]
    lines += ["## Licence", "", card.get("licence", "unspecified"), ""]
    for name, text in card.get("training_data_licences", {}).items():
        lines.append(f"- {name}: {text}")
    if card.get("limitations"):
        lines += ["", "## Limitations", "", card["limitations"]]
    if card.get("citations"):
        lines += ["", "## Cite", ""] + [f"- {c}" for c in card["citations"]]
    return "\n".join(lines) + "\n"
