"""nbft.messages: the built-in labelled messages of 06_classify (seeded, balanced, varied, shifted between domains)
and the judge."""
import re

import pytest

from nbft import messages

HARD_HAM = {"email": {"real_invoice", "real_password_reset", "order_confirmation", "security_alert", "urgent_notice"},
            "social": {"real_giveaway", "dm_request", "link_share", "aside_comment", "mention"}}
#: The near-duplicates (a label that hangs on a detail) and the ambiguous kinds (shared templates, either label).
NEAR_DUP = {"email": {"reset_phish", "invoice_phish", "security_alert", "urgent_notice"},
            "social": {"lure_comment", "aside_comment", "mention"}}
AMBIGUOUS = {"email": {"promo", "cold_promo"}, "social": {"recommendation", "stealth_ad"}}


def accuracy(rule, recs):
    return sum(rule(r["text"]) == (r["label"] == "spam") for r in recs) / len(recs)


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_seeded_and_varied(domain):
    a = messages.generate(domain, 200, seed=4)
    assert a == messages.generate(domain, 200, seed=4)
    other = messages.generate(domain, 200, seed=5)
    assert len({r["text"] for r in a} & {r["text"] for r in other}) <= 2
    assert len({r["text"] for r in a}) == 200  # no repeats within a set


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_labels_are_balanced_shuffled_and_follow_spam_share(domain):
    recs = messages.generate(domain, 200, seed=4)
    labels = [r["label"] for r in recs]
    assert labels.count("spam") == 100 and labels != sorted(labels) and labels != sorted(labels, reverse=True)
    for n, share, spam in [(40, 0.25, 10), (7, 0.5, 4), (10, 0.0, 0), (10, 1.0, 10), (0, 0.5, 0)]:
        assert sum(r["label"] == "spam" for r in messages.generate(domain, n, 1, spam_share=share)) == spam
        assert len(messages.generate(domain, n, 1, spam_share=share)) == n


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_records_kinds_and_lengths(domain):
    recs = messages.generate(domain, 400, seed=3)
    assert all(set(r) == {"text", "label", "domain", "kind"} for r in recs)
    assert {r["domain"] for r in recs} == {domain} and {r["label"] for r in recs} == set(messages.LABELS)
    assert all(r["kind"] in messages.KINDS[domain][r["label"]] for r in recs)
    for label in messages.LABELS:  # every kind turns up, the hard ham ones included
        assert {r["kind"] for r in recs if r["label"] == label} == set(messages.KINDS[domain][label])
    assert HARD_HAM[domain] <= set(messages.KINDS[domain]["ham"])
    assert all(messages.MIN_WORDS <= len(r["text"].split()) <= messages.MAX_WORDS for r in recs)
    assert all("{" not in r["text"] and "}" not in r["text"] for r in recs)  # every slot filled
    if domain == "email":
        assert all(re.match(r"Subject: [^\n]+\n\n\S", r["text"]) for r in recs)
    else:
        assert not any("Subject:" in r["text"] for r in recs)
        assert sum("#" in r["text"] for r in recs) > 100 and sum("@" in r["text"] for r in recs) > 50


def test_the_named_spam_and_ham_families_exist():
    assert {"phishing", "invoice_scam", "prize", "pharmacy", "crypto", "reset_phish", "invoice_phish"} <= set(
        messages.KINDS["email"]["spam"])
    assert {"work", "personal"} <= set(messages.KINDS["email"]["ham"])
    assert {"follow4follow", "dm_me", "giveaway", "link_in_bio", "crypto", "lure_comment"} <= set(
        messages.KINDS["social"]["spam"])
    assert {"comment", "question", "news_share"} <= set(messages.KINDS["social"]["ham"])


def test_bad_arguments_name_the_valid_values():
    with pytest.raises(ValueError, match="valid: email, social"):
        messages.generate("sms", 3)
    with pytest.raises(ValueError, match="valid: email, social"):
        messages.unlabelled("tweets", 3)
    with pytest.raises(ValueError, match="n: -1"):
        messages.generate("email", -1)
    with pytest.raises(ValueError, match="n: -1"):
        messages.unlabelled("email", -1)
    with pytest.raises(ValueError, match="spam_share"):
        messages.generate("email", 10, spam_share=1.5)


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_unlabelled_texts_are_not_the_labelled_ones(domain):
    free = messages.unlabelled(domain, 300, 0)
    assert free == messages.unlabelled(domain, 300, 0) and all(isinstance(t, str) for t in free)
    assert len(free) == 300 and len(set(free)) == 300
    assert not set(free) & {r["text"] for r in messages.generate(domain, 300, 0)}
    assert 0.3 < sum(messages.judge(t) for t in free) / len(free) < 0.7  # both labels, unlabelled


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_a_share_are_near_duplicates_and_a_few_are_ambiguous(domain):
    recs = messages.generate(domain, 1000, seed=8)
    hard = sum(r["kind"] in NEAR_DUP[domain] for r in recs) / len(recs)
    grey = sum(r["kind"] in AMBIGUOUS[domain] for r in recs) / len(recs)
    assert 0.13 <= hard <= 0.27, hard
    assert 0.02 <= grey <= 0.10, grey
    spam, ham = AMBIGUOUS[domain]  # the ambiguous kinds share their templates: one each side
    assert (spam in messages.KINDS[domain]["spam"]) != (spam in messages.KINDS[domain]["ham"])


def test_near_duplicates_copy_the_genuine_mail_and_share_its_words():
    recs = messages.generate("email", 1000, seed=8)

    def vocab(kind):
        return {w for r in recs if r["kind"] == kind  # words outside links (their tokens are random hex)
                for w in re.findall(r"[a-z]{3,}", re.sub(r"https?://\S+", " ", r["text"].lower()))}

    for copy, genuine in [("reset_phish", "real_password_reset"), ("invoice_phish", "real_invoice")]:
        words = vocab(copy)
        assert len(words & vocab(genuine)) / len(words) >= 0.8, copy  # the rest: names, months, the detail
        def opening(r):  # the body's first two words: the copy opens like the genuine mail
            return tuple(r["text"].split("\n\n")[1].split()[:2])

        firsts = {opening(r) for r in recs if r["kind"] == genuine}
        copies = [opening(r) in firsts for r in recs if r["kind"] == copy]
        assert copies and all(copies), copy


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_the_judge_agrees_with_the_labels(domain):
    assert accuracy(messages.judge, messages.generate(domain, 400, seed=7)) >= 0.85


def test_the_judge_scores_cues_so_it_rates_text_it_has_not_seen():
    spam = ["URGENT: your account will be suspended, verify your login at http://secure-login.xyz now",
            "Congrats!! You won a $500 gift card, claim your prize here before it expires",
            "follow back? f4f, I follow everyone who follows me 🔥",
            "Make $300 a day from home, link in my bio 💸",
            "Buy cheap meds without a prescription, fast and discreet delivery",
            "Invest in Bitcoin with our trading bot and double your money in a week, guaranteed returns"]
    ham = ["Can we move the budget meeting to Thursday? I'll send the draft tonight.",
           "You requested a password reset for your Trellis account. If you did not request this, ignore this email.",
           "DM me the recipe please, it looked delicious!",
           "Photos from Grandma's birthday dinner are in the family album.",
           "The library announced the book giveaway winner today, congrats to Sam!",
           "Please find attached invoice 2231 for purchase order PO-7781, payment due in 30 days as agreed."]
    assert all(messages.judge(t) for t in spam)
    assert not any(messages.judge(t) for t in ham)
    assert messages.judge_score("Verify your login now") > messages.judge_score("You requested this, verify your login")


def test_the_judge_reads_the_detail_that_makes_a_near_duplicate_spam():
    reset = ("Subject: Reset your Trellis password\n\nYou requested a password reset for your Trellis account at 9:00 "
             "today. Open {} to set a new password; the link works once.\n\nThe Trellis team")
    assert not messages.judge(reset.format("https://trellis.com/reset?token=1a2b3c"))
    assert not messages.judge(reset.format("https://account.trellis.com/reset?token=1a2b3c"))
    assert messages.judge(reset.format("https://trellis-account.com/reset?token=1a2b3c"))
    assert messages.judge(reset.format("https://trellis.com.account-id.app/reset?token=1a2b3c"))
    assert messages.judge(reset.format("https://trellis.com/reset?token=1a2b3c").replace(
        "Open", "To confirm it is you, reply with your current password. Open"))
    invoice = ("Please find attached invoice 2231 for purchase order PO-7781, payment due in 30 days as agreed. {}")
    assert not messages.judge(invoice.format("Our bank details are unchanged."))
    assert messages.judge(invoice.format("Please note our bank details have changed; pay to our new account."))
    comment = "Happy birthday Sam! Hope you have a wonderful day with the family 🎂 {}"
    assert not messages.judge(comment.format("ps the cake recipe is here https://bit.ly/x2k9pq"))
    assert messages.judge(comment.format("unrelated but I just got paid $900 for testing apps 😅"))


@pytest.mark.parametrize("domain", messages.DOMAINS)
def test_no_single_word_separates_the_labels(domain):
    recs = messages.generate(domain, 400, seed=7)
    words = [set(re.findall(r"\w+|[^\w\s]", r["text"].lower())) for r in recs]  # words, emoji, punctuation
    spam = [r["label"] == "spam" for r in recs]
    best = max(max(a, 1 - a) for w in set().union(*words)  # "spam iff w in text", or its negation
               for a in [sum((w in ws) == s for ws, s in zip(words, spam)) / len(recs)])
    assert best < 0.85, best


def test_a_bag_of_words_learns_each_domain_below_the_ceiling_and_loses_accuracy_across_the_shift():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    def fit(recs):
        v = CountVectorizer().fit([r["text"] for r in recs])
        clf = LogisticRegression(max_iter=2000).fit(v.transform([r["text"] for r in recs]), [r["label"] for r in recs])
        return v, clf

    def acc(model, recs):
        v, clf = model
        return (clf.predict(v.transform([r["text"] for r in recs])) == [r["label"] for r in recs]).mean()

    email, social = fit(messages.generate("email", 300, 1)), fit(messages.generate("social", 300, 1))
    e_test, s_test = messages.generate("email", 200, 2), messages.generate("social", 200, 2)
    # learnable, but the near-duplicates and the ambiguous records keep it off the ceiling, so the stage's
    # approaches can be told apart in-domain
    assert 0.8 <= acc(email, e_test) <= 0.96
    assert 0.8 <= acc(social, s_test) <= 0.96
    assert acc(email, e_test) - acc(email, s_test) >= 0.1  # the domain shift
