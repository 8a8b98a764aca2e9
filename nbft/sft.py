"""Stage 02_sft: supervised fine-tuning — what it does and what it costs.

The notebook's own logic: the domain texts for continued pretraining, one fixed-budget LoRA run scored on
held-out prompts (the data-size sweep and the clean-vs-unfiltered arm), the unfiltered arm itself, the
base-vs-tuned rows, and ``findings`` — the sentences the notebook prints and records, worded by the numbers
and by ``THRESHOLDS`` (recorded with the metrics, so a reader sees what "learned" or "within" meant).
"""
from __future__ import annotations

import dataclasses
import random
import time

from . import corpora, data, evaluate, harness, judge as judging, models, params, rating, scoring, tasks, train

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "learned": 0.9,           # task score at or above this: "the behaviour was learned" (also the data-size bar)
    "partly_margin": 0.1,     # task score above base + this: "partly learned"
    "same_relative": 0.02,    # a relative change within this: "stayed about the same"
    "lora_within": 0.1,       # LoRA's task score within this of full fine-tuning: "comes within"
    "clean_margin": 0.02,     # clean above unfiltered by more than this: "clean data wins"
    "overfit_rise": 0.01,     # validation loss at the end above its lowest by more than this (relative): "turned up"
}


def interval_text(s: dict, sign: str = "") -> str:
    """A ``scoring.summary`` ({mean, lo, hi}) as "0.75 [0.58, 0.92]" (``sign`` "+": signed, for a change); "-" when
    it has no mean. The one format of 02's comparison tables and sentences."""
    return f"{s['mean']:{sign}.2f} [{s['lo']:{sign}.2f}, {s['hi']:{sign}.2f}]" if s["mean"] is not None else "-"


def domain_texts(p: params.SFTParams) -> tuple[list[dict], list[str]]:
    """Continued-pretraining data: invented-world documents to train on ({"text"} records) and held-out ones
    (a fifth, at least 4) whose perplexity shows whether it worked."""
    docs = corpora.domain_corpus(max(p.cpt_docs, 8), p.seed)
    n_held = max(4, len(docs) // 5)
    return [{"text": d} for d in docs[n_held:]], docs[:n_held]


#: checks a dataset names for itself (``tasks.resolve_check``): its task score sees what training teaches. ``contains``
#: is the fallback for data without one (a user's free text), where a reference metric has to say what changed.
OWN_CHECKS = ("json_answer", "exact", "plain", "per-record")
#: the reference metrics a comparison may use in place of the task score, in order of preference (``score_name``)
REFERENCE_SCORES = ("rouge_l", "chrf", "semantic", "bleu")


def score_name(check: str, names) -> str:
    """The score 02's comparisons (scopes, data size, clean vs unfiltered) use: ``task_score`` where the data has a
    check of its own; otherwise the first reference metric of ``names`` (``eval_metrics`` resolved), since a
    "contains" task score cannot see most changes of free text ("not learned" from a metric that cannot see the
    change would be wrong)."""
    if check in OWN_CHECKS:
        return "task_score"
    return next((n for n in REFERENCE_SCORES if n in names), "task_score")


def scores_of(result: dict, records: list[dict], score: str) -> list[float]:
    """Per-example values of ``score`` for an ``evaluate.evaluate_model`` result on ``records``."""
    if score == "task_score":
        return [float(x) for x in result["passed"]]
    return scoring.score(result["outputs"], records, [score])[score]


def lora_score(p: params.SFTParams, tokenizer, examples: list[dict], test: list[dict], steps: int,
               check: str, precision: str, score: str = "task_score") -> float:
    """``score`` (``score_name``) of a fresh LoRA run on ``examples`` for exactly ``steps`` optimizer steps (the
    data-size sweep and the clean-vs-unfiltered arms: same recipe, same compute)."""
    with train.trained(p, tokenizer, examples, scope="lora", max_steps=steps) as r:
        result = evaluate.evaluate_model(r.model, tokenizer, test, check, precision, p.max_new_tokens,
                                         p.eval_batch_size, probe=False)
    return float(sum(v := scores_of(result, test, score)) / max(len(v), 1))


def overfitting(p: params.SFTParams, tokenizer, examples: list[dict], validation: list[dict]) -> dict | None:
    """Overfitting and early stopping: LoRA on the first ``overfit_examples`` for ``overfit_epochs`` at the constant
    ``overfit_learning_rate``, the validation loss after every epoch (its ``eval_curve``); then the same run with
    early stopping (``overfit_patience``), which stops where the validation loss stopped falling and restores the
    best checkpoint. Its record: n_train, epochs, learning_rate, eval_steps, the first run's steps, eval_curve, best_step and seconds, and ``early_stopping`` with the second
    run's patience, steps, stopped_at_step, best_step, eval_loss (of the model it returned), eval_curve and
    seconds. None when ``overfit_examples`` is 0 or there is no validation set to evaluate on."""
    if not p.overfit_examples or not validation:
        return None
    small = examples[: p.overfit_examples]
    every = train.steps_for(len(small), p, epochs=1.0)  # an evaluation after every epoch
    plain = dataclasses.replace(p, epochs=p.overfit_epochs, eval_steps=every, early_stopping_patience=0)
    rate = dict(learning_rate=p.overfit_learning_rate, lr_scheduler_type="constant")
    with train.trained(plain, tokenizer, small, validation, scope="lora", **rate) as full:
        out = {"n_train": len(small), "epochs": p.overfit_epochs, "learning_rate": p.overfit_learning_rate,
               "eval_steps": every, "steps": full.steps,
               "eval_curve": full.eval_curve, "best_step": full.best_step, "seconds": full.seconds}
    stopping = dataclasses.replace(plain, early_stopping_patience=p.overfit_patience)
    with train.trained(stopping, tokenizer, small, validation, scope="lora", **rate) as es:
        out["early_stopping"] = {"patience": p.overfit_patience, "steps": es.steps,
                                 "stopped_at_step": es.stopped_at_step, "best_step": es.best_step,
                                 "eval_loss": es.eval_loss, "eval_curve": es.eval_curve, "seconds": es.seconds}
    return out


def overfitting_findings(o: dict) -> list[str]:
    """The sentences of the overfitting section: what its curve shows (the validation loss turned up, or not, by
    ``THRESHOLDS['overfit_rise']``) and where early stopping stopped, with the returned model's validation loss."""
    curve, es = o["eval_curve"], o["early_stopping"]
    best = min(r["eval_loss"] for r in curve)
    end = curve[-1]
    turned = end["eval_loss"] > best * (1 + THRESHOLDS["overfit_rise"])
    out = [f"Overfitting, LoRA on {o['n_train']} examples for {o['epochs']:g} epochs ({o['steps']} steps): training loss "
           f"{curve[0]['train_loss']:.3f} -> {end['train_loss']:.3f}; validation loss lowest {best:.3f} at step "
           f"{o['best_step']}, {end['eval_loss']:.3f} at the end: " + (
               "it turned up while the training loss kept falling (overfitting)." if turned and
               end["train_loss"] < curve[0]["train_loss"] else "it did not turn up in this run.")]
    if es["stopped_at_step"] is not None:
        out.append(f"Early stopping (patience {es['patience']}) stopped at step {es['stopped_at_step']} of {o['steps']} "
                   f"and restored step {es['best_step']}: validation loss of the returned model {es['eval_loss']:.3f} "
                   f"(lowest logged {min(r['eval_loss'] for r in es['eval_curve']):.3f}).")
    else:
        out.append(f"Early stopping (patience {es['patience']}) did not stop: the validation loss never went "
                   f"{es['patience']} evaluation{'s' if es['patience'] > 1 else ''} without a new low; the returned "
                   f"model is step {es['best_step']}'s (validation loss {es['eval_loss']:.3f}).")
    return out


def unfiltered_pool(dp: params.DataPrepParams, tokenizer, exclude_prompts: set[str]) -> list[dict]:
    """The raw data of 01_data_prep's parameters ``dp`` rendered as it is (no dedup, no filters), minus
    held-out prompts (compared case- and whitespace-insensitively).

    The other arm of a "clean vs unfiltered data" comparison on the same budget: drawn from the same source
    01_data_prep cleaned (its dataset, demo tasks, template), so the two arms differ only in the cleaning.
    """
    _, normalized = data.load_records(dataclasses.replace(dp, max_records=0))  # a mix: its sources, mixed
    recs = [data.render(r, tokenizer, dp.template) for r in normalized]
    excluded = {data.normalized_prompt({"prompt": x}) for x in exclude_prompts}
    return [{**r, "n_tokens": len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"])}
            for r in recs if data.normalized_prompt(r) not in excluded]


def sample_unfiltered(dp: params.DataPrepParams, tokenizer, exclude_prompts: set[str], n: int,
                      seed: int = 0) -> tuple[list[dict], int]:
    """``n`` records drawn from :func:`unfiltered_pool`, and how many of them a filter would drop
    (an empty reply, or one that fails its own task check)."""
    pool = unfiltered_pool(dp, tokenizer, exclude_prompts)
    picked = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))]
    return picked, sum(not data.reply_of(r).strip() or data.off_format(r) for r in picked)


def comparison_rows(test: list[dict], before: dict, after: dict) -> list[dict]:
    """Rows for the base-vs-tuned browser: each held-out prompt (the user turn), both replies, pass/fail.
    ``before``/``after``: ``evaluate.evaluate_model`` results on ``test``."""
    return [{"prompt": r["messages"][-2]["content"], "before": b, "pass_before": pb, "after": a, "pass_after": pa}
            for r, b, a, pb, pa in zip(test, before["outputs"], after["outputs"], before["passed"], after["passed"])]


def change(before: float, after: float, lower_is_better: bool = False) -> str:
    """"stayed about the same" (relative change within ``THRESHOLDS['same_relative']``), else rose/fell, better/worse."""
    rel = (after - before) / before if before else after - before
    if abs(rel) <= THRESHOLDS["same_relative"]:
        return "stayed about the same"
    up = after > before
    return ("rose" if up else "fell") + (" (worse)" if up == lower_is_better else " (better)")


def check_inputs(p) -> None:
    """Before any notebook runs: a QLoRA scope (main run or compared) needs what this machine may lack; a judge
    (``judge``) must answer (an endpoint) or resolve (a model spec); the filter's reward model
    (``quality_reward_model``) must be one."""
    asked = [k for k, v in (("scope", [p.scope]), ("compare_scopes", p.compare_scopes)) if "qlora" in v]
    if asked and train.qlora_needs():
        raise params.ParamError(f"02_sft.{asked[0]}: qlora needs {train.qlora_needs()} (pip install bitsandbytes on "
                                "a GPU machine), or use lora")
    harness.check(p.benchmarks, "02_sft.benchmarks")  # a name that is no task; a hub task offline and not cached
    judging.check(p, "02_sft.")
    if p.quality_filter == "reward_model":
        rating.check_reward_model(p.quality_reward_model, "02_sft.quality_reward_model")


def scope_row(result: dict, total_params: int, records: list[dict] | None = None, score: str = "task_score") -> dict:
    """One scope's row of the scope comparison (``metrics``' ``scope_comparison``): the trained model's task score,
    its ``score`` (``score_name``: the task score itself, or a reference metric on ``records``) and forgetting probe, what
    trained and how long. ``result``: ``evaluate.evaluate_model``'s, with ``trainable_params`` and ``seconds``."""
    row = {"task_score": result["task_score"], "ppl_general": result["ppl_general"], "general_qa": result["general_qa"],
           "trainable_params": result["trainable_params"],
           "trainable_pct": 100 * result["trainable_params"] / total_params, "seconds": result["seconds"]}
    row["score"] = (result["task_score"] if score == "task_score" else
                    scoring.summary(scores_of(result, records or [], score))["mean"])
    return row


def metrics(p, base: dict, after: dict, main, *, n_train: int, n_eval: int, check: str, trainable_params: int,
            total_params: int, by_size: dict, quality: dict, scopes: dict, cpt: tuple[float, float] | None,
            reply: dict | None = None, benchmarks: dict | None = None, judge: dict | None = None,
            overfit: dict | None = None, score: str = "task_score", judged_scopes: dict | None = None,
            templates: dict | None = None, turns: dict | None = None, task_mix: dict | None = None) -> dict:
    """02_sft's section of metrics.json (with ``findings`` and ``thresholds`` added by the notebook): ``base`` and
    ``after`` are ``evaluate.evaluate_model``'s results before and after the main run ``main`` (a
    ``train.TrainResult``: its ``eval_curve`` and ``best_step`` too), ``scopes`` the scope comparison (``scope_row``),
    ``cpt`` continued pretraining's domain and general-text perplexity after (None: skipped), ``benchmarks``
    ``harness.compare``'s table (None: not run), ``judge`` the model judge's verdict (``judge.compare``; recorded
    without its per-example lists, and only when it ran), ``overfit`` the overfitting section (``overfitting``;
    None: skipped). ``score``: what ``by_size``, ``quality`` and the scopes' ``score`` measure (``score_name``).
    ``judged_scopes``: the judge's verdict on each scope vs the base (``judge.compare_arms``), in its scope's row.
    ``templates``: the template comparison (``template_comparison``; None: skipped).
    ``turns``: every turn vs the last on the multi-turn demo task (``turns_comparison``; None: skipped).
    ``task_mix``: the single- vs multi-task comparison (``task_mix``; None: skipped)."""
    judged_scopes = judged_scopes or {}
    scopes = {k: {**r, **({"model_judge": judging.recorded(judged_scopes[k])} if k in judged_scopes else {})}
              for k, r in scopes.items()}
    return {
        "task_score_before": base["task_score"], "task_score_after": after["task_score"],
        "answer_accuracy_before": base["answer_accuracy"], "answer_accuracy_after": after["answer_accuracy"],
        "task_score_by_task": after["by_task"], "task_check": check,
        "ppl_general_before": base["ppl_general"], "ppl_general_after": after["ppl_general"],
        "general_qa_before": base["general_qa"], "general_qa_after": after["general_qa"],
        "eval_loss": main.eval_loss, "seconds": main.seconds, "tokens_per_second": main.tokens_per_second,
        "trainable_params": trainable_params, "total_params": total_params, "n_train": n_train, "n_eval": n_eval,
        "mode": p.mode, "scope": p.scope,
        "score_metric": score, "score_by_size": by_size, "quality_comparison": quality, "scope_comparison": scopes,
        "cpt_ppl_domain_before": base["ppl_domain"], "cpt_ppl_domain_after": cpt[0] if cpt else None,
        "cpt_ppl_general_after": cpt[1] if cpt else None,
        "reply_metrics": scoring.recorded(reply or {}),
        "benchmarks": harness.record(benchmarks or {}),
        **({"model_judge": judging.recorded(judge)} if judge else {}),
        "eval_curve": main.eval_curve, "best_step": main.best_step, "overfitting": overfit,
        "templates": templates,
        "turns": turns_recorded(turns),
        "task_mix": task_mix,
    }


def findings(base: dict, after: dict, scopes: dict, by_size: dict, quality: dict,
             cpt_domain: tuple[float, float] | None, reply: dict | None = None, check: str = "",
             benchmarks: dict | None = None, judge: dict | None = None,
             overfit: dict | None = None, score: str = "task_score", judged_scopes: dict | None = None) -> list[str]:
    """Plain sentences, each with its numbers, about what 02_sft measured. ``reply``: ``scoring.table`` of the
    held-out replies before and after; with data that has no check of its own (``check`` contains: a user's free
    text) the task score cannot see most changes, so the verdict on what was learned comes from those metrics and
    their intervals, never from the task score alone. ``benchmarks``: ``harness.compare``'s table (one sentence a
    task, where they ran). ``judge``: ``judge.compare``'s verdict (one sentence: the win rate with
    its interval). ``score`` (``score_name``): what the scope, data-size and clean-vs-unfiltered comparisons measure
    (the task score's bars, such as "learned", apply only to it). ``judged_scopes``: the judge on each scope
    (``judge.compare_arms``: one sentence a scope)."""
    t = THRESHOLDS
    own_check = check in OWN_CHECKS
    if reply and not own_check:
        moved = [n for n, row in reply.items() if scoring.clear(row["diff"]) and row["higher_is_better"]
                 and row["diff"]["mean"] > 0]
        out = [f"Task score ('{check}') {base['task_score']:.2f} -> {after['task_score']:.2f} on held-out prompts: "
               "this data has no programmatic check of its own, so the reference metrics below say what changed — "
               + (f"{', '.join(moved)} rose by more than their intervals: the replies moved towards the references."
                  if moved else "none of them rose by more than its interval: no learning shown on these prompts.")]
    else:
        learned = ("was learned." if after["task_score"] >= t["learned"] else
                   "was only partly learned." if after["task_score"] > base["task_score"] + t["partly_margin"] else
                   "was not learned.")
        out = [f"Task score {base['task_score']:.2f} -> {after['task_score']:.2f} on held-out prompts: the behaviour "
               f"{learned}"]
    out += [scoring.sentence(n, row) for n, row in (reply or {}).items()]
    if judge:
        out.append(judging.sentence(judge))
    if own_check or not reply:  # "contains" on free text: the answer accuracy is the same blind check
        form_moved = abs(after["task_score"] - base["task_score"])
        out.append(f"Answer accuracy {base['answer_accuracy']:.2f} -> {after['answer_accuracy']:.2f} while the task score "
                   f"moved {after['task_score'] - base['task_score']:+.2f}: " + (
                       "fine-tuning changed the form far more than the knowledge."
                       if abs(after["answer_accuracy"] - base["answer_accuracy"]) < form_moved / 2
                       else "knowledge moved as much as form here."))
    out.append(f"Forgetting, main run: general-text perplexity {base['ppl_general']:.2f} -> {after['ppl_general']:.2f} "
               f"({change(base['ppl_general'], after['ppl_general'], True)}); general questions "
               f"{base['general_qa']:.2f} -> {after['general_qa']:.2f} ({change(base['general_qa'], after['general_qa'])}).")
    out += harness.sentences(benchmarks or {})  # lm-eval benchmarks (``harness.compare``), where they ran
    label = "task score" if score == "task_score" else score
    for s, r in scopes.items():
        out.append(f"Scope {s}: {r['trainable_pct']:.2f}% of weights, {r['seconds']:.0f} s, {label} {r['score']:.2f}, "
                   f"general-text perplexity {r['ppl_general']:.2f} "
                   f"({change(base['ppl_general'], r['ppl_general'], True)} vs base {base['ppl_general']:.2f}), "
                   f"general questions {r['general_qa']:.2f}.")
    out += [judging.sentence(j, f"scope {k}") for k, j in (judged_scopes or {}).items()]
    if "lora" in scopes and "full" in scopes:
        lora, full = scopes["lora"]["score"], scopes["full"]["score"]
        gap = full - lora
        out.append(f"LoRA vs full fine-tuning: {label} {lora:.2f} vs {full:.2f} with {scopes['lora']['trainable_pct']:.2f}% "
                   "vs 100% of the weights trained; " + (
                       f"LoRA comes within {t['lora_within']} of full fine-tuning." if abs(gap) <= t["lora_within"] else
                       "LoRA does better than full fine-tuning on this budget." if gap < 0 else
                       f"LoRA falls more than {t['lora_within']} short of full fine-tuning here."))
        worse = max(scopes, key=lambda k: scopes[k]["ppl_general"])
        out.append(f"The most forgetting (highest general-text perplexity after) came with scope '{worse}'.")
    if by_size:
        sizes = sorted(by_size)
        listed = "Data size: " + ", ".join(f"{n} examples -> {by_size[n]:.2f}" for n in sizes)
        if score == "task_score":
            enough = next((n for n in sizes if by_size[n] >= t["learned"]), None)
            out.append(listed + "; " + (f"{enough} clean examples were enough for a score of {t['learned']}." if enough
                                        else f"no size reached {t['learned']}."))
        else:  # a reference metric has no "learned" bar: the numbers, and which size came highest
            top = max(sizes, key=lambda n: by_size[n])
            out.append(f"{listed} ({label}, the same number of optimizer steps each); " + (
                f"the highest came with {top} examples." if by_size[top] > min(by_size.values())
                else "every size scored the same."))
    if quality:
        out.append(f"Clean vs unfiltered at {quality['n_train']} examples ({label}): {quality['clean']:.2f} vs "
                   f"{quality['unfiltered']:.2f} " + ("(clean data wins)." if quality["clean"] > quality["unfiltered"]
                                                      + t["clean_margin"] else "(unfiltered did as well or better here)."))
    if cpt_domain:
        b, a = cpt_domain
        out.append(f"Continued pretraining: perplexity on held-out domain documents {b:.2f} -> {a:.2f} ({change(b, a, True)}).")
    if overfit:
        out += overfitting_findings(overfit)
    return out


# ---------------------------------------------------------------- template mismatch (issue 32 item 4)

def template_comparison(p: params.SFTParams, trained: str, tokenizer, test: list[dict], tuned: str, check: str,
                        score: str = "task_score", precision: str = "fp32") -> dict | None:
    """Does a chat template other than the one the model was trained with hurt? The base model (``p.model``) and the
    main run's saved model (``tuned``: a spec, ``train.saved_model``) reply to the held-out prompts of ``test``
    rendered with the template the main run trained with (``trained``: 01_data_prep's ``template``, A) and with each of
    ``p.eval_templates`` (B), generation stopping at each template's end of turn (``data.stops``); every reply scored
    by ``score`` (``score_name``). No training: the main run's model is reloaded, the base model's replies under A
    come from the run's cache.

    Per template (``template_rows``): both models' mean score with a bootstrap 95% interval; the tuned model's
    ``drop`` (its score under A minus under this template, a paired interval: positive is worse), the base model's
    (``base_drop``: is the template bad for this model anyway?) and ``mismatch``, the tuned drop beyond the base's
    (per example, paired): what training with A costs under another template. None when ``eval_templates`` is
    empty."""
    names = list(dict.fromkeys([trained, *p.eval_templates]))
    if len(names) < 2:
        return None
    started = time.perf_counter()
    prompts = {t: [data.render_prompt(r["messages"][:-1], tokenizer, t) for r in test] for t in names}
    values = {}
    for arm, spec in (("base", p.model), ("tuned", str(tuned))):
        with models.loaded(spec, p.device, tokenizer=tokenizer) as model:
            for t in names:
                outs = evaluate.generate(model, tokenizer, prompts[t], p.max_new_tokens, p.eval_batch_size, precision,
                                         stop=data.stops(t, tokenizer))
                values[arm, t] = scores_of({"outputs": outs, "passed": tasks.score_records(outs, test, check)[1]},
                                           test, score)
    return {"trained": trained, "score_metric": score, "n_eval": len(test),
            "seconds": time.perf_counter() - started, "rows": template_rows(values, names)}


def template_rows(values: dict[tuple[str, str], list[float]], names: list[str]) -> dict[str, dict]:
    """{template: {base, tuned, drop, base_drop, mismatch}} from per-example scores ``values[(arm, template)]`` (arm:
    base or tuned; ``names[0]``: the template trained with). Each a ``scoring.summary`` ({mean, lo, hi, n_eval}):
    ``drop`` = tuned score under the first template minus under this one (paired), ``base_drop`` the same for the
    base model, ``mismatch`` = drop - base_drop per example."""
    a = names[0]
    out = {}
    for t in names:
        tuned_drop = [x - y for x, y in zip(values["tuned", a], values["tuned", t])]
        base_drop = [x - y for x, y in zip(values["base", a], values["base", t])]
        out[t] = {"base": scoring.summary(values["base", t]), "tuned": scoring.summary(values["tuned", t]),
                  "drop": scoring.summary(tuned_drop), "base_drop": scoring.summary(base_drop),
                  "mismatch": scoring.summary([x - y for x, y in zip(tuned_drop, base_drop)])}
    return out


def templates_table(t: dict) -> list[dict]:
    """The template comparison (``template_comparison``) as table rows: template, base and tuned score, the tuned
    model's drop vs the template it trained with, the base model's, and the drop beyond the base's (each with its
    95% interval)."""
    return [{"template": n + (" (trained with)" if n == t["trained"] else ""), "base": interval_text(r["base"]),
             "tuned": interval_text(r["tuned"]), "drop (tuned)": interval_text(r["drop"], "+"),
             "drop (base)": interval_text(r["base_drop"], "+"),
             "drop beyond the base's": interval_text(r["mismatch"], "+")} for n, r in t["rows"].items()]


def templates_findings(t: dict | None) -> list[str]:
    """The template comparison's sentences: for each template B other than the one trained with (A), the tuned
    model's score under B against A with the paired interval of the drop, and what it means — a drop the base model
    shows too (B is bad for this model anyway) told apart from a drop beyond the base's (the mismatch with training:
    the seeds' claim); a drop within its interval is none shown. Empty when it did not run."""
    if not t:
        return []
    a, rows = t["trained"], t["rows"]
    label = "task score" if t["score_metric"] == "task_score" else t["score_metric"]
    ta, ba = rows[a]["tuned"]["mean"], rows[a]["base"]["mean"]
    out = [f"Templates ({label}, {t['n_eval']} held-out prompts): trained with {a}, the tuned model scores {ta:.2f} "
           f"under {a} (base model {ba:.2f}); under each other template below, the drop is the score under {a} minus "
           "under it (positive: worse), with a paired 95% interval."]
    groups: dict[str, list[str]] = {}
    for b, r in rows.items():
        if b == a:
            continue
        d, bd, m = r["drop"], r["base_drop"], r["mismatch"]
        head = (f"Template {b}: tuned {r['tuned']['mean']:.2f} vs {ta:.2f} under {a}, drop {interval_text(d, '+')}; "
                f"base {r['base']['mean']:.2f} vs {ba:.2f}, drop {interval_text(bd, '+')}: ")
        if not scoring.clear(d):
            kind, verdict = "no drop shown", "no drop shown for the tuned model (its interval spans 0)."
        elif d["mean"] < 0:
            kind, verdict = "better", f"the tuned model does better under {b} than under the template it trained with."
        elif scoring.clear(m) and m["mean"] > 0:
            kind, verdict = "a mismatch with training", (
                f"the mismatch with training costs {interval_text(m, '+')} beyond what {b} costs the base model (a "
                "template at inference other than the one trained with hurts).")
        elif scoring.clear(bd) and bd["mean"] > 0:
            kind, verdict = "bad for this model anyway", (
                f"the base model drops under {b} too, and the tuned drop is not larger beyond its interval "
                f"({interval_text(m, '+')}): {b} is bad for this model anyway, not a mismatch with training.")
        else:
            kind, verdict = "a drop not separable from the template's own cost", (
                f"the base model shows no clear drop, but the tuned drop beyond the base's ({interval_text(m, '+')}) is "
                "within its interval: not separable from the template's own cost on these prompts.")
        groups.setdefault(kind, []).append(b)
        out.append(head + verdict)
    if len(rows) > 2:
        out.append(f"Templates in sum (trained with {a}): " + "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in groups.items()) + ".")
    return out


# ---------------------------------------------------------------- every turn vs the last: the multi-turn demo task

#: the turns 02 scores on the multi-turn demo task (``turns_comparison``), key -> what it is
TURNS = {"turn1": "turn 1 (JSON answer)", "turn2": "turn 2, reference turn 1 in context",
         "chained": "turn 2 after the model's own turn 1"}
#: the arms of the comparison: the base model and the two values of ``TrainArgs.loss_turns``
TURN_ARMS = {"base": "base model", "all": "loss on all turns", "last": "loss on the last turn"}


def turns_data(tokenizer, n_train: int, n_eval: int, seed: int = 0, template: str = "chat") -> tuple[list[dict], list[dict]]:
    """``json_followup`` chats (``tasks.TASKS``), rendered with ``template``: ``n_train`` to train on and ``n_eval``
    held out, their first questions all distinct."""
    rows = tasks.TASKS["json_followup"].generate(random.Random(seed), n_train + n_eval)
    if len(rows) < n_train + n_eval:
        raise ValueError(f"turns_examples: json_followup has at most {len(rows) - n_eval} chats beside {n_eval} held out")
    recs = [data.render({"messages": tasks.chat(q, r), "reference": ref, "check": "plain", "task": "json_followup"},
                        tokenizer, template) for q, r, ref in rows]
    return recs[n_eval:], recs[:n_eval]


def turn_scores(model, tokenizer, held_out: list[dict], template: str = "chat", precision: str = "fp32",
                max_new_tokens: int = 48, batch_size: int = 16) -> dict:
    """One model on held-out ``json_followup`` chats, per example (``TURNS``): ``turn1`` its reply to the first
    question alone passes ``json_answer``; ``turn2`` its reply to the follow-up, the reference first reply in context,
    passes ``plain`` against the record's reference; ``chained`` its reply to the follow-up after its own first reply,
    checked against what that reply says (``tasks.followup_reference``: a first reply with no JSON field to ask about
    leaves no right answer, a fail). Also the replies (``replies``: turn key -> texts)."""
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, precision=precision)
    msgs = [r["messages"] for r in held_out]
    first = evaluate.generate(model, tokenizer, [data.render_prompt(m[:1], tokenizer, template) for m in msgs], **gen)
    second = evaluate.generate(model, tokenizer, [data.render_prompt(m[:3], tokenizer, template) for m in msgs], **gen)
    chain = [[m[0], {"role": "assistant", "content": own}, m[2]] for m, own in zip(msgs, first)]
    chained = evaluate.generate(model, tokenizer, [data.render_prompt(c, tokenizer, template) for c in chain], **gen)
    own_refs = [tasks.followup_reference(m[2]["content"], own) for m, own in zip(msgs, first)]
    return {"turn1": [float(tasks.check_json_answer(o)) for o in first],
            "turn2": [float(tasks.check_plain(o, r["reference"])) for o, r in zip(second, held_out)],
            "chained": [float(ref is not None and tasks.check_plain(o, ref)) for o, ref in zip(chained, own_refs)],
            "replies": {"turn1": first, "turn2": second, "chained": chained}}


def turns_comparison(p: params.SFTParams, tokenizer, template: str = "chat", precision: str = "fp32") -> dict | None:
    """Every turn vs the last on the multi-turn demo task: LoRA on ``p.turns_examples`` ``json_followup`` chats with
    ``loss_turns`` all and with last, the same optimizer steps (``turns_epochs`` over the chats) and seed, each scored
    on ``p.turns_eval`` held-out chats by ``turn_scores``, the base model too. Returns {n_train, n_eval, steps,
    "arms": {arm (``TURN_ARMS``): {turn: ``scoring.summary`` (share, bootstrap 95% interval), "seconds": training
    (None for the base), "scores": per-example, "replies"}}, "diff": {turn: ``scoring.paired`` all - last},
    "questions": the held-out first questions}; None when ``turns_examples`` is 0."""
    if not p.turns_examples:
        return None
    train_set, held_out = turns_data(tokenizer, p.turns_examples, p.turns_eval, p.seed, template)
    steps = train.steps_for(len(train_set), p, epochs=p.turns_epochs)
    kw = dict(template=template, precision=precision, max_new_tokens=p.max_new_tokens, batch_size=p.eval_batch_size)
    per_arm: dict[str, tuple[dict, float | None]] = {}
    with models.loaded(p.model, p.device, tokenizer=tokenizer) as base:
        per_arm["base"] = (turn_scores(base, tokenizer, held_out, **kw), None)
    for arm in ("all", "last"):
        with train.trained(dataclasses.replace(p, loss_turns=arm), tokenizer, train_set, scope="lora",
                           max_steps=steps) as r:
            per_arm[arm] = (turn_scores(r.model, tokenizer, held_out, **kw), r.seconds)
    arms = {arm: {**{t: scoring.summary(s[t], p.seed) for t in TURNS}, "seconds": secs,
                  "scores": {t: s[t] for t in TURNS}, "replies": s["replies"]} for arm, (s, secs) in per_arm.items()}
    diff = {t: scoring.paired(arms["last"]["scores"][t], arms["all"]["scores"][t], p.seed) for t in TURNS}
    return {"n_train": len(train_set), "n_eval": len(held_out), "steps": steps, "arms": arms, "diff": diff,
            "questions": [r["messages"][0]["content"] for r in held_out]}


def turns_recorded(turns: dict | None) -> dict | None:
    """``turns_comparison``'s result as metrics.json keeps it (``turns``): without the questions, per-example scores
    and replies."""
    if not turns:
        return None
    arms = {a: {k: v for k, v in row.items() if k not in ("scores", "replies")} for a, row in turns["arms"].items()}
    return {**{k: v for k, v in turns.items() if k != "questions"}, "arms": arms}


def turns_rows(turns: dict) -> list[dict]:
    """One table row per arm: each turn's share with its 95% interval, and the training seconds."""
    return [{"model": TURN_ARMS[a], **{TURNS[t]: interval_text(row[t]) for t in TURNS},
             "training seconds": "" if row["seconds"] is None else round(row["seconds"], 1)}
            for a, row in turns["arms"].items()]


def turns_replies(turns: dict, n: int = 4) -> list[dict]:
    """The first ``n`` held-out chats: the first question and each arm's turn-1 reply and chained turn-2 reply (the
    static copy of what the models said)."""
    return [{"first question": q, **{f"{a}: {t}": row["replies"][t][i] for a, row in turns["arms"].items()
                                     for t in ("turn1", "chained")}}
            for i, q in enumerate(turns["questions"][:n])]


def turns_findings(turns: dict | None) -> list[str]:
    """The sentences of the multi-turn section, worded from the numbers: every arm's share per turn; on turn 2 given
    the reference turn 1, which loss wins (the paired all - last difference and whether it is larger than its
    interval); what training every turn buys on turn 1 and on the chained turn 2; whether turn 2 was learned at all
    (an arm above the base by ``THRESHOLDS['partly_margin']``)."""
    if not turns:
        return []
    arms, diff = turns["arms"], turns["diff"]
    shares = "; ".join(f"{TURNS[t]}: " + ", ".join(f"{a} {arms[a][t]['mean']:.2f}" for a in arms) for t in TURNS)
    out = [f"Multi-turn demo (json_followup, {turns['n_train']} chats, {turns['steps']} LoRA steps per arm, the same "
           f"seed) on {turns['n_eval']} held-out chats — {shares}."]

    def versus(t: str) -> str:
        d = diff[t]
        span = f"{d['mean']:+.2f} (all - last, 95% CI {d['lo']:+.2f} to {d['hi']:+.2f})"
        if not scoring.clear(d):
            return f"no difference larger than its interval, {span}"
        return ("all-turns training wins" if d["mean"] > 0 else "last-turn training wins") + f", {span}"

    best2 = max(arms["all"]["turn2"]["mean"], arms["last"]["turn2"]["mean"])
    learned = best2 > arms["base"]["turn2"]["mean"] + THRESHOLDS["partly_margin"]
    out.append(f"Turn 2 with the reference turn 1 in context: {versus('turn2')}" + (
        "." if learned else f"; neither arm beat the base ({arms['base']['turn2']['mean']:.2f}) by more than "
        f"{THRESHOLDS['partly_margin']}: the second turn was not learned on this budget."))
    out.append(f"What training every turn buys: turn 1 (the JSON answer) {versus('turn1')}; turn 2 after the model's "
               f"own turn 1 {versus('chained')}.")
    return out


# ---------------------------------------------------------------- single- vs multi-task (seed 004)

#: the task trained alone in the single- vs multi-task comparison; the mix is every one-turn row of ``tasks.TASKS``
#: (``params.MIX_TASKS``: json_followup, two turns, has a comparison of its own)
TASK_MIX_FOCUS = "json_qa"
#: the comparison's models, in table order: the base and the two LoRA arms (name -> what the table calls it)
TASK_MIX_MODELS = {"base": "base", "single": f"{TASK_MIX_FOCUS} alone", "mix": "five-task mix"}


def task_mix_sets(n_train: int, n_heldout: int, tokenizer, template: str = "chat", seed: int = 0) -> dict:
    """The data of the single- vs multi-task comparison, clean built-in examples only (``tasks.TASKS``' generators:
    no planted junk): {"single": ``n_train`` examples of ``TASK_MIX_FOCUS``, "mix": ``n_train`` examples split evenly
    over every task (the focus task first takes the remainder; its part is the first examples of "single"),
    "heldout": ``n_heldout`` more of every task, none of them a training prompt}. Each task draws from its own seeded
    generator, so its held-out prompts are the same whatever ``n_train`` is. Records are rendered
    (``data.render``) with ``reference``, ``check`` and ``task``."""
    names = list(params.MIX_TASKS)
    if n_train < len(names):
        raise ValueError(f"task_mix_examples: {n_train} is fewer than one example per task of the mix ({len(names)})")
    share = {t: n_train // len(names) + (i < n_train % len(names)) for i, t in enumerate(names)}
    sets: dict = {"single": [], "mix": [], "heldout": []}
    for t in names:
        row, want = tasks.TASKS[t], n_heldout + (n_train if t == TASK_MIX_FOCUS else share[t])
        made = row.generate(random.Random(f"task_mix/{seed}/{t}"), want)
        if len(made) < want:
            raise ValueError(f"task_mix: the demo task {t} has {len(made)} distinct examples, {want} asked for "
                             "(task_mix_examples and task_mix_heldout)")
        recs = [data.render({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                             "reference": ref, "check": row.check, "task": t}, tokenizer, template)
                for q, r, ref in made]
        sets["heldout"] += recs[:n_heldout]
        sets["mix"] += recs[n_heldout:n_heldout + share[t]]
        if t == TASK_MIX_FOCUS:
            sets["single"] = recs[n_heldout:]
    random.Random(seed).shuffle(sets["mix"])
    return sets


def task_mix_arm(result: dict, heldout: list[dict], base: dict | None = None, **extra) -> dict:
    """One model's record in the comparison from its ``evaluate.evaluate_model`` result on ``heldout``: per task the
    task score (``task_score_by_task``) and its bootstrap 95% interval (``interval_by_task``: ``scoring.summary``),
    against the ``base`` result's on the same prompts the paired difference (``diff_by_task``: ``scoring.paired``),
    the forgetting probe, and the share of its replies to the other tasks
    that came in the focus task's JSON format (``json_replies_elsewhere``)."""
    by = {t: [float(ok) for ok, r in zip(result["passed"], heldout) if r["task"] == t]
          for t in dict.fromkeys(r["task"] for r in heldout)}
    elsewhere = [tasks.check_json_answer(o) for o, r in zip(result["outputs"], heldout) if r["task"] != TASK_MIX_FOCUS]
    out = {"task_score": result["task_score"], "task_score_by_task": {t: tasks.mean(v) for t, v in by.items()},
           "interval_by_task": {t: scoring.summary(v) for t, v in by.items()},
           "ppl_general": result["ppl_general"], "general_qa": result["general_qa"],
           "json_replies_elsewhere": tasks.mean(elsewhere), **extra}
    if base is not None:
        base_by = {t: [float(ok) for ok, r in zip(base["passed"], heldout) if r["task"] == t] for t in by}
        out["diff_by_task"] = {t: scoring.paired(base_by[t], v) for t, v in by.items()}
    return out


def task_mix(p: params.SFTParams, tokenizer, precision: str, template: str = "chat") -> dict | None:
    """Single- vs multi-task (seed 004): LoRA on ``task_mix_examples`` clean examples of ``TASK_MIX_FOCUS`` alone and
    on as many of the five-task mix (``task_mix_sets``), both for the same optimizer steps (one epoch of that many
    examples, ``train.steps_for``) with the same seed and recipe; the base model and both trained models scored on
    ``task_mix_heldout`` held-out prompts of every task and on the forgetting probe. Its record: n_train, steps,
    n_eval (held-out prompts, every task's together), focus, n_focus_in_mix, tasks, ``models`` (base, single, mix:
    ``task_mix_arm``; the trained ones with their train_tasks, steps and training seconds), ``focus_diff`` (mix minus
    single on the focus task, paired bootstrap) and seconds (the whole comparison). None when ``task_mix_examples``
    is 0."""
    if not p.task_mix_examples:
        return None
    start = time.perf_counter()
    sets = task_mix_sets(p.task_mix_examples, p.task_mix_heldout, tokenizer, template, p.seed)
    heldout, steps = sets["heldout"], train.steps_for(p.task_mix_examples, p, epochs=1.0)
    kw = dict(check="per-record", precision=precision, max_new_tokens=p.max_new_tokens, batch_size=p.eval_batch_size)
    with models.loaded(p.model, p.device, tokenizer=tokenizer) as model:
        results = {"base": evaluate.evaluate_model(model, tokenizer, heldout, **kw)}
    extra = {"base": dict(train_tasks=[], steps=0, seconds=None)}
    for arm in ("single", "mix"):
        with train.trained(p, tokenizer, sets[arm], scope="lora", max_steps=steps) as r:
            results[arm] = evaluate.evaluate_model(r.model, tokenizer, heldout, **kw)
        extra[arm] = dict(train_tasks=[t for t in params.MIX_TASKS if any(x["task"] == t for x in sets[arm])],
                          steps=r.steps, seconds=r.seconds)
    arms = {a: task_mix_arm(res, heldout, None if a == "base" else results["base"], **extra[a])
            for a, res in results.items()}
    focus = [i for i, r in enumerate(heldout) if r["task"] == TASK_MIX_FOCUS]
    single, mix = ([float(results[a]["passed"][i]) for i in focus] for a in ("single", "mix"))
    return {"n_train": p.task_mix_examples, "steps": steps, "n_eval": len(heldout), "focus": TASK_MIX_FOCUS,
            "n_focus_in_mix": sum(r["task"] == TASK_MIX_FOCUS for r in sets["mix"]), "tasks": list(params.MIX_TASKS),
            "models": arms, "focus_diff": scoring.paired(single, mix), "seconds": time.perf_counter() - start}


def task_mix_rows(m: dict) -> list[dict]:
    """The comparison as a table, one row per model: what it trained on, each task's score with its 95% interval,
    the mean over the tasks, the forgetting probe and the share of JSON replies to the other tasks."""
    rows = []
    for key, label in TASK_MIX_MODELS.items():
        a = m["models"][key]
        rows.append({"model": label, "trained on": ", ".join(a["train_tasks"]) or "-", "steps": a["steps"],
                     **{t: interval_text(a["interval_by_task"][t]) for t in m["tasks"]}, "mean of tasks": a["task_score"],
                     "general-text perplexity": a["ppl_general"], "general questions": a["general_qa"],
                     f"{m['focus']} JSON on other tasks": a["json_replies_elsewhere"], "seconds": a["seconds"]})
    return rows


def task_mix_findings(m: dict | None) -> list[str]:
    """The sentences of the single- vs multi-task comparison (none when it did not run): the focus task alone vs in
    the mix; what training on it alone did to the other tasks and to the forgetting probe, against the base; what the
    mix kept. A change counts only when its paired 95% interval excludes 0 (``scoring.clear``)."""
    if not m:
        return []
    f, base, single, mix = m["focus"], m["models"]["base"], m["models"]["single"], m["models"]["mix"]
    others = [t for t in m["tasks"] if t != f]

    def s(a, t):
        return interval_text(a["interval_by_task"][t])

    def moved(a):
        return ([t for t in others if scoring.clear(a["diff_by_task"][t]) and a["diff_by_task"][t]["mean"] < 0],
                [t for t in others if scoring.clear(a["diff_by_task"][t]) and a["diff_by_task"][t]["mean"] > 0])

    def listed(a):
        return "; ".join(f"{t} {base['task_score_by_task'][t]:.2f} -> {a['task_score_by_task'][t]:.2f}"
                         for t in others)

    def probe(a):
        return (f"general-text perplexity {base['ppl_general']:.2f} -> {a['ppl_general']:.2f} "
                f"({change(base['ppl_general'], a['ppl_general'], True)}), general questions {base['general_qa']:.2f} "
                f"-> {a['general_qa']:.2f} ({change(base['general_qa'], a['general_qa'])})")

    d = m["focus_diff"]
    out = [f"Single vs multi-task, {m['n_train']} examples and {m['steps']} optimizer steps each (LoRA, same seed), "
           f"{m['n_eval'] // len(m['tasks'])} held-out prompts per task: {f} scored {s(single, f)} trained alone vs "
           f"{s(mix, f)} in the five-task mix ({m['n_focus_in_mix']} of its examples; base "
           f"{base['task_score_by_task'][f]:.2f}); "
           f"mix minus alone {interval_text(d, '+')}: " + (
               f"training on {f} alone did better on it." if scoring.clear(d) and d["mean"] < 0 else
               "the mix did better on it." if scoring.clear(d) else
               f"within its interval, the mix did as well on {f} with a fraction of its examples.")]
    lost, gained = moved(single)
    out.append(f"Trained on {f} alone, the other tasks went {listed(single)} (base -> tuned): " + (
        f"it lost {', '.join(lost)} by more than the interval" if lost else
        "none fell by more than its interval") + (f" and gained {', '.join(gained)}" if gained else "") +
        f"; {single['json_replies_elsewhere']:.2f} of its replies to them were {f}'s JSON object (base "
        f"{base['json_replies_elsewhere']:.2f}); forgetting probe: {probe(single)}.")
    lost, gained = moved(mix)
    out.append(f"The five-task mix: the other tasks went {listed(mix)}: " + (
        f"{', '.join(gained)} rose by more than the interval" if gained else "none rose by more than its interval") +
        (f", {', '.join(lost)} fell by more than it" if lost else "") +
        f"; {mix['json_replies_elsewhere']:.2f} of its replies to them were JSON; forgetting probe: {probe(mix)}; "
        f"mean over the five tasks {base['task_score']:.2f} (base), {single['task_score']:.2f} ({f} alone), "
        f"{mix['task_score']:.2f} (mix).")
    return out


# ---------------------------------------------------------------- filtered by a model vs the whole set (issue 33 item 3)

#: the arms of the filter comparison, in table order (key -> what the table calls it)
FILTER_ARMS = {"whole": "whole set", "filtered": "kept by the filter"}


def noisy(rec: dict) -> bool:
    """A bad example of the unfiltered pool: an empty reply, or one that fails the record's own task check (the
    demo's planted off-format, cut and runaway replies): what ``sample_unfiltered`` counts."""
    return not data.reply_of(rec).strip() or data.off_format(rec)


def filter_ratings(p: params.SFTParams, records: list[dict], precision: str = "fp32") -> dict:
    """The filter's score of each record (``rating.rate``'s form: scores, unparsed, raw, rater): the judge's 1-10
    ratings (``quality_filter`` judge) or the reward model's scores (reward_model)."""
    kw = dict(device=p.device, precision=precision, batch_size=p.eval_batch_size)
    if p.quality_filter == "judge":
        return rating.judge_ratings(p, records, p.quality_rubric, **kw)
    return rating.reward_ratings(p.quality_reward_model, records, **kw)


def filter_comparison(p: params.SFTParams, dp: params.DataPrepParams, tokenizer, test: list[dict],
                      exclude_prompts: set[str], check: str, score: str = "task_score",
                      precision: str = "fp32") -> dict | None:
    """A model as the data filter (AlpaGasus/LIMA): ``quality_filter_examples`` records drawn from the unfiltered pool
    (``sample_unfiltered``, the clean-vs-unfiltered arm's: 01's raw data, ``exclude_prompts`` out), each labelled
    clean or ``noisy``, rated by the filter (``filter_ratings``); the top ``quality_keep`` kept
    (``rating.select_top``). LoRA on the kept examples and on all of them, the same optimizer steps (``epochs``
    passes over the whole set) and seed, each scored by ``score`` on ``test`` (per example, bootstrap intervals;
    filtered - whole paired) and on the forgetting probe.

    Its record: filter, rater, keep, score_metric, n_pool, n_noisy, n_kept, steps, n_eval, clean_share (the pool's:
    what a random filter keeps), precision (share of the kept that are clean, ``scoring.summary``), noisy_dropped,
    separation (``rating.separation``), unparsed, rating_mean (clean and noisy), rating_counts (judge), arms
    (``FILTER_ARMS``: n_train, clean_share, steps, score, interval, task_score, ppl_general, general_qa, seconds,
    scores), diff, rating_seconds, seconds, examples (per record: prompt, reply, rating, clean, kept, answer). None
    when ``quality_filter`` is none."""
    if p.quality_filter == "none" or not p.quality_filter_examples:
        return None
    started = time.perf_counter()
    whole, _ = sample_unfiltered(dp, tokenizer, exclude_prompts, p.quality_filter_examples, p.seed)
    clean = [not noisy(r) for r in whole]
    rated = filter_ratings(p, whole, precision)
    rating_seconds = time.perf_counter() - started
    kept = rating.select_top(rated["scores"], p.quality_keep, p.seed)
    sets = {"whole": list(range(len(whole))), "filtered": kept}
    steps = train.steps_for(len(whole), p)
    arms = {}
    for arm, idx in sets.items():
        with train.trained(p, tokenizer, [whole[i] for i in idx], scope="lora", max_steps=steps) as r:
            result = evaluate.evaluate_model(r.model, tokenizer, test, check, precision, p.max_new_tokens,
                                             p.eval_batch_size)
        per = scores_of(result, test, score)
        arms[arm] = {"n_train": len(idx), "clean_share": sum(clean[i] for i in idx) / len(idx), "steps": r.steps,
                     "score": tasks.mean(per), "interval": scoring.summary(per, p.seed),
                     "task_score": result["task_score"], "ppl_general": result["ppl_general"],
                     "general_qa": result["general_qa"], "seconds": r.seconds, "scores": per}
    scores, n_noisy, kept_set = rated["scores"], len(whole) - sum(clean), set(kept)
    numbers = {c: [s for s, k in zip(scores, clean) if k == c and s is not None] for c in (True, False)}
    return {
        "filter": p.quality_filter, "rater": rated["rater"], "keep": p.quality_keep, "score_metric": score,
        "n_pool": len(whole), "n_noisy": n_noisy, "n_kept": len(kept), "steps": steps, "n_eval": len(test),
        "clean_share": sum(clean) / len(whole), "precision": scoring.summary([float(clean[i]) for i in kept], p.seed),
        "noisy_dropped": sum(not c and i not in kept_set for i, c in enumerate(clean)) / n_noisy if n_noisy else None,
        "separation": rating.separation(scores, clean), "unparsed": rated["unparsed"],
        "rating_mean": {"clean": tasks.mean(numbers[True]) if numbers[True] else None,
                        "noisy": tasks.mean(numbers[False]) if numbers[False] else None},
        "rating_counts": ({f"{v:g}": sum(s == v for s in scores) for v in sorted({s for s in scores if s is not None})}
                          if p.quality_filter == "judge" else None),
        "arms": arms, "diff": scoring.paired(arms["whole"]["scores"], arms["filtered"]["scores"], p.seed),
        "rating_seconds": rating_seconds, "seconds": time.perf_counter() - started,
        "examples": [{"prompt": judging.prompt_of(r), "reply": data.reply_of(r), "rating": s, "clean": c,
                      "kept": i in kept_set, "answer": rated["raw"][i] if rated["raw"] else ""}
                     for i, (r, s, c) in enumerate(zip(whole, scores, clean))],
    }


def filter_recorded(q: dict | None) -> dict | None:
    """``filter_comparison``'s result as metrics.json keeps it (``quality_filter``): without the per-example lists."""
    if not q:
        return None
    arms = {a: {k: v for k, v in row.items() if k != "scores"} for a, row in q["arms"].items()}
    return {**{k: v for k, v in q.items() if k != "examples"}, "arms": arms}


def filter_rows(q: dict) -> list[dict]:
    """The comparison as a table, one row per arm: its examples and their clean share, steps, the score with its 95%
    interval, the forgetting probe and the training seconds."""
    label = "task score" if q["score_metric"] == "task_score" else q["score_metric"]
    return [{"arm": FILTER_ARMS[a], "examples": r["n_train"], "clean share": r["clean_share"], "steps": r["steps"],
             f"{label} (95% CI)": interval_text(r["interval"]), "general-text perplexity": r["ppl_general"],
             "general questions": r["general_qa"], "training seconds": round(r["seconds"], 1)}
            for a, r in q["arms"].items()]


def filter_rating_rows(q: dict) -> list[dict]:
    """What the filter did, one measure a row (value, 95% interval, meaning): its precision against the pool's clean
    share, the noisy examples it dropped, how well its scores separate clean from noisy, the unparsed answers."""
    pr, m = q["precision"], q["rating_mean"]
    fmt = (lambda x: "-" if x is None else f"{x:.2f}")
    return [
        {"measure": "precision", "value": pr["mean"], "95% CI": f"[{pr['lo']:.2f}, {pr['hi']:.2f}]",
         "meaning": f"share of the {q['n_kept']} kept examples that are clean"},
        {"measure": "chance", "value": q["clean_share"], "95% CI": "",
         "meaning": f"the pool's clean share ({q['n_pool'] - q['n_noisy']} of {q['n_pool']}): what a random filter keeps"},
        {"measure": "noisy dropped", "value": q["noisy_dropped"], "95% CI": "",
         "meaning": f"share of the pool's {q['n_noisy']} noisy examples the filter left out "
                    f"({1 - q['keep']:.2f} for a random filter)"},
        {"measure": "separation (AUC)", "value": q["separation"], "95% CI": "",
         "meaning": f"chance a clean example scores above a noisy one (0.5: none); mean score clean {fmt(m['clean'])}, "
                    f"noisy {fmt(m['noisy'])}"},
        {"measure": "unparsed", "value": q["unparsed"], "95% CI": "",
         "meaning": f"answers without a rating 1-10, of {q['n_pool']} (ranked below every rating)"}]


def filter_examples(q: dict, n: int = 4) -> list[dict]:
    """What the filter got wrong, as table rows: the ``n`` highest-rated noisy examples (its misses) and the ``n``
    lowest-rated clean ones (its false alarms), each with its score, kept or not, and the judge's answer."""
    def key(e):
        return float("-inf") if e["rating"] is None else e["rating"]

    worst = sorted((e for e in q["examples"] if not e["clean"]), key=key, reverse=True)[:n]
    alarms = sorted((e for e in q["examples"] if e["clean"]), key=key)[:n]
    return [{"label": "noisy" if not e["clean"] else "clean", "kept": e["kept"], "score": e["rating"],
             "prompt": e["prompt"][:80], "reply": e["reply"][:120], "judge's answer": e["answer"][:40]}
            for e in worst + alarms]


def filter_findings(q: dict | None) -> list[str]:
    """The sentences of the filter comparison, worded from the numbers (none when it did not run): the filter's
    precision against chance (its interval above the pool's clean share, or not) and its separation; filtered vs
    whole on the held-out prompts (the seeds' claim: fewer, better examples train as well or better; a difference
    counts only when its paired interval excludes 0) and on the forgetting probe; where a filter no better than
    chance leaves the claim untested."""
    if not q:
        return []
    pr, chance, w, f = q["precision"], q["clean_share"], q["arms"]["whole"], q["arms"]["filtered"]
    label = "task score" if q["score_metric"] == "task_score" else q["score_metric"]
    beat = pr["lo"] > chance
    worse = pr["hi"] < chance
    sep = "" if q["separation"] is None else f", separation (AUC) {q['separation']:.2f}"
    out = [f"Filter ({q['filter']}: {q['rater']}) over {q['n_pool']} unfiltered examples ({q['n_noisy']} noisy: empty "
           f"or failing their own check), top {q['keep']:.0%} kept ({q['n_kept']}): precision {interval_text(pr)} "
           f"(share of the kept that are clean) vs {chance:.2f} for a random filter{sep}; it dropped "
           + ("-" if q["noisy_dropped"] is None else f"{q['noisy_dropped']:.2f}")
           + f" of the noisy examples; {q['unparsed']} of {q['n_pool']} answers unparsed. "
           + ("The filter beat chance (its interval is above the pool's clean share)." if beat else
              "The filter did worse than chance." if worse else
              "The filter was no better than chance: its interval includes the pool's clean share.")]
    d = q["diff"]
    span = f"filtered - whole {interval_text(d, '+')}"
    if not scoring.clear(d):
        verdict = (f"no difference larger than its interval ({span}): {q['n_kept']} filtered examples trained as "
                   f"well as all {q['n_pool']} on these {q['n_eval']} prompts, not shown better.")
    elif d["mean"] > 0:
        verdict = f"the filtered set trained better ({span}): fewer, better examples won, the seeds' claim."
    else:
        verdict = (f"the whole set trained better ({span}): the seeds' claim fails here — on this budget the examples "
                   "the filter dropped helped more than their noise hurt.")
    out.append(f"Filtered ({q['n_kept']} examples, clean share {f['clean_share']:.2f}) vs whole ({q['n_pool']}, "
               f"{w['clean_share']:.2f}), {q['steps']} LoRA steps each, same seed, {label} on {q['n_eval']} held-out "
               f"prompts: {interval_text(f['interval'])} vs {interval_text(w['interval'])}; {verdict} Forgetting "
               f"probe: general-text perplexity {w['ppl_general']:.2f} (whole) vs {f['ppl_general']:.2f} (filtered), "
               f"general questions {w['general_qa']:.2f} vs {f['general_qa']:.2f}.")
    if not beat:
        out.append("With a filter no better than chance the kept half is a random half: what separates the arms is "
                   "data size and repetition, not quality, so the seeds' claim is not tested by this filter; a "
                   "stronger judge (a larger model behind an endpoint) or a trained reward model is needed.")
    return out
