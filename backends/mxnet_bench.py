"""MXNet's part of ``nin-multi bench``: its GEMM probe and its peer paths, the chapter's imperative
Gluon loop and Gluon's one switch, ``hybridize()``. The names every ``<backend>_bench`` module offers
are listed in ``torch_bench``."""
from __future__ import annotations

import mxnet as mx

FAST_IS_DEFAULT = False
#: MXNet's AMP patches its operators for the whole process once a bf16 Trainer exists: each lower
#: precision runs alone, after every fp32 path is done.
LOWER_PRECISIONS_ALONE = True
DESCRIPTIONS = {"chapter": "imperative Gluon", "fast": "Gluon hybridize()", "default": "Trainer: hybridized static"}


class GluonChapter:
    """The chapter's Gluon loop: imperative (the model not hybridized), ``autograd.record``, ``trainer.step``.
    ``hybrid``: Gluon's one switch, ``net.hybridize()`` with its defaults (no static_alloc/static_shape,
    which the backend's Trainer adds)."""

    def __init__(self, backend, model, lr, hybrid: bool = False):
        self.autograd, self.model = backend.autograd, model
        if hybrid:
            model.hybridize()  # resets the flags build_model set: static_alloc and static_shape off
        else:
            model.hybridize(active=False)
        self.trainer = backend.gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
        self.loss = backend.gluon.loss.SoftmaxCrossEntropyLoss()
        self.ctx = backend._ctx()

    def _result(self, logits, loss, y):
        return float(loss.sum().asscalar()), int((logits.asnumpy().argmax(1) == y).sum())

    def train_step(self, x, y):
        xs, ys = mx.nd.array(x, ctx=self.ctx), mx.nd.array(y, ctx=self.ctx)
        with self.autograd.record():
            logits = self.model(xs)
            loss = self.loss(logits, ys)
        loss.backward()
        self.trainer.step(len(y))
        return self._result(logits, loss, y)

    def eval_step(self, x, y):
        xs, ys = mx.nd.array(x, ctx=self.ctx), mx.nd.array(y, ctx=self.ctx)
        with self.autograd.predict_mode():
            logits = self.model(xs)
        return self._result(logits, self.loss(logits, ys), y)


class GluonHybrid(GluonChapter):
    def __init__(self, backend, model, lr):
        super().__init__(backend, model, lr, hybrid=True)


PEERS = {"chapter": GluonChapter, "fast": GluonHybrid}


def gemm(n: int, precision: str):
    if precision == "bf16":
        raise NotImplementedError("MXNet 1.9.1's dot has no bfloat16 kernel (its bf16 runs through AMP's oneDNN "
                                  "convolutions and FullyConnected only)")
    ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    dtype = {"fp32": "float32", "fp64": "float64"}[precision]
    a = mx.nd.random.uniform(shape=(n, n), ctx=ctx).astype(dtype)
    b = mx.nd.random.uniform(shape=(n, n), ctx=ctx).astype(dtype)
    return "mx.nd.dot", str(ctx), lambda: mx.nd.dot(a, b), mx.nd.waitall


def sync(model):
    """MXNet's engine is asynchronous: a step returns once its loss is known, while the backward pass
    and the update still run. Wait for them, or they would be timed as part of the next path's step."""
    return mx.nd.waitall


def version() -> str:
    return mx.__version__


def environment() -> dict:
    return {}
