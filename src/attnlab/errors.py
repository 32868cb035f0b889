"""Every error a user can cause: one base, so the CLI has one boundary.

`attnlab.cli.main` prints an AttnlabError as `attnlab: error: <message>` and exits 2; any
other exception is a bug in attnlab and keeps its traceback (exit 1); StopTimeReached, a run
that stopped at its stop time to go on later, exits 3. Raise the subclass that
names where the fault is, with a message that says what is wrong and what would be valid.
"""

from __future__ import annotations


class AttnlabError(Exception):
    """A fault in the user's input (a file, a key, a value, a URL): exit code 2, no traceback."""


class ConfigError(AttnlabError, ValueError):
    """A config value or key that cannot be used; the message says what would be valid."""


class DataError(AttnlabError, ValueError):
    """Input data that cannot be used; the message names the file and what is wrong."""


class StudyError(ConfigError):
    """Every problem of a study file (or of a study against its storage), one per line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        if len(problems) == 1:
            message = f"{path}: {problems[0]}"
        else:
            message = f"{path}: {len(problems)} problems\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(message)


class StorageError(AttnlabError):
    """A study storage that cannot be used (URL, server, credentials, folder); never holds a password."""


class CheckpointError(AttnlabError):
    """A file that is not a usable attnlab checkpoint, or one that no longer matches its tokenizer."""


class LaunchError(AttnlabError):
    """A multi-process launch whose ranks cannot come together (world size, nodes, master address)."""


class StopTimeReached(Exception):
    """A run stopped at its stop time ($ATTNLAB_STOP_AT): checkpointed, not evaluated; running it
    again resumes it. Not a fault: exit code 3."""
