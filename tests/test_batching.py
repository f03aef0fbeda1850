"""The batching queue on a fake model: rows go back to their requests, bad inputs
fail alone, a full queue refuses at once, batches take the allowed sizes."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.export.batching import Batcher, QueueFull, default_batch_sizes


class FakeModel:
    """Upper-cases strings (or doubles ids), records each batch, can be held."""

    def __init__(self, delay=0.0):
        self.batches, self.delay = [], delay
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # a call has started

    def __call__(self, key, values):
        self.entered.set()
        self.release.wait()
        time.sleep(self.delay)
        self.batches.append(len(values))
        if isinstance(values, list):
            if "bad" in values:
                raise tf.errors.InvalidArgumentError(None, None, "ids must be < 10")
            return {"text": np.array([v.upper() for v in values], object),
                    "length": np.array([len(v) for v in values])}
        return {"doubled": values * 2}


def run_concurrently(batcher, requests):
    results, errors = [None] * len(requests), [None] * len(requests)
    start = threading.Barrier(len(requests))

    def client(i):
        start.wait()
        try:
            results[i] = batcher.submit(*requests[i])
        except Exception as error:  # noqa: BLE001
            errors[i] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = FakeModel(delay=0.01)
    batcher = Batcher(model, max_batch_size=16, batch_timeout_micros=50_000)
    requests = [(("serving_default", "text", ()), [f"sentence {i}", f"other {i}"])
                for i in range(40)]
    results, errors = run_concurrently(batcher, requests)
    assert errors == [None] * 40
    for (_, values), result in zip(requests, results):
        assert list(result["text"]) == [v.upper() for v in values]
        assert list(result["length"]) == [len(v) for v in values]
    assert batcher.calls < 40 / 2  # 80 instances in batches of up to 16
    assert set(model.batches) <= set(default_batch_sizes(16))
    batcher.stop()


def test_id_requests_batch_by_shape():
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=8, batch_timeout_micros=20_000)
    requests = [(("translate_ids", "source_ids", (3 + i % 2,)),
                 np.full((1, 3 + i % 2), i, np.int32)) for i in range(12)]
    results, errors = run_concurrently(batcher, requests)
    assert errors == [None] * 12
    for (_, values), result in zip(requests, results):
        np.testing.assert_array_equal(result["doubled"], values * 2)
    batcher.stop()


def test_a_bad_input_fails_only_its_own_request():
    batcher = Batcher(FakeModel(delay=0.01), max_batch_size=8, batch_timeout_micros=50_000)
    requests = [(("serving_default", "text", ()), ["bad" if i == 3 else f"good {i}"])
                for i in range(8)]
    results, errors = run_concurrently(batcher, requests)
    assert isinstance(errors[3], tf.errors.InvalidArgumentError) and results[3] is None
    assert [r["text"][0] for i, r in enumerate(results) if i != 3] == [
        f"GOOD {i}" for i in range(8) if i != 3]
    batcher.stop()


def test_a_full_queue_refuses_at_once_and_the_rest_is_answered():
    model = FakeModel()
    model.release.clear()  # the model is busy
    batcher = Batcher(model, max_batch_size=2, batch_timeout_micros=0, max_queued_instances=3)
    key = ("serving_default", "text", ())
    waiting = [threading.Thread(target=batcher.submit, args=(key, [f"x{i}"])) for i in range(5)]
    try:
        waiting[0].start()  # taken by the worker, which the model then holds
        assert model.entered.wait(timeout=10)
        for thread in waiting[1:4]:  # 3 queued: the limit
            thread.start()
        deadline = time.monotonic() + 10
        while batcher._queued_instances < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher._queued_instances == 3
        started = time.monotonic()
        with pytest.raises(QueueFull, match="limit is 3"):
            batcher.submit(key, ["one too many"])
        assert time.monotonic() - started < 1.0
    finally:
        model.release.set()  # never leave the test waiting on a held model
    waiting[4].start()
    for thread in waiting:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in waiting)
    batcher.stop()


def test_bad_settings_say_what_was_received():
    with pytest.raises(ValueError, match="max_batch_size=0"):
        Batcher(FakeModel(), max_batch_size=0)


def test_batch_threads_run_batches_at_once_and_rows_go_back_to_their_requests():
    class Concurrent(FakeModel):
        """Counts the calls in flight at once."""

        def __init__(self):
            super().__init__(delay=0.2)
            self.lock, self.running, self.most = threading.Lock(), 0, 0

        def __call__(self, key, values):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return super().__call__(key, values)
            finally:
                with self.lock:
                    self.running -= 1

    model = Concurrent()
    batcher = Batcher(model, max_batch_size=2, batch_timeout_micros=0, num_batch_threads=2)
    requests = [("k", [f"s{i}"]) for i in range(8)]
    results, errors = run_concurrently(batcher, requests)
    batcher.stop()
    assert errors == [None] * 8
    assert [list(r["text"]) for r in results] == [[f"S{i}"] for i in range(8)]
    assert model.most == 2  # two batches in flight at once, never more
    with pytest.raises(ValueError, match="num_batch_threads"):
        Batcher(model, num_batch_threads=0)
