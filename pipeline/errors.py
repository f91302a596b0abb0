"""User-facing errors: the CLI prints them without a traceback and exits non-zero."""


class MerError(Exception):
    """An error caused by the user's input or setup, with a message that says what to do."""


class InputProblems(MerError):
    """Several problems found in one pass over the input, reported together.

    `problems` holds one line per problem, each naming the file, subject, clip or spreadsheet
    row concerned, so a user can fix everything in one go instead of one error per run.
    """

    def __init__(self, summary: str, problems: list[str]):
        self.summary = summary
        self.problems = list(problems)
        lines = [f"{summary} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class SettingsError(InputProblems, ValueError):
    """Invalid settings (params file or options): one line per key naming its value and what is allowed.

    A ValueError too, so that code validating settings directly can catch it as one.
    """
