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
