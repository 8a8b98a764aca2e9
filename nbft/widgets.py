"""Dashboards for notebooks (ipywidgets) and their static fallbacks (HTML tables, figures).

Each dashboard also leaves something static in the output, so an executed
notebook's HTML reads the same without a widget renderer.
"""
from __future__ import annotations

import html
import time

import matplotlib.pyplot as plt


def _display(obj, **kw):
    from IPython.display import display

    return display(obj, **kw)


def _esc(s) -> str:
    return html.escape(str(s))


def html_table(rows: list[dict], columns: list[str] | None = None, max_chars: int = 400, pass_cols=()) -> str:
    """A plain HTML table; boolean columns in ``pass_cols`` are colored pass/fail."""
    if not rows:
        return "<p><i>(no rows)</i></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th style='text-align:left'>{_esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if c in pass_cols:
                color = "#c8f7c5" if v else "#f7c5c5"
                cells.append(f"<td style='background:{color}'>{'pass' if v else 'fail'}</td>")
            else:
                text = _esc(v if not isinstance(v, float) else f"{v:.4g}")
                if len(text) > max_chars:
                    text = text[:max_chars] + "…"
                cells.append(f"<td style='text-align:left;white-space:pre-wrap;font-family:monospace'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def show_table(rows: list[dict], columns: list[str] | None = None, **kw) -> None:
    from IPython.display import HTML

    _display(HTML(html_table(rows, columns, **kw)))


# ---------------------------------------------------------------- example browser

def _example_html(rec: dict, tokenizer=None) -> str:
    n = rec.get("n_tokens", "?")
    return (f"<div><b>tokens:</b> {n}</div>"
            f"<div style='margin-top:4px'><b>prompt</b> (what the model is given)</div>"
            f"<pre style='background:#f4f4f4;white-space:pre-wrap'>{_esc(rec['prompt'])}</pre>"
            f"<div><b>completion</b> (what it learns to produce; the loss is on this part)</div>"
            f"<pre style='background:#e8f4e8;white-space:pre-wrap'>{_esc(rec['completion'])}</pre>")


def example_browser(splits: dict[str, list[dict]]):
    """Page through examples exactly as the model sees them (split picker + slider)."""
    import ipywidgets as W

    names = [s for s in splits if splits[s]]
    split_dd = W.Dropdown(options=names, value=names[0], description="split")
    idx = W.IntSlider(min=0, max=len(splits[names[0]]) - 1, value=0, description="example", continuous_update=False)
    out = W.HTML(_example_html(splits[names[0]][0]))

    def refresh(*_):
        recs = splits[split_dd.value]
        idx.max = len(recs) - 1
        out.value = _example_html(recs[min(idx.value, idx.max)])

    split_dd.observe(refresh, "value")
    idx.observe(refresh, "value")
    box = W.VBox([W.HBox([split_dd, idx]), out])
    _display(box)
    return box


# ---------------------------------------------------------------- training monitor

def training_monitor(title: str = "training", every_s: float = 2.0):
    """A TrainerCallback that draws loss, learning rate and tokens per second in place.

    The figure is redrawn at most every ``every_s`` seconds and once at the end, so
    the executed notebook keeps the final curve.
    """
    from transformers import TrainerCallback

    class Monitor(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []
            self.handle = None
            self.last = 0.0
            self.t0 = time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.handle = _display(_status_html(title, "starting…"), display_id=True)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:
                t = time.perf_counter() - self.t0
                tokens = logs.get("num_tokens") or state.num_input_tokens_seen or 0
                self.rows.append({"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate"),
                                  "t": t, "tokens": tokens, "tokens_per_s": tokens / t if t else 0.0})
                if time.perf_counter() - self.last > every_s:
                    self.draw(state)

        def on_train_end(self, args, state, control, **kw):
            self.draw(state, final=True)

        def draw(self, state, final=False):
            self.last = time.perf_counter()
            if self.handle is None or not self.rows:
                return
            last = self.rows[-1]
            fig = plot_curves(self.rows, title=f"{title} — step {state.global_step}/{state.max_steps}"
                              + (" (done)" if final else "") + f" — loss {last['loss']:.3f}, "
                              f"{last['tokens_per_s']:.0f} tokens/s")
            self.handle.update(fig)
            plt.close(fig)

    return Monitor()


def _status_html(title, text):
    from IPython.display import HTML

    return HTML(f"<b>{_esc(title)}</b>: {_esc(text)}")


def plot_curves(rows: list[dict], title: str = "training"):
    """Loss, learning rate and throughput against step."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    steps = [r["step"] for r in rows]
    fig.suptitle(title, fontsize=10)
    for ax, key, label, color in [(axes[0], "loss", "train loss", "tab:blue"),
                                  (axes[1], "lr", "learning rate", "tab:orange"),
                                  (axes[2], "tokens_per_s", "tokens / s", "tab:green")]:
        vals = [r.get(key) for r in rows]
        if all(v is not None for v in vals):
            ax.plot(steps, vals, color=color, marker="." if key == "loss" else None)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- comparisons

def compare_browser(rows: list[dict], labels=("before", "after")):
    """Pick a held-out prompt: base vs tuned output with pass/fail."""
    import ipywidgets as W

    def view(i):
        r = rows[i]
        cols = []
        for lab in labels:
            ok = r[f"pass_{lab}"]
            color = "#c8f7c5" if ok else "#f7c5c5"
            cols.append(f"<td style='vertical-align:top;background:{color};width:50%'><b>{_esc(lab)}</b> "
                        f"({'pass' if ok else 'fail'})<pre style='white-space:pre-wrap'>{_esc(r[lab])}</pre></td>")
        return (f"<pre style='white-space:pre-wrap;background:#f4f4f4'>{_esc(r['prompt'])}</pre>"
                f"<table style='width:100%'><tr>{''.join(cols)}</tr></table>")

    pick = W.IntSlider(min=0, max=len(rows) - 1, value=0, description="prompt", continuous_update=False)
    out = W.HTML(view(0))
    pick.observe(lambda ch: setattr(out, "value", view(ch["new"])), "value")
    box = W.VBox([pick, out])
    _display(box)
    return box
