"""Answer extraction and math-verify scoring."""

import pytest

from eopd_ray.eval.scoring import is_correct, last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{7}.", "7"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
        ("no box", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("The answer is \\boxed{0.5}.", "\\frac{1}{2}", True),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", True),
        ("\\boxed{-2}", "-2", True),
        ("\\boxed{3}", "-2", False),
        ("no answer at all", "7", False),
        ("\\boxed{}", "7", False),
        ("\\boxed{\\frac{{{}", "7", False),
    ],
)
def test_is_correct(response: str, gold: str, expected: bool) -> None:
    assert is_correct(response, gold) is expected
