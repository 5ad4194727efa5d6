"""Exercise checkers that answer in one plain line: right, or what is wrong with a hint; never a traceback."""
from __future__ import annotations

import functools

UNANSWERED = "Not answered yet: write your solution in the exercise cell above, run it, then run this cell again."
ANSWERS: dict[str, str] = {}  # checker name -> "right", "not yet" or "unanswered": its latest answer in this kernel


def checker(check):
    """Turn `check(answer, ...)`, which raises AssertionError(hint) on a wrong answer and prints its own
    'Correct: ...' line on a right one, into an exercise checker for a notebook: it returns True or False and
    prints one line, 'Not yet: <hint>' on a wrong answer and `UNANSWERED` while the answer is still the
    student copy's stub (None, or a function that raises NotImplementedError)."""

    @functools.wraps(check)
    def answer(*args, **kwargs):
        if args and args[0] is None:
            print(UNANSWERED)
            ANSWERS[check.__name__] = "unanswered"
            return False
        try:
            check(*args, **kwargs)
        except NotImplementedError:
            print(UNANSWERED)
            ANSWERS[check.__name__] = "unanswered"
            return False
        except AssertionError as hint:
            print(f"Not yet: {hint}")
            ANSWERS[check.__name__] = "not yet"
            return False
        ANSWERS[check.__name__] = "right"
        return True

    return answer


def answer_of(what: str, function, *args):
    """`function(*args)` for a checker: an error in the learner's code becomes a hint naming `what` raised it
    (the student stub's NotImplementedError passes through, so the decorator reports it as unanswered)."""
    try:
        return function(*args)
    except NotImplementedError:
        raise
    except Exception as error:
        raise AssertionError(f"{what} raised {type(error).__name__}: {error}") from None
