"""The sidecar's connection handling: listeners and socket adapters (`net`), the outbound (15001)
and inbound (15006) proxies, and the pool of verified mTLS connections to peer sidecars. Per
connection they verify identities and pick a codec; the codecs handle the requests."""
