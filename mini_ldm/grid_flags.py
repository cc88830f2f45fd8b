"""sample.py's --grid and --max-cells, and the names of the axes a grid may have (xyz_grid.py draws grids).

No torch here: sample.py builds its flags before torch is imported, so a mistyped flag answers at once.
"""
SETTING_AXES = ("prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "height", "width", "init_image",
                "strength", "mask", "mask_blur")
AXES = SETTING_AXES + ("prompt_sr", "embedding")
ALIASES = {"cfg_scale": "cfg", "sampler": "scheduler", "prompt_s/r": "prompt_sr", "denoising": "strength",
           "denoising_strength": "strength", "embeddings": "embedding"}  # AUTOMATIC1111's names for its axes
MAX_AXES = 3
DEFAULT_MAX_CELLS = 400


def add_flags(parser) -> None:
    """sample.py's --grid and --max-cells."""
    parser.add_argument("--grid", action="append", metavar="AXIS=V1,V2,...", default=None,
                        help="a settings grid (AUTOMATIC1111's X/Y/Z plot), given 1-3 times: columns, rows, then one "
                             f"grid image per value of the third. Axes: {', '.join(AXES)}. Values are comma-separated "
                             "with CSV quoting (prompt=\"a, b\",c); prompt_sr: the first value is a phrase of "
                             "--prompt, each value replaces it; embedding: files drawn in turn for the prompt's "
                             "learned token. "
                             "One seed for every cell unless seed is an axis. --output is then a folder: grid.png "
                             "(grid-z0.png ... with 3 axes), grid.csv and one PNG per cell; a rerun keeps cells "
                             "already drawn with the same parameters (see docs/figures.md)")
    parser.add_argument("--max-cells", type=int, default=None, metavar="N",
                        help=f"with --grid: refuse a grid of more than N cells (default: {DEFAULT_MAX_CELLS})")
