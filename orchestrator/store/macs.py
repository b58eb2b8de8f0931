"""MAC addresses for vNICs: one fleet-wide registry, so no MAC is handed out twice.

Every MAC in use is a field of one Redis hash (MAC -> the VM id that holds it), kept with
Redis' persistence, so it survives restarts of vmorch. New MACs come from a managed range
(`VMORCH_MAC_RANGE`), handed out in turn from a cursor; a MAC a request names is checked
against the whole registry, inside the range or outside it. One script claims all of a
VM's MACs at once, so concurrent creates never get the same one. A VM's MACs are released
when its record is deleted (`InventoryStore.delete_vm`).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.errors import Conflict
from orchestrator.store import keys

MAX_PROBES = 10_000  # MACs in use skipped at most in one allocation, before giving up

# KEYS: registry, cursor. ARGV: owner, range start, range end (integers), max probes, then
# one per vNIC: a MAC (12 hex digits) it asks for, or "" for one from the range.
_CLAIM = """
local owner, s, e = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local probes = tonumber(ARGV[4])
for i = 5, #ARGV do
  if ARGV[i] ~= '' then
    local holder = redis.call('HGET', KEYS[1], ARGV[i])
    if holder and holder ~= owner then return {'taken', ARGV[i], holder} end
  end
end
local out, made = {'ok'}, {}
for i = 5, #ARGV do  -- the MACs asked for first, so that none is handed out from the range
  if ARGV[i] ~= '' and redis.call('HSETNX', KEYS[1], ARGV[i], owner) == 1 then
    table.insert(made, ARGV[i])
  end
end
for i = 5, #ARGV do
  local m = ARGV[i]
  if m ~= '' then
    -- asked for: claimed above
  else
    local cur = tonumber(redis.call('GET', KEYS[2]) or s)
    if cur < s or cur > e then cur = s end
    m = nil
    for _ = 1, math.min(probes, e - s + 1) do
      local cand = string.format('%012x', cur)
      cur = cur + 1
      if cur > e then cur = s end
      if redis.call('HSETNX', KEYS[1], cand, owner) == 1 then
        m = cand
        table.insert(made, cand)
        break
      end
    end
    redis.call('SET', KEYS[2], string.format('%d', cur))
    if not m then
      for _, x in ipairs(made) do redis.call('HDEL', KEYS[1], x) end
      return {'exhausted', '', ''}
    end
  end
  table.insert(out, m)
end
return out
"""

# KEYS: registry. ARGV: owner, MACs (12 hex digits): each released if the owner holds it.
RELEASE = """
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


def to_hex(mac: str) -> str:
    return mac.replace(":", "").replace("-", "").lower()


def to_mac(hex12: str) -> str:
    return ":".join(hex12[i : i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True)
class MacRange:
    """A range of MACs, both ends included ("52:54:00:00:00:00-52:54:00:ff:ff:ff")."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> MacRange:
        lo, sep, hi = text.partition("-")
        if not sep:
            raise ValueError(f"a MAC range is two MACs with '-' between: {text!r}")
        start, end = int(to_hex(lo.strip()), 16), int(to_hex(hi.strip()), 16)
        if not start <= end < 2**48 or len(to_hex(lo.strip())) != 12:
            raise ValueError(f"not a MAC range: {text!r}")
        if (start >> 40) & 1 or (end >> 40) & 1:
            raise ValueError(f"a multicast MAC cannot be a vNIC's: {text!r}")
        return cls(start, end)


class MacRangeExhausted(Conflict):
    code = "mac_range_exhausted"


class MacStore:
    def __init__(self, redis: Redis, mac_range: MacRange):
        self.redis = redis
        self.range = mac_range
        self._claim = redis.register_script(_CLAIM)

    async def claim(self, owner: str, wanted: list[str | None]) -> list[str]:
        """A MAC for each vNIC of VM `owner`: the one asked for (Conflict if another VM has
        it), or the next free one of the range. All or none."""
        reply = await self._claim(
            keys=[keys.MACS, keys.MACS_CURSOR],
            args=[owner, self.range.start, self.range.end, MAX_PROBES]
            + [to_hex(w) if w else "" for w in wanted],
        )
        status = reply[0]
        if status == "taken":
            raise Conflict(
                f"MAC {to_mac(reply[1])} is in use by VM {reply[2]}",
                details=[
                    (["body", "vnics", i, "mac"], f"in use by VM {reply[2]}")
                    for i, w in enumerate(wanted)
                    if w and to_hex(w) == reply[1]
                ],
            )
        if status == "exhausted":
            raise MacRangeExhausted("no free MAC left in the range (VMORCH_MAC_RANGE)")
        return [to_mac(m) for m in reply[1:]]

    async def release(self, owner: str, macs: list[str]) -> int:
        if not macs:
            return 0
        return int(await self.redis.eval(RELEASE, 1, keys.MACS, owner, *map(to_hex, macs)))

    @staticmethod
    def queue_release(pipe: Pipeline, owner: str, macs: list[str]) -> None:
        """Queue the release on `pipe` (a transaction that deletes the VM's record)."""
        if macs:
            pipe.eval(RELEASE, 1, keys.MACS, owner, *map(to_hex, macs))

    async def holder(self, mac: str) -> str | None:
        return await self.redis.hget(keys.MACS, to_hex(mac))  # type: ignore[no-any-return]

    async def in_use(self) -> int:
        return int(await self.redis.hlen(keys.MACS))
