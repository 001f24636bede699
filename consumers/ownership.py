"""Which work a group member may still commit, when the broker cannot check it for us.

KIP-447 has the broker refuse a transaction's offsets from a member of an old
generation: TxnOffsetCommit v3 carries the generation id, member id and group
instance id. aiokafka 0.14 cannot carry them. Its protocol defines
TxnOffsetCommitRequest v0 only, ``send_offsets_to_transaction(offsets, group_id)``
takes no group metadata, and the sender's ``TxnOffsetCommitHandler`` builds the
request itself. The broker therefore accepts offsets, and so commits answers,
from a member it has already expelled. altlas enforces the rule itself, in two
parts:

1. Assignment epochs. Each revocation starts a new epoch. Records carry the epoch
   they were fetched in, and work from an older epoch is dropped, never committed:
   the partition's new owner (perhaps this member again, reading from the
   committed offset) answers it. A revocation waits for the transaction being
   committed (``committing``), so no transaction spans one.
2. Membership check. Right before EndTxn, ``confirm`` sends a Heartbeat with the
   member's generation and id. A member that was expelled while it stood still
   (SIGSTOP, a long pause, a network cut) may not have run its revocation yet; it
   learns here that it is no longer in the group, and its transaction aborts.

That leaves the round trip between the check and EndTxn: a member frozen in
exactly that moment, for longer than the session timeout, still commits once.
The partition's new owner closes it (``stable_offsets.py``): it starts from
offsets no open transaction holds, so it begins after the zombie's late commit,
or redoes the records once that transaction aborted or timed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.group import HeartbeatRequest

from altlas.consumers.stable_offsets import COORDINATOR_MOVED

log = logging.getLogger(__name__)

# A rebalance in progress still counts this member in: the group waits for it to rejoin, and
# its revocation (which waits for this transaction) runs before it does.
_STILL_MEMBER = {0, 27}  # NONE, REBALANCE_IN_PROGRESS
#: How long a commit may wait for a moving group coordinator to say whether this member is in.
_CONFIRM_RETRY_S = 5.0


class Ownership:
    """The assignment epoch of one consumer, and the gate that keeps commits and revocations apart."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._gate = asyncio.Lock()
        self.epoch = 0

    def current(self, epoch: int) -> bool:
        """Whether work fetched in ``epoch`` may still commit."""
        return epoch == self.epoch

    @asynccontextmanager
    async def committing(self) -> AsyncIterator[None]:
        """Hold off revocations while a transaction carries this member's offsets."""
        async with self._gate:
            yield

    async def revoked(self) -> None:
        """Start a new epoch once the transaction in progress, if any, has ended."""
        async with self._gate:
            self.epoch += 1

    async def confirm(self) -> bool:
        """Whether the group coordinator still counts this member in its current generation.

        A coordinator on the move (a broker restart) is found again and asked again for a
        few seconds, rather than aborting every instance's transaction at once.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or coordinator.generation < 0 or not coordinator.member_id:
            return False
        request = HeartbeatRequest(coordinator.group_id, coordinator.generation, coordinator.member_id)
        deadline = time.monotonic() + _CONFIRM_RETRY_S
        while True:
            try:
                response = await coordinator._send_req(request)
                code = response.error_code
            except KafkaError as exc:
                code, why = None, str(exc)
            else:
                why = for_code(code).__name__
            if code in _STILL_MEMBER:
                return True
            if code is not None and code not in COORDINATOR_MOVED:
                log.warning(
                    "this member left group %s (%s): its partitions are someone else's, not committing",
                    coordinator.group_id,
                    why,
                )
                return False
            if time.monotonic() > deadline:
                log.warning("group membership unconfirmed (%s): not committing", why)
                return False
            coordinator.coordinator_dead()
            await asyncio.sleep(0.2)
            try:
                await asyncio.wait_for(
                    coordinator.ensure_coordinator_known(), max(0.1, deadline - time.monotonic())
                )
            except TimeoutError:
                pass
