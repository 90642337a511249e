"""The agent's run loop: one outbound WebSocket to the control plane, kept up for good.

One connection (a *session*) goes: handshake with ``Authorization: Bearer <credential>`` ->
``welcome`` from the server -> ``inventory`` -> a ``heartbeat`` every interval (and the
inventory again whenever it changes), while ``command`` messages are acknowledged at once, run
in a worker thread and answered with a ``command_result``. When the connection drops, the agent
waits (jittered exponential backoff, 1 s to 60 s) and dials again. A refused credential (HTTP
401/403 at the handshake, close code 4401/4403 later) ends the agent with status 3: retrying
would only hammer the server with a revoked key. See docs/agent-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from . import __version__, commands, host
from .containers import DockerDriver, DockerUnavailable
from .dockerexec import DockerAPI
from .gateway import Gateway
from .gpu import GPUBackend
from .protocol import (
    MAX_MESSAGE_BYTES,
    AccessMap,
    Command,
    CommandAck,
    CommandProgress,
    CommandResult,
    Error,
    Heartbeat,
    Inventory,
    Message,
    ProtocolError,
    TerminalAck,
    TerminalClose,
    TerminalOpen,
    TerminalResize,
    Welcome,
    dump,
    parse,
    terminal_unframe,
)
from .state import AgentConfig, AgentStatus, CommandStore, StateDir, iso_now
from .terminal import Terminals

logger = logging.getLogger(__name__)

EXIT_STOPPED = 0
EXIT_CONFIG = 2
EXIT_REFUSED = 3
REFUSED_HTTP_STATUSES = frozenset({401, 403})
REFUSED_CLOSE_CODES = frozenset({4401, 4403})
WELCOME_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
# After a Docker event, the inventory waits for this long a quiet spell (at most the second
# figure) so that it lists containers once a burst of events is over, not in its middle.
EVENTS_QUIET_S = 0.15
EVENTS_SETTLE_MAX_S = 1.0
# How long a report waits for Docker's container list before it goes with the last one.
LISTING_WAIT_S = 2.0


@dataclass
class ContainerSnapshot:
    """Docker's list of the managed containers and of the images, made at ``time`` (agent
    clock); ``known`` is False until Docker answered."""

    known: bool = False
    time: float = 0.0
    containers: list = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def apply(self, inventory: Inventory) -> None:
        inventory.containers_known = self.known
        inventory.time = self.time
        inventory.containers = list(self.containers)
        inventory.images = list(self.images)


def backoff_delays(
    initial: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: 1, then 1-2, 2-4, ... up to 30-60.

    The jitter (a random point in the upper half of each step) keeps a fleet of agents that lost
    the server at the same moment from dialling back in lockstep.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        ceiling = min(cap, initial * 2 ** min(attempt, 32))
        yield rng.uniform(max(initial, ceiling / 2), ceiling)
        attempt += 1


class _Refused(Exception):
    """The server will not take this host's credential."""


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        state: StateDir,
        backend: GPUBackend,
        *,
        heartbeat_interval: float | None = None,
        disk_path: str = "/",
        log_file: Path | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        docker: DockerDriver | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.backend = backend
        self.heartbeat_interval = heartbeat_interval
        self.disk_path = disk_path
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.docker = docker
        self.gateway = gateway
        # Web terminals (with Docker); who may open what comes with the gateway's access map.
        self.terminals = (
            Terminals(DockerAPI(), self._send_frame, self._send) if docker is not None else None
        )
        self.terminal_users: dict[int, frozenset[str]] = {}
        self.context = commands.CommandContext(
            backend, disk_path=disk_path, log_file=log_file, docker=docker
        )
        self.status = AgentStatus(pid=os.getpid(), started_at=iso_now(), server=config.server_url)
        self.store: CommandStore | None = None
        self._connection: ClientConnection | None = None
        self._send_lock: asyncio.Lock | None = None
        self._running: dict[str, asyncio.Task] = {}
        self._changing_containers = 0  # container-changing commands in flight
        self._listing: asyncio.Future | None = None  # Docker's container list, under way
        self._snapshot = ContainerSnapshot()  # the latest list Docker gave
        self._listing_slow = False
        self._relist = 0.0  # when a container-changing command ended (0: none pending)
        self._main: asyncio.Task | None = None
        self._stop_requested = False
        self._wake: asyncio.Event | None = None
        self._events_stop = threading.Event()

    # Status ----------------------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.status, name, value)
        try:
            self.state.save_status(self.status)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.state.status_path, exc)

    # Lifecycle -------------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> int:
        """Run until stopped (status 0), refused (3) or misconfigured (2)."""
        loop = asyncio.get_running_loop()
        self.state.ensure()
        self.store = CommandStore(self.state.commands_path)
        interrupted = self.store.fail_interrupted(commands.RERUNNABLE)
        if interrupted:
            logger.warning("%d command(s) were running when the agent stopped", interrupted)
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        if self.docker is not None:
            threading.Thread(
                target=self._watch_docker, args=(loop,), name="docker-events", daemon=True
            ).start()
        await self._start_gateway()
        self._main = asyncio.ensure_future(self._connect_forever())
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for signum in signals:
            loop.add_signal_handler(signum, self.stop)
        self._set_status(state="starting")
        exit_status = EXIT_STOPPED
        try:
            exit_status = await self._main
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise
            logger.info("stopped")
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            for task in list(self._running.values()):
                task.cancel()
            if self.gateway is not None:
                await self.gateway.close()
            self._events_stop.set()
            self.store.close()
            self._set_status(
                connected=False,
                connected_since=None,
                state="refused" if exit_status == EXIT_REFUSED else "stopped",
            )
        return exit_status

    async def _start_gateway(self) -> None:
        if self.gateway is None:
            return
        try:
            await self.gateway.start()
        except OSError as exc:  # the port is taken: run on, and say so (no SSH on this host)
            message = f"the SSH gateway cannot listen on port {self.gateway.port}: {exc}"
            logger.error("%s", message)
            self._set_status(last_error=message)
            self.gateway = None

    def stop(self) -> None:
        """Close the connection and end ``run`` with status 0 (SIGTERM and SIGINT call this)."""
        self._stop_requested = True
        if self._main is not None:
            self._main.cancel()

    async def _connect_forever(self) -> int:
        delays = backoff_delays(self.initial_backoff, self.max_backoff)
        while True:
            self._set_status(state="connecting")
            try:
                await self._dial()
            except _Refused as exc:
                message = (
                    f"{exc}: the host's credential was revoked or is not valid. Join again with "
                    "a new token: remotegpu-agent join --server URL --token TOKEN"
                )
                logger.error("%s", message)
                self._set_status(last_error=message)
                return EXIT_REFUSED
            except InvalidURI as exc:
                logger.error("cannot dial %s: %s", self.config.websocket_url, exc)
                self._set_status(last_error=str(exc))
                return EXIT_CONFIG
            except (OSError, asyncio.TimeoutError, WebSocketException, ProtocolError) as exc:
                error = self._describe(exc)
            if self.status.connected:  # this attempt got as far as a welcome: start over
                delays = backoff_delays(self.initial_backoff, self.max_backoff)
            delay = next(delays)
            logger.warning("%s; dialling again in %.1f s", error, delay)
            self._set_status(
                connected=False, connected_since=None, state="waiting", last_error=error
            )
            await asyncio.sleep(delay)

    @staticmethod
    def _describe(exc: BaseException) -> str:
        if isinstance(exc, InvalidStatus):
            return f"the server answered the handshake with HTTP {exc.response.status_code}"
        if isinstance(exc, ConnectionClosed):
            return f"connection lost ({exc})"
        if isinstance(exc, asyncio.TimeoutError):
            return "the server did not answer in time"
        return f"cannot reach the server ({type(exc).__name__}: {exc})"

    # One connection --------------------------------------------------------------------------

    async def _dial(self) -> None:
        """One connection, start to end; ``_Refused`` if the server will not take the key."""
        try:
            async with connect(
                self.config.websocket_url,
                additional_headers={"Authorization": f"Bearer {self.config.credential}"},
                user_agent_header=f"remotegpu-agent/{__version__}",
                open_timeout=OPEN_TIMEOUT,
                max_size=MAX_MESSAGE_BYTES,
            ) as connection:
                await self._session(connection)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in REFUSED_HTTP_STATUSES:
                raise _Refused(f"the server refused the handshake with HTTP {status}") from exc
            raise
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code in REFUSED_CLOSE_CODES:
                reason = f" ({exc.rcvd.reason})" if exc.rcvd.reason else ""
                raise _Refused(
                    f"the server closed the connection with code {exc.rcvd.code}{reason}"
                ) from exc
            raise

    async def _session(self, connection: ClientConnection) -> None:
        self._connection = connection
        try:
            welcome = await asyncio.wait_for(self._welcome(connection), WELCOME_TIMEOUT)
            interval = self.heartbeat_interval or welcome.heartbeat_interval
            logger.info(
                "connected to %s as %s (host %d); heartbeat every %s s",
                self.config.websocket_url,
                welcome.host_name,
                welcome.host_id,
                interval,
            )
            self._set_status(
                connected=True,
                connected_since=iso_now(),
                state="connected",
                last_error="",
                heartbeat_interval=interval,
            )
            tasks = [
                asyncio.ensure_future(self._receive(connection)),
                asyncio.ensure_future(self._report(interval)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # re-raises what ended the session
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._connection = None
            if self.terminals is not None:  # their browsers were reached through this socket
                self.terminals.close_all("the host lost its connection to the server")

    async def _receive_message(self, connection: ClientConnection) -> Message | None:
        raw = await connection.recv()
        if isinstance(raw, bytes) and self.terminals is not None:
            framed = terminal_unframe(raw)
            if framed is not None:
                self.terminals.input(*framed)
                return None
        try:
            return parse(raw)
        except ProtocolError as exc:
            logger.warning("ignored a message from the server: %s", exc)
            return None

    async def _welcome(self, connection: ClientConnection) -> Welcome:
        while True:
            message = await self._receive_message(connection)
            if isinstance(message, Welcome):
                return message
            if isinstance(message, Error):
                logger.warning("the server refused a message: %s", message.reason)
            elif message is not None:
                raise ProtocolError(f"expected welcome, got {message.type}")

    async def _receive(self, connection: ClientConnection) -> None:
        while True:
            message = await self._receive_message(connection)
            if isinstance(message, Command):
                await self._on_command(message)
            elif isinstance(message, AccessMap):
                self._on_access_map(message)
            elif isinstance(message, TerminalOpen | TerminalResize | TerminalAck | TerminalClose):
                await self._on_terminal(message)
            elif isinstance(message, Error):
                logger.warning("the server refused message %s: %s", message.ref, message.reason)
            elif message is not None:
                logger.warning("ignored an unexpected %s message", message.type)

    def _on_access_map(self, message: AccessMap) -> None:
        ended = 0
        if self.gateway is not None:
            ended += self.gateway.set_access(message.environments, message.tenants)
        self.terminal_users = {
            entry.environment_id: frozenset(entry.users) for entry in message.environments
        }
        if self.terminals is not None:
            ended += self.terminals.enforce(self.terminal_users)
        logger.info(
            "access: %d environment(s), %d tenant(s)%s",
            len(message.environments),
            len(message.tenants),
            f"; {ended} session(s) ended" if ended else "",
        )

    async def _on_terminal(self, message) -> None:
        if self.terminals is None:
            return
        if isinstance(message, TerminalOpen):
            users = self.terminal_users.get(message.environment_id)
            await self.terminals.open(message, users)
        elif isinstance(message, TerminalResize):
            await self.terminals.resize(message.session, message.cols, message.rows)
        elif isinstance(message, TerminalAck):
            self.terminals.ack(message.session, message.bytes, message.frames)
        else:
            self.terminals.close(message.session)

    async def _send_frame(self, frame: bytes) -> bool:
        """A binary frame (a terminal's output) on the current connection."""
        connection = self._connection
        if connection is None:
            return False
        async with self._send_lock:
            await connection.send(frame)
        return True

    async def _send(self, message: Message) -> bool:
        """Send on the current connection; False when there is none."""
        connection = self._connection
        if connection is None:
            return False
        async with self._send_lock:
            await connection.send(dump(message))
        return True

    # Reports ---------------------------------------------------------------------------------

    def _watch_docker(self, loop: asyncio.AbstractEventLoop) -> None:
        """Docker's events for managed containers wake the report loop, so a container that
        stops, dies or vanishes reaches the server at once rather than at the next tick."""
        while not self._events_stop.is_set():
            try:
                for _event in self.docker.events(self._events_stop):
                    loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the event loop closed: the agent is stopping
                return
            except Exception as exc:  # dockerd restarting, or absent: wake once, retry later
                logger.debug("docker events: %s", exc)
                try:
                    loop.call_soon_threadsafe(self._wake.set)
                except RuntimeError:
                    return
            self._events_stop.wait(5.0)

    def _list_containers(self) -> ContainerSnapshot:
        """What Docker says runs here (in a worker thread); unknown when it does not answer."""
        try:
            listed_at = time.time()
            return ContainerSnapshot(
                known=True,
                time=listed_at,
                containers=self.docker.managed_containers(),
                images=self.docker.image_tags(),
            )
        except DockerUnavailable as exc:
            logger.debug("%s", exc)
        except Exception as exc:  # a list call that failed says nothing about containers
            logger.warning("cannot list containers: %s", exc)
        return ContainerSnapshot()

    async def _container_snapshot(self, wait: float) -> ContainerSnapshot:
        """The containers as listed now or, when Docker is slow to answer, as last listed.

        Listing runs on its own: a Docker call that hangs must not hold the heartbeat back (the
        server would take the host for offline). One listing at a time; a report takes its
        result on the first tick after it ends."""
        if self.docker is None:
            return ContainerSnapshot()
        if self._listing is None:
            self._listing = asyncio.ensure_future(asyncio.to_thread(self._list_containers))
        done, _ = await asyncio.wait({self._listing}, timeout=wait)
        if done:
            self._snapshot = self._listing.result()
            self._listing = None
            self._listing_slow = False
        elif not self._listing_slow:
            self._listing_slow = True
            logger.warning("Docker is slow to list containers: reporting the last list it gave")
        return self._snapshot

    def _collect(self, interval: float) -> tuple[Inventory, Heartbeat]:
        """Inventory and heartbeat from the same moment (run in a worker thread), without the
        containers (``_container_snapshot`` adds them). The inventory says how often
        heartbeats come, so the server judges silence by this agent's pace."""
        facts = host.host_facts(self.disk_path, self.backend.name)
        facts.heartbeat_interval = float(interval)
        inventory = Inventory(facts=facts, gpus=self.backend.inventory())
        figures = host.host_sample(self.disk_path)
        heartbeat = Heartbeat(time=time.time(), gpus=self.backend.sample(), **asdict(figures))
        return inventory, heartbeat

    def _gateway_figures(self, inventory: Inventory, heartbeat: Heartbeat) -> None:
        """The gateway's port and key, and the environments with an SSH or terminal session
        open (read here, on the event loop, where the sessions change)."""
        open_in = set(self.terminals.environments()) if self.terminals is not None else set()
        if self.gateway is not None:
            inventory.ssh_port = self.gateway.port
            inventory.ssh_host_key = self.gateway.public_key
            open_in.update(self.gateway.sessions())
        heartbeat.sessions = [str(environment) for environment in sorted(open_in)]

    @staticmethod
    def inventory_digest(inventory: Inventory) -> str:
        content = {
            key: value for key, value in inventory.to_dict().items() if key not in ("id", "time")
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    async def _report(self, interval: float) -> None:
        """Inventory first, then a heartbeat every ``interval``; the inventory again on change."""
        loop = asyncio.get_running_loop()
        sent_digest = ""
        next_at = loop.time()
        while True:
            due = loop.time() >= next_at
            try:
                (inventory, heartbeat), snapshot = await asyncio.gather(
                    asyncio.to_thread(self._collect, interval),
                    self._container_snapshot(min(interval, LISTING_WAIT_S)),
                )
            except Exception as exc:  # a broken sensor must not end the session: try next tick
                logger.exception("cannot read the host's figures")
                self._set_status(last_error=f"cannot read the host's figures: {exc}")
            else:
                snapshot.apply(inventory)
                self._gateway_figures(inventory, heartbeat)
                digest = self.inventory_digest(inventory)
                # After a container-changing command the server gets the next list even when
                # it reads as the last one (a container made and removed in between): only a
                # list made after the command tells it what is gone.
                relisted = bool(self._relist) and snapshot.time > self._relist
                if digest != sent_digest or relisted:
                    if relisted:
                        self._relist = 0.0
                    await self._send(inventory)
                    sent_digest = digest
                    logger.info(
                        "inventory sent: %d GPU(s), %d container(s)",
                        len(inventory.gpus),
                        len(inventory.containers),
                    )
                if due:
                    await self._send(heartbeat)
                    self._set_status(last_heartbeat_at=iso_now())
            if due:
                next_at = max(next_at + interval, loop.time())
            # Sleep until the next heartbeat, or until Docker says a container changed.
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_at - loop.time()))
                await self._settle()

    async def _settle(self) -> None:
        """Let a burst of Docker events end before listing containers: creating and starting
        one container makes several events, and listing while dockerd is still starting it
        slows the start down (by a fifth, measured). Waits until no container-changing command
        runs and events have stopped for ``EVENTS_QUIET_S``, at most ``EVENTS_SETTLE_MAX_S``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + EVENTS_SETTLE_MAX_S
        while loop.time() < until:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(EVENTS_QUIET_S, until - loop.time()))
            except asyncio.TimeoutError:
                if not self._changing_containers:
                    return

    # Commands --------------------------------------------------------------------------------

    async def _on_command(self, command: Command) -> None:
        """Ack at once, every time; run a command once, whatever the number of resends."""
        await self._send(CommandAck(command_id=command.command_id))
        stored = self.store.get(command.command_id)
        if stored is not None:
            if stored.finished:
                logger.info("command %s resent: sending its result again", command.command_id)
                await self._send(
                    CommandResult(
                        command_id=stored.command_id,
                        ok=stored.ok,
                        result=stored.result,
                        error=stored.error,
                    )
                )
            # Otherwise it is running now, and its result goes out when it finishes.
            return
        self.store.start(command.command_id, command.kind)
        logger.info("command %s (%s) started", command.command_id, command.kind)
        if command.kind in commands.CONTAINER_CHANGING:
            self._changing_containers += 1
        self._running[command.command_id] = asyncio.ensure_future(self._execute(command))

    def _progress_sender(self, command_id: str):
        """A callable for the handler's worker thread: each call sends a ``command_progress``
        on the event loop; a progress report lost with the connection is not resent."""
        loop = asyncio.get_running_loop()

        def send(progress: dict[str, Any]) -> None:
            message = CommandProgress(command_id=command_id, progress=progress)
            future = asyncio.run_coroutine_threadsafe(self._send(message), loop)
            future.add_done_callback(lambda done: done.cancelled() or done.exception())

        return send

    async def _execute(self, command: Command) -> None:
        try:
            outcome = await commands.execute(
                command.kind,
                command.payload,
                self.context,
                command.deadline,
                progress=self._progress_sender(command.command_id),
            )
            result = CommandResult(
                command_id=command.command_id,
                ok=outcome.ok,
                result=outcome.result,
                error=outcome.error,
            )
            if len(dump(result)) > MAX_MESSAGE_BYTES:
                result.ok, result.result = False, {}
                result.error = f"the result exceeds {MAX_MESSAGE_BYTES} bytes"
            self.store.finish(command.command_id, result.ok, result.result, result.error)
            logger.info(
                "command %s %s%s",
                command.command_id,
                "succeeded" if result.ok else "failed",
                f": {result.error}" if result.error else "",
            )
            try:
                sent = await self._send(result)
            except ConnectionClosed:
                sent = False
            if not sent:
                logger.info("result of %s kept until the server asks again", command.command_id)
        finally:
            self._running.pop(command.command_id, None)
            if command.kind in commands.CONTAINER_CHANGING:
                self._changing_containers -= 1
                self._relist = time.time()
                self._wake.set()
