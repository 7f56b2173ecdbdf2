"""The check-then-time benchmark harness: jobs run one process per array library, every step under a deadline.

A job (`jobs.Job`) is one backend (or peer) on one op and shape.  Its steps
(`jobs.Step`), in order: ``check reduced`` (against the float64 loops at the
workload's reduced shapes, computed once per run: `references`), where the job
asks for warm-ups and its first call compiles (numba, jax) one ``warm`` call
per pass at the timed size, then per regime the timed passes.  Checks and
warm-ups come first, for every job, in two processes at once (`prepare`:
nothing is timed then, so they may share the cores); their kernels land in the
caches on disk, and what they decided (`state.Decisions`) goes on to the timing
processes, which run one at a time (`supervisor`).  A warm-up killed past its
deadline is forgotten (the timing decides), unless the job prunes over the cap
and the call ran past cap + margin after its compile: its pass is then ``>cap``.

The first call of each pass in the first regime runs on the full-size
reference's inputs and its result is checked against it before any other call
(`checks`).  A backend that fails a check or the memory guard is recorded with
the reason and never timed; what a kill rules out is `jobs.Kill.rules_out`, and
every deadline and skip rule is in `policy`.  The parent and a child
(`child`, which runs each job with `runner`) talk in `messages`.  The harness's
own work (a job's setup, its input sets (`inputs`), the full-size reference, a
process's exit) happens between steps, where the deadline is generous.
"""
from .jobs import Job, Kill, Step, build_op, op_spec, split_shapes
from .references import check_references, load_reference, reference_file
from .run import IN_PROCESS_NOTE, ISOLATION_NOTE, run_jobs
from .runner import check_job, run_job

__all__ = ["Job", "Step", "Kill", "op_spec", "build_op", "split_shapes", "run_jobs", "run_job", "check_job",
           "reference_file", "load_reference", "check_references", "ISOLATION_NOTE", "IN_PROCESS_NOTE"]
