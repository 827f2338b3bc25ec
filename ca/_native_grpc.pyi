# The CA's native mTLS transport (native/ca_grpc/src/lib.rs), as ca.native_port uses it.

class Call:
    id: int
    method: str
    peer: str
    peer_der: bytes | None
    metadata: list[tuple[str, str]]
    message: bytes
    def send(self, message: bytes) -> bool: ...
    def answer(self, message: bytes) -> None: ...
    def finish(self, code: int, message: str) -> None: ...

class Server:
    def __init__(
        self,
        fd: int,
        chain_pem: bytes,
        key_pem: bytes,
        bundle_pem: bytes,
        *,
        handshake_timeout: float,
        keepalive_interval: float,
        keepalive_timeout: float,
        max_connections: int,
        max_per_source: int,
        max_message: int,
        grace: float,
    ) -> None: ...
    def wakeup_fd(self) -> int: ...
    def take(self) -> list[Call | int]: ...
    def set_tls(self, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None: ...
    def stop(self) -> None: ...
