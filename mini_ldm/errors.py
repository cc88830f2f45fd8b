"""User-facing errors: the CLIs print their message as one line and exit with status 2."""
import re


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag); the message says what to do."""


class CheckpointError(UserError):
    """A model file or folder that cannot be read as a Stable Diffusion checkpoint."""


def first_line(e: BaseException) -> str:
    """The gist of a library error: its first sentence, so our messages stay one line. A C++ check's prefix
    (torch's "[enforce fail at alloc_cpu.cpp:127] err == 0. ") says nothing to a user and is left out."""
    text = re.sub(r"^\[enforce fail at [^\]]*\][^.]*\.\s*", "", str(e).strip())
    if not text:
        return type(e).__name__
    return text.splitlines()[0].split(". ")[0][:200]
