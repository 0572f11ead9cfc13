"""A strict stand-in for Discord under discord.py: what the gateway delivers, and the REST API it answers.

dpytest cannot do slash commands, buttons or forms, so a test plays Discord itself:

  in   raw INTERACTION_CREATE (and GUILD_CREATE) payloads, shaped like the gateway's, fed to the client's
       own parser (`client._connection.parsers[...]`), so discord.py's real dispatch runs: the command tree,
       dynamic buttons and select menus, modals, checks and cooldowns;
  out  discord.py's own HTTP code runs unchanged; only its aiohttp session is replaced (`FakeSession`).
       Every request lands in `DiscordGatewayRecorder.handle`, which records it and answers as Discord would,
       refusing what Discord refuses: an initial response later than 3 s, a second initial response,
       a form in answer to a form, forms over Discord's limits, messages that allow mentions, edits and
       follow-ups before the initial response, secrets in messages others can see.

Each refusal is a violation; `assert_clean()` fails the test with all of them. Payloads are built from
the commands the bot registered (option types come from its own sync), and presses, choices and form
submits from the messages and forms it really sent, so a test cannot press a button that was never shown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import discord
from discord.http import Route

APP_ID = 1100000000000000001  # a bot's user id is its application's id
GUILD_ID = 1200000000000000001
CHANNEL_ID = 1300000000000000001
OPS_CHANNEL_ID = 1300000000000000002
OWNER_ID = 1400000000000000001
TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.test.bot-token-for-the-recorder"

INITIAL_DEADLINE = 3.0  # seconds to the initial response
FOLLOWUP_WINDOW = 15 * 60.0  # an interaction token's lifetime
EPHEMERAL, LOADING = 64, 128
MESSAGE_FLAGS = {4, 64, 4096, 32768}  # suppress embeds, ephemeral, silent, components v2
CALLBACK_TYPES = {1: "pong", 4: "message", 5: "deferred message", 6: "deferred update", 7: "update message",
                  8: "autocomplete result", 9: "modal", 10: "premium required", 12: "launch activity"}
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
BOT_USER = {"id": str(APP_ID), "username": "fleet-bot", "discriminator": "0", "global_name": "Fleet", "avatar": None,
            "bot": True, "public_flags": 0}


class Violation(Exception):
    """Discord would refuse this request, and the bot should have known better."""

    def __init__(self, text: str, status: int = 400, code: int = 50035) -> None:
        super().__init__(text)
        self.status, self.code = status, code


class Refusal(Violation):
    """Discord refuses this request for a reason the bot cannot know beforehand (a closed DM inbox)."""


_counter = itertools.count(1)


def snowflake() -> int:
    """A snowflake for now: discord.py reads creation times (cooldowns use them) from ids."""
    return discord.utils.time_snowflake(dt.datetime.now(dt.UTC)) + next(_counter) % (1 << 22)


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    roles: tuple[int, ...] = ()

    @property
    def sid(self) -> str:
        return str(self.id)

    def user(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.name, "discriminator": "0", "global_name": self.name.title(),
                "avatar": None, "public_flags": 0}

    def member(self, with_user: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"roles": [str(r) for r in self.roles], "joined_at": "2024-01-01T00:00:00+00:00",
                               "deaf": False, "mute": False, "flags": 0, "pending": False, "nick": None,
                               "avatar": None, "premium_since": None, "communication_disabled_until": None,
                               "permissions": "2248473465835073"}
        if with_user:
            out["user"] = self.user()
        return out


@dataclass
class Message:
    id: int
    channel_id: int
    content: str = ""
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = False
    loading: bool = False
    deleted: bool = False
    interaction: Interaction | None = None
    history: list[str] = field(default_factory=list)  # every content it showed, in order
    kind: int = 0  # 0 default, 20 a slash command's reply

    @property
    def flags(self) -> int:
        return (EPHEMERAL if self.ephemeral else 0) | (LOADING if self.loading else 0)

    def apply(self, body: dict[str, Any]) -> None:
        if "content" in body:
            self.content = body["content"] or ""
        if "components" in body:
            self.components = body["components"] or []
        if "embeds" in body:
            self.embeds = body["embeds"] or []
        self.loading = False
        self.history.append(self.content)

    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 2]

    def labels(self) -> list[str]:
        return [b.get("label", "") for b in self.buttons()]

    def selects(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 3]

    def options(self) -> list[str]:
        """The labels of the options of every select menu on the message."""
        return [o.get("label", "") for menu in self.selects() for o in menu.get("options", [])]

    def text(self) -> str:
        return self.content + "".join(json.dumps(e) for e in self.embeds)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id), "channel_id": str(self.channel_id), "author": BOT_USER, "content": self.content,
            "timestamp": iso_now(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": self.embeds, "pinned": False,
            "type": self.kind, "flags": self.flags, "components": self.components,
        }
        if self.interaction is not None:
            out["application_id"] = str(APP_ID)
            out["webhook_id"] = str(APP_ID)
        return out


@dataclass
class Interaction:
    id: int
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete, 5 modal submit
    person: Person
    channel_id: int
    payload: dict[str, Any]
    fed_at: float
    source: Message | None = None  # the message a button (or the form it opened) was on
    initial: int | None = None  # callback type of the initial response
    initial_at: float | None = None
    original: Message | None = None
    modal: dict[str, Any] | None = None
    followups: list[Message] = field(default_factory=list)

    @property
    def latency(self) -> float | None:
        return None if self.initial_at is None else self.initial_at - self.fed_at

    @property
    def messages(self) -> list[Message]:
        return ([self.original] if self.original is not None and self.original is not self.source else []) + \
            self.followups


@dataclass
class Sent:
    at: float
    method: str
    path: str
    body: Any


class FakeResponse:
    def __init__(self, status: int, body: Any = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason or {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
                                 403: "Forbidden", 404: "Not Found"}.get(status, "")
        self._text = "" if body is None else json.dumps(body)
        self.headers: dict[str, str] = {"content-type": "application/json"} if body is not None else {}

    async def text(self, encoding: str | None = None) -> str:
        return self._text

    async def json(self) -> Any:
        return json.loads(self._text)

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def release(self) -> None:
        pass


class FakeSession:
    """Replaces discord.py's aiohttp.ClientSession: every request goes to the recorder."""

    def __init__(self, recorder: DiscordGatewayRecorder) -> None:
        self.recorder = recorder
        self.closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        return self.recorder.handle(method, url, kwargs)

    async def ws_connect(self, url: str, **kwargs: Any) -> Any:
        self.recorder.gateway_attempts += 1
        raise aiohttp.ClientConnectionError("the recorder has no gateway: interactions are fed by the test")

    async def close(self) -> None:
        self.closed = True


class DiscordGatewayRecorder:
    def __init__(self, guild_id: int = GUILD_ID, deadline: float = INITIAL_DEADLINE, valid_token: str = TOKEN) -> None:
        self.guild_id = guild_id
        self.valid_token = valid_token
        self.deadline = deadline  # to the initial response; shorter only to test the recorder itself
        self.gateway_attempts = 0
        self.violations: list[str] = []
        self.requests: list[Sent] = []
        self.interactions: dict[int, Interaction] = {}
        self.by_token: dict[str, Interaction] = {}
        self.messages: dict[int, Message] = {}
        self.channel_messages: dict[int, list[Message]] = {}
        self.dm_channels: dict[int, int] = {}  # channel id -> user id
        self.closed_dms: set[int] = set()
        self.secrets: set[str] = set()
        self.commands: dict[str, dict[str, Any]] = {}  # name -> definition as registered
        self.syncs: list[tuple[str, list[dict[str, Any]]]] = []
        self.tokens_seen: set[str] = set()
        self._command_ids: dict[str, int] = {}
        self._pending: dict[str, Interaction] = {}

    # the bot's side ---------------------------------------------------------------------------

    async def login(self, client: discord.Client, token: str = TOKEN) -> None:
        """`client.login` against the recorder: /users/@me, the application, then the client's setup_hook."""
        self.attach(client)
        await client.login(token)

    def attach(self, client: discord.Client) -> None:
        http = client.http
        login = self.static_login()

        async def static_login(token: str) -> Any:
            return await login(http, token)

        http.static_login = static_login  # type: ignore[method-assign]

    def static_login(self) -> Callable[[discord.http.HTTPClient, str], Any]:
        """discord.py's HTTPClient.static_login with the recorder's session instead of aiohttp's."""
        recorder = self

        async def static_login(http: discord.http.HTTPClient, token: str) -> Any:
            http._HTTPClient__session = FakeSession(recorder)  # type: ignore[attr-defined]
            http._global_over = asyncio.Event()
            http._global_over.set()
            http.token = token
            try:
                return await http.request(Route("GET", "/users/@me"))
            except discord.HTTPException as e:
                http.token = None
                if e.status == 401:
                    raise discord.LoginFailure("Improper token has been passed.") from e
                raise

        return static_login

    def guild_create(self, client: discord.Client, roles: dict[int, str]) -> None:
        """GUILD_CREATE, as the gateway sends it on connect: the guild and its roles, so member roles resolve."""
        role_list = [{"id": str(self.guild_id), "name": "@everyone", "color": 0, "hoist": False, "icon": None,
                      "unicode_emoji": None, "position": 0, "permissions": "2248473465835073", "managed": False,
                      "mentionable": False, "flags": 0}]
        role_list += [{"id": str(rid), "name": name, "color": 0, "hoist": False, "icon": None, "unicode_emoji": None,
                       "position": i + 1, "permissions": "0", "managed": False, "mentionable": False, "flags": 0}
                      for i, (rid, name) in enumerate(roles.items())]
        channel = {"id": str(CHANNEL_ID), "type": 0, "name": "general", "position": 0, "permission_overwrites": [],
                   "nsfw": False, "parent_id": None, "last_message_id": None, "rate_limit_per_user": 0,
                   "topic": None, "flags": 0, "guild_id": str(self.guild_id)}
        payload = {
            "id": str(self.guild_id), "name": "Game Night", "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": str(OWNER_ID), "afk_channel_id": None, "afk_timeout": 300, "verification_level": 1,
            "default_message_notifications": 1, "explicit_content_filter": 0, "roles": role_list, "emojis": [],
            "features": [], "mfa_level": 0, "application_id": None, "system_channel_id": None,
            "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None, "description": None,
            "banner": None, "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
            "stickers": [], "joined_at": "2024-01-01T00:00:00+00:00", "large": False, "unavailable": False,
            "member_count": 3, "voice_states": [], "members": [], "channels": [channel], "threads": [],
            "presences": [], "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        }
        client._connection.parsers["GUILD_CREATE"](payload)

    # what a test sends ------------------------------------------------------------------------

    def feed(self, client: discord.Client, payload: dict[str, Any]) -> Interaction:
        """Deliver an INTERACTION_CREATE to the client, as its gateway would."""
        person_data = payload["member"]["user"] if "member" in payload else payload["user"]
        record = self._pending.pop(payload["id"])
        assert record.person.sid == person_data["id"]
        record.fed_at = time.monotonic()
        self.interactions[record.id] = record
        self.by_token[record.token] = record
        client._connection.parsers["INTERACTION_CREATE"](payload)
        return record

    def slash(self, person: Person, sub: str, *, dm: bool = False, **options: Any) -> dict[str, Any]:
        """`/fleet <sub> option:value ...`, typed by `person`: checked against the registered command."""
        command = self.commands.get("fleet")
        assert command is not None, "the bot never registered /fleet"
        group_name, _, leaf = sub.rpartition(" ")  # "sftp-key add": a subcommand of a subcommand group
        options_of = command.get("options", [])
        if group_name:
            group = next((o for o in options_of if o["name"] == group_name and o["type"] == 2), None)
            assert group is not None, f"/fleet has no subcommand group {group_name}"
            options_of = group.get("options", [])
        definition = next((o for o in options_of if o["name"] == leaf and o["type"] == 1), None)
        assert definition is not None, f"/fleet has no subcommand {sub}"
        known = {o["name"]: o for o in definition.get("options", [])}
        for name, opt in known.items():
            assert not opt.get("required") or name in options, f"/fleet {sub} needs {name}: Discord would not send it"
        sent, resolved = [], {"users": {}, "members": {}, "attachments": {}}
        for name, value in options.items():
            opt = known.get(name)
            assert opt is not None, f"/fleet {sub} has no option {name}"
            if opt["type"] == 6:  # a user: Discord sends the id and resolves the user
                assert isinstance(value, Person)
                resolved["users"][value.sid] = value.user()
                resolved["members"][value.sid] = value.member(with_user=False)
                value = value.sid
            elif opt["type"] == 11:  # a file: Discord uploads it first and sends its id and where it is
                assert isinstance(value, dict) and {"id", "filename", "size", "url"} <= value.keys()
                resolved["attachments"][value["id"]] = {"proxy_url": value["url"], **value}
                value = value["id"]
            elif opt["type"] == 4:
                assert isinstance(value, int)
                assert opt.get("min_value", value) <= value <= opt.get("max_value", value), f"{name}={value}"
            elif opt["type"] == 3:
                assert isinstance(value, str)
                assert opt.get("min_length", 0) <= len(value) <= opt.get("max_length", 6000), f"{name} length"
            sent.append({"type": opt["type"], "name": name, "value": value})
        data: dict[str, Any] = {"id": str(self._command_ids["fleet"]), "name": "fleet", "type": 1,
                                "options": [{"type": 1, "name": leaf, "options": sent}]}
        if group_name:
            data["options"] = [{"type": 2, "name": group_name, "options": data["options"]}]
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved["users"]:
            data["resolved"] = resolved if not dm else {"users": resolved["users"]}
        if resolved["attachments"]:
            data.setdefault("resolved", {})["attachments"] = resolved["attachments"]
        return self._interaction(2, person, data, dm=dm)

    def press(self, person: Person, message: Message, label: str, *, forge: bool = False) -> dict[str, Any]:
        """`person` presses the button labelled `label` on `message`.

        Discord shows an ephemeral message to one person only; `forge=True` builds the press anyway, to
        check the bot would refuse it (Discord itself would never deliver it)."""
        assert not message.deleted, "that message was deleted"
        button = next((b for b in message.buttons() if b.get("label") == label), None)
        assert button is not None, f"no button {label!r} on the message (it has {message.labels()})"
        assert not button.get("disabled"), f"the button {label!r} is disabled"
        dm = self._can_see(person, message, forge)
        data = {"custom_id": button["custom_id"], "component_type": 2}
        return self._interaction(3, person, data, dm=dm, message=message)

    def choose(self, person: Person, message: Message, label: str) -> dict[str, Any]:
        """`person` picks the option labelled `label` in a select menu on `message`."""
        assert not message.deleted, "that message was deleted"
        found = [(menu, option) for menu in message.selects() for option in menu.get("options", [])
                 if option.get("label") == label]
        assert len(found) == 1, f"no single option {label!r} on the message (it has {message.options()})"
        menu, option = found[0]
        assert not menu.get("disabled"), "the select menu is disabled"
        dm = self._can_see(person, message, forge=False)
        data = {"custom_id": menu["custom_id"], "component_type": 3, "values": [option["value"]]}
        return self._interaction(3, person, data, dm=dm, message=message)

    def _can_see(self, person: Person, message: Message, forge: bool) -> bool:
        """Whether `message` is in a DM; fails when `person` could not see it."""
        shown_to = message.interaction.person if message.interaction is not None else None
        if message.ephemeral and shown_to is not None and shown_to.id != person.id and not forge:
            raise AssertionError(f"{person.name} cannot see an ephemeral message shown to {shown_to.name}")
        dm = message.channel_id in self.dm_channels
        if dm:
            assert self.dm_channels[message.channel_id] == person.id, "that DM is someone else's"
        return dm

    def submit(self, person: Person, opened_by: Interaction, values: dict[str, str]) -> dict[str, Any]:
        """`person` fills in and submits the form `opened_by` answered with; `values` by field label."""
        modal = opened_by.modal
        assert modal is not None, "that interaction was not answered with a form"
        assert opened_by.person.id == person.id, "a form is shown to the person who opened it only"
        fields = dict(_text_inputs(modal))
        unknown = set(values) - set(fields)
        assert not unknown, f"the form has no field(s) {unknown} (it has {list(fields)})"
        rows = []
        for component in modal["components"]:
            label, text_input = _field_of(component)
            if text_input is None:
                continue
            value = values.get(label, text_input.get("value") or "")
            if text_input.get("required", True):
                assert value, f"{label} is required: Discord would not submit the form"
            if value:
                assert text_input.get("min_length", 0) <= len(value) <= text_input.get("max_length", 4000), \
                    f"{label}: {len(value)} characters is outside the field's limits"
            answer = {"type": 4, "custom_id": text_input["custom_id"], "value": value}
            rows.append({"type": 18, "component": answer} if component["type"] == 18 else
                        {"type": 1, "components": [answer]})
        data = {"custom_id": modal["custom_id"], "components": rows}
        dm = opened_by.payload.get("guild_id") is None
        return self._interaction(5, person, data, dm=dm, message=opened_by.source)

    def forged_submit(self, person: Person, custom_id: str, values: dict[str, str], *, dm: bool = False
                      ) -> dict[str, Any]:
        """A form submit for a form this bot process never showed (opened before a restart)."""
        rows = [{"type": 18, "component": {"type": 4, "custom_id": k, "value": v}} for k, v in values.items()]
        return self._interaction(5, person, {"custom_id": custom_id, "components": rows}, dm=dm)

    def _interaction(self, kind: int, person: Person, data: dict[str, Any], *, dm: bool,
                     message: Message | None = None) -> dict[str, Any]:
        iid = snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(APP_ID), "type": kind, "data": data, "token": token,
            "version": 1, "app_permissions": "2248473465835073", "locale": "en-US", "entitlements": [],
            "attachment_size_limit": 10485760,
        }
        if dm:
            channel_id = self.dm_channel_for(person)
            payload.update({
                "channel_id": str(channel_id), "user": person.user(), "context": 1,
                "channel": {"id": str(channel_id), "type": 1, "last_message_id": None, "flags": 0,
                            "recipients": [person.user()]},
                "authorizing_integration_owners": {"0": str(person.id)},
            })
        else:
            channel_id = CHANNEL_ID
            payload.update({
                "guild_id": str(self.guild_id), "guild_locale": "en-US", "member": person.member(), "context": 0,
                "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
                "channel_id": str(channel_id),
                "channel": {"id": str(channel_id), "type": 0, "guild_id": str(self.guild_id), "name": "general",
                            "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None,
                            "last_message_id": None, "rate_limit_per_user": 0, "topic": None, "flags": 0,
                            "permissions": "2248473465835073"},
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            })
        if message is not None:
            payload["message"] = message.payload()
        self._pending[payload["id"]] = Interaction(iid, token, kind, person, channel_id, payload, 0.0, source=message)
        return payload

    def dm_channel_for(self, person: Person) -> int:
        for channel, user in self.dm_channels.items():
            if user == person.id:
                return channel
        channel = snowflake()
        self.dm_channels[channel] = person.id
        return channel

    # waiting ----------------------------------------------------------------------------------

    async def until(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; "
                                     f"violations so far: {self.violations}")
            await asyncio.sleep(0.005)

    async def answered(self, record: Interaction, timeout: float = 5.0) -> Interaction:
        await self.until(lambda: record.initial is not None, timeout, f"an answer to interaction {record.id}")
        return record

    async def reply(self, record: Interaction, timeout: float = 60.0) -> Message:
        """The message that answers `record`, once it is no longer "thinking"."""
        await self.answered(record, min(timeout, 5.0))
        assert record.initial in (4, 5), f"answered with a {CALLBACK_TYPES.get(record.initial or 0)}, not a message"
        assert record.original is not None
        message = record.original
        await self.until(lambda: not message.loading, timeout, f"the reply to interaction {record.id}")
        return message

    async def drain(self) -> None:
        """Wait for every interaction fed to be answered, or for its 3 s to pass (then it is a violation)."""
        for record in list(self.interactions.values()):
            left = record.fed_at + self.deadline + 0.2 - time.monotonic()
            if record.initial is None and left > 0:
                try:
                    await self.until(lambda r=record: r.initial is not None, left)
                except AssertionError:
                    pass
            if record.initial is None:
                self.violate(f"interaction {record.id} ({_describe(record)}) was never answered: "
                             "the user sees 'This interaction failed'")

    def assert_clean(self) -> None:
        assert not self.violations, "Discord would have refused:\n- " + "\n- ".join(self.violations)

    def violate(self, text: str) -> None:
        self.violations.append(text)

    # the REST API -----------------------------------------------------------------------------

    def handle(self, method: str, url: str, kwargs: dict[str, Any]) -> FakeResponse:
        parts = urlsplit(url)
        base = urlsplit(Route.BASE).path
        assert parts.path.startswith(base), url
        path = parts.path[len(base):]
        query = dict(parse_qsl(parts.query))
        query.update({k: str(v) for k, v in (kwargs.get("params") or {}).items()})
        data = kwargs.get("data")
        if data is not None and not isinstance(data, str | bytes):
            self.violate(f"{method} {path}: multipart upload, but the bot has no files to send")
            return FakeResponse(400, {"message": "Unexpected multipart", "code": 50035})
        body = json.loads(data) if data else None
        auth = (kwargs.get("headers") or {}).get("Authorization", "")
        if auth.startswith("Bot "):
            self.tokens_seen.add(auth[4:])
        self.requests.append(Sent(time.monotonic(), method, path, body))
        try:
            status, answer = self._route(method, path, query, body, auth)
        except Refusal as r:
            return FakeResponse(r.status, {"message": str(r), "code": r.code})
        except Violation as v:
            self.violate(f"{method} {path}: {v}")
            return FakeResponse(v.status, {"message": str(v), "code": v.code})
        return FakeResponse(status, answer)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, auth: str) -> tuple[int, Any]:
        m = re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        if m and method == "POST":
            return self._callback(int(m[1]), m[2], body, query)
        m = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path)
        if m:
            self._require_app(int(m[1]))
            return self._webhook(method, m[2], m[3], body)
        if not auth.startswith("Bot "):
            raise Violation("a bot request without the bot token", 401, 0)
        if auth[4:] != self.valid_token:
            raise Refusal("401: Unauthorized", 401, 0)
        if (method, path) == ("GET", "/users/@me"):
            return 200, BOT_USER
        if (method, path) == ("GET", "/oauth2/applications/@me"):
            return 200, {"id": str(APP_ID), "name": "Fleet", "description": "", "icon": None, "bot_public": False,
                         "bot_require_code_grant": False, "owner": Person(OWNER_ID, "owner").user(), "team": None,
                         "verify_key": "0" * 64, "flags": 0, "summary": "", "rpc_origins": [], "bot": BOT_USER}
        m = re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path)
        if m and method == "PUT":
            self._require_app(int(m[1]))
            return 200, self._sync(m[2], body)
        if (method, path) == ("GET", "/gateway/bot"):
            return 200, {"url": "wss://gateway.discord.invalid", "shards": 1,
                         "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0,
                                                 "max_concurrency": 1}}
        if (method, path) == ("POST", "/users/@me/channels"):
            user = int(body["recipient_id"])
            channel = self.dm_channel_for(Person(user, "someone"))
            return 200, {"id": str(channel), "type": 1, "last_message_id": None, "flags": 0,
                         "recipients": [{"id": str(user), "username": "someone", "discriminator": "0",
                                         "global_name": None, "avatar": None}]}
        m = re.fullmatch(r"/channels/(\d+)/messages", path)
        if m and method == "POST":
            return 200, self._channel_message(int(m[1]), body)
        raise Violation(f"the stand-in does not know {method} {path}; the bot should not need it", 404, 0)

    def _require_app(self, app_id: int) -> None:
        if app_id != APP_ID:
            raise Violation(f"application {app_id} is not this bot's ({APP_ID})", 404, 10002)

    # interactions -----------------------------------------------------------------------------

    def _callback(self, iid: int, token: str, body: dict[str, Any], query: dict[str, str]) -> tuple[int, Any]:
        record = self.interactions.get(iid)
        if record is None or record.token != token:
            raise Violation("answer to an unknown interaction", 404, 10062)
        now = time.monotonic()
        kind = body.get("type")
        if record.initial is not None:
            raise Violation(f"a second initial response ({CALLBACK_TYPES.get(kind, kind)}) to interaction "
                            f"{iid}, already answered with a {CALLBACK_TYPES[record.initial]}", 400, 40060)
        if now - record.fed_at > self.deadline:
            raise Violation(f"initial response after {now - record.fed_at:.2f} s (Discord allows {self.deadline:g} s): "
                            f"{_describe(record)}", 404, 10062)
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7} if record.source else {4, 5}}
        if kind not in allowed.get(record.type, set()):
            why = " (a form cannot be answered with a form)" if (record.type, kind) == (5, 9) else ""
            raise Violation(f"a {CALLBACK_TYPES.get(kind, kind)} cannot answer a type-{record.type} "
                            f"interaction{why}: {_describe(record)}")
        data = body.get("data") or {}
        if kind in (4, 7):
            self._check_message(data, where=_describe(record), initial=kind == 4)
        elif kind == 5:
            extra = set(data) - {"flags"}
            if extra or (data.get("flags", 0) & ~EPHEMERAL):
                raise Violation(f"a deferred response carries only the ephemeral flag, not {data}")
        elif kind == 9:
            _check_modal(data)
        record.initial, record.initial_at = kind, now
        message: Message | None = None
        if kind in (4, 5):
            flags = data.get("flags", 0)
            message = Message(snowflake(), record.channel_id, ephemeral=bool(flags & EPHEMERAL), loading=kind == 5,
                              interaction=record, kind=20 if record.type == 2 else 0)
            if kind == 4:
                message.apply(data)
            self._store(message)
            record.original = message
        elif kind in (6, 7):
            assert record.source is not None
            message = self.messages.get(record.source.id, record.source)
            record.original = message
            if kind == 7:
                message.apply(data)
        elif kind == 9:
            record.modal = data
        if message is not None:
            self._check_secrets(message)
        response: dict[str, Any] = {"interaction": {
            "id": str(iid), "type": record.type, "activity_instance_id": None,
            "response_message_id": str(message.id) if message else None,
            "response_message_loading": kind == 5, "response_message_ephemeral": bool(message and message.ephemeral)}}
        if query.get("with_response") in ("1", "true", "True"):
            response["resource"] = {"type": kind}
            if message is not None and kind in (4, 5, 7):
                response["resource"]["message"] = message.payload()
            return 200, response
        return 204, None

    def _webhook(self, method: str, token: str, which: str | None, body: Any) -> tuple[int, Any]:
        record = self.by_token.get(token)
        if record is None:
            raise Violation("a webhook call with an unknown interaction token", 404, 10015)
        if time.monotonic() - record.fed_at > FOLLOWUP_WINDOW:
            raise Violation("the interaction token has expired (15 minutes)", 401, 50027)
        if record.initial is None:
            raise Violation(f"{method} before the initial response: {_describe(record)}", 404, 10015)
        if record.initial in (8, 9):
            raise Violation(f"no message to edit or follow up after a {CALLBACK_TYPES[record.initial]}: "
                            f"{_describe(record)}", 404, 10008)
        if which is None:
            if method != "POST":
                raise Violation(f"{method} on an interaction webhook", 405, 0)
            self._check_message(body, where=f"follow-up to {_describe(record)}", initial=True)
            original = record.original
            if original is not None and original.loading and original is not record.source:
                message = original  # the first follow-up after "thinking" becomes that message
            else:
                message = Message(snowflake(), record.channel_id, ephemeral=bool(body.get("flags", 0) & EPHEMERAL),
                                  interaction=record)
                self._store(message)
                record.followups.append(message)
            message.apply(body)
            self._check_secrets(message)
            return 200, message.payload()
        message = record.original if which == "@original" else self.messages.get(int(which))
        if message is None or message.deleted or (which != "@original" and message not in record.followups):
            raise Violation(f"{method} on a message the interaction does not have", 404, 10008)
        if method == "GET":
            return 200, message.payload()
        if method == "DELETE":
            message.deleted = True
            return 204, None
        if method != "PATCH":
            raise Violation(f"{method} on an interaction message", 405, 0)
        self._check_message(body, where=f"edit of {_describe(record)}", initial=False)
        message.apply(body)
        self._check_secrets(message)
        return 200, message.payload()

    def _channel_message(self, channel_id: int, body: dict[str, Any]) -> dict[str, Any]:
        user = self.dm_channels.get(channel_id)
        if user is not None and user in self.closed_dms:
            raise Refusal("Cannot send messages to this user", 403, 50007)
        self._check_message(body, where=f"message to channel {channel_id}", initial=True)
        message = Message(snowflake(), channel_id)
        message.apply(body)
        self._store(message)
        self.channel_messages.setdefault(channel_id, []).append(message)
        self._check_secrets(message)
        return message.payload()

    def _store(self, message: Message) -> None:
        self.messages[message.id] = message

    def dms_to(self, person: Person) -> list[Message]:
        return [m for c, u in self.dm_channels.items() if u == person.id for m in self.channel_messages.get(c, [])]

    # commands ---------------------------------------------------------------------------------

    def _sync(self, guild: str | None, body: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not isinstance(body, list) or len(body) > 100:
            raise Violation("a command sync is a list of at most 100 commands")
        out = []
        for command in body:
            _check_command(command)
            cid = self._command_ids.setdefault(command["name"], snowflake())
            registered = {**command, "id": str(cid), "application_id": str(APP_ID), "version": str(snowflake()),
                          "default_member_permissions": command.get("default_member_permissions"),
                          "guild_id": guild}
            out.append(registered)
        self.syncs.append((f"guild:{guild}" if guild else "global", body))
        if body:  # an empty sync clears a place the bot no longer uses
            self.commands = {c["name"]: c for c in out}
        return out

    # rules ------------------------------------------------------------------------------------

    def _check_message(self, data: dict[str, Any], where: str, initial: bool) -> None:
        mentions = data.get("allowed_mentions")
        if mentions is None or mentions.get("parse") != [] or mentions.get("users") or mentions.get("roles") \
                or mentions.get("replied_user"):
            raise Violation(f"mentions are not disabled ({mentions}): {where}")
        content = data.get("content") or ""
        if len(content) > 2000:
            raise Violation(f"content of {len(content)} characters (Discord allows 2000): {where}")
        if initial and not (content or data.get("embeds") or data.get("components") or data.get("poll")):
            raise Violation(f"an empty message: {where}")
        flags = data.get("flags", 0) or 0
        if flags & ~sum(MESSAGE_FLAGS):
            raise Violation(f"message flags {flags} are not allowed: {where}")
        if not initial and flags & EPHEMERAL:
            raise Violation(f"an edit cannot make a message ephemeral: {where}")
        if len(data.get("embeds") or []) > 10:
            raise Violation(f"more than 10 embeds: {where}")
        _check_components(data.get("components") or [], where)

    def _check_secrets(self, message: Message) -> None:
        if message.ephemeral:
            return
        text = message.text()
        for secret in self.secrets:
            if secret and secret in text:
                self.violate(f"a secret ({secret[:4]}…) in a message others can see: {message.content[:120]!r}")


def _describe(record: Interaction) -> str:
    data = record.payload.get("data", {})
    if record.type == 2:
        sub = (data.get("options") or [{}])[0].get("name", "")
        return f"/{data.get('name')} {sub} by {record.person.name}"
    if record.type == 3:
        return f"button {data.get('custom_id')} by {record.person.name}"
    return f"form {data.get('custom_id')} by {record.person.name}"


def _check_components(rows: list[dict[str, Any]], where: str) -> None:
    if len(rows) > 5:
        raise Violation(f"{len(rows)} action rows (Discord allows 5): {where}")
    ids: set[str] = set()
    for row in rows:
        if row.get("type") != 1:
            raise Violation(f"a top-level component of type {row.get('type')} in a classic message: {where}")
        children = row.get("components") or []
        if not 1 <= len(children) <= 5:
            raise Violation(f"an action row with {len(children)} components: {where}")
        for child in children:
            if child.get("type") == 3:
                _check_select(child, len(children), where)
                if child["custom_id"] in ids:
                    raise Violation(f"two components with custom_id {child['custom_id']}: {where}")
                ids.add(child["custom_id"])
                continue
            if child.get("type") != 2:
                continue
            label = child.get("label") or ""
            if len(label) > 80:
                raise Violation(f"button label {label!r} longer than 80: {where}")
            if child.get("style") == 5:
                if not child.get("url") or "custom_id" in child:
                    raise Violation(f"a link button needs a url and no custom_id: {where}")
                continue
            cid = child.get("custom_id") or ""
            if not 1 <= len(cid) <= 100:
                raise Violation(f"button custom_id of {len(cid)} characters: {where}")
            if cid in ids:
                raise Violation(f"two components with custom_id {cid}: {where}")
            ids.add(cid)


def _check_select(menu: dict[str, Any], in_row: int, where: str) -> None:
    """A string select menu, as Discord takes it in a message."""
    if in_row != 1:
        raise Violation(f"a select menu shares its action row with {in_row - 1} other component(s): {where}")
    if not 1 <= len(menu.get("custom_id") or "") <= 100:
        raise Violation(f"select menu custom_id must be 1-100 characters: {where}")
    if len(menu.get("placeholder") or "") > 150:
        raise Violation(f"select menu placeholder over 150 characters: {where}")
    options = menu.get("options") or []
    if not 1 <= len(options) <= 25:
        raise Violation(f"a select menu with {len(options)} options (Discord allows 1-25): {where}")
    low, high = menu.get("min_values", 1), menu.get("max_values", 1)
    if not (0 <= low <= 25 and 1 <= high <= 25 and low <= high <= len(options)):
        raise Violation(f"select menu values {low}-{high} for {len(options)} options: {where}")
    values: set[str] = set()
    for option in options:
        label, value = option.get("label") or "", option.get("value") or ""
        if not 1 <= len(label) <= 100 or not 1 <= len(value) <= 100:
            raise Violation(f"select option {label!r}: label and value must be 1-100 characters: {where}")
        if len(option.get("description") or "") > 100:
            raise Violation(f"select option {label!r}: description over 100 characters: {where}")
        if value in values:
            raise Violation(f"two select options with value {value!r}: {where}")
        values.add(value)


def _field_of(component: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    if component.get("type") == 18:
        inner = component.get("component") or {}
        return component.get("label", ""), inner if inner.get("type") == 4 else None
    if component.get("type") == 1:
        inner = (component.get("components") or [{}])[0]
        return inner.get("label", ""), inner if inner.get("type") == 4 else None
    return "", None


def _text_inputs(modal: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, ti) for label, ti in map(_field_of, modal.get("components", [])) if ti is not None]


def _check_modal(data: dict[str, Any]) -> None:
    title = data.get("title") or ""
    if not 1 <= len(title) <= 45:
        raise Violation(f"form title {title!r} has {len(title)} characters (Discord allows 1-45)")
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        raise Violation("form custom_id must be 1-100 characters")
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        raise Violation(f"a form with {len(components)} components (Discord allows 1-5)")
    ids: set[str] = set()
    for component in components:
        kind = component.get("type")
        if kind == 1:
            inner = component.get("components") or []
            if len(inner) != 1 or inner[0].get("type") != 4:
                raise Violation("an action row in a form holds exactly one text input")
            text_input, label = inner[0], inner[0].get("label") or ""
            if not 1 <= len(label) <= 45:
                raise Violation(f"text input label {label!r} has {len(label)} characters (Discord allows 1-45)")
        elif kind == 18:
            label = component.get("label") or ""
            if not 1 <= len(label) <= 45:
                raise Violation(f"form label {label!r} has {len(label)} characters (Discord allows 1-45)")
            if len(component.get("description") or "") > 100:
                raise Violation(f"form label description over 100 characters: {component.get('description')!r}")
            text_input = component.get("component") or {}
            if text_input.get("type") != 4:
                continue  # selects and the like: not used by this bot
            if text_input.get("label"):
                raise Violation("a text input inside a label component has no label of its own")
        elif kind == 10:
            continue
        else:
            raise Violation(f"component type {kind} is not allowed at the top of a form")
        cid = text_input.get("custom_id") or ""
        if not 1 <= len(cid) <= 100 or cid in ids:
            raise Violation(f"text input custom_id {cid!r} empty, too long or repeated")
        ids.add(cid)
        if text_input.get("style") not in (1, 2):
            raise Violation(f"text input style {text_input.get('style')}")
        lo, hi = text_input.get("min_length", 0), text_input.get("max_length", 4000)
        if not (0 <= lo <= 4000 and 1 <= hi <= 4000 and lo <= hi):
            raise Violation(f"text input lengths {lo}-{hi} (Discord allows min 0-4000, max 1-4000)")
        value = text_input.get("value") or ""
        if len(value) > hi:
            raise Violation(f"text input prefilled with {len(value)} characters, over its max {hi}")
        if len(text_input.get("placeholder") or "") > 100:
            raise Violation("text input placeholder over 100 characters")


def _check_command(command: dict[str, Any], depth: int = 0) -> None:
    name, description = command.get("name", ""), command.get("description", "")
    if not COMMAND_NAME.match(name) or name != name.lower():
        raise Violation(f"command or option name {name!r} is not allowed")
    if not 1 <= len(description) <= 100:
        raise Violation(f"description of {name!r} has {len(description)} characters (Discord allows 1-100)")
    options = command.get("options") or []
    if len(options) > 25:
        raise Violation(f"{name!r} has {len(options)} options (Discord allows 25)")
    seen_optional = False
    for option in options:
        if option.get("type") in (1, 2):
            if depth >= 2:
                raise Violation("subcommands nest two levels at most")
            _check_command(option, depth + 1)
            continue
        _check_command({"name": option.get("name"), "description": option.get("description")}, depth + 1)
        if option.get("required"):
            if seen_optional:
                raise Violation(f"required option {option['name']!r} after an optional one in {name!r}")
        else:
            seen_optional = True
