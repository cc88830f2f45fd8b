"""The downstream classifier experiment (the paper's Table: real vs real + synthetic training images).

For each arm (training set) and repeat: a ResNet-18 is fine-tuned with the paper's recipe, validated on the
real validation set every `val_every` steps, and its best checkpoint scores the real test set once. Each
finished (arm, repeat) is saved at once as runs/<arm>-r<repeat>.json, so a rerun with the same settings
continues where the last one stopped; results.json, predictions.csv and roc.png are rewritten from the
finished runs after each newly trained one (a killed experiment keeps what finished) and at the end.
"""
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mini_ldm import cli
from mini_ldm.errors import UserError
from mini_ldm.io import pid_lock, write_json_atomic, write_text_atomic
from mini_ldm.loading import DTYPES, check_device, default_autocast_dtype, default_device

from stats import auc
from .augment import augment
from .data import ImageSet, check_classes, read_images, synthetic_subset
from .report import write_outputs
from .settings import Arm, ClassifySettings
from .resnet import build, default_weights, read_backbone

SETTINGS_FILE = "settings.json"  # the settings of the experiment in an output folder: a rerun must match them
RUNS = "runs"


@dataclass
class Data:
    classes: list
    positive: str
    val: ImageSet
    test: ImageSet
    train: ImageSet | None
    synthetic: ImageSet | None


def load_data(s: ClassifySettings, arms: list) -> Data:
    """Every folder read once; one-line errors for missing folders, classes that differ, too few images."""
    need_train, need_synth = any(a.real for a in arms), any(a.synthetic for a in arms)
    folders = {"--train": s.train if need_train else None, "--val": s.val, "--test": s.test,
               "--synthetic": s.synthetic if need_synth else None}
    classes, positive = check_classes(folders, s.positive)
    read = lambda flag, least=1: read_images(folders[flag], flag, classes, positive, s.size, least,  # noqa: E731
                                             s.max_pixels)
    val, test = read("--val", 2), read("--test", 2)  # an AUC per class pair, and a DeLong variance, need two
    train = read("--train") if need_train else None
    synthetic = read("--synthetic") if need_synth else None
    fewest = min(synthetic.per_class(classes, positive).values()) if synthetic is not None else 0
    for arm in arms:
        if arm.count is not None and arm.count > fewest:
            raise UserError(f"--synthetic-count {arm.count}: {s.synthetic} has {fewest} images of its smaller class; "
                            "choose counts up to that")
    return Data(classes, positive, val, test, train, synthetic)


def fingerprints(data: Data) -> dict:
    """{flag: fingerprint} of every image set read (see ImageSet.fingerprint)."""
    sets = {"--train": data.train, "--val": data.val, "--test": data.test, "--synthetic": data.synthetic}
    return {flag: images.fingerprint() for flag, images in sets.items() if images is not None}


def arm_inputs(arm: Arm, prints: dict) -> dict:
    """The fingerprints of the image sets a training of `arm` depends on (recorded in its run file)."""
    used = {"--train": arm.real, "--val": True, "--test": True, "--synthetic": arm.synthetic}
    return {flag: fingerprint for flag, fingerprint in prints.items() if used[flag]}


def training_set(arm: Arm, data: Data, seed: int) -> tuple:
    """The arm's images (real ones first, synthetic names prefixed synthetic/) and the size of each part."""
    synthetic = data.synthetic
    if arm.synthetic and arm.count is not None:
        synthetic = synthetic_subset(synthetic, arm.count, seed)
    sizes = {"n_real": len(data.train.names) if arm.real else 0,
             "n_synthetic": len(synthetic.names) if arm.synthetic else 0}
    if arm.real and arm.synthetic:
        return ImageSet.join(data.train, synthetic, "synthetic"), sizes
    return (data.train if arm.real else synthetic), sizes


def epoch_batches(n: int, batch: int, g: torch.Generator):
    """Index batches forever, a new shuffle each epoch. As the paper's Lightning Flash loader: the last,
    smaller batch of an epoch is dropped when the set holds more than one batch (so every step sees `batch`
    images); a smaller set is one batch of all of it."""
    while True:
        order = torch.randperm(n, generator=g)
        for start in range(0, max(n - batch, 0) + 1, batch):
            yield order[start:start + batch]


def steps_per_epoch(n: int, batch: int) -> int:
    return max(n // batch, 1)


def autocast(device: torch.device, dtype: str):
    if device.type == "cuda" and dtype != "fp32":
        return torch.autocast("cuda", dtype=DTYPES[dtype])
    return nullcontext()


@torch.no_grad()
def predict(model, images: ImageSet, device, dtype: str, batch: int) -> list:
    """The positive class's probability for every image, in eval mode (BatchNorm's running statistics)."""
    model.eval()
    scores = []
    for start in range(0, len(images.names), batch):
        x = images.pixels[start:start + batch].to(device).float() / 255  # (B, 3, S, S); on the device already
        with autocast(device, dtype):
            logits = model(x)
        scores.append(F.softmax(logits.float(), dim=1)[:, 1])
    model.train()
    return torch.cat(scores).tolist()  # one copy to the host, not one per batch


def on_device(images: ImageSet, device) -> ImageSet:
    """The set's pixels and labels moved to the training device once, not batch by batch."""
    return ImageSet(images.names, images.labels.to(device), images.pixels.to(device))


def train_and_test(train: ImageSet, data: Data, s: ClassifySettings, seed: int, backbone, device, dtype: str,
                   desc: str) -> dict:
    """One training of the recipe; returns the test scores of the best validation checkpoint and its record."""
    g = torch.Generator().manual_seed(seed)  # the head, the batch order
    g_aug = torch.Generator(device).manual_seed(seed)  # augmentation draws on the training device
    model = build(backbone, 2, g).to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=s.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == "fp16")
    val_every = s.val_every or steps_per_epoch(len(train.names), s.batch)  # default: once per epoch, as Lightning
    best = {"val_auc": -math.inf, "step": 0, "state": None}
    history, batches = [], epoch_batches(len(train.names), s.batch, g)
    val_labels = data.val.labels.tolist()
    for step in (bar := tqdm(range(1, s.steps + 1), desc=desc, unit="step", leave=False)):
        idx = next(batches).to(train.pixels.device)  # the batch order is drawn on the CPU, the images are not
        x = augment(train.pixels[idx].float() / 255, s.augment, g_aug)  # (B, 3, S, S) in [0, 1]
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), train.labels[idx])
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        if step % val_every == 0 or step == s.steps:
            val_scores = predict(model, data.val, device, dtype, 2 * s.batch)
            val_auc = auc.auc_mann_whitney(val_scores, val_labels) if _finite(val_scores) else math.nan
            history.append([step, val_auc if math.isfinite(val_auc) else None])  # JSON has no NaN
            if val_auc > best["val_auc"]:  # the first of equal AUCs is kept, as Lightning's checkpoint does
                best = {"val_auc": val_auc, "step": step,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            bar.set_postfix(loss=f"{loss.item():.3f}", val_auc=f"{val_auc:.3f}", best=f"{best['val_auc']:.3f}")
    if best["state"] is None:  # every validation gave NaN scores
        raise UserError(f"{desc}: the training diverged (validation scores are not finite); try --dtype fp32 or "
                        "a lower --lr")
    model.load_state_dict(best["state"])
    scores = predict(model, data.test, device, dtype, 2 * s.batch)
    if not _finite(scores):
        raise UserError(f"{desc}: the best checkpoint gives test scores that are not finite; try --dtype fp32")
    return {"seed": seed, "best_step": best["step"], "best_val_auc": best["val_auc"], "val_auc": history,
            "test_files": data.test.names, "scores": scores}


def _finite(values: list) -> bool:
    return all(math.isfinite(v) for v in values)


def run_path(output: Path, arm: Arm, repeat: int) -> Path:
    return Path(output) / RUNS / f"{arm.name.replace('+', '_').replace(':', '-')}-r{repeat}.json"


OUTPUT_FILES = ("results.json", "predictions.csv", "roc.png")


def prepare_output(s: ClassifySettings, weights_sha256: str | None) -> None:
    """A new experiment writes its settings; a rerun with the same ones continues; other settings (or
    trainings whose settings are unknown) are refused unless --overwrite, which removes the earlier
    experiment's files (only those)."""
    stamp = {"settings": s.identity(), "weights_sha256": weights_sha256}
    path = s.output / SETTINGS_FILE
    earlier_files = [*(s.output / RUNS).glob("*.json"), *(s.output / name for name in OUTPUT_FILES)]
    earlier_files = [f for f in earlier_files if f.is_file()]
    if s.overwrite:
        for old in earlier_files:
            old.unlink()
    elif path.is_file() or earlier_files:
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
            earlier = {}
        if earlier != stamp:
            raise UserError(f"--output {s.output}: holds an experiment with other settings ({_changes(earlier, stamp)}); "
                            "rerun with the same settings to continue it, add --overwrite to replace it, or choose "
                            "another --output")
    write_json_atomic(path, stamp)


def _changes(earlier: dict, stamp: dict) -> str:
    if "settings" not in earlier:
        return f"its {SETTINGS_FILE} is missing or damaged"
    changed = [f"--{k.replace('_', '-')}" for k, v in stamp["settings"].items() if earlier["settings"].get(k) != v]
    return ", ".join(changed) or "another weights file"


def finished_run(path: Path, data: Data, s: ClassifySettings, inputs: dict) -> dict | None:
    """A training saved by an earlier run of this experiment, or None. One that saw other images than the
    folders hold now (`inputs`: {flag: fingerprint}) is refused: its numbers would be mixed with new ones."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
    except ValueError:  # written atomically, so only a hand-edited file; train it again
        return None
    if run.get("test_files") != data.test.names:
        raise UserError(f"--test {s.test}: {path} was tested on other images than the folder holds now; add "
                        "--overwrite to start afresh")
    if "inputs" not in run:  # written before the fingerprints were recorded: the images it saw are unknown
        raise UserError(f"--output {s.output}: {path} does not record which images it was trained on (an older "
                        "classify.py wrote it); add --overwrite to start afresh")
    changed = [flag for flag, fingerprint in inputs.items() if run["inputs"].get(flag) != fingerprint]
    if changed:
        folders = ", ".join(f"{flag} {getattr(s, flag[2:])}" for flag in changed)
        raise UserError(f"{folders}: {path} was trained on other images than the folder{'s' * (len(changed) > 1)} "
                        "hold now (files added, removed or changed); add --overwrite to start afresh, or restore "
                        "the images")
    return run


def experiment_lock(output: Path):
    """output/classify.lock while this run writes there: a second run stops at once (a stale lock of a killed
    run is taken over)."""
    return pid_lock(output / "classify.lock", output, "classify.py run")


def resolve_runtime(s: ClassifySettings) -> tuple:
    device = check_device(s.device or default_device())
    dtype = s.dtype or default_autocast_dtype(device)
    if dtype != "fp32" and device.type != "cuda":
        raise UserError(f"--dtype {dtype}: mixed precision is for CUDA GPUs; use --dtype fp32 on {device.type}")
    return device, dtype


def run_experiment(s: ClassifySettings, log=print) -> dict:
    """Every arm x repeat (finished ones read back), then results.json, predictions.csv, roc.png; returns the
    results. All bad input is refused before the first training step; SIGTERM stops it as Ctrl-C does (the
    lock and any half-written file removed, the finished trainings kept for a rerun)."""
    arms = s.check().arm_list()
    device, dtype = resolve_runtime(s)
    cli.check_writable(s.output, "--output", is_file=False)
    backbone, sha = (None, None) if s.from_scratch else read_backbone(s.weights or default_weights())
    data = load_data(s, arms)
    log(f"classes: {', '.join(data.classes)}; positive class (label 1): {data.positive}")
    log(f"arms: {', '.join(a.name for a in arms)}; {s.repeats} repeats each; {device}, {dtype}, "
        f"{'from scratch' if backbone is None else 'ImageNet weights'}")
    prints = fingerprints(data)  # hashed on the CPU, before the move
    inputs = {arm.name: arm_inputs(arm, prints) for arm in arms}
    data = replace(data, val=on_device(data.val, device), test=on_device(data.test, device))
    with cli.sigterm_as_interrupt(), experiment_lock(s.output):
        prepare_output(s, sha)
        earlier = {(arm.name, r): finished_run(run_path(s.output, arm, r), data, s, inputs[arm.name])
                   for arm in arms for r in range(s.repeats)}  # every one checked before any training
        runs, results = {}, None  # results: None while a run read back is missing from the outputs written
        for arm in arms:
            train, sizes = training_set(arm, data, s.seed)
            train_on_device = None  # moved when the arm's first repeat trains, once for all of them
            for r in range(s.repeats):
                path, run = run_path(s.output, arm, r), earlier[arm.name, r]
                desc = f"{arm.name} repeat {r + 1}/{s.repeats}"
                if run is not None:
                    runs[arm.name, r], results = run, None
                    log(f"{desc}: finished earlier, read from {path}")
                    continue
                if train_on_device is None:
                    train_on_device = on_device(train, device)
                run = train_and_test(train_on_device, data, s, s.seed + r, backbone, device, dtype, desc)
                run.update(arm=arm.name, repeat=r, n_train=train.per_class(data.classes, data.positive),
                           inputs=inputs[arm.name], **sizes)
                write_text_atomic(path, json.dumps(run) + "\n")
                runs[arm.name, r] = run
                results = write_outputs(s.output, s, data, arms, runs, sha)
                entry = results["arms"][arm.name]
                log(f"{desc}: test AUC {entry['auc'][entry['repeats'].index(r)]:.3f} "
                    f"(best validation AUC {run['best_val_auc']:.3f} at step {run['best_step']})")
        if results is None:
            results = write_outputs(s.output, s, data, arms, runs, sha)
    return results
