"""Math reward: the completion's final answer against the row's ground truth, compared by math-verify.

The final answer is extracted first (so that intermediate numbers in the reasoning are never compared),
by the first of these that matches: the last `\\boxed{...}`, the last "the answer is ..." /
"answer: ...", the last number. math-verify then compares gold and prediction as mathematics: LaTeX,
fractions, decimals, percentages, sets, intervals, units stripped, equations like `x = 3`.
"""

from __future__ import annotations

import re
import threading

from rewards.contract import completion_text

EXTRACTORS = ("boxed", "answer_is", "last_number")
_ANSWER_IS = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_answer(text: str, extractors: tuple[str, ...] | list[str] = EXTRACTORS) -> str | None:
    """The final answer in `text` by the first extractor that finds one, or None."""
    for how in extractors:
        if how == "boxed":
            found = _last_boxed(text)
        elif how == "answer_is":
            matches = _ANSWER_IS.findall(text)
            # up to the end of its sentence: "is 3.5. So ..." -> "3.5"
            found = (
                re.split(r"\.\s", matches[-1])[0].strip().rstrip(".").strip().strip("$").strip()
                if matches
                else None
            )
        elif how == "last_number":
            matches = _NUMBER.findall(text)
            found = matches[-1].replace(" ", "") if matches else None
        else:
            raise ValueError(f"unknown answer extractor '{how}' (choose from {EXTRACTORS})")
        if found:
            return found
    return None


def _parse(answer: str, timeout):
    from math_verify import parse

    parsed = parse(f"${answer}$", parsing_timeout=timeout)
    return parsed or parse(answer, parsing_timeout=timeout)


def is_equivalent(gold: str, prediction: str) -> bool:
    """math-verify's verdict on two final answers (strings as a person would write them)."""
    from math_verify import verify

    # math-verify's timeouts use signal.alarm, which only the main thread may set; in the reward worker
    # processes calls run in the main thread, and elsewhere the caller must bound the time.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed, pred_parsed = _parse(str(gold), timeout), _parse(prediction, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def math_reward(
    prompts: list,
    completions: list,
    *,
    answer_column: str = "answer",
    extractors: tuple[str, ...] | list[str] = EXTRACTORS,
    **columns,
) -> list[float | None]:
    """1.0 if the completion's final answer equals the row's answer, else 0.0; None where a row has none."""
    answers = columns.get(answer_column)
    if answers is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, answers):
        if gold is None or str(gold).strip() == "":
            out.append(None)
            continue
        prediction = extract_answer(completion_text(completion), extractors)
        out.append(float(prediction is not None and is_equivalent(str(gold), prediction)))
    return out
