"""One self-contained HTML page per evaluation: pictures inline (base64 PNG), no scripts, no
external files. Sections: metric table beside the real-vs-real baseline, generated samples beside
real images, nearest training neighbours of samples (a memorisation check), loss curves from the
run's ``log.csv``, and the full protocol."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from aigc.media import make_grid
from aigc.metrics.card import DIRECTION, MetricCard, flatten, format_value


def _png_data_uri(images: torch.Tensor, nrow: int, scale: int = 2) -> str:
    grid = make_grid(images, nrow=nrow)
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def find_log(checkpoint_path: Path) -> Path | None:
    """The run's ``log.csv`` for a checkpoint file (run/checkpoints/step-N/model.safetensors)."""
    for parent in list(checkpoint_path.parents)[:4]:
        if (parent / "log.csv").is_file():
            return parent / "log.csv"
    return None


def read_curves(log_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` from the trainer's CSV log (columns step,wall_s,key,value)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(log_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                curves.setdefault(row["key"], []).append((int(row["step"]), float(row["value"])))
            except (KeyError, ValueError):
                continue
    return {k: v for k, v in curves.items() if "loss" in k and v}


def _svg_curves(curves: dict[str, list[tuple[int, float]]], width: int = 640,
                height: int = 280) -> str:
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    pad_l, pad_r, pad_t, pad_b = 60, 150, 10, 30
    pts = [p for c in curves.values() for p in c]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    ys = sorted(p[1] for p in pts)
    # Clip the y range to the 2nd..98th percentile so the first steps do not flatten the rest.
    y0, y1 = ys[int(0.02 * (len(ys) - 1))], ys[int(0.98 * (len(ys) - 1))]
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y):
        y = min(max(y, y0), y1)
        return pad_t + (1 - (y - y0) / (y1 - y0)) * (height - pad_t - pad_b)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" '
             f'height="{height - pad_t - pad_b}" fill="none" stroke="#999"/>']
    for frac in (0, 0.5, 1):
        y = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{pad_l - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">'
                     f'{format_value(float(y))}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 8}">step {x0}</text>')
    parts.append(f'<text x="{width - pad_r}" y="{height - 8}" text-anchor="end">step {x1}</text>')
    for i, (key, points) in enumerate(sorted(curves.items())):
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{path}"/>')
        parts.append(f'<text x="{width - pad_r + 8}" y="{pad_t + 14 * (i + 1)}" '
                     f'fill="{colour}">{html.escape(key)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pics{display:flex;gap:2em;flex-wrap:wrap}figure{margin:0}figcaption{font-size:90%;color:#555}
code{font-size:90%}.note{color:#555;font-size:92%}"""


def render_report(card: MetricCard, *, samples: torch.Tensor | None = None,
                  real: torch.Tensor | None = None, neighbours: torch.Tensor | None = None,
                  neighbour_distances: torch.Tensor | None = None,
                  curves: dict[str, list[tuple[int, float]]] | None = None,
                  texts: list[dict[str, Any]] | None = None, max_texts: int = 12) -> str:
    """The report page as a string (see the module docstring). Text evaluations pass ``texts``
    (dicts with ``prompt``, ``text``, ``reference``, ``seed``); the first ``max_texts`` are shown."""
    s, p = card.subject, card.protocol
    title = f"{s.get('family', 'model')} on {p.get('data', '?')}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>aigc eval: "
           f"{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>aigc eval: {html.escape(title)}</h1>",
           "<p>" + " &middot; ".join(f"{html.escape(k)}: <code>{html.escape(str(v))}</code>"
                                    for k, v in s.items()) + "</p>",
           "<h2>Metrics</h2>",
           "<p class='note'>" + (
               "The baseline column measures real text of the train split in place of the "
               "model's continuations, against the same references and at the same n: what "
               "genuine text of the corpus scores. Perplexity depends on the tokenizer."
               if card.kind == "text" else
               "The baseline column holds, for retrieval and CLIPScore-like rows, the real images "
               "of the same captions scored the same way (the ceiling), and for FID/KID real "
               "train images against the same real test images, at the same n."
               if card.kind == "text-to-image" else
               "The baseline column measures real training images against the same reference "
               "images, at the same n and with the same extractor: the score a perfect generator "
               "would get.") + " Numbers from other protocols are not comparable.</p>",
           "<table><tr><th>metric</th><th>model</th><th>real vs real</th><th>better</th></tr>"]
    for key, value in card.values.items():
        if isinstance(value, (list, dict)):
            continue
        arrow = {1: "higher", -1: "lower"}.get(DIRECTION.get(key, 0), "")
        out.append(f"<tr><td>{html.escape(key)}</td><td class='num'>{format_value(value)}</td>"
                   f"<td class='num'>{format_value(card.baseline.get(key, ''))}</td><td>{arrow}</td></tr>")
    out.append("</table>")
    if samples is not None and len(samples):
        out.append("<h2>Samples</h2><div class='pics'>")
        out.append(f"<figure><img src='{_png_data_uri(samples, 8)}' alt='samples'>"
                   f"<figcaption>{len(samples)} generated samples (seed {p.get('seed')})"
                   "</figcaption></figure>")
        if real is not None and len(real):
            out.append(f"<figure><img src='{_png_data_uri(real, 8)}' alt='real'>"
                       f"<figcaption>{len(real)} real images ({html.escape(str(p.get('data')))} "
                       f"{html.escape(str(p.get('reference_split')))})</figcaption></figure>")
        out.append("</div>")
    if texts:
        out.append(f"<h2>Continuations</h2><p class='note'>The first {min(len(texts), max_texts)}"
                   f" of {len(texts)}; each sampled with its own seed.</p><table><tr><th>seed</th>"
                   "<th>prompt</th><th>model</th><th>true continuation</th></tr>")
        for t in texts[:max_texts]:
            cells = "".join(f"<td style='white-space:pre-wrap'>{html.escape(str(t[k]))}</td>"
                            for k in ("prompt", "text", "reference"))
            out.append(f"<tr><td>{t.get('seed', '')}</td>{cells}</tr>")
        out.append("</table>")
    if neighbours is not None and neighbours.numel():
        rows, cols = neighbours.shape[:2]
        flat = neighbours.reshape(rows * cols, *neighbours.shape[2:])
        dists = "; ".join(", ".join(f"{d:.2f}" for d in row.tolist())
                          for row in neighbour_distances) if neighbour_distances is not None else ""
        out.append("<h2>Nearest training images (memorisation check)</h2>"
                   f"<figure><img src='{_png_data_uri(flat, cols, scale=3)}' alt='neighbours'>"
                   "<figcaption>Each row: a sample (left), then its nearest training images by "
                   f"pixel L2. Distances per row: {html.escape(dists)}. Near-zero distances would "
                   "mean copied training images.</figcaption></figure>")
    if curves:
        out.append("<h2>Loss curves</h2>" + _svg_curves(curves))
    out.append("<h2>Protocol</h2><table>")
    out += [f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(json.dumps(v, ensure_ascii=False))}"
            "</code></td></tr>" for k, v in flatten(p).items()]
    out.append("</table>")
    if card.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                  for n in card.notes) + "</ul>")
    out.append("<h2>Environment</h2><table>")
    out += [f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v))}</code></td></tr>"
            for k, v in flatten(card.environment).items()]
    out.append("</table></body></html>")
    return "\n".join(out)


def write_report(path: str | Path, card: MetricCard, **pictures: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(card, **pictures), encoding="utf-8")
    return path
