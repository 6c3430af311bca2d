"""Index expressions for ``get_slice(name)[index]``: how the harness writes them down (JSON
between processes, text in reports), which corner cases it asks for, and how Hypothesis
draws more.

An index is what Python passes to ``__getitem__``: one item or a tuple of items, each an int,
a ``slice`` (start, stop, step: ints or None), ``...`` or ``None``. Only these basic items are
used: they are what upstream documents for ``get_slice``, and what tensor-parallel loading
uses (rows, columns, ranges with steps).
"""
from __future__ import annotations

from typing import Any

Index = Any  # an item or a tuple of items


def encode(index: Index) -> dict[str, Any]:
    """A JSON-ready form of ``index``."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for item in items:
        if item is Ellipsis:
            out.append("...")
        elif item is None:
            out.append(None)
        elif isinstance(item, slice):
            out.append({"s": [item.start, item.stop, item.step]})
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append({"i": item})
        else:
            raise TypeError(f"not a basic index item: {item!r}")
    return {"tuple": isinstance(index, tuple), "items": out}


def decode(obj: dict[str, Any]) -> Index:
    items = []
    for item in obj["items"]:
        if item == "...":
            items.append(Ellipsis)
        elif item is None:
            items.append(None)
        elif "s" in item:
            items.append(slice(*item["s"]))
        else:
            items.append(int(item["i"]))
    return tuple(items) if obj["tuple"] else items[0]


def _item_text(item: Any) -> str:
    if item is Ellipsis:
        return "..."
    if item is None:
        return "None"
    if isinstance(item, slice):
        text = ("" if item.start is None else str(item.start)) + ":" + ("" if item.stop is None else str(item.stop))
        return text + (f":{item.step}" if item.step is not None else "")
    return str(item)


def text(index: Index) -> str:
    """The index as written between brackets, without spaces: ``[:,3:0:3]``, ``[()]``,
    ``[0,]`` for a one-item tuple (a tuple of one item indexes as that item)."""
    if isinstance(index, tuple):
        if not index:
            return "[()]"
        body = ",".join(_item_text(i) for i in index)
        return f"[{body},]" if len(index) == 1 else f"[{body}]"
    return f"[{_item_text(index)}]"


def corner_cases(shape: list[int]) -> list[Index]:
    """The fixed corner cases for a tensor of ``shape`` (the shape ``get_shape()`` gives):
    empty ranges, start past stop, negative starts and stops, out-of-range clamping, steps of
    2 and more, ints and negative ints, ``...``, ``None``, tuples shorter and longer than the
    rank, invalid steps and out-of-range ints (which must raise as torch raises), each where
    the rank allows."""
    rank = len(shape)
    out: list[Index] = [(), Ellipsis, None, (None, Ellipsis), (Ellipsis, None), (None, None)]
    if rank == 0:
        return out + [0, slice(None), (Ellipsis, Ellipsis)]
    n = shape[0]
    out += [
        slice(None), slice(None, None, 1), 0, -1, n - 1, n, -n - 1, slice(1, 0), slice(3, 2, 2), slice(-9, None),
        slice(None, -1), slice(-3, -1), slice(n + 5, None), slice(None, n + 5), slice(None, None, 2),
        slice(1, None, 3), slice(None, None, n + 1), slice(0, 0), slice(-1, -3), slice(-n - 5, -n - 3),
        slice(None, None, 0), slice(None, None, -1), (0, Ellipsis), (Ellipsis, 0), (Ellipsis, -1), (slice(None),),
        (-1,), (slice(1, None), None), tuple([0] * rank), tuple([-1] * rank), tuple([0] * (rank + 1)),
        tuple([slice(None)] * (rank + 1)), (Ellipsis, Ellipsis),
    ]
    if rank >= 2:
        m = shape[1]
        out += [
            (slice(None), slice(3, 0, 3)), (slice(None), slice(1, m - 1)), (slice(None), slice(None, None, 2)),
            (slice(None), -1), (1, 2), (slice(None), slice(None), Ellipsis), (slice(0, 2), slice(1, 3)),
            (-1, slice(None, None, 3)), (slice(None), slice(m, None)), (slice(None), slice(-m - 3, 2)),
            (Ellipsis, slice(1, None, 2)), (Ellipsis, slice(0, 2)), (Ellipsis, slice(1, 3)), (slice(None), None, 0),
            (None, slice(None), slice(None, None, 2)),
        ]
    if rank >= 3:
        out += [(0, Ellipsis, 1), (slice(None), 1, slice(None, None, 2)), (Ellipsis, slice(2, None), -1)]
    return out


def drawn(seed: int, shapes: dict[str, list[int]], count: int) -> list[tuple[str, Index]]:
    """``count`` (tensor name, index) pairs drawn by Hypothesis from ``seed``: tuples of up
    to rank + 1 basic items, with starts, stops and ints around and beyond each dimension's
    bounds, steps from 1 to past the size (now and then 0 or negative), ``...`` (now and then
    twice) and ``None``. Reproducible from the seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    names = sorted(shapes)
    if count <= 0 or not names:
        return []
    bound = max([8] + [d for s in shapes.values() for d in s]) + 4

    def item():
        ends = st.one_of(st.none(), st.integers(-bound, bound))
        step = st.one_of(st.none(), st.integers(1, bound), st.sampled_from([0, -1]))
        return st.one_of(st.integers(-bound, bound), st.builds(slice, ends, ends, step),
                         st.just(Ellipsis), st.none(), st.builds(slice, ends, ends))

    @st.composite
    def pair(draw):
        name = draw(st.sampled_from(names))
        items = draw(st.lists(item(), max_size=len(shapes[name]) + 1))
        if len(items) == 1 and draw(st.booleans()):
            return name, items[0]
        return name, tuple(items)

    out: list[tuple[str, Index]] = []
    seen: set[tuple[str, str]] = set()

    @hypothesis_seed(seed)
    @settings(max_examples=count * 3, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(pair())
    def collect(p):
        key = (p[0], text(p[1]))
        if key not in seen and len(out) < count:
            seen.add(key)
            out.append(p)

    collect()
    return out
