"""The only module that talks to Ray's runtime: init (embedded local by default, or a cluster), pools.

No address and no RAY_ADDRESS -> an embedded local Ray sized to this machine. `--ray-address`/RAY_ADDRESS
-> that cluster; under `ray job submit` RAY_ADDRESS is set for the driver, so stages run there unchanged.
"""

from __future__ import annotations

import os

_started_here = False
_embedded = False


def init(address: str | None = None, *, num_cpus: int | None = None):
    """Connect to (or start) Ray once per process; returns the `ray` module."""
    global _started_here, _embedded
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            runtime_env=env,
            log_to_driver=True,
            configure_logging=False,
        )
    _started_here, _embedded = True, not address
    return ray


def describe() -> dict:
    """Where this process's Ray runs, for run manifests."""
    import ray

    if not ray.is_initialized():
        return {}
    return {
        "gcs_address": ray.get_runtime_context().gcs_address,
        "embedded": _embedded,
        "nodes": len(ray.nodes()),
        "cpus": ray.cluster_resources().get("CPU", 0),
    }


def shutdown() -> None:
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


_embedded = False


def available_cpus() -> int:
    import ray

    return int(ray.available_resources().get("CPU", 1))


def map_actors(
    actor_cls,
    items: list,
    *,
    num_actors: int,
    actor_args: tuple = (),
    method: str = "run",
    num_cpus: float = 1,
    num_gpus: float = 0,
    progress: str | None = None,
) -> list:
    """Run `actor.method(item)` for every item on a pool of `num_actors` actors; results in item order.
    A failing item raises its worker's error here, after the pool is torn down."""
    from ray.util import ActorPool
    from tqdm import tqdm

    actors = start_actors(
        actor_cls, num_actors=num_actors, actor_args=actor_args, num_cpus=num_cpus, num_gpus=num_gpus
    )
    try:
        pool = ActorPool(actors)
        results = pool.map(lambda a, item: getattr(a, method).remote(item), items)
        return list(tqdm(results, total=len(items), desc=progress, disable=progress is None))
    finally:
        kill(actors)


def run_tasks(
    fn,
    items: list,
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    names: list[str] | None = None,
    progress: str | None = None,
    retries: int = 0,
) -> list:
    """Run `fn(item)` as one Ray task per item, each with its own resources (as many at once as the cluster
    fits); results in item order. A task that fails (an exception other than UserError, which bad input would
    only raise again, or its worker dying) is submitted again, up to `retries` times; `fn` should then pick up
    from its own checkpoints. Every task runs to its end (so finished ones keep their outputs), then the first
    failure in item order is raised: a UserError as a UserError naming the task, any other exception as
    itself with a note naming the task."""
    import ray
    from tqdm import tqdm

    from posttrain.errors import UserError

    names = names or [f"task {i}" for i in range(len(items))]
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
    index = {remote.remote(item): i for i, item in enumerate(items)}
    attempts = [1] * len(items)
    results, errors = [None] * len(items), {}
    pending = list(index)
    with tqdm(total=len(items), desc=progress, disable=progress is None) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index.pop(done[0])
            try:
                results[i] = ray.get(done[0])
                bar.update(1)
                continue
            except ray.exceptions.RayTaskError as e:
                err = e.cause if e.cause is not None else e
            except ray.exceptions.RayError as e:  # worker died (OOM kill, node lost): no Python cause
                err = e
            if attempts[i] <= retries and not isinstance(err, UserError):
                reason = (str(err).strip().splitlines() or [""])[0]
                print(
                    f"[posttrain] {names[i]} failed ({type(err).__name__}: {reason}); retrying "
                    f"({attempts[i]} of {retries})",
                    flush=True,
                )
                attempts[i] += 1
                ref = remote.remote(items[i])
                index[ref] = i
                pending.append(ref)
                continue
            errors[i] = err
            bar.update(1)
    if errors:
        _raise_first(errors, names, attempts, len(items))
    return results


def _raise_first(errors: dict, names: list[str], attempts: list[int], n: int) -> None:
    """The first failed task's error (in item order): a UserError naming the task, or the error with a note."""
    from posttrain.errors import UserError

    i = min(errors)
    err = errors[i]
    if isinstance(err, UserError):
        raise UserError(f"{names[i]}: {err}") from None
    tries = f" after {attempts[i]} attempts" if attempts[i] > 1 else ""
    err.add_note(f"(raised in Ray task {names[i]}{tries}; {len(errors)} of {n} tasks failed)")
    raise err


def start_actors(
    actor_cls, *, num_actors: int, actor_args: tuple = (), num_cpus: float = 1, num_gpus: float = 0
) -> list:
    """`num_actors` live actors of `actor_cls` (a plain class), for callers that keep state across calls."""
    import ray

    remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(actor_cls)
    return [remote_cls.remote(*actor_args) for _ in range(max(1, num_actors))]


def put(obj):
    """One copy of `obj` in the object store, for sending the same large value to many actors."""
    import ray

    return ray.put(obj)


def as_completed(actors: list, method: str, items: list):
    """Spread `actor.method(item)` over the actors (item i on actor i mod len(actors)) and yield
    (i, result) as each finishes; an actor's error is raised here."""
    import ray

    refs = {getattr(actors[i % len(actors)], method).remote(item): i for i, item in enumerate(items)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield refs[done[0]], ray.get(done[0])


def submit(actors: list, method: str, items: list) -> list:
    """`actor.method(item)` for every item (item i on actor i mod len(actors)), without waiting: the refs."""
    return [getattr(actors[i % len(actors)], method).remote(item) for i, item in enumerate(items)]


def gather(refs: list) -> list:
    """The results of `submit`'s calls, in order (an actor's error is raised here)."""
    import ray

    return ray.get(refs)


def kill(actors: list) -> None:
    import ray

    for a in actors:
        ray.kill(a)
