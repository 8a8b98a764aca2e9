"""Reports: external-URL scan, metric tables, run selection, the run index page."""
import json
import os

import pytest
import yaml

from nbft import export, report, runs


@pytest.mark.parametrize("html, expected", [
    ("<script src='https://cdn.example/x.js'></script>", ["https://cdn.example/x.js"]),
    ('<script src="//unpkg.com/a.js"></script>', ["//unpkg.com/a.js"]),
    ('<link rel="stylesheet" href="http://x/y.css">', ["http://x/y.css"]),
    ("<style>@import url('https://fonts.googleapis.com/css?f=R');</style>", ["https://fonts.googleapis.com/css?f=R"]),
    ("<style>.a{background:url(https://x/i.png)}</style>", ["https://x/i.png"]),
    ("<img src=https://x/i.png>", ["https://x/i.png"]),
    # not fetched: a plain link, a canonical link, a commented-out import, inline data, a local file
    ("<a href='https://example.com'>docs</a><link rel='canonical' href='https://x'>", []),
    ("<style>/* @import url('https://fonts.googleapis.com/css'); */ .a{}</style>", []),
    ("<script>var u = 'https://cdn.jsdelivr.net/npm/';</script><img src='data:image/png;base64,AA'>", []),
    ("<script src='embed.js'></script>", []),
])
def test_external_urls(html, expected):
    assert export.external_urls(html) == expected


METRICS = {"01_data_prep": {"n_train": 10, "n_by_task": {"json_qa": 6, "uppercase": 4}},
           "05_rag_vs_ft": {"accuracy": {"rag": {"open": 0.8125, "mc": 0.95}, "ft": {"open": 0.0, "mc": 0.25}},
                            "recall_at_k": {"1": 1.0}, "retrieval_ms_p50": 4.5512, "n_eval": 120,
                            "findings": ["words"], "rows": [{"a": 1}], "ks": [1, 3]}}


def test_flatten_and_tables():
    flat = runs.flatten(METRICS["05_rag_vs_ft"])
    assert flat == {"accuracy.rag.open": 0.8125, "accuracy.rag.mc": 0.95, "accuracy.ft.open": 0.0, "accuracy.ft.mc": 0.25,
                    "recall_at_k.1": 1.0, "retrieval_ms_p50": 4.5512, "n_eval": 120, "ks": [1, 3]}
    assert runs.headline("05_rag_vs_ft", METRICS["05_rag_vs_ft"]) == {
        "accuracy.rag.open": 0.8125, "accuracy.ft.open": 0.0, "retrieval_ms_p50": 4.5512, "n_eval": 120}
    assert runs.headline("unknown", {"a": 1, "b": {"c": 2}}) == {"a": 1, "b.c": 2}
    assert [report.fmt(v) for v in (0.123456, 3, True, None, [1, 0.5], "x")] == ["0.1235", "3", "True", "None",
                                                                                  "1, 0.5", "x"]
    rows = report.compare_table({"r1": METRICS, "r2": {"01_data_prep": {"n_train": 12, "extra": 1.5}}}, "01_data_prep")
    assert rows == [{"metric": "n_train", "r1": "10", "r2": "12"},
                    {"metric": "n_by_task.json_qa", "r1": "6", "r2": ""},
                    {"metric": "n_by_task.uppercase", "r1": "4", "r2": ""},
                    {"metric": "extra", "r1": "", "r2": "1.5"}]
    assert report.is_number("0.5") and not report.is_number("True") and not report.is_number("1, 2")


def test_params_diff_lists_only_what_differs():
    a = {"common": {"seed": 0, "run_name": "a"}, "02_sft": {"epochs": 1.0, "lrs": [1, 2]}}
    b = {"common": {"seed": 0, "run_name": "b"}, "02_sft": {"epochs": 2.0, "lrs": [1, 2]}}
    assert report.params_diff({"a": a, "b": b}) == [{"parameter": "02_sft.epochs", "a": "1", "b": "2"}]
    assert report.params_diff({"a": a}) == []


def make_run(root, name, metrics, stages=("01_data_prep",)):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "params.yaml").write_text(yaml.safe_dump({"common": {"seed": 0}}))
    (d / "status.json").write_text(json.dumps({"state": "ok", "stages": {s: "ok" for s in stages},
                                               "seconds": {s: 12.3 for s in stages}}))
    for s in stages:
        (d / f"{s}.html").write_text("<html></html>")
    return d


def test_resolve_runs(runs_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no run with metrics"):
        report.resolve_runs([])
    a = make_run(runs_dir, "alpha-1", METRICS)
    b = make_run(runs_dir, "beta-2", METRICS)
    os.utime(a / "metrics.json", (1, 1))
    assert report.resolve_runs([]) == [b]  # the newest
    assert report.resolve_runs([], current=a) == [a]
    assert report.resolve_runs(["alpha-1", str(b)]) == [a.resolve(), b.resolve()]
    with pytest.raises(FileNotFoundError, match="did you mean 'alpha-1'"):
        report.resolve_runs(["alpha1"])
    loaded = report.load_runs([a, b])
    assert list(loaded) == ["alpha-1", "beta-2"] and loaded["alpha-1"]["metrics"] == METRICS
    assert report.report_stages(loaded) == ["01_data_prep", "05_rag_vs_ft"]
    assert report.report_stages(loaded, ["05_rag_vs_ft"]) == ["05_rag_vs_ft"]
    with pytest.raises(ValueError, match="02_sft not recorded"):
        report.report_stages(loaded, ["02_sft"])
    assert report.stage_links(loaded, ["01_data_prep"], runs_dir) == [
        {"run": "alpha-1", "stage": "01_data_prep", "report": "alpha-1/01_data_prep.html"},
        {"run": "beta-2", "stage": "01_data_prep", "report": "beta-2/01_data_prep.html"}]


def test_index_links_every_stage_with_headline_metrics(runs_dir):
    d = make_run(runs_dir, "r", {**METRICS, "99_report": {"compare_runs": ["r"], "n_tables": 2}},
                 stages=("01_data_prep", "05_rag_vs_ft", "99_report"))
    page = report.write_index(d).read_text()
    for stage in ("01_data_prep", "05_rag_vs_ft", "99_report"):
        assert page.count(f"href='{stage}.html'") == 1, stage
    assert page.index("01_data_prep.html") < page.index("05_rag_vs_ft.html") < page.index("99_report.html")
    assert "compare_runs = <b>r</b>" in page
    assert "accuracy.rag.open = <b>0.8125</b>" in page and "n_train = <b>10</b>" in page and "12 s" in page
    assert export.external_urls(page) == [] and "<script" not in page


def test_vendored_files_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nbft vendor"):
        export.vendor(fetch=False)

    class Fake:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return b"not the pinned tarball"

    monkeypatch.setattr(export.urllib.request, "urlopen", Fake)
    with pytest.raises(OSError, match="does not match the pinned"):
        export.vendor()
    assert not any(tmp_path.rglob("*.js"))  # nothing unverified is kept


# ---------------------------------------------------------------- issue 15: hostile names and texts stay text

HOSTILE = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "'><svg onload=alert(3)>",
           '"><iframe src=javascript:alert(4)>']


class Tags:
    """Every start tag of an HTML page with its attributes, and the text of each <script>."""

    def __init__(self, page: str):
        from html.parser import HTMLParser

        self.tags, self.scripts = [], []
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                outer.tags.append((tag, dict(attrs)))
                self.in_script = tag == "script"

            def handle_endtag(self, tag):
                self.in_script = False

            def handle_data(self, data):
                if getattr(self, "in_script", False):
                    outer.scripts.append(data)

        P(convert_charrefs=True).feed(page)


def assert_inert(page: str):
    """No hostile string survives as markup: no event-handler attribute, no javascript: URL, no svg/iframe tag,
    no script that calls alert, and no hostile string verbatim."""
    t = Tags(page)
    for tag, attrs in t.tags:
        assert tag not in ("svg", "iframe"), (tag, attrs)
        assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
        assert not any((v or "").strip().lower().startswith("javascript:") for v in attrs.values()), (tag, attrs)
    assert not any("alert(" in s for s in t.scripts)
    for h in HOSTILE:
        assert h not in page, h


def test_hostile_names_and_texts_are_escaped_in_every_page_nbft_writes(runs_dir, tmp_path):
    """Issue 15: run names, stage report paths, metric names and values (labels from a user's CSV become metric
    keys), findings, sweep points, table cells and notebook outputs, all rendered as text."""
    import nbformat

    from nbft import widgets

    bad = "x" + HOSTILE[0]  # a folder name Linux allows (nbft's own names are letters, digits, . _ -)
    metrics = {"06_classify": {"conditional": {"rate_by_tag": {h: 0.5 for h in HOSTILE}}, "methods": {
        HOSTILE[1]: {"accuracy": 0.9}}, "findings": HOSTILE}, "01_data_prep": {"n_train": HOSTILE[2]}}
    d = make_run(runs_dir, bad, metrics, stages=("01_data_prep", "06_classify"))
    (d / "sweep.json").write_text(json.dumps({"points": [{"run": h, "values": {h: h}, "exit_code": 0} for h in HOSTILE]}))
    index = report.write_index(d).read_text()
    assert_inert(index)
    assert "built-in method" not in index  # the sweep point's values, not dict.values
    links = report.stage_links(report.load_runs([d]), ["01_data_prep", "06_classify"], runs_dir)
    assert_inert(report.links_html(links + [{"run": h, "stage": h, "report": h} for h in HOSTILE]))
    rows = [{h: h, "value": h, "n": 1.5} for h in HOSTILE]
    table = widgets.html_table(rows, caption=HOSTILE[3])
    assert_inert(table)
    assert_inert("".join(widgets.html_table(report.compare_table({h: metrics}, "06_classify"), caption=h)
                         for h in HOSTILE))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="\n".join(HOSTILE)),
        nbformat.v4.new_output("execute_result", data={"text/plain": HOSTILE[1]}, execution_count=1),
        nbformat.v4.new_output("display_data", data={"text/html": table, "text/plain": "t"}),
        nbformat.v4.new_output("error", ename=HOSTILE[0], evalue=HOSTILE[2], traceback=HOSTILE)])]
    path = tmp_path / "hostile.ipynb"
    nbformat.write(nb, path)
    assert_inert(export.export_html(path).read_text())


def test_sweep_points_say_ok_failed_interrupted_or_not_run(runs_dir):
    d = runs_dir / "sw"
    d.mkdir(parents=True)
    codes = {"a": 0, "b": 1, "c": 130, "d": 143, "e": None}
    (d / "sweep.json").write_text(json.dumps({"points": [{"run": r, "values": {"k": r}, "exit_code": c}
                                                          for r, c in codes.items()]}))
    page = report.index_page(d)
    results = {r: page.split(f">{r}</a>", 1)[1].split("</tr>", 1)[0].rsplit("<td>", 1)[1].split("<", 1)[0]
               for r in codes}
    assert results == {"a": "ok", "b": "failed", "c": "interrupted", "d": "interrupted", "e": "not run"}


# ---------------------------------------------------------------- a stage report's parameters, paths as shown

def test_parameters_html_shows_what_differs_then_every_parameter_escaped(tmp_path):
    import dataclasses

    from nbft import params

    p = params.SFTParams()
    p.batch_size, p.model = 3, HOSTILE[1]
    page = report.parameters_html("02_sft", p, tmp_path / "runs" / "r1")
    n = len(dataclasses.fields(p))
    head, details = page.split("<details>")
    assert "2 of %d differ from the defaults" % n in head
    # the differing values, each with its default and its help text; nothing else before the details
    assert '<td class="v">batch_size</td><td class="v">3</td><td class="v">8</td>' in head
    assert "examples per optimizer step (per device)" in head and head.count("<tr>") == 1 + 2
    assert "learning_rate" not in head
    # the full set one click away
    assert details.startswith(f"<summary>all {n} parameters</summary>")
    for f in dataclasses.fields(p):
        assert f'<td class="v">{f.name}</td>' in details, f.name
    assert details.count("<tr>") == 1 + n
    # a value is user text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in head
    assert_inert(page)
    # all at their defaults: no table before the details
    page = report.parameters_html("02_sft", params.SFTParams())
    assert f"all {n} at their defaults" in page and page.split("<details>")[0].count("<table>") == 0


def test_parameters_html_shows_paths_relative_to_the_run_or_the_project(tmp_path, root):
    from nbft import params

    run = tmp_path / "runs" / "r1"
    p = params.ReportParams(compare_runs=[str(run.parent / "r0"), str(root / "data" / "x.jsonl"),
                                          str(tmp_path / "home" / "me" / "secret.jsonl")])
    page = report.parameters_html("99_report", p, run)
    assert "[&#x27;runs/r0&#x27;, &#x27;data/x.jsonl&#x27;, &#x27;secret.jsonl&#x27;]" in page
    assert str(tmp_path) not in page and str(root) not in page


@pytest.mark.parametrize("path, expected", [
    ("{run}", "runs/r1"), ("{run}/artifacts/02_sft", "runs/r1/artifacts/02_sft"),
    ("{runs}/r0/01_data_prep.html", "runs/r0/01_data_prep.html"),  # another run beside it
    ("{root}/data/x.jsonl", "data/x.jsonl"), ("{root}", "."),
    ("/elsewhere/me/secret.jsonl", "secret.jsonl"), ("~/data/y.csv", "y.csv"),
    ("tiny-llama", "tiny-llama"), ("owner/name", "owner/name"), ("data/x.jsonl", "data/x.jsonl"), ("", ""),
])
def test_relative_shows_nothing_of_the_machine(path, expected, tmp_path, root):
    from nbft import files

    run = tmp_path / "runs" / "r1"
    assert files.relative(path.format(run=run, runs=run.parent, root=root), run) == expected
