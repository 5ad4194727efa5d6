"""The course's own tools: what a notebook calls (`start`, `record`, `show_code`), the headless runner,
student copies, and the command line (`python -m helpers.course`)."""
from helpers.course.cli import main  # noqa: F401
from helpers.course.notebook import (  # noqa: F401
    BUILD,
    NOTEBOOKS,
    RECORDED,
    RECORDS_FILE,
    ROOT,
    format_value,
    read_records,
    record,
    show_code,
    start,
    to_plain,
)
from helpers.course.runner import (  # noqa: F401
    Result,
    clean_for_commit,
    course_notebooks,
    execute,
    parse_overrides,
    refresh_outputs,
    run,
    summary_table,
)
from helpers.course.student import make_student_copies, strip_solutions  # noqa: F401
