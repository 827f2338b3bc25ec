"""The HTTP/1.1 codec: message heads as pure functions (`head`), where a body ends (`body`), and
the callback-based relay that carries requests and responses between two connections (`relay`)."""
