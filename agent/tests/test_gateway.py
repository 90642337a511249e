"""The SSH gateway's parts that need no container: the host key, the access map and what it
ends, window sizes, and the SFTP helper's confinement (a real chroot, so as root)."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import stat

import pytest
from asyncssh.sftp import SFTPAttrs

from remotegpu_agent import gateway
from remotegpu_agent.gateway import Gateway, SFTPHelper, _clamped, _Unpickler
from remotegpu_agent.protocol import GatewayAccess


class FakeDocker:
    async def container_pid(self, container):
        return 0


def test_the_host_key_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "state" / "ssh_host_ed25519_key"
    first = Gateway(FakeDocker(), path)
    again = Gateway(FakeDocker(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint.startswith("SHA256:")
    assert first.public_key.startswith("ssh-ed25519 ")


class FakeConn:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def _connection(gw, username, fingerprint):
    connection = gateway._Connection(gw)
    connection.conn = FakeConn()
    connection.username, connection.fingerprint = username, fingerprint
    gw.connections.add(connection)
    return connection


def test_a_new_map_ends_exactly_the_connections_it_no_longer_allows(tmp_path):
    gw = Gateway(FakeDocker(), tmp_path / "key")
    gw.set_access(
        [
            GatewayAccess(environment_id=1, container="a", fingerprints=["SHA256:k1", "SHA256:k2"]),
            GatewayAccess(environment_id=2, container="b", fingerprints=["SHA256:k1"]),
        ]
    )
    stays = _connection(gw, "env-1", "SHA256:k1")
    key_removed = _connection(gw, "env-1", "SHA256:k2")
    environment_gone = _connection(gw, "env-2", "SHA256:k1")
    assert gw.sessions() == [1, 2]

    ended = gw.set_access(
        [GatewayAccess(environment_id=1, container="a", fingerprints=["SHA256:k1"])]
    )

    assert ended == 2
    assert not stays.conn.closed
    assert key_removed.conn.closed
    assert environment_gone.conn.closed
    assert gw.sessions() == [1]


def test_unknown_users_and_keys_are_refused(tmp_path):
    gw = Gateway(FakeDocker(), tmp_path / "key")
    gw.set_access([GatewayAccess(environment_id=1, container="a", fingerprints=[gw.fingerprint])])
    connection = gateway._Connection(gw)
    assert connection.begin_auth("root") is True  # a key is asked of everyone
    assert connection.password_auth_supported() is False
    assert connection.validate_public_key("root", gw.key) is False
    assert connection.validate_public_key("env-2", gw.key) is False
    assert connection.validate_public_key("env-1", gw.key) is True
    assert connection.username == "env-1"


def test_forwarding_is_only_to_the_containers_own_loopback(tmp_path):
    import asyncssh

    gw = Gateway(FakeDocker(), tmp_path / "key")
    gw.set_access([GatewayAccess(environment_id=1, container="a", fingerprints=["SHA256:k"])])
    connection = _connection(gw, "env-1", "SHA256:k")
    for host, port in (("10.0.0.1", 80), ("example.org", 22), ("localhost", 0)):
        with pytest.raises(asyncssh.ChannelOpenError):
            connection.connection_requested(host, port, "", 0)
    outsider = _connection(gw, "env-1", "SHA256:other")
    with pytest.raises(asyncssh.ChannelOpenError):
        outsider.connection_requested("localhost", 8888, "", 0)
    allowed = connection.connection_requested("localhost", 8888, "", 0)
    assert asyncio.iscoroutine(allowed)
    allowed.close()


@pytest.mark.parametrize(
    ("size", "expected"),
    [((80, 24), (80, 24)), ((0, 24), (0, 0)), ((100_000, 24), (0, 0)), ((80, 0), (0, 0))],
)
def test_window_sizes_that_make_no_sense_are_ignored(size, expected):
    assert _clamped(*size) == expected


def test_the_helpers_answers_may_hold_only_known_types():
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError):
        _Unpickler(io.BytesIO(pickle.dumps(("ok", Evil())))).load()
    assert _Unpickler(io.BytesIO(pickle.dumps(("ok", os.stat("/"))))).load()[0] == "ok"


@pytest.fixture
def container_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "workspace").mkdir()
    (root / "etc" / "hostname").write_text("inside\n")
    # Links that would leave the tree if resolved on the host.
    (root / "workspace" / "absolute").symlink_to("/etc/hostname")
    (root / "workspace" / "relative").symlink_to("../../../../../../etc/hostname")
    return root


def test_the_sftp_helper_resolves_every_path_inside_its_root(container_root):
    async def scenario():
        helper = await SFTPHelper.start(root=str(container_root))
        try:
            cwd = await helper.call("realpath", b".")
            seen = {}
            for name in (b"/workspace/absolute", b"/workspace/relative", b"/../../etc/hostname"):
                fd = await helper.open(name, 1, SFTPAttrs())  # FXF_READ
                try:
                    seen[name] = os.pread(fd, 100, 0)
                finally:
                    os.close(fd)
            listing = sorted(n.filename for n in await helper.call("scandir", b"/workspace"))
            with pytest.raises(FileNotFoundError):
                await helper.call("stat", b"/etc/passwd")  # the host has one; the root has not
            with pytest.raises(Exception, match="not supported"):
                await helper.call("chroot", b"/")
            return cwd, seen, listing
        finally:
            helper.close()
            await helper.process.wait()  # reaped before the loop closes

    cwd, seen, listing = asyncio.run(scenario())
    assert cwd == b"/workspace"
    assert set(seen.values()) == {b"inside\n"}
    assert listing == [b".", b"..", b"absolute", b"relative"]


def test_an_sftp_helper_for_a_missing_root_says_why(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")

    async def scenario():
        with pytest.raises(OSError, match="cannot open the file system"):
            await SFTPHelper.start(root=str(tmp_path / "absent"))

    asyncio.run(scenario())
