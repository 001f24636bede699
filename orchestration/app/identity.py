"""Which transactional id an exactly-once instance uses, and why it must be stable.

Kafka fences a zombie only when its successor initialises the *same*
transactional id: the broker bumps the epoch and the zombie's next commit fails.
The default ``instance_id`` (``<hostname>-<pid>``) changes at every restart
outside a container and differs between replicas, so a zombie would never be
fenced and could commit answers beside its replacement. Exactly-once therefore
takes its id from configuration that survives a restart, in this order: an
explicit ``kafka.transactional_id``; an ``instance_id`` that is not the pid-based
default; ``<kafka.group_id>-<ordinal>`` from ``instance_ordinal`` or, inside
Kubernetes, from a StatefulSet pod's hostname (``altlas-2``). Without one it
refuses to start unless ``kafka.allow_unstable_transactional_id`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import socket

from altlas.orchestration.app.settings import Modality, Settings

log = logging.getLogger(__name__)

_POD_ORDINAL = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?-(?P<ordinal>\d+)$")


class UnstableTransactionalIdError(ValueError):
    """Exactly-once was asked to run on an id that a restart would change."""


def pid_based(instance_id: str) -> bool:
    """Whether ``instance_id`` is this process's ``<hostname>-<pid>`` default."""
    return instance_id == f"{socket.gethostname()}-{os.getpid()}"


def hostname_ordinal(hostname: str | None = None) -> int | None:
    """The ordinal of a StatefulSet pod (``altlas-2`` -> 2), only when running in Kubernetes.

    Outside Kubernetes a trailing number in a hostname (``ip-10-0-0-12``) is no
    ordinal: two hosts could share it and fence each other.
    """
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    match = _POD_ORDINAL.match(hostname if hostname is not None else socket.gethostname())
    return int(match["ordinal"]) if match else None


def transactional_prefix(settings: Settings) -> str:
    """The stable part of this instance's transactional ids (raises when there is none)."""
    kafka = settings.kafka
    if kafka.transactional_id:
        return kafka.transactional_id
    if not pid_based(settings.instance_id):
        return settings.instance_id
    ordinal = settings.instance_ordinal if settings.instance_ordinal is not None else hostname_ordinal()
    if ordinal is not None:
        return f"{kafka.group_id}-{ordinal}"
    if kafka.allow_unstable_transactional_id:
        log.warning(
            "exactly-once on the pid-based transactional id %s: a restarted instance will not fence "
            "its zombie (set kafka.transactional_id, instance_id or instance_ordinal)",
            settings.instance_id,
        )
        return settings.instance_id
    raise UnstableTransactionalIdError(
        f"exactly-once needs a transactional id that survives a restart, but instance_id is the "
        f"pid-based default {settings.instance_id!r}: set kafka.transactional_id, instance_id or "
        "instance_ordinal (a StatefulSet pod's hostname gives it), or kafka.allow_unstable_transactional_id"
    )


def transactional_id(settings: Settings, modality: Modality) -> str:
    """One transactional producer per instance and modality."""
    return f"{transactional_prefix(settings)}.{modality}"
