"""Built-in labelled messages for 06_classify: e-mails and social posts, spam vs ham, seeded and offline.

The stage measures a domain shift (train a spam classifier on e-mail, test it on social posts), so the two
domains have different spam cues -- e-mail: phishing, invoice scams, prizes, pharmacy, crypto investment;
social: follow-for-follow, "DM me" deals, fake giveaways, link in bio, crypto shilling -- with some overlap
(crypto, "free", money, urgency). Both domains have hard cases in both directions: ham that shares the spam
vocabulary (genuine invoices with a PO number, password resets the user asked for, order confirmations,
newsletters; a real giveaway, "DM me the recipe", slides "linked in my bio") and spam that avoids the obvious
words (gift-card favours, "business proposals", brand-ambassador offers). Every text is composed from several
sentence templates per kind and slot lists (names, companies, products, amounts, dates, places, emoji,
hashtags), so a seed gives hundreds of distinct texts per kind and no single word separates the labels.

So that in-domain approaches can be told apart (a bag of words must not score 1.00), about a fifth of each domain
is near-duplicates whose label hangs on a detail rather than on vocabulary -- e-mail: a genuine password reset,
invoice or security alert copied word for word except for a look-alike link (the service's name on someone else's
domain), a request for the current password or a changed bank account, next to genuine mails with urgent, money
or prize wording; social: an ordinary comment or question with one subtle lure tucked in (a shortened link, a
discount code, money made "on the side"), next to the same comments with a harmless aside and ordinary posts that
mention giveaways, DMs, links and "free" legitimately -- and a few percent are ambiguous (a shop's promotion, a
glowing product recommendation: the same templates labelled ham or spam). A bag-of-words logistic regression
trained on 300 records scores about 0.87-0.95 in-domain and loses 0.2 or more across the shift; the judge scores
about 0.9-0.97. Texts are 15-60 words.

- ``generate(domain, n, seed, spam_share)``: labelled records ``{"text", "label", "domain", "kind"}``.
- ``unlabelled(domain, n, seed)``: texts only, from a seed stream ``generate`` does not use.
- ``judge(text)``: the judge, an independent weighted-cue spam rule (it scores cues, it does not look the
  templates up, so it also rates text a language model writes).
"""
from __future__ import annotations

import random
import re

#: The labels, sorted: the label order every classifier uses.
LABELS = ("ham", "spam")
#: The domains: the source (e-mail) and the target (social posts) of the shift.
DOMAINS = ("email", "social")
#: Shortest and longest text in words (``len(text.split())``): short enough for a 64-96 token window.
MIN_WORDS, MAX_WORDS = 15, 60

# ------------------------------------------------------------------------------------------------ slots

_FIRST = ["Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kim", "Leo",
          "Maya", "Nils", "Olga", "Priya", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe",
          "Marta", "Omar", "Lena", "Raj", "Sofia", "Tom"]
_LAST = ["Meyer", "Okafor", "Lindqvist", "Rossi", "Nakamura", "Silva", "Dubois", "Kowalski", "Haddad", "Brennan",
         "Novak", "Petrov", "Garcia", "Larsen", "Chen", "Moreau"]
_LIST = {
    "supplier": ["Northwind Supplies", "Bluepeak Paper", "Kessler & Co", "Orbital Print", "Greenleaf Foods",
                 "Tandem IT Services", "Harbor Logistics", "Lumen Office", "Alder Cleaning", "Quarry Stone Works"],
    "shop": ["Pinewood Books", "Cartwheel Toys", "Riverside Outdoor", "Fernhill Garden Centre", "Mosaic Home",
             "Bolt Electronics", "Little Acorn Kids", "Copper Kettle Tea"],
    "service": ["Trellis", "Notewise", "the staff portal", "Fieldbook", "Paperlane", "the library app",
                "Cloudnest", "the school portal"],
    "brand": ["PayFlow", "MailBox Plus", "CloudDrive", "SecureBank", "NetStream", "ShopPal", "iAccount",
              "WebMail Center", "PrimeTrust Bank", "DeliverNow"],
    "product": ["printer toner", "A4 paper", "a laptop stand", "two office chairs", "a headset", "cleaning supplies",
                "coffee beans", "a desk lamp", "shipping boxes", "a label printer", "a whiteboard", "USB-C cables"],
    "gadget": ["iPhone", "PS5", "MacBook", "AirPods set", "smartwatch", "gaming chair", "drone", "e-bike"],
    "project": ["billing service", "onboarding flow", "data pipeline", "search page", "mobile app", "API gateway",
                "payroll export", "design system", "reporting dashboard", "checkout redesign"],
    "report": ["quarterly report", "budget plan", "release notes", "hiring plan", "design doc", "risk register",
               "customer survey summary", "roadmap"],
    "team": ["finance", "design", "platform", "sales", "support", "legal", "marketing", "data"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"],
    "city": ["Lisbon", "Kyoto", "Berlin", "Porto", "Oslo", "Toronto", "Valencia", "Krakow", "Dublin", "Leeds",
             "Lyon", "Utrecht", "Austin", "Bristol"],
    "place": ["the lake house", "the farmers market", "the old harbour", "Grandma's", "the botanical garden",
              "the river path", "the town square", "the beach", "the cabin", "the park cafe"],
    "country": ["Ghana", "Malaysia", "Switzerland", "Dubai", "Benin", "Hong Kong", "Togo", "Cyprus"],
    "drug": ["Viagra", "Cialis", "Xanax", "Ozempic", "Tramadol", "Valium", "Phentermine", "Adderall"],
    "prize": ["a brand new iPhone", "a luxury cruise for two", "a Tesla Model 3", "a Samsung TV",
              "a holiday in the Maldives", "a MacBook Pro", "an Amazon voucher"],
    "coin": ["Bitcoin", "Ethereum", "Solana", "USDT", "XRP", "Dogecoin"],
    "ticker": ["MOON", "PEPE2", "SAFEX", "ROCKET", "GEMS", "LAMBO", "NOVA", "ZETA"],
    "store": ["Amazon", "Apple", "Google Play", "Steam", "Target", "iTunes"],
    "club": ["Riverside Running Club", "Harbour Photo Society", "Oak Street Library", "Northside Chess Club",
             "Community Garden", "City Choir", "Makerspace", "Youth Football Club"],
    "event": ["summer fair", "book swap", "charity run", "open mic night", "street food festival", "jazz evening",
              "repair cafe", "farmers market", "film night", "choir concert"],
    "paper": ["the Gazette", "the local paper", "City News", "the Herald", "the council newsletter", "BBC",
              "the Chronicle"],
    "street": ["Elm Street", "Harbour Road", "Market Lane", "Station Avenue", "Mill Road", "King Street"],
    "topic": ["kids and screen time", "four-day work weeks", "urban beekeeping", "how sleep affects memory",
              "the new recycling rules", "why bus lanes cut commute times", "reading to toddlers",
              "heat pumps in old houses"],
    "conf": ["PyCon", "the design meetup", "the library talk series", "DevDays", "the teachers' conference",
             "the local tech meetup"],
    "food": ["lasagna", "banana bread", "curry", "sourdough", "ramen", "lemon cake", "tacos", "pancakes"],
    "color": ["blue", "red", "green", "yellow", "striped", "grey", "wool", "silk"],
    "veg": ["tomatoes", "pumpkins", "sunflowers", "courgettes", "roses", "beans"],
    "hobby": ["photography", "running", "baking", "knitting", "climbing", "gardening", "painting", "chess"],
    "emoji": ["🔥", "💯", "😍", "🙌", "✨", "😂", "👏", "❤️", "😊", "🎉", "👀", "🙏", "😅", "🌞"],
    "tag": ["#weekend", "#photography", "#family", "#nofilter", "#tbt", "#goodvibes", "#foodie", "#travel",
            "#booklover", "#running", "#gardening", "#music", "#localnews", "#community", "#sunday"],
}
_BAD_HOST = (["secure", "verify", "account", "login", "update", "my", "claim", "best", "get", "fast"],
             ["payflow", "mailbox", "clouddrive", "bank", "service", "portal", "rewards", "deals", "profit", "meds"],
             ["xyz", "top", "click", "info", "biz", "live", "net", "co", "ru", "online"])


def _host(name: str) -> str:
    return re.sub(r"^the |\W", "", name.lower())


class _Slots(dict):
    """A ``format_map`` mapping that draws each slot once per text (the same ``{first}`` twice reads the same)."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        value = self[key] = self._draw(key.rstrip("0123456789"))
        return value

    def _draw(self, key: str) -> str:
        r = self.rng
        if key in _LIST:
            return r.choice(_LIST[key])
        if key in ("first", "boss"):
            return r.choice(_FIRST)
        if key == "last":
            return r.choice(_LAST)
        if key == "handle":
            return "@" + r.choice(_FIRST).lower() + r.choice(["_", ".", ""]) + r.choice(
                ["travels", "cooks", "runs", "reads", "shoots", "codes", "bakes", "draws", "grows",
                 str(r.randint(1, 99))])
        if key == "price":  # an ordinary amount
            cents = r.choice(["00", "50", "99", "20"])
            return r.choice(["$", "EUR ", "GBP ", "$"]) + f"{r.randint(12, 4800):,}.{cents}"
        if key == "amount":  # a large, tempting amount
            return r.choice(["$", "$", "EUR ", "GBP "]) + f"{r.randint(2, 950) * 1000:,}"
        if key == "small":
            return r.choice(["$", "$", "EUR "]) + str(r.choice([9.99, 19, 25, 49, 99, 150, 250, 12.5]))
        if key == "inv":
            return r.choice(["INV-", "#", "No. ", "INV"]) + str(r.randint(10000, 99999))
        if key == "po":
            return r.choice(["PO-", "PO ", "PO#"]) + str(r.randint(1000, 99999))
        if key == "order":
            return "#" + str(r.randint(100000, 9999999))
        if key == "ticket":
            return f"{r.choice('ABCDEFGHKLMNPRSTXZ')}{r.randint(100, 999)}-{r.randint(1000, 9999)}"
        if key == "code":
            return str(r.randint(100000, 999999))
        if key == "room":
            return r.choice(["A", "B", "C", "3.", "4."]) + str(r.randint(1, 40))
        if key == "time":
            return r.choice([f"{r.randint(8, 17)}:{r.choice(['00', '15', '30', '45'])}",
                             f"{r.randint(1, 11)}{r.choice(['am', 'pm'])}"])
        if key == "date":
            return f"{r.choice(_LIST['month'])} {r.randint(1, 28)}"
        if key in ("n", "few", "hours", "days", "pct"):
            lo, hi = {"n": (3, 500), "few": (2, 12), "hours": (6, 72), "days": (2, 30), "pct": (20, 95)}[key]
            return str(r.randint(lo, hi))
        if key == "badlink":
            a, b, c = _BAD_HOST
            return (r.choice(["http://", "https://", "www.", "http://"]) + r.choice(a) + r.choice(["-", ""]) +
                    r.choice(b) + "." + r.choice(c) +
                    r.choice(["", "/login", "/verify", "/claim", "/offer", f"/?id={r.randint(100, 9999)}"]))
        if key == "resetlink":  # the service's own site (its domain is the service's name)
            h, tok = _host(self["service"]), f"{r.randint(10**7, 10**8 - 1):x}"
            return r.choice([f"https://{h}.com/reset?token={tok}", f"https://account.{h}.com/reset?token={tok}",
                             f"https://{h}.com/account/reset?token={tok}", f"https://id.{h}.app/reset?token={tok}"])
        if key == "fakelink":  # a look-alike of the service's site: the same words, another owner
            h, tok = _host(self["service"]), f"{r.randint(10**7, 10**8 - 1):x}"
            return r.choice([f"https://{h}.com-reset.app/?token={tok}", f"https://{h}-account.com/reset?token={tok}",
                             f"https://account-{h}.com/reset?token={tok}", f"https://id-{h}.com/reset?token={tok}",
                             f"https://{h}.com.account-id.app/reset?token={tok}",
                             f"https://{h}.com.id{r.randint(2, 99)}.app/account/reset?token={tok}"])
        if key == "brandlink":  # the brand's own security page
            h = _host(self["brand"])
            return r.choice([f"https://{h}.com/security", f"https://account.{h}.com/signins",
                             f"https://{h}.com/account/security"])
        if key == "brandfake":  # a look-alike of it
            h = _host(self["brand"])
            return r.choice([f"https://{h}-security.com/signins", f"https://account-{h}.com/security",
                             f"https://{h}.com.account-security.app/", f"https://{h}.com-account.app/security"])
        if key == "portallink":  # the supplier's own invoice portal
            return f"https://portal.{_host(self['supplier'])}.com/invoices/{r.randint(1000, 99999)}"
        if key == "fakeportal":  # a look-alike of it
            h, n = _host(self["supplier"]), r.randint(1000, 99999)
            return r.choice([f"https://{h}-invoices.com/{n}", f"https://portal-{h}.com/invoices/{n}",
                             f"https://portal.{h}.com.invoices-{r.randint(2, 99)}.app/{n}"])
        if key == "bank":
            return r.choice(["Barclays", "ING", "Santander", "HSBC", "Deutsche Bank", "Nordea", "Lloyds", "BNP"])
        if key == "shortlink":  # a link shortener: used by neighbours and by spammers alike
            return (r.choice(["https://bit.ly/", "https://tinyurl.com/", "https://t.ly/", "https://rb.gy/"]) +
                    "".join(r.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6)))
        if key == "tracklink":
            carrier = r.choice(["parcelhub", "shipfast", "postnord", "dpd"])
            return f"https://track.{carrier}.com/{r.randint(10**8, 10**9)}"
        if key == "signuplink":
            return f"https://{_host(r.choice(_LIST['club']))}.org/{r.choice(['signup', 'events', 'join'])}"
        if key == "doclink":
            site = r.choice(["acme", "teamhub", "intranet"])
            return f"https://docs.{site}.example/{r.choice(['d', 's', 'f'])}/{r.randint(1000, 99999)}"
        raise KeyError(f"unknown slot {{{key}}}")


# ---------------------------------------------------------------------------------------------- templates
# E-mail kinds: {"w": weight within the label, "subject": [...], "body": [[first sentence], [optional], ...],
# "sign": [...], optional "fixed": n}. The body is the first group's sentence plus one of each of the next n groups
# (always) and, each with probability 0.7, one of every further group (two extra sentences at most); a sign-off
# follows with probability 0.8.

# Mild label ambiguity: a shop's promotional mail is ham when the reader signed up for it and spam when not,
# and the text does not say which; the ham kind "promo" and the spam kind "cold_promo" share these templates.
_PROMO = {"w": 0.05, "fixed": 0, "subject": [
    "{pct}% off at {shop} this weekend", "New at {shop}: {product}", "{shop}: our {month} offers",
    "A little something from {shop}", "Last days of the {shop} sale"], "body": [
    ["Everything at {shop} is {pct}% off until {weekday}.", "We picked {product} for you, now from {price}.",
     "Our {month} sale has started, with {n} items reduced.", "Good news: {product} is back in stock at {shop}."],
    ["Shop online or visit us in {city}.", "Free delivery on orders over {small}.",
     "Use the code {ticker}{few} at checkout.", "Members also get early access to the next sale."],
    ["You receive this email because your address is on our list; unsubscribe any time.",
     "Offer valid while stocks last.", "We hope to see you soon."]],
    "sign": ["The {shop} team", "{shop}", "{first} at {shop}"]}

_EMAIL = {
    "spam": {
        "phishing": {"w": 0.20, "subject": [
            "Action required: your {brand} account is suspended", "Unusual sign-in attempt on your {brand} account",
            "Security alert: confirm your {brand} login", "Your {brand} mailbox is almost full",
            "Final warning: {brand} account verification", "Your {brand} password expires today",
            "[{brand}] Your access has been limited"], "body": [
            ["We detected unusual activity on your {brand} account from a device in {city}.",
             "Your {brand} account has been temporarily suspended due to a security issue.",
             "Dear customer, our system flagged a failed sign-in to your {brand} account on {date}.",
             "Your mailbox storage is {pct}% full and new messages will be rejected.",
             "We were unable to validate your billing information with {brand}."],
            ["To restore access, verify your login at {badlink} within {hours} hours.",
             "If this was not you, review your recent sign-ins at {brandfake}",
             "If this was not you, change your password at {brandfake}",
             "Please confirm your identity here: {badlink}",
             "Log in at {badlink} to keep your account active.",
             "Click the secure link below to update your details: {badlink}"],
            ["Failure to do so will result in permanent closure of your account.",
             "If you ignore this message your files will be deleted.",
             "This is an automated message, please do not reply.",
             "We apologise for any inconvenience this may cause."]],
            "sign": ["The {brand} Security Team", "{brand} Support", "Account Services, {brand}"]},
        "invoice_scam": {"w": 0.18, "subject": [
            "Overdue invoice {inv}", "FINAL NOTICE: payment outstanding", "Re: unpaid invoice {inv}",
            "Invoice {inv} - immediate payment required", "Updated bank details for invoice {inv}",
            "Outstanding balance of {price}"], "body": [
            ["Our records show invoice {inv} for {price} is now {days} days overdue.",
             "Please find attached the outstanding invoice, payment is required today.",
             "We have updated our bank details, please send the balance of {price} to the new account.",
             "Open the attached file to view your unpaid balance of {price}."],
            ["Kindly pay now through {badlink} to avoid late fees.",
             "Failure to pay within {hours} hours will result in legal action.",
             "Wire the amount today and reply with the transfer receipt.",
             "Your service will be cut off unless payment is received by {weekday}."],
            ["This is your final reminder.", "Ignore this notice at your own risk.",
             "Thank you for your prompt attention to this matter."]],
            "sign": ["Accounts Receivable", "{first} {last}, Billing Department", "Collections Dept."]},
        "prize": {"w": 0.15, "subject": [
            "Congratulations! You have won {prize}", "You are our lucky winner 🎉",
            "Lottery result: ticket {ticket} selected",
            "Claim {prize} now", "Notification of award: {amount}"], "body": [
            ["Your email address was selected in our international lottery draw and you have won {amount}.",
             "You are the lucky winner of {prize} in our {month} customer draw!",
             "Congratulations, your ticket {ticket} won the {month} jackpot of {amount}."],
            ["To claim your prize, reply with your full name, address and bank details.",
             "Just pay a small processing fee of {small} to release your reward.",
             "Claim it at {badlink} before the offer expires."],
            ["This offer expires in {hours} hours.", "Act now, unclaimed prizes go to the next winner.",
             "Keep this notification confidential until your reward is paid."]],
            "sign": ["Prize Department", "{first} {last}, Claims Agent", "International Lottery Board"]},
        "pharmacy": {"w": 0.12, "subject": [
            "Cheap {drug} online", "Save {pct}% on your meds", "No prescription needed for {drug}",
            "Men's health offer inside: {pct}% off",
            "Your discreet order of {drug}"], "body": [
            ["Order {drug} without a prescription and save up to {pct}% today.",
             "Top quality generic {drug} from our licensed online pharmacy at {small} per pill.",
             "Lose {few} kg fast with our new {drug} formula, no diet needed."],
            ["Discreet shipping worldwide, no doctor visit needed.", "Visit {badlink} for the limited time offer.",
             "Order today and get {n} extra pills free."],
            ["Satisfaction guaranteed or your money back.", "Stock is running out fast."]],
            "sign": ["Online Pharmacy Team", "Customer Care", "Dr. {last}, Health Advisor"]},
        "crypto": {"w": 0.15, "subject": [
            "Turn {small} into {amount} in {days} days", "Exclusive crypto opportunity",
            "Your {coin} profit is waiting",
            "The next 100x coin", "Private invitation: {coin} trading club"], "body": [
            ["Our AI trading bot doubles your {coin} in {days} days, guaranteed.",
             "Join {n} investors already earning {pct}% weekly returns with {coin}.",
             "Early buyers of {coin} made {amount} last month and it is only the beginning."],
            ["Send {small} in {coin} to our wallet to secure your spot.",
             "Register at {badlink} and start earning today.",
             "No experience needed, the system does everything for you."],
            ["Spots are limited, act now.", "This opportunity will not last.", "Withdraw your profits any time."]],
            "sign": ["{first} {last}, Senior Investment Advisor", "The Crypto Wealth Team", "Your account manager"]},
        "ceo_fraud": {"w": 0.10, "subject": [  # hard spam: no link, prize, drug or crypto words
            "Quick favour", "Are you available?", "Urgent request", "Need your help", "Confidential task"], "body": [
            ["{first}, are you at your desk right now?",
             "I am stuck in a meeting with {supplier} until {time} and can't talk on the phone.",
             "I need you to handle a small task for me discreetly before {time}."],
            ["Please pick up {few} {store} gift cards for a client, I will reimburse you this afternoon.",
             "I need {few} {store} gift cards of {small} each for a client gift before {time}.",
             "Send me the card codes by reply as soon as you have them."],
            ["Keep this between us for now, it is a surprise for {first2}.",
             "I will explain everything on {weekday}.",
             "Reply only by email, I am in back-to-back calls until {time}."]],
            "sign": ["{boss}", "Sent from my iPhone", "{boss} {last}, CEO"]},
        "advance_fee": {"w": 0.10, "subject": [  # hard spam
            "Business proposal", "Greetings from {country}", "Hello dear friend", "Mutual benefit",
            "Request for your cooperation"], "body": [
            ["I am {first} {last}, a lawyer in {country} handling the estate of a late client who shares your "
             "surname.",
             "Hello dear, I found your contact in {country} and I would like to discuss a business proposal of "
             "mutual benefit.",
             "I am a widow from {country} looking for a trustworthy partner to help move my late husband's funds."],
            ["You will keep {pct}% of the {amount} as compensation for your assistance.",
             "Kindly reply with your full name and phone number so we can proceed.",
             "The transaction is risk free and fully legal, it will be done by {date}."],
            ["This matter is strictly confidential.", "I await your urgent response by {weekday}.",
             "God bless you and your family."]],
            "sign": ["Barrister {first} {last}", "Mrs. {first} {last}", "Yours faithfully,\n{first} {last}"]},
        # Near-duplicates (hard spam): a genuine password-reset or invoice mail copied word for word except for a
        # detail -- a look-alike link (the service's name, but someone else's domain), a request for the password,
        # a change of bank account. Their first group of extra sentences is always there ("fixed": 1).
        "reset_phish": {"w": 0.12, "fixed": 1, "subject": [
            "Reset your {service} password", "Password reset requested", "{service}: password reset link",
            "Your {service} verification code"], "body": [
            ["You requested a password reset for your {service} account at {time} today.",
             "Someone, hopefully you, asked to reset the password of your {service} account on {date}.",
             "We received your request to reset your {service} password at {time}.",
             "Use code {code} to finish signing in to {service}; you asked for it a moment ago."],
            ["Use this link within 30 minutes to choose a new password: {fakelink}",
             "Open {fakelink} to set a new password; the link works once.",
             "To confirm it is you, reply with your current password and the code {code}.",
             "Enter your current password at {fakelink} to keep it working.",
             "If you did not request this, cancel the request here: {fakelink}"],
            ["If you did not request this, you can ignore this email and your password stays the same.",
             "For your security, we never ask for your password by email.",
             "For your security, the link expires in {few} minutes."]],
            "sign": ["The {service} team", "{service} Help Centre", "Thanks,\n{service}"]},
        "invoice_phish": {"w": 0.10, "fixed": 1, "subject": [
            "Invoice {inv} for PO {po}", "{supplier}: invoice {inv}", "Your invoice from {supplier} ({po})",
            "Payment due: invoice {inv} ({po})"], "body": [
            ["Please find attached invoice {inv} for purchase order {po} ({product}, {price}).",
             "Attached is our invoice {inv} covering the {product} delivered on {date} under {po}.",
             "As agreed, here is invoice {inv} for {po}, total {price} including VAT."],
            ["Please note our bank details have changed; the new account is on the attached invoice.",
             "From this invoice on, please pay to our new account at {bank}, the old one is closed.",
             "You can view and pay the invoice at {fakeportal}.",
             "Payments now go to our account at {bank}; please update it in your system before paying."],
            ["Thank you for your continued business.",
             "Contact me if anything on the delivery note does not match.",
             "Let us know if the purchase order number needs to change."]],
            "sign": ["{first} {last}\nAccounts, {supplier}", "Accounts team, {supplier}",
                     "Kind regards,\n{first} at {supplier}"]},
        "cold_promo": _PROMO,
    },
    "ham": {
        "work": {"w": 0.22, "subject": [
            "Notes from {weekday}'s standup", "Review request: {project}", "Draft {report} for comments",
            "Meeting moved to {time}", "Re: {project} deadline", "Code review for the {project} change",
            "Agenda for {weekday}"], "body": [
            ["Could you review my pull request for the {project} before {weekday}?",
             "Attached is the draft {report}; comments are welcome until {weekday}.",
             "The {project} sync moved to {time} on {weekday} in room {room}.",
             "Quick summary from today's standup: the {project} is on track for the {date} deadline.",
             "Thanks for fixing the flaky tests in the {project} yesterday."],
            ["{first2} from {team} will join us to talk about the budget.",
             "I left a few comments on the error handling, nothing blocking.",
             "Let me know if {time} does not work for you.", "The slides are in the team folder: {doclink}",
             "We still need numbers from the {team} team before we ship."],
            ["Thanks!", "Cheers, and have a good weekend.", "Happy to pair on it if that helps."]],
            "sign": ["{first}", "Best,\n{first}", "Thanks,\n{first} {last}"]},
        "personal": {"w": 0.20, "subject": [
            "Dinner on {weekday}?", "Photos from {place}", "Mum's birthday", "Trip to {city} in {month}",
            "Re: plans for {weekday}", "Hello from {city}"], "body": [
            ["Mum asked if we can all come for dinner on {weekday} around {time}.",
             "The photos from {place} are finally in the shared album.",
             "Are you still up for the trip to {city} in {month}?",
             "{first2} found cheap train tickets for a weekend in {city}.",
             "Happy birthday {first2}! Hope you have a lovely day with the kids."],
            ["I can bring dessert, maybe the {food} again.",
             "The kids loved {place}, {first2} already asks when we go back.",
             "Let me know and I'll book the table.", "I booked two nights at a small guesthouse near the old town."],
            ["Call me when you can.", "Say hi to {first2} and everyone!", "No rush, just let me know by {weekday}."]],
            "sign": ["Love,\n{first}", "{first}", "Hugs, {first}", "xx {first}"]},
        "real_invoice": {"w": 0.16, "subject": [  # hard ham: invoice, attached, payment, due
            "Invoice {inv} for PO {po}", "{supplier}: invoice {inv}", "Your invoice from {supplier} ({po})",
            "Payment due: invoice {inv} ({po})"], "body": [
            ["Please find attached invoice {inv} for purchase order {po} ({product}, {price}).",
             "Attached is our invoice {inv} covering the {product} delivered on {date} under {po}.",
             "As agreed, here is invoice {inv} for {po}, total {price} including VAT."],
            ["Payment is due within 30 days as per our supply agreement.",
             "The amount will be collected by direct debit on {date}, as usual.",
             "Please note our bank details are unchanged; only our address on the invoice is new.",
             "You can view and pay the invoice at {portallink}.",
             "From this invoice on, please pay to our account at {bank} within 30 days, as agreed.",
             "Payments go to our account at {bank}; the details are on the attached invoice."],
            ["Thank you for your continued business.",
             "Contact me if anything on the delivery note does not match.",
             "Let us know if the purchase order number needs to change."]],
            "sign": ["{first} {last}\nAccounts, {supplier}", "Accounts team, {supplier}",
                     "Kind regards,\n{first} at {supplier}"]},
        "real_password_reset": {"w": 0.14, "fixed": 1, "subject": [  # hard ham: password, link, verify, security
            "Reset your {service} password", "Password reset requested", "{service}: password reset link",
            "Your {service} verification code"], "body": [
            ["You requested a password reset for your {service} account at {time} today.",
             "Someone, hopefully you, asked to reset the password of your {service} account on {date}.",
             "We received your request to reset your {service} password at {time}.",
             "Use code {code} to finish signing in to {service}; you asked for it a moment ago."],
            ["Use this link within 30 minutes to choose a new password: {resetlink}",
             "Open {resetlink} to set a new password; the link works once.",
             "To confirm it is you, enter the code {code} on the sign-in page.",
             "Your current password keeps working until you open {resetlink}",
             "If you did not request this, cancel the request here: {resetlink}"],
            ["If you did not request this, you can ignore this email and your password stays the same.",
             "For your security, we never ask for your password by email.",
             "For your security, the link expires in {few} minutes."]],
            "sign": ["The {service} team", "{service} Help Centre", "Thanks,\n{service}"]},
        "order_confirmation": {"w": 0.13, "subject": [
            "Your order {order} is confirmed", "Thanks for your order from {shop}", "Order {order} has shipped",
            "Receipt for your {shop} order"], "body": [
            ["Thanks for your order of {product} ({price}) from {shop}.",
             "Good news: your order {order} has shipped and should arrive on {weekday}.",
             "We received your payment of {price} for order {order}."],
            ["You can track the parcel at {tracklink}.", "Your receipt is attached to this email for your records.",
             "Delivery to {city} usually takes {days} working days."],
            ["Questions? Just reply to this email.", "Thanks for shopping with us!"]],
            "sign": ["The {shop} team", "{shop} customer service", "{first} at {shop}"]},
        "newsletter": {"w": 0.15, "subject": [  # hard ham: free, winner, limited, congratulations
            "{club} newsletter: {month} events", "This week at the {club}", "Free entry for members this {weekday}",
            "{club}: results of the spring contest"], "body": [
            ["Members get free entry to the {event} this {weekday}.",
             "Our {month} programme is out, with {few} new workshops on {hobby}.",
             "Congratulations to {first2} {last}, winner of our spring photo contest!"],
            ["Sign up at the front desk or on our website.",
             "Places are limited, so register early if you want to join.",
             "The full schedule is on the notice board and at {signuplink}."],
            ["You receive this because you are a member; unsubscribe any time.",
             "See you there!"]],
            "sign": ["The {club} committee", "{first}, volunteer coordinator", "{club}"]},
        "urgent_notice": {"w": 0.12, "fixed": 0, "subject": [  # hard ham: urgent, final, expires, money, won
            "URGENT: {project} is down", "Final reminder: expense claims due {weekday}",
            "Action required: approve {po} today", "{service}: your password expires in {days} days",
            "Your refund of {price}", "You won the {team} bake-off!", "Immediate action: fire drill on {weekday}"],
            "body": [
            ["The {project} has been failing since {time}, can you look at it urgently?",
             "Final reminder: submit your {month} expense claims by {weekday} or they move to next month.",
             "Please approve the {price} order for {product} today, {supplier} needs it before {time}.",
             "Your password for {service} expires in {days} days; change it in the app under Settings as usual.",
             "Your refund of {price} for order {order} has been sent to your card and should arrive in {days} days.",
             "Congratulations, you won the {team} team bake-off and the prize is a {shop} voucher!",
             "Your bonus of {price} will be paid with the {month} salary, well deserved."],
            ["Act now if you can, {boss} wants an update before {time}.",
             "This is the last reminder before the books close on {date}.",
             "There is no link in this mail on purpose: open {service} yourself.",
             "Reply to me directly if the amount looks wrong."],
            ["Thanks for jumping on this so fast.", "Sorry for the short notice.", "Talk soon."]],
            "sign": ["{first}", "IT Service Desk", "{first} {last}, Finance", "HR team", "Thanks,\n{first}"]},
        "security_alert": {"w": 0.08, "fixed": 1, "subject": [  # hard ham: a genuine alert, phishing's twin
            "Unusual sign-in attempt on your {brand} account", "Security alert for your {brand} account",
            "New sign-in to your {brand} account", "Your {brand} mailbox is almost full"], "body": [
            ["We detected unusual activity on your {brand} account from a device in {city}.",
             "Dear customer, our system flagged a failed sign-in to your {brand} account on {date}.",
             "Your mailbox storage is {pct}% full and new messages will be rejected.",
             "Someone signed in to your {brand} account from a new device in {city}."],
            ["If this was not you, review your recent sign-ins at {brandlink}",
             "If this was not you, change your password at {brandlink}",
             "If this was you, there is nothing to do.",
             "Open the {brand} app yourself to check; we do not put sign-in links in these mails."],
            ["This is an automated message, please do not reply.",
             "{brand} will never ask for your password by email.",
             "We apologise for any inconvenience this may cause."]],
            "sign": ["The {brand} Security Team", "{brand} Support", "Account Services, {brand}"]},
        "promo": _PROMO,
    },
}

# Social kinds: {"w", "main": [...], "extra": [...], "tags": [...], optional "pool", "lure"}: one main sentence,
# extra sentences (from the kind's list and a shared list: the label's own, or "pool": the other label's, or None)
# until the text has enough words, then, with a "lure" list, one lure sentence somewhere after the main one, then
# emoji and hashtags.

# Shared extras: each domain's spam and ham speak differently from e-mail's (social spam is chatty and friendly,
# social ham says "please", "send", "reply", "free", "now"), so cues learnt on e-mail only partly carry over.
_SOCIAL_SPAM_EXTRA = ["Thanks for the support, see you on the other side 🙌", "Good vibes only this weekend!",
                      "Let me know if you want in.", "Have a good week everyone 😊", "See you there!",
                      "Still a few left for the weekend.", "Don't miss out!", "Thank me later 😉",
                      "Offer ends tonight!", "Trust me on this one.", "Hurry, only a few spots left ⏰",
                      "Limited time only 💯", "Serious people only.", "Act fast, this won't last."]
_SOCIAL_HAM_EXTRA = ["Please share with anyone who might need it!",
                     "Reply here if you need a lift, we leave at {time}.",
                     "Send me your photos from today please!", "Feel free to send me your photos now!",
                     "Will post more now that I'm home.", "Your turn next time!", "Sending love from {city} ❤️",
                     "Thanks {first} for the offer to help!", "What a week it has been 😅", "Anyone else going?",
                     "Have a great weekend everyone!", "Miss you all, see you soon!", "Can't wait for summer 🌞",
                     "Hope everyone is doing well."]

_COMMENT_MAIN = [
    "Congrats {handle}, so proud of you! 🎉 You worked so hard for this.",
    "This made my day 😂 {first}, you need to see this one.",
    "Beautiful shot of {place}, the light at sunset is perfect 😍",
    "Love this {first}! Your garden looks amazing this year, the {veg} are huge 🌻",
    "Happy birthday {first}! Hope you have a wonderful day with the family 🎂",
    "That {food} looks incredible, you really outdid yourself this time 😋"]
_QUESTION_MAIN = [
    "Does anyone know if {place} is open on {weekday}? Planning to go with the kids.",
    "Which {gadget} would you recommend for a beginner? Budget is around {price}.",
    "Can someone recommend a good plumber in {city}? Ours cancelled again 😩",
    "Is the {event} still happening this weekend with all the rain?",
    "Any tips for getting into {hobby}? I finally have some free time on weekends."]
# Mild label ambiguity: a glowing product recommendation is ham from a happy customer and spam from a paid,
# undisclosed account, and the text does not say which; "recommendation" (ham) and "stealth_ad" (spam) share it.
_RECOMMEND = {"w": 0.10, "pool": None, "main": [
    "Honestly the best {gadget} I've ever bought, {shop} has it for {price} this week 😍",
    "Been using the {product} from {shop} for a month now, can't go back.",
    "If you need {product}, {shop} in {city} has {pct}% off right now.",
    "Obsessed with my new {gadget} from {shop}, worth every penny ✨"], "extra": [
    "Not sponsored, just happy.", "Highly recommend.", "Ten out of ten.", "Go have a look!", "They ship fast too.",
    "Thank me later 😉", "Can't believe I waited this long."],
    "tags": ["#review", "#shopping", "#recommended", "#haul"]}

_SOCIAL = {
    "spam": {
        "follow4follow": {"w": 0.19, "main": [
            "Follow for follow {emoji} drop your @ below and I follow back within {hours} hours!",
            "Who wants more followers? Follow me and everyone who likes this post, I follow back {emoji}",
            "Gain {few}k real followers in {days} days, just follow {handle} and turn on notifications!",
            "f4f anyone? I follow back everyone who follows me before {weekday} 🙌",
            "Follow me + like my last {n} posts and I will do the same for you, promise!"], "extra": [
            "Like this post so we all grow together.", "Comment done when you followed and I will check.",
            "Let's help each other hit {few}k this week!", "No unfollowing, I check every day 👀"],
            "tags": ["#f4f", "#followforfollow", "#followback", "#likeforlike", "#l4l", "#instagood",
                     "#follow4follow"]},
        "dm_me": {"w": 0.19, "main": [
            "DM me for a {pct}% off deal on {gadget}s, only {n} left 💸",
            "Want to earn {price} a week from your phone? DM me 'INFO' 📩",
            "Looking for {n} people who want to make money online, DM me now!",
            "Selling brand new {gadget}s cheap, DM for price, shipping today 📦",
            "{handle} nice {hobby} pics! DM me, we pay {price} per sponsored post 💸"], "extra": [
            "No experience needed, I will show you everything.", "First come first served.",
            "Cash or crypto accepted.", "Check your DMs 📩"],
            "tags": ["#dm", "#deal", "#sidehustle", "#workfromhome", "#makemoneyonline", "#sale"]},
        "giveaway": {"w": 0.17, "main": [
            "🎉 GIVEAWAY 🎉 We are giving away {few} {gadget}s! Like, share and tag 3 friends to enter.",
            "Win a free {gadget}! Follow {handle}, like this post and tag your friends 🎁",
            "Huge giveaway: {price} in {store} gift cards to {n} lucky people, comment 'ME' to enter!",
            "We are giving away {prize} to our first {n} followers, just share this post 🎁"], "extra": [
            "Winners picked tonight!", "Must be following to win 😉", "Share to your story for a double entry.",
            "Claim your prize through the link in our bio."],
            "tags": ["#giveaway", "#free", "#win", "#contest", "#giveawayalert", "#freebies"]},
        "link_in_bio": {"w": 0.17, "main": [
            "Lost {n} kg in {days} days with this one simple trick 😱 link in bio",
            "I made {price} this month from home, the free guide is in my bio 👆",
            "Doctors in {city} hate this! Get the secret method, link in my bio",
            "Want clear skin in {days} days? The product that changed my life is linked in my bio ✨",
            "{pct}% off everything today only 🔥 tap the link in bio before it sells out"], "extra": [
            "Only available this week.", "Hurry, the price goes up tomorrow.",
            "Thousands of happy customers already.", "Works for everyone, guaranteed."],
            "tags": ["#passiveincome", "#weightloss", "#linkinbio", "#glowup", "#success", "#deals"]},
        "crypto": {"w": 0.16, "main": [
            "{handle} great post! I made {price} with ${ticker} this week 🚀🚀 check my profile",
            "${ticker} is going 100x, get in before it is too late 🚀",
            "Stop working for a boss, my {coin} signals group made {pct}% profit this week 💰",
            "This token will change everything, early holders already up {pct}% 🌕",
            "Turned {small} into {amount} with {coin} in {days} days, ask me how 💎"], "extra": [
            "Not financial advice but you will thank me later.", "Join the group before it closes.",
            "Send me a message and I'll add you 💎🙌", "The presale ends tonight."],
            "tags": ["#crypto", "#bitcoin", "#altcoin", "#tothemoon", "#web3", "#hodl"]},
        "ambassador": {"w": 0.12, "main": [  # hard spam: no follow, DM, link, free or giveaway
            "Hey love your feed! We would like to work with you as a brand ambassador for {shop} 💕",
            "Hi! Your {hobby} photos are amazing, we want to collaborate with you, message our page {handle} ✨",
            "Nice {hobby} pic 😍 you should check out my page, I think you'd like what you see",
            "Hello dear {first}, I saw your profile and would like to know you better, can we talk privately?"],
            "extra": [
            "Write to {handle} to get started.", "We only pick {few} accounts each month.",
            "You get products plus commission on every sale.", "Waiting for your reply 💕"],
            "tags": ["#ambassador", "#collab", "#brandpartner", "#influencer"]},
        # Near-duplicates (hard spam): an ordinary comment or question, with the ordinary extras, plus one subtle
        # lure (a shortened link, "ask me", a discount code, money made "on the side").
        "lure_comment": {"w": 0.30, "pool": "ham", "main": _COMMENT_MAIN + _QUESTION_MAIN, "extra": [], "lure": [
            "btw {first} got a {gadget} for {small} here {shortlink}",
            "ps I paid off my car with a little app I use on the side, ask me 😊",
            "unrelated but I just got paid {price} for testing apps 😅",
            "also {shop} has {pct}% off with my code {ticker}{few}, go quick",
            "oh and the {gadget} I told you about is half price at {shortlink}",
            "my cousin makes {price} a week with this now {shortlink}",
            "if you need {product} I get mine at half price through {handle3}, trust me",
            "anyway I've been earning a bit from home lately, happy to share how 😊",
            "side note, {first} and I both use {shortlink} for cheap {gadget}s now",
            "also I'm doing a draw for {store} gift cards on my page this week, just saying 😉",
            "ps my {gadget} came from {shortlink}, way cheaper than the shops",
            "haha also the app I told you about paid out again today 🙌"],
            "tags": []},
        "stealth_ad": _RECOMMEND,
    },
    "ham": {
        "comment": {"w": 0.20, "main": _COMMENT_MAIN, "extra": [
            "Can't wait to see what you do next.", "We should do this again next summer.",
            "Still laughing about last time 😂", "You deserve it!"],
            "tags": []},
        "question": {"w": 0.17, "main": _QUESTION_MAIN, "extra": [
            "Thanks in advance!", "Any tips welcome 🙏", "Asking for a friend 😅",
            "Last time we went it was closed."],
            "tags": []},
        "news_share": {"w": 0.15, "main": [
            "The city council approved the new bike lanes on {street} 🚲 full story in {paper}.",
            "Interesting read from {paper} about {topic}, worth your time.",
            "Good news for {city}: the old library reopens on {date} after the renovation 📚",
            "Sharing this article about {topic}, worth a read if you have kids.",
            "{paper} says the {event} moves to {street} this year because of the roadworks."], "extra": [
            "About time!", "Curious what you all think.", "Finally some good news this week.",
            "The comments under the article are wild 😅"],
            "tags": ["#localnews", "#community"]},
        "event": {"w": 0.14, "main": [
            "Who's coming to the {event} on {weekday}? We meet at {time} by {place} 🎶",
            "Tickets for the {event} are almost gone, see you all there on {weekday}!",
            "Great turnout at the {event} last night, thanks to everyone who came 🙌",
            "The {club} is hosting a {event} on {date}, everyone welcome, bring a friend."], "extra": [
            "Bring snacks!", "It starts at {time} sharp.", "Kids are welcome too.", "Hope the weather holds 🤞"],
            "tags": ["#community", "#weekend", "#localevents"]},
        "real_giveaway": {"w": 0.12, "main": [  # hard ham: giveaway, winner, free
            "The book giveaway winner was announced on the library page, congrats {handle} 📚",
            "Our school fair raffle raised {price} for the new playground, winners are listed on the school website.",
            "We did a small giveaway of {food} and seedlings at the community garden on {weekday}, thanks to all "
            "who came 🌱",
            "The {club} gave away free tickets for the {event}, {first} from our street won two!"], "extra": [
            "Thanks to all the volunteers.", "Such a lovely idea, let's do it again next year.",
            "The kids were so excited 😊"],
            "tags": ["#community", "#library", "#volunteers"]},
        "dm_request": {"w": 0.10, "main": [  # hard ham: "DM me"
            "DM me the recipe please, that {food} looks delicious 😋",
            "{handle} can you DM me the name of that cafe in {city}? I need to go there.",
            "I lost your number {first}, DM me your new one so I can add you to the family group.",
            "If anyone found a {color} scarf at the {event}, DM me please, it was my grandmother's."], "extra": [
            "Thank you so much!", "No rush at all.", "Would really appreciate it 🙏"],
            "tags": []},
        "link_share": {"w": 0.12, "main": [  # hard ham: link, bio
            "The slides from my talk at {conf} are linked in my bio if anyone wants them.",
            "Here's the signup for {event} volunteers: {signuplink} 🙏",
            "Our club's {month} newsletter is up, link in bio for the full schedule.",
            "Photos from the {event} are in the album, link in my bio, tag yourselves!"], "extra": [
            "Feedback welcome.", "Thanks to everyone who helped.", "Feel free to share."],
            "tags": ["#community", "#meetup", "#slides"]},
        "aside_comment": {"w": 0.16, "pool": "ham", "main": _COMMENT_MAIN + _QUESTION_MAIN, "extra": [], "lure": [
            "btw {first} got a {gadget} for {small} at the {event} in the end",  # lure_comment's twin, no lure
            "ps the {food} recipe is here {shortlink}",
            "oh and the {gadget} I told you about is half price at {shop} this week",
            "also the {event} photos are up at {shortlink}",
            "unrelated but I just got the {hobby} job I applied for 😅",
            "my cousin makes {food} like this now, ask me for her recipe 😊",
            "if you need {product} I get mine at the market on {street}, trust me",
            "anyway I've been baking a bit from home lately, happy to share how 😊",
            "side note, {first} and I both go to the {hobby} class at {place} now",
            "also I'm doing the {event} this week, just saying 😉",
            "ps my {gadget} came from {shop}, way cheaper than the others",
            "haha also the bus I told you about was late again today 🙌"],
            "tags": []},
        "mention": {"w": 0.14, "main": [  # hard ham: giveaways, DMs, links, "follow", "free", money, legitimately
            "My sister actually won the {shop} giveaway and the {gadget} arrived today 😂",
            "Thanks for all the DMs about the {event}, I'll answer everyone tonight!",
            "Go follow {handle}, she takes the best photos of {place} 📸",
            "Free {veg} seedlings outside our house on {street}, take what you need 🌱",
            "The fundraiser for the {club} is at {shortlink}, every {small} helps 🙏",
            "Finally paid off the car loan 🎉 took {few} years but we did it!",
            "Got my {gadget} half price at {shop} last week, so happy with it.",
            "Two free tickets for the {event} if anyone wants them, DM me, we can't go anymore 😩",
            "The {food} recipe I promised: {shortlink} thank me later 😋",
            "Ask me how the {hobby} class went 😅 {first} says I was a natural."], "extra": [
            "No catch, just clearing space.", "Thanks again everyone 🙏", "Still can't believe it."],
            "tags": []},
        "recommendation": _RECOMMEND,
    },
}

#: The subtype kinds of each domain and label (the ``kind`` field of a record).
KINDS = {d: {label: tuple(kinds) for label, kinds in t.items()} for d, t in (("email", _EMAIL), ("social", _SOCIAL))}


def _email(kind: dict, rng: random.Random) -> str:
    slots = _Slots(rng)
    body = [rng.choice(kind["body"][0])]
    fixed, groups = kind.get("fixed", 0), kind["body"][1:]
    extra = groups[:fixed] + [g for g in groups[fixed:] if rng.random() < 0.7] or [rng.choice(groups)]
    body += [rng.choice(g) for g in extra[:2]]
    text = "Subject: " + rng.choice(kind["subject"]) + "\n\n" + " ".join(body)
    if rng.random() < 0.8:
        text += "\n\n" + rng.choice(kind["sign"])
    return text.format_map(slots)


def _social(label: str, kind: dict, rng: random.Random) -> str:
    slots = _Slots(rng)
    parts = [rng.choice(kind["main"])]
    if rng.random() < 0.25 and not parts[0].startswith("{handle}"):  # a reply to someone
        parts.insert(0, "{handle2}")
    pool = kind.get("pool", label)  # the shared extras: the label's own, the other label's (camouflage) or none
    extras = kind["extra"] + {"spam": _SOCIAL_SPAM_EXTRA, "ham": _SOCIAL_HAM_EXTRA, None: []}[pool]
    extras = rng.sample(extras, len(extras))
    want = rng.choice([MIN_WORDS, MIN_WORDS + 3, MIN_WORDS + 8])
    while extras and (len(" ".join(parts).split()) < want or rng.random() < 0.2):
        parts.append(extras.pop())
    if kind.get("lure"):  # one subtle lure, anywhere after the main sentence
        parts.insert(rng.randint(1 + (parts[0] == "{handle2}"), len(parts)),
                     rng.choice(kind["lure"]))
    if rng.random() < 0.5:
        parts.append(rng.choice(_LIST["emoji"]))
    tags = kind["tags"] if kind["tags"] and rng.random() < 0.7 else _LIST["tag"]
    parts += rng.sample(tags, rng.randint(0, min(3, len(tags))))
    return " ".join(parts).format_map(slots)


def _kind(domain: str, label: str, rng: random.Random) -> str:
    table = (_EMAIL if domain == "email" else _SOCIAL)[label]
    return rng.choices(list(table), weights=[k["w"] for k in table.values()])[0]


def _message(domain: str, label: str, kind: str, rng: random.Random) -> str:
    spec = (_EMAIL if domain == "email" else _SOCIAL)[label][kind]
    for _ in range(50):
        text = _email(spec, rng) if domain == "email" else _social(label, spec, rng)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return text
    raise RuntimeError(f"messages: no {domain}/{label}/{kind} text of {MIN_WORDS}-{MAX_WORDS} words in 50 draws")


def _check(domain: str, n: int) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain: {domain!r} is not a built-in domain; valid: {', '.join(DOMAINS)}")
    if n < 0:
        raise ValueError(f"n: {n} is negative; give 0 or more messages")


def _records(domain: str, labels: list[str], rng: random.Random) -> list[dict]:
    seen: set[str] = set()
    out = []
    for label in labels:
        kind = _kind(domain, label, rng)
        for _ in range(20):  # avoid repeats within one set
            text = _message(domain, label, kind, rng)
            if text not in seen:
                break
        seen.add(text)
        out.append({"text": text, "label": label, "domain": domain, "kind": kind})
    return out


def generate(domain: str, n: int, seed: int = 0, spam_share: float = 0.5) -> list[dict]:
    """``n`` labelled messages of ``domain``: ``{"text", "label", "domain", "kind"}`` records, ``round(n *
    spam_share)`` of them spam, shuffled. The same (domain, n, seed) gives the same records."""
    _check(domain, n)
    if not 0.0 <= spam_share <= 1.0:
        raise ValueError(f"spam_share: {spam_share} is outside 0..1")
    rng = random.Random(f"nbft.messages:generate:{domain}:{seed}")
    n_spam = round(n * spam_share)
    labels = ["spam"] * n_spam + ["ham"] * (n - n_spam)
    rng.shuffle(labels)
    return _records(domain, labels, rng)


def unlabelled(domain: str, n: int, seed: int = 0) -> list[str]:
    """``n`` texts of ``domain`` without labels (about half spam), from a seed stream that ``generate`` with the
    same seed does not use, so they are not the labelled texts."""
    _check(domain, n)
    rng = random.Random(f"nbft.messages:unlabelled:{domain}:{seed}")
    return [r["text"] for r in _records(domain, [rng.choice(LABELS) for _ in range(n)], rng)]


# ------------------------------------------------------------------------------------------------ the judge

#: The judge's spam cues: (regex over the lower-cased text, weight); each counts once.
JUDGE_SPAM_CUES = [
    # urgency and threats
    (r"\bact now\b|\burgent|immediate|today only|before it('s| is) too late|\bhurry\b|ends tonight|last chance"
     r"|miss out|running out|expires? in \d+|within \d+ hours|goes up tomorrow", 1.0),
    (r"final (notice|warning|reminder)|at your own risk", 1.0),
    (r"suspend|unusual (activity|sign-in)|permanent closure|will be deleted|access has been limited|cut off"
     r"|will be rejected|unable to validate", 2.0),
    (r"verify your|confirm your (identity|details|login)|validate your|update your (details|card)", 1.5),
    (r"legal action|late fees|\bcollections?\b", 1.5),
    # prizes
    (r"\bwon\b|\bwinners?\b|\bwin\b", 1.0),
    (r"prize|lottery|jackpot|\blucky\b|\baward\b", 1.5),
    (r"\bclaim", 1.0),
    (r"processing fee|release your reward|bank details|\breward\b", 2.0),
    # money and investment
    (r"guarantee", 1.0),
    (r"\breturns\b|\bprofits?\b|investors?|investment|100x|double[sd]? your|up \d+%", 2.0),
    (r"make money|\bearn(ing)?\b|passive income|side ?hustle|from (home|your phone)|a (day|week) from", 1.5),
    (r"commission|sponsored|we pay", 1.0),
    (r"\bcrypto|bitcoin|ethereum|dogecoin|solana|usdt|xrp|\btoken\b|presale|wallet|trading", 1.5),
    (r"\$[a-z]{3,}|🚀|💎|🌕|to the moon|not financial advice", 1.5),
    # invoice fraud
    (r"overdue|outstanding|unpaid", 1.5),
    (r"wire the|transfer receipt|new account|updated (our )?bank details|service will be", 2.0),
    # links and contact bait
    (r"(https?://|www\.)\S*\.(xyz|top|click|info|biz|live|ru|online|co|net)\b"
     r"|(secure|verify|login|claim|account|update)-?[a-z]+\.[a-z]{2,}", 2.0),
    (r"link in (my |our )?bio|linked in my bio|in my bio", 1.5),
    (r"\bdm me\b(?! the)|\bdm for\b|check your dms|\bdms\b", 1.5),
    (r"check (out )?my (page|profile)|talk privately|know you better", 2.0),
    (r"message (our|me)|send me a message|write to @|\bselling\b|\bcheap\b", 1.0),
    # social growth and fake giveaways
    (r"follow ?(for|4) ?follow|\bf4f\b|\bl4l\b|follow ?back|followers|like for like|turn on notifications"
     r"|like my last|grow together", 3.0),
    (r"tag (\d+|your) friends|like,? (and )?share|comment '|must be following|double entry|share this post"
     r"|winners? picked|to enter", 2.5),
    (r"giving away|giveaway|\bfree\b", 0.5),
    # pharmacy and weight loss
    (r"prescription|\bmeds\b|pharmacy|\bpills?\b|doctor", 2.0),
    (r"viagra|cialis|xanax|ozempic|tramadol|valium|phentermine|adderall", 2.0),
    (r"lose weight|lost \d+ kg|weight ?loss|doctors hate|clear skin|secret method|one simple trick", 2.0),
    # the quieter scams: gift-card favours, advance fees, fake partnerships
    (r"gift cards?", 1.5),
    (r"reimburse|card codes|between us|at your desk|can't talk|back-to-back|discreet", 1.5),
    (r"business proposal|mutual benefit|cooperation", 1.5),
    (r"trustworthy|late (client|husband)|\bfunds\b|estate of|shares your surname", 1.5),
    (r"compensation|risk free|strictly confidential|god bless|yours faithfully|\bdear\b|\bkindly\b|full name", 1.0),
    (r"ambassador|collaborate with you|work with you|love your feed|few accounts|your profile", 2.0),
    (r"\b\d+% off|free guide|limited (time|spots|offer)|serious people|first come|no experience|happy customers"
     r"|cash or crypto|sells out", 1.5),
    (r"confidential|spots? (are )?limited|secure your spot|selected", 0.5),
    # the details of near-duplicates: a look-alike link (a hyphenated host, or a known name followed by more
    # domain), a request for the password, a changed bank account, a lure tucked into a friendly comment
    (r"https?://[a-z0-9.]*[a-z0-9]-[a-z0-9.-]*\.[a-z]{2,}|https?://[a-z0-9]+\.(com|org)[.-][a-z0-9]", 5.5),
    (r"(reply with|send us|enter|type|confirm) your (current |old |existing )?password", 5.5),
    (r"(bank|payment) details (have|has) (changed|been updated)|our new (bank )?account|(account|one) is closed"
     r"|payments now go", 5.5),
    (r"\b(bit\.ly|tinyurl\.com|t\.ly|rb\.gy)/", 1.0),
    (r"got paid|paid (off my|out)|on the side|my code|on my page|go quick|through @|makes? (\S+ ){1,2}a (week|day)"
     r"|(half price|% off|for (\S+ ){1,2}here) (at )?https?://|(from|use) https?://", 4.0),
]
#: The judge's legitimising cues: (regex, weight) subtracted from the score.
JUDGE_HAM_CUES = [
    (r"you requested|you asked for|if you did not request|never ask for your password|hopefully you", 3.0),
    (r"\bpo[-# ]?\d+|purchase order|supply agreement|as agreed|direct debit|unchanged|delivery note", 3.0),
    (r"thanks for (your order|shopping)|order #\d+|track the parcel|receipt is attached|has shipped", 2.5),
    (r"pull request|standup|\bsync\b|draft|review|budget|deadline|slides|team folder|agenda|in room", 2.0),
    (r"dinner|birthday|photos|album|kids|\bmum\b|trip|train tickets|guesthouse|love,|hugs", 1.5),
    (r"members?\b|unsubscribe|newsletter|workshops?|notice board|committee|volunteer|library|school|community", 2.0),
    (r"recipe|cafe|scarf|family group|congrats|proud of you|outdid|sunset|garden|plumber|recommend|any tips", 1.5),
    (r"council|article|gazette|herald|chronicle|\bnews\b|announced|raffle|seedlings|my talk", 1.5),
    (r"if this was you|nothing to do|(open|in) the \w+ app|as usual|no catch|fundraiser|my sister|if anyone wants"
     r"|expense|salary|short notice", 2.0),
]
_SPAM_RE = [(re.compile(c), w) for c, w in JUDGE_SPAM_CUES]
_HAM_RE = [(re.compile(c), w) for c, w in JUDGE_HAM_CUES]
#: The score at or above which the judge says spam.
JUDGE_THRESHOLD = 2.0


def judge_score(text: str) -> float:
    """The judge's score of ``text``: the weights of the spam cues it contains minus those of the legitimising
    cues (each cue once)."""
    t = text.lower()
    plain = re.sub(r"[#@]\S+", " ", t)  # hashtags and handles cost nothing: they do not make a text legitimate
    return sum(w for r, w in _SPAM_RE if r.search(t)) - sum(w for r, w in _HAM_RE if r.search(plain))


def judge(text: str) -> bool:
    """The judge: True when ``text`` reads as spam. An independent programmatic rule, not a lookup of this module's
    templates: a weighted score of cues (urgency and threats, money and prizes, suspicious links, "link in bio" and
    "DM me", follow-for-follow, fake-giveaway mechanics, pharmacy and crypto words, gift-card and advance-fee
    favours) minus legitimising cues ("you requested", PO numbers and supply agreements, order confirmations,
    work, family, club and news talk); spam when the score reaches ``JUDGE_THRESHOLD``. It works on any text,
    including what a language model writes in the conditional-pretraining experiment."""
    return judge_score(text) >= JUDGE_THRESHOLD
