"""An exercise checker answers in one plain line and returns True or False, never a traceback."""
from helpers.course.checks import UNANSWERED, checker


@checker
def check_answer(answer):
    if answer != 42:
        raise AssertionError("count again")
    print("Correct: 42.")


def test_right_answer_prints_the_checkers_own_line(capsys):
    assert check_answer(42) is True
    assert capsys.readouterr().out == "Correct: 42.\n"


def test_wrong_answer_prints_one_line_with_the_hint(capsys):
    assert check_answer(41) is False
    assert capsys.readouterr().out == "Not yet: count again\n"


def test_a_stub_is_reported_as_unanswered(capsys):
    def stub():
        raise NotImplementedError("write your solution here")

    @checker
    def check_function(function):
        function()

    assert check_answer(None) is False and check_function(stub) is False
    assert capsys.readouterr().out == f"{UNANSWERED}\n{UNANSWERED}\n"
