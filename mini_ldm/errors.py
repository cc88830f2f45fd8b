"""User-facing errors: the CLIs print their message as one line and exit with status 2."""


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag); the message says what to do."""


class CheckpointError(UserError):
    """A model file or folder that cannot be read as a Stable Diffusion checkpoint."""
