"""viz: sample grids, scatter plots and the run / comparison plots, all written atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_curriculum import viz
from diffusion_curriculum.data import load
from diffusion_curriculum.viz import save_grid, to_image_grid


def test_to_image_grid_shapes_values():
    x = -torch.ones(5, 1, 8, 8)
    x[0] = 1.0
    g = to_image_grid(x, nrow=3, padding=1)
    assert g.dtype == np.uint8 and g.shape == (2 * 9 + 1, 3 * 9 + 1)
    assert g[1, 1] == 255 and g[1, 10] == 0
    rgb = to_image_grid(torch.zeros(4, 3, 4, 4))
    assert rgb.shape == (11, 11, 3) and rgb[1, 1, 0] == 128
    with pytest.raises(ValueError):
        to_image_grid(torch.zeros(4, 2))


def test_save_grid_images_and_points(tmp_path):
    x = load("digits", n=16).data
    p = tmp_path / "sub" / "grid.png"
    save_grid(x, p)
    with Image.open(p) as im:
        im.load()
        assert im.width >= 256 and im.format == "PNG"
    q = tmp_path / "points.png"
    save_grid(load("swissroll", n=300).data, q)
    with Image.open(q) as im:
        im.load()
        assert im.format == "PNG" and im.width > 100
    assert sorted(f.name for f in tmp_path.rglob("*")) == ["grid.png", "points.png", "sub"]


def test_comparison_plots(tmp_path):
    curves = {"a": [{10: 2.0, 20: 1.0}, {10: 3.0, 20: 1.5}], "b": [{10: 2.5}, {}]}
    viz.quality_plot(tmp_path / "q.png", curves, "fd")
    assert (tmp_path / "q.png").is_file()
    rec = {"t_hist": [1, 2, 3], "t_hist_edges": [0, 1, 2, 3], "t_hist_unit": "t"}
    assert viz.drawn_levels_plot(tmp_path / "t.png", {"a": [rec, rec], "b": []})
    assert not viz.drawn_levels_plot(tmp_path / "none.png", {"a": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png", "t.png"]  # no temporary files left


def test_save_grid_writes_the_format_the_suffix_names(tmp_path):
    import torch

    from diffusion_curriculum import viz

    x = torch.rand(4, 3, 8, 8) * 2 - 1
    viz.save_grid(x, tmp_path / "s.jpg")
    viz.save_grid(x, tmp_path / "s.png")
    assert (tmp_path / "s.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_uniform_draw_is_one_colour_and_the_quality_axis_reads_plain_numbers(tmp_path):
    """A histogram with a few percent of noise is drawn on a fixed 0..2 scale (not stretched over the colour
    bar), and a quality plot between 30 and 60 labels its log axis 40, not 4 × 10^1."""
    import numpy as np

    from diffusion_curriculum import viz

    noisy_uniform = np.array([[1.02, 0.98, 1.01, 0.99]])
    assert viz.share_range(noisy_uniform) == {"vmin": 0.0, "vmax": 2.0}
    assert viz.share_range(np.array([[3.5, 0.5]]))["vmax"] == 3.5
    plt, fig, ax = viz.figure()
    a = ax[0, 0]
    a.plot([0, 1], [30, 60])
    a.set_yscale("log")
    viz.plain_log_axis(a)
    fig.canvas.draw()
    labels = [t.get_text() for t in a.get_yticklabels(minor=True) if t.get_text()]
    assert "40" in labels and not any("10^" in s or "times" in s for s in labels)
    plt.close(fig)


def test_the_validation_plot_draws_only_the_records_of_its_bucket_count(tmp_path):
    """eval.val_buckets may change on resume: the records with another count are left out, not a KeyError."""
    from diffusion_curriculum import viz

    def rec(step, k):
        return {"step": step, "val_loss": 1.0, **{f"val_loss/{i}": 1.0 + i for i in range(k)}}

    records = [rec(10, 20), rec(20, 40), rec(30, 40)]
    assert viz.validation_plot(records, tmp_path / "v.png", [float(i) for i in range(41)], "t")
    assert viz.validation_plot(records, tmp_path / "w.png", [float(i) for i in range(21)], "t")
    assert not viz.validation_plot(records, tmp_path / "x.png", [float(i) for i in range(11)], "t")
