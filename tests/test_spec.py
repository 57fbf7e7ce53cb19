import json

import pytest

from nin_multi.errors import ImageTooSmallError, SpecError
from nin_multi.spec import VARIANTS, NiNSpec, build_spec, chapter_spec, make_spec, to_nhwc

# The chapter's printout at 224x224 (d2l.ai 8.3, PyTorch tab).
CHAPTER_NCHW = [(1, 96, 54, 54), (1, 96, 26, 26), (1, 256, 26, 26), (1, 256, 12, 12), (1, 384, 12, 12),
                (1, 384, 5, 5), (1, 384, 5, 5), (1, 10, 5, 5), (1, 10, 1, 1), (1, 10)]
CHAPTER_NHWC = [(1, 54, 54, 96), (1, 26, 26, 96), (1, 26, 26, 256), (1, 12, 12, 256), (1, 12, 12, 384),
                (1, 5, 5, 384), (1, 5, 5, 384), (1, 5, 5, 10), (1, 1, 1, 10), (1, 10)]


def test_chapter_shapes_nchw_and_nhwc():
    walk = chapter_spec().walk(224)
    assert [i.nchw for i in walk] == CHAPTER_NCHW
    assert [i.nhwc for i in walk] == CHAPTER_NHWC
    assert [i.name for i in walk] == ["nin1", "pool1", "nin2", "pool2", "nin3", "pool3", "dropout", "nin4",
                                      "gap", "flatten"]


def test_chapter_parameter_count():
    assert chapter_spec().num_params == 1_992_166
    assert sum(i.params for i in chapter_spec().walk(224)) == 1_992_166
    # 3 input channels, as in the standalone PyTorch NinNet: only the first conv grows, by 2*96*11*11.
    assert chapter_spec(in_channels=3).num_params == 1_992_166 + 2 * 96 * 11 * 11


def test_chapter_multiply_adds_match_an_independent_count():
    # Hand count: output pixels x output channels x (k*k*in) per conv at 224.
    convs = [(54, 96, 11 * 11 * 1), (54, 96, 96), (54, 96, 96),
             (26, 256, 5 * 5 * 96), (26, 256, 256), (26, 256, 256),
             (12, 384, 3 * 3 * 256), (12, 384, 384), (12, 384, 384),
             (5, 10, 3 * 3 * 384), (5, 10, 10), (5, 10, 10)]
    expected = sum(s * s * c * k for s, c, k in convs)
    assert sum(i.macs for i in chapter_spec().walk(224)) == expected == 762_297_352


def test_odd_and_non_square_sizes():
    assert chapter_spec().walk(227)[0].nchw == (1, 96, 55, 55)
    walk = chapter_spec().walk((227, 231), batch=4)
    assert walk[0].nchw == (4, 96, 55, 56)
    assert walk[-1].nchw == (4, 10)


def test_too_small_image_names_the_layer():
    spec = chapter_spec()
    assert spec.min_image_size() == 67
    spec.walk(67)
    with pytest.raises(ImageTooSmallError, match="'pool3'"):
        spec.walk(66)
    with pytest.raises(ImageTooSmallError, match="'nin1'"):
        spec.walk(10)


def test_spec_is_immutable_and_serialises():
    spec = chapter_spec()
    with pytest.raises(Exception):
        spec.num_classes = 5
    for name in VARIANTS:
        s = make_spec(name, image_size=96)
        assert NiNSpec.from_dict(json.loads(s.to_json())) == s


def test_variants_parameter_counts():
    chapter = chapter_spec()
    # one 1x1 conv per block instead of two: each block loses one (c*c + c) layer
    chans = [96, 256, 384, 10]
    assert make_spec("one-1x1").num_params == chapter.num_params - sum(c * c + c for c in chans)
    assert make_spec("no-1x1").num_params == chapter.num_params - 2 * sum(c * c + c for c in chans)
    assert make_spec("3x3-inner").num_params == chapter.num_params + 2 * sum(8 * c * c for c in chans)
    # fully connected head at 224: blocks 1-3, pool to 384x5x5, dense 9600->4096->10
    fc = make_spec("fc-head", image_size=224)
    convs = 30_336 + 746_240 + 1_180_800
    assert fc.num_params == convs + (9600 * 4096 + 4096) + (4096 * 10 + 10)
    assert fc.walk(224)[-1].nchw == (1, 10)
    with pytest.raises(SpecError, match="fully connected head"):
        fc.walk(96)


def test_bad_spec_values_are_refused():
    with pytest.raises(SpecError, match="in_channels"):
        chapter_spec(in_channels=0)
    with pytest.raises(SpecError, match="num_classes"):
        chapter_spec(num_classes=-1)
    with pytest.raises(SpecError, match="unknown variant"):
        make_spec("resnet")
    with pytest.raises(SpecError, match="odd"):
        build_spec(k_1x1=2)


def test_weight_shapes_are_canonical_oihw():
    shapes = chapter_spec().weight_shapes()
    assert shapes["nin1.conv0.weight"] == (96, 1, 11, 11)
    assert shapes["nin2.conv0.weight"] == (256, 96, 5, 5)
    assert shapes["nin4.conv2.bias"] == (10,)
    assert len(shapes) == 24
    assert to_nhwc((2, 3, 4, 5)) == (2, 4, 5, 3)
