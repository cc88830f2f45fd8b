"""The loss plot a person reads (issue 24, item A.9): a smooth training curve whose smoothing is stated, one x
axis for runs with and without validation, and an early stop at the last step still visible."""
import csv
import random

from PIL import Image, ImageDraw

from ti.loss_plot import COLOURS, LEFT, RIGHT, SIZE, _axes, draw_loss_plot, legend_lines, smooth, smoothing_span


def noisy_losses(n=200, seed=0):
    rng = random.Random(seed)
    return [(step, 0.5 * 0.99 ** step + rng.uniform(-0.1, 0.1)) for step in range(1, n + 1)]


def total_variation(points):
    return sum(abs(b[1] - a[1]) for a, b in zip(points, points[1:]))


def test_smoothing_is_an_ema_that_is_smooth_and_unbiased_at_the_start():
    points = noisy_losses()
    smoothed = smooth(points)
    assert [s for s, _ in smoothed] == [s for s, _ in points]
    assert total_variation(smoothed) < 0.2 * total_variation(points)  # a trailing window of 6 left ~0.4 of it
    assert smoothed[0][1] == points[0][1]  # bias-corrected: not pulled towards 0
    alpha = 2 / (smoothing_span(len(points)) + 1)  # the second point by the EMA's definition, corrected
    expected = (alpha * (1 - alpha) * points[0][1] + alpha * points[1][1]) / (alpha * (1 - alpha) + alpha)
    assert abs(smoothed[1][1] - expected) < 1e-12
    assert max(abs(v - 0.3) for _, v in smooth([(s, 0.3) for s in range(1, 50)])) < 1e-12  # a constant stays
    assert any(f"span {smoothing_span(200)} steps" in text for text, _ in legend_lines(["<a>"], False, False, 20))


def test_the_x_axis_starts_at_step_0_with_and_without_validation():
    draw = ImageDraw.Draw(Image.new("RGB", SIZE))
    train_only = [(1, 0.4), (2, 0.3), (100, 0.2)]
    with_validation = train_only + [(0, 0.35), (100, 0.25)]
    for points in (train_only, with_validation):
        to_pixel = _axes(draw, points, "")
        assert to_pixel(0, 0.3)[0] == LEFT


def write_log(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "concept", "loss", "val_loss"])
        writer.writeheader()
        writer.writerows(rows)


def test_an_early_stop_at_the_last_step_is_drawn_inside_the_plot(tmp_path):
    rows = [{"step": s, "concept": "<a>", "loss": loss, "val_loss": ""} for s, loss in noisy_losses(40)]
    rows += [{"step": s, "concept": "<a>", "loss": "", "val_loss": 0.3 - s / 1000} for s in (0, 20, 40)]
    write_log(tmp_path / "log.csv", rows)
    plain = draw_loss_plot(tmp_path / "log.csv", tmp_path / "plain.png")
    stopped = draw_loss_plot(tmp_path / "log.csv", tmp_path / "stopped.png", marks={"<a>": {"best": 40, "stop": 40}})
    with Image.open(plain) as a, Image.open(stopped) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        colour = Image.new("RGB", (1, 1), COLOURS[0]).getpixel((0, 0))
        changed = [(x, y) for x in range(SIZE[0]) for y in range(SIZE[1])
                   if a.getpixel((x, y)) != b.getpixel((x, y)) and b.getpixel((x, y)) == colour]
    right_edge = SIZE[0] - RIGHT
    dashes = [x for x, _ in changed if LEFT < x < right_edge - 1]  # strictly inside the frame, not on its edge
    assert len(dashes) > 20, "the early-stop line at the last step is hidden by the frame"
