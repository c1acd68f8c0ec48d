"""Safety: drop rows whose checked turns (model turns by default) are unsafe or toxic.

Two detectors, either or both: a lexicon of rules that ships here (phrases that are unsafe in almost any
context: instructions for weapons or hard drugs, self-harm encouragement, threats, dehumanising hate,
sexual content involving minors, malware, insults aimed at the reader), and a classifier plug-in given by
`classifier`: a `"pkg.mod:fn"` / `"file.py:fn"` callable `fn(texts) -> list[float]` (probability unsafe),
or an HF model dir (a sequence classifier, or a Llama-Guard-style causal LM answering "safe"/"unsafe").
A rule match inside a sentence that refuses ("I can't help you make a bomb") does not count.
"""

from __future__ import annotations

import functools
import re

from data_filters.base import AsciiTexts, FilterError, FilterResult, Joined, turns

DEFAULTS = {
    "roles": ["assistant"],
    "categories": None,  # None = all of CATEGORIES
    "extra_patterns": [],  # more regexes (case-insensitive), category "custom"
    "classifier": None,  # "pkg.mod:fn" | "file.py:fn" | HF model dir
    "threshold": 0.5,  # classifier score at or above which a turn is unsafe
    "unsafe_label": None,  # sequence classifier: the label name or index meaning unsafe (default: last)
}

_MAKE = r"(?:make|build|assemble|construct|create|synthesi[sz]e|cook|produce|manufacture|brew)"
_HOW = (
    r"(?:how (?:to|you|i|we) (?:can )?|steps to |instructions (?:for|to) |here'?s how to |recipe for |"
    r"guide to |the way to |you can |first,? )"
)
RULES: dict[str, list[str]] = {
    "weapons": [
        _HOW
        + _MAKE
        + r" (?:a |an |your own |some )?(?:pipe |nail |car |homemade |dirty )?(?:bomb|explosives?|ied|"
        r"molotov(?: cocktail)?|napalm|nerve agent|sarin|ricin|bioweapon|chemical weapon|ghost gun|untraceable gun)",  # noqa: E501
        r"(?:mix|combine) (?:the )?(?:bleach and ammonia|ammonium nitrate (?:and|with) fuel oil).{0,40}(?:to|and) "
        r"(?:make|produce|create|get) (?:a |an )?(?:toxic|poison|lethal|deadly|explosive|bomb)",
        r"(?:detonat(?:e|or)|blasting cap).{0,60}(?:crowd|school|stadium|subway|people)",
        r"(?:recipe|synthesis|instructions|formula) (?:for|of) (?:making )?(?:sarin|ricin|vx|tabun|anthrax|mustard gas|"  # noqa: E501
        r"nerve agents?|napalm|thermite bombs?)",
    ],
    "drugs": [
        _HOW + _MAKE + r" (?:some )?(?:meth(?:amphetamine)?|crack cocaine|crack|heroin|fentanyl|lsd|mdma|ghb)\b",
        r"(?:pseudoephedrine|red phosphorus|anhydrous ammonia).{0,80}(?:reduce|reduction|cook|synthesi)",
    ],
    "self_harm": [
        r"\b(?:you should|go|just|why don'?t you) (?:kill|hurt|cut|harm) yourself",
        r"\bkill yourself\b",
        r"\bkys\b",
        r"(?:best|easiest|quickest|painless) (?:way|method)s? to (?:kill yourself|end your life|commit suicide|die)",  # noqa: E501
        r"\byou (?:deserve|ought|should) (?:to )?die\b",
        r"\bend your (?:own )?life\b",
    ],
    "violence": [
        r"\bi(?:'m| am)? (?:going to |gonna |will )(?:kill|murder|hurt|stab|shoot) you\b",
        _HOW + r"(?:poison|murder|kill|strangle|kidnap) (?:someone|a person|somebody|your (?:wife|husband|"
        r"boss|neighbou?r|partner|ex|parents?))",
        r"(?:get away with|cover up) (?:a )?murder",
        r"(?:kill|shoot|murder|exterminate) (?:all|every) (?:the )?(?:\w+ )?(?:people|women|men|immigrants|jews|"
        r"muslims|christians|gays)",
    ],
    "hate": [
        r"\b(?:are|is|be) (?:nothing but )?(?:subhuman|vermin|animals|a disease|parasites)\b",
        r"\bshould (?:all )?be (?:exterminated|wiped out|gassed|eradicated|deported and killed)\b",
        r"\b(?:inferior|mongrel|degenerate) (?:race|races|people)\b",
    ],
    "sexual_minors": [
        r"\b(?:sexual|sexy|explicit|nude|naked|erotic)\b.{0,40}\b(?:child|children|minor|minors|kid|kids|"
        r"underage|preteen|\d{1,2}[- ]year[- ]old)\b",
        r"\bchild (?:porn|pornography|sexual abuse material)\b",
        r"\bcsam\b",
    ],
    "cyber": [
        r"(?:here is|here'?s|below is|i wrote|i'?ve written) (?:a |an |some |the )?(?:working |simple |basic )?"
        r"(?:ransomware|keylogger|malware|trojan|worm|rootkit|botnet|credential stealer)",
        _HOW + r"(?:hack|break) into (?:someone'?s?|a person'?s|your (?:ex|partner|boss|neighbou?r)'?s?|their)",
        r"\bsteal (?:someone'?s |their |people'?s )?(?:credit cards?|identit(?:y|ies)|passwords?|bank)",
        r"\blaunder (?:the |your )?money\b",
    ],
    "insult": [
        r"\byou(?:'re| are) (?:such )?(?:an? )?(?:fucking |complete |total |utter )?(?:idiot|moron|imbecile|"
        r"retard|worthless|pathetic|piece of shit|loser)\b",
        r"\bfuck (?:you|off)\b",
        r"\bshut (?:the fuck )?up,? (?:you )?(?:idiot|moron|loser)\b",
    ],
}
CATEGORIES = list(RULES)
# Words every rule of a category needs: one of each group (sexual_minors needs a sexual and a minor word).
# For texts RE2 cannot scan (non-ASCII ones), a category's regex runs only on texts holding them (found with
# str.find over the batch, C speed), so clean text costs a few substring scans, not a regex pass.
TRIGGERS = {
    "weapons": (
        (
            "bomb",
            "explosive",
            " ied",
            "molotov",
            "napalm",
            "nerve agent",
            "sarin",
            "ricin",
            "bioweapon",
            "chemical weapon",
            "ghost gun",
            "untraceable gun",
            "bleach and ammonia",
            "ammonium nitrate",
            "detonat",
            "blasting cap",
            "vx",
            "tabun",
            "anthrax",
            "mustard gas",
            "thermite",
        ),
    ),
    "drugs": (
        (
            "meth",
            "crack",
            "heroin",
            "fentanyl",
            "lsd",
            "mdma",
            "ghb",
            "pseudoephedrine",
            "red phosphorus",
            "anhydrous ammonia",
        ),
    ),
    "self_harm": (
        (
            "yourself",
            "kys",
            "your life",
            "your own life",
            "suicide",
            "to die",
            "should die",
            "deserve die",
            "ought die",
        ),
    ),
    "violence": (("kill", "murder", "hurt", "stab", "shoot", "poison", "strangle", "kidnap", "exterminate"),),
    "hate": (
        (
            "subhuman",
            "vermin",
            "animals",
            "a disease",
            "parasites",
            "exterminated",
            "wiped out",
            "gassed",
            "eradicated",
            "deported and",
            "inferior",
            "mongrel",
            "degenerate",
        ),
    ),
    "sexual_minors": (
        ("sexual", "sexy", "explicit", "nude", "naked", "erotic", "porn", "abuse material", "csam"),
        ("child", "minor", "kid", "underage", "preteen", "year", "csam"),
    ),
    "cyber": (
        (
            "ransomware",
            "keylogger",
            "malware",
            "trojan",
            "worm",
            "rootkit",
            "botnet",
            "stealer",
            "hack",
            "break into",
            "steal",
            "launder",
        ),
    ),
    "insult": (("idiot", "moron", "imbecile", "retard", "worthless", "pathetic", "shit", "loser", "fuck"),),
}


_REFUSAL = re.compile(
    r"(?i)\b(?:i can(?:no|')t|i cannot|i won'?t|i will not|i'?m (?:sorry|not able|unable)|"
    r"i am (?:sorry|not able|unable)|never|do not|don'?t|not (?:help|assist|provide))\b"
)
_SENTENCE_END = re.compile(r"[.!?\n]")


@functools.lru_cache(maxsize=16)
def _compiled(categories: tuple[str, ...], extra: tuple[str, ...]) -> list[tuple[str, re.Pattern]]:
    rules = [(c, re.compile(r"(?i)" + "|".join(f"(?:{p})" for p in RULES[c]))) for c in categories]
    if extra:
        rules.append(("custom", re.compile(r"(?i)" + "|".join(f"(?:{p})" for p in extra))))
    return rules


def _refused(text: str, start: int) -> bool:
    """The match sits in a sentence that refuses or warns ('I can't tell you how to make a bomb')."""
    sentence_start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    return _REFUSAL.search(text, sentence_start, start) is not None


def find_many(texts: list[str], categories=CATEGORIES, extra_patterns=()) -> list[list[tuple[int, int, str]]]:
    """Per text, (start, end, category) of the first rule match per category that is not in a refusal.

    A category's regex runs only on the texts that can match it: the ASCII ones where an RE2 copy of it
    matches (one RE2 Set pass per text for every category, base.AsciiTexts), and the others holding one
    word of each of its trigger groups (str.find over the lower-cased batch).
    """
    out: list[list] = [[] for _ in texts]
    lows = Joined([t.lower() for t in texts])

    def trigger(category):
        if category == "custom":
            return lambda idx: idx
        return lambda idx: set.intersection(*(set(lows.containing(group, idx)) for group in TRIGGERS[category]))

    rules = _compiled(tuple(categories), tuple(extra_patterns))
    picks = AsciiTexts(texts).candidates([p for _, p in rules], [trigger(c) for c, _ in rules])
    for (category, pattern), idx in zip(rules, picks):
        for j in idx:
            for m in pattern.finditer(texts[j]):
                if not _refused(texts[j], m.start()):
                    out[j].append((m.start(), m.end(), category))
                    break
    return out


def find(text: str, categories=CATEGORIES, extra_patterns=()) -> list[tuple[int, int, str]]:
    """(start, end, category) rule matches in `text` that are not inside a refusal."""
    return find_many([text], categories, extra_patterns)[0]


def apply(
    batch: dict[str, list],
    *,
    roles=("assistant",),
    categories=None,
    extra_patterns=(),
    classifier=None,
    threshold=0.5,
    unsafe_label=None,
) -> FilterResult:
    categories = CATEGORIES if categories is None else categories
    n = len(batch["messages"])
    keep, reasons = [True] * n, [[] for _ in range(n)]
    where = [(r, i, text) for r, messages in enumerate(batch["messages"]) for i, text in turns(messages, roles)]
    for (r, i, text), found in zip(where, find_many([w[2] for w in where], categories, extra_patterns)):
        for start, end, category in found:
            keep[r] = False
            reasons[r].append(
                {
                    "filter": "safety",
                    "reason": f"unsafe: {category} (rule)",
                    "turn": i,
                    "span": [start, end],
                    "text": text[start:end],
                }
            )
    if classifier:
        scores = load_classifier(classifier, unsafe_label)([w[2] for w in where])
        for (r, i, text), score in zip(where, scores):
            if score is not None and score >= threshold:
                keep[r] = False
                reasons[r].append(
                    {
                        "filter": "safety",
                        "reason": f"unsafe: classifier score {score:.3f}",
                        "turn": i,
                        "span": [0, len(text)],
                    }
                )
    return FilterResult(keep, {}, reasons)


@functools.lru_cache(maxsize=4)
def load_classifier(spec: str, unsafe_label=None):
    """`fn(texts) -> list[float]` for a callable spec or an HF model dir; cached per process."""
    import os

    if os.path.isdir(spec):
        return _hf_classifier(spec, unsafe_label)
    from data_filters import load_callable

    return load_callable(spec, "safety.classifier")


def _hf_classifier(path: str, unsafe_label):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    if causal:  # Llama-Guard style: P("unsafe") vs P("safe") as the first answer token
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        safe_id, unsafe_id = (tok.encode(w, add_special_tokens=False)[0] for w in ("safe", "unsafe"))

        def score(texts):
            out = []
            for text in texts:
                chat = [{"role": "user", "content": "Is this safe?"}, {"role": "assistant", "content": text}]
                try:
                    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
                except Exception:
                    ids = tok(f"Is the following safe or unsafe?\n{text}\nAnswer:", return_tensors="pt").input_ids
                if not isinstance(ids, torch.Tensor):
                    ids = ids["input_ids"]
                with torch.no_grad():
                    logits = model(ids).logits[0, -1]
                pair = torch.softmax(logits[[safe_id, unsafe_id]].float(), -1)
                out.append(float(pair[1]))
            return out

        return score

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    labels = {v.lower(): k for k, v in (model.config.id2label or {}).items()}
    if unsafe_label is None:
        index = next(
            (labels[n] for n in ("unsafe", "toxic", "harmful") if n in labels), model.config.num_labels - 1
        )
    else:
        index = unsafe_label if isinstance(unsafe_label, int) else labels[str(unsafe_label).lower()]

    def score(texts):
        out = []
        for start in range(0, len(texts), 16):
            enc = tok(
                texts[start : start + 16], return_tensors="pt", padding=True, truncation=True, max_length=512
            )
            with torch.no_grad():
                probs = torch.softmax(model(**enc).logits.float(), -1)
            out += probs[:, index].tolist()
        return out

    return score


def prepare(options: dict) -> dict:

    cats = options["categories"]
    if cats is not None:
        bad = [c for c in cats if c not in CATEGORIES]
        if bad:
            raise FilterError(f"safety: unknown categor(ies) {bad}; valid: {CATEGORIES}")
    for p in options["extra_patterns"]:
        try:
            re.compile(p)
        except re.error as e:
            raise FilterError(f"safety: extra pattern {p!r} is not a valid regex: {e}") from None
    spec = options["classifier"]
    if spec:
        import os

        if not os.path.isdir(spec) and ":" not in spec:
            raise FilterError(f"safety: classifier {spec!r} is neither a model dir nor 'module:function'")
        load_classifier(spec, options["unsafe_label"])  # fail now, in the driver, not in every worker
    return options
