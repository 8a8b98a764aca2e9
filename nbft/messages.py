"""Built-in labelled messages for 06_classify: e-mails and social posts, spam vs ham — seeded, offline.

Two domains with different spam cues (e-mail: phishing, invoice scams, prizes, pharmacy, crypto; social:
follow-for-follow, "DM me", fake giveaways, link in bio, crypto shilling) and some overlap (money, urgency,
crypto), plus hard cases in both directions: genuine invoices and requested password resets that share the
spam vocabulary, and spam that avoids the obvious words. Texts are composed from slot lists and several
templates per kind, so a seed gives hundreds of distinct texts per kind and no single word separates the labels.

``judge`` is an independent cue rule (it scores cues; it does not look templates up), used to rate text a
language model writes in the conditional-pretraining experiment.
"""
from __future__ import annotations

import random
import re

LABELS = ("ham", "spam")  #: sorted: the label order every classifier uses
DOMAINS = ("email", "social")

_S = {
    "name": ["Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kim", "Leo",
             "Maya", "Nils", "Olga", "Priya", "Rosa", "Sam", "Tariq", "Uma"],
    "company": ["Northwind", "Bluepeak Supplies", "Kessler & Co", "Orbital Print", "Greenleaf Foods", "Tandem IT",
                "Harbor Logistics", "Lumen Office"],
    "bank": ["your bank", "PayFast", "SecureBank", "the account team", "Billing Support", "AppleID Services"],
    "amount": ["$49.99", "$1,250", "$320.00", "EUR 780", "$2,400", "$15", "GBP 99", "$5,000"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "tomorrow", "next week", "the 14th"],
    "place": ["Lisbon", "the lake house", "Grandma's", "the new office", "Kyoto", "the cabin", "Berlin"],
    "topic": ["the Q3 report", "the budget review", "the release notes", "the onboarding plan", "the API migration",
              "the hiring panel", "the design doc", "the sprint retro"],
    "coin": ["BTC", "ETH", "SOL", "a new token", "DOGE"],
    "drug": ["v1agra", "weight-loss pills", "cheap meds", "ozempic without prescription", "c1alis"],
    "prize": ["an iPhone 16", "a $1000 gift card", "a cruise for two", "a Tesla", "cash prize of $5,000"],
    "emoji": ["🔥", "💯", "😍", "🙌", "✨", "😂", "👏", "💸", "🚀", "❤️"],
    "tag": ["#travel", "#foodie", "#photography", "#fitness", "#booklover", "#gardening", "#tech", "#music"],
    "handle": ["@mia_travels", "@jonas.cooks", "@the_daily_run", "@kim_reads", "@leo.shoots", "@priya_codes"],
    "thing": ["photo", "recipe", "post", "shot", "thread", "video", "article"],
    "news": ["the city library is extending its hours", "the marathon route changed this year",
             "a new bike lane opens downtown", "the museum is free on Sundays now", "the bridge repairs are done"],
}

# (label, kind) -> templates; {slot} draws from _S; {po} {code} {n} {url} are generated.
_EMAIL = {
    ("spam", "phishing"): [
        "Subject: Account suspended\n\nDear customer, {bank} has suspended your account due to unusual activity. "
        "Verify your login within 24 hours at {url} or your access will be closed.",
        "Subject: Action required: confirm your details\n\nWe could not verify your identity. Click {url} and enter "
        "your password to restore access. Failure to act today will lock your account.",
        "Subject: Security alert\n\nSomeone tried to sign in from a new device. If this was not you, confirm your "
        "credentials immediately at {url}. {bank}",
    ],
    ("spam", "invoice_scam"): [
        "Subject: OVERDUE invoice #{n}\n\nYour invoice of {amount} is overdue. Pay now via the attached link {url} "
        "to avoid legal action and extra fees.",
        "Subject: Final notice\n\nPayment of {amount} has failed. Update your card at {url} within 48 hours or the "
        "debt goes to collection.",
    ],
    ("spam", "prize"): [
        "Subject: Congratulations {name}!\n\nYou have been selected to receive {prize}. Claim your reward now at "
        "{url}, only a small shipping fee required.",
        "Subject: You are our lucky winner\n\nYour email won {prize} in our monthly draw. Reply with your bank details "
        "to receive it today!",
    ],
    ("spam", "pharmacy"): [
        "Subject: Best prices online\n\nBuy {drug} at 80% off, no doctor needed, discreet shipping worldwide. Order at {url}",
        "Subject: Limited offer\n\n{drug} delivered to your door in 24h. Lowest price guaranteed, order today.",
    ],
    ("spam", "crypto"): [
        "Subject: Double your money\n\nInvest {amount} in {coin} today and earn 300% returns in one week. Guaranteed "
        "profit, join our private group: {url}",
        "Subject: Insider tip\n\nOur experts see {coin} exploding before {day}. Do not miss out, send {amount} now and "
        "we trade for you.",
    ],
    ("spam", "subtle"): [  # hard spam: no prize, link or drug words
        "Subject: Quick favour\n\nHi, are you at your desk? I need you to buy some gift cards for a client today, "
        "I will pay you back. Keep this between us. {name}",
        "Subject: Re: your profile\n\nHello dear, I found your contact and I would like to discuss a business "
        "proposal of mutual benefit. Kindly reply with your full name and phone number.",
    ],
    ("ham", "work"): [
        "Subject: {topic}\n\nHi {name}, can we move our meeting about {topic} to {day}? I added my comments to the draft.",
        "Subject: Review request\n\nHi team, the pull request for {topic} is ready for review. Tests pass; please look "
        "before {day}. Thanks, {name}",
        "Subject: Notes from today\n\nThanks all for joining. Action items for {topic} are in the shared folder; next "
        "sync on {day}. {name}",
    ],
    ("ham", "personal"): [
        "Subject: Dinner {day}?\n\nHey {name}, are you free for dinner {day}? We could try the place near {place}.",
        "Subject: Photos from {place}\n\nHi! Finally sorted the pictures from {place}, the link to the album is in "
        "the family chat. Love, {name}",
        "Subject: Trip plans\n\nWe booked the train to {place} for {day}. Can you bring the board games? {name}",
    ],
    ("ham", "real_invoice"): [
        "Subject: Invoice {n} for PO {po}\n\nDear {name}, please find attached invoice {n} for purchase order {po} "
        "({amount}), due in 30 days as agreed. Kind regards, {company} accounts",
        "Subject: Your {company} invoice\n\nHello {name}, invoice {n} ({amount}) for last month's delivery is now "
        "available in your customer portal. Payment terms as in our contract. {company}",
    ],
    ("ham", "real_password_reset"): [
        "Subject: Password reset requested\n\nHi {name}, you requested a password reset for your {company} account. "
        "The code is {code}; it expires in 10 minutes. If you did not request this, ignore this email.",
        "Subject: Your verification code\n\nUse code {code} to finish signing in to {company}. You asked for this "
        "code a moment ago; we will never ask for your password.",
    ],
    ("ham", "order"): [
        "Subject: Order {n} confirmed\n\nThanks {name}, your order of {amount} from {company} is confirmed and "
        "ships {day}. Track it in your account.",
    ],
}

_SOCIAL = {
    ("spam", "follow4follow"): [
        "follow me and I follow back {emoji} f4f l4l {tag} #follow4follow",
        "gain 1000 followers fast {emoji} follow for follow, like for like, drop a comment {tag}",
        "who wants more followers?? follow me + turn on notifications, I follow back everyone {emoji}{emoji}",
    ],
    ("spam", "dm_me"): [
        "nice {thing}! DM me for a collab, we pay {amount} per post {emoji}",
        "DM me to learn how I make {amount} a day from my phone {emoji} no experience needed",
        "hey dear, check your DMs, I have a business offer for you {emoji}",
    ],
    ("spam", "giveaway"): [
        "GIVEAWAY {emoji} win {prize}! follow, like and tag 3 friends, winner picked in 24h {tag}",
        "we are giving away {prize} to our first 100 followers {emoji} claim via the link in our bio",
    ],
    ("spam", "link_in_bio"): [
        "{emoji} hot deals {emoji} 90% off everything, link in bio, hurry",
        "want to earn from home? check the link in my bio {emoji}{emoji} limited spots",
        "free {prize} for the next 50 people, tap the link in bio {emoji}",
    ],
    ("spam", "crypto_shill"): [
        "{coin} to the moon {emoji}{emoji} 100x guaranteed, join my signal group, DM me",
        "I turned {amount} into six figures with {coin}, ask me how {emoji} {tag}",
    ],
    ("ham", "comment"): [
        "this {thing} is beautiful {emoji} where was it taken?",
        "love this! the colours in this {thing} are amazing {emoji} {tag}",
        "haha {handle} this is so us {emoji}",
        "congrats on the new job {name}! so proud of you {emoji}",
    ],
    ("ham", "question"): [
        "does anyone know if the market at {place} is open on {day}? {tag}",
        "{handle} which lens did you use for this {thing}?",
        "DM me the recipe please, I need to try this {emoji}",  # hard ham: "DM me"
        "can someone recommend a good book for a long train ride? {tag}",
    ],
    ("ham", "news_share"): [
        "good news: {news} {emoji}",
        "just read that {news}. finally! {tag}",
        "the giveaway winner was announced on the library page, congrats {name} {emoji}",  # hard ham: "giveaway"
        "sharing this for anyone in town: {news}, link to the article on the city site",   # hard ham: "link"
    ],
    ("ham", "event"): [
        "see you all at {place} on {day} {emoji} bring snacks",
        "great run this morning with {handle}, 10k in the rain {emoji} {tag}",
        "our band plays at {place} {day}, come say hi {emoji} {tag}",
    ],
}

_TEMPLATES = {"email": _EMAIL, "social": _SOCIAL}


def _fill(template: str, rng: random.Random) -> str:
    def slot(m):
        key = m.group(1)
        if key == "url":
            return rng.choice(["http://", "https://"]) + rng.choice(["secure-", "my", "verify-", "best", "get"]) + \
                rng.choice(["login", "account", "deal", "promo", "wallet"]) + rng.choice([".com", ".net", ".info", ".xyz"])
        if key == "n":
            return str(rng.randint(10000, 99999))
        if key == "po":
            return f"PO-{rng.randint(1000, 9999)}"
        if key == "code":
            return str(rng.randint(100000, 999999))
        return rng.choice(_S[key])
    return re.sub(r"\{(\w+)\}", slot, template)


def _draw(domain: str, label: str, rng: random.Random) -> dict:
    kinds = [k for (l, k) in _TEMPLATES[domain] if l == label]
    kind = rng.choice(kinds)
    text = _fill(rng.choice(_TEMPLATES[domain][(label, kind)]), rng)
    if rng.random() < 0.3:  # variety: a greeting or sign-off
        text = (rng.choice(["Hi,", "Hello!", "Hey", "PS:", "ok so"]) + " " + text) if domain == "social" else \
            text + rng.choice(["\n\nBest,", "\n\nCheers", "\n\nSent from my phone", "\n\nThanks"])
    return {"text": text, "label": label, "domain": domain, "kind": kind}


def _check(domain: str, n: int) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain: {domain!r} is not one of {', '.join(DOMAINS)}")
    if n < 0:
        raise ValueError(f"n: {n} must be 0 or more")


def generate(domain: str, n: int, seed: int = 0, spam_share: float = 0.5) -> list[dict]:
    """``n`` labelled messages of ``domain`` ({"text", "label", "domain", "kind"}), ``round(n * spam_share)``
    of them spam, shuffled; the same (domain, n, seed) gives the same records."""
    _check(domain, n)
    rng = random.Random(f"{domain}:{seed}")
    n_spam = round(n * spam_share)
    recs = [_draw(domain, "spam" if i < n_spam else "ham", rng) for i in range(n)]
    rng.shuffle(recs)
    return recs


def unlabelled(domain: str, n: int, seed: int = 0) -> list[str]:
    """``n`` texts of ``domain`` without labels (half spam), from a seed stream ``generate`` does not use."""
    _check(domain, n)
    rng = random.Random(f"{domain}:unlabelled:{seed}")
    return [_draw(domain, rng.choice(LABELS), rng)["text"] for _ in range(n)]


# ---------------------------------------------------------------- the judge

_SPAM_CUES = {  # regex -> weight
    r"\bverify\b|\bconfirm your (details|credentials)|suspend": 2.0, r"https?://|\.xyz\b|\.info\b": 1.0,
    r"overdue|final notice|legal action|collection": 2.0, r"\bwin\b|winner|selected|lucky|claim|prize|gift card": 1.5,
    r"no doctor|prescription|meds\b|pills|v1agra|c1alis": 3.0, r"guarantee|returns|100x|to the moon|profit|invest": 2.0,
    r"follow ?back|f4f|l4l|follow ?for ?follow|followers": 3.0, r"\bdm me\b|check your dms": 1.5,
    r"link in (my |our )?bio": 3.0, r"giveaway|giving away": 1.5, r"\b\d+% off|hot deals|limited (offer|spots)|hurry": 2.0,
    r"today|now|immediately|within \d+ hours|24h|48 hours": 0.7, r"bank details|gift cards|phone number|keep this between": 2.0,
    r"business (offer|proposal)|make \$|a day from|six figures|ask me how|we pay|do not miss out|we trade for you": 2.0, r"\bdear\b": 0.7, r"💸|🚀": 0.7,
}
_HAM_CUES = {
    r"you requested|you asked for|if you did not request|never ask for your password": 3.0,
    r"\bpo-\d+|purchase order|as agreed|payment terms|customer portal": 3.0, r"order \d+ confirmed|track it": 2.5,
    r"recipe|which lens|where was it taken|congrats|proud of you|announced on|city site": 2.0,
    r"meeting|review|pull request|action items|sync|draft": 2.0,
}


def judge(text: str) -> bool:
    """The judge: True when ``text`` reads as spam by a weighted score of cues (urgency, money and prizes, links,
    follow-for-follow, "DM me", pharmacy and crypto words) minus legitimising cues ("you requested", PO numbers,
    order confirmations, ordinary questions and congratulations)."""
    t = text.lower()
    score = sum(w for cue, w in _SPAM_CUES.items() if re.search(cue, t))
    score -= sum(w for cue, w in _HAM_CUES.items() if re.search(cue, t))
    return score >= 2.0
