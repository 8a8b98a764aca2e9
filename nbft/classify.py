"""Stage 06_classify: the language model as a classifier, across a domain shift, and steering generation with it.

The approaches are a table (``APPROACHES``), one row each, from no training to every weight:

- ``zero_shot`` / ``few_shot``: in-context, no weights change: the model reads the message (after ``k`` balanced
  examples) and the label whose word it finds most likely next is the prediction.
- ``features_llm`` / ``features_minilm``: feature-based: a frozen model turns each message into a vector
  (mean-pooled hidden states of one layer of the language model, or MiniLM's sentence embedding) and a
  scikit-learn logistic regression learns from the vectors.
- ``head_only`` (fine-tuning I): a classification head on the frozen backbone, trained alone.
- ``top_n``, ``lora``, ``full`` (fine-tuning II): the head plus the top N blocks, LoRA adapters, or every weight.

Trained rows use transformers' ``AutoModelForSequenceClassification`` and ``Trainer`` (the head reads the last
token's hidden state) and peft for LoRA; nothing here re-implements them. Then: the domain shift (train on the
source domain, score on the target), adaptation with N target examples from the source-trained model vs from
the base, and conditional pretraining (the classifier tags raw target text, the model continues pretraining on
``[tag] text``, an independent judge rates what each tag generates).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from . import corpora, data, evaluate, files, messages, models, params, train

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "features_ok": 0.85,     # features_llm in-domain accuracy at or above this: "frozen features suffice"
    "beats": 0.01,           # one accuracy above another by more than this: "beats"
    "shift_drop": 0.05,      # target accuracy below source by more than this: "the shift costs"
    "reuse_margin": 0.02,    # from_source above from_base by more than this at some N: "reuse pays"
    "control": 0.3,          # judged positive rate moves this much between tags: "the tag controls the output"
}

BUILTIN = "builtin"
BUILTIN_WORDS = {"ham": "normal", "spam": "spam"}  # label -> the word the prompting rows score
CONTENT_FREE = "N/A"  # the message the prompting rows calibrate against (``calibrate``)


@dataclass(frozen=True)
class Approach:
    name: str
    kind: str          # prompt | features | trained
    note: str
    scope: str = ""    # trained rows: head | top_n | lora | full (what trains with the head)


APPROACHES = {a.name: a for a in [
    Approach("zero_shot", "prompt", "in-context, no examples: label words scored by likelihood"),
    Approach("few_shot", "prompt", "in-context, k balanced examples in the prompt"),
    Approach("features_llm", "features", "frozen language model, mean-pooled hidden states -> logistic regression"),
    Approach("features_minilm", "features", "MiniLM sentence embeddings -> logistic regression"),
    Approach("head_only", "trained", "fine-tuning I: a classification head on the frozen backbone", "head"),
    Approach("top_n", "trained", "fine-tuning II, partial: top N blocks + head", "top_n"),
    Approach("lora", "trained", "fine-tuning II, parameter-efficient: LoRA + head", "lora"),
    Approach("full", "trained", "fine-tuning II: every weight + head", "full"),
]}


# ---------------------------------------------------------------- data

@dataclass
class ClassData:
    """Labelled messages: the source domain (train/test), the target domain (a pool to adapt from, a test set;
    empty without a shift), unlabelled target texts for conditional pretraining, and where each came from."""

    labels: list[str]
    train: list[dict]
    test: list[dict]
    target_train: list[dict] = field(default_factory=list)
    target_test: list[dict] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    source: str = ""
    target: str = ""


def read_labelled(spec: str, text_column: str, label_column: str, hf_split: str = "train") -> list[dict]:
    """{"text", "label", "where"} records of a labelled file or Hugging Face dataset; errors name the file, line
    and column (a missing column, an empty text, an empty label)."""
    raw = data.load_raw(spec, hf_split=hf_split)
    if not raw:
        raise data.DataError(f"{spec}: no records")
    out = []
    for where, rec in raw:
        rec = {str(k).lstrip("\ufeff"): v for k, v in rec.items()}  # a CSV saved by Excel starts with a BOM
        for col, what in ((text_column, "text_column"), (label_column, "label_column")):
            if col not in rec:
                close = difflib.get_close_matches(col, [str(k) for k in rec], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; columns: {', '.join(map(str, rec))}"
                raise data.DataError(f"{where}: no column '{col}' (the {what} parameter){hint}")
        text, label = rec[text_column], rec[label_column]
        if not isinstance(text, str) or not text.strip():
            raise data.DataError(f"{where}: column '{text_column}' is empty or not text ({text!r})")
        if label is None or isinstance(label, (dict, list)) or not str(label).strip():
            raise data.DataError(f"{where}: column '{label_column}' is empty or not a label ({label!r})")
        out.append({"text": text.strip(), "label": str(label).strip(), "where": where})
    return out


def stratified_split(records: list[dict], test_fraction: float, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """(train, test) with every label in both (each label needs 2 records; at least 2 labels)."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    if len(by_label) < 2:
        raise data.DataError(f"{where}: one label only ({next(iter(by_label))!r}); a classifier needs at least two")
    rng = random.Random(seed)
    train_set, test_set = [], []
    for label, recs in sorted(by_label.items()):
        if len(recs) < 2:
            raise data.DataError(f"{recs[0]['where']}: label {label!r} has one example only; each label needs at "
                                 "least 2 (one to train on, one to test)")
        recs = recs[:]
        rng.shuffle(recs)
        n_test = min(len(recs) - 1, max(1, round(len(recs) * test_fraction)))
        test_set += recs[:n_test]
        train_set += recs[n_test:]
    rng.shuffle(train_set)
    rng.shuffle(test_set)
    return train_set, test_set


def load_data(p: params.ClassifyParams) -> ClassData:
    """The stage's data from the parameters (builtin: generated e-mails -> social posts)."""
    if p.source_data == BUILTIN:
        email = messages.generate("email", p.n_train + p.n_test, p.seed)
        d = ClassData(list(messages.LABELS), email[:p.n_train], email[p.n_train:],
                      source=f"builtin e-mails ({p.n_train} train, {p.n_test} test)")
    else:
        recs = read_labelled(p.source_data, p.text_column, p.label_column, p.hf_split)
        tr, te = stratified_split(recs, p.test_fraction, p.seed, p.source_data)
        d = ClassData(sorted({r["label"] for r in recs}), tr, te,
                      source=f"{files.relative(p.source_data)} ({len(tr)} train, {len(te)} test)")
    if p.target_data == BUILTIN and p.source_data == BUILTIN:
        n_pool = max([*p.adapt_sizes, 0])
        social = messages.generate("social", n_pool + p.n_test, p.seed + 1)
        d.target_train, d.target_test = social[:n_pool], social[n_pool:]
        d.unlabelled = messages.unlabelled("social", p.cpt_texts, p.seed)
        d.target = f"builtin social posts ({n_pool} to adapt from, {p.n_test} test)"
    elif p.target_data and p.target_data != BUILTIN:
        recs = read_labelled(p.target_data, p.text_column, p.label_column, p.hf_split)
        unseen = [r for r in recs if r["label"] not in d.labels]
        if unseen:
            raise data.DataError(f"{unseen[0]['where']}: label {unseen[0]['label']!r} is not among the labels of "
                                 f"{p.source_data} ({', '.join(d.labels)}); the classifier cannot predict it")
        d.target_train, d.target_test = stratified_split(recs, p.test_fraction, p.seed, p.target_data)
        d.target = f"{files.relative(p.target_data)} ({len(d.target_train)} to adapt from, {len(d.target_test)} test)"
    pool = d.target_train or d.train
    d.unlabelled = d.unlabelled or [r["text"] for r in pool][: p.cpt_texts]
    if p.n_eval:
        d.test, d.target_test = d.test[: p.n_eval], d.target_test[: p.n_eval]
    return d


def check_inputs(p: params.ClassifyParams) -> None:
    """Before any notebook runs: approach names, parameter ranges, and the data files read, split and checked
    (errors name the file, line and column)."""
    for name in p.approaches:
        if name not in APPROACHES:
            close = difflib.get_close_matches(name, list(APPROACHES), n=1)
            raise params.ParamError(f"06_classify.approaches: unknown approach '{name}'"
                                    + (f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(APPROACHES)}"))
    if p.target_data == BUILTIN and p.source_data != BUILTIN:
        raise params.ParamError("06_classify.target_data: 'builtin' (social posts) goes with the builtin source_data; "
                                "give a labelled file of your target domain, or '' for no domain shift")
    if p.source_data != BUILTIN or p.target_data not in (BUILTIN, ""):
        d = load_data(p)
        if p.label_words and len(p.label_words) != len(d.labels):
            raise params.ParamError(f"06_classify.label_words: {len(p.label_words)} words for {len(d.labels)} labels "
                                    f"({', '.join(d.labels)})")


def positive(p: params.ClassifyParams, labels: list[str]) -> str:
    """The label whose rate conditional pretraining measures (and ROC-AUC scores)."""
    return p.positive_label if p.positive_label in labels else labels[-1]


# ---------------------------------------------------------------- scoring

def scores(labels: list[str], gold: list[str], probs: np.ndarray, pos: str | None = None) -> dict:
    """Accuracy, macro-F1 and (two labels) ROC-AUC of ``probs`` (n x labels) against ``gold``."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.array([labels.index(g) for g in gold])
    pred = probs.argmax(1)
    out = {"accuracy": float((pred == y).mean()), "f1": float(f1_score(y, pred, average="macro",
                                                                   labels=list(range(len(labels))), zero_division=0))}
    out["auc"] = None
    if len(labels) == 2 and len(set(y)) == 2:
        k = labels.index(pos) if pos in labels else 1
        out["auc"] = float(roc_auc_score(y == k, probs[:, k]))
    return out


def confusion(labels: list[str], gold: list[str], pred: list[str]) -> list[list[int]]:
    """Rows: true label; columns: predicted label (``labels`` order)."""
    m = [[0] * len(labels) for _ in labels]
    for g, q in zip(gold, pred):
        m[labels.index(g)][labels.index(q)] += 1
    return m


# ---------------------------------------------------------------- prompting rows

def label_words(p: params.ClassifyParams, labels: list[str]) -> list[str]:
    if p.label_words:
        return list(p.label_words)
    return [BUILTIN_WORDS.get(l, l) for l in labels] if p.source_data == BUILTIN else list(labels)


def _question(text: str, words: list[str]) -> str:
    return f"Message:\n{text}\n\nWhich label fits this message: {', '.join(words)}? Answer with the label only."


def few_shot_examples(train_set: list[dict], labels: list[str], k: int, seed: int) -> list[dict]:
    """``k`` training examples balanced over labels (round robin), in a seeded order."""
    rng = random.Random(seed)
    pools = {l: [r for r in train_set if r["label"] == l] for l in labels}
    for pool in pools.values():
        rng.shuffle(pool)
    picked = []
    for i in range(k):
        pool = pools[labels[i % len(labels)]]
        if pool:
            picked.append(pool.pop())
    rng.shuffle(picked)
    return picked


def prompt_for(text: str, words: list[str], labels: list[str], shots: list[dict], tokenizer) -> str:
    msgs = []
    for s in shots:
        msgs += [{"role": "user", "content": _question(s["text"], words)},
                 {"role": "assistant", "content": words[labels.index(s["label"])]}]
    msgs.append({"role": "user", "content": _question(text, words)})
    return data.render_prompt(msgs, tokenizer, "chat")


def calibrate(probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021, "Calibrate before use"): divide each row by the probabilities the
    same prompt gives a content-free message ("N/A") and renormalize, which removes the prompt's bias towards one
    label word."""
    scaled = probs / np.clip(content_free, 1e-12, None)
    return scaled / scaled.sum(1, keepdims=True)


# ---------------------------------------------------------------- feature rows

def llm_features(model, tokenizer, texts: list[str], layer: int | None, precision: str, max_length: int = 96,
                 batch_size: int = 16) -> np.ndarray:
    """Mean-pooled hidden states of ``layer`` (an index into ``hidden_states``: 0 the embeddings, -1 the last),
    float32 (n x hidden); ``layer=None``: every layer from one forward pass (n x layers+1 x hidden)."""
    def fn(m, enc):
        hs = m(**enc, output_hidden_states=True).hidden_states
        hs = [hs[layer]] if layer is not None else hs
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return torch.cat([(h.float() * mask).sum(1) / mask.sum(1) for h in hs], 1)
    x = evaluate.batched(model, tokenizer, texts, fn, precision, batch_size, truncation=True, max_length=max_length)
    return x if layer is not None else x.reshape(len(texts), -1, model.config.hidden_size)


#: The logistic regression's strength on frozen features (features_minilm; features_llm with a fixed layer) ...
LOGREG_C = 0.5
#: ... and those tried with every layer by features_llm with feature_layer_select "cv".
CV_C = (0.05, 0.5)
#: ... and the folds of the cross-validation on the training set.
CV_FOLDS = 5


def select_layer(x: np.ndarray, y: list[str], labels: list[str], seed: int = 0) -> dict:
    """Pick the hidden layer (and the regularization ``C``) of ``x`` (n x layers x hidden: :func:`llm_features`
    with ``layer=None``) by ``CV_FOLDS``-fold stratified cross-validation of the logistic regression on the training
    set alone (the test sets play no part). Ties go to the deeper layer, then the stronger regularization.

    Returns {"layer", "C", "cv_accuracy" (the chosen one's), "by_layer" (best mean CV accuracy per layer)}."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = [y.count(l) for l in set(y)]
    folds = max(2, min(CV_FOLDS, min(counts)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    target = [labels.index(v) for v in y]
    by_layer, best = [], (-1.0, 0, 0.0)
    for layer in range(x.shape[1]):
        accs = {c: float(cross_val_score(logreg(c, seed), x[:, layer], target, cv=cv).mean()) for c in CV_C}
        by_layer.append(max(accs.values()))
        for c, a in accs.items():
            best = max(best, (a, layer, -c))
    return {"layer": best[1], "C": -best[2], "cv_accuracy": best[0], "by_layer": by_layer, "folds": folds}


def minilm_features(texts: list[str]) -> np.ndarray:
    from . import rag

    return rag.embed(texts)


def logreg(C: float = LOGREG_C, seed: int = 0):
    """Standardize + logistic regression (scikit-learn), unfitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=C, random_state=seed))


def fit_logreg(x: np.ndarray, y: list[str], labels: list[str], seed: int = 0, C: float = LOGREG_C):
    """:func:`logreg` fitted; ``predict_proba`` columns follow ``labels``."""
    clf = logreg(C, seed)
    clf.fit(x, [labels.index(v) for v in y])
    return clf


def logreg_probs(clf, x: np.ndarray, n_labels: int) -> np.ndarray:
    """``predict_proba`` with a column for every label (a label missing from training gets 0)."""
    probs = np.zeros((len(x), n_labels), dtype=np.float32)
    probs[:, clf.classes_] = clf.predict_proba(x)
    return probs


# ---------------------------------------------------------------- trained rows

LEARNING_RATE = {"head": "head_learning_rate", "top_n": "freeze_learning_rate", "lora": "learning_rate",
                 "full": "full_learning_rate"}


def prepare(model, scope: str, p: params.ClassifyParams):
    """Make a sequence-classification model trainable with ``scope``; the head (``score``) always trains."""
    if scope == "lora":
        from peft import get_peft_model

        return get_peft_model(model, train.lora_config(p, "SEQ_CLS"))  # peft keeps the head trainable (SEQ_CLS)
    if scope == "head":
        model.requires_grad_(False)
    elif scope == "top_n":
        train.apply_scope(model, "freeze", p.freeze_top_n)
    elif scope == "full":
        model.requires_grad_(True)
    else:
        raise ValueError(f"scope: {scope!r} is not one of {', '.join(LEARNING_RATE)}")
    model.score.requires_grad_(True)
    return model


def fit_classifier(model, tokenizer, records: list[dict], labels: list[str], p: params.ClassifyParams,
                   learning_rate: float, max_steps: int = -1) -> train.TrainResult:
    """transformers ``Trainer`` on (text, label) records: cross-entropy on the head's logits; ``max_steps`` (>0)
    overrides ``p.epochs``."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list([{"text": r["text"], "label": labels.index(r["label"])} for r in records])
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=p.max_length), batched=True,
                remove_columns=["text"])
    n_tokens = sum(len(x) for x in ds["input_ids"])
    with train.scratch_dir() as tmp, models.padding_side(tokenizer, "right"):
        def build():
            args = TrainingArguments(**train.trainer_args(
                p, tmp, p.gradient_checkpointing, learning_rate=learning_rate, num_train_epochs=p.epochs,
                max_steps=max_steps, per_device_train_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum))
            return Trainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                           data_collator=DataCollatorWithPadding(tokenizer))
        result = train.fit(build)
    epochs = result.steps * p.batch_size * p.grad_accum / max(len(records), 1)
    result.train_tokens = int(n_tokens * epochs)
    return result


def classifier_probs(model, tokenizer, texts: list[str], precision: str, max_length: int = 96,
                     batch_size: int = 16) -> np.ndarray:
    """Softmax of a sequence-classification model's logits (n x labels)."""
    return evaluate.batched(model, tokenizer, texts, lambda m, enc: torch.softmax(m(**enc).logits.float(), -1),
                            precision, batch_size, truncation=True, max_length=max_length)


@contextlib.contextmanager
def trained_classifier(p: params.ClassifyParams, tokenizer, records: list[dict], labels: list[str], scope: str,
                       model=None, max_steps: int = -1):
    """Fresh classifier (or ``model``) -> trained with ``scope`` -> yielded (``TrainResult``) -> freed."""
    if model is None:
        model = models.load_classifier(p.model, tokenizer, len(labels), p.device, labels)
    model = prepare(model, scope, p) if not hasattr(model, "peft_config") else model
    result = fit_classifier(model, tokenizer, records, labels, p, getattr(p, LEARNING_RATE[scope]), max_steps)
    del model
    try:
        yield result
    finally:
        result.release()


# ---------------------------------------------------------------- one row

def run_approach(name: str, p: params.ClassifyParams, tokenizer, d: ClassData, precision: str, lm=None,
                 keep: bool = False, tag_above: float | None = None) -> dict:
    """One row of the table on the stage's data: metrics on the source test set (``accuracy``, ``f1``, ``auc``,
    ``trainable_params``, ``seconds`` (training), ``ms_per_example`` (inference)), ``target_accuracy`` where there
    is a target test set, and per-example predictions (``pred``, ``confidence``, ``target_pred``); feature rows
    also return their test vectors (``vectors``: {"test", "target"}).

    ``lm``: the base causal LM for the prompting and ``features_llm`` rows (loaded here if not given).
    ``keep``: a trained row also returns its model (``model``; the caller frees it with ``models.release``).
    ``tag_above``: predict the unlabelled texts (``unlabelled_pred``, the tags for conditional pretraining) only if
    this row would become the tagger, its ``tag_accuracy`` above this (``tag_bar`` of the rows so far); None: always.
    """
    a = APPROACHES[name]
    labels, pos = d.labels, positive(p, d.labels)
    row: dict = {"approach": name, "kind": a.kind, "note": a.note, "seconds": 0.0, "trainable_params": 0}
    with contextlib.ExitStack() as stack:
        if lm is None and (a.kind == "prompt" or name == "features_llm"):
            lm = stack.enter_context(models.loaded(p.model, p.device, tokenizer))
        if a.kind == "prompt":
            words = label_words(p, labels)
            ids = evaluate.word_ids(tokenizer, words)
            shots = few_shot_examples(d.train, labels, p.few_shot_k, p.seed) if name == "few_shot" else []
            row["k"] = len(shots)
            free = evaluate.next_word_probs(lm, tokenizer, [prompt_for(CONTENT_FREE, words, labels, shots, tokenizer)], ids,
                                precision)
            row["content_free_probs"] = {l: float(x) for l, x in zip(labels, free[0])}

            def predict(texts, split):
                raw = evaluate.next_word_probs(lm, tokenizer, [prompt_for(t, words, labels, shots, tokenizer) for t in texts],
                                   ids, precision, p.eval_batch_size)
                gold = [r["label"] for r in (d.test if split == "test" else d.target_test)]
                row[f"uncalibrated_{'accuracy' if split == 'test' else 'target_accuracy'}"] = \
                    scores(labels, gold, raw, pos)["accuracy"]
                return calibrate(raw, free)
        elif a.kind == "features":
            t0 = time.perf_counter()
            y, train_texts = [r["label"] for r in d.train], [r["text"] for r in d.train]
            C = LOGREG_C
            if name == "features_minilm":
                featurize = minilm_features
                x = featurize(train_texts)
            else:
                layer, every = p.feature_layer, None
                if p.feature_layer_select == "cv":  # every layer from one pass; layer and C by CV on the train set
                    every = llm_features(lm, tokenizer, train_texts, None, precision, p.max_length, p.eval_batch_size)
                    pick = select_layer(every, y, labels, p.seed)
                    layer, C = pick["layer"], pick["C"]
                    row.update(layer_cv_accuracy=pick["by_layer"], cv_accuracy=pick["cv_accuracy"])
                row.update(feature_layer=layer, feature_C=C)

                def featurize(texts):
                    return llm_features(lm, tokenizer, texts, layer, precision, p.max_length, p.eval_batch_size)
                x = every[:, layer] if every is not None else featurize(train_texts)
            clf = fit_logreg(x, y, labels, p.seed, C)
            row["seconds"] = time.perf_counter() - t0  # features of the training set + the fit
            row["trainable_params"] = int(clf[-1].coef_.size + clf[-1].intercept_.size)
            row["vectors"] = {}

            def predict(texts, split):
                row["vectors"][split] = featurize(texts)
                return logreg_probs(clf, row["vectors"][split], len(labels))
        else:
            result = stack.enter_context(trained_classifier(p, tokenizer, d.train, labels, a.scope))
            row["seconds"], row["steps"] = result.seconds, result.steps
            row["tokens_per_second"] = result.tokens_per_second
            row["trainable_params"] = models.count_params(result.model)[0]
            row["log_history"] = [{"step": h["step"], "loss": h["loss"]} for h in result.log_history if "loss" in h]

            def predict(texts, _split):
                return classifier_probs(result.model, tokenizer, texts, precision, p.max_length, p.eval_batch_size)
        src = [r["text"] for r in d.test]
        t0 = time.perf_counter()
        probs = predict(src, "test")
        row["ms_per_example"] = 1000 * (time.perf_counter() - t0) / max(len(src), 1)
        row.update(scores(labels, [r["label"] for r in d.test], probs, pos))
        row["pred"] = [labels[i] for i in probs.argmax(1)]
        row["confidence"] = [float(x) for x in probs.max(1)]
        if d.target_test:
            tprobs = predict([r["text"] for r in d.target_test], "target")
            row["target_accuracy"] = scores(labels, [r["label"] for r in d.target_test], tprobs, pos)["accuracy"]
            row["target_pred"] = [labels[i] for i in tprobs.argmax(1)]
        if d.unlabelled and a.kind != "prompt" and (tag_above is None or tag_accuracy(row) > tag_above):
            # candidate tags for conditional pretraining (tagger_of picks); a row that cannot win skips the pass
            row["unlabelled_pred"] = [labels[i] for i in predict(d.unlabelled, "unlabelled").argmax(1)]
        if keep and a.kind == "trained":
            row["model"], result.model = result.model, None
    return row


def misclassified(d: ClassData, rows: dict[str, dict]) -> dict[str, list[dict]]:
    """Per test split, the messages some approach gets wrong: text, true label, and each approach's prediction
    (with its confidence on the source split) — the misclassification browser's rows."""
    out = {}
    for split, recs, key in (("source test", d.test, "pred"), ("target test", d.target_test, "target_pred")):
        have = {k: r for k, r in rows.items() if key in r}
        out[split] = [{"text": rec["text"], "true": rec["label"], **{
            k: r[key][i] + (f" ({r['confidence'][i]:.2f})" if key == "pred" else "") for k, r in have.items()}}
            for i, rec in enumerate(recs) if any(r[key][i] != rec["label"] for r in have.values())]
    return out


METRIC_KEYS = ("accuracy", "f1", "auc", "trainable_params", "seconds", "ms_per_example", "target_accuracy")


PROMPT_KEYS = ("uncalibrated_accuracy", "uncalibrated_target_accuracy", "content_free_probs")


FEATURE_KEYS = ("feature_layer", "feature_C", "cv_accuracy", "layer_cv_accuracy")


def metrics_row(row: dict) -> dict:
    """The recorded numbers of one row (``METRIC_KEYS``; a prompting row also what calibration changed; the
    ``features_llm`` row the layer it read and how it was chosen)."""
    extra = PROMPT_KEYS if row.get("kind") == "prompt" else FEATURE_KEYS if row.get("approach") == "features_llm" else ()
    return {k: row.get(k) for k in METRIC_KEYS + extra}


# ---------------------------------------------------------------- domain adaptation

def adapt_curve(p: params.ClassifyParams, tokenizer, d: ClassData, source_model, precision: str,
                source_accuracy: float | None = None) -> dict:
    """For each N in ``p.adapt_sizes``: target accuracy after ``p.adapt_steps`` steps on the first N target
    examples, starting from the source-trained model (``from_source``) and from the base (``from_base``).
    Returns {N: {"from_source", "from_base"}}; ``source_model`` itself is not changed. ``source_accuracy``: the
    source model's target accuracy where its row has measured it (``run_approach``'s ``target_accuracy``, the same
    computation): N = 0's ``from_source``, not measured again."""
    scope = APPROACHES[p.adapt_approach].scope
    labels, gold = d.labels, [r["label"] for r in d.target_test]
    texts = [r["text"] for r in d.target_test]

    def acc(model):
        return scores(labels, gold, classifier_probs(model, tokenizer, texts, precision, p.max_length,
                                                     p.eval_batch_size))["accuracy"]
    curve = {}
    for n in sorted(set(p.adapt_sizes)):
        examples = d.target_train[:n]
        if n == 0:
            base = prepare(models.load_classifier(p.model, tokenizer, len(labels), p.device, labels), scope, p)
            curve[n] = {"from_source": acc(source_model) if source_accuracy is None else source_accuracy,
                        "from_base": acc(base)}
            models.release(base)
            continue
        start = copy.deepcopy(source_model)
        start.train()
        with trained_classifier(p, tokenizer, examples, labels, scope, model=start, max_steps=p.adapt_steps) as r:
            from_source = acc(r.model)
        with trained_classifier(p, tokenizer, examples, labels, scope, max_steps=p.adapt_steps) as r:
            from_base = acc(r.model)
        curve[n] = {"from_source": from_source, "from_base": from_base}
    return curve


# ---------------------------------------------------------------- conditional pretraining

def tag(label: str) -> str:
    return f"[{label}]"


def tag_accuracy(row: dict) -> float:
    """What picks the tagger: the row's target-domain accuracy, its source test accuracy where there is no target."""
    return row["target_accuracy"] if row.get("target_accuracy") is not None else row["accuracy"]


def tagger_of(rows: dict[str, dict]) -> str | None:
    """The approach whose predictions tag the unlabelled corpus: of the rows that predicted it (``unlabelled_pred``:
    the trained and feature rows), the one with the best ``tag_accuracy``; ties go to the earlier row. None when no
    row predicted it."""
    return max((k for k, r in rows.items() if r.get("unlabelled_pred")), key=lambda k: tag_accuracy(rows[k]),
               default=None)


def tag_bar(rows: dict[str, dict]) -> float | None:
    """The ``tag_accuracy`` a new row must beat to become the tagger (``run_approach``'s ``tag_above``): the best
    of the rows that predicted the unlabelled texts; None before any did."""
    best = tagger_of(rows)
    return tag_accuracy(rows[best]) if best is not None else None


def tagged_corpus(texts: list[str], predicted: list[str]) -> list[dict]:
    """``[label] text`` records ({"text", "label"}) with a classifier's predicted labels."""
    return [{"text": f"{tag(label)} {t}", "label": label} for t, label in zip(texts, predicted)]


def strip_tag(text: str, labels: list[str]) -> str:
    for l in labels:
        if text.startswith(tag(l)):
            return text[len(tag(l)):].strip()
    return text


def judge_fn(p: params.ClassifyParams, d: ClassData):
    """An independent judge, text -> label: the generator's cue rule for the builtin data (it never saw a
    classifier), else MiniLM + logistic regression trained on all labelled data (not the tagging model)."""
    if p.source_data == BUILTIN:
        return (lambda text: "spam" if messages.judge(text) else "ham"), "rule: nbft.messages.judge (generator cues)"
    pool = d.train + d.target_train
    clf = fit_logreg(minilm_features([r["text"] for r in pool]), [r["label"] for r in pool], d.labels, p.seed)

    def judge(text):
        return d.labels[int(clf.predict(minilm_features([text]))[0])]
    return judge, "MiniLM + logistic regression on the labelled data (separate from the tagger)"


def conditional(p: params.ClassifyParams, tokenizer, d: ClassData, corpus: list[dict], precision: str,
                tagger: str = "") -> dict:
    """Continue pretraining the base LM (every weight, ``cpt_learning_rate``, ``cpt_epochs``) on the tagged corpus,
    generate ``p.n_generate`` samples per tag and untagged, and let an independent judge rate each: ``rate_by_tag``
    (tag -> share judged ``positive``), ``rate_untagged``, ``control`` (the positive tag's rate minus the lowest other
    tag's), perplexity before/after. ``tagger``: the approach whose labels the corpus carries (recorded).

    Each training text starts with the start-of-text token, and so does every generation prompt (``<s>[tag]``, or
    ``<s>`` alone untagged): the model is asked to continue exactly what it was trained on."""
    pos = positive(p, d.labels)
    judge, judge_name = judge_fn(p, d)
    cpt = dataclasses.replace(p, epochs=p.cpt_epochs)
    with models.loaded(p.model, p.device, tokenizer) as base:
        ppl_before = evaluate.perplexity(base, tokenizer, corpora.GENERAL_TEXT, precision=precision)
    start = tokenizer.bos_token or tokenizer.eos_token
    out = {"judge": judge_name, "positive": pos, "n_texts": len(corpus), "tagger": tagger,
           "tag_counts": dict(Counter(r["label"] for r in corpus)), "samples": {}}
    with train.trained(cpt, tokenizer, [{"text": start + r["text"]} for r in corpus], mode="continued_pretraining",
                       scope="full", learning_rate=p.cpt_learning_rate) as r:
        out["seconds"] = r.seconds
        out["ppl_general_before"] = ppl_before
        out["ppl_general_after"] = evaluate.perplexity(r.model, tokenizer, corpora.GENERAL_TEXT, precision=precision)
        rates = {}
        for label in [*d.labels, None]:
            prompt = start + (tag(label) if label else "")
            texts = evaluate.generate(r.model, tokenizer, [prompt] * p.n_generate, p.max_new_tokens,
                                      p.eval_batch_size, precision, do_sample=True, seed=p.seed, top_p=0.95,
                                      temperature=1.0)
            texts = [strip_tag(t, d.labels) for t in texts]
            judged = [judge(t) for t in texts]
            rates[label] = sum(j == pos for j in judged) / max(len(judged), 1)
            out["samples"][label or "untagged"] = [{"text": t, "judged": j} for t, j in zip(texts, judged)]
    out["rate_by_tag"] = {l: rates[l] for l in d.labels}
    out["rate_untagged"] = rates[None]
    out["control"] = rates[pos] - min(rates[l] for l in d.labels if l != pos)
    return out


# ---------------------------------------------------------------- findings

def best(rows: dict[str, dict], kind: str | None = None) -> str | None:
    ok = {k: r for k, r in rows.items() if r.get("accuracy") is not None and (kind is None or r["kind"] == kind)}
    return max(ok, key=lambda k: (ok[k]["accuracy"], -ok[k]["trainable_params"])) if ok else None


def metrics(d: ClassData, rows: dict[str, dict], shift: dict | None, curve: dict, cond: dict | None) -> dict:
    """06_classify's section of metrics.json (with ``findings`` and ``thresholds`` added by the notebook): one row per
    approach (``metrics_row``), the domain shift, the adaptation curve, conditional pretraining (its samples left
    out); ``n_eval``: source-domain test messages, ``n_target_test``: target-domain ones."""
    return {"methods": {k: metrics_row(v) for k, v in rows.items()}, "shift": shift,
            "adapt_curve": {str(n): c for n, c in curve.items()},
            "conditional": {k: v for k, v in (cond or {}).items() if k != "samples"} or None,
            "labels": d.labels, "n_train": len(d.train), "n_eval": len(d.test), "n_target_test": len(d.target_test)}


def findings(rows: dict[str, dict], shift: dict | None, curve: dict, cond: dict | None) -> list[str]:
    """Sentences from the numbers (``THRESHOLDS`` say what "beats", "costs", "pays" and "controls" meant)."""
    t, out = THRESHOLDS, []
    if rows:
        order = sorted(rows, key=lambda k: -rows[k]["accuracy"])
        out.append("In-domain accuracy: " + ", ".join(
            f"{k} {rows[k]['accuracy']:.2f} ({rows[k]['trainable_params']:,} trainable)" for k in order) + ".")
    fl, ft = rows.get("features_llm"), best(rows, "trained")
    if fl:
        out.append(f"Frozen features of the language model + logistic regression reach {fl['accuracy']:.2f} in-domain "
                   + ("(at or above the bar): most of what the task needs is already in the pretrained representation."
                      if fl["accuracy"] >= t["features_ok"] else f"(below the {t['features_ok']} bar)."))
    if fl and ft:
        d = rows[ft]["accuracy"] - fl["accuracy"]
        out.append(f"The best fine-tuned row ({ft}, {rows[ft]['accuracy']:.2f}) "
                   + (f"beats frozen features by {d:+.2f}" if d > t["beats"] else
                      f"does not beat frozen features ({d:+.2f}), against the usual story")
                   + f", for {rows[ft]['seconds']:.0f} s of training vs {fl['seconds']:.0f} s.")
    icl = [k for k in ("zero_shot", "few_shot") if k in rows]
    if icl and ft:
        worse = [k for k in icl if rows[ft]["accuracy"] - rows[k]["accuracy"] > t["beats"]]
        out.append("In-context: " + ", ".join(f"{k} {rows[k]['accuracy']:.2f}" for k in icl) + "; "
                   + (f"the best trained row ({ft}) beats {', '.join(worse)}." if worse else
                      f"the best trained row ({ft}) does not beat them."))
    if "head_only" in rows and "full" in rows:
        h, f = rows["head_only"], rows["full"]
        out.append(f"Fine-tuning I (head only, {h['trainable_params']:,} weights) {h['accuracy']:.2f} vs fine-tuning II "
                   f"(every weight) {f['accuracy']:.2f}: {f['seconds'] / max(h['seconds'], 1e-9):.1f}x the training time.")
    if shift:
        drop = shift["source_accuracy"] - shift["target_accuracy"]
        out.append(f"Domain shift ({shift['approach']}): {shift['source_accuracy']:.2f} on the source domain, "
                   f"{shift['target_accuracy']:.2f} on the target ({-drop:+.2f}); "
                   + ("the shift costs accuracy." if drop > t["shift_drop"] else
                      "the target domain scores higher here." if drop < -t["shift_drop"] else "the shift costs little here."))
    if curve:
        pays = [n for n, c in curve.items() if c["from_source"] - c["from_base"] > t["reuse_margin"]]
        out.append("Adapting with N target examples (from the source model vs from the base): " + ", ".join(
            f"N={n}: {c['from_source']:.2f} vs {c['from_base']:.2f}" for n, c in curve.items()) + "; "
            + (f"reuse pays at N = {', '.join(map(str, pays))}." if pays else "reuse does not pay here."))
    if cond:
        moved = cond["control"] >= t["control"]
        out.append(f"Conditional pretraining: judged {cond['positive']} rate "
                   + ", ".join(f"{tag(l)} {v:.2f}" for l, v in cond["rate_by_tag"].items())
                   + f", untagged {cond['rate_untagged']:.2f}; the tag "
                   + (f"controls the output (moves it {cond['control']:.2f})" if moved else
                      f"moves it only {cond['control']:.2f} (below {t['control']})")
                   + f"; general-text perplexity {cond['ppl_general_before']:.2f} -> {cond['ppl_general_after']:.2f}"
                   + (f"; tags by {cond['tagger']}" if cond.get("tagger") else "") + ".")
        tagger = rows.get(cond.get("tagger") or "", {})
        if not moved and tagger.get("target_accuracy") is not None:
            out.append(f"The tags are only as good as their tagger: {cond['tagger']} is right on "
                       f"{tagger['target_accuracy']:.2f} of target-domain test messages, so only about that share of "
                       "the tagged texts carries the right label.")
    return out
