"""Server-side batching: concurrent requests run through the model together.

Like TF Serving's batching (`max_batch_size`, `batch_timeout_micros`, a
bounded queue, `allowed_batch_sizes`): requests wait in one queue; a worker
thread takes the oldest, adds the requests queued behind it that go to the
same signature with the same input shape, up to `max_batch_size` instances
or until `batch_timeout_micros` have passed since it took the first, runs
them as one call of the model, and hands each request its own rows back.

Batches are padded up to the next allowed size (powers of two up to
`max_batch_size` by default, with copies of the batch's first row), so that an XLA-compiled model compiles a handful of shapes, not
one per batch size. A request larger than `max_batch_size` runs alone. When a
batch fails on its input (`tf.errors.InvalidArgumentError`, such as an id
over the vocabulary), each of its requests is run again alone, so only the
culprit gets the error. A full queue refuses new work at once with
`QueueFull` (the server answers 503 with `Retry-After`) instead of letting
clients time out.
"""

import threading
import time

import numpy as np
import tensorflow as tf


class QueueFull(Exception):
    """The batching queue holds `max_queued_instances` already."""


class _Task:
    def __init__(self, key, values, callback=None):
        self.key, self.values = key, values
        # A waiting caller blocks on `done`; an asynchronous one gets `callback`.
        self.done = threading.Event() if callback is None else None
        self.result = self.error = None
        self.callback = callback

    def finish(self, result=None, error=None):
        self.result, self.error = result, error
        if self.callback is None:
            self.done.set()
        else:
            self.callback(result, error)


def default_batch_sizes(max_batch_size):
    """1, 2, 4, ... up to `max_batch_size` (which is always included)."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch_size]


def _pad_rows(values, count):
    """`values` (a list of strings or an array `(n, ...)`) plus `count` copies of
    its first row: padding that is a valid input wherever the first row is."""
    if isinstance(values, list):
        return values + values[:1] * count
    return np.concatenate([values, np.repeat(values[:1], count, axis=0)])


class Batcher:
    """Runs `run(key, values) → {name: array (n, ...)}` over batched requests.

    Args:
        run: the model call: `key` (which signature) and `values` (a list of
            strings, or an integer array whose first axis is the batch) →
            a dict of arrays whose first axis is the batch.
        max_batch_size: the most instances run together.
        batch_timeout_micros: how long the first request of a batch waits
            for others to join it.
        max_queued_instances: instances waiting at most; beyond, `submit`
            raises `QueueFull`.
        allowed_batch_sizes: batch sizes the model is run at (padded up);
            None for powers of two up to `max_batch_size`.
        num_batch_threads: batches run at once, each by its own worker
            thread (TF Serving's `num_batch_threads`). With TensorFlow's
            intra-op threads set to 1, N threads keep N cores busy with N
            batches: for small models that beats N threads sharing one
            batch's operations.
    """

    def __init__(self, run, *, max_batch_size=64, batch_timeout_micros=2000,
                 max_queued_instances=1024, allowed_batch_sizes=None, num_batch_threads=1):
        if num_batch_threads < 1:
            raise ValueError(f"`num_batch_threads` must be >= 1. Received: {num_batch_threads}")
        if max_batch_size < 1 or max_queued_instances < 1 or batch_timeout_micros < 0:
            raise ValueError(
                "`max_batch_size` and `max_queued_instances` must be >= 1 and "
                f"`batch_timeout_micros` >= 0. Received: max_batch_size={max_batch_size}, "
                f"max_queued_instances={max_queued_instances}, "
                f"batch_timeout_micros={batch_timeout_micros}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout_micros / 1e6
        self.max_queued_instances = max_queued_instances
        self.allowed_batch_sizes = sorted(allowed_batch_sizes
                                          or default_batch_sizes(max_batch_size))
        self._queue = []
        self._queued_instances = 0
        self._condition = threading.Condition()
        self._forming = threading.Lock()
        self._stopped = False
        self.calls = 0  # model calls made (for tests and the benchmark)
        self._workers = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
                         for i in range(num_batch_threads)]
        for worker in self._workers:
            worker.start()

    def submit(self, key, values):
        """Queues one request and blocks until its rows come back.

        Raises:
            QueueFull: the queue is full (nothing was queued).
            Exception: whatever the model call raised for this request.
        """
        task = self.submit_nowait(key, values)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def submit_nowait(self, key, values, callback=None):
        """Queues one request and returns at once; `callback(result, error)`
        is called from a worker thread when its rows come back (an
        asynchronous server resolves a future with it).

        Raises:
            QueueFull: the queue is full (nothing was queued).
        """
        task = _Task(key, values, callback)
        with self._condition:
            if self._stopped:
                raise QueueFull("The server is shutting down.")
            if self._queued_instances + len(values) > self.max_queued_instances and self._queue:
                raise QueueFull(f"{self._queued_instances} instances are queued already (the "
                                f"limit is {self.max_queued_instances}).")
            self._queue.append(task)
            self._queued_instances += len(values)
            self._condition.notify_all()
        return task

    def stop(self):
        """Finishes what is queued, then ends the workers."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join()

    def _take_batch(self):
        """The oldest task and those queued behind it with its key, up to the limits."""
        with self._condition:
            while not self._queue and not self._stopped:
                self._condition.wait()
            if not self._queue:
                return None
            first = self._queue[0]
            deadline = time.monotonic() + self.batch_timeout
            while True:
                batch, size = [], 0
                for task in self._queue:
                    if task.key == first.key and (not batch or size + len(task.values)
                                                  <= self.max_batch_size):
                        batch.append(task)
                        size += len(task.values)
                remaining = deadline - time.monotonic()
                if size >= self.max_batch_size or remaining <= 0 or self._stopped:
                    break
                self._condition.wait(remaining)
            for task in batch:
                self._queue.remove(task)
            self._queued_instances -= size
            return batch

    def _loop(self):
        while True:
            with self._forming:  # one worker forms a batch at a time; the others run theirs
                batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except tf.errors.InvalidArgumentError as error:  # one bad input: find it
                if len(batch) == 1:
                    batch[0].finish(error=error)
                    continue
                for task in batch:
                    try:
                        self._run_batch([task])
                    except Exception as error:  # noqa: BLE001 (handed to the request)
                        task.finish(error=error)
            except Exception as error:  # noqa: BLE001 (handed to the requests)
                for task in batch:
                    task.finish(error=error)

    def _run_batch(self, batch):
        values = [task.values for task in batch]
        if isinstance(values[0], list):
            joined = [value for rows in values for value in rows]
        else:
            joined = np.concatenate(values)
        count = len(joined)
        target = next((size for size in self.allowed_batch_sizes if size >= count), count)
        outputs = self._run(batch[0].key, _pad_rows(joined, target - count))
        with self._condition:
            self.calls += 1
        start = 0
        for task in batch:
            end = start + len(task.values)
            task.finish({name: array[start:end] for name, array in outputs.items()})
            start = end
