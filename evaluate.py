#!/usr/bin/env python
"""Compare a folder of synthetic images with a folder of real ones: FID, KID, Inception Score, memorisation.

    python evaluate.py data/effusion outputs/effusion                      # -> evaluation/metrics.json, ...
    python evaluate.py data/effusion outputs/effusion --resize tf1 --zscore   # the paper's setting
    python evaluate.py --demo                                              # random weights, two demo folders
"""
import argparse
import sys
from pathlib import Path

from mini_ldm import cli
from mini_ldm.demo import DEMO_DIR
from mini_ldm.errors import UserError
from mini_ldm.settings import add_flags, check_device_name, from_flags
from measure.copying import data_copying
from measure.evaluate_settings import EvaluateSettings, missing_weights
from measure.report import (summary_table, write_data_copying_png, write_memorization_csv, write_memorization_png,
                            write_metrics_json)
from readers.images import find_images

# Everything above is torch-free, so a wrong flag or folder answers at once; torch (seconds to import, more on a
# busy machine) comes with the modules imported inside the functions that encode and measure.

OUT_OF_MEMORY_HINT = "try a smaller --batch (e.g. 1), --device cpu, or fewer or smaller images"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="FID, KID and Inception Score of SYNTH against REAL, as the paper "
                                "measured them, plus a memorisation audit (nearest real image of every synthetic one).")
    p.add_argument("real", type=Path, nargs="?", metavar="REAL", help="folder of real images (searched recursively; any format "
                   "train.py --data reads)")
    p.add_argument("synth", type=Path, nargs="?", metavar="SYNTH", help="folder of synthetic images")
    add_flags(p, EvaluateSettings)
    args = cli.parse_args(p, argv)
    if not args.demo and (args.real is None or args.synth is None):
        p.error("give REAL and SYNTH (or --demo)")
    return args


def check_cheap_things(args, settings: EvaluateSettings) -> None:
    """Everything that costs nothing, before the weights are hashed or an image is encoded."""
    for role, folder in (("REAL", args.real), ("SYNTH", args.synth)):
        if not folder.is_dir():
            raise UserError(f"{role} folder {folder} does not exist or is not a folder; give the folder of "
                            f"{role.lower()} images")
        find_images(folder, warn=lambda message: None, tool="evaluate.py")  # an empty folder: now, not after loading
    if settings.weights is not None and not settings.weights.is_file():
        raise UserError(missing_weights(settings.weights))
    cli.check_writable(settings.output, "--output", is_file=False)  # before both folders are encoded, not after


def encode(s: EvaluateSettings, model, folder: Path, role: str):
    from measure.features import folder_features

    with cli.naming_out_of_memory(f"encoding {role} folder {folder}"):  # cli.run adds OUT_OF_MEMORY_HINT
        feats = folder_features(folder, model, s.resize, s.zscore, s.dims, s.batch,
                                cache_dir=False if s.no_cache else s.cache_dir, mirror=role == "REAL" and not s.no_mirror)
    print(f"{role}: {len(feats)} images from {folder}" + (" (cached features)" if feats.from_cache else ""))
    if len(feats) < 2:
        raise UserError(f"{role} folder {folder} has {len(feats)} readable image; FID, KID and the memorisation "
                        "audit need at least two in each set")
    return feats


def inception_score_checked(s: EvaluateSettings, synth) -> tuple:
    from measure.metrics import inception_score

    if len(synth) < s.is_splits:
        print(f"warning: {len(synth)} synthetic images and --is-splits {s.is_splits}: each split holds one image at "
              "most, so the Inception Score is 1.0 +- 0 whatever the images; give more images or fewer splits",
              file=sys.stderr)
    return inception_score(synth.logits, s.is_splits, seed=s.seed)


def compute(args, s: EvaluateSettings, real, synth) -> tuple:
    from measure.metrics import PER_REAL_RATIO, default_kid_subset_size, fid, kid, memorization_audit

    size = s.kid_subset_size or default_kid_subset_size(len(real), len(synth))
    if not 2 <= size <= min(len(real), len(synth)):
        raise UserError(f"--kid-subset-size {size} must be between 2 and the smaller set ({min(len(real), len(synth))})")
    kid_mean, kid_std = kid(real.features, synth.features, s.kid_subsets, size, seed=s.seed)
    is_mean, is_std = inception_score_checked(s, synth)
    audit = memorization_audit(real.pool, synth.pool, real.pool_mirrored)
    metrics = {
        "fid": fid(real.features, synth.features), "kid_mean": kid_mean, "kid_std": kid_std,
        "is_mean": is_mean, "is_std": is_std, "n_real": len(real), "n_synth": len(synth),
        "memorized": audit.n_flagged, "memorized_fraction": audit.n_flagged / len(synth),
        "memorized_global": int(audit.flagged_global.sum()), "memorized_per_real": int(audit.flagged_per_real.sum()),
        "per_real_ratio": PER_REAL_RATIO, "real_nn_max": audit.real_nn_max, "real_nn_p99": audit.real_nn_p99,
        "n_unreadable": len(real.skipped) + len(synth.skipped),
        "unreadable_real": real.skipped, "unreadable_synth": synth.skipped,
        "real": str(args.real), "synth": str(args.synth), "dims": s.dims, "resize": s.resize,
        "zscore": s.zscore, "kid_subsets": s.kid_subsets, "kid_subset_size": size, "kid_degree": 3,
        "is_splits": s.is_splits, "seed": s.seed,
        "memorization_features": "2048-d pool, cosine" + ("" if s.no_mirror else "; mirrored real images count"),
    }
    return metrics, audit


def held_out_test(s: EvaluateSettings, model, real, synth):
    """--held-out: the data-copying test C_T (measure/copying.py) in the pool features."""
    if s.cells is not None and s.cells > len(real):  # before the held-out folder is encoded, not after
        raise UserError(f"--cells {s.cells}: REAL has only {len(real)} images; give at most that many cells")
    held_out = encode(s, model, s.held_out, "held-out")
    return data_copying(real.pool.numpy(), synth.pool.numpy(), held_out.pool.numpy(), s.cells, s.min_cell, s.seed)


def demo(args, settings: EvaluateSettings) -> None:
    """--demo: the demo folders where REAL or SYNTH is not given, output and splits sized for them."""
    print("demo: random Inception weights; this checks the install, its numbers mean nothing (real runs need "
          "the FID weights in weights/, see README)")
    from measure.demo import demo_folders

    if args.real is None or args.synth is None:  # folders given (say the chain's own) are used as they are
        real, synth = demo_folders()
        args.real, args.synth = args.real or real, args.synth or synth
    if settings.output == EvaluateSettings.output:  # the default: keep everything under demo-output/
        settings.output = DEMO_DIR / "evaluation"
    if settings.is_splits == EvaluateSettings.is_splits:
        settings.is_splits = 2


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = from_flags(EvaluateSettings, args)
    settings.check()  # the flags before --demo writes its folders
    check_device_name(settings.device)
    if settings.demo:
        demo(args, settings)
    check_cheap_things(args, settings)
    from measure.demo import demo_weights
    from measure.inception import find_default_weights, load_inception
    from mini_ldm.loading import check_device, default_device

    settings.device = settings.device or default_device()
    check_device(settings.device)
    weights = settings.weights or (demo_weights() if settings.demo else find_default_weights())
    model = load_inception(weights, device=settings.device)
    print(f"Inception-v3 weights: {weights} (sha256 {model.weights_sha256[:12]}...)")
    real = encode(settings, model, args.real, "REAL")
    synth = encode(settings, model, args.synth, "SYNTH")
    metrics, audit = compute(args, settings, real, synth)
    metrics.update(weights=str(weights), weights_sha256=model.weights_sha256)
    copying = held_out_test(settings, model, real, synth) if settings.held_out is not None else None
    if copying is not None:
        metrics["data_copying"] = copying.as_json()
    out = settings.output
    write_metrics_json(out / "metrics.json", metrics)
    write_memorization_csv(out / "memorization.csv", audit, real.names, synth.names)
    write_memorization_png(out / "memorization.png", audit, real.root, real.names, synth.root, synth.names,
                           settings.memorization_top)
    if copying is not None:
        write_data_copying_png(out / "data_copying.png", copying)
    print(summary_table(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'memorization.csv'}, {out / 'memorization.png'}"
          + (f", {out / 'data_copying.png'}" if copying is not None else ""))


if __name__ == "__main__":
    cli.run(main, memory_hint=OUT_OF_MEMORY_HINT)
