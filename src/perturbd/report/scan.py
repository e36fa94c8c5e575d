"""``scan.html``: the verdict of ``perturbd scan`` as one self-contained page (the report pieces
of :mod:`perturbd.report.html`): the verdict, then per detector its table of labels (score,
threshold, flagged, evidence) and its figures, embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perturbd.report.html import cards, esc, img, kv_table, page


def _label_table(det: dict[str, Any]) -> str:
    rows = det["labels"]
    extra = [k for k in rows[0] if k not in ("label", "score", "flagged")] if rows else []
    head = "".join(f"<th>{esc(c)}</th>" for c in ("label", "score", f"threshold ({det['threshold']:.3g})", "verdict", *extra))
    body = ""
    for r in rows:
        verdict = '<b class="bad">flagged</b>' if r["flagged"] else '<span class="ok">clean</span>'
        cells = "".join(f'<td class="n">{esc(r[k])}</td>' for k in extra)
        side = "above" if r["score"] > det["threshold"] else "below"
        body += f'<tr><td class="n">{r["label"]}</td><td class="n">{r["score"]:.4g}</td><td>{side}</td><td>{verdict}</td>{cells}</tr>'
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def scan_html(result: dict[str, Any], folder: Path, model: str) -> str:
    """The page of ``result`` (:meth:`~perturbd.evaluation.scan.ScanResult.to_json`) for the
    model named ``model``, its figures read from ``folder``."""
    verdict = result["verdict"]
    cls = "bad" if verdict == "flagged" else "ok"
    n = len(result["detectors"])
    body = f'<h1>perturbd scan: <span class="{cls}">{esc(verdict)}</span></h1><p class="sub">{esc(model)}</p>'
    body += cards(
        [
            ("verdict (exit code)", f"{verdict} ({result['exit_code']})"),
            ("detectors flagging", f"{len(result['flagging_detectors'])} of {n} (fail on {result['fail_on']})"),
            ("suspected labels", ", ".join(map(str, result["suspected_labels"])) or "none"),
        ]
    )
    body += kv_table(
        [("image shape (C, H, W)", "×".join(map(str, result["image_shape"]))), ("classes", result["num_classes"]), ("seed", result["seed"])]
    )
    for det in result["detectors"]:
        state = f"flags {det['flagged_labels']}" if det["flagged"] else "flags no label"
        body += f"<h2>{esc(det['name'])}: {esc(state)}</h2>"
        body += kv_table(
            [
                ("seconds", det["seconds"]),
                ("clean images used", det["clean_images_used"]),
                ("parameters", ", ".join(f"{k}={v}" for k, v in det["params"].items())),
                *det["facts"].items(),
            ]
        )
        body += _label_table(det)
        figs = "".join(f"<figure>{img(folder / f, f)}<figcaption>{esc(f)}</figcaption></figure>" for f in det["figures"])
        body += f'<div class="figs">{figs}</div>'
    return page(f"perturbd scan · {model}", body)
