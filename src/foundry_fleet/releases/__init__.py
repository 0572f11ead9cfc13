"""The host-wide release cache: fetch Foundry release zips, unpack them safely, keep them read-only.

- `policy`: what a download and an unpack may do (allowed hosts, size limits).
- `fetch`: HTTPS download with an allow-list, private-address refusal and manual redirects.
- `unpack`: a zip extractor that refuses traversal, escaping symlinks, bombs and non-zips.
- `layout`: which of Foundry's three release shapes an unpacked tree is, and its version.
- `cache`: the locked, cache-first store that ties the above together.

Instances are hard-linked from the unpacked trees, which is why the trees are read-only.
"""
