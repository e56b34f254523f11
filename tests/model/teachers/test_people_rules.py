"""Which of pose's per-crop finds become persons (no model needed: finds written here)."""

import numpy as np

from model.teachers.people import keep_people, tile_boxes

HEIGHT, WIDTH = 120, 160


def test_tiles_cover_the_image_at_each_scale():
    boxes = tile_boxes(HEIGHT, WIDTH)
    assert boxes[0] == [0, 0, WIDTH, HEIGHT]
    covered = np.zeros((HEIGHT, WIDTH), int)
    for x0, y0, x1, y1 in boxes[1:]:
        assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
        covered[y0:y1, x0:x1] += 1
    assert (covered >= 2).all()  # two finer scales, each covering everything
    assert tile_boxes(HEIGHT, WIDTH, tiles=False) == [[0, 0, WIDTH, HEIGHT]]


def standing(box, top=10, bottom=50, left=10, right=20, visibility=1.0, lying=False) -> dict:
    """A find in ``box``: a person-shaped mask at box-relative rows/cols, 33 landmarks."""
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.float16)
    mask[top:bottom, left:right] = 1.0
    landmarks = np.zeros((33, 4), np.float32)
    landmarks[:, 3] = visibility
    centre_x, shoulders_y, hips_y = x0 + (left + right) / 2, y0 + top + 8, y0 + top + 25
    landmarks[[11, 12], :2] = [centre_x, shoulders_y]
    landmarks[[23, 24], :2] = [centre_x, hips_y]
    if lying:
        landmarks[[23, 24], :2] = [centre_x + 20, shoulders_y]
    return {"box": np.array(box), "mask": mask, "landmarks": landmarks}


def test_a_whole_person_in_a_tile_is_kept_and_placed_in_the_image():
    kept = keep_people([standing([40, 20, 100, 80])], HEIGHT, WIDTH)
    assert len(kept) == 1 and kept[0].mask.shape == (HEIGHT, WIDTH)
    assert kept[0].mask[30:70, 50:60].min() == 1.0 and kept[0].mask.sum() == 40 * 10


def test_finds_that_are_cut_faint_lying_or_touching_a_kept_person_are_dropped():
    whole = standing([0, 0, WIDTH, HEIGHT], top=20, bottom=100, left=20, right=50)
    cut = standing([60, 0, 120, 60], top=20, bottom=60, left=30, right=45)  # bottom edge cut
    faint = standing([100, 40, 160, 100], visibility=0.7)
    lying = standing([100, 40, 160, 100], lying=True)
    touching = standing([40, 20, 100, 80], left=11, right=20)  # at x 51..59, beside x 20..49
    assert len(keep_people([whole, cut, faint, lying], HEIGHT, WIDTH)) == 1
    kept = keep_people([whole, touching], HEIGHT, WIDTH)
    assert len(kept) == 1 and kept[0].mask[50, 30] == 1.0
    apart = standing([40, 20, 100, 80], left=40, right=50)  # x 80..89: well apart
    assert len(keep_people([whole, apart], HEIGHT, WIDTH)) == 2
