"""Gold answers vs completions: equal in value though written differently, and near misses."""

import pytest

from rewards.math import EXTRACTORS, extract_answer, is_equivalent, math_reward

EQUAL = [
    ("42", "The answer is 42."),
    ("42", "So we get \\boxed{42}."),
    ("42", "\\boxed{42.0}"),
    ("42", "Answer: 42.00"),
    ("-7", "The answer is -7"),
    ("-7", "\\boxed{-7.0}"),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("\\frac{1}{2}", "The answer is 0.5"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}"),
    ("\\frac{1}{2}", "\\boxed{\\tfrac12}"),
    ("\\frac{1}{2}", "\\boxed{1/2}"),
    ("\\frac{3}{4}", "\\boxed{\\frac{6}{8}}"),
    ("\\frac{3}{4}", "\\boxed{0.75}"),
    ("1000", "The answer is 1,000."),
    ("1000", "\\boxed{1{,}000}"),
    ("1000000", "\\boxed{10^6}"),
    ("2.5", "\\boxed{\\frac{5}{2}}"),
    ("2.5", "The answer is 5/2"),
    ("50\\%", "\\boxed{50\\%}"),
    ("50\\%", "\\boxed{50}"),
    ("25", "\\boxed{25\\%}"),
    ("5", "\\boxed{5 \\text{ cm}}"),
    ("5", "\\boxed{5\\,\\mathrm{m}}"),
    ("12", "The answer is 12 apples."),
    ("30", "\\boxed{30^\\circ}"),
    ("15", "\\boxed{\\$15}"),
    ("15.50", "\\boxed{\\$15.5}"),
    ("\\sqrt{2}", "\\boxed{2^{1/2}}"),
    ("\\sqrt{12}", "\\boxed{2\\sqrt{3}}"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ("\\pi", "\\boxed{\\pi}"),
    ("2\\pi", "\\boxed{2 \\pi}"),
    ("x + 1", "\\boxed{1 + x}"),
    ("2x", "\\boxed{x \\cdot 2}"),
    ("x^2 - 1", "\\boxed{(x-1)(x+1)}"),
    ("3", "\\boxed{x = 3}"),
    ("(1, 2)", "\\boxed{(1,2)}"),
    ("\\{1, 2, 3\\}", "\\boxed{\\{3, 2, 1\\}}"),
    ("[0, 1]", "\\boxed{[0,1]}"),
    ("\\infty", "\\boxed{\\infty}"),
    ("7", "First 3, then 4 more, so 7"),
    ("7", "We compute 3 + 4 = 7"),
    ("64", "The final answer is $64$."),
    ("1/3", "\\boxed{\\frac{2}{6}}"),
    ("0.125", "\\boxed{\\frac{1}{8}}"),
    ("-\\frac{1}{2}", "\\boxed{-0.5}"),
    ("9", "\\boxed{3^2}"),
    ("\\frac{1}{2}", "We find 3 and 5 along the way.\nThe answer is \\frac{1}{2}."),
]
NOT_EQUAL = [
    ("42", "The answer is 43."),
    ("42", "\\boxed{4.2}"),
    ("42", "\\boxed{-42}"),
    ("0.5", "\\boxed{\\frac{1}{3}}"),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{1}}"),
    ("\\frac{3}{4}", "\\boxed{0.74}"),
    ("1000", "\\boxed{100}"),
    ("2.5", "\\boxed{25}"),
    ("\\sqrt{2}", "\\boxed{2}"),
    ("\\sqrt{2}", "\\boxed{1.414}"),
    ("\\pi", "\\boxed{3.14}"),
    ("2\\pi", "\\boxed{\\pi}"),
    ("x + 1", "\\boxed{x - 1}"),
    ("x^2 - 1", "\\boxed{(x-1)^2}"),
    ("3", "\\boxed{x = 4}"),
    ("(1, 2)", "\\boxed{(2, 1)}"),
    ("(1, 2)", "\\boxed{[1, 2]}"),
    ("\\{1, 2, 3\\}", "\\boxed{\\{1, 2\\}}"),
    ("\\infty", "\\boxed{-\\infty}"),
    ("7", "I don't know."),
    ("7", "\\boxed{7} was wrong, the answer is \\boxed{8}"),
    ("10", "There are 10 apples and 3 pears, so 13"),
    ("1/3", "\\boxed{0.33}"),
    ("9", "\\boxed{3^3}"),
    ("-7", "\\boxed{7}"),
]


def test_table_is_big_enough():
    assert len(EQUAL) + len(NOT_EQUAL) >= 60 and len(EQUAL) >= 30 and len(NOT_EQUAL) >= 20


@pytest.mark.parametrize("gold,completion", EQUAL)
def test_equal_forms_score_one(gold, completion):
    assert math_reward(["q"], [completion], answer=[gold]) == [1.0], extract_answer(completion)


@pytest.mark.parametrize("gold,completion", NOT_EQUAL)
def test_near_misses_score_zero(gold, completion):
    assert math_reward(["q"], [completion], answer=[gold]) == [0.0], extract_answer(completion)


@pytest.mark.parametrize(
    "text,answer",
    [
        ("The answer is 42.", "42"),
        ("so the answer is 3.5. Next we check it", "3.5"),
        ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: 12", "12"),
        ("\\boxed{\\frac{3}{4}} is it; the answer is 9", "\\frac{3}{4}"),  # boxed wins over "the answer is"
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),  # nested braces
        ("I got -2.5 then 1,000", "1,000"),
        ("no digits at all", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_extractors_are_configurable():
    text = "3 apples and 4 pears: 7"
    assert extract_answer(text, ["boxed", "answer_is"]) is None
    assert math_reward(["q"], [text], answer=["7"], extractors=["boxed"]) == [0.0]
    with pytest.raises(ValueError, match="unknown answer extractor"):
        extract_answer(text, ["nope"])
    assert EXTRACTORS == ("boxed", "answer_is", "last_number")


def test_answer_column_chat_completions_and_rows_without_answer():
    chat = [{"role": "assistant", "content": "The answer is \\boxed{5}"}]
    assert math_reward(
        ["q", "q", "q"], [chat, "\\boxed{5}", "\\boxed{5}"], solution=["5", None, ""], answer_column="solution"
    ) == [1.0, None, None]
    assert math_reward(["q"], ["\\boxed{5}"], other=["5"]) == [None]  # no answer column: not applicable


def test_is_equivalent_is_symmetric_on_table():
    for gold, completion in EQUAL[:10]:
        prediction = extract_answer(completion)
        assert is_equivalent(gold, prediction) and is_equivalent(prediction, gold)
