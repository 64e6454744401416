"""Run a paper table: expand it into runs, submit the missing ones, wait, render the table.

    python ablations/run.py --table downsample --cluster local --profile smoke
    python ablations/run.py --table downsample --cluster slurm --profile full --data-root ~/imagenet --dry-run
    python ablations/run.py --table all --cluster slurm --slurm-profile gpu --partition a100 --account vision
    python ablations/run.py --table downsample --cluster slurm --profile smoke --nodes 2 --tasks-per-node 1

Runs whose record is complete are not submitted again; a failed run is reported with its id, the last lines
of its error and the path of its executed notebook, and the exit code is 1. ``--dry-run`` prints the runs
and the executor parameters and submits nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from ablations import PAPER_TABLES
from ablations.clusters import (
    CLUSTERS,
    check_slurm,
    get_slurm_profile,
    local_parameters,
    slurm_parameters,
)
from ablations.released import released_runs
from ablations.render import index_entry, render_index, render_table
from ablations.runner import Outcome, RunnerInterrupted, execute, execute_pooled, failure_report, pending_runs
from ablations.spec import Run, TableSpec, available_tables, load_spec
from repnext.dense.protocol import TASKS as DENSE_TASKS
from repnext.dense.protocol import get_protocol
from repnext.errors import RepnextError
from repnext.profiles import PROFILES, get_profile
from repnext.store import DEFAULT_RESULTS

DEFAULT_SLURM_PROFILE = {"smoke": "local", "full": "gpu"}
MULTINODE_SLURM_PROFILE = {"smoke": "local-multi"}  # the default with --nodes > 1 (the local cluster's nodes)


class UsageError(RepnextError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablations/run.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--table", required=True,
                   help=f"one or more (comma-separated) of: {', '.join(available_tables())}; or all")
    p.add_argument("--cluster", default="local", help=f"one of: {', '.join(CLUSTERS)} (default: local)")
    p.add_argument("--profile", default="smoke",
                   help="; ".join(f"{name}: {prof.description}" for name, prof in PROFILES.items()))
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the results store (env REPNEXT_RESULTS)")
    p.add_argument("--data-root", help="dataset folder for the full profile (ImageNet train/ val/, CIFAR-100)")
    p.add_argument("--teacher-checkpoint", help="distillation teacher weights for the full profile")
    p.add_argument("--checkpoints", type=Path, help="the released table's full profile: folder of the release files")
    p.add_argument("--tables-dir", type=Path, default=PAPER_TABLES, help="where the rendered tables go")
    p.add_argument("--dry-run", action="store_true", help="print the runs and executor parameters; submit nothing")
    p.add_argument("--render-only", action="store_true",
                   help="render the tables from the results store as it is (e.g. imported logs); submit nothing")
    p.add_argument("--only", help="only runs whose model name or run id matches this glob")
    p.add_argument("--max-parallel", type=int, help="runs at once (default: local/debug 1 per CPU core, slurm all)")
    slurm = p.add_argument_group("slurm", "override the cluster profile (slurm/clusters.toml)")
    slurm.add_argument("--slurm-profile",
                       help="default: local for the smoke profile (local-multi with --nodes > 1), gpu for full")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--timeout-min", type=int)
    slurm.add_argument("--tasks-per-node", type=int, help="DDP processes per run and node (local cluster too)")
    slurm.add_argument("--nodes", type=int, help="nodes per run: one DDP job over nodes x tasks-per-node ranks")
    p.add_argument("--no-progress", action="store_true")
    return p


def check_writable(results: Path) -> None:
    try:
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"results directory {results} is not writable ({e.strerror}); "
                         "pass --results DIR or set REPNEXT_RESULTS") from None


def validate(args: argparse.Namespace) -> None:
    if args.cluster not in CLUSTERS:
        raise UsageError(f"unknown cluster {args.cluster!r}; expected one of: {', '.join(CLUSTERS)}")
    get_profile(args.profile)
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise UsageError(f"data root {args.data_root} does not exist or is not a directory")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    for flag in ("tasks_per_node", "nodes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if (args.nodes or 1) > 1 and args.cluster != "slurm":
        raise UsageError(f"--nodes {args.nodes} needs --cluster slurm (the {args.cluster} cluster is this machine)")
    if args.checkpoints is not None and not args.checkpoints.expanduser().is_dir():
        raise UsageError(f"--checkpoints {args.checkpoints} does not exist or is not a directory")


def default_slurm_profile(args: argparse.Namespace) -> str:
    if (args.nodes or 1) > 1 and args.profile in MULTINODE_SLURM_PROFILE:
        return MULTINODE_SLURM_PROFILE[args.profile]
    return DEFAULT_SLURM_PROFILE[args.profile]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
        names = available_tables() if args.table == "all" else args.table.split(",")
        specs = [load_spec(name) for name in names]
        if ("released" in names and args.checkpoints is None and not get_profile(args.profile).substitute_data
                and not args.render_only):
            raise UsageError("the released table's full profile evaluates the release files: pass --checkpoints DIR")
        slurm = None
        if args.cluster == "slurm":
            slurm = get_slurm_profile(args.slurm_profile or default_slurm_profile(args)).replace(
                partition=args.partition, account=args.account, qos=args.qos, timeout_min=args.timeout_min,
                tasks_per_node=args.tasks_per_node, nodes=args.nodes)
            slurm.check()
            if not (args.dry_run or args.render_only):
                check_slurm(slurm)
        results = args.results.expanduser().resolve()
        if not (args.dry_run or args.render_only):
            check_writable(results)
            if not get_profile(args.profile).substitute_data and args.data_root is None:
                raise UsageError(f"the {args.profile} profile trains on the paper's datasets: pass --data-root "
                                 "(ImageNet with train/ and val/, or the folder holding cifar-100-python/)")
    except RepnextError as e:  # UsageError, SpecError, ClusterError, ConfigError ...
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    location = {k: v for k, v in (("data_root", args.data_root), ("teacher_checkpoint", args.teacher_checkpoint))
                if v is not None}
    tasks_per_node = slurm.tasks_per_node if slurm else (args.tasks_per_node or 1)
    max_parallel = args.max_parallel or (len(os.sched_getaffinity(0)) if args.cluster != "slurm" else 256)
    if args.cluster == "debug":
        max_parallel = 1  # runs in this process, one after another
    pooled = args.cluster == "local" and tasks_per_node == 1  # one kernel per worker, not per run
    status = 0
    rendered = []
    for wave in table_waves(specs):
        plans = []
        for spec in wave:
            runs, pending, todo = plan_table(spec, args, results, location)
            if args.dry_run:
                dry_run(spec, runs, pending, todo, args, slurm, max_parallel, tasks_per_node, pooled)
                continue
            rendered.append((spec, runs))
            if todo and not args.render_only:
                plans.append((spec, todo))
        try:
            outcomes = run_plans(plans, results, args, slurm, max_parallel, tasks_per_node, pooled)
        except RunnerInterrupted as e:
            print(f"{parser.prog}: {e}", file=sys.stderr)
            return 128 + e.signum
        status = max(status, report(outcomes))
    # rendered after every table has run: some read other tables' runs (latency: imagenet's accuracies;
    # equivalence: the E models' from imagenet_starnet)
    for spec, runs in rendered:
        for path in render_table(spec, runs, results, args.profile, args.tables_dir):
            print(f"wrote {path}")
    if not args.dry_run and args.table == "all":
        # the index covers every table, rendered now or before (what it says of each comes from the store)
        entries = [index_entry(spec, spec.expand(args.profile), results, args.profile, args.tables_dir)
                   for spec in map(load_spec, available_tables())]
        print(f"wrote {render_index(entries, args.profile, args.tables_dir)}")
    return status


def table_waves(specs: list[TableSpec]) -> list[list[TableSpec]]:
    """The tables in the order they can run: those whose runs come from other tables' runs (``after``, e.g. the
    released table evaluates the imagenet table's checkpoints) once those tables are done."""
    first = [spec for spec in specs if not spec.after]
    return [wave for wave in (first, [spec for spec in specs if spec.after]) if wave]


def plan_table(spec: TableSpec, args: argparse.Namespace, results: Path, location: dict
               ) -> tuple[list[Run], list[Run], list[Run]]:
    """The table's runs, those without a complete record, and those to run now."""
    runs = [dataclasses.replace(run, config=dataclasses.replace(run.config, **location))
            for run in spec.expand(args.profile)]
    if spec.name == "released":  # its cells evaluate files: the releases (full) or the imagenet runs' (smoke)
        runs = released_runs(runs, args.profile, results, args.checkpoints)
    selected = {run.run_id for run in spec.expand(args.profile, args.only)}  # --only limits what runs
    pending = pending_runs(runs, results)
    # cells the profile maps to the same run (smoke trains every dataset on the digits) run once
    todo = list({run.run_id: run for run in pending if run.run_id in selected}.values())
    if spec.exclusive and todo:  # models timed against each other are timed again together, never piecemeal
        todo = list({run.run_id: run for run in runs if run.run_id in selected}.values())
    print(f"{spec.name}: {len(runs)} runs, {len(runs) - len(pending)} complete, {len(todo)} to run "
          f"({args.cluster}, profile {args.profile}) -> {results / spec.name}")
    return runs, pending, todo


def run_plans(plans: list[tuple[TableSpec, list[Run]]], results: Path, args: argparse.Namespace, slurm,
              max_parallel: int, tasks_per_node: int, pooled: bool) -> dict[str, tuple[list[Outcome], str]]:
    """Each table's outcomes and the seconds its jobs took: on the local cluster every table's runs share one
    pool of workers (tables overlap); elsewhere table after table."""
    if not plans:
        return {}
    if pooled:
        return execute_pooled(plans, results, max_parallel, progress=not args.no_progress)
    outcomes = {}
    for spec, todo in plans:
        start = time.perf_counter()
        done = execute(spec, todo, results, args.cluster, max_parallel, slurm, tasks_per_node,
                       progress=not args.no_progress)
        outcomes[spec.name] = (done, f"in {time.perf_counter() - start:.0f} s")
    return outcomes


def report(outcomes: dict[str, tuple[list[Outcome], str]]) -> int:
    """One line per table, the failures in detail; 1 if any run failed."""
    status = 0
    for table, (done, took) in outcomes.items():
        failed = [o for o in done if o.status == "failed"]
        print(f"{table}: {len(done) - len(failed)} complete, {len(failed)} failed {took}")
        if failed:
            print(failure_report(done), file=sys.stderr)
            status = 1
    return status


def per_rank_batch(batch: int, world: int) -> str:
    return str(batch // world) if batch % world == 0 else f"{batch / world:.2f} (not a multiple of {world} ranks)"


def dry_run(spec, runs, pending, todo, args, slurm, max_parallel: int, tasks_per_node: int, pooled: bool) -> None:
    world = slurm.world_size if slurm else tasks_per_node
    per = "per_gpu" if slurm is not None and slurm.gpus_per_node else "per_rank"
    for run in runs:
        state = "todo" if run in todo else "skipped" if run in pending else "complete"
        if spec.parameters.get("task") in DENSE_TASKS:  # detection/segmentation: the official dense protocol
            print(f"  {state:<9}{run.run_id:<34}{spec.label(run):<32} "
                  f"{get_protocol(spec.parameters['task'], run.config).summary()}")
            continue
        s = run.config.resolve()
        print(f"  {state:<9}{run.run_id:<34}{spec.label(run):<32} recipe={s.recipe.name} data={s.data} "
              f"epochs={s.recipe.epochs} batch={s.batch_size} lr={s.lr:.3g} img={s.img_size} "
              f"distill={run.config.distillation} {per}={per_rank_batch(s.batch_size, world)}")
    if slurm is not None:
        mem = slurm.mem_per_task_gb()
        device = f"{slurm.gpus_per_node // slurm.tasks_per_node} GPU" if slurm.gpus_per_node else "CPU only"
        print(f"  ranks: {slurm.nodes} node(s) x {slurm.tasks_per_node} task(s) = {world}; per rank: {device}, "
              f"{slurm.cpus_per_task} CPUs, " + (f"{mem:g} GB memory" if mem else "memory: the partition's default"))
    if slurm is not None:  # what sbatch would be given; no SLURM client needed to see it
        params = slurm_parameters(slurm, f"repnext-{spec.name}", max_parallel)
    else:
        params = local_parameters(f"repnext-{spec.name}", tasks_per_node)
    workers = f" in a pool of {max_parallel} notebook workers shared by the tables" if pooled else ""
    print(f"  executor {args.cluster}{workers}: max_parallel={max_parallel} " +
          " ".join(f"{k}={v}" for k, v in sorted(params.items())))


def script() -> int:
    """``python ablations/run.py`` and ``repnext-run``."""
    try:
        return main()
    except KeyboardInterrupt:  # outside a table's jobs (those are stopped by the runner): nothing to stop
        print("ablations/run.py: interrupted by SIGINT", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(script())
