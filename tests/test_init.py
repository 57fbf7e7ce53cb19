"""The fast recipe's init, ``kaiming-identity``: the He draw, with the classifier block's 1x1 convs
starting as the identity and every other conv's filters centred (``nin_multi.weights.initial_weights`` says
why). Every backend loading this one draw is checked in test_backends.py."""
import numpy as np
import pytest

from nin_multi.spec import Conv, chapter_spec, make_spec
from nin_multi.weights import initial_weights


def test_classifier_1x1_convs_start_as_the_identity_and_other_filters_are_centred_he_draws():
    spec = chapter_spec()
    he, w = initial_weights(spec, "kaiming", seed=2), initial_weights(spec, "kaiming-identity", seed=2)
    assert set(w) == set(he) and all(w[k].dtype == np.float32 and w[k].shape == he[k].shape for k in he)
    for p in spec.param_layers():
        k = w[f"{p.name}.weight"]
        if p.name in ("nin4.conv1", "nin4.conv2"):  # 10 -> 10: the class scores' block
            np.testing.assert_array_equal(k[:, :, 0, 0], np.eye(10, dtype=np.float32))
        else:  # the same He draw with each filter's mean taken out (the 1x1 convs of blocks 1-3 too)
            fan_in = p.in_channels * p.kernel ** 2
            draw = he[f"{p.name}.weight"]
            np.testing.assert_allclose(k, draw - draw.mean(axis=(1, 2, 3), keepdims=True), atol=1e-6)
            assert np.abs(k.reshape(p.out_channels, -1).sum(axis=1)).max() < 1e-6 * fan_in
            np.testing.assert_allclose(k.std(), np.sqrt(2 / fan_in), rtol=0.05)
        assert not w[f"{p.name}.bias"].any()


@pytest.mark.parametrize("variant, identity", [("mini", {"nin4.conv1", "nin4.conv2"}), ("fc-head", set())])
def test_only_a_block_that_gives_the_class_scores_starts_as_the_identity(variant, identity):
    spec = make_spec(variant, image_size=96)
    he, w = initial_weights(spec, "kaiming", 0), initial_weights(spec, "kaiming-identity", 0)
    eye = {n[:-len(".weight")] for n, k in w.items() if k.ndim == 4 and k.shape[2:] == (1, 1)
           and k.shape[0] == k.shape[1] and np.array_equal(k[:, :, 0, 0], np.eye(k.shape[0]))}
    assert eye == identity
    for p in spec.param_layers():
        if not isinstance(p, Conv):  # dense layers (fc-head's scores) keep the He draw as it is
            np.testing.assert_array_equal(w[f"{p.name}.weight"], he[f"{p.name}.weight"])
