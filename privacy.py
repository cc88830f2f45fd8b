#!/usr/bin/env python
"""Can this embedding be shared? A membership-inference audit: can someone holding the model and the embedding
tell the images it was trained on from images of the same kind it never saw?

    python privacy.py --embeddings embeddings/effusion.safetensors --members data/effusion --held-out data/effusion-test
    python privacy.py --embeddings embeddings/ --members data/ --held-out data-test/   # one subfolder per token

Writes membership.json, scores.csv and membership.png to --output, and prints the verdict in words.
See docs/privacy.md.
"""
import argparse

from tqdm import tqdm

from mini_ldm import cli
from mini_ldm.errors import UserError
from mini_ldm.model_settings import ModelSettings
from mini_ldm.settings import add_flags, check_device_name, from_flags
from membership.settings import PrivacySettings

# Everything above is torch-free, so a wrong flag or path answers at once; torch (seconds to import, more on a
# busy machine) comes with the modules imported in main once the flags are checked.

OUT_OF_MEMORY_HINT = "try a smaller --batch (e.g. 1), --dtype fp16 or bf16, or --device cpu"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Membership-inference audit of a Textual Inversion embedding: the "
                                "denoising loss of its training images against held-out images of the same kind, "
                                "plain and calibrated by a prompt without the token (see docs/privacy.md).")
    add_flags(p, PrivacySettings)
    add_flags(p, ModelSettings, skip=("device", "dtype"))  # --model, --prediction, --vae as every CLI has them
    return cli.parse_args(p, argv)


def load_model(args, s: PrivacySettings):
    from mini_ldm.loading import load

    sd = load(args.model or cli.find_default_model(), device=s.device, dtype=s.dtype,
                       prediction=args.prediction, vae=args.vae)
    print(f"loaded {sd.checkpoint.path} ({sd.family}, {sd.prediction} prediction: "
          f"{sd.checkpoint.prediction_reason}) on {s.device} in {s.dtype}")
    return sd


def resolution_of(sd, s: PrivacySettings) -> int:
    size = s.resolution or sd.native_size
    if size % sd.vae.downscale:
        raise UserError(f"--resolution {size}: must be a multiple of {sd.vae.downscale}")
    return size


def summary(entry: dict) -> str:
    lines = [f"{entry['token']}: {entry['n_members']} members, {entry['n_held_out']} held-out images"]
    for name, a in entry["attacks"].items():
        rates = ", ".join(f"TPR {r['tpr']:.2f} at FPR {r['fpr_target']:.0%} ({r['true_positives']}/{r['n_members']} "
                          f"members, {r['false_positives']}/{r['n_held_out']} held-out)" for r in a["tpr_at_fpr"])
        lines.append(f"  {name:<10} AUC {a['auc']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]; {rates}")
    lines += [f"  note: {r['note']}" for r in entry["attacks"]["loss"]["tpr_at_fpr"] if "single" in r["note"]
              or "no false" in r["note"]]
    return "\n".join(lines + [f"  verdict: {entry['verdict']['text']}"])


def main(argv=None) -> None:
    args = parse_args(argv)
    s = from_flags(PrivacySettings, args).check()
    check_device_name(s.device)
    cli.check_exist(("--model", args.model), ("--vae", args.vae), ("--embeddings", s.embeddings),
                    ("--members", s.members), ("--held-out", s.held_out))
    cli.check_writable(s.output, "--output", is_file=False)
    from membership import inputs
    from membership.loss import check_timesteps
    from membership.report import results, write_membership_png, write_scores_csv
    from mini_ldm.io import write_json_atomic
    from membership.run import add_token, reference_text, score, templates_of
    from mini_ldm.loading import check_device, default_autocast_dtype, default_device

    s.device = s.device or default_device()
    check_device(s.device)
    s.dtype = s.dtype or default_autocast_dtype(s.device)
    audits = inputs.plan(s.embeddings, s.members, s.held_out)
    prompts = [(templates_of(a, s.templates), reference_text(a, s.reference)) for a in audits]
    sd = load_model(args, s)
    timesteps = s.timestep_list()
    check_timesteps(timesteps, len(sd.alphas_cumprod))
    for a in audits:
        add_token(sd, a)
    resolution = resolution_of(sd, s)
    rows = sum(2 * (len(a.members) + len(a.held_out)) for a in audits) * len(timesteps) * s.draws
    all_scores, entries = [], []
    with tqdm(total=rows, desc="scoring images", unit="row") as bar, cli.naming_out_of_memory("scoring images"):
        for a, ((template_name, templates), (which, text)) in zip(audits, prompts):
            scores = score(sd, a, templates, text, (timesteps, s.draws, s.seed), resolution, s.batch, bar)
            all_scores.append(scores)
            entries.append(results(scores, {"embedding": str(a.embedding.source), "templates": template_name,
                                            "reference": which, "reference_text": text}))
    s.output.mkdir(parents=True, exist_ok=True)
    write_scores_csv(s.output / "scores.csv", all_scores)
    write_json_atomic(s.output / "membership.json", {
        "concepts": entries, "model": str(sd.checkpoint.path), "family": sd.family, "prediction": sd.prediction,
        "resolution": resolution, "timesteps": timesteps, "draws": s.draws, "seed": s.seed, "dtype": s.dtype,
        "members": str(s.members), "held_out": str(s.held_out),
        "latent": "VAE posterior mean, centre crop (as train.py encodes its images)"})
    write_membership_png(s.output / "membership.png", all_scores, entries)
    print("\n".join(summary(e) for e in entries))
    print(f"wrote {s.output / 'membership.json'}, {s.output / 'scores.csv'}, {s.output / 'membership.png'}")


if __name__ == "__main__":
    cli.run(main, memory_hint=OUT_OF_MEMORY_HINT)
