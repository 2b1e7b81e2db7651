"""Issue 14: 05's validation split (vision.with_validation, accuracy on a named part) and 09's
measurement of where the captioner looks (shapes.object_patches, shapes.attention_on_objects)."""
import pytest
import torch

from course_lib.tasks import shapes, vision


def _fake_split(n_train=200, n_test=50):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_test, 1, 8, 8, generator=g)
    y = torch.arange(n_train + n_test) % 10
    return vision.ImageSplit("fake", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                             tuple(str(c) for c in range(10)), (0.5,), (0.3,))


def test_with_validation_is_disjoint_stratified_deterministic_and_keeps_test():
    s = _fake_split()
    a, b = vision.with_validation(s, 40, seed=3), vision.with_validation(s, 40, seed=3)
    c = vision.with_validation(s, 40, seed=4)
    assert len(a.y_val) == 40 and len(a.y_train) == 160
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.x_test, s.x_test) and torch.equal(a.y_test, s.y_test)
    assert torch.bincount(a.y_val, minlength=10).tolist() == [4] * 10      # stratified
    together = torch.cat([a.x_train, a.x_val]).flatten(1)
    assert torch.equal(together.sort(0).values, s.x_train.flatten(1).sort(0).values)  # a partition of the training part
    assert a.mean[0] == pytest.approx(float(a.x_train.mean()), abs=1e-6)   # statistics from the remaining training part
    assert "val (40, 1, 8, 8)" in repr(a)
    assert a.to("cpu").x_val is not None


def test_with_validation_rejects_bad_sizes_and_a_second_carve():
    s = _fake_split()
    with pytest.raises(ValueError, match="n_val must be in 10..190"):
        vision.with_validation(s, 5)
    with pytest.raises(TypeError, match="n_val must be an int, received float"):
        vision.with_validation(s, 40.0)
    with pytest.raises(ValueError, match="already has a validation part"):
        vision.with_validation(vision.with_validation(s, 40), 40)


def test_accuracy_on_the_validation_part_and_missing_part_message():
    s = vision.with_validation(_fake_split(), 40)

    class ByLabel(torch.nn.Module):  # predicts class 3 for every image
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float() + self.w

    assert vision.accuracy(ByLabel(), s, part="val") == pytest.approx(0.1)
    assert vision.accuracy(ByLabel(), s, part="test") == pytest.approx(5 / 50)
    with pytest.raises(ValueError, match="no validation part"):
        vision.accuracy(ByLabel(), _fake_split(), part="val")
    with pytest.raises(ValueError, match="part must be one of train, val, test"):
        vision.accuracy(ByLabel(), s, part="dev")


def test_object_patches_match_the_rendered_pixels():
    scene = shapes.Scene((shapes.Obj("red", "square", cx=4.0, cy=4.0, r=3.0),
                          shapes.Obj("blue", "circle", cx=28.0, cy=24.0, r=3.5)), "left of")
    cover = shapes.object_patches(scene, 8)
    assert cover.shape == (2, 16)
    assert cover[0].nonzero().flatten().tolist() == [0]          # the square sits inside the top-left patch
    assert cover[1].nonzero().flatten().tolist() == [11, 15]     # the circle straddles two rows of the last column
    img = shapes.render(scene, noise=0.0)
    painted = (img - 0.08).abs().sum(0) > 1e-6
    assert torch.equal(painted, shapes.object_mask(scene.objects[0]) | shapes.object_mask(scene.objects[1]))
    with pytest.raises(ValueError, match="patch_size must be a positive int dividing the image size 32"):
        shapes.object_patches(scene, 5)


def test_word_roles_assign_slots_around_the_relation():
    assert shapes.word_roles("a red circle left of a blue square") == [
        ("other", None), ("colour", 0), ("shape", 0), ("other", None), ("other", None), ("other", None),
        ("colour", 1), ("shape", 1)]
    assert shapes.word_roles("a green square") == [("other", None), ("colour", 0), ("shape", 0)]


def test_attention_on_objects_uniform_and_focused_attention():
    data = shapes.make_split("test", 30)
    caps = data.captions
    uniform = shapes.attention_on_objects([torch.full((len(c), 16), 1 / 16) for c in caps], caps, data, 8)
    for kind in shapes.WORD_KINDS:
        assert torch.allclose(uniform[kind]["share"], uniform[kind]["uniform"])
        assert uniform[kind]["correct"].all()
    n_named = sum(2 * len(s.objects) for s in data.scenes)
    assert len(uniform["colour"]["share"]) + len(uniform["shape"]["share"]) == n_named
    # attention entirely on the named object's patches, for every character of a colour/shape word
    maps = []
    for c, s in zip(caps, data.scenes, strict=True):
        cover = shapes.object_patches(s, 8).float()
        A, start = torch.zeros(len(c), 16), 0
        for w, (_kind, slot) in zip(c.split(" "), shapes.word_roles(c), strict=True):
            region = cover.amax(0) if slot is None else cover[slot]
            A[start:start + len(w)] = region / region.sum()
            start += len(w) + 1
        A[A.sum(1) == 0] = 1 / 16  # the spaces
        maps.append(A)
    focused = shapes.attention_on_objects(maps, caps, data, 8)
    for kind in shapes.WORD_KINDS:
        assert torch.allclose(focused[kind]["share"], torch.ones_like(focused[kind]["share"]))
    two = ~focused["colour"]["other_object"].isnan()
    assert two.any() and (focused["colour"]["other_object"][two] < 1).all()


def test_attention_on_objects_marks_wrong_words_skips_missing_objects_and_validates():
    data = shapes.make_split("test", 40)
    i = next(k for k, s in enumerate(data.scenes) if len(s.objects) == 1)
    one = shapes.ShapesData(data.images[i:i + 1], data.scenes[i:i + 1], "test")
    o = one.scenes[0].objects[0]
    wrong_colour = next(c for c in shapes.COLOURS if c != o.colour)
    cap = f"a {wrong_colour} {o.shape} above a {o.colour} {o.shape}"     # a second object the scene lacks
    r = shapes.attention_on_objects([torch.full((len(cap), 16), 1 / 16)], [cap], one, 8)
    assert r["colour"]["correct"].tolist() == [False] and r["shape"]["correct"].tolist() == [True]
    assert len(r["other"]["share"]) == 3
    with pytest.raises(ValueError, match="expected as many attention maps as captions as scenes"):
        shapes.attention_on_objects([], [cap], one, 8)
    with pytest.raises(ValueError, match=r"expected shape \(len\(caption\)="):
        shapes.attention_on_objects([torch.full((3, 16), 1 / 16)], [cap], one, 8)
    with pytest.raises(ValueError, match="must be a distribution"):
        shapes.attention_on_objects([torch.ones(len(cap), 16)], [cap], one, 8)
