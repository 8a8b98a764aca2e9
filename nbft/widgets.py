"""Dashboards for notebooks (ipywidgets) and their static fallbacks (HTML tables, figures).

Each dashboard also leaves something static in the output, so an executed
notebook's HTML reads the same without a widget renderer.
"""
from __future__ import annotations

import html
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt


def _display(obj, **kw):
    from IPython.display import display

    return display(obj, **kw)


STATIC_NOTE = ("<p><small><i>Static copy of an interactive dashboard (the first item): open the notebook in "
               "Jupyter, or its HTML report in a browser with JavaScript, to pick others.</i></small></p>")


def show_widget(widget, static_html: str):
    """Display ``widget`` with ``static_html`` in the same output, as its text/html fallback.

    Jupyter shows the widget; a viewer without a widget renderer (GitHub, nbviewer without
    state, an HTML report read with JavaScript off) shows the static copy instead, so a
    report reads the same everywhere. Returns None, like every dashboard here: a widget
    returned as a cell's last value would be displayed a second time.
    """
    bundle = dict(widget._repr_mimebundle_())
    bundle["text/html"] = static_html
    _display(bundle, raw=True)


def _browse(pick, view, static: str | None = None):
    """A picker widget above an HTML pane showing ``view(pick.value)``, redrawn when the pick changes.
    Its static fallback: ``static``, or the first view."""
    import ipywidgets as W

    out = W.HTML(view(pick.value))
    pick.observe(lambda ch: setattr(out, "value", view(ch["new"])), "value")
    show_widget(W.VBox([pick, out]), static if static is not None else STATIC_NOTE + out.value)


def _esc(s) -> str:
    return html.escape(str(s))


def html_table(rows: list[dict], columns: list[str] | None = None, max_chars: int = 400, pass_cols=(),
               caption: str = "") -> str:
    """A plain HTML table; boolean columns in ``pass_cols`` are colored pass/fail; ``caption`` names it."""
    if not rows:
        return f"<p><i>{_esc(caption) + ': ' if caption else ''}(no rows)</i></p>"
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
    cap = f"<caption style='text-align:left;font-weight:bold'>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
    show_widget(W.VBox([W.HBox([split_dd, idx]), out]), STATIC_NOTE + out.value)


# ---------------------------------------------------------------- training monitor

#: the panels a training monitor draws: (log key, axis label).
SFT_PANELS = (("loss", "train loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens / s"))
RL_PANELS = (("reward", "mean reward (reward model)"), ("kl", "KL to the reference"),
             ("completions/mean_length", "completion length (tokens)"))
PREFERENCE_PANELS = (("loss", "train loss"), ("rewards/accuracies", "pairs ranked right (batch)"),
                     ("rewards/margins", "reward margin chosen - rejected"))
ONLINE_PANELS = (("objective/scores", "mean reward of its samples"), ("objective/kl", "KL to the reference"),
                 ("rewards/margins", "reward margin chosen - rejected"))


def training_monitor(title: str = "training", every_s: float = 2.0, panels=SFT_PANELS):
    """A TrainerCallback that draws the logged curves in place (loss, learning rate, tokens/s by default).

    ``panels``: (log key, label) pairs, e.g. ``RL_PANELS`` for GRPO/RLOO. The figure is redrawn
    at most every ``every_s`` seconds and once at the end, so the executed notebook keeps the
    final curves; ``.rows`` keeps every logged step. Evaluations during training (``eval_steps``) are rows too,
    with the evaluated ``eval_<key>`` (the validation loss): drawn in the panel of ``<key>`` beside it, and their
    latest value in the title.
    """
    from transformers import TrainerCallback

    keys = [k for k, _ in panels]

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
            evaluated = {f"eval_{k}": logs[f"eval_{k}"] for k in keys if isinstance(logs.get(f"eval_{k}"), (int, float))}
            if evaluated:  # an evaluation: its own row (no learning rate or throughput of its own)
                self.rows.append({**evaluated, "step": state.global_step, "t": time.perf_counter() - self.t0})
                self.draw(state)
            elif any(k in logs for k in keys if k not in ("lr", "tokens_per_s")):
                t = time.perf_counter() - self.t0
                tokens = logs.get("num_tokens") or state.num_input_tokens_seen or 0
                self.rows.append({**{k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                  "step": state.global_step, "lr": logs.get("learning_rate"), "t": t,
                                  "tokens": tokens, "tokens_per_s": tokens / t if t else 0.0})
                if time.perf_counter() - self.last > every_s:
                    self.draw(state)

        def on_train_end(self, args, state, control, **kw):
            self.draw(state, final=True)

        def draw(self, state, final=False):
            self.last = time.perf_counter()
            if self.handle is None or not self.rows:
                return
            last = next((r for r in reversed(self.rows) if panels[0][0] in r), {})
            now = ", ".join(f"{label.split(' (')[0]} {last[k]:.3g}" for k, label in panels[:1] if last.get(k) is not None)
            evaluated = next((r for r in reversed(self.rows) if f"eval_{panels[0][0]}" in r), None)
            if evaluated:
                now += f", validation {evaluated[f'eval_{panels[0][0]}']:.3g} (step {evaluated['step']})"
            fig = plot_curves(self.rows, title=f"{title} — step {state.global_step}/{state.max_steps}"
                              + (" (done)" if final else "") + (f" — {now}" if now else ""), panels=panels)
            self.handle.update(fig)
            plt.close(fig)

    return Monitor()


def _status_html(title, text):
    from IPython.display import HTML

    return HTML(f"<b>{_esc(title)}</b>: {_esc(text)}")


def plot_curves(rows: list[dict], title: str = "training", panels=SFT_PANELS):
    """One panel per (key, label) against step; where rows hold ``eval_<key>`` (evaluations during training: the
    validation loss), those in the same panel, marked, with a legend."""
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3))
    fig.suptitle(title, fontsize=10)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, (key, label), color in zip(axes, panels, colors):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), color=color, marker="." if len(pts) < 60 else None, label="training")
        evaluated = [(r["step"], r[f"eval_{key}"]) for r in rows if r.get(f"eval_{key}") is not None]
        if evaluated:
            ax.plot(*zip(*evaluated), color="tab:purple", marker="o", label="validation")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    fig.tight_layout()
    return fig


def plot_eval_curve(curve: list[dict], title: str = "", stopped_at: int | None = None, best_step: int | None = None,
                    ax=None):
    """An ``eval_curve`` (``train.TrainResult``): the validation loss and the mean training loss between
    evaluations against step; a dot on the best step, a dashed line where early stopping stopped. Draws into
    ``ax`` (or a new figure); returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3))
    steps = [r["step"] for r in curve]
    ax.plot([r["step"] for r in curve if r.get("train_loss") is not None],
            [r["train_loss"] for r in curve if r.get("train_loss") is not None], color="tab:blue", marker=".",
            label="training (mean since the last evaluation)")
    ax.plot(steps, [r["eval_loss"] for r in curve], color="tab:purple", marker="o", label="validation")
    if best_step is not None:
        best = next(r for r in curve if r["step"] == best_step)
        ax.scatter([best_step], [best["eval_loss"]], s=120, facecolors="none", edgecolors="k", zorder=3,
                   label=f"best, step {best_step}")
    if stopped_at is not None:
        ax.axvline(stopped_at, color="tab:red", ls="--", label=f"early stopping, step {stopped_at}")
    ax.set_xlabel("optimizer step"); ax.set_ylabel("loss"); ax.set_title(title, fontsize=10); ax.legend(fontsize=8)
    return ax


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

    _browse(W.IntSlider(min=0, max=len(rows) - 1, value=0, description="prompt", continuous_update=False), view)


def table_browser(tables: dict[str, list[dict]], label: str = "table"):
    """Pick a name: its table (e.g. one comparison table per stage). Static copy: every table."""
    import ipywidgets as W

    names = list(tables)
    _browse(W.Dropdown(options=names, value=names[0] if names else None, description=label),
                   lambda name: html_table(tables.get(name, []), caption=name or ""),
                   static="".join(html_table(t, caption=n) for n, t in tables.items()))


# ---------------------------------------------------------------- tables that fill in

def live_table(columns: list[str]):
    """A table shown once and updated in place (``.update(rows)``) as results arrive."""
    from IPython.display import HTML

    class Live:
        def __init__(self):
            self.handle = _display(HTML("<i>waiting for the first row…</i>"), display_id=True)

        def update(self, rows):
            if self.handle is not None:
                self.handle.update(HTML(html_table(rows, columns)))

    return Live()


# ---------------------------------------------------------------- method and adapter dashboards

def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'/>"


def _method_html(name: str, row: dict, prompts: list[str]) -> str:
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.plot([h["step"] for h in row["log_history"]], [h["loss"] for h in row["log_history"]])
    ax.set_xlabel("step"); ax.set_ylabel("train loss"); ax.set_title(name)
    nums = {k: row[k] for k in ("trainable_params", "trainable_pct", "seconds", "tokens_per_second", "peak_mem_mb",
                                "eval_loss", "task_score", "size_mb", "mergeable", "merge_max_abs_diff") if k in row}
    samples = [{"prompt": q, "output": o, "pass": ok} for q, o, ok in zip(prompts, row["outputs"], row["passed"])][:6]
    return (f"<div style='display:flex;gap:16px'>{_png(fig)}{html_table([nums])}</div>"
            + html_table(samples, pass_cols=("pass",)))


def method_browser(results: dict[str, dict], prompts: list[str]):
    """Pick a method: its curve, numbers and held-out answers."""
    import ipywidgets as W

    names = list(results)
    _browse(W.Dropdown(options=names, value=names[0], description="method"),
                   lambda name: _method_html(name, results[name], prompts))


def adapter_playground(model, tokenizer, adapters: list[str], prompts: list[str], precision: str = "fp32"):
    """Pick an adapter (or none), type or pick a prompt, generate."""
    import ipywidgets as W

    from . import data, evaluate

    pick = W.Dropdown(options=["(base)"] + [a for a in adapters if a in model.peft_config], description="adapter")
    text = W.Combobox(options=prompts, value=prompts[0] if prompts else "", description="prompt",
                      layout=W.Layout(width="70%"))
    go = W.Button(description="generate")
    out = W.HTML()

    def run(_=None):
        prompt = data.render_prompt([{"role": "user", "content": text.value}], tokenizer)
        if pick.value == "(base)":
            with model.disable_adapter():
                reply = evaluate.generate(model, tokenizer, [prompt], 48, precision=precision)[0]
        else:
            model.set_adapter(pick.value)
            reply = evaluate.generate(model, tokenizer, [prompt], 48, precision=precision)[0]
        out.value = f"<pre style='white-space:pre-wrap'>{_esc(reply)}</pre>"

    go.on_click(run)
    show_widget(W.VBox([W.HBox([pick, go]), text, out]),
                "<p><i>Adapter playground: generates with a live kernel, so it works in Jupyter only. "
                f"Adapters: {_esc(', '.join(pick.options[1:]))}.</i></p>")


# ---------------------------------------------------------------- policies side by side

def _verdict_cell(label: str, r: dict) -> str:
    score = r.get("rule", 0.0)
    color = "#c8f7c5" if score == 1.0 else "#fdf1c4" if score >= 0.5 else "#f7c5c5"
    failed = [k for k, v in r.get("checks", {}).items() if v < 1.0]
    reward = f", reward {r['reward']:+.2f}" if r.get("reward") is not None else ""
    return (f"<td style='vertical-align:top;background:{color}'><b>{_esc(label)}</b> — rule {score:.2f}{reward}"
            f"<pre style='white-space:pre-wrap'>{_esc(r['reply'])}</pre>"
            f"<small>{'fails: ' + _esc(', '.join(failed)) if failed else 'passes every check'}</small></td>")


def sample_browser(rows: list[dict], policies: list[str]):
    """Pick a held-out prompt: each policy's reply with the rule's verdict (and failed checks) and its reward.

    ``rows``: [{"prompt": str, <policy>: {"reply", "rule", "checks", "reward"}}].
    """
    import ipywidgets as W

    def view(i):
        r = rows[i]
        cells = "".join(_verdict_cell(name, r[name]) for name in policies)
        return (f"<pre style='white-space:pre-wrap;background:#f4f4f4'>{_esc(r['prompt'])}</pre>"
                f"<table style='width:100%;table-layout:fixed'><tr>{cells}</tr></table>")

    _browse(W.IntSlider(min=0, max=max(0, len(rows) - 1), value=0, description="prompt",
                               continuous_update=False), view if rows else lambda i: "")


def histogram(series: dict[str, list[float]], title: str, xlabel: str, ax=None):
    """Overlaid histograms, one per named series (e.g. reward of chosen vs rejected replies), on one shared set of
    bins; ``ax``: draw into it (one panel of a larger figure). More than two series are drawn as outlines."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3)) if ax is None else (ax.figure, ax)
    vals = [v for vs in series.values() for v in vs if v is not None and np.isfinite(v)]
    bins = np.histogram_bin_edges(vals, bins=20) if vals else 20
    for name, v in series.items():
        kw = dict(alpha=0.55) if len(series) <= 2 else dict(histtype="step", linewidth=1.5)
        ax.hist(v, bins=bins, label=f"{name} (n={len(v)})", **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def distributions(by_metric: dict[str, dict[str, list[float]]], title: str = "", ncols: int = 3):
    """Small multiples: one panel per metric, a histogram per series (the replies before, and after: one series per
    arm). ``by_metric``: {metric: {series: per-example scores}} (``scoring.by_metric``)."""
    names = list(by_metric)
    ncols = max(1, min(ncols, len(names)))
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        histogram(by_metric[name], name, "score per example", ax=ax)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- error browser

def _gain_color(g: float) -> str:
    return "#c8f7c5" if g > 0 else "#f7c5c5" if g < 0 else "white"


def _error_html(row: dict, metric: str) -> str:
    from . import scoring

    m = row["metrics"][metric]
    verdict = f" · judge prefers: <b>{_esc(row['verdict'])}</b>" if "verdict" in row else ""
    scores = "".join(
        f"<tr><td>{_esc(n)}</td><td>{v['before']:.3f}</td><td>{v['after']:.3f}</td>"
        f"<td style='background:{_gain_color(scoring.gain(row, n))}'>{v['change']:+.3f}</td></tr>"
        for n, v in row["metrics"].items())
    pre = "white-space:pre-wrap;margin:2px 0"
    return (f"<div style='border-top:1px solid #bbb;padding:6px 0'>"
            f"<div><b>example {row['example']}</b> · {_esc(metric)} {m['before']:.3f} → {m['after']:.3f} "
            f"(<span style='background:{_gain_color(scoring.gain(row, metric))}'>{m['change']:+.3f}</span>){verdict}</div>"
            f"<div><b>prompt</b></div><pre style='{pre};background:#f4f4f4'>{_esc(row['prompt'])}</pre>"
            f"<div><b>reference</b></div><pre style='{pre};background:#eef'>{_esc(row['reference'] or '(none)')}</pre>"
            f"<table style='width:100%;table-layout:fixed'><tr><td style='vertical-align:top'><b>before</b>"
            f"<pre style='{pre}'>{_esc(row['before'])}</pre></td><td style='vertical-align:top'><b>after</b>"
            f"<pre style='{pre}'>{_esc(row['after'])}</pre></td></tr></table>"
            f"<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{scores}</table></div>")


def _errors_view(rows: list[dict], metric: str, order: str, n: int) -> str:
    from . import scoring

    if not rows:
        return "<p><i>(no examples)</i></p>"
    word = "gain" if order == "gain" else "loss"
    top = scoring.ranked(rows, metric, order)[:n]
    return (f"<p><b>The {len(top)} examples of the largest {word} in {_esc(metric)}</b> (of {len(rows)})</p>"
            + "".join(_error_html(r, metric) for r in top))


def _errors_table(rows: list[dict], metric: str, order: str, n: int, caption: str) -> str:
    from . import scoring

    top = [r for r in scoring.ranked(rows, metric, order)[:n] if (scoring.gain(r, metric) > 0) == (order == "gain")
           and scoring.gain(r, metric) != 0]
    if not top:
        return f"<p><i>{_esc(caption)}: no example {'gained' if order == 'gain' else 'lost'} on {_esc(metric)}.</i></p>"
    flat = [{"example": r["example"], "prompt": r["prompt"], "reference": r["reference"], "before": r["before"],
             "after": r["after"], f"{metric} before": r["metrics"][metric]["before"],
             f"{metric} after": r["metrics"][metric]["after"], "change": r["metrics"][metric]["change"],
             **({"judge": r["verdict"]} if "verdict" in r else {})} for r in top]
    return html_table(flat, max_chars=240, caption=caption)


def error_browser(rows: list[dict] | dict[str, list[dict]], n: int = 8, n_static: int = 5):
    """Example by example: the prompt, the reference, the reply before and after, every metric before/after/change
    and a judge's verdict where there is one, ordered by the largest gain or loss of the metric picked.

    ``rows``: ``scoring.per_example``'s, or {arm: those} for a stage with several arms (a picker for the arm).
    The static copy: for the first arm, the ``n_static`` top gains and top losses of every metric with a better
    side (of every metric where none has one).
    """
    import ipywidgets as W

    arms = (rows if isinstance(rows, dict) else {"": rows}) or {"": []}
    first = next((r for r in arms.values() if r), [])
    metrics = list(first[0]["metrics"]) if first else []
    ranked = [m for m in metrics if first[0]["metrics"][m]["higher_is_better"] is not None] or metrics
    arm = W.Dropdown(options=list(arms), value=next(iter(arms)), description="compare",
                     layout=W.Layout(display="none" if len(arms) == 1 else None))
    metric = W.Dropdown(options=metrics, value=ranked[0] if ranked else None, description="metric")
    order = W.Dropdown(options=[("largest gain", "gain"), ("largest loss", "loss")], value="gain", description="order")
    out = W.HTML()

    def refresh(*_):
        out.value = _errors_view(arms[arm.value], metric.value, order.value, n) if metric.value else "<p><i>(no examples)</i></p>"

    for w in (arm, metric, order):
        w.observe(refresh, "value")
    refresh()
    name = next(iter(arms))
    static = [f"<p><small><i>Static copy of an interactive dashboard: open the notebook in Jupyter to order the "
              f"examples by any metric{' and pick another arm' if len(arms) > 1 else ''}.</i></small></p>"]
    if name:
        static.append(f"<p><b>{_esc(name)}</b></p>")
    for m in ranked:
        static += [_errors_table(first, m, "gain", n_static, f"{m}: the largest gains"),
                   _errors_table(first, m, "loss", n_static, f"{m}: the largest losses")]
    show_widget(W.VBox([W.HBox([arm, metric, order]), out]), "".join(static) if first else "<p><i>(no examples)</i></p>")


# ---------------------------------------------------------------- retrieval

def _inspect_html(r: dict) -> str:
    hits = "".join(
        f"<tr style='background:{'#c8f7c5' if h['gold'] else 'white'}'><td>{h['score']:.3f}</td>"
        f"<td>{_esc(h['id'])}{' (gold)' if h['gold'] else ''}</td>"
        f"<td style='white-space:pre-wrap'>{_esc(h['text'])}</td></tr>" for h in r["hits"])
    answers = "".join(
        f"<tr style='background:{'#c8f7c5' if a['ok'] else '#f7c5c5'}'><td>{_esc(m)}</td>"
        f"<td>{'right' if a['ok'] else 'wrong'}</td><td style='white-space:pre-wrap'>{_esc(a['reply'])}</td></tr>"
        for m, a in r["methods"].items())
    return (f"<div><b>question:</b> {_esc(r['question'])} &nbsp; <b>answer:</b> {_esc(r['answer'])}</div>"
            f"<div style='margin-top:6px'><b>retrieved</b></div><table><tr><th>score</th><th>chunk</th><th>text</th></tr>"
            f"{hits}</table><div style='margin-top:6px'><b>answers</b></div>"
            f"<table><tr><th>method</th><th></th><th>reply</th></tr>{answers}</table>")


def retrieval_inspector(rows: list[dict]):
    """Pick a question: retrieved chunks with scores (gold marked) and each method's answer, right or wrong.

    ``rows``: [{"question", "answer", "hits": [{"id", "text", "score", "gold"}], "methods": {name: {"reply", "ok"}}}].
    """
    import ipywidgets as W

    _browse(W.Dropdown(options=[(f"{i}: {r['question']}", i) for i, r in enumerate(rows)], value=0,
                              description="question", layout=W.Layout(width="90%")),
                   lambda i: _inspect_html(rows[i]))


# ---------------------------------------------------------------- chat playground

#: The playground's scripted example conversation (its static transcript, made when the notebook runs, greedy, at most
#: ``chat_tokens`` a reply): two user messages, the second about the first reply.
CHAT_SCRIPT = ("What is the capital of France?", "Which river runs through it?")
#: Models the playground keeps loaded at once; the least recently used is released when another loads.
CHAT_LOADED = 2
CHAT_BASE = "base"  # the label of the stage's base model (``p.model``)
CHAT_NONE = "(none)"  # no second model
_PROBE = "nbft-system-probe-3f1c"


@dataclass
class Sampling:
    """The playground's sampling controls. Temperature 0 is greedy (top-p unused); with a temperature, the seed makes
    a reply repeatable (the same seed, conversation and settings: the same reply)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    def kwargs(self) -> dict:
        """``evaluate.generate``'s sampling arguments."""
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def chat_models(run_dir, base: str | None, names: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """The playground's models: ({label: model spec}, the labels ``names`` pick, notes on names that picked none).

    The labels: ``base`` (the stage's base model, when given) and every generator the run saved
    (``runs.saved_models``: 02's main run, 03's methods, 04's policies, 07's student; an adapter loads merged into its
    base, ``models.resolve``). A name: ``base``, a saved model's name, a stage name (its main model,
    ``runs.find_model``, else its first saved generator), or any other model spec (a folder, a built-in name), which
    joins the labels. The first two picked are shown side by side; where ``names`` picks fewer, the first other
    labels fill in."""
    from . import models, params, runs

    saved = runs.saved_models(run_dir) if run_dir is not None else []
    # what loads as a model spec of its own: an adapter saved without a tokenizer and nbft's base record (runs made
    # before 03 saved its adapters with models.save_adapter; 08 merges those through their peft config) cannot
    problem = {s.name: models.folder_problem(s.path) for s in saved if s.exportable}
    loadable = [s for s in saved if s.exportable and not problem[s.name]]
    options = {CHAT_BASE: base} if base else {}
    options.update({s.name: str(s.path) for s in loadable})
    picked, notes = [], []
    for name in names:
        label = name if name in options else None
        if label is None and run_dir is not None and name.split("/")[0] in params.STAGES:  # a model of the run
            try:
                hit = runs.find_model(run_dir, name)
            except runs.RunError:
                hit = None
            if hit is not None and hit.name in options:
                label = hit.name
            elif hit is None and "/" not in name:
                label = next((s.name for s in loadable if s.name.startswith(name + "/")), None)
            if label is None:
                why = hit.why if hit is not None and not hit.exportable else problem.get(hit.name) if hit else ""
                notes.append(f"{name}: " + (f"{hit.name} is not a generator that loads here ({why})" if hit else
                                            "this run saved no model of it"))
                continue
        elif label is None:  # a model spec of its own
            options[name] = label = name
        if label not in picked:
            picked.append(label)
    picked += [label for label in options if label not in picked][:max(0, 2 - len(picked))]
    if not options:
        raise ValueError("chat: no model to talk to (name one, or give the stage's parameters for its base model)")
    return options, picked, notes


_LOADED: OrderedDict = OrderedDict()
_LOADING = threading.Lock()


def chat_model(spec: str, device: str = "auto"):
    """(model, tokenizer) of ``spec`` (``models.load``), loaded on first use and kept: at most ``CHAT_LOADED`` at
    once, the least recently used released (``models.release``) when another loads."""
    from . import models

    with _LOADING:
        key = (spec, device)
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        while len(_LOADED) >= CHAT_LOADED:
            models.release(_LOADED.popitem(last=False)[1][0])
        model, tok, _ = models.load(spec, device)
        _LOADED[key] = (model, tok)
        return model, tok


def system_role(tokenizer, template: str = "chat") -> bool:
    """Does ``template`` (a row of ``data.TEMPLATES``) give a system message a place of its own? Not where it refuses
    one, leaves it out, or writes it exactly as the system text before the first user message (Gemma, Mistral,
    Alpaca)."""
    from . import data

    try:
        text = data.render_prompt([{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}],
                                  tokenizer, template)
        folded = data.render_prompt([{"role": "user", "content": f"{_PROBE}\n\nhi"}], tokenizer, template)
    except Exception:  # noqa: BLE001 - e.g. "System role not supported", raised by the template itself
        return False
    return _PROBE in text and text != folded


def template_note(tokenizer, template: str = "chat") -> str:
    where = ("in the system role" if system_role(tokenizer, template) else
             "before the first user message: this template has no system role")
    return (f"template {template}" + (" (the tokenizer's chat template)" if template == "chat" else "")
            + f"; a system prompt goes {where}")


def chat_prompt(messages: Sequence[dict], tokenizer, system: str = "", template: str = "chat") -> str:
    """The prompt of a conversation (user and assistant turns), ending where the next reply starts, rendered by the
    run's template (``data.render_prompt``: ``chat`` is the tokenizer's ``apply_chat_template``). ``system``: in the
    system role where the template has one (``system_role``), else before the first user message; "": the
    template's own default, if it has one."""
    from . import data

    msgs = [dict(m) for m in messages]
    if system and system_role(tokenizer, template):
        msgs.insert(0, {"role": "system", "content": system})
    elif system:
        first = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[first]["content"] = f"{system}\n\n{msgs[first]['content']}"
    return data.render_prompt(msgs, tokenizer, template)


def chat_reply(model, tokenizer, prompt: str, sampling: Sampling = Sampling(), precision: str = "fp32",
               on_text=None, stop: threading.Event | None = None, stats: dict | None = None) -> str:
    """One reply to a rendered prompt (``evaluate.generate``, a batch of one, ``sampling``'s settings).

    With ``on_text`` it streams: generation runs in a thread with transformers' ``TextIteratorStreamer`` and
    ``on_text(the reply so far)`` is called as text arrives; setting ``stop`` ends the reply where it is; ``stats``
    (a dict) gets the ``tokens`` generated and the ``seconds`` taken. Without, a greedy reply comes from the run's
    evaluation cache when it has it."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from . import evaluate

    kw = sampling.kwargs()
    if on_text is None and stop is None:
        return evaluate.generate(model, tokenizer, [prompt], sampling.max_new_tokens, batch_size=1,
                                 precision=precision, seed=sampling.seed, **kw)[0]
    stop = stop or threading.Event()

    stats = {} if stats is None else stats
    stats["tokens"], t0 = 0, time.perf_counter()

    class Stop(StoppingCriteria):  # asked once after every generated token
        def __call__(self, input_ids, scores, **_):
            stats["tokens"] += 1
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    done: dict = {}

    def work():
        try:
            done["text"] = evaluate.generate(model, tokenizer, [prompt], sampling.max_new_tokens, batch_size=1,
                                             precision=precision, seed=sampling.seed, cache=False, streamer=streamer,
                                             stopping_criteria=StoppingCriteriaList([Stop()]), **kw)[0]
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            done["error"] = e
            streamer.on_finalized_text("", stream_end=True)

    worker = threading.Thread(target=work, name="nbft-chat-generate", daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        if piece and on_text is not None:
            on_text(text)
    worker.join()
    stats["seconds"] = time.perf_counter() - t0
    if "error" in done:
        raise done["error"]
    return done["text"]


def _chat_turn(role: str, text: str, live: bool = False) -> str:
    style = {"user": "background:#eef", "assistant": "background:#e8f4e8"}[role]
    cls = "nbft-chat-reply" if role == "assistant" else "nbft-chat-user"
    return (f"<div class='{cls}' style='{style};margin:4px 0;padding:4px 8px;border-radius:4px'>"
            f"<small><b>{role}</b>{' (writing…)' if live else ''}</small>"
            f"<div style='white-space:pre-wrap;font-family:monospace'>{_esc(text) if text or live else '<i>(empty)</i>'}"
            "</div></div>")


def chat_column_html(label: str, messages: Sequence[dict], system: str = "", live: str | None = None) -> str:
    """One model's side of the conversation: its name, the system prompt, every turn (escaped), and ``live``: the
    reply being written."""
    turns = "".join(_chat_turn(m["role"], m["content"]) for m in messages)
    if live is not None:
        turns += _chat_turn("assistant", live, live=True)
    sys_line = f"<div style='color:#666'><small>system: {_esc(system)}</small></div>" if system else ""
    return f"<div><b>{_esc(label)}</b>{sys_line}{turns or '<p><i>(no messages yet)</i></p>'}</div>"


def chat_transcript_html(columns: dict[str, Sequence[dict]], system: str = "", notes: Sequence[str] = (),
                         caption: str = "") -> str:
    """A conversation with each model side by side (``{label: messages}``), as static HTML: every text escaped."""
    cells = "".join(f"<td style='vertical-align:top;width:{100 // max(1, len(columns))}%'>"
                    f"{chat_column_html(label, msgs, system)}</td>" for label, msgs in columns.items())
    return ((f"<p><b>{_esc(caption)}</b></p>" if caption else "")
            + f"<table style='width:100%;table-layout:fixed'><tr>{cells}</tr></table>"
            + "".join(f"<p><small>{_esc(n)}</small></p>" for n in notes))


def chat(run, p, models: Sequence[str] = (CHAT_BASE,), script: Sequence[str] = CHAT_SCRIPT, system: str = "",
         sampling: Sampling = Sampling()) -> None:
    """A chat playground: talk to any model of the run, two side by side on the same conversation.

    ``run``: the stage's run (its saved models, the data's template, device and precision; None: ``models`` are model
    specs, the chat template, fp32); ``p``: the stage's parameters (``Common`` and ``ChatArgs``: the base model
    ``p.model``, ``p.chat_tokens``); ``models``: the two shown first (``chat_models``' names: ``base``, a stage name,
    a saved model's name or a model spec). Multi-turn with a system prompt, the reply streamed token by token
    (``chat_reply``), sampling controls (temperature, top-p, max new tokens, seed: ``sampling`` sets where they
    start), stop and clear; each model keeps
    its own replies in its column. When the notebook runs, the scripted conversation ``script`` (greedy, at most
    ``p.chat_tokens`` a reply; 0: none, and nothing loads before the first message) is played to both: the
    conversation the playground opens with, and its static copy for a report read without a kernel."""
    import ipywidgets as W

    from . import data

    run_dir = run.path if run is not None else None
    options, pair, notes = chat_models(run_dir, p.model, models)
    template = data.data_params_for(run, p).template if run is not None else "chat"
    device = run.device if run is not None else "auto"
    precision = run.precision if run is not None else "fp32"
    labels = pair[:2]
    history: list[list[dict]] = [[] for _ in labels]
    script, tokens = (script if p.chat_tokens else ()), p.chat_tokens
    for label, msgs in zip(labels, history if script else []):
        model, tok = chat_model(options[label], device)
        for text in script:
            msgs.append({"role": "user", "content": text})
            msgs.append({"role": "assistant", "content": chat_reply(
                model, tok, chat_prompt(msgs, tok, system, template), Sampling(0.0, 1.0, tokens), precision)})
        notes.append(f"{label}: {template_note(tok, template)}")
    left = W.Dropdown(options=list(options), value=labels[0], description="model")
    right = W.Dropdown(options=[CHAT_NONE, *options], value=labels[1] if len(labels) > 1 else CHAT_NONE,
                       description="beside it")
    sys_box = W.Textarea(value=system, placeholder="system prompt (empty: the template's own default, if it has one)",
                         layout=W.Layout(width="96%", height="3.5em"))
    temperature = W.FloatSlider(value=sampling.temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                                tooltip="0: greedy")
    top_p = W.FloatSlider(value=sampling.top_p, min=0.05, max=1.0, step=0.05, description="top-p")
    max_new = W.IntSlider(value=sampling.max_new_tokens, min=1, max=1024, description="max tokens")
    seed = W.IntText(value=sampling.seed, description="seed", layout=W.Layout(width="160px"))
    message = W.Text(placeholder="your message", layout=W.Layout(width="60%"))
    message.add_class("nbft-chat-message")
    send, stop_button = W.Button(description="send", button_style="primary"), W.Button(description="stop", disabled=True)
    clear = W.Button(description="clear")
    panes = [W.HTML(layout=W.Layout(width="50%")), W.HTML(layout=W.Layout(width="50%"))]
    panes[0].add_class("nbft-chat-left")
    panes[1].add_class("nbft-chat-right")
    status = W.HTML("<small>" + " · ".join(_esc(n) for n in notes) + "</small>")
    status.add_class("nbft-chat-status")
    history += [[] for _ in range(2 - len(history))]
    stopping = threading.Event()

    def draw(i: int, live: str | None = None):
        label = (left, right)[i].value
        panes[i].value = "" if label == CHAT_NONE else chat_column_html(label, history[i], sys_box.value, live)

    def say(text: str):
        status.value = f"<small>{_esc(text)}</small>"

    def work(columns: list[int]):
        sampling = Sampling(temperature.value, top_p.value, max_new.value, seed.value)
        try:
            for n, i in enumerate(columns):
                label = (left, right)[i].value
                if (options[label], device) not in _LOADED:
                    say(f"loading {label}…")
                model, tok = chat_model(options[label], device)
                prompt = chat_prompt(history[i], tok, sys_box.value, template)
                say(f"{label} is writing… ({template_note(tok, template)})")
                stats: dict = {}
                reply = chat_reply(model, tok, prompt, sampling, precision, on_text=lambda s, i=i: draw(i, s),
                                   stop=stopping, stats=stats)
                history[i].append({"role": "assistant", "content": reply})
                draw(i)
                say(f"{label}: {stats['tokens']} tokens in {stats['seconds']:.1f} s"
                    + (" (stopped)" if stopping.is_set() else ""))
                if stopping.is_set():
                    for j in columns[n + 1:]:  # never answered: its turn is taken back
                        history[j].pop()
                        draw(j)
                    break
        except Exception as e:  # noqa: BLE001 - shown in the playground; the kernel goes on
            say(f"error: {type(e).__name__}: {e}")
        finally:
            send.disabled, stop_button.disabled = False, True

    def on_send(_=None):
        text = message.value.strip()
        if not text or send.disabled:
            return
        columns = [i for i, d in enumerate((left, right)) if d.value != CHAT_NONE]
        message.value = ""
        send.disabled, stop_button.disabled = True, False
        stopping.clear()
        for i in columns:
            history[i].append({"role": "user", "content": text})
            draw(i)
        threading.Thread(target=work, args=(columns,), name="nbft-chat", daemon=True).start()

    def on_clear(_=None):
        if not send.disabled:
            for i, h in enumerate(history):
                h.clear()
                draw(i)

    send.on_click(on_send)
    stop_button.on_click(lambda _: stopping.set())
    clear.on_click(on_clear)
    for i, d in enumerate((left, right)):
        d.observe(lambda _, i=i: draw(i), "value")
    sys_box.observe(lambda _: [draw(i) for i in range(2)], "value")
    draw(0)
    draw(1)
    box = W.VBox([W.HBox([left, right]), sys_box, W.HBox([temperature, top_p]), W.HBox([max_new, seed]),
                  W.HBox(panes), W.HBox([message, send, stop_button, clear]), status])
    box.add_class("nbft-chat")
    shown = {label: msgs for label, msgs in zip(labels, history)}
    static = (chat_transcript_html(shown, system, notes, caption=f"Example conversation (scripted, greedy, at most "
                                   f"{tokens} tokens a reply)") if script else "")
    show_widget(box, static + "<p><small><i>Chat playground: talks to the models with a live kernel (open the "
                "notebook in Jupyter). Models: " + _esc(", ".join(options)) + ".</i></small></p>")
