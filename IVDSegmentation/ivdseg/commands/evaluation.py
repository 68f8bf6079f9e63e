"""The commands that judge what a model's results are used for: ``ivdseg evaluate-levels`` (the level names of the
discs) and ``ivdseg evaluate-measurements`` (the disc table against the manual labels' table)."""

from __future__ import annotations

from ivdseg.commands.inference import check_batch_size, check_folder_of
from ivdseg.errors import IvdsegError


def _split_cases(info, a) -> list[str]:
    """The dataset's cases of ``--split`` (val, test or all); one sentence when it has none."""
    _, val_cases = info.split_cases()
    cases = {"val": val_cases, "test": info.test_cases(), "all": sorted(info.cases)}[a.split]
    if not cases:
        raise IvdsegError(f"{a.dataset} has no {a.split} patients.")
    return cases


def evaluate_levels(a) -> int:
    from ivdseg.data import dataset as ds
    from ivdseg.eval.levels import choose_review_threshold, evaluate_levels
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.levels import level_support
    from ivdseg.models.package import resolve_model

    check_batch_size(a)
    if a.json:
        check_folder_of(a.json, "--json")
    info = ds.open_dataset(a.dataset)
    disc = load_backend(resolve_model(a.model), a.backend, a.device)
    support = level_support(disc.card)
    if support is None or not support[1].get("anchor_model"):
        raise IvdsegError(f"The model {disc.card['name']} {disc.card['version']} names no anchor model for its "
                          "levels; there is nothing to evaluate.")
    anchor = load_backend(resolve_model(support[1]["anchor_model"]), a.backend, a.device)
    cases = _split_cases(info, a)
    result = evaluate_levels(disc, anchor, info, cases, a.batch_size, a.stop.guard(None))
    print(f"{'source':<24}{'cases':>6}{'discs':>7}{'levels right':>14}{'cases all right':>17}{'anchor found':>14}"
          f"  centre error median / mean")
    for source, s in [("all", result["overall"]), *result["per_source"].items()]:
        acc = "n/a" if s["level_accuracy"] is None else f"{100 * s['level_accuracy']:.1f} %"
        err = ("n/a" if s["centre_error_median"] is None else "n/a (mm and px mixed)" if s["unit"] not in ("mm", "px")
               else f"{s['centre_error_median']:.2f} / {s['centre_error_mean']:.2f} {s['unit']}")
        print(f"{source:<24}{s['cases']:>6}{s['discs']:>7}{acc:>14}{s['cases_all_right']:>17}{s['anchor_found']:>14}"
              f"  {err}")
    print(f"Levels of {disc.card['name']} {disc.card['version']} with the anchor of {anchor.card['name']} "
          f"{anchor.card['version']} on the {a.split} split.")
    per_disc = [d for row in result["cases"] for d in row["per_disc"]]
    threshold = support[1].get("review_threshold")
    if a.choose_review_threshold:
        if a.split != "val":
            raise IvdsegError("--choose-review-threshold chooses on the validation patients; pass --split val.")
        chosen = choose_review_threshold(per_disc)
        result["review"] = chosen
        if chosen["threshold"] is None:
            print(f"No review threshold: none of the {chosen['discs']} validation discs (or all of them) has a Dice "
                  f"below {chosen['poor_dice']}.")
        else:
            from ivdseg.models.package import update_card

            rule = {**support[1], "review_threshold": chosen["threshold"],
                    "review_chosen_on": f"{chosen['discs']} validation discs, {chosen['poor']} with Dice below "
                                        f"{chosen['poor_dice']} (sensitivity {chosen['sensitivity']}, "
                                        f"specificity {chosen['specificity']})"}
            update_card(resolve_model(a.model), {"instances": {**disc.card["instances"], support[0]: rule}})
            print(f"Review threshold {chosen['threshold']} (uncertainty) written into the card: {rule['review_chosen_on']}.")
    elif threshold is not None and per_disc:
        flagged = [d for d in per_disc if d["uncertainty"] > threshold]
        poor = [d for d in per_disc if d["dice"] < 0.8]
        result["review"] = {"threshold": threshold, "discs": len(per_disc), "flagged": len(flagged),
                            "poor": len(poor), "poor_flagged": sum(d["dice"] < 0.8 for d in flagged)}
        print(f"Review flag (uncertainty above {threshold}): {len(flagged)} of {len(per_disc)} discs flagged; "
              f"{result['review']['poor_flagged']} of the {len(poor)} with Dice below 0.8 among them.")
    if a.json:
        from ivdseg.io.atomic import write_json

        write_json(a.json, result)
    return 0


def evaluate_measurements(a) -> int:
    from ivdseg.data import dataset as ds
    from ivdseg.eval.measure_agreement import LENGTHS, MEASURES, measurement_agreement
    from ivdseg.inference.backends import load_backend
    from ivdseg.models.package import resolve_model

    check_batch_size(a)
    if a.json:
        check_folder_of(a.json, "--json")
    if a.record and (a.split != "test" or not resolve_model(a.model).is_dir()):
        raise IvdsegError("--record writes the test patients' figures into a package folder's card; pass --split test "
                          "and a package folder (unpack a .zip first).")
    info = ds.open_dataset(a.dataset)
    backend = load_backend(resolve_model(a.model), a.backend, a.device)
    cases = _split_cases(info, a)
    result = measurement_agreement(backend, info, cases, a.batch_size, a.stop.guard(None))
    print(f"{'source':<24}{'measurement':<20}{'discs':>6}  {'bias':>8}  {'95 % limits':>19}  {'mean |diff|':>11}  "
          "manual mean +- sd")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for source, s in [*result["per_source"].items(), ("all", result["overall"])]:
        for name, m in s["measures"].items():
            if not m["n"]:
                continue
            unit = f" ({s['unit']})" if name in LENGTHS else ""
            label = name.replace("_mm", "") + unit
            limits = f"{m['limits'][0]:.3f} .. {m['limits'][1]:.3f}"
            print(f"{source:<24}{label:<20}{m['n']:>6}  {m['bias']:>8.3f}  {limits:>19}  "
                  f"{m['mean_abs_difference']:>11.3f}  {fmt(m['manual_mean'])} +- {fmt(m['manual_sd'])}")
    matched, discs = result["overall"]["matched"], result["overall"]["discs"]
    print(f"The disc table of {backend.card['name']} {backend.card['version']} against the manual labels' on the "
          f"{a.split} split: model minus manual, {matched} of {discs} manual discs matched; "
          f"{', '.join(MEASURES)} where both tables have them (the signal ratio where both divide by the same "
          "reference).")
    if a.json:
        from ivdseg.io.atomic import write_json

        write_json(a.json, result)
    if a.record:
        from ivdseg.models.package import update_card

        kept = {"per_source": result["per_source"], "overall": result["overall"],
                "command": "ivdseg evaluate-measurements DATASET --model PACKAGE --split test --record"}
        update_card(resolve_model(a.model), {"measurements": kept})
        print("Written into the card.")
    return 0
