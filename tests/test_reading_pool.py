"""Reader processes: the same patches as the reader threads, through shared memory, across the
slides of one job; a damaged tile fails its slide naming the file, and the next slide reads."""

import shutil

import numpy as np
import pytest
from conftest import DICOM_FOLDER, SVS

from hespotex.errors import SlideReadError
from hespotex.io.patches import iter_patch_batches
from hespotex.io.reading_pool import ReadingPool
from hespotex.io.slide import open_slide


def spot_centres(slide, spacing_px: float = 90.0) -> np.ndarray:
    width, height = slide.dimensions
    ys, xs = np.mgrid[150 : height - 150 : spacing_px, 150 : width - 150 : spacing_px]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def pool():
    with ReadingPool(workers=2, batch_size=16, patch_px=224) as processes:
        yield processes


def test_processes_read_the_patches_the_threads_read_slide_after_slide(pool, small_pyramids):
    for path, name in ((SVS, "svs"), (DICOM_FOLDER, "dicom"), (small_pyramids["tagged"], "tif")):
        with open_slide(path, name) as slide:
            plan = slide.plan(112.0, 0.5)
            centres = spot_centres(slide)
            by_threads = np.concatenate(list(iter_patch_batches(slide, centres, plan, 16, 2)))
            by_processes = np.concatenate(
                [batch.copy() for batch in pool.batches(slide, name, centres, plan, 16, 2048)]
            )
        assert by_processes.shape == (len(centres), 224, 224, 3) and len(centres) > 40
        assert np.array_equal(by_processes, by_threads), name


def test_a_damaged_tile_fails_its_slide_and_the_pool_goes_on(pool, small_pyramids, tmp_path):
    import tifffile

    damaged = tmp_path / "damaged.tif"
    shutil.copy(small_pyramids["tagged"], damaged)
    with open_slide(damaged, "damaged") as slide:
        level = slide.plan(112.0, 0.5).level
    with tifffile.TiffFile(damaged) as tiff:
        page = tiff.series[0].levels[level].keyframe
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(damaged.read_bytes())
    data[offset : offset + count] = bytes(count)
    damaged.write_bytes(bytes(data))
    with open_slide(damaged, "damaged") as slide:
        plan = slide.plan(112.0, 0.5)
        message = rf"damaged\.tif: cannot decode tile 0 of level {level}"
        with pytest.raises(SlideReadError, match=message):
            for _ in pool.batches(slide, "damaged", spot_centres(slide), plan, 16, 2048):
                pass
    with open_slide(SVS, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        batches = list(pool.batches(slide, "svs", spot_centres(slide)[:20], plan, 16, 2048))
    assert [len(batch) for batch in batches] == [16, 4]


def test_dead_pool_processes_are_noticed_instead_of_waited_for(small_pyramids, monkeypatch):
    import hespotex.io.reading_pool

    monkeypatch.setattr(hespotex.io.reading_pool, "POLL_SECONDS", 0.2)  # noticed sooner
    with ReadingPool(workers=1, batch_size=8, patch_px=224) as lonely:
        for process in lonely._processes:
            process.kill()
            process.join()
        with open_slide(small_pyramids["tagged"], "tif") as slide:
            plan = slide.plan(112.0, 0.5)
            with pytest.raises(RuntimeError, match="a reader process died"):
                list(lonely.batches(slide, "tif", spot_centres(slide)[:8], plan, 8, 2048))


def test_pool_processes_map_the_stain_as_the_threads_do(pool, he_tile):
    """A stain transform travels to the pool's processes with each batch (pickled) and maps
    the patches there, to the same pixels as in the reading threads."""
    from hespotex.config import StainNormalisation
    from hespotex.encoder.stain import StainTransform, fit_profile

    with open_slide(SVS, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        centres = spot_centres(slide)[:40]
        source = fit_profile(StainNormalisation.MACENKO, [slide.read_field(centres[0], plan)], "s")
        target = fit_profile(StainNormalisation.MACENKO, [he_tile], "tile")
        stain = StainTransform(source, target)
        by_threads = np.concatenate(
            list(iter_patch_batches(slide, centres, plan, 16, 2, transform=stain))
        )
        by_processes = np.concatenate(
            [b.copy() for b in pool.batches(slide, "svs", centres, plan, 16, 2048, stain)]
        )
        plain = np.concatenate(list(iter_patch_batches(slide, centres, plan, 16, 2)))
    assert not np.array_equal(by_threads, plain), "the stain was mapped"
    assert np.array_equal(by_processes, by_threads)
