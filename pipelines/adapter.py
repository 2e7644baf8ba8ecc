"""The one place that turns a list of `Stage`s into a Ray Data plan.

Stateless stages run as Ray tasks; stateful stages (models) as actor pools whose constructor calls
`setup()` once. Resources come from each stage's declaration, so a GPU stage lands on GPU workers of a
cluster and the CPU decode stages spread over every core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from videopoet.pipelines.base import Stage

if TYPE_CHECKING:
    import ray.data


def _actor_class(stage: Stage) -> type:
    """A uniquely named callable class so Ray Data's progress bars show the stage name."""

    def __init__(self):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch):
        return self.stage(batch)

    return type(f"{type(stage).__name__}Actor", (), {"__init__": __init__, "__call__": __call__})


def _task_fn(stage: Stage):
    state = {"ready": False}

    def fn(batch):
        if not state["ready"]:  # a task worker may run many batches; set up once per process
            stage.setup()
            state["ready"] = True
        return stage(batch)

    fn.__name__ = type(stage).__name__
    return fn


def apply_stages(ds: ray.data.Dataset, stages: list[Stage]) -> ray.data.Dataset:
    """Append each stage to `ds` as a `map_batches` with its declared resources."""
    for stage in stages:
        res = stage.resources
        fmt = stage.batch_format
        # pyarrow batches are read-only views of the object store (what such stages want); pandas ones copies
        kwargs = dict(
            batch_format=fmt, batch_size=stage.batch_size, num_cpus=res.cpus, zero_copy_batch=fmt == "pyarrow"
        )
        if res.gpus:
            kwargs["num_gpus"] = res.gpus
        if res.memory_mb:
            kwargs["memory"] = res.memory_mb * 1024 * 1024
        if stage.stateful or res.gpus:
            pool = _actor_pool(stage.concurrency, res, stage.calls_in_flight, stage.concurrent_calls)
            ds = ds.map_batches(_actor_class(stage), compute=pool, **kwargs)
        else:
            ds = ds.map_batches(_task_fn(stage), **kwargs)
    return ds


def _actor_pool(
    concurrency: int | tuple[int, int] | None, res, calls_in_flight: int = 1, concurrent_calls: int = 1
):
    """A fixed pool of `concurrency` actors, or an autoscaling (min, max) one (default: 1 up to what fits);
    each actor batching up to `calls_in_flight` calls at once around one running UDF call, or running up to
    `concurrent_calls` UDF calls at once on as many threads."""
    from ray.data import ActorPoolStrategy

    calls = {}
    if concurrent_calls > 1:
        calls = {"max_concurrent_calls_per_actor": concurrent_calls, "enable_true_multi_threading": True}
    elif calls_in_flight > 1:
        calls = {"max_concurrent_calls_per_actor": calls_in_flight}
    if isinstance(concurrency, int):
        return ActorPoolStrategy(size=concurrency, **calls)
    lo, hi = concurrency or (1, _max_actors(res))
    return ActorPoolStrategy(min_size=lo, max_size=hi, **calls)


def _max_actors(res) -> int:
    import ray

    total = ray.cluster_resources()
    if res.gpus:
        return max(1, int(total.get("GPU", 0) // res.gpus))
    return max(1, int(total.get("CPU", 1) // max(res.cpus, 1e-3)))
