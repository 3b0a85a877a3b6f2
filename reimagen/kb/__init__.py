"""Built-in knowledge-base sources (docs/design.md §6, §8), registered through the ``source`` hook.

- ``emoji``: emoji entities drawn by several artists (:mod:`reimagen.kb.emoji_source`);
- ``folder``: a folder of images with ``captions.jsonl`` (:mod:`reimagen.kb.folder_source`).

Factories import their module only when called, so listing components stays cheap.
"""

from __future__ import annotations

from reimagen.core.hookspecs import hookimpl


def make_emoji_source(**options):
    """``EmojiSource(**options)``: artists=, limit=, names=, size=, processes=."""
    from reimagen.kb.emoji_source import EmojiSource

    return EmojiSource(**options)


def make_folder_source(**options):
    """``FolderSource(folder=...)``: images listed in ``<folder>/captions.jsonl``."""
    from reimagen.kb.folder_source import FolderSource

    return FolderSource(**options)


@hookimpl
def reimagen_register_sources(register):
    register("emoji", make_emoji_source)
    register("folder", make_folder_source)
