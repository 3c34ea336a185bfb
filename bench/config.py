"""The size of a run: the benchmark of record, and the quick one (``--quick``: seconds per scenario)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    quick: bool
    levels: tuple[int, ...]  # concurrent dispatchers
    duration: float  # seconds per measured point of the dispatch ladder
    sync_off_levels: tuple[int, ...]
    sync_off_duration: float
    backlog: int  # ready tasks in each copy for the ladder
    ingest_batches: int
    op_duration: float  # approve, complete
    op_connections: int
    complete_tasks: int
    pollers: int
    idle_window: float
    idle_settle: float  # before an idle window: PostgreSQL counts an idle backend's work up to 10 s late
    wakeups: int
    sustained_duration: float
    sustained_window: float
    sustained_connections: int
    sustained_backlog: int  # at least; sized up from the ladder's rate
    auth_connections: int  # dispatchers of the auth on/off comparison
    history_tasks: int  # finished tasks in the history of the history-growth scenario
    history_connections: int
    history_duration: float  # per dispatch run (two per side)
    batch_size: int = 10_000


FULL = Config(
    quick=False,
    levels=(1, 16, 64, 256),
    duration=10,
    sync_off_levels=(1, 16, 64, 256),
    sync_off_duration=5,
    backlog=250_000,
    ingest_batches=20,
    op_duration=5,
    op_connections=16,
    complete_tasks=100_000,
    pollers=1000,
    idle_window=10,
    idle_settle=11,
    wakeups=200,
    sustained_duration=180,
    sustained_window=30,
    sustained_connections=64,
    sustained_backlog=1_500_000,
    auth_connections=64,
    history_tasks=10_000_000,
    history_connections=64,
    history_duration=10,
)
QUICK = Config(
    quick=True,
    levels=(1, 16),
    duration=1,
    sync_off_levels=(16,),
    sync_off_duration=1,
    backlog=20_000,
    ingest_batches=2,
    op_duration=1,
    op_connections=16,
    complete_tasks=10_000,
    pollers=100,
    idle_window=1,
    idle_settle=0,
    wakeups=10,
    sustained_duration=3,
    sustained_window=1,
    sustained_connections=16,
    sustained_backlog=30_000,
    auth_connections=16,
    history_tasks=100_000,
    history_connections=16,
    history_duration=1,
)
