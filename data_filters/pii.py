"""PII: find personal data and secrets in chat turns; redact them to typed placeholders or drop the row.

Structured types are regex candidates confirmed by a validator, so random digits rarely pass: cards by
issuer prefix + Luhn, IBANs by country length + mod-97, phones by libphonenumber, SSNs by the SSA's
allocation rules, IPs by `ipaddress`. Secrets: AWS/GitHub/Slack/Stripe/Google key formats, PEM private
key blocks, and high-entropy tokens (after a `key=`-style assignment, or long and random on their own).
Street addresses and person names are rule-based (street suffixes; "my name is", titles, salutations):
Presidio's NER-backed recognizers need a spaCy model that is not published on PyPI, so cannot be
installed offline here. Presidio's pattern recognizers do run offline and are an optional engine
(`engine: presidio | both`, see pii_presidio.py), ~40x slower than this one. Literal triggers pick the
texts each regex scans, so text without PII costs little more than a few str.find passes.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import math
import re
from collections import Counter

from data_filters.base import AsciiTexts, FilterError, FilterResult, Joined, merge_spans, redact, turns

TYPES = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET", "ADDRESS", "NAME"]
PLACEHOLDER = {t: f"<{t}>" for t in TYPES}

DEFAULTS = {
    "action": "redact",  # redact | drop
    "actions": {},  # per-type override, e.g. {SECRET: drop}
    "types": list(TYPES),
    "roles": ["system", "user", "assistant"],
    "allow": [],  # exact strings never treated as PII (e.g. a support address you want to keep)
    "phone_region": "US",  # region for numbers written without a +country code
    "engine": "builtin",  # builtin | presidio | both (Presidio's AnalyzerEngine: far slower, see pii_presidio)
    "spacy_model": None,  # presidio engine: a trained spaCy model dir for its PERSON/LOCATION recognizers
    "score_threshold": 0.3,  # presidio engine: minimum score (its phone recognizer scores 0.4)
}

EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b"
)
# Patterns start with a character class, not a look-behind, so `re` can skip ahead to candidate starts;
# the word-boundary checks a look-behind would do happen in `_clean_edges` instead.
# Digit runs that may be a card, a phone, an SSN or an IPv4: digits, separators, + and (area code).
DIGITS = re.compile(r"[+(\d][\d \t.\-/()]{5,24}\d")
SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*(?:is|:|#)?\s*(\d{9})\b")
IBAN = re.compile(r"([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})\b")
IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
SECRET_FORMATS = [
    ("aws_access_key", ("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b")),
    ("github_token", ("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b")),
    ("slack_token", ("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("stripe_key", ("_live_",), re.compile(r"\b[sr]k_live_[A-Za-z0-9]{20,}\b")),
    ("google_api_key", ("AIza",), re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    (
        "private_key",
        ("PRIVATE KEY",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[^\x00]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY"
            r"(?: BLOCK)?-----|(?=\x00)|\Z)"
        ),
    ),
]
ASSIGNED_SECRET = re.compile(
    r"(?i)(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|pwd"
    r"|client[_-]?secret|private[_-]?key)[\"']?\s*(?:[:=]|=>|\bis\b)\s*[\"']?([A-Za-z0-9+/_\-.=!@#$%^&*]{12,})"
)
LONG_TOKEN = re.compile(r"[A-Za-z0-9+/_\-]{32,}={0,2}")
STREET = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    "Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Alley|Row|Crescent"
)
ADDRESS = re.compile(
    rf"\d{{1,6}}[A-Z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\s+|\d{{1,3}}(?:st|nd|rd|th)\s+){{1,4}}(?:{STREET})\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*#?\w+)?"
    r"(?:,\s+[A-Z][a-z]+(?:\s[A-Z][a-z]+)*(?:,\s+[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?)?"
)
NAME = re.compile(
    r"(?:(?:[Mm]y name is|[Mm]y name's|[Cc]all me|[Nn]ame:|[Ss]igned,?|[Ss]incerely,|[Rr]egards,|[Dd]ear|"
    r"[Cc]ontact)\s+|(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+)([A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2})\b"
)

IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VG": 24,
    "XK": 20,
}


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    if d[:2] in ("34", "37"):
        return n == 15  # Amex
    if "51" <= d[:2] <= "55" or "2221" <= d[:4] <= "2720":
        return n == 16  # Mastercard
    if d.startswith(("6011", "65")) or "644" <= d[:3] <= "649":
        return 16 <= n <= 19  # Discover
    if "3528" <= d[:4] <= "3589":
        return 16 <= n <= 19  # JCB
    if d[:2] in ("36", "38", "39") or "300" <= d[:3] <= "305":
        return 14 <= n <= 19  # Diners
    if d.startswith("62"):
        return 16 <= n <= 19  # UnionPay
    return False


def iban_ok(country: str, check: str, rest: str) -> bool:
    body = rest.replace(" ", "")
    if IBAN_LENGTHS.get(country) != 4 + len(body):
        return False
    rearranged = body + country + check
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _random_looking(tok: str, min_entropy: float) -> bool:
    classes = sum((any(c.islower() for c in tok), any(c.isupper() for c in tok), any(c.isdigit() for c in tok)))
    return classes >= 2 and entropy(tok) >= min_entropy


@functools.lru_cache(maxsize=1 << 16)  # phonenumbers.parse is slow, and the same numbers recur
def _phone(candidate: str, region: str) -> bool:
    import phonenumbers

    digits = sum(c.isdigit() for c in candidate)
    # Phones are written with a + or with separators; a bare digit run is more likely a quantity or an id.
    if not candidate.startswith("+") and not re.search(r"\d[\s.\-()/]+\d", candidate):
        return False
    if not 7 <= digits <= 15:
        return False
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _clean_edges(text: str, start: int, end: int, before: str = "", after: str = "") -> bool:
    """No word character (nor one of `before`/`after`) touches the span, so it is not part of a longer token."""
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_" or text[start - 1] in before):
        return False
    return not (end < len(text) and (text[end].isalnum() or text[end] == "_" or text[end] in after))


def _number_continues(text: str, end: int) -> bool:
    return end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit()


def _digit_run(m, text, region):
    """A digit run is a card, a phone, or holds SSNs / IPv4 addresses (one scan finds all four)."""
    cand, start, end = m.group(), m.start(), m.end()
    if cand.endswith(")"):
        cand, end = cand[:-1], end - 1
    if _clean_edges(text, start, end, ".+-", "-") and not _number_continues(text, end):
        digits = "".join(c for c in cand if c.isdigit())
        if (
            13 <= len(digits) <= 19
            and set(cand) <= set("0123456789 -")
            and "  " not in cand
            and card_issuer(digits)
            and luhn(digits)
        ):
            return [(start, end, "CREDIT_CARD")]
        if _phone(cand, region):
            return [(start, end, "PHONE")]
    out = []
    if "-" in cand or " " in cand:
        out += [s for s in (_ssn(x, text, region) for x in SSN.finditer(text, m.start(), m.end())) if s]
    if "." in cand:
        out += [s for s in (_ipv4(x, text, region) for x in IPV4.finditer(text, m.start(), m.end())) if s]
    return out


def _ssn(m, text, region):
    ok = _clean_edges(text, m.start(), m.end(), "-", "-") and ssn_ok(m[1], m[3], m[4])
    return (m.start(), m.end(), "SSN") if ok else None


def _ssn_context(m, text, region):
    return (m.start(1), m.end(1), "SSN") if ssn_ok(m[1][:3], m[1][3:5], m[1][5:]) else None


def _iban(m, text, region):
    ok = _clean_edges(text, m.start(), m.end()) and iban_ok(m[1], m[2], m[3])
    return (m.start(), m.end(), "IBAN") if ok else None


def _ipv4(m, text, region):
    if not _clean_edges(text, m.start(), m.end(), ".") or _number_continues(text, m.end()):
        return None
    try:
        ip = ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    return None if ip.is_loopback or ip.is_unspecified else (m.start(), m.end(), "IP_ADDRESS")


def _ipv6(m, text, region):
    s = m.group()
    if sum(c.isalnum() for c in s) < 4:
        return None
    try:
        ip = ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return None if ip.is_loopback or ip.is_unspecified else (m.start(), m.end(), "IP_ADDRESS")


def _assigned(m, text, region):
    value = m.group(1).rstrip(".,;'\"")
    return (m.start(1), m.start(1) + len(value), "SECRET") if _random_looking(value, 3.0) else None


def _long_token(m, text, region):
    ok = _clean_edges(text, m.start(), m.end(), "+/-", "+/-") and _random_looking(m.group(), 4.2)
    return (m.start(), m.end(), "SECRET") if ok else None


def _starts_word(text: str, start: int) -> bool:
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")


def _address(m, text, region):
    return (m.start(), m.end(), "ADDRESS") if _starts_word(text, m.start()) else None


# "My name is Gemma" is an assistant introducing itself, not a person's name.
NOT_PERSONS = {
    "Gemma",
    "ChatGPT",
    "Claude",
    "Bard",
    "Gemini",
    "Llama",
    "Siri",
    "Alexa",
    "Copilot",
    "Cortana",
    "Assistant",
    "Bot",
    "User",
    "Admin",
    "Python",
    "Google",
    "Microsoft",
    "Apple",
    "Amazon",
}


def _name(m, text, region):
    ok = _starts_word(text, m.start()) and m.group(1).split()[0] not in NOT_PERSONS
    return (m.start(1), m.end(1), "NAME") if ok else None


def _secret(m, text, region):
    return m.start(), m.end(), "SECRET"


_has_digit = re.compile(r"\d").search


def _secret_word(text: str) -> bool:
    low = text.casefold()  # ASSIGNED_SECRET is case-insensitive
    return any(w in low for w in ("key", "secret", "token", "passw", "pwd"))


_DIGITS = "digits"  # trigger: texts with a digit (tested per text, C speed)
# (types it can report, trigger, pattern, match -> (start, end, type) | None). A trigger picks the texts
# worth scanning when RE2 cannot (texts with non-ASCII characters): a tuple of literals (found with str.find
# over the joined batch), `_DIGITS`, or a test. Each must hold wherever its pattern matches.
DETECTORS = [
    (("EMAIL",), ("@",), EMAIL, lambda m, t, r: (m.start(), m.end(), "EMAIL")),
    (("CREDIT_CARD", "PHONE", "SSN", "IP_ADDRESS"), _DIGITS, DIGITS, _digit_run),
    (("SSN",), lambda t: "ssn" in (low := t.casefold()) or "social" in low, SSN_CONTEXT, _ssn_context),
    (("IBAN",), _DIGITS, IBAN, _iban),
    (("IP_ADDRESS",), lambda t: t.count(":") >= 2, IPV6, _ipv6),
    *[(("SECRET",), markers, pattern, _secret) for _, markers, pattern in SECRET_FORMATS],
    (("SECRET",), _secret_word, ASSIGNED_SECRET, _assigned),
    (("SECRET",), lambda t: len(t) >= 32, LONG_TOKEN, _long_token),
    (("ADDRESS",), _DIGITS, ADDRESS, _address),
    (
        ("NAME",),
        (
            "name",
            "Name",
            "all me",
            "igned",
            "incerely",
            "egards",
            "Dear",
            "dear",
            "ontact",
            "Mr",
            "Ms",
            "Miss",
            "Dr",
            "Prof",
        ),
        NAME,
        _name,
    ),
]
SEP = "\x00"  # joins texts for one regex pass per detector; no pattern matches across it


def _trigger(trigger, texts: list[str], joined: Joined, has_digit):
    """`idx -> the indices in idx worth scanning` for a detector's trigger."""
    if trigger is _DIGITS:
        return lambda idx: [i for i in idx if has_digit(i)]
    if isinstance(trigger, tuple):
        return lambda idx: joined.containing(trigger, idx)
    return lambda idx: [i for i in idx if trigger(texts[i])]


def find_many(texts: list[str], types=TYPES, phone_region: str = "US") -> list[list[tuple[int, int, str]]]:
    """(start, end, type) PII spans for each text, unmerged.

    Each detector runs once over its candidate texts joined by SEP: one regex pass over a long string
    is much cheaper in `re` than thousands of short ones. Candidates: the ASCII texts where an RE2 copy of
    the detector's regex matches (base.AsciiTexts), and the other texts its literal trigger picks.
    """
    out: list[list] = [[] for _ in texts]
    want = set(types)
    detectors = [d for d in DETECTORS if want.intersection(d[0])]
    joined = Joined(texts, SEP)
    has_digit = functools.cache(lambda i: _has_digit(texts[i]) is not None)
    picks = AsciiTexts(texts).candidates(
        [d[2] for d in detectors], [_trigger(d[1], texts, joined, has_digit) for d in detectors]
    )
    for (_kinds, _trigger_spec, pattern, accept), idx in zip(detectors, picks):
        if not idx:
            continue
        starts, pos = [], 0
        for i in idx:
            starts.append(pos)
            pos += len(texts[i]) + 1
        text = SEP.join(texts[i] for i in idx)
        for m in pattern.finditer(text):
            found = accept(m, text, phone_region)
            for span in [found] if isinstance(found, tuple) else found or ():
                if span[2] not in want:
                    continue
                j = bisect.bisect_right(starts, span[0]) - 1
                base = starts[j]
                end = min(span[1], base + len(texts[idx[j]]))
                out[idx[j]].append((span[0] - base, end - base, span[2]))
    return out


def find(text: str, types=TYPES, phone_region: str = "US") -> list[tuple[int, int, str]]:
    return find_many([text], types, phone_region)[0]


def apply(
    batch: dict[str, list],
    *,
    action="redact",
    actions=None,
    types=TYPES,
    roles=("system", "user", "assistant"),
    allow=(),
    phone_region="US",
    engine="builtin",
    spacy_model=None,
    score_threshold=0.3,
) -> FilterResult:
    actions = actions or {}
    allow = set(allow)
    where = [
        (r, i, content) for r, messages in enumerate(batch["messages"]) for i, content in turns(messages, roles)
    ]
    texts = [w[2] for w in where]
    found = find_many(texts, types, phone_region) if engine != "presidio" else [[] for _ in texts]
    if engine != "builtin":
        from data_filters import pii_presidio

        found = [a + b for a, b in zip(found, pii_presidio.find_many(texts, types, spacy_model, score_threshold))]
    keep = [True] * len(batch["messages"])
    messages_out = list(batch["messages"])
    reasons: list[list[dict]] = [[] for _ in keep]
    for (r, i, content), spans in zip(where, found):
        spans = [s for s in merge_spans(spans) if content[s[0] : s[1]] not in allow]
        if not spans:
            continue
        for start, end, kind in spans:
            act = actions.get(kind, action)
            keep[r] = keep[r] and act != "drop"
            reasons[r].append(
                {
                    "filter": "pii",
                    "reason": f"{kind} ({act})",
                    "type": kind,
                    "turn": i,
                    "span": [start, end],
                    "text": content[start:end],
                }
            )
        if messages_out[r] is batch["messages"][r]:
            messages_out[r] = [dict(m) for m in messages_out[r]]
        messages_out[r][i]["content"] = redact(content, [(s, e, PLACEHOLDER[k]) for s, e, k in spans])
    return FilterResult(keep, {"messages": messages_out}, reasons)


def prepare(options: dict) -> dict:

    if options["action"] not in ("redact", "drop"):
        raise FilterError(f"pii: action must be 'redact' or 'drop', got {options['action']!r}")
    for kind, act in options["actions"].items():
        if kind not in TYPES or act not in ("redact", "drop"):
            raise FilterError(f"pii: actions must map a type in {TYPES} to 'redact' or 'drop', got {kind}: {act}")
    if options["engine"] not in ("builtin", "presidio", "both"):
        raise FilterError(f"pii: engine must be 'builtin', 'presidio' or 'both', got {options['engine']!r}")
    if options["engine"] != "builtin":
        from data_filters import pii_presidio

        pii_presidio.engine(options["spacy_model"])  # fail here, once, if Presidio cannot start
    unknown = [t for t in options["types"] if t not in TYPES]
    if unknown:
        raise FilterError(f"pii: unknown PII type(s) {unknown}; valid: {TYPES}")
    return options
