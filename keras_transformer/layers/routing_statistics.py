"""Routing statistics of a mixture-of-experts layer, as a Keras metric."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class RoutingStatistics(keras.metrics.Metric):
    """Per-expert load and dropped tokens of one `MoE` layer.

    The `MoE` layer owns one and updates it on every call, so `fit` and
    `evaluate` report (per epoch, reset with the other metrics):

    - `<name>_dropped`: the fraction of the real tokens' expert assignments
      that went over an expert's capacity and were dropped;
    - `<name>_max_load`: the busiest expert's load over the mean load
      (1.0 = perfectly balanced, `num_experts` = one expert does everything).

    `expert_load()` gives the whole per-expert distribution afterwards.

    Args:
        num_experts: int, number of experts.
        name: str, prefix of the reported values.
    """

    def __init__(self, num_experts, name="routing", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_experts = num_experts
        self.assigned = self.add_variable(
            shape=(num_experts,), initializer="zeros", name="assigned"
        )
        self.kept = self.add_variable(shape=(num_experts,), initializer="zeros", name="kept")

    def update_state(self, assigned, kept):
        """Adds per-expert counts of assigned and of kept (processed) tokens."""
        self.assigned.assign_add(ops.cast(assigned, self.dtype))
        self.kept.assign_add(ops.cast(kept, self.dtype))

    def expert_load(self):
        """Fraction of the processed tokens that each expert processed, `(E,)`."""
        return self.kept / ops.maximum(ops.sum(self.kept), 1.0)

    def result(self):
        total_assigned = ops.maximum(ops.sum(self.assigned), 1.0)
        dropped = 1.0 - ops.sum(self.kept) / total_assigned
        max_load = ops.max(self.kept) / ops.maximum(ops.mean(self.kept), 1e-9)
        return {f"{self.name}_dropped": dropped, f"{self.name}_max_load": max_load}

    def reset_state(self):
        self.assigned.assign(ops.zeros(self.assigned.shape, dtype=self.assigned.dtype))
        self.kept.assign(ops.zeros(self.kept.shape, dtype=self.kept.dtype))

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts}
