"""The workflow graph of a run's page as server-side SVG: the nodes of the spec (when the
workflow is registered in the console's process) and of the ledgers, the transitions seen in
the ledgers, the path the run took and its current node highlighted. Every label is escaped."""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["graph_svg"]

_W, _H, _GAP_X, _GAP_Y, _PER_ROW = 150, 34, 40, 36, 5


def graph_svg(spec: Any, edges: list[tuple[str, str]], path: list[str | None], current: str | None) -> str:
    order: list[str] = []
    entry = getattr(spec, "entry_node", None)
    for node in [entry, *(getattr(spec, "nodes", None) or {}), *[n for e in edges for n in e], *path, current]:
        if node and node not in order:
            order.append(node)
    if not order:
        return ""
    # breadth first from the entry along the transitions seen; nodes never reached keep their order
    ranked, frontier = [], [order[0]]
    while frontier:
        node = frontier.pop(0)
        if node in ranked:
            continue
        ranked.append(node)
        frontier += [b for a, b in edges if a == node and b not in ranked]
    ranked += [n for n in order if n not in ranked]
    pos = {n: (10 + (i % _PER_ROW) * (_W + _GAP_X), 10 + (i // _PER_ROW) * (_H + _GAP_Y)) for i, n in enumerate(ranked)}
    taken = set(path)
    walked = {(a, b) for a, b in zip(path, path[1:])}
    rows = (len(ranked) - 1) // _PER_ROW + 1
    width = min(len(ranked), _PER_ROW) * (_W + _GAP_X) + 10
    height = rows * (_H + _GAP_Y) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="workflow graph">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>']
    for a, b in edges:
        if a in pos and b in pos:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            cls = "edge walked" if (a, b) in walked else "edge"
            out.append(f'<line class="{cls}" x1="{x1 + _W}" y1="{y1 + _H / 2}" x2="{x2}" y2="{y2 + _H / 2}" '
                       'marker-end="url(#arrow)"/>' if y1 == y2 and x2 > x1 else
                       f'<line class="{cls}" x1="{x1 + _W / 2}" y1="{y1 + _H}" x2="{x2 + _W / 2}" y2="{y2}" '
                       'marker-end="url(#arrow)"/>')
    for node, (x, y) in pos.items():
        cls = "node current" if node == current else "node taken" if node in taken else "node"
        label = node if len(node) <= 20 else node[:19] + "…"
        out.append(f'<g class="{cls}" data-node="{escape(node)}"><title>{escape(node)}</title>'
                   f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6"/>'
                   f'<text x="{x + _W / 2}" y="{y + _H / 2 + 4}" text-anchor="middle">{escape(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)
