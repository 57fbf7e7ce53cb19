"""TensorFlow's data parallelism: ``MultiWorkerMirroredStrategy``, its workers described by ``TF_CONFIG``.

The engine runs the backend's own Trainer's step in each replica (its optimizer, schedule, weight decay,
label smoothing and precision): each replica's loss is its examples' summed loss over the global batch
size and Keras's optimizer sums the replicas' gradients (an all-reduce), so the update is one process's
on the global batch.
``start_workers`` is ``train --workers N``'s launcher: N processes on 127.0.0.1, each given the cluster
and its own index in ``TF_CONFIG``. TensorFlow's gRPC server cannot be bound to one address (see
``nin_multi.isolation``): the workers share a private network namespace where the kernel allows one, and
are refused on a machine with a network interface otherwise, unless the user allows the network.
"""
from __future__ import annotations

import json

import numpy as np

from nin_multi.backends.tf import Trainer, _dtype_policy, _floatx, keras, tf
from nin_multi.cluster import rank_seed
from nin_multi.host import check_port, free_ports
from nin_multi.isolation import (PRIVATE_ENV, join_private_network, new_private_network, private_network_available,
                                 refuse_unbound)

#: What a TensorFlow worker exposes, for ``refuse_unbound``.
EXPOSURE = ("TensorFlow's gRPC worker", "runs any graph it is sent (file reads and writes included)")


def distribute(ctx, cfg, make_model, make_trainer):
    """MultiWorkerMirroredStrategy from ``TF_CONFIG`` (any number of hosts; on a host with GPUs each worker
    mirrors over them), with the run's timeout on every collective. The model and the Trainer (its
    optimizer's variables) are created inside ``strategy.scope()``, so they are mirrored, and the engine
    runs the Trainer's own step graphs."""
    refuse_unbound(*EXPOSURE, ctx.allow_network)  # its server will listen on every interface, whatever TF_CONFIG says
    host, port = ctx.address.rsplit(":", 1)
    check_port(host, int(port), "this TensorFlow worker", "TF_CONFIG")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=ctx.timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    with strategy.scope():
        model = make_model()
        engine = _StrategyEngine(strategy, make_trainer(model), ctx)
    return model, engine


class _StrategyEngine:
    """The Trainer's step in every replica: the rate set once, in cross-replica context (``_rate_graph``),
    then each replica's ``_step_graph``, whose loss is its examples' summed loss over the global batch
    size; Keras's optimizer sums the replicas' gradients (an all-reduce), so the update is one process's
    on the global batch."""

    def __init__(self, strategy, trainer: Trainer, ctx):
        self.strategy, self.base, self.ctx = strategy, trainer, ctx
        self.model, self.dtype, self.seeds = trainer.model, trainer.dtype, trainer.seeds
        self._reseed = lambda: [g.state.assign(g.state * 0 + rank_seed(int(g.state.numpy()[0]), ctx.rank))
                                for g in self.seeds.values()] if ctx.rank else None
        self._reseed()
        self._train = tf.function(self._train_graph, reduce_retracing=True)
        self._eval = tf.function(self._eval_graph, reduce_retracing=True)
        self._sum = tf.function(self._sum_graph)

    def _scope(self):
        """What the Trainer traces under: the model's dtype as Keras's default, the precision's policy."""
        return _floatx(self.dtype), _dtype_policy(self.model, self.base.policy)

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
        return self.strategy.run(self.base._step_graph, args=(x, y, total))

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

    def train_step(self, x, y, lr: float, total: int) -> tuple[float, int]:
        floatx, policy = self._scope()
        with floatx, policy, self.strategy.scope():  # traced on the first call (and the last, shorter batch)
            self.base._rate(tf.constant(lr, self.dtype))
            loss, correct = self._this_worker(self._train(self._local(x, self.dtype), self._local(y),
                                                          tf.constant(total, tf.int64)))
        return loss, correct

    def eval_step(self, x, y) -> tuple[float, int]:
        floatx, policy = self._scope()
        with floatx, policy:
            return self._this_worker(self._eval(self._local(x, self.dtype), self._local(y)))

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self._sum(self._local_copy(tf.constant(values, tf.float64))).numpy()

    def extra_state(self) -> dict:
        return self.base.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.base.load_extra_state(state)
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
        refuse_unbound(*EXPOSURE, launch.allow_network)
    first = None
    for i in range(workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        step = None if not private else new_private_network if first is None else join_private_network(first.pid)
        p = launch.start(f"worker {i}", command, {**env, "TF_CONFIG": tf_config}, step)
        first = first or p
    return [f"worker {i}" for i in range(workers)]
