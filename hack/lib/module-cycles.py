#!/usr/bin/env python3
"""Import cycles between the top-level modules of a crate's source directory.

    module-cycles.py SRC_DIR...

A module is a file or a directory directly under SRC_DIR (lib.rs and main.rs, the crate
root, are left out); it depends on every other module it names as `crate::<module>` outside
comments and outside its test code (files named tests.rs and a trailing
`#[cfg(test)] mod tests` block). Prints each cycle once, as `a -> b -> a`, and exits 1 when
there is one; exit 0 and nothing printed when there is none.
"""

import os
import re
import sys


def module_files(src):
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name in ("lib", "main") or not (entry.endswith(".rs") or os.path.isdir(path)):
            continue
        if os.path.isdir(path):
            files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
        else:
            files = [path]
        yield name, files


def dependencies(files):
    deps = set()
    for path in files:
        if os.path.basename(path) == "tests.rs":
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut >= 0:
            text = text[:cut]
        code = "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))
        deps.update(re.findall(r"crate::([a-z_][a-z0-9_]*)", code))
    return deps


def cycles(graph):
    found = set()

    def walk(start, node, path):
        for nxt in sorted(graph[node]):
            if nxt == start:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path:
                walk(start, nxt, path + [nxt])

    for module in graph:
        walk(module, module, [module])
    return sorted(found, key=lambda c: (len(c), c))


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    status = 0
    for src in argv:
        mods = dict(module_files(src))
        graph = {m: (dependencies(files) & set(mods)) - {m} for m, files in mods.items()}
        for cycle in cycles(graph):
            print(f"{src}: {' -> '.join(cycle + (cycle[0],))}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
