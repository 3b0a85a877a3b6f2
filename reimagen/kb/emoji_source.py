"""The built-in knowledge-base source ``"emoji"``: emoji entities drawn by several artists
(docs/design.md §8), the paper's external image-text database (Re-Imagen §3, EntityDrawBench §4.2).

Entities come from :mod:`reimagen.kb.emoji_entities` (CLDR names, code points, groups); the
drawings from the artists of :mod:`reimagen.kb.emoji_artists` (twemoji and openmoji required,
noto and fluent optional). Record keys are ``"<artist>/<codepoints>"``, captions
``"<entity name>, <artist> emoji"``. Rendering runs in ``processes`` worker processes (forked
when no threaded framework is loaded, else spawned).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from reimagen.kb.emoji_artists import DEFAULT_SIZE, LICENCES, installed_artists, make_artists
from reimagen.kb.emoji_entities import EMOJI_TEST, load_entities, select_entities
from reimagen.kb.records import Entity, KBItem, KnowledgeBaseError

# -------------------------------------------------------------------- rendering in workers
_WORKER_ARTISTS: list = []


def _init_worker(names: Sequence[str], size: int) -> None:
    global _WORKER_ARTISTS
    _WORKER_ARTISTS = make_artists(names, size)


def _render_entity(
    entity: Entity, artists: Sequence | None = None
) -> list[tuple[str, bytes | None]]:
    """(artist, PNG bytes or None) for every artist, in artist order."""
    return [(artist.name, artist.encoded(entity)) for artist in (artists or _WORKER_ARTISTS)]


# Rendering workers at most: each is a forked process holding the artists' renderers, and
# past the core count they only add memory; a larger number is a typo, not a request for
# 100,000 processes.
MAX_PROCESSES = 64


def render_all(
    entities: Sequence[Entity],
    artists: Sequence,
    processes: int = 2,
) -> Iterator[tuple[Entity, list[tuple[str, bytes | None]]]]:
    """Render every entity with every artist, in entity order, in ``processes`` workers
    (1: in this process)."""
    if processes <= 1 or len(entities) < 8:
        for entity in entities:
            yield entity, _render_entity(entity, artists)
        return
    names = [a.name for a in artists]
    size = artists[0].size
    context = multiprocessing.get_context(_start_method())
    with context.Pool(processes, initializer=_init_worker, initargs=(names, size)) as pool:
        chunk = max(1, min(32, len(entities) // (4 * processes)))
        yield from zip(entities, pool.imap(_render_entity, entities, chunksize=chunk))


def _start_method() -> str:
    """ "fork" where it is safe (POSIX, no threaded framework loaded in this process): fast, and
    the caller's script is not re-imported; else "spawn" (the script then needs the usual
    ``if __name__ == "__main__":`` guard)."""
    threaded = any(name in sys.modules for name in ("torch", "jax", "tensorflow"))
    if "fork" in multiprocessing.get_all_start_methods() and not threaded:
        return "fork"
    return "spawn"


def caption(entity: Entity, artist: str) -> str:
    """The record text retrievers match prompts against: plain words."""
    return f"{entity.name}, {artist} emoji"


class EmojiSource:
    """Knowledge-base source ``"emoji"``: every entity × every installed artist. Entities no
    artist draws (emoji newer than all the sets) are left out and listed in ``undrawn``.

    artists: names to use (default: all installed; twemoji and openmoji are required).
    limit / names: a subset of entities (tests, quick looks). size: rendition side in pixels.
    processes: rendering workers (the build machine has 2 cores).
    """

    name = "emoji"

    def __init__(
        self,
        *,
        artists: Sequence[str] | None = None,
        limit: int | None = None,
        names: Iterable[str] | None = None,
        size: int = DEFAULT_SIZE,
        processes: int = 2,
        emoji_test: Path | None = EMOJI_TEST,
    ):
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 512:
            raise KnowledgeBaseError(f"size must be an integer in [8, 512], got {size!r}")
        if (
            isinstance(processes, bool)
            or not isinstance(processes, int)
            or not 1 <= processes <= MAX_PROCESSES
        ):
            raise KnowledgeBaseError(
                f"processes must be a positive integer <= {MAX_PROCESSES}, got {processes!r}"
            )
        chosen = select_entities(load_entities(emoji_test), limit, names)
        if artists is None:
            self._artists, self.skipped = installed_artists(size)  # optional ones may be missing
        else:
            self._artists, self.skipped = make_artists(artists, size), {}
        # Entities newer than every artist's set have no drawing at all: left out, but listed.
        self._entities = [e for e in chosen if any(a.covers(e) for a in self._artists)]
        self.undrawn = [e.name for e in chosen if e not in self._entities]
        self.size = size
        self.processes = processes

    @property
    def artists(self) -> list[str]:
        return [artist.name for artist in self._artists]

    def entities(self) -> list[Entity]:
        return list(self._entities)

    def items(self) -> Iterator[KBItem]:
        for entity, renditions in render_all(self._entities, self._artists, self.processes):
            for artist, png in renditions:
                if png is not None:
                    yield (
                        f"{artist}/{entity.codepoints}",
                        caption(entity, artist),
                        artist,
                        entity.name,
                        png,
                    )

    def info(self) -> dict:
        """Extra kb.json fields: which artists and entities went in, and the artwork licences."""
        return {
            "artists": self.artists,
            "licences": {name: LICENCES[name] for name in self.artists},
            "rendition_size": self.size,
            "entities_undrawn": self.undrawn,
            "artists_skipped": self.skipped,
        }


__all__ = ["MAX_PROCESSES", "EmojiSource", "caption", "render_all"]
