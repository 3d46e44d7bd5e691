"""Wiring: the daemon's stages built from the settings and handed to the supervisor.

Data flows one way: observer -> ingest -> ledger -> scheduler -> job runner ->
trainer (a child process) -> model registry -> publisher (rsync to the selfplay
hosts). The RAM-disk flusher and the remotes (rsync pulls) feed the watched
trees from outside; the control socket reads from every stage.
"""

from __future__ import annotations

from pathlib import Path

from ringd.ledger import Ledger
from ringd.service.control import ControlServer
from ringd.service.events import EventBus
from ringd.service.flusher import RamdiskStage
from ringd.service.ingest import Ingest
from ringd.service.jobs import JobRunner, detect_slots
from ringd.service.metrics import Metrics
from ringd.service.models import ModelRegistry
from ringd.service.notify import Notifier
from ringd.service.observer import Observer
from ringd.service.publisher import Publisher
from ringd.service.remotes import Remotes
from ringd.service.scheduler import Scheduler
from ringd.service.supervisor import Stages, Supervisor
from ringd.settings import Settings


def build(config_path: Path, settings: Settings, notifier: Notifier | None = None) -> Supervisor:
    """The daemon for `settings`, not yet started (`await supervisor.serve()`)."""
    bus = EventBus()
    metrics = Metrics()
    ingest = Ingest(settings.ledger_path, settings.watch, bus, metrics, settings.rules)
    runner = JobRunner(settings, bus, metrics)
    reader = Ledger(settings.ledger_path)
    models = ModelRegistry(settings, bus)
    stages = Stages(
        ingest=ingest,
        observer=Observer(settings.watch, ingest, bus),
        ramdisk=RamdiskStage(settings.ramdisk, bus),
        scheduler=Scheduler(
            settings,
            detect_slots(settings.training.devices, settings.training.gpus_per_job),
            runner,
            reader,
            bus,
            metrics,
        ),
        runner=runner,
        models=models,
        remotes=Remotes(settings, bus, metrics),
        publisher=Publisher(settings, lambda: models.latest, bus, metrics),
        control=ControlServer(settings.socket_path, bus, metrics, settings.control.metrics_address),
    )
    supervisor = Supervisor(
        config_path, settings, stages, bus, reader, notifier or Notifier.from_env()
    )
    metrics.track_status(supervisor.status)
    return supervisor


def run(config_path: Path, settings: Settings) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    import uvloop

    return uvloop.run(build(config_path, settings).serve())
