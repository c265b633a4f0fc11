"""The console report of `brainmri evaluate`: plain text built from the results dict.

One block per subset (full split, leak-free subset) for the headline predictions: summary with
95 % intervals, per-class table, tumour-vs-no-tumour operating point and confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

from brainmri.evaluate.site import site_lines


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def _ci_pct(ci: list[float] | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


WILSON_NOTE = (
    "* Wilson score interval: a proportion with no misses (or no hits) has a zero-width "
    "bootstrap interval"
)


def interval_text(stat: dict | None) -> str:
    """'[99.16, 99.85]'; a zero-width bootstrap interval is replaced by Wilson's, marked '*'."""
    if stat is None:
        return ""
    ci = stat["ci"]
    if ci and ci[0] == ci[1] and stat.get("wilson"):
        return _ci_pct(stat["wilson"]) + "*"
    return _ci_pct(ci)


def proportion_text(stat: dict | None) -> str:
    """'99.54 % [99.16, 99.85] (1305/1311)'."""
    if stat is None:
        return "n/a"
    return f"{pct(stat['value'])} {interval_text(stat)} ({stat['k']}/{stat['n']})"


def _auc_text(stat: dict | None) -> str:
    if stat is None:
        return "n/a"
    ci = stat["ci"]
    return f"{stat['value']:.5f}" + (f" [{ci[0]:.5f}, {ci[1]:.5f}]" if ci else "")


def format_block(title: str, m: dict, ci: dict, class_names: list[str]) -> str:
    """One subset: summary with intervals, per-class table, confusion matrix."""
    lines = [title, "=" * len(title)]
    summary = [
        ("accuracy", proportion_text(ci["accuracy"]) + f", {m['errors']} errors"),
        ("macro AUC", _auc_text(ci["macro_auc"])),
    ]
    if ci.get("sensitivity") is not None or ci.get("specificity") is not None:
        summary += [
            ("tumour sensitivity", proportion_text(ci["sensitivity"])),
            ("tumour specificity", proportion_text(ci["specificity"])),
        ]
    summary.append(
        ("macro F1 / ECE / log-loss", f"{_num(m['macro_f1'])} / {pct(m['ece'])} / "
         f"{_num(m['log_loss'])}")
    )  # fmt: skip
    key_w = max(len(k) for k, _ in summary)
    lines += [f"{k:<{key_w}}  {v}" for k, v in summary]
    if m.get("predicted_absent"):
        absent = ", ".join(f"{k} {v}" for k, v in m["predicted_absent"].items())
        lines.append(f"predicted as a class with no image here (all errors): {absent}")

    present = m.get("classes_present", class_names)
    name_w = max(len("class"), *(len(c) for c in class_names))
    header = (
        f"{'class':<{name_w}}  {'n':>4}  {'recall':>8}  {'95 % CI':<17}  precision      F1"
        "       AUC"
    )
    lines += ["", header, "-" * len(header)]
    for name in present:
        row, stat = m["per_class"][name], ci["recall"].get(name)
        lines.append(
            f"{name:<{name_w}}  {row['support']:>4}  {pct(row['recall']):>8}  "
            f"{interval_text(stat):<17}  {_num(row['precision']):>9}  {_num(row['f1']):>6}  "
            f"{_num(row['auc'], 5):>8}"
        )
    lines += ["", "confusion matrix (rows true, columns predicted)"]
    col_w = max(len(c) for c in class_names)
    lines.append(" " * name_w + "".join(f"  {c:>{col_w}}" for c in class_names))
    for k, name in enumerate(class_names):
        if name in present:
            cells = m["confusion_matrix"][k]
            lines.append(f"{name:<{name_w}}" + "".join(f"  {v:>{col_w}}" for v in cells))
    return "\n".join(lines)


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_errors(errors: list[dict], limit: int = 25) -> str:
    """The misclassified images, worst (most confident) first; at most `limit` lines."""
    if not errors:
        return "misclassified: none"
    ranked = sorted(errors, key=lambda e: -e["confidence"])
    lines = [f"misclassified ({len(errors)}, most confident first):"]
    for e in ranked[:limit]:
        lines.append(
            f"  {Path(e['file']).name}: {e['true']} -> {e['pred']} (p = {e['confidence']:.3f})"
        )
    if len(errors) > limit:
        lines.append(f"  ... {len(errors) - limit} more in the results JSON")
    return "\n".join(lines)


def format_report(results: dict) -> str:
    """The whole console report: what was run on what, then one block per subset."""
    names = results["class_names"]
    head = results["headline"]
    res = results[head]
    views = f"TTA {len(results.get('tta_views', []))} views" if head == "tta" else "plain"
    info = results.get("model_info", {})
    members = info.get("members")
    kind = f"ensemble of {len(members)}" if members else "single model"
    lines = [
        f"model   {results['model']} ({kind}, {results['image_size']} px, "
        f"T = {results['temperature']:.3f})",
        f"data    {results['data']} ({results['layout']})",
        f"n       {results['n_test']} images ({', '.join(results['classes_present'])}); "
        + (
            f"leak-free subset {results['n_leak_free']} ({results['leak_free_source']})"
            if results["n_leak_free"] is not None
            else f"no leak-free subset ({results['leak_free_source']})"
        ),
        f"shown   {views}; intervals: 95 %, {results['intervals']['method']}, "
        f"{results['intervals']['n_resamples']} resamples, seed {results['intervals']['seed']}",
        "",
        format_block(f"{views}: all {results['n_test']} images", res["full"],
                     res["intervals"]["full"], names),
    ]  # fmt: skip
    if res["leak_free"] is None:
        pass
    elif results["n_leak_free"] == results["n_test"]:
        lines += ["", "leak-free subset: every image is leak-free (same as above)"]
    else:
        lines += [
            "",
            format_block(
                f"{views}: leak-free subset, {results['n_leak_free']} images",
                res["leak_free"],
                res["intervals"]["leak_free"],
                names,
            ),
        ]
    if head == "tta" and "plain" in results:
        p = results["plain"]
        line = f"plain (1 view), for comparison: all {pct(p['full']['accuracy'])} "
        line += f"({p['full']['errors']} errors)"
        if p["leak_free"] is not None and results["n_leak_free"] != results["n_test"]:
            line += f", leak-free {pct(p['leak_free']['accuracy'])} ({p['leak_free']['errors']})"
        lines += ["", line]
    site = site_lines(results.get("site_check"))
    lines += (["", *site] if site else []) + ["", format_errors(res["errors"])]
    text = "\n".join(lines)
    return text + ("\n" + WILSON_NOTE if "]*" in text else "")
