"""The resumable stream of passkey training batches, and its curricula over distance.

`PasskeyBatches` yields swa/data.py's `passkey_batch` dicts (plus the batch's curriculum top): step s is a pure function of
(seed, s) for the linear curriculum, of (seed, s, top) for the adaptive one, and `get_state()` /
`set_state()` carry its position (and the adaptive state) through a checkpoint.
"""

from typing import Optional

import numpy as np

from swa import data


def curriculum_max_distance(
  step: int, total_steps: int, start: int, end: int, warmup_fraction: float
) -> int:
  """Largest training distance at `step`: linear from start to end over warmup, then end.

  Args:
    step: training step, >= 0.
    total_steps: length of the run, >= 1.
    start, end: distances at step 0 and after warmup, start <= end.
    warmup_fraction: share of total_steps spent growing, in [0, 1]; 0 means end from step 0.

  Returns:
    floor(start + (end - start) * min(1, step / (warmup_fraction * total_steps))), which never
    decreases with step.
  """
  if step < 0 or total_steps < 1:
    raise ValueError(
      f"step={step}, total_steps={total_steps} are not allowed; "
      f"need step >= 0 and total_steps >= 1."
    )
  if start > end:
    raise ValueError(f"start={start} is above end={end}; the curriculum only grows.")
  if not 0.0 <= warmup_fraction <= 1.0:
    raise ValueError(f"warmup_fraction={warmup_fraction} is not allowed; it must be in [0, 1].")
  warmup_steps = warmup_fraction * total_steps
  progress = 1.0 if step >= warmup_steps else step / warmup_steps
  return int(start + (end - start) * progress)


class PasskeyBatches:
  """Infinite iterator of data.passkey_batch dicts, resumable from get_state().

  At each step an example's distance is uniform on data.MIN_DISTANCE..top, where `top` is the
  curriculum's current largest distance, except that a `uniform_fraction` share of examples
  (chosen at random) is uniform on the whole range up to max_distance, so long distances are seen
  from the start. Two curricula:

  - "linear": top = curriculum_max_distance(step, ...), growing from curriculum_start to
    max_distance over the first curriculum_fraction of total_steps. The batch at step s is a pure
    function of (seed, s).
  - "adaptive": top starts at curriculum_start and grows by `stage` tokens (capped at max_distance)
    each time the model gets `target` exact match on the newest stage, the distances in
    (top - stage, top]; the trainer reports results with `observe`. Decisions are taken every
    `stage_examples` examples of that stage; until the model solves it, top stays. The batch at step
    s is a pure function of (seed, s, top).

  Args:
    seq_len: T, model context length (inputs are [batch_size, T]).
    batch_size: B.
    seed: non-negative int; step s is drawn from np.random.default_rng([seed, s]).
    total_steps: run length, only used to time the linear curriculum; iteration does not stop there.
    curriculum_start: largest distance at step 0, >= data.MIN_DISTANCE.
    curriculum_fraction: linear: share of total_steps over which top grows to max_distance.
    max_distance: final largest distance; None means the largest the prompt allows.
    uniform_fraction: share of examples drawn uniformly up to max_distance whatever the step.
    curriculum: "linear" or "adaptive".
    stage: adaptive: tokens added to top per advance; None = (max_distance - curriculum_start) / 16,
      rounded up.
    target: adaptive: exact match on the newest stage needed to advance, in [0, 1] (0: advance
      after every stage_examples examples of the newest stage, whatever the results).
    stage_examples: adaptive: examples of the newest stage scored per decision, >= 1.
  """

  def __init__(
    self,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    total_steps: int,
    curriculum_start: int = data.MIN_DISTANCE,
    curriculum_fraction: float = 0.7,
    max_distance: Optional[int] = None,
    uniform_fraction: float = 0.0,
    curriculum: str = "linear",
    stage: Optional[int] = None,
    target: float = 0.9,
    stage_examples: int = 256,
  ):
    data.check_context_len(seq_len)
    limit = data.context_max_distance(seq_len)
    max_distance = limit if max_distance is None else max_distance
    if not data.MIN_DISTANCE <= max_distance <= limit:
      raise ValueError(
        f"max_distance={max_distance} is impossible for seq_len={seq_len}; "
        f"allowed are {data.MIN_DISTANCE}..{limit}."
      )
    if not data.MIN_DISTANCE <= curriculum_start <= max_distance:
      raise ValueError(
        f"curriculum_start={curriculum_start} is not allowed; it must be in "
        f"{data.MIN_DISTANCE}..{max_distance} (MIN_DISTANCE..max_distance)."
      )
    for name, value in [
      ("curriculum_fraction", curriculum_fraction),
      ("uniform_fraction", uniform_fraction),
    ]:
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} is not allowed; it must be in [0, 1].")
    if seed < 0 or batch_size < 1 or total_steps < 1:
      raise ValueError(
        f"seed={seed}, batch_size={batch_size}, total_steps={total_steps} are "
        f"not allowed; need seed >= 0, batch_size >= 1 and total_steps >= 1."
      )
    if curriculum not in ("linear", "adaptive"):
      raise ValueError(f"curriculum={curriculum!r} is not allowed; use 'linear' or 'adaptive'.")
    if stage is None:
      stage = max(1, -(-(max_distance - curriculum_start) // 16))
    if stage < 1 or not 0.0 <= target <= 1.0 or stage_examples < 1:
      raise ValueError(
        f"stage={stage}, target={target}, stage_examples={stage_examples} are not "
        f"allowed; need stage >= 1, 0 <= target <= 1 and stage_examples >= 1."
      )
    self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
    self.total_steps = total_steps
    self.curriculum_start, self.curriculum_fraction = curriculum_start, curriculum_fraction
    self.max_distance, self.uniform_fraction = max_distance, uniform_fraction
    self.curriculum, self.stage, self.target = curriculum, stage, target
    self.stage_examples = stage_examples
    self.step = 0
    self.top, self._hits, self._seen = curriculum_start, 0, 0  # adaptive state

  def top_at(self, step: int) -> int:
    """The curriculum's largest distance for the batch at `step` (adaptive: the current one)."""
    if self.curriculum == "adaptive":
      return self.top
    return curriculum_max_distance(
      step, self.total_steps, self.curriculum_start, self.max_distance, self.curriculum_fraction
    )

  def batch_at(self, step: int, top: Optional[int] = None) -> dict:
    """The batch for `step` with largest distance `top` (default top_at(step)); a pure function
    of (seed, step, top) that does not move the iterator.

    Returns:
      data.passkey_batch's dict plus "curriculum_top" (int32 scalar: the `top` it was drawn with).
    """
    rng = np.random.default_rng([self.seed, step])
    top = self.top_at(step) if top is None else top
    # Draw both candidates for every example so the random stream does not depend on the mix.
    curriculum = rng.integers(data.MIN_DISTANCE, top + 1, size=self.batch_size)
    uniform = rng.integers(data.MIN_DISTANCE, self.max_distance + 1, size=self.batch_size)
    use_uniform = rng.random(self.batch_size) < self.uniform_fraction
    distances = np.where(use_uniform, uniform, curriculum)
    batch = data.passkey_batch(rng, self.batch_size, self.seq_len, distances)
    batch["curriculum_top"] = np.int32(top)  # logged by the passkey task (swa/tasks/passkey.py)
    return batch

  def observe(self, distances, correct) -> None:
    """Reports which examples the model got right; moves the adaptive curriculum (linear: no-op).

    Args:
      distances: int [B] distances of a batch drawn from this iterator.
      correct: bool [B] exact match of each example.
    """
    if self.curriculum != "adaptive":
      return
    distances, correct = np.asarray(distances), np.asarray(correct)
    newest = (distances > self.top - self.stage) & (distances <= self.top)
    self._hits += int(np.sum(correct[newest]))
    self._seen += int(np.sum(newest))
    if self._seen >= self.stage_examples:
      if self._hits >= self.target * self._seen:
        self.top = min(self.top + self.stage, self.max_distance)
      self._hits, self._seen = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    """Everything needed to resume: the step of the next batch (and the adaptive state)."""
    if self.curriculum == "adaptive":
      return {"step": self.step, "top": self.top, "hits": self._hits, "seen": self._seen}
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    """Resumes so that the next batch is the one for state["step"]."""
    if int(state["step"]) < 0:
      raise ValueError(f"step={state['step']} is not allowed; it must be >= 0.")
    self.step = int(state["step"])
    if self.curriculum == "adaptive":
      if "top" not in state:
        raise ValueError(
          "The saved data state has no adaptive curriculum (it was written "
          "by a linear-curriculum run); resume with data.curriculum='linear'."
        )
      self.top, self._hits, self._seen = int(state["top"]), int(state["hits"]), int(state["seen"])
