#!/usr/bin/env python
"""The blinded reader study: would a radiologist tell the images apart? (see docs/study.md)

    python study.py create STUDY --task preference --a TI_IMAGES --b BASELINE_IMAGES --pairs 50
    python study.py create STUDY --task real-or-synthetic --real REAL --synthetic SYNTHETIC --readers ann,bob
    python study.py create STUDY --task label --real REAL_BY_CLASS --synthetic SYNTHETIC_BY_CLASS
    python study.py create --demo                     # a small study of generated phantoms
    python study.py serve STUDY                       # one link per reader; answers saved as given
    python study.py status STUDY                      # answered / total per reader
    python study.py report STUDY                      # report.json, readings.csv, report.png + a table
"""
import argparse
import re
import sys
from pathlib import Path

from mini_ldm.cli import check_writable, parse_args, run
from mini_ldm.errors import UserError
from mini_ldm.settings import check_seed, check_utf8_args
from reader_study import database
from reader_study.create import StudySpec, create_study
from reader_study.tasks import PREFERENCE, TASKS

DEMO_STUDY = "demo-output/study"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{create,serve,status,report}")
    create = commands.add_parser("create", help="make a study folder: draw the items, blind the images")
    create.add_argument("study", nargs="?", metavar="STUDY", help="the study folder to make (with --demo: default "
                        f"{DEMO_STUDY})")
    create.add_argument("--task", choices=TASKS, help="what the readers answer (default with --demo: preference)")
    create.add_argument("--a", metavar="DIR", help="preference: the first image set (e.g. the TI images)")
    create.add_argument("--b", metavar="DIR", help="preference: the second image set (e.g. a baseline's)")
    create.add_argument("--a-name", help="preference: A's name in the report (default: its folder's name)")
    create.add_argument("--b-name", help="preference: B's name in the report (default: its folder's name)")
    create.add_argument("--pairs", type=int, default=50, help="preference: number of A-B pairs (default 50)")
    create.add_argument("--real", metavar="DIR", help="real-or-synthetic, label: the real images (label: one "
                        "subfolder per class)")
    create.add_argument("--synthetic", metavar="DIR", help="real-or-synthetic, label: the synthetic images")
    create.add_argument("--per-set", type=int, help="real-or-synthetic, label: images drawn from each set "
                        "(default: real-or-synthetic as many as the smaller set holds; label all)")
    create.add_argument("--readers", default="reader1", help="comma-separated reader names; every reader reads "
                        "every item in an order of their own (default reader1)")
    create.add_argument("--seed", type=int, default=0, help="draws the items, each reader's order and sides")
    create.add_argument("--size", metavar="WxH", help="the size every image is shown at (default: the most "
                        "common size of the first set, A or real)")
    create.add_argument("--mode", choices=("L", "RGB"), help="grey or colour for every image (default: L when "
                        "the first set is all grey)")
    create.add_argument("--overwrite", action="store_true", help="replace an existing STUDY that holds no answers")
    create.add_argument("--demo", action="store_true", help="a small study of generated phantom images (8 "
                        f"per set; STUDY default {DEMO_STUDY}, made again on each run unless it holds answers)")
    serve = commands.add_parser("serve", help="serve the study to its readers in a browser")
    serve.add_argument("study", metavar="STUDY")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                       "computer only; anything else: anyone on the network holding a link can read)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    status = commands.add_parser("status", help="answered / total per reader")
    status.add_argument("study", metavar="STUDY")
    report = commands.add_parser("report", help="write report.json, readings.csv, report.png; print a table")
    report.add_argument("study", metavar="STUDY")
    report.add_argument("--bootstrap", type=int, default=2000, help="real-or-synthetic: draws of the two-way "
                        "bootstrap of the pooled accuracy (default 2000)")
    report.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    return parser


def parse_size(text: str | None) -> tuple | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match or not (1 <= int(match[1]) <= 8192 and 1 <= int(match[2]) <= 8192):
        raise UserError(f"--size {text}: give WIDTHxHEIGHT in pixels, e.g. 512x512")
    return int(match[1]), int(match[2])


def create(args) -> None:
    check_seed(args.seed)
    check_writable(Path(args.study or DEMO_STUDY), "STUDY", is_file=False)
    readers = tuple(name.strip() for name in args.readers.split(","))
    if args.demo:
        from reader_study.demo import create_demo
        # a demo study is made again on each run, unless it holds answers (those are never deleted)
        study = create_demo(Path(args.study or DEMO_STUDY), args.task or PREFERENCE, readers, args.seed, True)
    else:
        if args.study is None or args.task is None:
            raise UserError("create needs STUDY and --task (or --demo); see python study.py create --help")
        spec = StudySpec(task=args.task, folders={"a": args.a, "b": args.b, "real": args.real,
                                                  "synthetic": args.synthetic},
                         names={"a": args.a_name, "b": args.b_name}, pairs=args.pairs, per_set=args.per_set,
                         readers=readers, seed=args.seed, size=parse_size(args.size), mode=args.mode)
        study = create_study(Path(args.study), spec, overwrite=args.overwrite)
    print(f"created {study}; reader links are in {study / 'readers.csv'}")
    print(f"serve it with: python study.py serve {study}   (then open each reader's link)")


def existing_study(folder) -> Path:
    folder = Path(folder)
    if not (folder / database.DATABASE).is_file():
        raise UserError(f"STUDY {folder}: not a study (no {database.DATABASE}); make one with study.py create")
    return folder


def status(args) -> None:
    db = database.connect(existing_study(args.study))
    try:
        for reader, (answered, total) in database.progress(db).items():
            print(f"{reader}: {answered} / {total}" + ("  complete" if answered == total else ""))
    finally:
        db.close()


def report(args) -> None:
    from reader_study.outputs import table, write_report
    from reader_study.report import build_report
    check_seed(args.seed)
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap {args.bootstrap}: must be at least 1")
    folder = existing_study(args.study)
    figures, readings = build_report(folder, bootstrap=args.bootstrap, seed=args.seed)
    paths = write_report(folder, figures, readings)
    print(table(figures))
    print("wrote " + ", ".join(str(p) for p in paths))


def serve(args) -> None:
    from reader_study.web import serve as serve_study
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    serve_study(existing_study(args.study), args.host, args.port)


def main(argv=None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    check_utf8_args(commands.choices[args.command], args)  # parse_args checks the top parser's own flags only
    {"create": create, "serve": serve, "status": status, "report": report}[args.command](args)


if __name__ == "__main__":
    run(main, sys.argv[1:])
