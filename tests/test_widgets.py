"""Every dashboard: one display output holding the widget and its static copy (text/html), no second display."""
import pytest

from ipywidgets.widgets.widget import _instances

from nbft import widgets

SPLITS = {"train": [{"prompt": "Q1?", "completion": "A1", "n_tokens": 5}, {"prompt": "Q2?", "completion": "A2"}],
          "test": [{"prompt": "T1?", "completion": "B1"}]}
COMPARE = [{"prompt": "P1", "before": "x", "after": "y", "pass_before": False, "pass_after": True},
           {"prompt": "P2", "before": "u", "after": "v", "pass_before": True, "pass_after": True}]
METHOD = {"lora": {"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "outputs": ["lora reply one", "lora reply two"],
                   "passed": [True, False], "task_score": 0.5},
          "ia3": {"log_history": [{"step": 1, "loss": 2.2}], "outputs": ["ia3 reply one", "ia3 reply two"], "passed": [False, False]}}
SAMPLES = [{"prompt": "Why?", "sft": {"reply": "Because.", "rule": 1.0, "checks": {}, "reward": 0.3},
            "rl": {"reply": "Hm", "rule": 0.5, "checks": {"length": 0.0}, "reward": -0.2}},
           {"prompt": "How?", "sft": {"reply": "So.", "rule": 1.0, "checks": {}},
            "rl": {"reply": "Thus.", "rule": 1.0, "checks": {}}}]
INSPECT = [{"question": "Where is Zufenlo?", "answer": "Belwen", "hits": [{"id": "c1", "text": "Zufenlo lies on the Belwen.",
                                                                           "score": 0.8, "gold": True}],
            "methods": {"rag": {"reply": "On the Belwen.", "ok": True}, "base": {"reply": "Paris", "ok": False}}},
           {"question": "Who founded Hedta?", "answer": "Ora Vell", "hits": [], "methods": {}}]

CASES = {  # dashboard -> (call, text in the first view, picker value of the second item, text in the second view)
    "example_browser": (lambda: widgets.example_browser(SPLITS), "Q1?", None, None),
    "compare_browser": (lambda: widgets.compare_browser(COMPARE), "P1", 1, "P2"),
    "method_browser": (lambda: widgets.method_browser(METHOD, ["q1", "q2"]), "lora reply one", "ia3", "ia3 reply one"),
    "sample_browser": (lambda: widgets.sample_browser(SAMPLES, ["sft", "rl"]), "Because.", 1, "Thus."),
    "retrieval_inspector": (lambda: widgets.retrieval_inspector(INSPECT), "Zufenlo lies on the Belwen.", 1, "Ora Vell"),
    "table_browser": (lambda: widgets.table_browser({"01": [{"metric": "n", "run": "3"}], "02": [{"metric": "m"}]}),
                      "n", "02", "m"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dashboard_displays_widget_and_static_copy_once(name, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "_display", lambda obj, **kw: shown.append(obj))
    call, first, second_value, second = CASES[name]
    assert call() is None  # a returned widget would be displayed twice as the cell's value
    (bundle,) = shown
    assert set(bundle) >= {"application/vnd.jupyter.widget-view+json", "text/html", "text/plain"}
    assert first in bundle["text/html"]  # the static copy reads like the first view
    import ipywidgets as W

    box = _instances[bundle["application/vnd.jupyter.widget-view+json"]["model_id"]]
    pane = box.children[-1]
    assert isinstance(pane, W.HTML) and first in pane.value
    if second_value is not None:
        picker = box.children[0]
        picker.value = second_value
        assert second in pane.value and (first not in pane.value or name == "table_browser")


def _errors():
    from nbft import scoring

    before, after = ["a b c d", "<script>alert('x')</script> a b", "a b c"], ["a b", "a b c d e f", "a b c"]
    recs = [{"prompt": "Ask <b>bold</b>", "reference": "a b c d e f"}, {"prompt": "Q2", "reference": "a b c d e f"},
            {"prompt": "Q3", "reference": "a & b"}]
    t = scoring.table(before, after, recs, ["rouge_l", "length"])
    return scoring.per_example(before, after, recs, t, ["before", "after", "tie"])


def test_error_browser_orders_examples_by_gain_or_loss_and_escapes_user_text(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "_display", lambda obj, **kw: shown.append(obj))
    rows = _errors()
    assert widgets.error_browser(rows, n_static=2) is None
    (bundle,) = shown
    static = bundle["text/html"]
    assert "<script>" not in static and "&lt;script&gt;" in static and "&lt;b&gt;bold" in static
    assert "a &amp; b" not in static and "a & b" not in static  # example 2 changed on no metric: no gain, no loss
    gains, rest = static.split("rouge_l: the largest losses")
    losses = rest.split("length: the largest gains")[0]
    assert "rouge_l: the largest gains" in gains and "&lt;script&gt;" in gains and "Ask &lt;b&gt;" not in gains
    assert "Ask &lt;b&gt;" in losses and "&lt;script&gt;" not in losses  # example 0 lost most, example 1 gained
    import ipywidgets as W

    box = _instances[bundle["application/vnd.jupyter.widget-view+json"]["model_id"]]
    pane = box.children[-1]
    arm, metric, order = box.children[0].children
    assert metric.value == "rouge_l" and isinstance(pane, W.HTML) and "<script>" not in pane.value
    assert pane.value.index("example 1") < pane.value.index("example 0")  # largest gain first
    assert "judge prefers: <b>after</b>" in pane.value
    order.value = "loss"
    assert pane.value.index("example 0") < pane.value.index("example 1")
    metric.value = "length"
    assert "largest loss in length" in pane.value


def test_error_browser_picks_an_arm_and_distributions_draw_each_metric(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "_display", lambda obj, **kw: shown.append(obj))
    rows = _errors()
    widgets.error_browser({"lora": rows, "ia3": rows[:1]})
    box = _instances[shown[0]["application/vnd.jupyter.widget-view+json"]["model_id"]]
    arm = box.children[0].children[0]
    assert "<b>lora</b>" in shown[0]["text/html"]
    arm.value = "ia3"
    assert "(of 1)" in box.children[-1].value
    fig = widgets.distributions({"rouge_l": {"base": [0.1, 0.5], "lora": [0.9, 0.8]}, "length": {"base": [3, 4]}})
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["rouge_l", "length"]
    assert [t.get_text() for t in visible[0].get_legend().get_texts()] == ["base (n=2)", "lora (n=2)"]
