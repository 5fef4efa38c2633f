"""The bundle: what a build leaves in dist/<model>/<target>/ and the commands that read it back.

staging.py       staging folder, golden files, hashes, deterministic archives
manifest.py      manifest.json, provenance, schema validation
signing.py       Ed25519 signatures of the manifest
verify.py        `edgepack verify`
inspect.py       `edgepack inspect`
install.py       `edgepack install-into` (the demo apps)

Nothing here imports torch at module level: `verify` and `inspect` run without it.
"""
