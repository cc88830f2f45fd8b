#!/usr/bin/env python
"""Compare a folder of synthetic images with a folder of real ones: FID, KID, Inception Score, memorisation.

    python evaluate.py data/effusion outputs/effusion                      # -> evaluation/metrics.json, ...
    python evaluate.py data/effusion outputs/effusion --resize tf1 --zscore   # the paper's setting
"""
import argparse
from pathlib import Path

import torch

from mini_ldm import cli
from mini_ldm.errors import UserError
from mini_ldm.loading import check_device
from measure.inception import FEATURE_DIMS, WEIGHTS_FILES, find_default_weights, load_inception
from measure.preprocess import RESIZE_MODES
from measure.metrics import default_kid_subset_size, fid, inception_score, kid, memorization_audit
from measure.features import default_cache_dir, folder_features
from measure.report import summary_table, write_memorization_csv, write_memorization_png, write_metrics_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="FID, KID and Inception Score of SYNTH against REAL, as the paper "
                                "measured them, plus a memorisation audit (nearest real image of every synthetic one).")
    p.add_argument("real", type=Path, help="folder of real images (searched recursively; any format train.py --data reads)")
    p.add_argument("synth", type=Path, help="folder of synthetic images")
    p.add_argument("--output", type=Path, default=Path("evaluation"),
                   help="folder for metrics.json, memorization.csv and memorization.png (default: evaluation/)")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"Inception-v3 FID weights, {WEIGHTS_FILES[0]} (pytorch-fid) or {WEIGHTS_FILES[1]} "
                        "(torch-fidelity) (default: the one in weights/)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="antialias",
                   help="to 299 px: antialias (bilinear with antialiasing, torchmetrics >= 1.0; default) or tf1 "
                        "(TensorFlow-1 bilinear, torch-fidelity and torchmetrics 0.x: the paper's numbers)")
    p.add_argument("--zscore", action="store_true",
                   help="the paper's per-image normalisation first: (x - mean) / std over the whole RGB image, "
                        "* 64 + 128, clipped, 8-bit")
    p.add_argument("--dims", type=int, choices=FEATURE_DIMS, default=2048,
                   help="Inception features for FID and KID (default: 2048, the final pool)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets averaged (default: 100)")
    p.add_argument("--kid-subset-size", type=int, default=None,
                   help="KID: images per subset (default: min(1000, the smaller set))")
    p.add_argument("--is-splits", type=int, default=10, help="Inception Score: splits of SYNTH (default: 10)")
    p.add_argument("--memorization-top", type=int, default=16, metavar="K",
                   help="memorization.png shows the K closest synthetic/real pairs (default: 16)")
    p.add_argument("--no-mirror", action="store_true",
                   help="memorisation audit: do not count a left-right mirrored copy of a real image as a copy "
                        "(saves encoding the real set a second time, mirrored)")
    p.add_argument("--seed", type=int, default=0, help="seed of the KID subsets and the IS permutation (default: 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--batch", type=int, default=16, help="images per Inception forward pass (default: 16)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where folder features are cached (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="encode both folders again and cache nothing")
    return p.parse_args(argv)


def check_args(args) -> None:
    for flag, value in (("--kid-subsets", args.kid_subsets), ("--is-splits", args.is_splits), ("--batch", args.batch)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.memorization_top < 0:
        raise UserError(f"--memorization-top must be 0 or more, got {args.memorization_top}")
    check_device(args.device)
    cli.check_writable(args.output, "--output", is_file=False)  # before both folders are encoded, not after


def encode(args, model, folder: Path, role: str):
    feats = folder_features(folder, model, args.resize, args.zscore, args.dims, args.batch,
                            cache_dir=False if args.no_cache else args.cache_dir,
                            mirror=role == "REAL" and not args.no_mirror)
    print(f"{role}: {len(feats)} images from {folder}" + (" (cached features)" if feats.from_cache else ""))
    if len(feats) < 2:
        raise UserError(f"{role} folder {folder} has {len(feats)} readable image; FID, KID and the memorisation "
                        "audit need at least two in each set")
    return feats


def compute(args, real, synth) -> tuple:
    size = args.kid_subset_size or default_kid_subset_size(len(real), len(synth))
    if not 2 <= size <= min(len(real), len(synth)):
        raise UserError(f"--kid-subset-size {size} must be between 2 and the smaller set ({min(len(real), len(synth))})")
    kid_mean, kid_std = kid(real.features, synth.features, args.kid_subsets, size, seed=args.seed)
    is_mean, is_std = inception_score(synth.logits, args.is_splits, seed=args.seed)
    audit = memorization_audit(real.pool, synth.pool, real.pool_mirrored)
    metrics = {
        "fid": fid(real.features, synth.features), "kid_mean": kid_mean, "kid_std": kid_std,
        "is_mean": is_mean, "is_std": is_std, "n_real": len(real), "n_synth": len(synth),
        "memorized": audit.n_flagged, "memorized_fraction": audit.n_flagged / len(synth),
        "real_nn_max": audit.real_nn_max, "real_nn_p99": audit.real_nn_p99,
        "n_unreadable": len(real.skipped) + len(synth.skipped),
        "unreadable_real": real.skipped, "unreadable_synth": synth.skipped,
        "real": str(args.real), "synth": str(args.synth), "dims": args.dims, "resize": args.resize,
        "zscore": args.zscore, "kid_subsets": args.kid_subsets, "kid_subset_size": size, "kid_degree": 3,
        "is_splits": args.is_splits, "seed": args.seed,
        "memorization_features": "2048-d pool, cosine" + ("" if args.no_mirror else "; mirrored real images count"),
    }
    return metrics, audit


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    weights = args.weights or find_default_weights()
    model = load_inception(weights, device=args.device)
    print(f"Inception-v3 weights: {weights} (sha256 {model.weights_sha256[:12]}...)")
    real = encode(args, model, args.real, "REAL")
    synth = encode(args, model, args.synth, "SYNTH")
    metrics, audit = compute(args, real, synth)
    metrics.update(weights=str(weights), weights_sha256=model.weights_sha256)
    out = args.output
    write_metrics_json(out / "metrics.json", metrics)
    write_memorization_csv(out / "memorization.csv", audit, real.names, synth.names)
    write_memorization_png(out / "memorization.png", audit, real.root, real.names, synth.root, synth.names,
                           args.memorization_top)
    print(summary_table(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'memorization.csv'}, {out / 'memorization.png'}")


if __name__ == "__main__":
    cli.run(main)
