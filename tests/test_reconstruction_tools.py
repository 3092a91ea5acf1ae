"""The pieces around the pipelines: image grids, per-image seeding, reconstruction folders, the comparison table."""

import numpy as np
import PIL.Image
import pytest
import torch

from fgb2i_hf.drivers.compare import comparison_table
from fgb2i_hf.drivers.evaluate_reconstructions import common_ids, parse_rows
from fgb2i_hf.drivers.reconstruct import image_generator, load_images, save_png
from fgb2i_hf.visualization import reconstruction_grid


def solid(color, n=2, size=16):
    return np.tile(np.array(color, np.uint8), (n, size, size, 1))


def test_grid_places_each_column_and_writes_captions():
    red, green = solid((255, 0, 0)), solid((0, 255, 0))
    blue = torch.zeros(2, 3, 8, 8)
    blue[:, 2] = 1.0
    plain = reconstruction_grid({"GT": red, "base": green, "FgB2I": blue}, image_size=40)
    grid = reconstruction_grid({"GT": red, "base": green, "FgB2I": blue}, image_size=40,
                               captions={"FgB2I": ["a red bus on a street", "two dogs"]})
    assert grid.size[0] == plain.size[0] == 3 * (40 + 8) + 8 and grid.size[1] > plain.size[1]  # caption rows
    pixels = np.asarray(grid)
    header = 11 + 3 + 8  # one text line and its margin
    for column, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        x = 8 + column * 48 + 20
        assert tuple(pixels[header + 20, x]) == color  # the middle of the first tile
    caption_area = pixels[header + 40 : header + 40 + 40, 8 + 2 * 48 : 8 + 2 * 48 + 40]
    assert (caption_area < 128).any()  # ink under the FgB2I tile
    assert not (pixels[header + 40 : header + 80, 8 : 48] < 128).any()  # none under GT


def test_grid_rejects_mismatched_columns_and_captions():
    with pytest.raises(ValueError, match="same number of images"):
        reconstruction_grid({"GT": solid((0, 0, 0), n=2), "base": solid((0, 0, 0), n=3)})
    with pytest.raises(ValueError, match="1 captions for the 2 images"):
        reconstruction_grid({"GT": solid((0, 0, 0))}, captions={"GT": ["one"]})
    with pytest.raises(ValueError, match="not a column"):
        reconstruction_grid({"GT": solid((0, 0, 0))}, captions={"FgB2I": ["a", "b"]})


def test_image_generators_depend_on_seed_id_and_sample_only():
    draw = lambda *key: torch.randn(4, generator=image_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 42, 0), draw(0, 42, 0))
    assert not torch.equal(draw(0, 42, 0), draw(0, 43, 0))
    assert not torch.equal(draw(0, 42, 0), draw(0, 42, 1))
    assert not torch.equal(draw(0, 42, 0), draw(1, 42, 0))


def test_reconstruction_folders(tmp_path):
    for i, color in ((3, (10, 20, 30)), (7, (40, 50, 60))):
        save_png(PIL.Image.fromarray(solid(color, n=1)[0]), str(tmp_path / f"{i}.png"))
    assert not list(tmp_path.glob("*.tmp*"))
    images = load_images(str(tmp_path), [7, 3])
    assert images.shape == (2, 16, 16, 3) and tuple(images[0, 0, 0]) == (40, 50, 60)
    with pytest.raises(FileNotFoundError, match=r"no reconstruction for nsd_id \[5\]"):
        load_images(str(tmp_path), [3, 5], "reconstruction")
    other = tmp_path / "other"
    other.mkdir()
    save_png(PIL.Image.fromarray(solid((0, 0, 0), n=1)[0]), str(other / "7.png"))
    assert common_ids({"a": str(tmp_path), "b": str(other)}) == [7]
    assert parse_rows([f"LDM={tmp_path}", f"LDM + FgB2I={other}"]) == {"LDM": str(tmp_path), "LDM + FgB2I": str(other)}
    with pytest.raises(ValueError, match="name=folder"):
        parse_rows([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="row 'x'"):
        parse_rows([f"x={tmp_path / 'missing'}"])


def test_comparison_table_shows_each_fgb2i_row_against_its_own_base():
    rows = {"LDM": {"PixCorr": 0.10, "SwAV": 0.60}, "LDM + FgB2I": {"PixCorr": 0.15, "SwAV": 0.50},
            "MindEye": {"PixCorr": 0.30, "SwAV": 0.40}, "MindEye + FgB2I": {"PixCorr": 0.20, "SwAV": 0.45}}
    table = comparison_table(rows, {"LDM + FgB2I": "LDM", "MindEye + FgB2I": "MindEye"}).splitlines()
    assert len(table) == 2 + 4 and table[0].count("|") == 4  # one header, four rows
    assert table[3].startswith("| LDM + FgB2I | 0.1500 (+0.0500) | 0.5000 (-0.1000)")
    assert table[5].startswith("| MindEye + FgB2I | 0.2000 (-0.1000) | 0.4500 (+0.0500)")
    assert "(" not in table[2] and "(" not in table[4]  # base rows carry no deltas


def test_unknown_model_ids_name_the_setting(tmp_path):
    """Offline, an unknown id fails with the setting and the id named (the Hub's own error names neither)."""
    from fgb2i_hf.pipelines import build_pipeline
    from fgb2i_hf.core import loading_config_field

    with pytest.raises(OSError, match=r"diffusion_model='no-such-org/no-such-sd': cannot load it"):
        build_pipeline("ldm", "no-such-org/no-such-sd")
    with pytest.raises(OSError, match=r"brain_model='no-such-org/no-such-brain': cannot load it"):
        build_pipeline("ldm", "tiny-random", brain_model="no-such-org/no-such-brain")
    # the class is kept, so callers catching FileNotFoundError still do
    with pytest.raises(FileNotFoundError, match=r"clip_model='simnsd/none': cannot load it"):
        with loading_config_field("clip_model", "simnsd/none"):
            raise FileNotFoundError(str(tmp_path / "none"))
