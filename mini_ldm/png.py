"""PNG files that remember how they were made.

Each image carries a `parameters` text chunk in AUTOMATIC1111's format, so the web UI's "PNG Info"
tab, and a person with a text viewer, can read the prompt, seed and settings back.
"""
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .io import write_image_atomic

# Our scheduler names -> AUTOMATIC1111's sampler names.
A1111_SAMPLERS = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "dpm++2m": "DPM++ 2M",
                  "dpm++2m_karras": "DPM++ 2M Karras"}


def parameters_text(settings, model_name: str | None = None, extra: dict | None = None) -> str:
    """The three-line A1111 'parameters' text of a SampleSettings: prompt, negative prompt, then 'Key: value'
    pairs. The model's name comes from settings.extra["Model"] (sample() fills it in) unless given here."""
    more = dict(settings.extra)
    model = model_name if model_name is not None else more.pop("Model", "")
    more.pop("Model", None)
    fields = {"Steps": settings.steps, "Sampler": A1111_SAMPLERS.get(settings.scheduler, settings.scheduler),
              "CFG scale": settings.cfg, "Seed": settings.seed, "Size": f"{settings.width}x{settings.height}",
              "Model": model, **more, **(extra or {})}
    lines = [settings.prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def _quote(value) -> str:
    text = str(value)
    return f'"{text}"' if ("," in text or ":" in text) else text


def parse_parameters(text: str) -> dict:
    """The parameters text back as {"Prompt": ..., "Negative prompt": ..., "Steps": "2", ...}, values as text."""
    lines = text.split("\n")
    fields = {"Prompt": lines[0], "Negative prompt": ""}
    if len(lines) > 2 and lines[1].startswith("Negative prompt: "):
        fields["Negative prompt"] = lines[1].removeprefix("Negative prompt: ")
    for key, value in _FIELD.findall(lines[-1] if len(lines) > 1 else ""):
        fields[key] = value[1:-1] if value.startswith('"') else value
    return fields


_FIELD = re.compile(r'\s*([\w ./-]+):\s*("[^"]*"|[^,]*)(?:,|$)')


def save_png(image: Image.Image, path, parameters: str) -> Path:
    """Write `image` with its parameters chunk, through a temporary file and one rename: `path` is never half
    written, whatever interrupts the write (a dataset job relies on it to resume after a crash)."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    return write_image_atomic(path, image, format="PNG", pnginfo=info)


def read_parameters(path) -> str | None:
    with Image.open(path) as im:
        return im.info.get("parameters")
