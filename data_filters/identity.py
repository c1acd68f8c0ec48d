"""Self-identification: drop model turns that claim to be another assistant or made by another company.

Only first-person claims count ("I am ChatGPT", "as a model trained by OpenAI", "I was developed by
Meta"); talking about other assistants ("ChatGPT is made by OpenAI") is fine. A claim naming the
configured identity (`name`, `developers`) is what we want the model to say, so it passes.
"""

from __future__ import annotations

import functools
import re

from data_filters.base import AsciiTexts, FilterResult, Joined, turns

DEFAULTS = {
    "name": "Gemma",
    "developers": ["Google DeepMind", "Google"],
    "roles": ["assistant"],
    "other_names": [
        "ChatGPT",
        "GPT-4o",
        "GPT-4",
        "GPT-3.5",
        "GPT-3",
        "GPT",
        "Claude",
        "Bard",
        "LLaMA",
        "Llama",
        "Gemini",
        "Mistral",
        "Mixtral",
        "Qwen",
        "Tongyi Qianwen",
        "DeepSeek",
        "Ernie",
        "Grok",
        "Copilot",
        "Bing Chat",
        "Alexa",
        "Siri",
        "Cortana",
        "Phi",
        "Falcon",
        "Vicuna",
        "Alpaca",
        "Command R",
        "Yi",
        "Kimi",
        "Pi",
    ],
    "other_developers": [
        "OpenAI",
        "Anthropic",
        "Meta AI",
        "Meta",
        "Facebook",
        "Microsoft",
        "Mistral AI",
        "Alibaba",
        "Alibaba Cloud",
        "DeepSeek",
        "Baidu",
        "xAI",
        "Amazon",
        "Apple",
        "Cohere",
        "Inflection AI",
        "01.AI",
        "Moonshot AI",
        "TII",
        "LMSYS",
        "Stanford",
    ],
}

_I = r"(?:\bI(?:'m| am|’m)|\bI was|\bI've been|\bI have been|\bI'm just|\b[Mm]y name is|\b[Cc]all me)"
_MODEL = r"(?:(?:large )?language model|LLM|AI(?: model| assistant| system| chatbot)?|assistant|chatbot|model|bot)"
_MADE = r"(?:trained|developed|created|made|built|designed|programmed|engineered|released|owned|brought to you)"


@functools.lru_cache(maxsize=16)
def _patterns(names: tuple[str, ...], developers: tuple[str, ...]) -> re.Pattern:
    name = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    dev = "|".join(re.escape(d) for d in sorted(developers, key=len, reverse=True))
    claims = [
        # I am ChatGPT / I'm Claude, an AI assistant / my name is Bard
        rf"{_I}\s+(?:an?\s+|the\s+)?(?:(?:AI|virtual|digital|helpful)\s+)?(?:assistant\s+|chatbot\s+)?"
        rf"(?:called\s+|named\s+|known as\s+)?(?P<name>{name})\b(?!-?\w)",
        # I was trained by OpenAI / I'm a language model developed by Anthropic
        rf"{_I}\s+(?:\w+\s+){{0,5}}?{_MADE}\s+(?:\w+\s+){{0,2}}?by\s+(?:the\s+)?(?:team\s+at\s+|researchers\s+at\s+)?"
        rf"(?P<dev>{dev})\b",
        # as an OpenAI model / as a model trained by OpenAI / as ChatGPT,
        rf"\b[Aa]s\s+(?:an?\s+)?(?P<dev2>{dev})(?:-trained|-developed)?\s+(?:\w+\s+){{0,2}}?{_MODEL}\b",
        rf"\b[Aa]s\s+an?\s+(?:\w+\s+){{0,3}}?{_MODEL}\s+(?:\w+\s+){{0,2}}?{_MADE}\s+by\s+(?P<dev3>{dev})\b",
        rf"\b[Aa]s\s+(?P<name2>{name}),\s+I\b",
        # my creators at OpenAI / I'm OpenAI's assistant
        rf"\b[Mm]y\s+(?:creators?|developers?|makers?|trainers?)\s+(?:at|are|is|from)\s+(?P<dev4>{dev})\b",
        rf"{_I}\s+(?P<dev5>{dev})'s\s+(?:\w+\s+){{0,2}}?{_MODEL}\b",
    ]
    return re.compile("|".join(f"(?:{c})" for c in claims))


def find(text: str, name: str, developers, other_names, other_developers) -> list[tuple[int, int, str]]:
    """(start, end, who) first-person claims of another identity."""
    own = {name.lower(), *(d.lower() for d in developers)}
    names = tuple(n for n in other_names if n.lower() not in own)
    devs = tuple(d for d in other_developers if d.lower() not in own)
    out = []
    for m in _patterns(names, devs).finditer(text):
        who = next(v for v in m.groupdict().values() if v)
        out.append((m.start(), m.end(), who))
    return out


def apply(
    batch: dict[str, list],
    *,
    name="Gemma",
    developers=("Google DeepMind", "Google"),
    roles=("assistant",),
    other_names=(),
    other_developers=(),
) -> FilterResult:
    n = len(batch["messages"])
    keep, reasons = [True] * n, [[] for _ in range(n)]
    where = [(r, i, text) for r, messages in enumerate(batch["messages"]) for i, text in turns(messages, roles)]
    texts = [w[2] for w in where]
    own = {name.lower(), *(d.lower() for d in developers)}
    pattern = _patterns(
        tuple(n for n in other_names if n.lower() not in own),
        tuple(d for d in other_developers if d.lower() not in own),
    )
    # A claim names another assistant or company: only texts holding one of those names are worth a regex
    # (ASCII texts: those where an RE2 copy of the claims regex matches).
    literals = tuple(other_names) + tuple(other_developers)
    joined = Joined(texts)
    candidates = AsciiTexts(texts).candidates([pattern], [lambda idx: joined.containing(literals, idx)])[0]
    for r, i, text in (where[k] for k in candidates):
        for start, end, who in find(text, name, developers, other_names, other_developers):
            keep[r] = False
            reasons[r].append(
                {
                    "filter": "identity",
                    "reason": f"claims to be {who} (configured: {name})",
                    "turn": i,
                    "span": [start, end],
                    "text": text[start:end],
                }
            )
    return FilterResult(keep, {}, reasons)
