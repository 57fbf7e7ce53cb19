"""The optimizer's settings (nin_multi/optim.py): the schedule's numbers, the label-smoothed training loss
of every framework against NumPy (the test loss plain), each feature rendered in the framework's own
optimizer, and checkpoints that keep the momentum and the schedule's position (a resumed run is the
uninterrupted one, exactly)."""
import math

import numpy as np
import pytest

from nin_multi import optim
from nin_multi.config import TrainConfig
from nin_multi.errors import ConfigError
from nin_multi.optim import SGDSettings
from nin_multi.run import WEIGHTS
from nin_multi.spec import make_spec
from nin_multi.train import resume, train
from nin_multi.weights import load_weights

from conftest import load
from reference import random_weights
from test_backends import to_layout
from test_training import mini_config

FEATURES = dict(momentum=0.9, weight_decay=5e-4, label_smoothing=0.1, schedule="linear", warmup_epochs=1.0)


def test_constant_rate_is_the_chapters_plain_sgd():
    s = SGDSettings(0.1)
    assert s.plain and s.lr_at(0) == s.lr_at(10**6) == 0.1 and s.velocity_scale(5) == 1.0
    assert not SGDSettings(0.1, momentum=0.9).plain and not SGDSettings(0.1, label_smoothing=0.1).plain


def test_linear_one_cycle_values():
    s = SGDSettings(0.2, schedule="linear", warmup_steps=4, total_steps=12)
    got = [s.lr_at(t) for t in range(12)]
    want = [0.05, 0.1, 0.15, 0.2] + [0.2 * (1 - k / 8) for k in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert min(got) == pytest.approx(0.025) and s.lr_at(12) == s.lr_at(11)  # never 0; past the end: the last
    assert s.velocity_scale(0) == 1.0 and s.velocity_scale(1) == pytest.approx(2.0)
    assert s.velocity_scale(5) == pytest.approx(0.175 / 0.2)


def test_cosine_values():
    s = SGDSettings(0.1, schedule="cosine", warmup_steps=2, total_steps=10)
    got = [s.lr_at(t) for t in range(10)]
    want = [0.05, 0.1] + [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert got[1] == got[2] == 0.1 and all(a > b for a, b in zip(got[2:], got[3:]))  # the peak, then down


def test_from_config_counts_steps_and_warmup_epochs():
    cfg = TrainConfig(lr=0.02, epochs=10, momentum=0.9, schedule="linear", warmup_epochs=1.5)
    s = optim.from_config(cfg, 97)
    assert (s.total_steps, s.warmup_steps, s.momentum, s.lr) == (970, 146, 0.9, 0.02)
    assert optim.from_config(TrainConfig(), 27) == SGDSettings(0.05, total_steps=270)


@pytest.mark.parametrize("kw, message", [
    (dict(momentum=1.0), "--momentum must be below 1"),
    (dict(momentum=-0.1), "--momentum must be a non-negative number"),
    (dict(nesterov=True), "--nesterov needs --momentum"),
    (dict(label_smoothing=1.0), "--label-smoothing must be below 1"),
    (dict(weight_decay=float("nan")), "--weight-decay must be a non-negative number"),
    (dict(schedule="step"), "--schedule must be one of constant, cosine, linear"),
    (dict(warmup_epochs=1.0), "--warmup-epochs needs a --schedule"),
    (dict(schedule="cosine", warmup_epochs=10.0), "leaves nothing of --epochs 10"),
])
def test_bad_settings_say_which_option(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kw)


def _smoothed_cross_entropy(logits, y, eps):
    """NumPy: the mean over examples of -sum_k ((1 - eps) onehot_k + eps / K) log softmax_k."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    k = logits.shape[1]
    target = np.full_like(logp, eps / k)
    target[np.arange(len(y)), y] += 1 - eps
    return -(target * logp).sum(1).mean()


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_label_smoothing_is_the_training_loss_and_the_test_loss_is_plain(trainable_backend, eps):
    """A step minimizes (and reports) the smoothed loss; an evaluation reports the model's cross-entropy,
    whatever the recipe, so a test loss means one thing in every run and in ``evaluate``."""
    backend = trainable_backend
    spec = make_spec("mini", dropout=0.0)  # no dropout: the step's logits are the forward pass's
    model = backend.build_model(spec, dtype="float64")
    backend.set_weights(model, spec, {k: v.astype(np.float64) for k, v in random_weights(spec, seed=5).items()})
    x = to_layout(np.random.default_rng(6).random((8, 1, 28, 28)), backend)
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int64)
    logits = backend.forward(model, x)
    smoothed, plain = _smoothed_cross_entropy(logits, y, eps), _smoothed_cross_entropy(logits, y, 0)
    assert plain > 0.5 and (eps == 0 or abs(smoothed - plain) > 1e-4)
    trainer = backend.Trainer(model, 0.05, "fp64", optim=SGDSettings(0.05, label_smoothing=eps))
    assert trainer.eval_step(x, y)[0] / len(y) == pytest.approx(plain, rel=1e-12)
    assert trainer.train_step(x, y, 0.05)[0] / len(y) == pytest.approx(smoothed, rel=1e-12)  # the loss before the step


def test_each_feature_is_the_frameworks_own_optimizer():
    """Rendered, not re-implemented: the settings land in torch.optim.SGD, Keras's SGD, Gluon's sgd and
    Optax's injected hyperparameters."""
    s = SGDSettings(0.05, momentum=0.9, weight_decay=1e-3, schedule="cosine", warmup_steps=2, total_steps=20)
    spec = make_spec("mini")
    torchb = load("torch")
    t = torchb.Trainer(torchb.build_model(spec), 0.05, optim=s)
    g = t.opt.param_groups[0]
    assert type(t.opt).__name__ == "SGD"
    assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.9, 1e-3, False)
    tfb = load("tensorflow")
    k = tfb.Trainer(tfb.build_model(spec), 0.05, optim=s)
    assert type(k.opt).__name__ == "SGD" and k.opt.momentum == 0.9
    assert len(k.velocities) == 2 * len(list(spec.param_layers()))  # a kernel's and a bias's
    mxb = load("mxnet")
    m = mxb.Trainer(mxb.build_model(spec), 0.05, optim=s)
    assert type(m.trainer.optimizer).__name__ == "SGD" and m.trainer.optimizer.wd == 1e-3 and m.carry
    jb = load("jax")
    j = jb.Trainer(jb.build_model(spec), 0.05, optim=s)
    assert float(j.opt_state.hyperparams["learning_rate"]) == pytest.approx(s.lr_at(0))


@pytest.mark.slow
def test_resume_with_momentum_and_a_schedule_equals_uninterrupted(trainable_backend, sample_dir, tmp_path):
    """A run stopped after its first epoch (its later checkpoints removed) and resumed: the momentum
    buffers and the schedule's position come back from the checkpoint, so every number is the same."""
    backend = trainable_backend
    kw = dict(subset=192, test_subset=64, epochs=3, precision="fp64", **FEATURES)
    _, straight = train(mini_config(backend, sample_dir, tmp_path / "a", **kw), log=lambda *_: None)
    train(mini_config(backend, sample_dir, tmp_path / "b", **kw), log=lambda *_: None)
    for name in (WEIGHTS, "checkpoints/epoch-0002.npz", "checkpoints/epoch-0003.npz"):
        (tmp_path / "b" / name).unlink()
    _, resumed = resume(tmp_path / "b", log=lambda *_: None)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    _, wa = load_weights(tmp_path / "a" / WEIGHTS)
    _, wb = load_weights(tmp_path / "b" / WEIGHTS)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_a_run_with_momentum_is_not_continued_in_another_framework(sample_dir, tmp_path, capsys):
    """Its momentum buffers and schedule position have no meaning in another framework's optimizer: refused
    with one line that says how to continue it, the run directory untouched."""
    from nin_multi.cli import main

    load("torch"), load("jax")
    out = tmp_path / "run"
    train(mini_config(load("torch"), sample_dir, out, subset=64, test_subset=32, epochs=2, **FEATURES),
          log=lambda *_: None)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    code = main(["train", "--resume", str(out), "--backend", "jax", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("nin-multi: error:") and "\n" not in err
    assert "optimizer state does not carry over to another framework: continue it with --backend torch" in err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
