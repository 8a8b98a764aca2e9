"""The built-in labelled messages of 06_classify: seeded, balanced, varied, shifted between domains; the judge."""
import re

import pytest

from nbft import messages


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_seeded_balanced_and_varied(domain):
    a, b = messages.generate(domain, 200, seed=4), messages.generate(domain, 200, seed=4)
    assert a == b and a != messages.generate(domain, 200, seed=5)
    assert sum(r["label"] == "spam" for r in a) == 100
    assert sum(r["label"] == "spam" for r in messages.generate(domain, 40, 0, spam_share=0.25)) == 10
    assert {r["domain"] for r in a} == {domain} and {r["label"] for r in a} == set(messages.LABELS)
    assert len({r["text"] for r in a}) >= 170  # composed from slots: few repeats
    assert all(5 <= len(r["text"].split()) <= 70 for r in a)
    hard = {"email": {"real_invoice", "real_password_reset"}, "social": {"question", "news_share"}}[domain]
    assert hard <= {r["kind"] for r in a if r["label"] == "ham"}


def test_bad_arguments_name_the_valid_values():
    with pytest.raises(ValueError, match="email, social"):
        messages.generate("sms", 3)
    with pytest.raises(ValueError, match="n: -1"):
        messages.unlabelled("email", -1)


def test_unlabelled_texts_are_not_the_labelled_ones():
    labelled = {r["text"] for r in messages.generate("social", 300, 0)}
    free = messages.unlabelled("social", 100, 0)
    assert len(free) == 100 and len(set(free) - labelled) >= 80


def accuracy(rule, recs):
    return sum(rule(r["text"]) == (r["label"] == "spam") for r in recs) / len(recs)


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_the_judge_agrees_with_the_labels_and_no_single_word_does(domain):
    recs = messages.generate(domain, 400, seed=7)
    assert accuracy(messages.judge, recs) >= 0.9
    words = [set(re.findall(r"\w+", r["text"].lower())) for r in recs]
    best = max(max(a, 1 - a) for w in set().union(*words)
               for a in [sum((w in ws) == (r["label"] == "spam") for ws, r in zip(words, recs)) / len(recs)])
    assert best < 0.9, best


def test_a_bag_of_words_learns_each_domain_and_loses_accuracy_across_the_shift():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    def fit(recs):
        v = CountVectorizer().fit([r["text"] for r in recs])
        return v, LogisticRegression(max_iter=2000).fit(v.transform([r["text"] for r in recs]), [r["label"] for r in recs])

    def acc(model, recs):
        v, clf = model
        return (clf.predict(v.transform([r["text"] for r in recs])) == [r["label"] for r in recs]).mean()
    email, social = fit(messages.generate("email", 300, 1)), fit(messages.generate("social", 300, 1))
    e_test, s_test = messages.generate("email", 200, 2), messages.generate("social", 200, 2)
    assert acc(email, e_test) >= 0.9 and acc(social, s_test) >= 0.85
    assert acc(email, e_test) - acc(email, s_test) >= 0.1
