"""The learner's pictures: the network drawn from its spec, and a trained network's gallery and confusion
matrix from ``evaluate``, in every framework.

What is drawn is checked as data (the diagram's rows, the confusion counts, the counts ``evaluate``
reports beside its accuracy); the files are checked to be real images of a readable size.
"""
import re

import numpy as np
import pytest

from nin_multi.cli import main
from nin_multi.data import CLASSES
from nin_multi.errors import ConfigError
from nin_multi.pictures import (GALLERY_SIZE, check_picture_path, confusion_counts, draw_confusion, draw_gallery,
                                draw_network, network_rows)
from nin_multi.spec import make_spec
from nin_multi.weights import save_weights, trained_entry
from reference import random_weights
from test_spec import CHAPTER_NCHW


def image_size(path) -> tuple[int, int]:
    from matplotlib.image import imread
    height, width = imread(path).shape[:2]
    return width, height


def test_network_rows_are_the_chapters_layers_and_shapes():
    rows = network_rows(make_spec("chapter"), 224)
    assert len(rows) == 1 + 4 * 3 + 3 + 1 + 2  # input, 4 blocks of 3 convs, 3 pools, dropout, gap, flatten
    assert rows[0][:2] == ("input image, 1 channel", "1 \u00d7 224 \u00d7 224")
    assert rows[1][:3] == ("11\u00d711 conv, 96 ch (stride 4), ReLU", "96 \u00d7 54 \u00d7 54", "11,712")
    assert rows[5][0] == "5\u00d75 conv, 256 ch (pad 2), ReLU"
    # the last row of each block and every layer outside a block show the spec's walk, shape for shape
    shown = [r[1] for i, r in enumerate(rows[1:], 1) if r[4] is None or i + 1 == len(rows) or rows[i + 1][4] != r[4]]
    assert shown == [" \u00d7 ".join(str(s) for s in shape[1:]) for shape in CHAPTER_NCHW]
    assert [r[4] for r in rows].count("nin4") == 3
    assert sum(int(r[2].replace(",", "")) for r in rows if r[2]) == make_spec("chapter").num_params


def test_network_rows_follow_the_variant():
    rows = network_rows(make_spec("no-1x1"), 224)
    convs = [r[0] for r in rows if r[4]]
    assert convs == ["11\u00d711 conv, 96 ch (stride 4), ReLU", "5\u00d75 conv, 256 ch (pad 2), ReLU",
                     "3\u00d73 conv, 384 ch (pad 1), ReLU", "3\u00d73 conv, 10 ch (pad 1), ReLU"]
    fc = network_rows(make_spec("fc-head"), 224)
    assert fc[-2][:3] == ("dense 9,600 \u2192 4,096, ReLU", "4,096", "39,325,696")
    assert fc[-1][:2] == ("dense 4,096 \u2192 10", "10")


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_network_diagram_is_written(tmp_path, suffix):
    dest = draw_network(make_spec("chapter"), tmp_path / f"net.{suffix}", 224)
    assert dest.stat().st_size > 10_000
    if suffix == "png":
        width, height = image_size(dest)
        assert width > 700 and height > 900  # one row per layer, readable at the page's width
    else:
        assert "NiN block 4" in dest.read_text()


def test_confusion_counts_are_true_by_predicted():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    counts = confusion_counts(labels, predicted, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert counts.sum() == 6 and np.trace(counts) == 4


def test_gallery_and_confusion_are_images(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (GALLERY_SIZE, 28, 28), dtype=np.uint8)
    labels = np.arange(GALLERY_SIZE) % 10
    predicted = labels.copy()
    predicted[::5] = (predicted[::5] + 1) % 10
    gallery = draw_gallery(images, labels, predicted, CLASSES, tmp_path / "gallery.png")
    confusion = draw_confusion(confusion_counts(labels, predicted, 10), CLASSES, tmp_path / "confusion.png")
    assert image_size(gallery)[0] > 1000 and image_size(confusion)[0] > 600


@pytest.mark.parametrize("name", ["net.jpg", "net", "missing-folder/net.png"])
def test_a_picture_path_that_cannot_be_written_is_refused_first(tmp_path, name):
    with pytest.raises(ConfigError, match=r"--diagram .*(must end in \.png, \.svg or \.pdf|does not exist)"):
        check_picture_path(tmp_path / name, "--diagram")


def test_summary_draws_the_diagram_and_refuses_a_bad_name(tmp_path, capsys):
    pytest.importorskip("torch", reason="summary renders the model: pip install -e '.[torch]'")
    dest = tmp_path / "network.png"
    assert main(["summary", "--backend", "torch", "--diagram", str(dest)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"network diagram written to {dest}"
    assert image_size(dest)[1] > 900
    assert main(["summary", "--backend", "torch", "--diagram", str(tmp_path / "network.jpg")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "must end in .png, .svg or .pdf" in err
    assert not (tmp_path / "network.jpg").exists()


def test_evaluate_draws_what_it_scores(backend, sample_dir, tmp_path, capsys):
    """The confusion matrix's diagonal is the accuracy evaluate prints: the pictures' extra forward pass
    predicts what the Trainer's evaluation counted, in every framework."""
    spec = make_spec("mini")
    weights = tmp_path / "weights.safetensors"
    save_weights(weights, spec, random_weights(spec, seed=3), meta={"config": {"resize": 28}},
                 trained=trained_entry(28, "NCHW", "fp32"))
    gallery, confusion = tmp_path / "gallery.png", tmp_path / "confusion.svg"
    code = main(["evaluate", "--backend", backend.NAME, "--weights", str(weights), "--data-dir", str(sample_dir),
                 "--test-subset", "40", "--batch-size", "16", "--no-progress", "--threads", "1",
                 "--gallery", str(gallery), "--confusion", str(confusion)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    lines = out.splitlines()
    acc = float(re.search(r"test acc (\d\.\d{4}) on 40 images", lines[0])[1])
    right = int(re.fullmatch(rf"confusion matrix written to {re.escape(str(confusion))} \((\d+) of 40 right\)",
                             lines[1])[1])
    assert right == round(acc * 40)
    assert re.fullmatch(rf"gallery of {GALLERY_SIZE} test images written to {re.escape(str(gallery))} "
                        rf"\(\d+ wrong\)", lines[2])
    assert image_size(gallery)[0] > 1000 and confusion.read_text().startswith("<?xml")
