"""Settings dataclasses as the one source of a tool's options.

A field made with `option(...)` carries its default and its help text. From the dataclass alone we get:
  - the command-line flags (`add_flags`: name, type, choices, default and help, nothing written twice),
  - the settings object back from parsed flags (`from_flags`),
  - the README's tables of defaults (`markdown_table`; a test checks the README against it).
The Python API takes the same dataclasses, so a script and the command line cannot drift apart.
"""
import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path

from .errors import UserError


def option(default=None, help: str = "", *, flag: str | None = None, choices=None, metavar: str | None = None,
           shown: str | None = None, aliases: tuple = ()):
    """A dataclass field that is also a command-line flag.

    flag: the flag's name (default: --field-name); shown: how the default reads in --help and the README
    when the value itself says little (None -> "the model's native size"); aliases: older flag names.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "shown": shown, "aliases": aliases}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"option": meta})
    return dataclasses.field(default=default, metadata={"option": meta})


def options(cls) -> list:
    """The fields of `cls` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_name(f) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


def shown_default(f) -> str:
    meta = f.metadata["option"]
    if meta["shown"] is not None:
        return meta["shown"]
    if f.default is False:
        return "off"
    return "none" if f.default in (None, "") else str(f.default)


def value_type(f):
    """What argparse converts a flag's text to, read off the field's annotation (`int | None` -> int)."""
    kinds = [f.type] if isinstance(f.type, type) else list(typing.get_args(f.type))
    return next((kind for kind in kinds if kind in (bool, int, float, Path)), str)


def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple = ()) -> None:
    """One flag per option of `cls` (those named in `skip` left out), help ending in its default."""
    for f in options(cls):
        if f.name in skip:
            continue
        meta, kind = f.metadata["option"], value_type(f)
        names = [flag_name(f), *meta["aliases"]]
        shown = shown_default(f)
        text = f"{meta['help']} {shown}" if shown.startswith("(") else f"{meta['help']} (default: {shown})"
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", help=f"{meta['help']}")
            continue
        parser.add_argument(*names, dest=f.name, type=kind, default=f.default if not callable(f.default) else None,
                            choices=meta["choices"], metavar=meta["metavar"], help=text)


def device_option():
    """The --device field, one definition for every CLI (each dataclass needs a field of its own)."""
    return option(None, "where to run: cpu, cuda, cuda:N (the N-th GPU) or mps (Apple GPUs)",
                  shown="cuda if available, else cpu")


def check_device_name(device: str | None) -> None:
    """--device spelled as one of the devices we run on, checked with the other flags; whether this machine
    has it is loading.check_device's question, which needs torch."""
    if device is not None and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", str(device)):
        raise UserError(f"--device {device}: not a device name; use cpu, cuda, cuda:N or mps")


def from_flags(cls, args: argparse.Namespace, **more):
    """An instance of `cls` from parsed flags: every option that was added as a flag, plus `more`."""
    values = {f.name: getattr(args, f.name) for f in options(cls) if hasattr(args, f.name)}
    return cls(**values, **more)


_NOT_GIVEN = object()


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse argv the way every CLI does (cli.parse_args and parse_given both come here): `prepare_parser`'s
    --threads and one-line flag errors, text that is not UTF-8 refused before any work, the thread count applied."""
    prepare_parser(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # words no parser took: named against the flags of the subcommand given, if any (study.py)
        _flag_error(_chosen(parser, args), "unrecognized arguments: " + " ".join(unknown), parser)
    check_utf8_args(parser, args)
    use_threads(args.threads)
    return args


def parse_given(parser: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, frozenset]:
    """`parse`, and the names (dests) of the flags the user typed, their value the default or not, so a mode
    such as --demo can fill in only what was left out. argparse sets a default only where the namespace has no
    value yet, so a second parse into a namespace pre-filled with a marker leaves the marker exactly on the
    flags not typed."""
    args = parse(parser, argv)
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{name: _NOT_GIVEN for name in vars(args)}))
    return args, frozenset(name for name, value in vars(probe).items() if value is not _NOT_GIVEN)


THREADS_HELP = ("CPU threads for torch (default: torch's own choice, usually one per core; on a machine busy with "
                "other work, fewer threads are often faster)")


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    """What every CLI's parser has: `--threads N`, and flag errors as one line (the error, the closest flag for
    a mistyped one, 'see --help') instead of argparse's usage block."""
    if "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)
    for each in (parser, *_subcommands(parser)):  # study.py's create/serve/... report their own errors
        each.error = lambda message, each=each: _flag_error(each, message)


def _subcommands(parser: argparse.ArgumentParser) -> list:
    return [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()]


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser that parsed `args` (study.py create ...), or `parser` itself when it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return action.choices[getattr(args, action.dest)]
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # argparse words a refusal as "invalid <name> value: '0'"


def _flag_error(parser: argparse.ArgumentParser, message: str, top: argparse.ArgumentParser | None = None):
    """Print one line and exit 2. `parser`: the one whose --help to point at (a subcommand's, if one was given);
    `top`: the program's parser, whose flags (--threads) a subcommand takes too."""
    import difflib
    import sys

    if message.startswith("unrecognized arguments:"):
        unknown = message.split(":", 1)[1].split()
        parsers = [parser] if top in (None, parser) else [parser, top]
        flags = [s for each in parsers for s in each._option_string_actions if s.startswith("--")]
        hints = []
        for word in unknown:
            close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6) if word.startswith("-") else []
            hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
        flags_typed = [hint for word, hint in zip(unknown, hints) if word.startswith("-")]
        message = f"unknown flag {', '.join(flags_typed)}" if flags_typed else f"unexpected arguments {' '.join(unknown)}"
    print(f"error: {message}; see {parser.prog} --help", file=sys.stderr)
    sys.exit(2)


def use_threads(threads: int | None) -> None:
    """--threads: torch's intra-op thread count for this process (torch imported only when it is given)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def markdown_table(cls, skip: tuple = ()) -> str:
    """The README table of `cls`'s flags: | flag | default | meaning |."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for f in options(cls):
        if f.name not in skip:
            meta, shown = f.metadata["option"], shown_default(f)
            literal = meta["shown"] is None and f.default not in (None, "", False)
            if literal or "<" in shown or "[" in shown:
                shown = f"`{shown}`"  # a literal value; and markdown would swallow <token> as a tag
            names = f"`{flag_name(f)}`" + "".join(f" (or `{alias}`)" for alias in meta["aliases"])
            rows.append(f"| {names} | {shown} | {meta['help'].replace('<', '&lt;')} |")
    return "\n".join(rows)


# --- checks shared by the settings classes ----------------------------------------------------------

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def check_seed(seed, flag: str = "--seed"):
    """None or -1 (AUTOMATIC1111's 'random') -> None; else an int in the generator's range."""
    if seed is None or seed == -1:
        return None
    if not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{flag} {seed}: must be a whole number from 0 to {SEED_LIMIT - 1}, or -1 for a random seed")
    return seed


def check_positive(flag: str, value, allow_zero: bool = False):
    low_ok = value >= 0 if allow_zero else value >= 1
    if not low_ok:
        raise UserError(f"{flag} {value}: must be {'0 or more' if allow_zero else 'at least 1'}")


def check_finite(flag: str, value: float, example: str):
    if not math.isfinite(value):
        raise UserError(f"{flag} {value}: must be a finite number, e.g. {example}")


def check_utf8(flag: str, text) -> None:
    """Text (or a path) that holds bytes which are not UTF-8 (lone surrogates, as Python decodes such command-line
    bytes) would fail later, when a PNG's text or the manifest is written: refuse it before any work."""
    if text is None:
        return
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{flag} {ascii(str(text))}: holds bytes that are not UTF-8 text; write it in UTF-8 (for "
                        "a file, rename it with a UTF-8 name)") from None


def check_utf8_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any work, a parsed value whose text holds bytes that are not UTF-8 (Python hands them over
    as lone surrogates, which fail later, when a PNG's text, a manifest or the terminal encodes them), naming
    its flag or argument. Run by cli.parse_args and parse_given, the two ways a CLI parses."""
    for action in parser._actions:  # argparse keeps no public list of its arguments
        value = getattr(args, action.dest, None)
        name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest.upper())
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)):
                check_utf8(name, item)
