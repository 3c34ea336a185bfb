"""TCP relays for tests. A proxy in front of PostgreSQL that a test can take down and bring back on the same
port: the service sees its database vanish (connections cut, new ones refused) and return, without the
database itself restarting. In front of an HTTP service it can also drop one answer: ``cut_next_response``
lets the request through and cuts the connection instead of forwarding what comes back. And a round-robin
balancer in front of several service instances."""

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class Proxy:
    """Listens on 127.0.0.1 and forwards each connection to PostgreSQL, over TCP or its unix socket."""

    def __init__(self, database_url: str) -> None:
        """``database_url``: a PostgreSQL DSN, or an ``http://host:port`` URL for an HTTP service."""
        self._upstream = database_url
        self._cut_next = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self) -> str:
        """The upstream DSN with its host and port replaced by the proxy's."""
        parts = urlsplit(self._upstream)
        userinfo = parts.netloc.rpartition("@")[0]
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def start(self) -> None:
        """Listen (again) on the same port as before, or on a free one the first time."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one, both sides."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Each handler ends once its sockets are gone; then the port is free to listen on again.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def cut_next_response(self) -> None:
        """The next bytes coming back from upstream, on any connection, are dropped and that connection cut
        (both sides): the request arrived and was served, its answer never does."""
        self._cut_next = True

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self._upstream)
        params = dict(parse_qsl(parts.query))
        host = params.get("host") or parts.hostname or "localhost"
        port = int(params.get("port") or parts.port or 5432)
        if host.startswith("/"):
            # libpq's convention: a host that is a directory holds the server's socket file.
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        writers = [client_writer]
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await self._open_upstream()
            writers.append(server_writer)
            self._writers.add(server_writer)
            pipes = [
                asyncio.ensure_future(self._pipe(client_reader, server_writer)),
                asyncio.ensure_future(self._pipe(server_reader, client_writer, upstream=True)),
            ]
            # Either side closing ends the pair: the other side is cut too.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the upstream refused: the client is cut below
        finally:
            for writer in writers:
                writer.transport.abort()
                self._writers.discard(writer)
            self._handlers.discard(handler)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if upstream and self._cut_next:
                    self._cut_next = False
                    return  # ends the pair: both sides are cut
                writer.write(data)
                await writer.drain()


class Balancer(Proxy):
    """Round-robin over service instances on 127.0.0.1: each client connection goes to the next instance that
    accepts it (one that refuses, stopped or restarting, is skipped, as a balancer's health check would), and
    is cut when that instance closes it. ``ports`` may be changed while it runs (a rolling restart)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__("http://127.0.0.1")  # the upstream is chosen per connection below
        self.ports = list(ports)
        self._turn = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ports = list(self.ports)
        self._turn += 1
        refused: OSError | None = None
        for n in range(len(ports)):
            try:
                return await asyncio.open_connection("127.0.0.1", ports[(self._turn + n) % len(ports)])
            except OSError as exc:
                refused = exc
        raise refused or OSError("no instance to balance over")
