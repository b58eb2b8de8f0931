"""Which token a request carries. The CLI may know several, one per role, and uses the
least-privileged one whose role suffices for the route (orchestrator.cli.roles), so that a
command that only reads cannot write by mistake, and the api's audit names the role used.

Where tokens come from, first wins:
  --token / VMORCH_TOKEN         one token for every request (no choosing)
  VMORCH_TOKEN_VIEWER, _OPERATOR, _ADMIN
  the details file (<lab dir>/vmorch.json): `tokens: {role: token}`, then `admin_token`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.cli.roles import RouteRole, route_for
from schemas.api import Role

ROLE_ORDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
ENV_PREFIX = "VMORCH_TOKEN_"


@dataclass(frozen=True)
class Credentials:
    fixed: str | None = None
    by_role: Mapping[Role, str] = field(default_factory=dict)

    @classmethod
    def discover(
        cls, fixed: str | None, environ: Mapping[str, str], state: Mapping[str, object]
    ) -> Credentials:
        """The tokens known from a --token/VMORCH_TOKEN value, the environment and the
        running lab's details file."""
        found: dict[Role, str] = {}
        if isinstance(admin := state.get("admin_token"), str) and admin:
            found[Role.ADMIN] = admin
        tokens = state.get("tokens")
        if isinstance(tokens, Mapping):
            for role in ROLE_ORDER:
                if isinstance(value := tokens.get(role.value), str) and value:
                    found[role] = value
        for role in ROLE_ORDER:
            if value := environ.get(ENV_PREFIX + role.name, "").strip():
                found[role] = value
        return cls(fixed=fixed or None, by_role=found)

    @property
    def strongest(self) -> str:
        """The token to use when the route's role is not known: the fixed one, or the
        most privileged known ("" when none is)."""
        if self.fixed:
            return self.fixed
        return next((self.by_role[r] for r in reversed(ROLE_ORDER) if r in self.by_role), "")

    def role_of(self, token: str) -> Role | None:
        return next((r for r in ROLE_ORDER if self.by_role.get(r) == token), None)

    def least_for(self, needed: Role) -> str:
        """The least-privileged known token whose role allows `needed`; else the strongest
        known (the api then refuses it, and says which role it needs)."""
        if self.fixed:
            return self.fixed
        for role in ROLE_ORDER:
            if role.allows(needed) and role in self.by_role:
                return self.by_role[role]
        return self.strongest

    def for_request(
        self, method: str, path: str, table: tuple[RouteRole, ...] | None = None
    ) -> str:
        """The token for one request: none for a public route, the least that suffices
        for a known one, the strongest for a route the table does not have. The table is
        only looked at when there is a choice to make."""
        if self.fixed or len(set(self.by_role.values())) <= 1:
            return self.strongest
        route = route_for(method, path, table)
        if route is None:
            return self.strongest
        return "" if route.role is None else self.least_for(route.role)

    def stronger_than(self, token: str) -> str | None:
        """The next more privileged known token, for a request the api refused with 403
        although the route table's role sufficed (a handler that asks for more: noop jobs
        are for admins)."""
        if self.fixed:
            return None
        role = self.role_of(token)
        if role is None:
            return None
        above = ROLE_ORDER[ROLE_ORDER.index(role) + 1 :]
        return next(
            (self.by_role[r] for r in above if r in self.by_role and self.by_role[r] != token),
            None,
        )
