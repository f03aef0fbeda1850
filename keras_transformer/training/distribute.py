"""Training under `tf.distribute`: picking a strategy, and who writes files.

    strategy = make_strategy("mirrored")          # or "none", "multi_worker", "tpu", "auto"
    with strategy.scope():
        model = build_transformer(config)
        model.compile(...)                        # optimizer and metrics in the scope too
    model.fit(dataset_with_the_global_batch, ...)

Keras splits each global batch across the replicas. What this package does
for correctness under several replicas:

- `MaskedSparseCategoricalCrossentropy` divides by the number of real tokens
  of the *global* batch (an all-reduce across replicas), so the gradient is
  the one a single device computes on the same global batch, even when the
  replicas' shares hold different numbers of padding tokens.
- MoE auxiliary losses go through Keras's `add_loss`, which Keras 3 scales by
  `1 / num_replicas_in_sync`; `MoE` keeps them per replica thread
  (`layers.ReplicaLocalLosses`), because Keras's one list per layer lets the
  last replica's loss overwrite the others' under `MirroredStrategy`. So `fit`
  minimizes the mean of the replicas' auxiliary losses (tested: the reported
  loss and the weights after a step match that mean on two logical CPUs).
- The pipelines set the auto-shard policy to `DATA` (their sources are
  in-memory tensors, not files), so each worker of a multi-worker run takes
  its own share of every global batch.
- Only the chief writes checkpoints and exports (`is_chief`); the other
  workers write their backups into their own directories (`worker_directory`).
- Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` as
  released (keras-team/keras#20585); `patch_keras_for_multi_worker` works
  around its two failures, and `make_strategy("multi_worker")` applies it.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "none", "mirrored", "multi_worker", "tpu")


def _tf_config():
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def make_strategy(name="auto"):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"none"` (the default strategy: one device), `"mirrored"` (all
            local GPUs, or the CPU), `"multi_worker"` (the workers of the
            `TF_CONFIG` environment variable), `"tpu"` (a Cloud TPU found by
            `TPUClusterResolver`), or `"auto"`: multi-worker if `TF_CONFIG`
            names a cluster, else TPU if one is found, else mirrored over
            the GPUs if there are several, else none.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "auto":
        if _tf_config().get("cluster"):
            name = "multi_worker"
        elif _tpu_resolver() is not None:
            name = "tpu"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not _tf_config().get("cluster"):
            raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                             "(cluster and task); see the README's distributed training section.")
        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = _tpu_resolver()
    if resolver is None:
        raise ValueError("strategy 'tpu' found no TPU (TPUClusterResolver failed).")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _tpu_resolver():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        resolver.master()
        return resolver
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None


def task():
    """`(task_type, task_index)` from `TF_CONFIG`, `("chief", 0)` without it."""
    config = _tf_config()
    if not config.get("cluster"):
        return "chief", 0
    current = config.get("task", {})
    return current.get("type", "worker"), int(current.get("index", 0))


def is_chief():
    """Whether this process writes the checkpoints and exports.

    The `chief` task if the cluster has one, else worker 0.
    """
    task_type, index = task()
    has_chief = "chief" in _tf_config().get("cluster", {})
    return task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)


def worker_directory(directory):
    """`directory` for the chief, `directory/worker_<i>` for the others."""
    if is_chief():
        return directory
    task_type, index = task()
    return os.path.join(directory, f"{task_type}_{index}")


def patch_keras_for_multi_worker():
    """Works around Keras 3's `fit` under `MultiWorkerMirroredStrategy`.

    Keras 3 (up to at least 3.15) fails there in two places
    (keras-team/keras#20585): before the first step it averages a data batch
    across workers to build the model symbolically (which cannot convert the
    per-replica integer batch), and after each step it averages the scalar
    logs with `axis=0` (invalid for scalars). This replaces the first with a
    build from this worker's own first batch, and the second with a mean over
    replicas (`axis=None`) for scalars. Single-worker strategies are left
    alone. Idempotent; `make_strategy("multi_worker")` calls it.
    """
    from keras_transformer._keras_compat import tensorflow_trainer

    tf_trainer = tensorflow_trainer()

    if getattr(tf_trainer, "_keras_transformer_multi_worker_patch", False):
        return
    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce_scalars_too(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return reduce_per_replica(values, strategy, reduction)

        def reduce(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return reduce_per_replica(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def build_from_local_batch(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not multi_worker(strategy):
            return symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:  # as Keras does: peek at the first batch
            batch = next(batches)
            break
        local = tf.nest.map_structure(
            lambda x: strategy.experimental_local_results(x)[0]
            if isinstance(x, tf.distribute.DistributedValues) else x,
            batch,
        )
        with strategy.scope():
            self._symbolic_build(data_batch=local)

    tf_trainer.reduce_per_replica = reduce_scalars_too
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    tf_trainer._keras_transformer_multi_worker_patch = True
