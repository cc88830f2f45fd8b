"""Prompt templates for Textual Inversion training.

Each training step renders one template with the learned token in place of `[name]` and the image's
caption (its .txt file) in place of `[filewords]`. The default, "name", is the bare token: the paper's
concepts are whole image types (a chest X-ray with effusion), so a phrase like "a photo of" adds little.
"""
from pathlib import Path

from mini_ldm.errors import UserError

BUILTIN_TEMPLATES: dict[str, list[str]] = {
    "name": ["[name]"],
    "object": [
        "a photo of a [name]",
        "a rendering of a [name]",
        "a cropped photo of the [name]",
        "the photo of a [name]",
        "a photo of a clean [name]",
        "a close-up photo of a [name]",
        "a bright photo of the [name]",
        "a dark photo of the [name]",
        "a good photo of the [name]",
        "a photo of one [name]",
        "a low resolution photo of a [name]",
        "a high resolution photo of the [name]",
        "a blurry photo of the [name]",
        "an image of a [name]",
        "a picture of the [name]",
        "a detailed image of a [name]",
    ],
    "style": [
        "a painting in the style of [name]",
        "a rendering in the style of [name]",
        "a cropped painting in the style of [name]",
        "the painting in the style of [name]",
        "a clean painting in the style of [name]",
        "a close-up painting in the style of [name]",
        "a bright painting in the style of [name]",
        "a dark painting in the style of [name]",
        "a good painting in the style of [name]",
        "a small painting in the style of [name]",
        "a large painting in the style of [name]",
        "a picture in the style of [name]",
        "an image in the style of [name]",
        "an illustration in the style of [name]",
        "a detailed artwork in the style of [name]",
    ],
    "filewords": ["[name], [filewords]"],
}


class TemplateError(UserError):
    """A bad template name or template file; the message says which and what is valid."""


def load_templates(name_or_path) -> list[str]:
    """A built-in list by name, else a text file with one template per line.

    A built-in name wins over a file of the same name; write `./style` to mean the file.
    In files, blank lines and lines starting with # are ignored, and every line must contain [name].
    """
    if str(name_or_path) in BUILTIN_TEMPLATES:
        return list(BUILTIN_TEMPLATES[str(name_or_path)])
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(BUILTIN_TEMPLATES)
        raise TemplateError(f"unknown templates {str(name_or_path)!r}: not a built-in ({names}) and no such file")
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "[name]" not in line:
            raise TemplateError(f"{path}:{number}: template {line!r} has no [name] placeholder for the learned token")
        templates.append(line)
    if not templates:
        raise TemplateError(f"{path} holds no templates; write one per line, each containing [name]")
    return templates


def render(template: str, token: str, caption: str = "") -> str:
    """Fill in [name] and [filewords]. With no caption, the separators left around it are dropped,
    so "[name], [filewords]" becomes just the token rather than "<token>, "."""
    text = template.replace("[name]", token).replace("[filewords]", caption.strip())
    text = " ".join(text.split())
    while ", ," in text or ",," in text:
        text = text.replace(", ,", ",").replace(",,", ",")
    return text.strip(" ,")
