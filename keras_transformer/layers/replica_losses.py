"""Per-replica storage for `add_loss`, so that losses survive `MirroredStrategy`.

Keras 3 keeps the losses a layer adds with `add_loss` in one Python list per
layer (`Layer._losses`). Under `tf.distribute.MirroredStrategy` the replicas
trace the same layer objects, each in its own thread, taking turns: replica 1's
forward pass clears the list (Keras clears it at the start of every outermost
call) and appends its own loss while replica 0 is still between its forward
pass and its `compute_loss`. So every replica reads the *last* replica's loss:
`fit` reports and minimizes the loss of one shard of the batch, not the mean
over shards (measured with MoE's load-balancing loss, 2 replicas:
`CE + aux(second half)` instead of `CE + mean(aux(halves))`; see
`tests/test_distribute.py`). The call context Keras uses to decide when to
clear is already thread-local; the list is not.

`ReplicaLocalLosses` keeps the list per thread, so each replica reads back
exactly the losses its own forward pass added, and Keras's trainer then scales
each by `1 / num_replicas_in_sync` as it does for every `add_loss` loss. Without
a strategy there is one thread and nothing changes.
"""

import threading


class _ThreadLocalList(threading.local):
    def __init__(self):
        self.items = []


class ReplicaLocalLosses:
    """Mixin for a `keras.layers.Layer` that calls `add_loss` in `call`.

    Put it before `keras.layers.Layer` in the bases:

    ```python
    class MyLayer(ReplicaLocalLosses, keras.layers.Layer):
        def call(self, x):
            self.add_loss(ops.mean(x**2))
            return x
    ```

    Only the layer's own `add_loss` storage changes (the private
    `Layer._losses` list Keras 3 reads and writes through `add_loss`,
    `losses` and its per-call reset); `layer.losses`, `model.losses` and
    `fit` work as before, each thread seeing the losses it added.
    """

    @property
    def _losses(self):
        storage = vars(self).get("_replica_local_losses")
        if storage is None:
            storage = _ThreadLocalList()
            # Not through Layer.__setattr__: this is bookkeeping, not state
            # for Keras to track or save.
            object.__setattr__(self, "_replica_local_losses", storage)
        return storage.items

    @_losses.setter
    def _losses(self, value):
        self._losses[:] = list(value)
