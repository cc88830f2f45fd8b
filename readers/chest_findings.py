"""Labelled chest-radiograph phantoms: 128 px 'PA chest films' whose findings vary independently and are known.

Each phantom has a ground-truth record (`ChestFindings`) and a caption naming its findings in plain words
("chest radiograph, left pleural effusion, enlarged heart"; "chest radiograph, no finding"). The findings:
  pleural effusion  fluid filling a lung's base up to a level, its surface curving up towards the chest wall
                    (the meniscus); left, right or both ("bilateral")
  cardiomegaly      the heart's width over the thorax's (the cardiothoracic ratio, CTR): 0.36-0.46 normal,
                    0.54-0.64 enlarged, nothing in between so the label is never a matter of a pixel
  nodule            a round opacity of 3.5-6 px radius in an upper or middle lung zone, either lung
plus anatomy that varies in every image: thorax size, lung size, a small rotation, exposure and noise.

Side convention (radiological, as a PA film is read): the patient's LEFT is on the image's RIGHT. A "left pleural
effusion" is fluid at the base of the lung on the image's right half, and the heart bulges to the image's right.
readers/findings.py measures these findings back from pixels.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .phantom import inside_ellipse

SIZE = 128  # pixels
SUPERSAMPLE = 2  # shapes are drawn at twice the size and averaged down: soft, anti-aliased edges
CAPTION_PREFIX = "chest radiograph"
NO_FINDING = "no finding"
EFFUSION_SIDES = ("left", "right", "both")
NORMAL_CTR, ENLARGED_CTR = (0.36, 0.46), (0.54, 0.64)
EFFUSION_LEVEL = (0.2, 0.3)  # fluid height (at the lung's centre line) over the lung's height
NODULE_RADIUS = (3.5, 6.0)  # pixels
# How often each finding is drawn when not asked for; independent of each other.
RATES = {"effusion": 0.4, "cardiomegaly": 0.3, "nodule": 0.3}

# Grey levels before exposure: background, soft tissue, lung, fluid, mediastinum and heart, nodule contrast.
BACKGROUND, TISSUE, LUNG, FLUID, MEDIASTINUM, HEART, NODULE = 0.03, 0.62, 0.2, 0.6, 0.74, 0.7, 0.4


@dataclass(frozen=True)
class ChestFindings:
    """The ground truth of one phantom. Sides are the patient's (left = the image's right half)."""
    effusion_left: bool
    effusion_right: bool
    effusion_level_left: float  # fluid height over lung height at the lung's centre line; 0 without fluid
    effusion_level_right: float
    ctr: float  # cardiothoracic ratio: heart width over the thorax's inner width (outer lung edges)
    nodule: bool
    nodule_x: float = 0.0  # centre in pixels (x to the right, y down) in the patient frame, before the rotation
    nodule_y: float = 0.0
    nodule_radius: float = 0.0  # pixels
    nodule_side: str = ""  # "left" or "right" (the patient's), "" without a nodule

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr > 0.5

    @property
    def effusion(self) -> str:
        """'left', 'right', 'both' or '' (none)."""
        return {(True, True): "both", (True, False): "left", (False, True): "right"}.get(
            (self.effusion_left, self.effusion_right), "")

    @property
    def caption(self) -> str:
        words = []
        if self.effusion:
            words.append(("bilateral" if self.effusion == "both" else self.effusion) + " pleural effusion")
        if self.cardiomegaly:
            words.append("enlarged heart")
        if self.nodule:
            words.append("lung nodule")
        return ", ".join([CAPTION_PREFIX] + (words or [NO_FINDING]))


@dataclass(frozen=True)
class Anatomy:
    """What varies in every image: size factors (1 = the average), the rotation in degrees, the exposure
    (pixel = gain * value + offset) and the noise's standard deviation (grey levels in 0..1)."""
    thorax_scale: float
    lung_width: tuple  # (image-left lung, image-right lung) scale factors
    lung_height: tuple
    rotation: float
    gain: float
    offset: float
    noise: float


def chest_case(rng: np.random.Generator, effusion: str | None = None, cardiomegaly: bool | None = None,
               nodule: bool | None = None) -> tuple[Image.Image, ChestFindings]:
    """One labelled phantom: (grey 128x128 image, its findings). A finding left None is drawn at RATES;
    effusion is '' (none), 'left', 'right' or 'both'."""
    anatomy = random_anatomy(rng)
    findings = random_findings(rng, anatomy, effusion, cardiomegaly, nodule)
    return Image.fromarray(draw(anatomy, findings, rng), mode="L"), findings


def chest_cases(seed: int, count: int, **asked) -> list[tuple[Image.Image, ChestFindings]]:
    """`count` phantoms, phantom i from its own generator seeded (seed, i): the same set whatever the count."""
    return [chest_case(np.random.default_rng((seed, i)), **asked) for i in range(count)]


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(thorax_scale=rng.uniform(0.94, 1.04), lung_width=tuple(rng.uniform(0.93, 1.07, 2)),
                   lung_height=tuple(rng.uniform(0.97, 1.03, 2)), rotation=rng.uniform(-4, 4),
                   gain=rng.uniform(0.85, 1.1), offset=rng.uniform(-0.04, 0.04), noise=rng.uniform(0.01, 0.035))


def random_findings(rng, anatomy: Anatomy, effusion=None, cardiomegaly=None, nodule=None) -> ChestFindings:
    if effusion is None:
        effusion = rng.choice(EFFUSION_SIDES, p=(0.375, 0.375, 0.25)) if rng.random() < RATES["effusion"] else ""
    if effusion not in ("",) + EFFUSION_SIDES:
        raise ValueError(f"effusion {effusion!r}: choose '', 'left', 'right' or 'both'")
    if cardiomegaly is None:
        cardiomegaly = rng.random() < RATES["cardiomegaly"]
    if nodule is None:
        nodule = rng.random() < RATES["nodule"]
    left, right = effusion in ("left", "both"), effusion in ("right", "both")
    levels = [rng.uniform(*EFFUSION_LEVEL) if on else 0.0 for on in (left, right)]
    ctr = rng.uniform(*(ENLARGED_CTR if cardiomegaly else NORMAL_CTR))
    spot = _nodule_place(rng, anatomy) if nodule else {}
    return ChestFindings(left, right, levels[0], levels[1], ctr, bool(nodule), **spot)


def _nodule_place(rng, anatomy: Anatomy) -> dict:
    """A centre in the upper or middle zone of one lung (away from fluid and heart), in unrotated pixels."""
    side = str(rng.choice(("left", "right")))
    lung = _lungs(anatomy)[1 if side == "left" else 0]
    u, v = rng.uniform(-0.5, 0.5), rng.uniform(-0.62, -0.12)  # across the lung, and up from its middle
    return {"nodule_x": (lung["cx"] + u * lung["rx"]) * SIZE, "nodule_y": (lung["cy"] + v * lung["ry"]) * SIZE,
            "nodule_radius": rng.uniform(*NODULE_RADIUS), "nodule_side": side}


def _lungs(anatomy: Anatomy) -> list[dict]:
    """The two lung ellipses, image-left (the patient's right) first, in fractions of the image."""
    s = anatomy.thorax_scale
    return [{"cx": 0.5 + sign * 0.2 * s, "cy": 0.48, "rx": 0.145 * s * w, "ry": 0.3 * s * h, "sign": sign}
            for sign, w, h in zip((-1, 1), anatomy.lung_width, anatomy.lung_height)]


def thorax_width(anatomy: Anatomy) -> float:
    """The thorax's inner width, outer edge of one lung to the other's, as a fraction of the image."""
    left, right = _lungs(anatomy)
    return (right["cx"] + right["rx"]) - (left["cx"] - left["rx"])


def draw(anatomy: Anatomy, findings: ChestFindings, rng: np.random.Generator) -> np.ndarray:
    """The phantom's pixels, uint8 (SIZE, SIZE)."""
    n = SIZE * SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n  # pixel centres, fractions of the image
    turn = np.deg2rad(anatomy.rotation)  # the patient turned about the image centre: draw in their frame
    x, y = (0.5 + (x - 0.5) * np.cos(turn) + (y - 0.5) * np.sin(turn),
            0.5 - (x - 0.5) * np.sin(turn) + (y - 0.5) * np.cos(turn))
    s = anatomy.thorax_scale
    image = np.full((n, n), BACKGROUND)
    image[inside_ellipse(x, y, 0.5, 0.53, 0.44 * s, 0.47 * s)] = TISSUE
    for lung, level in zip(_lungs(anatomy), (findings.effusion_level_right, findings.effusion_level_left)):
        inside = inside_ellipse(x, y, lung["cx"], lung["cy"], lung["rx"], lung["ry"])
        image[inside] = LUNG + 0.08 * (y[inside] - lung["cy"]) / lung["ry"]  # a little denser towards the base
        if level:
            image[inside & (y > _fluid_surface(x, lung, level))] = FLUID
    image[(np.abs(x - 0.5) < 0.035 * s) & (y > 0.12) & (y < 0.8)] = MEDIASTINUM
    heart_rx = findings.ctr * thorax_width(anatomy) / 2
    image[inside_ellipse(x, y, 0.5 + 0.035 * s, 0.56, heart_rx, 0.1 * s)] = HEART
    if findings.nodule:
        r = np.hypot(x * SIZE - findings.nodule_x, y * SIZE - findings.nodule_y) / findings.nodule_radius
        image += NODULE * np.clip(1.5 - r, 0, 1) * (r < 1.5)  # a disc with a one-third soft rim
    image = image.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    image = anatomy.gain * image + anatomy.offset + rng.normal(0, anatomy.noise, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _fluid_surface(x, lung: dict, level: float):
    """The fluid's surface: `level` of the lung's height above its base at the centre line, rising towards the
    chest wall (the meniscus)."""
    lateral = np.clip((x - lung["cx"]) * lung["sign"] / lung["rx"], -1, 1)  # -1 medial, +1 at the chest wall
    base = lung["cy"] + lung["ry"]
    return base - level * 2 * lung["ry"] - 0.06 * ((lateral + 1) / 2) ** 2 + 0.015
