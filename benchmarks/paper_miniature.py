#!/usr/bin/env python
"""The paper's table (de Wilde et al. 2024, Table 2) in miniature, on the phantom model, on a CPU:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/paper_miniature.py --out benchmarks/results/paper_miniature.json

Every step is one of the CLIs, run as a subprocess, as a user runs them:
  1. real data   labelled chest phantoms (readers.chest_findings), the task "lung nodule present?" (the phantom
                 model's weakest finding: a 7-12 px round opacity, resized here to --size px), its other findings
                 at their usual rates; train / val / test are drawn from different generator seeds (a seed is a
                 patient here: no phantom is in two splits)
  2. embeddings  train.py --concepts on the real training folders: one token per class (<neg>, <pos>), and the
                 same from only --few images per class (the paper's row 4: a 10-image embedding)
  3. synthetic   sample.py --prompts-file: --synthetic images per class with each pair of tokens
  4. fidelity    evaluate.py of each synthetic set against the real training images (random Inception weights,
                 measure/demo.py's: the numbers check the wiring and compare the two sets, they are not FIDs)
  5. classifier  classify.py from scratch (no ImageNet weights here): arms real, real+synthetic, synthetic with
                 the 100-image embedding; real+synthetic and synthetic with the 10-image one; AUC on the real
                 test set, DeLong 95% CI, paired DeLong p against the real arm (same seeds)
The JSON holds every number and the exact commands; docs/paper-in-miniature.md shows the table.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, write_json  # noqa: E402
from mini_ldm.demo import DEMO_MODEL  # noqa: E402
from readers.findings import measure  # noqa: E402
from ti.phantoms import write_chest_phantoms  # noqa: E402

CLASSES = {"neg": {"nodule": False}, "pos": {"nodule": True}}
SPLIT_SEEDS = {"train": 101, "val": 202, "test": 303}  # the "patients" of each split never meet
REUSE = {"on": False}  # --reuse: a step whose output is already in --work is not run again


def write_split(folder: Path, per_class: int, seed: int) -> Path:
    if REUSE["on"] and folder.is_dir():
        return folder
    for k, (name, findings) in enumerate(CLASSES.items()):
        write_chest_phantoms(folder / name, per_class, seed * 10 + k, **findings)
    return folder


def run(cmd: list, log: list, done: Path | None = None) -> float | None:
    """Runs one CLI (from the repository root), records the command and its seconds; stops on a failure.
    With --reuse, a step whose output `done` exists is recorded as reused instead."""
    if REUSE["on"] and done is not None and done.exists():
        log.append({"command": "python " + " ".join(map(str, cmd)), "seconds": None, "reused": True})
        return None
    t0 = time.time()
    r = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.time() - t0, 1)
    log.append({"command": "python " + " ".join(map(str, cmd)), "seconds": seconds})
    print(f"{seconds:7.1f} s  python {' '.join(map(str, cmd))}", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return seconds


def embed_and_sample(name: str, data: Path, work: Path, args, log: list) -> Path:
    """train.py --concepts on `data` (neg/, pos/) -> sample.py --prompts-file -> work/<name>-synthetic/."""
    tokens = work / f"{name}-tokens"
    run(["train.py", "--model", DEMO_MODEL, "--device", "cpu", "--concepts", "--data", data, "--output", tokens,
         "--token-prefix", name, "--init", "dog", "--vectors", args.vectors, "--steps", args.ti_steps, "--lr", 0.05,
         "--batch", 4, "--save-every", 0, "--overwrite"], log, tokens / f"{name}-pos.safetensors")
    prompts = work / f"{name}-prompts.csv"
    prompts.write_text("prompt,count,folder\n" + "".join(f"<{name}-{c}>,{args.synthetic},{c}\n" for c in CLASSES))
    out = work / f"{name}-synthetic"
    run(["sample.py", "--model", DEMO_MODEL, "--device", "cpu", "--embeddings", tokens, "--prompts-file", prompts,
         "--seed", 1000, "--steps", args.sample_steps, "--scheduler", "dpm++2m", "--cfg", 3, "--output", out], log,
        out / "metadata.csv")
    return out


def evaluate(name: str, real: Path, synthetic: Path, work: Path, log: list) -> dict:
    out = work / f"{name}-evaluation"
    run(["evaluate.py", "--demo", real, synthetic, "--output", out], log, out / "metrics.json")
    metrics = json.loads((out / "metrics.json").read_text())
    return {k: metrics[k] for k in ("fid", "kid_mean", "kid_std", "memorized_fraction", "n_real", "n_synth")}


def classify(name: str, splits: dict, synthetic: Path, arms: str, work: Path, args, log: list) -> dict:
    out = work / f"{name}-classify"
    run(["classify.py", "--train", splits["train"], "--val", splits["val"], "--test", splits["test"],
         "--synthetic", synthetic, "--positive", "pos", "--arms", arms, "--from-scratch", "--repeats", args.repeats,
         "--steps", args.classify_steps, "--batch", 16, "--lr", 1e-3, "--size", args.size, "--augment", "light",
         "--val-every", max(1, args.classify_steps // 6), "--device", "cpu", "--output", out, "--overwrite"], log,
        out / "results.json")
    return json.loads((out / "results.json").read_text())


def nodule_rates(folder: Path) -> dict:
    """The share of each class folder's images in which the nodule detector (readers/findings.py) finds one."""
    from PIL import Image
    rates = {}
    for c in CLASSES:
        paths = sorted((folder / c).glob("*.png"))
        rates[c] = round(sum(measure(Image.open(p).convert("L")).nodule for p in paths) / len(paths), 3)
    return rates


def table(results: dict) -> str:
    """The paper's Table 2 layout: one row per arm and embedding; AUC mean +/- std over repeats, the mean of the
    per-repeat DeLong 95% CIs, the paired DeLong p against the real arm per repeat."""
    lines = ["| row | embedding | training set | real / synthetic images | test AUC (mean +/- std) | mean 95% CI "
             "| paired p vs real (per repeat) |", "|---|---|---|---|---|---|---|"]
    row = 0
    for name, label in (("full", f"{results['settings']['real'][0]} images/class"),
                        ("few", f"{results['settings']['few']} images/class")):
        run = results["classify"][name]
        p_of = {c["b"]: c["p"] for c in run["comparisons"] if c["a"] == "real"}
        for arm, a in run["arms"].items():
            if name == "few" and arm == "real":
                continue  # the same seeds as the first run's real arm: the same trainings
            row += 1
            lo = sum(c[0] for c in a["ci95"]) / len(a["ci95"])
            hi = sum(c[1] for c in a["ci95"]) / len(a["ci95"])
            std = f" +/- {a['auc_std']:.3f}" if a["auc_std"] is not None else ""
            ps = ", ".join(f"{p:.2g}" for p in p_of.get(arm, [])) or "-"
            emb = "-" if arm == "real" else label
            lines.append(f"| {row} | {emb} | {arm} | {a['n_real']} / {a['n_synthetic']} | {a['auc_mean']:.3f}{std} "
                         f"| {lo:.2f}-{hi:.2f} | {ps} |")
    return "\n".join(lines)


def report(path: Path) -> None:
    """--report: add the detectors' nodule rates (real and synthetic sets, from --work) and print the table."""
    results = json.loads(path.read_text())
    work = Path(results["settings"]["work"])
    results["nodule_rate"] = {"real train": nodule_rates(work / "real" / "train"),
                              "synthetic, full embedding": nodule_rates(work / "full-synthetic"),
                              "synthetic, 10-image embedding": nodule_rates(work / "few-synthetic")}
    write_json(path, results)
    print(table(results))
    print(json.dumps(results["nodule_rate"]), json.dumps(results["evaluate"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".paper-miniature",
                   help="folder for the images, tokens and runs (replaced)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_miniature.json")
    p.add_argument("--real", type=int, nargs=3, default=[50, 50, 100], metavar=("TRAIN", "VAL", "TEST"),
                   help="real phantoms per class in each split")
    p.add_argument("--few", type=int, default=10, help="images per class of the row-4 embedding")
    p.add_argument("--synthetic", type=int, default=100, help="synthetic images per class and embedding")
    p.add_argument("--vectors", type=int, default=4)
    p.add_argument("--ti-steps", type=int, default=150)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--size", type=int, default=32, help="classifier input size in pixels (32: a nodule is 1-3 px)")
    p.add_argument("--classify-steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--report", action="store_true", help="only read --out (and --work's images) and print the table")
    p.add_argument("--reuse", action="store_true", help="keep --work and skip the steps whose output is there "
                   "(a run finished in parts: the skipped steps are marked reused in the log)")
    args = p.parse_args()
    REUSE["on"] = args.reuse
    if args.report:
        return report(args.out)
    t0, log = time.time(), []
    work = args.work
    if not args.reuse:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    splits = {s: write_split(work / "real" / s, n, SPLIT_SEEDS[s]) for s, n in zip(SPLIT_SEEDS, args.real)}
    few = write_split(work / "real" / "few", args.few, SPLIT_SEEDS["train"])  # the first --few of train's
    full = embed_and_sample("full", splits["train"], work, args, log)
    small = embed_and_sample("few", few, work, args, log)
    results = {"settings": vars(args) | {"work": str(work), "out": str(args.out)}, "log": log,
               "evaluate": {"full": evaluate("full", splits["train"], full, work, log),
                            "few": evaluate("few", splits["train"], small, work, log)},
               "classify": {"full": classify("full", splits, full, "real,real+synthetic,synthetic", work, args, log),
                            "few": classify("few", splits, small, "real,real+synthetic,synthetic", work, args, log)}}
    results["minutes"] = round((time.time() - t0) / 60, 1)
    write_json(args.out, results)
    print(f"{results['minutes']} minutes; wrote {args.out}")
    report(args.out)


if __name__ == "__main__":
    main()
