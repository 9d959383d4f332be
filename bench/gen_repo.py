#!/usr/bin/env python3
"""Generate a deterministic synthetic sluice repository for benchmarks.

    gen_repo.py --nodes N --out DIR [--rows R] [--seed S] [--edit K|middle]
                [--pipelines P [--edit-pipeline J]]

Writes, under DIR:

    sluice.toml                 [project] pipelines = ["pipelines/*"], [data] root = "data"
    pipelines/main/n_00000.sql  N SQL nodes in a layered DAG
    data/src_<i>.csv            a handful of CSV sources, R rows each (id, grp, val)

With --pipelines P, instead of pipelines/main: P pipelines
pipelines/p_000 ... pipelines/p_<P-1> of N nodes each (P * N in all), over
the same sources. Each has its own DAG (its own seeded random.Random), and
its layer-0 nodes add a constant column `pipeline` (its number), so no node
of one pipeline shares a task key with a node of another. --edit K then
edits node K of pipeline --edit-pipeline J (default 0). Without
--pipelines the output is exactly what it always was.

The DAG has about sqrt(N) layers of about sqrt(N) nodes. Layer-0 nodes read
one CSV source each (`-- @source data://src_<i>.csv`); every node in layer
k > 0 depends on one node of layer k-1 (so the DAG really is ~sqrt(N) deep)
and on 0-2 more nodes from any earlier layer, chosen by a seeded
random.Random. Every table has exactly R rows with ids 1..R, so `@key id`
holds everywhere and nothing blows up: a node is a projection of one input,
an equi-join of 2-3 inputs on id, or a UNION ALL of two inputs split by the
parity of id.

Every node's SQL contains `+ 1`; `--edit K` (a node index, or `middle` for
node N//2, which sits in the middle layer) generates the same tree except
that node K says `+ 2` instead: a one-node edit for "one change" scenarios.

Deterministic: the same arguments always give a byte-identical tree. Files
whose content is already right are not rewritten (their mtime and inode are
kept, so source-digest memos stay valid), and stale generated files
(n_*.sql, src_*.csv from a bigger earlier run) are removed. Only the Python 3
standard library is used.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys

PIPELINE = "main"
GROUPS = ("alpha", "beta", "gamma", "delta", "epsilon")

SLUICE_TOML = """\
[project]
production_branch = "main"
pipelines = ["pipelines/*"]

[data]
root = "data"
"""


def node_name(i: int, width: int) -> str:
    return f"n_{i:0{width}d}"


def layer_bounds(n: int) -> list[tuple[int, int]]:
    """[start, end) of each layer: ~sqrt(n) layers of nearly equal size."""
    layers = max(1, round(math.sqrt(n)))
    layers = min(layers, n)
    bounds = []
    for k in range(layers):
        start = k * n // layers
        end = (k + 1) * n // layers
        bounds.append((start, end))
    return bounds


def source_count(layer0_size: int) -> int:
    """A handful of CSV sources (at most 8, at least 1)."""
    return max(1, min(8, layer0_size))


def gen_sources(rng: random.Random, sources: int, rows: int) -> dict[str, str]:
    files = {}
    for s in range(sources):
        lines = ["id,grp,val"]
        for r in range(1, rows + 1):
            grp = GROUPS[rng.randrange(len(GROUPS))]
            # In [1, 1000) so no value has a leading zero (those load as TEXT).
            val = rng.randrange(100, 100000) / 100
            lines.append(f"{r},{grp},{val:.2f}")
        files[f"src_{s}.csv"] = "\n".join(lines) + "\n"
    return files


def node_sql(
    rng: random.Random,
    deps: list[str],
    source: str | None,
    key: bool,
    inc: int,
    tag: int | None = None,
) -> str:
    """One node file: directive block, then a small SELECT keeping id, grp, val."""
    head = []
    if source is not None:
        head.append(f"-- @source data://{source}.csv")
    for d in deps:
        head.append(f"-- @depend ./{d}")
    if key:
        head.append("-- @key id")
    if source is not None and tag is not None:
        body = f"SELECT id, grp, val + {inc} AS val, {tag} AS pipeline\nFROM {source}\nORDER BY id;"
    elif source is not None:
        body = f"SELECT id, grp, val + {inc} AS val\nFROM {source}\nORDER BY id;"
    elif len(deps) == 1:
        body = f"SELECT id, grp, val + {inc} AS val\nFROM {deps[0]}\nORDER BY id;"
    elif len(deps) == 2 and rng.random() < 0.5:
        a, b = deps
        body = (
            f"SELECT id, grp, val + {inc} AS val FROM {a} WHERE id % 2 = 0\n"
            f"UNION ALL\n"
            f"SELECT id, grp, val + {inc} AS val FROM {b} WHERE id % 2 = 1\n"
            f"ORDER BY id;"
        )
    else:
        aliases = "abc"[: len(deps)]
        avg = " + ".join(f"{x}.val" for x in aliases)
        lines = [
            f"SELECT a.id, a.grp, ({avg}) / {len(deps)} + {inc} AS val",
            f"FROM {deps[0]} a",
        ]
        for alias, d in zip(aliases[1:], deps[1:]):
            lines.append(f"JOIN {d} {alias} ON {alias}.id = a.id")
        lines.append("ORDER BY a.id;")
        body = "\n".join(lines)
    return "\n".join(head) + "\n" + body + "\n"


def pipeline_name(k: int, pipelines: int) -> str:
    """The directory of pipeline k of P under pipelines/ (with --pipelines)."""
    return f"p_{k:0{max(3, len(str(pipelines - 1)))}d}"


def generate(
    n: int,
    rows: int,
    seed: int,
    edit: int | None,
    pipelines: int | None = None,
    edit_pipeline: int = 0,
) -> dict[str, str]:
    """The whole tree as {repo-relative path: text}. `pipelines`: P
    pipelines of n nodes each (None: the one pipelines/main)."""
    if n < 1:
        raise ValueError("--nodes must be at least 1")
    if pipelines is not None and pipelines < 1:
        raise ValueError("--pipelines must be at least 1")
    rng = random.Random(seed)
    bounds = layer_bounds(n)
    sources = source_count(bounds[0][1] - bounds[0][0])

    files = {"sluice.toml": SLUICE_TOML}
    for name, text in gen_sources(rng, sources, rows).items():
        files[f"data/{name}"] = text

    if pipelines is None:
        files.update(gen_pipeline(rng, n, sources, PIPELINE, edit))
    else:
        for k in range(pipelines):
            files.update(pipeline_files(n, seed, k, pipelines,
                                        edit if k == edit_pipeline else None))
    return files


def pipeline_files(
    n: int, seed: int, k: int, pipelines: int, edit: int | None
) -> dict[str, str]:
    """The node files of pipeline k of P alone (as generate() writes them)."""
    bounds = layer_bounds(n)
    sources = source_count(bounds[0][1] - bounds[0][0])
    rng = random.Random(f"sluice-bench:{seed}:pipeline:{k}")
    return gen_pipeline(rng, n, sources, pipeline_name(k, pipelines), edit, tag=k)


def gen_pipeline(
    rng: random.Random,
    n: int,
    sources: int,
    pipeline: str,
    edit: int | None,
    tag: int | None = None,
) -> dict[str, str]:
    """The n node files of one pipeline, drawing from rng."""
    files = {}
    width = max(5, len(str(n - 1)))
    bounds = layer_bounds(n)
    for k, (start, end) in enumerate(bounds):
        for i in range(start, end):
            # Draw the same random numbers whatever --edit says.
            key = rng.random() < 0.5
            if k == 0:
                source = f"src_{i % sources}"
                deps = []
            else:
                source = None
                prev_start, prev_end = bounds[k - 1]
                first = rng.randrange(prev_start, prev_end)
                want = rng.randint(1, 3)
                picked = [first]
                # Extra inputs from any earlier layer (0 .. start-1), distinct.
                while len(picked) < min(want, start):
                    j = rng.randrange(0, start)
                    if j not in picked:
                        picked.append(j)
                deps = [node_name(j, width) for j in picked]
            inc = 2 if edit == i else 1
            text = node_sql(rng, deps, source, key, inc, tag)
            files[f"pipelines/{pipeline}/{node_name(i, width)}.sql"] = text
    return files


def write_tree(out: str, files: dict[str, str]) -> tuple[int, int, int]:
    """Write files, skipping unchanged ones; remove stale generated files."""
    written = kept = removed = 0
    for rel, text in sorted(files.items()):
        path = os.path.join(out, *rel.split("/"))
        data = text.encode("utf-8")
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    kept += 1
                    continue
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        written += 1
    # pipelines/main, and the pipelines/p_<k> of --pipelines (including
    # those of an earlier run with a bigger P).
    dirs = [f"pipelines/{PIPELINE}"]
    pdir = os.path.join(out, "pipelines")
    if os.path.isdir(pdir):
        dirs += [f"pipelines/{d}" for d in sorted(os.listdir(pdir))
                 if d.startswith("p_") and d[2:].isdigit()]
    for sub, prefix, ext in [(d, "n_", ".sql") for d in dirs] + [("data", "src_", ".csv")]:
        d = os.path.join(out, *sub.split("/"))
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.startswith(prefix) and name.endswith(ext):
                rel = f"{sub}/{name}"
                if rel not in files:
                    os.remove(os.path.join(d, name))
                    removed += 1
        if sub != f"pipelines/{PIPELINE}" and sub.startswith("pipelines/p_") \
                and not os.listdir(d):
            os.rmdir(d)  # a pipeline of an earlier, bigger --pipelines
    return written, kept, removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate a deterministic synthetic sluice repository."
    )
    ap.add_argument("--nodes", type=int, required=True, help="number of SQL nodes")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--rows", type=int, default=100, help="rows per CSV source (100)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (1)")
    ap.add_argument(
        "--edit",
        metavar="K",
        help="change node K (an index, or 'middle' = N//2): '+ 2' instead of '+ 1'",
    )
    ap.add_argument(
        "--pipelines",
        type=int,
        metavar="P",
        help="P pipelines pipelines/p_000 ... of N nodes each, instead of pipelines/main",
    )
    ap.add_argument(
        "--edit-pipeline",
        type=int,
        default=0,
        metavar="J",
        help="with --pipelines: the pipeline --edit applies to (0)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = ap.parse_args(argv)

    if args.nodes < 1:
        ap.error("--nodes must be at least 1")
    if args.rows < 1:
        ap.error("--rows must be at least 1")
    if args.pipelines is not None and args.pipelines < 1:
        ap.error("--pipelines must be at least 1")
    if args.pipelines is None and args.edit_pipeline != 0:
        ap.error("--edit-pipeline needs --pipelines")
    if args.pipelines is not None and not 0 <= args.edit_pipeline < args.pipelines:
        ap.error(f"--edit-pipeline {args.edit_pipeline} is out of range 0..{args.pipelines - 1}")
    edit = None
    if args.edit is not None:
        if args.edit == "middle":
            edit = args.nodes // 2
        else:
            try:
                edit = int(args.edit)
            except ValueError:
                ap.error("--edit takes a node index or 'middle'")
            if not 0 <= edit < args.nodes:
                ap.error(f"--edit {edit} is out of range 0..{args.nodes - 1}")

    files = generate(args.nodes, args.rows, args.seed, edit, args.pipelines, args.edit_pipeline)
    written, kept, removed = write_tree(args.out, files)
    if not args.quiet:
        layers = len(layer_bounds(args.nodes))
        sources = sum(1 for p in files if p.startswith("data/"))
        nodes = f"{args.nodes} nodes"
        if args.pipelines is not None:
            nodes = f"{args.pipelines} pipelines x {args.nodes} nodes"
        msg = (
            f"{args.out}: {nodes} in {layers} layers, "
            f"{sources} sources x {args.rows} rows; "
            f"{written} written, {kept} unchanged, {removed} removed"
        )
        if edit is not None:
            width = max(5, len(str(args.nodes - 1)))
            msg += f"; edited {node_name(edit, width)}"
            if args.pipelines is not None:
                msg += f" of {pipeline_name(args.edit_pipeline, args.pipelines)}"
        print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
