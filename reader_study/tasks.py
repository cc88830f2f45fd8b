"""The three kinds of study: what a reader is asked, the answers they may give, and which keys give them."""
from dataclasses import dataclass

PREFERENCE, REAL_OR_SYNTHETIC, LABEL = "preference", "real-or-synthetic", "label"
TASKS = (PREFERENCE, REAL_OR_SYNTHETIC, LABEL)

# A six-point forced choice: no middle answer, so every reading is a call; the position on the scale is the
# reader's confidence, which turns the calls into an ROC curve (score 6 = most sure the image is synthetic).
SIX_POINT_SCALE = ("Certainly real", "Probably real", "Possibly real",
                   "Possibly synthetic", "Probably synthetic", "Certainly synthetic")
SYNTHETIC_FROM_SCORE = 4  # scale points 4..6 call the image synthetic
PREFERENCE_CHOICES = ("Left", "Right")


@dataclass(frozen=True)
class Question:
    text: str
    choices: tuple  # the button labels, in order; an answer is stored as its label
    keys: tuple     # per choice, the keyboard keys that give it (KeyboardEvent.key values)
    images: int     # images shown at once


def question(task: str, classes: tuple = ()) -> Question:
    """The question of a study of `task` (for `label`, one answer per class name, in the order given)."""
    if task == PREFERENCE:
        return Question("Which image is more realistic?", PREFERENCE_CHOICES, (("ArrowLeft", "1"), ("ArrowRight", "2")), 2)
    if task == REAL_OR_SYNTHETIC:
        return Question("Is this image real or synthetic?", SIX_POINT_SCALE,
                        tuple((str(i + 1),) for i in range(len(SIX_POINT_SCALE))), 1)
    if task == LABEL:
        keys = tuple((str(i + 1),) if i < 9 else () for i in range(len(classes)))
        return Question("Which finding does this image show?", tuple(classes), keys, 1)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def score(answer: str) -> int:
    """The six-point scale's answer as 1..6 (6 = certainly synthetic)."""
    return SIX_POINT_SCALE.index(answer) + 1
