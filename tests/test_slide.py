import shutil

import numpy as np
import pytest
from conftest import DICOM_FOLDER, NDPI, OME_TIFF, OPENSLIDE_REJECTS, SVS, tissue_on_glass
from PIL import Image

from hespotex.errors import InvalidMppError, MissingMppError, SlideOpenError, SlideReadError
from hespotex.io.backends import ArraySlide, open_backend
from hespotex.io.pyramids import write_ome_zarr
from hespotex.io.slide import Slide, open_slide, resolve_mpp


def test_aperio_svs_opens_with_openslide_and_its_mpp():
    with open_slide(SVS, "svs") as slide:
        assert slide.reader == "openslide"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source.startswith("slide metadata")


def test_dicom_series_opens_from_its_folder_and_from_any_file():
    with open_slide(DICOM_FOLDER, "dicom") as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
    for member in sorted(DICOM_FOLDER.glob("*.dcm")):
        with open_slide(member, "dicom") as slide:
            assert slide.dimensions == (2220, 2967)


def test_ome_tiff_that_openslide_rejects_opens_with_tifffile_and_ome_mpp():
    with open_slide(OME_TIFF, "ome") as slide:
        assert slide.reader == "tifffile"
        assert slide.dimensions == (1101, 1101)
        assert slide.mpp == pytest.approx(0.2271, abs=1e-3)
        patch = slide.read_field((550, 550), slide.plan(112.0, 0.5))
        assert patch.shape == (224, 224, 3)
        assert patch.std() > 10, "real tissue pixels, not a blank"


def test_ndpi_has_seven_levels_and_level_choice_follows_resolution():
    with open_slide(NDPI, "ndpi") as slide:
        assert len(slide.backend.level_dimensions) == 7
        assert slide.mpp == pytest.approx(0.2282, abs=1e-3)
        assert slide.best_level(0.5) == 1
        assert slide.best_level(0.2) == 0
        assert slide.best_level(4.0) == 4


def test_the_file_openslide_rejects_fails_naming_file_and_cause():
    with pytest.raises(SlideOpenError) as error:
        open_slide(OPENSLIDE_REJECTS, "tcga")
    assert str(OPENSLIDE_REJECTS) in str(error.value)
    assert "Couldn't get image flavor" in str(error.value)


def test_missing_path_and_non_slide_files_fail_clearly(tmp_path):
    with pytest.raises(SlideOpenError, match="does not exist"):
        open_backend(tmp_path / "nope.svs")
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n")
    with pytest.raises(SlideOpenError, match=r"notes\.svs: no reader can open it"):
        open_backend(text)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_backend(empty)
    with pytest.raises(SlideOpenError, match="no DICOM"):
        open_backend(tmp_path)


def test_truncated_slide_fails_naming_the_file(tmp_path, small_pyramids):
    truncated = tmp_path / "truncated.tif"
    data = small_pyramids["tagged"].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with (
        pytest.raises((SlideOpenError, SlideReadError)) as error,
        open_slide(truncated, "cut") as slide,
    ):
        slide.read_overview(8.0)
        for y in range(0, slide.dimensions[1], 200):
            slide.read_field((1500, y), slide.plan(112.0, 0.5))
    assert str(truncated) in str(error.value)


def test_a_damaged_tile_fails_the_read_naming_the_file(tmp_path, small_pyramids):
    import tifffile

    damaged = tmp_path / "damaged.tif"
    shutil.copy(small_pyramids["tagged"], damaged)
    with tifffile.TiffFile(damaged) as tiff:
        page = tiff.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(damaged.read_bytes())
    data[offset : offset + count] = bytes(count)
    damaged.write_bytes(bytes(data))
    with open_slide(damaged, "damaged") as slide:
        slide.backend.read_region((0, 2000), 0, (400, 400))  # the intact tiles still read
        with pytest.raises(SlideReadError, match="damaged.tif: cannot decode tile 5 of level 0"):
            slide.backend.read_region((0, 0), 0, (3000, 300))


def test_tiled_tiffs_are_decoded_tile_by_tile_with_openslides_pixels():
    """SVS and OME-TIFF go through hespotex.io.tiledtiff; the pixels are what OpenSlide and
    tifffile's own reader give."""
    import tifffile

    with open_slide(SVS, "svs") as slide:
        assert slide.backend.tiles is not None
        fast = slide.backend.read_region((-30, 100), 0, (700, 500))
        slide.backend.tiles = None
        assert np.array_equal(fast, slide.backend.read_region((-30, 100), 0, (700, 500)))
    with open_slide(OME_TIFF, "ome", 0.5) as slide:
        assert slide.backend.tiles is not None
        whole = tifffile.imread(OME_TIFF)
        assert np.array_equal(slide.backend.read_region((0, 0), 0, whole.shape[1::-1]), whole)


def test_pyramid_written_by_tifffile_reads_at_the_right_level(small_pyramids):
    with open_slide(small_pyramids["tagged"], "tagged") as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert len(slide.backend.level_dimensions) >= 3
        plan = slide.plan(112.0, 0.5)
        assert plan.level == 1
        assert plan.level_px == 224
        assert plan.output_px == 224


def test_sheet_mpp_wins_and_a_slide_without_one_says_how_to_fix_it(small_pyramids):
    backend = open_backend(small_pyramids["untagged"])
    assert backend.metadata_mpp is None
    with pytest.raises(MissingMppError) as error:
        resolve_mpp(backend, None, "untagged")
    message = str(error.value)
    assert str(small_pyramids["untagged"]) in message
    assert "`mpp` column" in message and "untagged" in message
    assert resolve_mpp(backend, 0.5, "untagged") == (0.5, "sample sheet")
    tagged = open_backend(small_pyramids["tagged"])
    assert resolve_mpp(tagged, 0.3, "tagged") == (0.3, "sample sheet")
    for absurd in (0.0, -1.0, 150.0):
        with pytest.raises(InvalidMppError, match="outside"):
            resolve_mpp(backend, absurd, "untagged")


def test_fields_off_the_slide_edge_are_glass_white():
    pixels = np.zeros((100, 100, 3), dtype=np.uint8)
    slide = Slide(ArraySlide(pixels), 1.0, "test")
    plan = slide.plan(40.0, 1.0)
    corner = slide.read_field((0, 0), plan)
    assert corner.shape == (40, 40, 3)
    assert (corner[:20, :20] == 255).all()
    assert (corner[20:, 20:] == 0).all()


def test_overview_in_bands_matches_a_direct_downscale(he_tile):
    slide = Slide(ArraySlide(he_tile), 0.5, "test")
    overview, downsample = slide.read_overview(4.0, band_px=128)
    assert overview.shape == (125, 125, 3)
    assert downsample == pytest.approx(8.0)
    whole, _ = slide.read_overview(4.0, band_px=4096)
    assert np.abs(overview.astype(int) - whole.astype(int)).mean() < 2.0


def test_dicom_folder_needs_no_copy(tmp_path):
    copy = tmp_path / "series"
    shutil.copytree(DICOM_FOLDER, copy)
    with open_slide(copy, "copy") as slide:
        assert slide.dimensions == (2220, 2967)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_opens_with_zarr_its_levels_and_the_mpp_of_its_scale(tmp_path, he_tile, version):
    from tiatoolbox.wsicore.wsireader import WSIReader

    image = tissue_on_glass(he_tile, (1500, 1300), (100, 100, 1400, 1200))
    path = tmp_path / f"he-{version}.ome.zarr"
    write_ome_zarr(path, image, 0.25, version, chunk=256, smallest_level_px=330)
    with open_slide(path, "zarr") as slide:
        assert slide.reader == "ome-zarr"
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "slide metadata (ome-zarr)"
        assert slide.backend.level_dimensions == [(1500, 1300), (750, 650), (375, 325)]
        assert slide.backend.level_downsamples == [1.0, 2.0, 4.0]
        region = slide.backend.read_region((300, 200), 0, (224, 160))
        assert np.array_equal(region, image[200:360, 300:524])
        # Past the edge is glass, as every reader answers.
        corner = slide.backend.read_region((1400, 1200), 0, (200, 200))
        assert np.array_equal(corner[:100, :100], image[1200:, 1400:])
        assert (corner[100:] == 255).all() and (corner[:, 100:] == 255).all()
        assert slide.best_level(0.5) == 1
        halved = np.asarray(Image.fromarray(image).reduce(2))
        region = slide.backend.read_region((600, 400), 1, (112, 112))
        assert np.array_equal(region, halved[200:312, 300:412])
        ours = slide.backend.read_region((600, 400), 0, (224, 224))
    if version == "0.4":  # tiatoolbox's NGFF reader: 0.4 (Zarr v2) only, level 0 only
        reader = WSIReader.open(path)
        assert tuple(reader.info.mpp) == (0.25, 0.25)
        assert np.array_equal(reader.read_rect((600, 400), (224, 224)), ours)


def test_ome_zarr_of_bioformats2raw_and_refusals_name_the_cause(tmp_path, he_tile):
    import zarr

    layout = tmp_path / "converted.zarr"
    write_ome_zarr(layout / "0", he_tile, 0.5, "0.4", smallest_level_px=600)
    zarr.open_group(str(layout), mode="a", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    with open_slide(layout, "b2r") as slide:
        assert slide.dimensions == (1000, 1000) and slide.mpp == pytest.approx(0.5)
    grey = tmp_path / "dapi.ome.zarr"
    group = zarr.open_group(str(grey), mode="w", zarr_format=3)
    group.create_array("0", shape=(1, 64, 64), dtype="uint16")
    axes = [{"name": name, "type": "space"} for name in "cyx"]
    group.attrs["ome"] = {"multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}]}
    with pytest.raises(SlideOpenError, match=r"dapi\.ome\.zarr: not an RGB brightfield image"):
        open_backend(grey)
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(SlideOpenError, match=r"broken\.zarr: not a readable OME-Zarr image"):
        open_backend(broken)
    # No unit on the axes: no mpp in the metadata, so the sheet must give it.
    unitless = tmp_path / "unitless.ome.zarr"
    write_ome_zarr(unitless, he_tile, 0.5, "0.5", smallest_level_px=600)
    group = zarr.open_group(str(unitless), mode="a")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["axes"] = [{"name": name} for name in "cyx"]
    group.attrs["ome"] = ome
    backend = open_backend(unitless)
    assert backend.metadata_mpp is None
    with pytest.raises(MissingMppError, match="unitless"):
        resolve_mpp(backend, None, "unitless")
    assert resolve_mpp(backend, 0.5, "unitless") == (0.5, "sample sheet")


def test_a_tiff_openslide_and_tifffile_refuse_is_read_through_tiatoolbox(tmp_path, he_tile):
    """RGB as three separate planes in strips: OpenSlide wants tiles, our tifffile reader
    wants interleaved RGB; tiatoolbox reads it, and the mpp comes from its resolution tags."""
    import tifffile

    image = tissue_on_glass(he_tile, (1200, 1100), (100, 100, 1100, 1000))
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(
        planar,
        np.moveaxis(image, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        compression="zlib",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    with open_slide(planar, "planar") as slide:
        assert slide.reader == "tiatoolbox"
        assert slide.mpp == pytest.approx(0.5) and slide.dimensions == (1200, 1100)
        region = slide.backend.read_region((50, 60), 0, (300, 200))
        assert np.array_equal(region, image[60:260, 50:350])
        edge = slide.backend.read_region((1100, 1000), 0, (200, 200))
        assert (edge[100:] == 255).all() and np.array_equal(edge[:100, :100], image[1000:, 1100:])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(SlideOpenError) as error:
        open_backend(garbage)
    assert "garbage.tif: no reader can open it" in str(error.value)
    assert "tifffile cannot read it" in str(error.value)
    assert "tiatoolbox cannot read it" in str(error.value)
