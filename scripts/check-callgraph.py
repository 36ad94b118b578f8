#!/usr/bin/env python3
"""Check that the broker's files call each other without a circle.

The call graph is read from the object files of the broker (nm): file A
depends on file B when A.o references a symbol that B.o defines. Calls to
static functions stay inside a file and static inline functions of a header
belong to that header, so every edge between two .c files is a real call (or
a use of a global) across them. Prints the layering, bottom first, and exits
1 with each circle it finds.

    scripts/check-callgraph.py OBJ...      (ctest passes the broker's objects)
    scripts/check-callgraph.py --dot OBJ...  (Graphviz of the same graph)
"""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBRC":  # global text, data, bss, rodata, common
            defined.add(parts[2])
    return defined, used


def name_of(obj):
    base = os.path.basename(obj)
    for suffix in (".c.o", ".o"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def sccs(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(argv):
    dot = "--dot" in argv
    objs = [a for a in argv if not a.startswith("--")]
    if not objs:
        print(__doc__, file=sys.stderr)
        return 2
    defs, uses = {}, {}
    for o in objs:
        n = name_of(o)
        d, u = symbols(o)
        uses[n] = u
        for s in d:
            defs[s] = n
    edges = {n: set() for n in uses}
    for n, u in uses.items():
        for s in u:
            m = defs.get(s)
            if m and m != n:
                edges[n].add(m)
    if dot:
        print("digraph broker {")
        for n in sorted(edges):
            for m in sorted(edges[n]):
                print(f'  "{n}" -> "{m}";')
        print("}")
        return 0
    circles = [c for c in sccs(edges, edges) if len(c) > 1]
    if circles:
        for c in circles:
            print("call circle among: " + ", ".join(c + ".c" for c in c))
            for n in c:
                inside = sorted(m for m in edges[n] if m in c)
                print(f"  {n}.c calls {', '.join(m + '.c' for m in inside)}")
        return 1
    # Layering: a file's level is one more than the highest level it calls.
    level = {}

    def lvl(n):
        if n not in level:
            level[n] = 1 + max((lvl(m) for m in edges[n]), default=-1)
        return level[n]

    for n in edges:
        lvl(n)
    for l in range(max(level.values()) + 1):
        names = sorted(n for n in level if level[n] == l)
        print(f"level {l}: " + " ".join(names))
    print(f"no call circle among {len(edges)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
