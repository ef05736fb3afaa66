"""Splitting a suite into chunks: longest first from the duration history, shrinking towards the end.

The cluster's queue hands chunks to whichever slot frees first (a pull model), so a faster worker takes
more of them: that is the normalisation by worker speed. What the plan controls is the order and size:
groups (files by default, so module fixtures are set up once per chunk; tests with the same
``xdist_group`` mark always together) are sorted by their recorded
duration, longest first (the LPT rule), and packed into chunks whose target size is a share of the work
still left (guided self-scheduling), so the last chunks are small and the slots finish together; a slot
that runs dry at the end takes the next small chunk, which is what work stealing buys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

GROUPS = ("file", "class", "test")
MIN_CHUNK_SECONDS = 1.0
"""Below this a chunk costs more in round trips (result committed, next chunk assigned: chunks are not
prefetched, so a slot idles for each) than it balances; measured ~0.3 s per chunk on a loaded machine."""
UNKNOWN_TEST_SECONDS = 0.05


def group_key(nodeid: str, group: str) -> str:
    """The group a test belongs to: its file, its class (or file), or itself."""
    if group == "test":
        return nodeid
    parts = nodeid.split("::")
    if group == "class" and len(parts) > 2:
        return "::".join(parts[:2])
    return parts[0]


def plan_chunks(nodeids: Sequence[str], durations: Mapping[str, float], slots: int,
                group: str = "file", marks: Mapping[str, str] | None = None) -> list[list[str]]:
    """Chunks of node ids, in the order they should be queued (longest first, shrinking).

    ``marks`` maps tests to their ``xdist_group`` name: tests of one such group always share a chunk
    (and so a process), whatever ``group`` says.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    slots = max(1, slots)
    marks = marks or {}
    groups: dict[str, list[str]] = {}
    for nodeid in nodeids:
        key = f"\0mark:{marks[nodeid]}" if nodeid in marks else group_key(nodeid, group)
        groups.setdefault(key, []).append(nodeid)
    weighted = sorted(((sum(durations.get(n, UNKNOWN_TEST_SECONDS) for n in members), key, members)
                       for key, members in groups.items()), key=lambda g: (-g[0], g[1]))
    remaining = sum(w for w, _, _ in weighted)
    chunks: list[list[str]] = []
    current: list[str] = []
    current_weight = 0.0
    for weight, _key, members in weighted:
        current.extend(members)
        current_weight += weight
        # Guided self-scheduling: a chunk is about 1/(2 * slots) of what is left when it is cut.
        target = max(MIN_CHUNK_SECONDS, remaining / (2 * slots))
        if current_weight >= target:
            chunks.append(current)
            remaining -= current_weight
            current, current_weight = [], 0.0
    if current:
        chunks.append(current)
    return chunks
