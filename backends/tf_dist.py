"""TensorFlow's data parallelism: ``MultiWorkerMirroredStrategy``, its workers described by ``TF_CONFIG``.

Each replica's loss is its examples' summed loss over the global batch size and Keras's optimizer sums
the replicas' gradients (an all-reduce), so the update is one process's on the global batch.
``start_workers`` is ``train --workers N``'s launcher: N processes on 127.0.0.1, each given the cluster
and its own index in ``TF_CONFIG``. TensorFlow's gRPC server cannot be bound to one address (see
``nin_multi.isolation``): the workers share a private network namespace where the kernel allows one, and
are refused on a machine with a network interface otherwise, unless the user allows the network.
"""
from __future__ import annotations

import json

import numpy as np

from nin_multi.backends.tf import _dtype, _floatx, _load_training_state, _training_state, keras, tf
from nin_multi.cluster import rank_seed
from nin_multi.host import check_port, free_ports
from nin_multi.isolation import (PRIVATE_ENV, join_private_network, new_private_network, private_network_available,
                                 refuse_unbound)

#: What a TensorFlow worker exposes, for ``refuse_unbound``.
EXPOSURE = ("TensorFlow's gRPC worker", "runs any graph it is sent (file reads and writes included)")


def distribute(ctx, cfg, make_model, make_trainer):
    """MultiWorkerMirroredStrategy from ``TF_CONFIG`` (any number of hosts; on a host with GPUs each worker
    mirrors over them), with the run's timeout on every collective. The model and the optimizer are
    created inside ``strategy.scope()``, so the engine keeps its own SGD and step (the single-process
    Trainer's functions are traced outside any replica context and cannot update mirrored variables);
    ``make_trainer`` is not used."""
    refuse_unbound(*EXPOSURE)  # its server will listen on every interface, whatever TF_CONFIG says
    host, port = ctx.address.rsplit(":", 1)
    check_port(host, int(port), "this TensorFlow worker", "TF_CONFIG")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=ctx.timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    with strategy.scope():
        model = make_model()
        engine = _StrategyEngine(strategy, model, cfg.lr, ctx)
    return model, engine


class _StrategyEngine:
    """Each replica's loss is its examples' summed loss over the global batch size; Keras's optimizer
    sums the replicas' gradients (an all-reduce), so the update is one process's on the global batch."""

    def __init__(self, strategy, model: keras.Model, lr: float, ctx):
        self.strategy, self.model, self.ctx = strategy, model, ctx
        self.dtype = _dtype(model)
        with _floatx(self.dtype):  # float64: the learning rate too (see _floatx)
            self.opt = keras.optimizers.SGD(learning_rate=lr)
        self.opt.build(model.trainable_variables)
        self.seeds = {layer.name: layer.seed_generator for layer in model.layers
                      if isinstance(layer, keras.layers.Dropout) and layer.rate > 0}
        self._reseed = lambda: [g.state.assign(g.state * 0 + rank_seed(int(g.state.numpy()[0]), ctx.rank))
                                for g in self.seeds.values()] if ctx.rank else None
        self._reseed()
        self._train = tf.function(self._train_graph, reduce_retracing=True)
        self._eval = tf.function(self._eval_graph, reduce_retracing=True)
        self._sum = tf.function(self._sum_graph)

    def _local(self, x, dtype=None):
        """This worker's share split among its local replicas (one on a CPU; one per GPU)."""
        n = len(self.strategy.extended.worker_devices)

        def part(context):
            i = context.replica_id_in_sync_group % n
            return tf.constant(x[len(x) * i // n: len(x) * (i + 1) // n], dtype)
        return self.strategy.experimental_distribute_values_from_function(part)

    @staticmethod
    def _logits(model, x, training):
        logits = model(x, training=training)
        return logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)

    def _train_graph(self, x, y, total):
        model, opt = self.model, self.opt

        def step(x, y):
            with tf.GradientTape() as tape:
                logits = self._logits(model, x, True)
                per = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                loss_sum = tf.reduce_sum(per)
                loss = loss_sum / tf.cast(total, loss_sum.dtype)
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return tf.cast(loss_sum, tf.float64), tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.float64))

        return self.strategy.run(step, args=(x, y))

    def _eval_graph(self, x, y):
        model = self.model

        def step(x, y):
            logits = self._logits(model, x, False)
            per = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            return (tf.cast(tf.reduce_sum(per), tf.float64),
                    tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.float64)))

        return self.strategy.run(step, args=(x, y))

    def _sum_graph(self, values):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    def _local_copy(self, v):
        """Values of this worker, counted once: on its first local replica, zeros on the others."""
        n = len(self.strategy.extended.worker_devices)
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: v if context.replica_id_in_sync_group % n == 0 else tf.zeros_like(v))

    def _this_worker(self, out) -> tuple[float, int]:
        """Sums over this worker's replicas (``ShardedTrainer`` adds up the workers)."""
        loss, correct = (sum(t.numpy() for t in self.strategy.experimental_local_results(v)) for v in out)
        return float(loss), int(correct)

    def train_step(self, x, y, total: int) -> tuple[float, int]:
        with _floatx(self.dtype):  # traced on the first call: Keras's loss casts to the default dtype
            return self._this_worker(self._train(self._local(x, self.dtype), self._local(y),
                                                 tf.constant(total, tf.int64)))

    def eval_step(self, x, y) -> tuple[float, int]:
        with _floatx(self.dtype):
            return self._this_worker(self._eval(self._local(x, self.dtype), self._local(y)))

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self._sum(self._local_copy(tf.constant(values, tf.float64))).numpy()

    def extra_state(self) -> dict:
        return _training_state(self.opt, self.seeds)

    def load_extra_state(self, state: dict) -> None:
        _load_training_state(self.opt, self.seeds, state)
        self._reseed()

    def close(self) -> None:
        pass


def start_workers(launch, workers: int, command: list, env: dict) -> list:
    """N workers on free local ports, each told the cluster and its own index; in one private network
    namespace (its only interface loopback) where the kernel allows it."""
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # a lost peer is one line below, not pages of gRPC errors
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    private = private_network_available()
    if private:
        env[PRIVATE_ENV] = "1"
    else:
        refuse_unbound(*EXPOSURE)
    first = None
    for i in range(workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        step = None if not private else new_private_network if first is None else join_private_network(first.pid)
        p = launch.start(f"worker {i}", command, {**env, "TF_CONFIG": tf_config}, step)
        first = first or p
    return [f"worker {i}" for i in range(workers)]
