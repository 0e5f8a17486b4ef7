"""The byte progress bar of pack, repack and their `hf` exports, created only when it is shown.

`import tqdm` costs ~15 ms, which a run without a bar (`progress=False`: the library's default,
tests, pipelines) should not pay; such a run gets a bar whose methods do nothing, as tqdm's own
`disable=True` bar does.
"""
from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol, Self


class Bar(Protocol):
    """What the writers call on a bar (tqdm's names), inside `with bar:`."""

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None: ...

    def update(self, n: int = 1) -> bool | None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...


class _Hidden:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None


def byte_bar(total: int, desc: str, show: bool) -> Bar:
    """A tqdm bar over `total` bytes on stderr, cleared when done; a silent one unless `show`."""
    if not show:
        return _Hidden()
    from tqdm import tqdm

    bar: Bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                    leave=False)
    return bar
