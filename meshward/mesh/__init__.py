"""The local mesh launcher: `meshward up/down/status/logs/exec` on one Linux host.

`spec` says what the mesh is (pure), `layout` where its files live, `supervisor` runs and stops its
processes, `network` builds and removes the pods' namespaces (through `meshward.pods`), and
`launcher` puts them together in order.
"""
