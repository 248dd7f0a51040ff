"""The input pipeline of the Trainer: batch k+1 is drawn and put on the device while step k runs.

Deterministic: batches come in the stream's order whatever the threads do, and the data state a
checkpoint saves is the stream's state after the last consumed batch, so a resumed run draws
exactly the batches an uninterrupted one would.
"""

import queue
import threading


class InputPipeline:
  """A task's batches, put on the device ahead of the step that consumes them; deterministic.

  Without feedback a background thread draws, splits and places up to `depth` batches ahead
  while the device runs; with feedback (Task.feedback) each batch is drawn when asked for, which
  the Trainer does after dispatching the previous step and observing the one before. Either way
  the batches come in the stream's order and `data_state()` is the stream's state after the last
  consumed batch (plus the feedback observed since): what a checkpoint saves.

  Args:
    batches: the task's Batches, already at the resumed position.
    put: host batch (the keys below) -> device batch.
    keys: Task.batch_keys.
    limit: the number of batches to draw (None: until closed).
    background: draw ahead on a thread (no feedback).
    depth: batches drawn ahead, at most.
  """

  def __init__(self, batches, put, keys, limit=None, *, background=True, depth=2):
    self._batches, self._put, self._keys = batches, put, tuple(keys)
    self._limit, self._drawn, self._consumed = limit, 0, 0
    self._state, self._error, self._thread = batches.get_state(), None, None
    if background:
      self._queue, self._stop = queue.Queue(maxsize=depth), threading.Event()
      self._thread = threading.Thread(target=self._produce, name="swa-input", daemon=True)
      self._thread.start()

  def _draw(self):
    host = next(self._batches)
    self._drawn += 1
    return host, self._put({k: host[k] for k in self._keys}), self._batches.get_state()

  def _produce(self):
    while not self._stop.is_set() and (self._limit is None or self._drawn < self._limit):
      try:
        item = self._draw()
      except BaseException as error:  # pylint: disable=broad-except  # raised by the consumer
        item = error
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, BaseException):
        return

  def __iter__(self):
    return self

  def __next__(self):
    """(host batch, device batch) of the next step; an error of the stream is raised here."""
    if self._limit is not None and self._consumed >= self._limit:
      raise ValueError(f"The input pipeline was asked for more than its {self._limit} batches.")
    if self._error is not None:  # The stream failed: it has nothing more to give.
      raise self._error
    item = self._draw() if self._thread is None else self._queue.get()
    if isinstance(item, BaseException):
      self._error = item
      raise item
    host, device, state = item
    self._consumed += 1
    if self._thread is not None:
      self._state = state
    return host, device

  def data_state(self):
    """The stream's state after the last consumed batch (and the feedback observed since)."""
    return self._batches.get_state() if self._thread is None else self._state

  def close(self):
    """Stops the background thread (safe to call twice)."""
    if self._thread is not None:
      self._stop.set()
      while self._thread.is_alive():
        try:  # Unblock a producer waiting for room.
          self._queue.get(timeout=0.1)
        except queue.Empty:
          pass
      self._thread.join()
