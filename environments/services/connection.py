"""How to reach a running environment: SSH through its host's gateway (the command, an
``~/.ssh/config`` block, the host key to pin), its published ports as addresses (URLs for web
roles) and its JupyterLab URL."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import EnvironmentStatus, PortRole
from ..models import Environment
from .jupyter import jupyter_url

WEB_ROLES = frozenset({PortRole.HTTP, PortRole.JUPYTER})


@dataclass
class PublishedPort:
    container_port: int
    host_port: int
    role: str
    role_label: str
    name: str
    address: str  # host:port
    url: str  # http://host:port/ for web roles; "" otherwise


@dataclass
class SSHAccess:
    user: str  # env-<id>
    port: int
    command: str  # ssh -p PORT env-42@host
    config: str  # an ~/.ssh/config block
    host_key_fingerprint: str  # SHA256:..., as ssh-keygen -l prints it
    known_hosts: str  # a known_hosts line pinning the gateway's key


@dataclass
class Connection:
    host: str
    reachable: bool  # running with a container: the addresses answer
    ssh: SSHAccess | None  # None: the host serves no SSH gateway
    ports: list[PublishedPort]
    jupyter_url: str


def ssh_access(environment: Environment, address: str) -> SSHAccess | None:
    host = environment.host
    if host is None or not address or not host.ssh_port:
        return None
    user = f"env-{environment.pk}"
    alias = f"remotegpu-{environment.name}"
    target = address if host.ssh_port == 22 else f"[{address}]:{host.ssh_port}"
    return SSHAccess(
        user=user,
        port=host.ssh_port,
        command=f"ssh -p {host.ssh_port} {user}@{address}",
        config="\n".join(
            [
                f"Host {alias}",
                f"    HostName {address}",
                f"    Port {host.ssh_port}",
                f"    User {user}",
            ]
        ),
        host_key_fingerprint=host.ssh_host_key_fingerprint,
        known_hosts=f"{target} {host.ssh_host_key}" if host.ssh_host_key else "",
    )


def environment_connection(environment: Environment) -> Connection:
    host = environment.host
    address = (host.address or host.hostname) if host is not None else ""
    ports = []
    if address:
        for port in environment.ports.all():
            where = f"{address}:{port.host_port}"
            ports.append(
                PublishedPort(
                    container_port=port.container_port,
                    host_port=port.host_port,
                    role=port.role,
                    role_label=str(port.get_role_display()),
                    name=port.name,
                    address=where,
                    url=f"http://{where}/" if port.role in WEB_ROLES else "",
                )
            )
    return Connection(
        host=address,
        reachable=environment.status == EnvironmentStatus.RUNNING,
        ssh=ssh_access(environment, address),
        ports=ports,
        jupyter_url=jupyter_url(environment),
    )
