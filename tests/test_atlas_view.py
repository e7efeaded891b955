"""The head atlas as the panels draw it: shared colour scale, clicks → cells, missing heads, specific heads."""

from __future__ import annotations

from ui import atlas_view

ATLAS = {
    "layers": 2, "heads": 3, "tasks": ["confidence", "sharpness"],
    "effects": {"confidence": [[-0.2, 0.0, 0.01], [0.0, 0.0, 0.0]], "sharpness": [[0.0, 0.0, 0.0], [0.0, 0.03, 0.0]]},
    "relative": {"confidence": [[-20.0, 0.0, 1.0], [0.0, 0.0, 0.0]], "sharpness": [[0.0, 0.0, 0.0], [0.0, 15.0, 0.0]]},
    "specificity": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], "top": {"confidence": ["0.0"], "sharpness": ["0.0"]},
    "metric": {"confidence": "probability", "sharpness": "gradient energy"}, "seconds": 40.0,
}
#: a loss-like task (lower is better) on a stack whose layer 0 has one head only
UNEVEN = {
    "layers": 2, "heads": 2, "tasks": ["noise", "haze"], "better": {"noise": "lower", "haze": "lower"},
    "effects": {"noise": [[0.5, None], [0.0, -0.1]], "haze": [[0.0, None], [0.2, 0.0]]},
    "relative": {"noise": [[50.0, None], [0.0, -10.0]], "haze": [[0.0, None], [20.0, 0.0]]},
    "specificity": [[1.0, None], [1.0, 1.0]], "top": {"noise": ["0.0"], "haze": ["1.0"]},
    "metric": {"noise": "dB", "haze": "dB"}, "seconds": 3.0,
}


def test_atlas_small_multiples_share_one_scale_and_map_clicks_to_cells():
    image = atlas_view.atlas_image(ATLAS)
    grid_w = atlas_view.LABEL_W + 3 * atlas_view.CELL_W
    height = atlas_view.TITLE_H + 2 * atlas_view.CELL_H + atlas_view.LEGEND_H
    assert image.size == (max(2 * grid_w + atlas_view.GAP, 420), height)

    def centre(task_index: int, layer: int, head: int) -> tuple[float, float]:
        return (task_index * (grid_w + atlas_view.GAP) + atlas_view.LABEL_W + (head + 0.5) * atlas_view.CELL_W,
                atlas_view.TITLE_H + (layer + 0.5) * atlas_view.CELL_H)

    strongest_drop = image.getpixel(tuple(map(int, centre(0, 0, 0))))
    strongest_rise = image.getpixel(tuple(map(int, centre(1, 1, 1))))
    neutral = image.getpixel(tuple(map(int, centre(1, 0, 0))))
    assert strongest_drop[0] > strongest_drop[2] and strongest_rise[2] > strongest_rise[0]  # red drop, blue rise
    assert strongest_rise[2] < 255 and abs(neutral[0] - neutral[2]) < 20  # +15 % is paler than the ±20 % ends
    assert atlas_view.atlas_cell(ATLAS, *centre(0, 1, 2)) == ("confidence", "1.2")
    assert atlas_view.atlas_cell(ATLAS, *centre(1, 0, 1)) == ("sharpness", "0.1")
    assert atlas_view.atlas_cell(ATLAS, 2, 2) is None  # title / label area
    assert atlas_view.atlas_cell(ATLAS, grid_w + 2, atlas_view.TITLE_H + 3) is None  # the gap between grids
    assert atlas_view.atlas_cell(ATLAS, 5, atlas_view.TITLE_H + 3 * atlas_view.CELL_H) is None  # legend


def test_specific_heads_are_listed_with_the_task_they_matter_for():
    text = atlas_view.specific_heads_markdown(ATLAS)
    assert "| 0.0 | 1.00 | confidence | -0.2000 probability (-20.0 %) |" in text
    assert "| 1.1 | 1.00 | sharpness | +0.0300 gradient energy (+15.0 %) |" in text


def test_a_lower_is_better_task_is_red_when_it_rises_and_missing_heads_are_grey():
    """For a loss, a rise is the harm (red); a head the layer lacks is grey and cannot be clicked."""
    image = atlas_view.atlas_image(UNEVEN)
    grid_w = atlas_view.LABEL_W + 2 * atlas_view.CELL_W

    def pixel(task_index: int, layer: int, head: int) -> tuple:
        return image.getpixel((task_index * (grid_w + atlas_view.GAP) + atlas_view.LABEL_W
                               + int((head + 0.5) * atlas_view.CELL_W),
                               atlas_view.TITLE_H + int((layer + 0.5) * atlas_view.CELL_H)))

    worse, better = pixel(0, 0, 0), pixel(0, 1, 1)
    assert worse[0] > worse[2] and better[2] > better[0]
    assert pixel(0, 0, 1) == atlas_view.MISSING
    centre = (atlas_view.LABEL_W + 1.5 * atlas_view.CELL_W, atlas_view.TITLE_H + 0.5 * atlas_view.CELL_H)
    assert atlas_view.atlas_cell(UNEVEN, *centre) is None
    assert "| 0.0 | 1.00 | noise | +0.5000 dB (+50.0 %) |" in atlas_view.specific_heads_markdown(UNEVEN)
