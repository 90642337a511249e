"""How to reach a running environment: its published ports as addresses (URLs for web roles)
and its JupyterLab URL. The SSH gateway adds its command and config block here when it lands."""

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
class Connection:
    host: str
    reachable: bool  # running with a container: the addresses answer
    ports: list[PublishedPort]
    jupyter_url: str


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
        ports=ports,
        jupyter_url=jupyter_url(environment),
    )
