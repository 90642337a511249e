"""Messages between the host agent and the control plane, defined once.

Plain Python, no Django: the agent and the server both import this module. Every message is a
JSON object with ``type``, ``id`` (unique per message) and ``v`` (protocol version). ``parse``
turns raw text into a typed message or raises ``ProtocolError`` with a reason; ``dump`` does the
reverse. See docs/agent-protocol.md for the conversation.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
MAX_GPUS = 64
MAX_CONTAINERS = 1024
MAX_IMAGES = 500
MAX_PORTS = 64
MAX_HEARTBEAT_INTERVAL = 3600  # seconds
MAX_KEYS = 256  # SSH keys that may open one environment


# A web terminal's bytes: this byte, the session's 16 bytes, then the data.
TERMINAL_FRAME = b"T"
TERMINAL_HEADER = 17
MAX_TERMINAL_INPUT = 64 * 1024  # bytes of keyboard input in one frame


def terminal_frame(session: str, data: bytes) -> bytes:
    return TERMINAL_FRAME + bytes.fromhex(session) + data


def terminal_unframe(frame: bytes) -> tuple[str, bytes] | None:
    """``(session, data)``, or None for bytes that are not a terminal frame."""
    if len(frame) < TERMINAL_HEADER or frame[:1] != TERMINAL_FRAME:
        return None
    return frame[1:TERMINAL_HEADER].hex(), frame[TERMINAL_HEADER:]


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``str(error)`` says why."""


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Message:
    type: ClassVar[str] = ""
    id: str = field(default_factory=new_id, kw_only=True)
    v: int = field(default=VERSION, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


# Payload pieces ----------------------------------------------------------------------------


@dataclass
class GPUInfo:
    """A GPU as the inventory describes it (static facts)."""

    uuid: str
    index: int
    name: str
    memory_total: int  # bytes
    driver_version: str = ""
    cuda_version: str = ""
    compute_capability: str = ""


@dataclass
class GPUSample:
    """A GPU's figures at one moment (heartbeat). A figure that is ``None`` is one the GPU or
    its driver cannot give (no temperature sensor, power on some boards, utilisation under MIG,
    ECC on consumer cards): unknown, which is not 0."""

    uuid: str
    utilization: float | None  # percent, 0-100
    memory_used: int  # bytes
    memory_total: int  # bytes
    temperature: float | None  # degrees Celsius
    power_draw: float | None  # watts
    power_limit: float | None  # watts
    ecc_errors: int | None = 0
    processes: int = 0


@dataclass
class ContainerInfo:
    """A container the agent manages (labelled ``remotegpu.managed=true``), as Docker lists it.
    ``environment`` is the environment id from its label; ``state`` is Docker's (created,
    running, restarting, paused, exited, dead)."""

    id: str
    name: str
    environment: str
    state: str
    image: str = ""
    created: int = 0  # Unix seconds


@dataclass
class PortSpec:
    """A container port published on a host port the server allocated."""

    container_port: int
    host_port: int
    protocol: str = "tcp"


@dataclass
class EnvironmentRun:
    """The payload of ``environment_run``: make this environment's container run."""

    environment_id: int
    organization_id: int
    image: str
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gpu_uuids: list[str] = field(default_factory=list)
    nano_cpus: int = 0
    memory: int = 0  # bytes
    pids_limit: int = 4096
    shm_size: int = 0  # bytes; 0: Docker's default
    ports: list[PortSpec] = field(default_factory=list)
    # {"username", "password", "serveraddress"} for a private registry; never logged.
    registry_auth: dict[str, str] = field(default_factory=dict)


@dataclass
class HostFacts:
    hostname: str
    cpu_model: str
    cpu_cores: int
    memory_total: int  # bytes
    disk_total: int  # bytes
    os: str
    kernel: str
    docker_version: str = ""
    agent_version: str = ""
    gpu_backend: str = ""
    # Seconds between this agent's heartbeats as it runs them (0: not said, older agents).
    heartbeat_interval: float = 0.0


# Agent → server ----------------------------------------------------------------------------


@dataclass
class Inventory(Message):
    """Everything static about the host; sent on connect and whenever it changes."""

    type: ClassVar[str] = "inventory"
    facts: HostFacts
    gpus: list[GPUInfo]
    containers: list[ContainerInfo] = field(default_factory=list)
    # False when Docker did not answer: ``containers`` is then unknown, not empty.
    containers_known: bool = False
    # The agent's clock when it listed the containers (a container started after it is absent).
    time: float = 0.0
    # Image references the host holds; placement prefers hosts that already have one.
    images: list[str] = field(default_factory=list)
    # The SSH gateway: its port (0: not serving) and its host key (OpenSSH public key line).
    ssh_port: int = 0
    ssh_host_key: str = ""


@dataclass
class Heartbeat(Message):
    """The host's figures, every ``heartbeat_interval`` seconds. ``time`` is the agent's clock
    (Unix seconds) and, with the host, identifies the sample: a resent heartbeat is stored once.
    """

    type: ClassVar[str] = "heartbeat"
    time: float
    cpu_percent: float
    memory_used: int
    memory_total: int
    disk_used: int
    disk_total: int
    load1: float = 0.0
    gpus: list[GPUSample] = field(default_factory=list)
    # Environments (ids) with an SSH or terminal session open now: idle auto-stop counts them.
    sessions: list[str] = field(default_factory=list)


@dataclass
class CommandAck(Message):
    """The agent has the command (it may already have run it: acks are idempotent)."""

    type: ClassVar[str] = "command_ack"
    command_id: str


@dataclass
class CommandResult(Message):
    type: ClassVar[str] = "command_result"
    command_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class CommandProgress(Message):
    """How far a running command has got (an image pull's layers and bytes); informative,
    never stored as the outcome."""

    type: ClassVar[str] = "command_progress"
    command_id: str
    progress: dict[str, Any] = field(default_factory=dict)


# Server → agent ----------------------------------------------------------------------------


@dataclass
class Welcome(Message):
    """First message after the handshake: who the agent is and how often to report."""

    type: ClassVar[str] = "welcome"
    host_id: int
    host_name: str
    heartbeat_interval: int


@dataclass
class Command(Message):
    """Something to do. ``deadline`` is Unix seconds; past it the server has given up."""

    type: ClassVar[str] = "command"
    command_id: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    deadline: float = 0.0


@dataclass
class GatewayAccess:
    """Who may open one environment through the SSH gateway: the SHA256 fingerprints (as
    ``ssh-keygen -l`` prints them) of the keys it accepts."""

    environment_id: int
    container: str
    fingerprints: list[str] = field(default_factory=list)
    # Ids of the users who may open a web terminal in it (sessions of others are ended).
    users: list[str] = field(default_factory=list)


@dataclass
class TenantAccess:
    """A whole-machine tenant: its Unix account on this host and the keys that open it."""

    allocation_id: int
    user: str
    fingerprints: list[str] = field(default_factory=list)


@dataclass
class AccessMap(Message):
    """The whole of the gateway's access, replacing what the agent had: sent after ``welcome``
    and whenever a key, a membership, an environment or an allocation changes. Sessions the
    new map no longer allows are ended."""

    type: ClassVar[str] = "access_map"
    environments: list[GatewayAccess] = field(default_factory=list)
    tenants: list[TenantAccess] = field(default_factory=list)


@dataclass
class TerminalOpen(Message):
    """Open a web terminal: a shell on a TTY in the environment's container. Its bytes travel
    as binary frames, ``TERMINAL_FRAME`` + the session's 16 bytes + data, both ways; the agent
    sends output while the server has acknowledged enough of it (``terminal_ack``)."""

    type: ClassVar[str] = "terminal_open"
    session: str  # 32 hex digits
    environment_id: int
    container: str
    user: str
    cols: int = 80
    rows: int = 24


@dataclass
class TerminalResize(Message):
    type: ClassVar[str] = "terminal_resize"
    session: str
    cols: int
    rows: int


@dataclass
class TerminalAck(Message):
    """The browser has shown ``bytes`` more of the output, in ``frames`` frames."""

    type: ClassVar[str] = "terminal_ack"
    session: str
    bytes: int
    frames: int = 1


@dataclass
class TerminalClose(Message):
    type: ClassVar[str] = "terminal_close"
    session: str


@dataclass
class TerminalEvent(Message):
    """Agent -> server: a terminal ``opened``, or ``closed`` (with why, and the shell's exit
    status when it ended by itself)."""

    type: ClassVar[str] = "terminal_event"
    session: str
    event: str
    message: str = ""
    exit_code: int | None = None


@dataclass
class Error(Message):
    """The server refused a message; the connection stays open."""

    type: ClassVar[str] = "error"
    reason: str
    ref: str = ""


COMMAND_KINDS = frozenset(
    {
        "ping",
        "collect_diagnostics",
        "image_pull",
        "environment_run",
        "environment_stop",
        "environment_restart",
        "environment_delete",
        "environment_logs",
        "container_remove",
        "tenant_create",
        "tenant_reclaim",
    }
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (
        Inventory,
        Heartbeat,
        CommandAck,
        CommandProgress,
        CommandResult,
        Welcome,
        Command,
        AccessMap,
        TerminalOpen,
        TerminalResize,
        TerminalAck,
        TerminalClose,
        TerminalEvent,
        Error,
    )
}
_NESTED = {
    (Inventory, "facts"): HostFacts,
    (Inventory, "gpus"): GPUInfo,
    (Heartbeat, "gpus"): GPUSample,
    (Inventory, "containers"): ContainerInfo,
    (EnvironmentRun, "ports"): PortSpec,
    (AccessMap, "environments"): GatewayAccess,
    (AccessMap, "tenants"): TenantAccess,
}
_LIMITS = {
    (Inventory, "gpus"): MAX_GPUS,
    (Heartbeat, "gpus"): MAX_GPUS,
    (Inventory, "containers"): MAX_CONTAINERS,
    (Inventory, "images"): MAX_IMAGES,
    (EnvironmentRun, "gpu_uuids"): MAX_GPUS,
    (EnvironmentRun, "ports"): MAX_PORTS,
    (Heartbeat, "sessions"): MAX_CONTAINERS,
    (AccessMap, "environments"): MAX_CONTAINERS,
    (GatewayAccess, "fingerprints"): MAX_KEYS,
    (GatewayAccess, "users"): MAX_KEYS,
    (AccessMap, "tenants"): MAX_CONTAINERS,
    (TenantAccess, "fingerprints"): MAX_KEYS,
}


_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool}


@functools.cache
def _scalar_type(expected: type | str) -> tuple[str, Any, bool]:
    """``"float | None"`` -> ("float", (int, float), True): the scalar and whether null is
    accepted."""
    text = expected if isinstance(expected, str) else expected.__name__
    parts = [part.strip() for part in text.split("|")]
    nullable = "None" in parts
    annotation = next((part for part in parts if part != "None"), text)
    return annotation, _SCALARS.get(annotation), nullable


def _coerce(cls, name: str, value: Any, expected: type | str) -> Any:
    """Check one scalar against its annotation; ints are accepted where floats are expected,
    null only where the annotation says ``| None``."""
    annotation, python_type, nullable = _scalar_type(expected)
    if python_type is None or (value is None and nullable):
        return value
    # Payload pieces (GPUSample, HostFacts) have no ``type``: they are named by their class.
    where = f"{getattr(cls, 'type', '') or cls.__name__}.{name}"
    if isinstance(value, bool) and annotation != "bool":
        raise ProtocolError(f"{where}: expected {annotation}, got bool")
    if not isinstance(value, python_type):
        raise ProtocolError(f"{where}: expected {annotation}, got {type(value).__name__}")
    if annotation == "int" and not -(2**63) <= value < 2**63:
        raise ProtocolError(f"{where}: out of the 64-bit range")
    if annotation == "float":
        # JSON has no NaN or infinity, but Python's json reads them (and 1e999 as infinity).
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = math.inf
        if not math.isfinite(value):
            raise ProtocolError(f"{where}: not a finite number")
    return value


@functools.cache
def _fields_of(cls) -> tuple[dict[str, Any], frozenset[str]]:
    # Looked up once per class: parsing runs for every heartbeat of every host.
    known = {f.name: f for f in fields(cls)}
    return known, frozenset(known) | {"type"}


def _where(cls) -> str:
    # Messages are named by their type, payload pieces (GPUSample, EnvironmentRun) by class.
    return getattr(cls, "type", "") or cls.__name__


def _build(cls, data: Any, owner=None):
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__}: expected an object")
    known, allowed = _fields_of(cls)
    unknown = data.keys() - allowed
    if unknown:
        raise ProtocolError(
            f"{getattr(cls, 'type', '') or cls.__name__}: unknown fields {sorted(unknown)}"
        )
    values = {}
    for name, spec in known.items():
        if name not in data:
            continue
        value = data[name]
        nested = _NESTED.get((cls, name))
        if nested is not None:
            if isinstance(value, list):
                limit = _LIMITS.get((cls, name))
                if limit is not None and len(value) > limit:
                    raise ProtocolError(f"{_where(cls)}.{name}: more than {limit} items")
                value = [_build(nested, item) for item in value]
            else:
                value = _build(nested, value)
        elif (cls, name) in _LIMITS:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ProtocolError(f"{_where(cls)}.{name}: expected a list of strings")
            if len(value) > _LIMITS[(cls, name)]:
                raise ProtocolError(f"{_where(cls)}.{name}: more than {_LIMITS[(cls, name)]} items")
        elif isinstance(spec.type, str) and spec.type.startswith(("dict", "list")):
            expected = dict if spec.type.startswith("dict") else list
            if not isinstance(value, expected):
                raise ProtocolError(f"{_where(cls)}.{name}: expected {expected.__name__}")
            if spec.type.startswith(("dict[str, str]", "list[str]")) and not all(
                isinstance(item, str) for item in (value.values() if expected is dict else value)
            ):
                raise ProtocolError(f"{_where(cls)}.{name}: expected strings")
        else:
            value = _coerce(cls, name, value, spec.type)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        missing = [
            n for n, f in known.items() if n not in values and f.default is f.default_factory
        ]
        raise ProtocolError(
            f"{getattr(cls, 'type', '') or cls.__name__}: missing fields {sorted(missing)}"
        ) from exc


def _refuse_constant(name: str):
    # Python's json reads NaN and Infinity, which are not JSON and which no database column
    # or JSON document stored in PostgreSQL accepts.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _holds_nul(data: Any) -> bool:
    """Whether any string (key or value) holds NUL, which PostgreSQL text cannot store."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse(raw: str | bytes) -> Message:
    """Raw text → message. Raises ``ProtocolError`` for anything malformed, oversized, unknown."""
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    if _holds_nul(data):
        raise ProtocolError("a message may not contain NUL characters")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    if data.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {data.get('v')!r}; this is {VERSION}")
    if not isinstance(data.get("id"), str) or not 0 < len(data["id"]) <= 64:
        raise ProtocolError("a message needs an 'id' string of 1 to 64 characters")
    return _build(MESSAGE_TYPES[kind], data)


def parse_payload(cls, data: Any):
    """A command's payload dict -> its dataclass (``EnvironmentRun``), checked like a message;
    ``ProtocolError`` says what is wrong."""
    return _build(cls, data)


def dump(message: Message) -> str:
    return json.dumps(message.to_dict(), separators=(",", ":"))
