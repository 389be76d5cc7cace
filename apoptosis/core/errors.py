"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""


class ApoptosisError(Exception):
    """Bad input or configuration: the message names the problem and what is allowed."""


class TrainingDiverged(ApoptosisError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
