"""The simulated data path: client writes, group commit, streaming replication and acks.

Owns what happens to a key from a client's PUT to its answer: the primary's write gate (open
only between a renewal's commit and its lease end, as ``WriteGate`` measures it), the entry
appended with the epoch's label, the group commit that makes it durable (power loss keeps only
the synced prefix), the stream to each follower (served by a node in the primary role only;
the divergent tail saved and dropped before following, a 409 for data off the history), the
replica's fsync before its ack, the ack raising the primary's view of that replica, and the
answer: 200 once synced and confirmed by every name in ``confirmers`` (the committed
synchronous set plus any change in flight: rule 6) while the lease still holds, else 503 with
the outcome unknown. Clients record ``Op``s for ``history.check_all``. It must never make a
decision the product's core makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacluster.consensus.epochs import conflict
from hacluster.consensus.lease import holder_lease_end
from hacluster.consensus.state import EpochRecord
from hacluster.testing.history import Op
from hacluster.testing.sim.control import Control
from hacluster.testing.sim.core import Pending, SimNode

BATCH = 200                     # entries one stream message carries at most
_FAR = 1 << 62                  # beyond any seq


@dataclass(slots=True)
class Client:
    hint: int = 0
    scripted: bool = False       # a scenario's: sends only when told, its answers traced
    refusals: int = 0            # in a row: the client backs off, as the product's does


class Data(Control):
    def init_data(self) -> None:
        self.clients = [Client(hint=i % len(self.nodes)) for i in range(self.cfg.clients)]
        self.keyno = 0
        self.tails_dropped = 0
        self.tail_keys: set[bytes] = set()     # every divergent tail saved to a file
        self.writing = True
        self._offs: dict[tuple[int, int | None, int, int], int] = {}

    # -- the write gate and the answer ---------------------------------------------------

    def gate_refusal(self, n: SimNode) -> str | None:
        if n.primary_epoch is None or n.gate_proposed_at is None:
            return f"{n.name} is not primary"
        if n.gate_reason is not None:
            return n.gate_reason
        if n.disk_full is not None:
            return n.disk_full
        if self.local(n) >= holder_lease_end(n.gate_proposed_at, self.pol(n).timing,
                                             n.gate_lock_lease):
            return "lease expired"
        return None

    def finish(self, p: object, n: SimNode, status: int, note: str) -> None:
        assert isinstance(p, Pending)
        if p.client < 0:
            return                      # its client gave up long ago: nobody hears this
        ok = status == 200
        self.record(p.client, Op(p.key, n.name, p.start, self.now, status,
                                 p.epoch if ok else None, p.seq if ok else None, note))
        self._next_request(p.client)

    def connected(self, p: SimNode) -> list[SimNode]:
        return [m for m in self.nodes if m is not p and m.following == p.name
                and self.linked(m, p) and self.linked(p, m) and not m.diverged]

    def settle_writes(self, n: SimNode) -> None:
        """Answer every waiting write of ``n`` whose fate is known."""
        if not n.waiting:
            return
        state = self.state(n)
        lock = state.lock
        ours = lock.held and lock.holder == n.name and n.primary_epoch == lock.epoch
        # Every write up to ``confirmed`` is confirmed by each name in the committed set and
        # any change in flight (rule 6); none without a committed set.
        confirmed = n.seq
        if self.policy.sync_mode:
            if not state.sync_set:
                confirmed = 0
            positions = n.positions
            for m in state.sync_set | n.sync_pending:
                at = positions[m][0] if m in positions else 0
                if at < confirmed:
                    confirmed = at
        still = []
        for p in n.waiting:
            if not ours or lock.epoch != p.epoch:
                self.finish(p, n, 503, "outcome unknown: the lock was lost")
                continue
            if n.synced >= p.seq and confirmed >= p.seq:
                late = self.gate_refusal(n)      # Node.acknowledge asks the gate again
                if late is not None:
                    self.finish(p, n, 503, f"outcome unknown: {late}")
                else:
                    n.acked_seq = max(n.acked_seq, p.seq)
                    self.finish(p, n, 200, "")
                continue
            if self.local(n) >= p.deadline:
                self.finish(p, n, 503, "outcome unknown: sync timeout")
            elif p.client >= 0 and self.now - p.start >= self.cfg.client_timeout_s:
                # The client gives up; the server keeps the write and may still apply it.
                self.record(p.client, Op(p.key, n.name, p.start, self.now, 0, note="timeout"))
                self._next_request(p.client)
                p.client = -1
                still.append(p)
            else:
                still.append(p)
        n.waiting = still

    # -- clients --------------------------------------------------------------------------

    def record(self, client: int, op: Op) -> None:
        self.ops.append(op)
        if self.clients[client].scripted:
            answer = (f"epoch {op.epoch}, seq {op.seq}" if op.status == 200 else op.note)
            self.say(f"client: {op.key} to {op.node}: {op.status} ({answer})")

    def _next_request(self, i: int, delay: float | None = None) -> None:
        c = self.clients[i]
        if self.writing and not c.scripted:
            self.after(self.cfg.think_s if delay is None else delay, lambda: self._request(i))

    def _back_off(self, i: int) -> None:
        """Retry a refused write after a capped exponential backoff with jitter (0.1-0.2 s,
        then twice as long each time in a row, up to 0.5-1 s)."""
        c = self.clients[i]
        base = min(0.5, 0.1 * 2 ** c.refusals)
        c.refusals += 1
        self._next_request(i, base * (1 + self._random()))

    def _request(self, i: int) -> None:
        if self.writing:
            self.send(i)

    def send(self, i: int) -> None:
        """Client ``i`` sends one write to the node it believes is primary."""
        c = self.clients[i]
        n = self.nodes[c.hint]
        self.keyno += 1
        key = f"k{self.keyno}"
        start = self.now
        if not n.up:
            self.record(i, Op(key, n.name, start, start + 0.001, 0,
                              note="ConnectionRefusedError"))
            c.hint = (c.hint + 1) % len(self.nodes)
            self._back_off(i)
            return
        why = self.gate_refusal(n)
        if why is not None:
            status = 507 if why == n.disk_full else 503
            self.record(i, Op(key, n.name, start, start + 0.001, status, note=why))
            holder = self.state(n).lock.holder
            c.hint = ([m.name for m in self.nodes].index(holder)
                      if holder is not None and holder != n.name and self.rng.random() < 0.8
                      else (c.hint + 1) % len(self.nodes))
            self._back_off(i)
            return
        assert n.primary_epoch is not None
        c.refusals = 0
        n.entries.append((n.primary_epoch, key))
        p = Pending(i, key, start, n.seq, n.primary_epoch,
                    self.local(n) + self.cfg.sync_timeout_s)
        n.waiting.append(p)
        # One group commit for every write that arrives before it starts, and the stream to
        # each follower. (Timeouts are noticed by the primary's next control pass.)
        if not n.sync_due:
            n.sync_due = True
            self.after(self.cfg.sync_s, lambda: self._synced(n), n)
        for f in self.nodes:
            if f.following == n.name and not f.pull_due:
                self.pull(f)

    def _synced(self, n: SimNode) -> None:
        n.sync_due = False
        n.synced = n.seq
        self.settle_writes(n)

    # -- replication ----------------------------------------------------------------------

    def pull(self, f: SimNode) -> None:
        """Ask the primary ``f`` follows for what it lacks; the answer arrives after a delay."""
        f.pull_due = True
        self.after(self.cfg.link_s, lambda: self._stream(f), f)

    def _first_off(self, low: int, high: int | None, history: tuple[EpochRecord, ...]) -> int:
        """The first seq at which data labelled ``low`` leaves the (``high``-)history; 0: never.

        ``conflict`` is monotone in the seq (no conflict below one seq, a conflict from there
        on), so one probe at the far end answers it for every seq; memoised per (labels,
        history) — a history is named by its length and newest epoch, since every node's is a
        prefix of the one the log builds. The streams ask this for every message."""
        key = (low, high, len(history), history[-1].epoch if history else 0)
        first = self._offs.get(key)
        if first is None:
            probe = conflict(low, _FAR, history, upto=high)
            first = self._offs[key] = 0 if probe is None else probe.first_seq
        return first

    def _stream(self, f: SimNode) -> None:
        f.pull_due = False
        if f.following is None or f.diverged or f.disk_full is not None:
            return
        history = self.state(f).history
        entries = f.entries
        seq = len(entries)
        label = entries[-1][0] if entries else 0
        first = self._first_off(label, None, history) if seq else 0
        if first and first <= seq:
            off = conflict(label, seq, history)
            assert off is not None
            if off.verifiable:
                # Node._handle_divergence, before following: the tail goes to a file and the
                # node starts over from the primary (modelled as keeping the common prefix).
                dropped = seq - off.first_seq + 1
                self.tail_keys.update(k.encode() for _, k in entries[off.first_seq - 1:])
                del entries[off.first_seq - 1:]
                seq = len(entries)
                f.synced = min(f.synced, seq)
                self.tails_dropped += dropped
                self.say(f"{f.name}: divergent tail seqs {off.first_seq}.."
                         f"{off.first_seq + dropped - 1} saved and dropped ({off})")
        p = self.by_name[f.following]
        # The stream is served by a node in the primary role only (api.add_replication_routes).
        if p is f or p.primary_epoch is None or not (self.linked(f, p) and self.linked(p, f)):
            return
        if seq > 0:
            mine, theirs = f.label(seq), p.label(seq)
            low, high = (mine, theirs) if mine <= theirs else (theirs, mine)
            first = self._first_off(low, high, self.state(p).history)
            if first and first <= seq:      # not same_history(): the primary answers 409
                f.diverged = True           # replication stops
                self.say(f"{f.name}: {p.name} refuses the stream at seq {seq} (409): diverged")
                return
        if f.name not in p.positions or p.positions[f.name][0] > seq:
            p.positions[f.name] = (seq, self.local(p))     # the stream opens at its position
        theirs_n = len(p.entries)
        if theirs_n <= seq:
            return
        # Labels never go back (Lineage.record ignores an older epoch).
        label = max(p.primary_epoch, f.label(seq))
        # Everything the primary wrote, synced there or not: a replica may hold writes its
        # primary loses at a power loss (rule 3 makes those a divergent tail).
        entries.extend([(label, k) for _, k in p.entries[seq:seq + BATCH]])
        upto = f.synced = len(entries)  # the replica's fsync before it acks
        self.after(self.cfg.link_s, lambda: self._ack(p, f, upto), p)
        if theirs_n > upto:
            self.pull(f)

    def _ack(self, p: SimNode, f: SimNode, upto: int) -> None:
        if not self.linked(f, p) or p.primary_epoch is None:
            return
        seq = p.positions.get(f.name, (0, 0.0))[0]
        if upto > seq:
            p.positions[f.name] = (upto, self.local(p))
        self.settle_writes(p)
