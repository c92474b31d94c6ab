import pytest
import torch

from sag.spatial import components, parse, select


@pytest.mark.parametrize("text, head, position, relation, landmark, size", [
    ("the leftmost red circle", "the red circle", ((0, -1),), None, None, 0),
    ("The red circle on the left.", "the red circle", ((0, -1),), None, None, 0),
    ("the bottommost small square", "the small square", ((1, 1),), None, None, -1),
    ("the man on the left holding a guitar", "the man holding a guitar", ((0, -1),), None, None, 0),
    ("top-right dog", "dog", ((0, 1), (1, -1)), None, None, 0),
    ("the dog in the middle", "the dog", ((None, 0),), None, None, 0),
    ("the small square above the blue star", "the small square", (), "above", "the blue star", -1),
    ("the circle to the left of the green one", "the circle", (), "to the left of", "the green one", 0),
    ("cup next to laptop", "cup", (), "next to", "the laptop", 0),
    ("the large red circle", "the large red circle", (), None, None, 1),
    ("the left one", "the left one", ((0, -1),), None, None, 0),
])
def test_parse(text, head, position, relation, landmark, size):
    query = parse(text)
    assert (query.head, query.position, query.relation, query.landmark, query.size) == (
        head, position, relation, landmark, size)


@pytest.mark.parametrize("text", ["the red circle", "a man holding a guitar", "", "over", "the man over there"])
def test_texts_without_spatial_words_keep_the_models_reading(text):
    assert parse(text) is None


def blobs(*boxes, side=40):
    """A bool mask (side, side) with the given (row0, row1, col0, col1) rectangles set."""
    mask = torch.zeros(side, side, dtype=torch.bool)
    for r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


LEFT, RIGHT, TOP, BOTTOM = (15, 25, 2, 10), (15, 25, 30, 38), (2, 10, 15, 25), (30, 38, 15, 25)


@pytest.mark.parametrize("text, expected", [
    ("the leftmost circle", LEFT), ("the circle on the right", RIGHT), ("the topmost circle", TOP),
    ("the lower circle", BOTTOM), ("the top left circle", TOP),
])
def test_an_absolute_position_keeps_the_extreme_region(text, expected):
    mask = blobs(LEFT, RIGHT, TOP, BOTTOM)
    assert torch.equal(select(parse(text), mask), blobs(expected))


def test_a_speck_of_the_threshold_is_no_candidate():
    mask = blobs(RIGHT, (20, 21, 0, 1))  # a 1-pixel speck further left than the object
    assert len(components(mask)) == 1
    assert torch.equal(select(parse("the leftmost circle"), mask), blobs(RIGHT))


@pytest.mark.parametrize("relation, expected", [("above", TOP), ("below", BOTTOM), ("left of", LEFT),
                                                ("right of", RIGHT)])
def test_a_relation_keeps_the_region_on_that_side_of_the_landmark(relation, expected):
    landmark = blobs((15, 25, 15, 25))
    # the head's words fit the landmark too: it must never be the answer
    head = blobs(LEFT, RIGHT, TOP, BOTTOM, (15, 25, 15, 25))
    head[15:25, 10:30] = False  # keep the landmark region apart from the left and right blobs
    head[15:25, 15:25] = True
    picked = select(parse(f"the circle {relation} the star"), head, landmark_mask=landmark)
    assert torch.equal(picked, blobs(expected))


def test_of_the_regions_on_the_named_side_the_best_fit_for_the_head_wins():
    landmark = blobs((30, 38, 15, 25))
    head = blobs((18, 26, 2, 10), (2, 10, 30, 38))  # both above the landmark; the first is nearer
    soft = torch.zeros(40, 40)
    soft[18:26, 2:10], soft[2:10, 30:38] = 0.6, 1.0  # the second fits the words better
    query = parse("the circle above the star")
    assert torch.equal(select(query, head, soft, landmark_mask=landmark), blobs((2, 10, 30, 38)))
    assert torch.equal(select(query, head, landmark_mask=landmark), blobs((18, 26, 2, 10)))  # no map: the nearest
    # "next to" is about distance, whatever the map says
    assert torch.equal(select(parse("the circle next to the star"), head, soft, landmark_mask=landmark),
                       blobs((18, 26, 2, 10)))


def test_the_landmark_is_where_its_map_peaks():
    head = blobs(TOP, BOTTOM)
    landmark = blobs((12, 16, 15, 25), (26, 29, 15, 25))  # two candidates for "the star"
    soft = torch.zeros(40, 40)
    soft[27, 20] = 1.0  # the map peaks in the lower one: the circle "above the star" is then... both are above
    assert torch.equal(select(parse("the circle below the star"), head, landmark_mask=landmark,
                              landmark_soft=soft), blobs(BOTTOM))
    soft = torch.zeros(40, 40)
    soft[13, 20] = 1.0
    assert torch.equal(select(parse("the circle above the star"), head, landmark_mask=landmark,
                              landmark_soft=soft), blobs(TOP))


def test_next_to_keeps_the_nearest_region():
    head = blobs((15, 25, 0, 5), (15, 25, 26, 30))
    landmark = blobs((15, 25, 32, 38))
    assert torch.equal(select(parse("the cup next to the laptop"), head, landmark_mask=landmark),
                       blobs((15, 25, 26, 30)))


def test_size_words_keep_the_smallest_or_largest_region():
    mask = blobs((2, 8, 2, 8), (20, 35, 20, 35))
    assert torch.equal(select(parse("the small circle"), mask), blobs((2, 8, 2, 8)))
    assert torch.equal(select(parse("the big circle"), mask), blobs((20, 35, 20, 35)))


def test_nothing_to_choose_from_keeps_the_models_mask():
    empty = torch.zeros(40, 40, dtype=torch.bool)
    assert select(parse("the leftmost circle"), empty) is None
    assert select(parse("the circle above the star"), blobs(TOP), landmark_mask=empty) is None
    with pytest.raises(ValueError, match="landmark"):
        select(parse("the circle above the star"), blobs(TOP))
