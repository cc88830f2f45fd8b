#!/usr/bin/env python
"""Learn a new prompt token from a folder of images (Textual Inversion), with the model frozen.

    python train.py --data chestxr/ --vectors 64 --init "chest x-ray"
    python sample.py --prompt "<chestxr>"          # picks up embeddings/ by default
    python train.py --data chexpert/ --concepts --val-images 5 --early-stop 4   # one token per subfolder
"""
import argparse
from dataclasses import replace
from pathlib import Path

from mini_ldm import cli, demo
from mini_ldm.errors import UserError
from mini_ldm.model_settings import ModelSettings
from mini_ldm.settings import add_flags, check_device_name, from_flags, parse_given
from ti import concepts as concept_plan
from ti.concepts import file_name
from ti.run_files import check_fresh_output, check_resumable, output_lock
from ti.templates import load_templates
from ti.train_settings import TrainSettings

# Everything above is torch-free, so a wrong flag or a missing folder answers at once; torch (seconds to import,
# more on a busy machine) comes with the modules imported inside the functions that load and train the model.


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Textual Inversion: learn the vectors of a new prompt token from ~100 images; the Stable "
                    "Diffusion weights stay frozen and the result is a small .safetensors file. Defaults follow "
                    "the paper (de Wilde et al. 2024): 64 vectors, AdamW at lr 0.005, batch 1.")
    add_flags(p, TrainSettings)
    add_flags(p, ModelSettings, skip=("dtype",))  # TrainSettings has its own --dtype (bf16 on CUDA)
    p.add_argument("--resume", nargs="?", const=True, default=None, type=Path, metavar="FILE",
                   help="continue an interrupted run from its last save (default file: --output), with its "
                        "step count, optimiser and random state")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh where --output already holds an earlier run (its files are replaced)")
    p.add_argument("--demo", action="store_true", help="see Textual Inversion work: the committed phantom model "
                   f"learns {demo.DEMO_TOKEN} from 100 synthetic chest phantoms, in about a minute on a CPU (writes "
                   f"{demo.DEMO_DIR}/)")
    demo.add_sdxl_flag(p)
    args, given = parse_given(p, argv)
    args.given = given  # --demo's values fill in only the flags not typed
    return args



def model_stamp(path) -> str:
    """What identifies the VAE weights for the latent cache key: file names, sizes and modification times
    (not os.stat() as a whole: its access time changes on reads, which would miss the cache for nothing)."""
    path = Path(path).resolve()
    files = sorted((path / "vae").glob("diffusion_pytorch_model.*")) if path.is_dir() else [path]
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files or [path])


def demo_settings(settings: TrainSettings, given=frozenset()) -> TrainSettings:
    """--demo: the phantom model learns a finding from 100 labelled phantoms (a left pleural effusion, as
    <effusion>; with --concepts, <no-finding> and <effusion> from a folder of 20 each), starting from an
    unrelated word. A flag in `given` (typed by the user) keeps its value: the demo's apply only where nothing
    was given."""
    from ti.phantoms import write_chest_phantoms
    print("demo: the phantom model (weights/phantom-sd2.safetensors) learns a finding from synthetic chest "
          "phantoms; the token's images should show it (real runs need a real checkpoint, see README)")
    steps = settings.steps if "steps" in given else demo.DEMO_TRAINING["steps"]
    d = {**demo.DEMO_TRAINING, "steps": steps, "preview_every": steps, "save_every": 0,  # a preview at the end
         "init_text": demo.DEMO_INIT}
    if settings.concepts:  # one token per subfolder: <no-finding>, <effusion>
        data = settings.data or demo.DEMO_DIR / "concepts-data"
        if settings.data is None:
            for seed, (name, findings) in enumerate(demo.DEMO_CONCEPTS.items(), start=1):
                write_chest_phantoms(data / name, demo.DEMO_CONCEPT_IMAGES, seed=seed, **findings)
        token, output = None, settings.output or demo.DEMO_DIR / "concepts"
    else:
        data = settings.data or write_chest_phantoms(demo.DEMO_DIR / "phantoms", demo.DEMO_IMAGES, seed=5,
                                                     effusion="left")
        token = settings.token or demo.DEMO_TOKEN
        output = settings.output or demo.DEMO_DIR / f"{file_name(token)}.safetensors"
    return replace(settings, data=data, token=token, output=output, **{k: v for k, v in d.items() if k not in given})


def resolve_settings(args) -> TrainSettings:
    """The flags as checked TrainSettings with the data-dependent defaults (token, output) filled in."""
    settings = from_flags(TrainSettings, args).check()  # the flags as typed, before --demo writes its phantoms
    demo.check_sdxl_flag(args)
    if args.demo:
        settings = demo_settings(settings, args.given)
        if args.sdxl and "output" not in args.given:  # beside the SD 2 demo's files, not over them
            settings = replace(settings, output=demo.sdxl_path(settings.output))
        if args.resume is None:  # the demo starts afresh, unless asked to resume
            args.overwrite = True
        settings.check()  # the demo's values beside the flags typed
    elif settings.data is None:
        raise UserError("--data: give the folder of training images (or --demo to check the install)")
    if settings.concepts:
        return replace(settings, output=settings.output or Path("embeddings"))
    # the folder name is the default token; a prompt word cannot hold spaces, so "chest xr/" gives <chest_xr>
    token = settings.token or f"<{concept_plan.token_word(settings.data.resolve().name)}>"
    output = settings.output or Path("embeddings") / f"{file_name(token)}.safetensors"
    return replace(settings, token=token, output=output)


def check_output(args, settings: TrainSettings, concepts: list) -> Path | None:
    """The file (with --concepts: folder) to resume from, or None for a fresh run; refuses to replace an
    earlier run by accident."""
    output = settings.output
    if args.resume is not None and args.overwrite:
        raise UserError("--resume and --overwrite: choose one (continue the saved run, or replace it)")
    resume_from = None if args.resume is None else output if args.resume is True else args.resume
    if resume_from is not None and settings.concepts and Path(resume_from).resolve() != Path(output).resolve():
        raise UserError(f"--resume {resume_from}: with --concepts the run resumes in its own folder; pass "
                        f"--output {resume_from} (or --resume alone with that --output)")
    if resume_from is not None:
        check_resumable(resume_from, settings.concepts)
    elif not args.overwrite:
        check_fresh_output(output, settings.concepts, [c.output for c in concepts])
    return resume_from


def load_model(args, settings: TrainSettings, device: str):
    from mini_ldm.loading import load

    model_path = demo.demo_model(args) if args.demo else args.model or cli.find_default_model()
    sd = load(model_path, device=device, dtype=settings.dtype, prediction=args.prediction, vae=args.vae)
    print(f"loaded {model_path} ({sd.family}, {sd.prediction} prediction: {sd.checkpoint.prediction_reason}) "
          f"on {device} in {settings.dtype}")
    return sd


def latent_cache(sd, settings: TrainSettings, data: Path, paths: list, flip: bool):
    """The latents of `paths` (images under `data`), encoded once and cached beside the run's files."""
    from ti.data import cached_latents, vae_encoder

    resolution = sd.native_size if settings.resolution is None else settings.resolution
    multiple = sd.vae.downscale
    if resolution < multiple or resolution % multiple:
        raise UserError(f"--resolution {resolution}: must be a positive multiple of {multiple}")
    model_id = f"{settings.base_model}:{model_stamp(sd.checkpoint.path)}:{settings.dtype}"
    folder = settings.output if settings.concepts else settings.output.parent
    return cached_latents(data, vae_encoder(sd), model_id, folder / ".latent-cache", resolution, crop=settings.crop,
                          flip=flip, seed=settings.seed, paths=paths)


def encode_concepts(sd, settings: TrainSettings, concepts: list):
    """Each concept's training latents and, with validation, its held-out latents (never mirrored)."""
    for c in concepts:
        c.cache = latent_cache(sd, settings, c.data, c.train_paths, settings.flip)
        if c.val_paths:
            c.val_cache = latent_cache(sd, settings, c.data, c.val_paths, flip=False)
        held = f", {len(c.val_cache)} held out for validation" if c.val_cache is not None else ""
        print(f"{c.token}: {len(c.cache)} training images{' (cached latents)' if c.cache.reused else ''}{held}")


def main(argv=None):
    args = parse_args(argv)
    check_device_name(args.device)
    settings = resolve_settings(args)
    templates = load_templates(settings.template)
    concepts = concept_plan.plan(settings)
    resume_from = check_output(args, settings, concepts)
    cli.check_exist(("--model", args.model), ("--vae", args.vae))
    from mini_ldm.loading import check_device, default_autocast_dtype, default_device
    from ti.trainer import Trainer

    device = args.device or default_device()
    check_device(device)
    settings.dtype = settings.dtype or default_autocast_dtype(device)
    if settings.compile:
        cli.check_compiler(device)
    with output_lock(settings.output, settings.concepts):
        sd = load_model(args, settings, device)
        settings.base_model = Path(sd.checkpoint.path).name
        encode_concepts(sd, settings, concepts)
        tokens = ", ".join(c.token for c in concepts)
        print(f"token{'s' if len(concepts) > 1 else ''} {tokens}, {settings.vectors} vectors, {settings.steps} "
              f"steps -> {settings.output}")
        trainer = Trainer(sd, templates, settings, concepts, vae=args.vae)
        if resume_from is not None:
            trainer.resume(resume_from)
            print(f"resuming {resume_from} at step {trainer.step}")
        path = trainer.run()
    print(f"wrote {path} (step {trainer.step}); use it with: {next_command(sd, settings, concepts)}")


def next_command(sd, settings: TrainSettings, concepts: list) -> str:
    """The sample.py command that draws with what this run wrote (on the same model, at its training size)."""
    size = settings.resolution or sd.native_size
    return (f"python sample.py --model {sd.checkpoint.path} --embeddings {settings.output} --prompt \"{concepts[0].token}\" "
            f"--height {size} --width {size}")


if __name__ == "__main__":
    cli.run(main)
