#!/usr/bin/env python3
"""Reference run: an independent computation of every table of a pipeline.

This is a small second implementation of the sluice pipeline language
(DESIGN.md section 1), written in plain Python 3 (standard library only) to
check the example and to give tests an expected value for each node's output
that does not come from the Rust code. It supports what the example uses:

* directives in the leading comment block (``--``, ``#``, ``//``):
  @include (file = inherit, directory = mount), @depend, @param, @source,
  @key, @assert, @timeout; an unknown directive is an error;
* nodes in .sql (SQLite via the sqlite3 module), .py (python3), .sh (bash)
  and static .csv tables; files starting with ``_`` or ``.`` are not nodes,
  nor are mount files;
* inheritance (directives merge, the including node's own win; its body, if
  not empty, replaces the inherited one), mounts (nested; a pipeline's own
  node overrides a mounted one of the same name), parameters (a node's
  default < an inherited default overridden by the child; a mount file's
  @param over node defaults, the outermost mount winning), ``{{ K }}``
  templates in bodies and @source paths (an undefined K is an error);
* CSV loading with the typing rules of DESIGN.md section 2 (integer, real,
  text; a leading zero keeps text; an unquoted empty field is NULL, ``""``
  the empty string), and the canonical output CSV.

Each input table is loaded from the canonical CSV of its producer, as sluice
does from its blob store; the script also checks that writing a table and
reading it back gives the same typed values.

Usage:
  reference_run.py [--repo DIR] [--data-root DIR] PIPELINE OUT_DIR
  reference_run.py [--repo DIR] [--data-root DIR] --all OUT_DIR

PIPELINE is a pipeline directory (``clinics/clinic_a``) or just its last
component (``clinic_a``). For each node it writes ``OUT_DIR/<Node>.csv``
(canonical CSV) and a ``OUT_DIR/summary.json`` (per node: file, kind,
dependencies, sources, parameters, columns, row count, sha256 of the CSV
bytes, checks). With --all every pipeline matched by sluice.toml is run into
``OUT_DIR/<pipeline path>/``. It prints one line per node and exits 1 if any
node fails, any key is not unique or any assertion fails.
"""

import argparse
import fnmatch
import hashlib
import json
import os
import posixpath
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

LEADERS = ("--", "#", "//")
KNOWN_DIRECTIVES = {"include", "depend", "param", "source", "key", "assert", "timeout"}
KINDS = {".sql": "sqlite", ".py": "python", ".sh": "bash", ".R": "r", ".csv": "static"}
BUILTIN_ACTIONS = {
    "action/sql/sqlite": "sqlite",
    "action/python": "python",
    "action/bash": "bash",
    "action/r": "r",
}
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
INT_RE = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")
REAL_RE = re.compile(r"^[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


class LangError(Exception):
    """A problem in the pipeline definition, reported as path:line: message."""

    def __init__(self, path, line, message):
        super().__init__("%s:%s: %s" % (path, line, message))


# ---------------------------------------------------------------------------
# CSV: typed loading and canonical writing.


def parse_csv(text):
    """RFC 4180 parser returning rows of (field, was_quoted)."""
    rows, row, field, quoted = [], [], [], False
    i, n = 0, len(text)
    at_field_start = True
    while i < n:
        c = text[i]
        if at_field_start and c == '"':
            quoted, at_field_start = True, False
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted field")
                c = text[i]
                if c == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        field.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                field.append(c)
                i += 1
            continue
        at_field_start = False
        if c == ",":
            row.append(("".join(field), quoted))
            field, quoted, at_field_start = [], False, True
            i += 1
        elif c == "\n" or c == "\r":
            row.append(("".join(field), quoted))
            rows.append(row)
            row, field, quoted, at_field_start = [], [], False, True
            i += 2 if (c == "\r" and i + 1 < n and text[i + 1] == "\n") else 1
        else:
            field.append(c)
            i += 1
    if field or quoted or row:
        row.append(("".join(field), quoted))
        rows.append(row)
    # a blank line is not a record
    return [r for r in rows if not (len(r) == 1 and r[0] == ("", False))]


def type_value(field, quoted):
    if field == "":
        return "" if quoted else None
    if INT_RE.match(field):
        v = int(field)
        if -(2**63) <= v < 2**63:
            return v
        return field  # too big for 64 bits: keep every digit as text
    if REAL_RE.match(field) and ("." in field or "e" in field or "E" in field):
        v = float(field)
        if v == v and v not in (float("inf"), float("-inf")):
            return v
    return field


def load_csv_text(text):
    rows = parse_csv(text)
    if not rows:
        raise ValueError("empty CSV (no header)")
    header = [f for f, _ in rows[0]]
    if len(set(header)) != len(header):
        raise ValueError("duplicate column names %r" % header)
    out = []
    for r in rows[1:]:
        if len(r) != len(header):
            raise ValueError("row has %d fields, header has %d" % (len(r), len(header)))
        out.append(tuple(type_value(f, q) for f, q in r))
    return header, out


def canon_field(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("non-finite real %r" % v)
        return repr(v + 0.0)  # shortest round-trip, '3.0' not '3', no '-0.0'
    if isinstance(v, bytes):
        raise ValueError("BLOB values are not supported in tables")
    s = str(v)
    if s == "":
        return '""'
    if any(c in s for c in ',"\r\n'):
        return '"' + s.replace('"', '""') + '"'
    return s


def canonical_csv(columns, rows):
    lines = [",".join(canon_field(c) for c in columns)]
    for r in rows:
        lines.append(",".join(canon_field(v) for v in r))
    return ("\n".join(lines) + "\n").encode("utf-8")


def same_typed(a, b):
    return type(a) is type(b) and (a == b or (isinstance(a, float) and repr(a) == repr(b)))


# ---------------------------------------------------------------------------
# The language.


class FileDef:
    def __init__(self, path, directives, body):
        self.path = path  # repo-relative, '/'-separated
        self.directives = directives  # [(name, arg, line)]
        self.body = body


def read_def(repo, path):
    full = os.path.join(repo, path)
    with open(full, encoding="utf-8") as f:
        lines = f.read().split("\n")
    directives, body = [], []
    in_block = True
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if in_block:
            leader = next((l for l in LEADERS if stripped.startswith(l)), None)
            if stripped == "" or leader:
                text = stripped[len(leader):].strip() if leader else ""
                if text.startswith("@"):
                    name, _, arg = text[1:].partition(" ")
                    if name not in KNOWN_DIRECTIVES:
                        raise LangError(path, lineno, "unknown directive @%s" % name)
                    directives.append((name, arg.strip(), lineno))
                    continue
            else:
                in_block = False
        body.append(line)
    return FileDef(path, directives, "\n".join(body))


def norm_include(repo, from_path, arg, line):
    if arg.startswith("./") or arg.startswith("../"):
        p = posixpath.normpath(posixpath.join(posixpath.dirname(from_path), arg))
    else:
        p = posixpath.normpath(arg.lstrip("/"))
    if p == ".." or p.startswith("../") or posixpath.isabs(p):
        raise LangError(from_path, line, "path leaves the repository: %s" % arg)
    real = os.path.realpath(os.path.join(repo, p))
    if os.path.exists(real) and not (real + os.sep).startswith(os.path.realpath(repo) + os.sep):
        raise LangError(from_path, line, "path leaves the repository (symlink): %s" % arg)
    return p


def mount_target(repo, fd):
    """The directory a mount file mounts, or None if fd is not a mount file."""
    for name, arg, line in fd.directives:
        if name == "include":
            p = norm_include(repo, fd.path, arg, line)
            if os.path.isdir(os.path.join(repo, p)):
                return p
    return None


class Node:
    def __init__(self, name, path, kind, directives, body, params):
        self.name = name
        self.path = path
        self.kind = kind
        self.directives = directives  # merged, own last
        self.body = body
        self.default_params = params  # merged defaults

    def all(self, name):
        return [(a, l) for n, a, l in self.directives if n == name]

    def last(self, name):
        found = self.all(name)
        return found[-1][0] if found else None


def resolve_node(repo, path, stack=()):
    """Apply file includes (inheritance) and return a Node."""
    if path in stack:
        raise LangError(path, 1, "include cycle: %s" % " -> ".join(stack + (path,)))
    fd = read_def(repo, path)
    base, ext = posixpath.splitext(posixpath.basename(path))
    kind = KINDS.get(ext)
    merged, params, body = [], {}, ""
    for name, arg, line in fd.directives:
        if name != "include":
            continue
        if arg in BUILTIN_ACTIONS and not os.path.exists(os.path.join(repo, arg)):
            kind = BUILTIN_ACTIONS[arg]
            continue
        p = norm_include(repo, path, arg, line)
        full = os.path.join(repo, p)
        if os.path.isdir(full):
            raise LangError(path, line, "a node cannot mount a directory")
        if not os.path.isfile(full):
            raise LangError(path, line, "include not found: %s" % arg)
        parent = resolve_node(repo, p, stack + (path,))
        merged.extend(parent.directives)
        params.update(parent.default_params)
        body = parent.body
    for name, arg, line in fd.directives:
        if name == "include":
            continue
        if name == "param":
            k, eq, v = arg.partition("=")
            if not eq or not k.strip():
                raise LangError(path, line, "@param needs K=V")
            params[k.strip()] = v.strip()
        merged.append((name, arg, line))
    if fd.body.strip():
        body = fd.body
    return Node(base, path, kind, merged, body, params)


def list_dir(repo, d):
    full = os.path.join(repo, d)
    out = []
    for entry in sorted(os.listdir(full)):
        if entry.startswith("_") or entry.startswith("."):
            continue
        p = posixpath.join(d, entry) if d else entry
        if os.path.isfile(os.path.join(repo, p)) and posixpath.splitext(entry)[1] in KINDS:
            out.append(p)
    return out


def namespace(repo, d, depth=0, stack=()):
    """(name -> node path, [(depth, key, value, path, line)] mount params)."""
    if d in stack:
        raise LangError(d, 1, "mount cycle: %s" % " -> ".join(stack + (d,)))
    own, mounted, origin, mparams = {}, {}, {}, []
    for p in list_dir(repo, d):
        ext = posixpath.splitext(p)[1]
        fd = read_def(repo, p) if ext != ".csv" else FileDef(p, [], "")
        target = mount_target(repo, fd) if ext != ".csv" else None
        if target is None:
            name = posixpath.splitext(posixpath.basename(p))[0]
            if name in own:
                raise LangError(p, 1, "two nodes named %s in %s" % (name, d))
            own[name] = p
            continue
        for name, arg, line in fd.directives:
            if name == "param":
                k, _, v = arg.partition("=")
                mparams.append((depth, k.strip(), v.strip(), p, line))
        sub, subparams = namespace(repo, target, depth + 1, stack + (d,))
        mparams.extend(subparams)
        for name, np in sub.items():
            if name in mounted and mounted[name] != np:
                origin.setdefault(name, [mounted[name]]).append(np)
            mounted[name] = np
    for name, paths in origin.items():
        if name not in own:
            raise LangError(paths[-1], 1, "%s comes from two mounts (%s); override it in %s" % (name, ", ".join(paths), d))
    ns = dict(mounted)
    ns.update(own)
    return ns, mparams


def substitute(text, params, path, what, line=1):
    def repl(m):
        k = m.group(1)
        if k not in params:
            raise LangError(path, line, "undefined parameter {{%s}} in %s" % (k, what))
        return params[k]

    return TEMPLATE.sub(repl, text)


# ---------------------------------------------------------------------------
# Planning and running.


class Plan:
    def __init__(self, repo, data_root, pipeline):
        self.repo, self.data_root, self.pipeline = repo, data_root, pipeline
        ns, mparams = namespace(repo, pipeline)
        # outermost mount wins: apply deepest first
        self.pipeline_params = {}
        for depth, k, v, _, _ in sorted(mparams, key=lambda t: -t[0]):
            self.pipeline_params[k] = v
        self.nodes = {}
        for name, path in ns.items():
            if path.endswith(".csv"):
                self.nodes[name] = Node(name, path, "static", [], "", {})
            else:
                self.nodes[name] = resolve_node(repo, path)
        self.external = {}  # '/dir/NAME' dependencies
        self.deps = {}
        for name, node in self.nodes.items():
            deps = []
            for arg, line in node.all("depend"):
                if arg.startswith("./"):
                    dep = arg[2:]
                    if dep not in self.nodes:
                        raise LangError(node.path, line, "missing dependency %s" % arg)
                    deps.append(("ns", dep))
                elif arg.startswith("/"):
                    d, dep = posixpath.split(arg.lstrip("/"))
                    hits = [p for p in list_dir(repo, d) if posixpath.splitext(posixpath.basename(p))[0] == dep]
                    if len(hits) != 1 or not hits[0].endswith(".csv"):
                        raise LangError(node.path, line, "reference_run supports /dir/NAME only for static .csv: %s" % arg)
                    self.external[arg] = hits[0]
                    deps.append(("ext", arg))
                else:
                    raise LangError(node.path, line, "bad dependency %s" % arg)
            tables = [dep.rsplit("/", 1)[-1] for _, dep in deps]
            if len(set(tables)) != len(tables):
                raise LangError(node.path, 1, "two inputs with one name: %s" % tables)
            self.deps[name] = deps
        self.order = self._toposort()

    def params_for(self, node):
        p = dict(node.default_params)
        p.update(self.pipeline_params)
        return p

    def _toposort(self):
        indeg = {n: 0 for n in self.nodes}
        users = {n: [] for n in self.nodes}
        for n, deps in self.deps.items():
            for kind, d in deps:
                if kind == "ns":
                    indeg[n] += 1
                    users[d].append(n)
        ready = sorted(n for n, k in indeg.items() if k == 0)
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for u in users[n]:
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
                    ready.sort()
        if len(order) != len(self.nodes):
            stuck = sorted(n for n in self.nodes if n not in order)
            raise LangError(self.nodes[stuck[0]].path, 1, "dependency cycle among %s" % ", ".join(stuck))
        return order


def load_table(conn, name, columns, rows):
    cols = ", ".join('"%s"' % c.replace('"', '""') for c in columns)
    conn.execute('CREATE TABLE "%s" (%s)' % (name, cols))
    if rows:
        marks = ", ".join("?" for _ in columns)
        conn.executemany('INSERT INTO "%s" VALUES (%s)' % (name, marks), rows)


def check_table(name, columns, rows, node):
    """Run @key and @assert checks; return a list of failure messages."""
    conn = sqlite3.connect(":memory:")
    load_table(conn, name, columns, rows)
    failures = []

    def col(c):
        if c not in columns:
            failures.append("no column %s" % c)
            return None
        return '"%s"' % c

    key = node.last("key")
    if key:
        cols = [c for c in re.split(r"[,\s]+", key) if c]
        qs = [col(c) for c in cols]
        if None not in qs:
            dup = conn.execute('SELECT count(*) FROM (SELECT 1 FROM "%s" GROUP BY %s HAVING count(*) > 1)' % (name, ", ".join(qs))).fetchone()[0]
            nul = conn.execute('SELECT count(*) FROM "%s" WHERE %s' % (name, " OR ".join("%s IS NULL" % q for q in qs))).fetchone()[0]
            if dup:
                failures.append("@key %s: %d duplicated keys" % (key, dup))
            if nul:
                failures.append("@key %s: %d rows with a NULL key column" % (key, nul))
    for arg, line in node.all("assert"):
        m_nn = re.fullmatch(r"not_null\(\s*(\w+)\s*\)", arg)
        m_un = re.fullmatch(r"unique\(\s*(\w+)\s*\)", arg)
        m_rows = re.fullmatch(r"rows\s*(>=|<=|==|=|>|<|!=)\s*(\d+)", arg)
        if m_nn:
            q = col(m_nn.group(1))
            if q and conn.execute('SELECT count(*) FROM "%s" WHERE %s IS NULL' % (name, q)).fetchone()[0]:
                failures.append("@assert %s failed (line %d)" % (arg, line))
        elif m_un:
            q = col(m_un.group(1))
            if q and conn.execute('SELECT count(*) FROM (SELECT 1 FROM "%s" WHERE %s IS NOT NULL GROUP BY %s HAVING count(*) > 1)' % (name, q, q)).fetchone()[0]:
                failures.append("@assert %s failed (line %d)" % (arg, line))
        elif m_rows:
            op, k = m_rows.group(1), int(m_rows.group(2))
            n = len(rows)
            ok = {">": n > k, ">=": n >= k, "<": n < k, "<=": n <= k, "=": n == k, "==": n == k, "!=": n != k}[op]
            if not ok:
                failures.append("@assert %s failed: %d rows (line %d)" % (arg, n, line))
        elif arg.startswith("sql:"):
            q = arg[4:].strip().rstrip(";")
            try:
                bad = conn.execute("SELECT count(*) FROM (%s)" % q).fetchone()[0]
            except sqlite3.Error as e:
                failures.append("@assert sql error: %s (line %d)" % (e, line))
                continue
            if bad:
                failures.append("@assert %s: %d failing rows (line %d)" % (arg, bad, line))
        else:
            failures.append("unknown assertion %r (line %d)" % (arg, line))
    conn.close()
    return failures


def run_pipeline(plan, out_dir, verbose=True):
    os.makedirs(out_dir, exist_ok=True)
    outputs = {}  # table identity -> canonical CSV bytes
    summary = {"pipeline": plan.pipeline, "params": plan.pipeline_params, "order": plan.order, "nodes": {}}
    ok = True
    for ext_arg, path in plan.external.items():
        with open(os.path.join(plan.repo, path), encoding="utf-8") as f:
            cols, rows = load_csv_text(f.read())
        outputs[ext_arg] = canonical_csv(cols, rows)
    for name in plan.order:
        node = plan.nodes[name]
        params = plan.params_for(node)
        info = {"file": node.path, "kind": node.kind, "deps": [], "sources": [], "params": {}}
        missing = [d for kind, d in plan.deps[name] if kind == "ns" and ("ns", d) not in outputs]
        if missing:
            ok = False
            info["skipped"] = "upstream failed: %s" % ", ".join(missing)
            summary["nodes"][name] = info
            if verbose:
                print("%-18s %-7s SKIPPED (upstream %s failed)" % (name, node.kind, ", ".join(missing)))
            continue
        try:
            inputs = []  # (table name, canonical bytes)
            for kind, d in plan.deps[name]:
                table = d.rsplit("/", 1)[-1]
                inputs.append((table, outputs[d] if kind == "ext" else outputs[("ns", d)]))
                info["deps"].append(d if kind == "ext" else "./" + d)
            sources = []
            for arg, line in node.all("source"):
                spath = substitute(arg, params, node.path, "@source", line)
                if not spath.startswith("data://"):
                    raise LangError(node.path, line, "only data:// sources are supported")
                rel = spath[len("data://"):]
                sources.append((posixpath.splitext(posixpath.basename(rel))[0], os.path.join(plan.data_root, rel)))
                info["sources"].append(spath)
            used = set(TEMPLATE.findall(node.body)) | {k for a, _ in node.all("source") for k in TEMPLATE.findall(a)}
            used |= set(node.default_params)  # command nodes read theirs from SLUICE_PARAM_*
            info["params"] = {k: params[k] for k in sorted(used) if k in params}
            body = substitute(node.body, params, node.path, "the body")
            if node.kind == "static":
                with open(os.path.join(plan.repo, node.path), encoding="utf-8") as f:
                    columns, rows = load_csv_text(f.read())
            elif node.kind == "sqlite":
                columns, rows = run_sql(body, inputs, sources)
            elif node.kind in ("python", "bash"):
                columns, rows = run_command(node, body, inputs, params)
            else:
                raise LangError(node.path, 1, "reference_run cannot run %s nodes" % node.kind)
            data = canonical_csv(columns, rows)
            back_cols, back_rows = load_csv_text(data.decode("utf-8"))
            if back_cols != list(columns) or len(back_rows) != len(rows) or not all(
                all(same_typed(a, b) for a, b in zip(r1, r2)) for r1, r2 in zip(rows, back_rows)
            ):
                raise ValueError("the canonical CSV does not read back to the same typed values")
            with open(os.path.join(out_dir, name + ".csv"), "wb") as f:
                f.write(data)
            failures = check_table(name, list(columns), rows, node)
            if not failures:  # a failed check fails the node: its descendants are skipped
                outputs[("ns", name)] = data
            info.update(columns=list(columns), rows=len(rows), sha256=hashlib.sha256(data).hexdigest(),
                        key=node.last("key"), asserts=[a for a, _ in node.all("assert")], failures=failures)
            status = "ok" if not failures else "FAILED"
            ok = ok and not failures
            if verbose:
                print("%-18s %-7s %6d rows  %-7s %s" % (name, node.kind, len(rows), status, node.path))
                for msg in failures:
                    print("    " + msg)
        except (LangError, ValueError, sqlite3.Error, OSError, subprocess.SubprocessError) as e:
            ok = False
            info["error"] = str(e)
            if verbose:
                print("%-18s %-7s  ERROR  %s: %s" % (name, node.kind, node.path, e))
        summary["nodes"][name] = info
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return ok


def run_sql(body, inputs, sources):
    conn = sqlite3.connect(":memory:")
    for table, data in inputs:
        cols, rows = load_csv_text(data.decode("utf-8"))
        load_table(conn, table, cols, rows)
    for table, path in sources:
        with open(path, encoding="utf-8") as f:
            cols, rows = load_csv_text(f.read())
        load_table(conn, table, cols, rows)
    cur = conn.execute(body)
    columns = [d[0] for d in cur.description]
    if len(set(columns)) != len(columns):
        raise ValueError("duplicate column names in output: %s" % columns)
    rows = cur.fetchall()
    conn.close()
    return columns, rows


def run_command(node, body, inputs, params):
    tmp = tempfile.mkdtemp(prefix="sluice-ref-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        for table, data in inputs:
            p = os.path.join(tmp, "in_%s.csv" % table)
            with open(p, "wb") as f:
                f.write(data)
            env["SLUICE_INPUT_%s" % table] = p
        for k, v in params.items():
            env["SLUICE_PARAM_%s" % k] = v
        env["SLUICE_OUTPUT"] = os.path.join(tmp, "out.csv")
        script = os.path.join(tmp, "node" + posixpath.splitext(node.path)[1])
        with open(script, "w", encoding="utf-8") as f:
            f.write(body)
        interp = {"python": "python3", "bash": "bash"}[node.kind]
        proc = subprocess.run([interp, script], env=env, cwd=tmp, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ValueError("exit %d: %s" % (proc.returncode, proc.stderr.strip()[-500:]))
        with open(env["SLUICE_OUTPUT"], encoding="utf-8") as f:
            raw = f.read()
        columns, rows = load_csv_text(raw)
        if canonical_csv(columns, rows) != raw.encode("utf-8"):
            print("    note: %s wrote non-canonical CSV; re-encoded" % node.path)
        return columns, rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------


def read_config(repo):
    path = os.path.join(repo, "sluice.toml")
    try:
        import tomllib

        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except ImportError:  # Python < 3.11: the two keys we need
        text = open(path, encoding="utf-8").read()
        pipes = re.search(r"pipelines\s*=\s*\[([^\]]*)\]", text)
        root = re.search(r'root\s*=\s*"([^"]*)"', text)
        cfg = {
            "project": {"pipelines": re.findall(r'"([^"]*)"', pipes.group(1)) if pipes else []},
            "data": {"root": root.group(1) if root else "data"},
        }
    return cfg


def all_pipelines(repo, cfg):
    out = []
    for pattern in cfg.get("project", {}).get("pipelines", []):
        parent = posixpath.dirname(pattern) or "."
        for entry in sorted(os.listdir(os.path.join(repo, parent))):
            p = posixpath.normpath(posixpath.join(parent, entry))
            if fnmatch.fnmatch(p, pattern) and os.path.isdir(os.path.join(repo, p)):
                out.append(p)
    return out


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.path.dirname(here), help="repository root (default: the example)")
    ap.add_argument("--data-root", help="data root (default: [data] root of sluice.toml)")
    ap.add_argument("--all", action="store_true", help="run every pipeline of sluice.toml")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("args", nargs="+", metavar="[PIPELINE] OUT_DIR")
    a = ap.parse_args(argv)
    repo = os.path.abspath(a.repo)
    cfg = read_config(repo)
    data_root = a.data_root or os.path.join(repo, cfg.get("data", {}).get("root", "data"))
    pipelines = all_pipelines(repo, cfg)
    if a.all:
        if len(a.args) != 1:
            ap.error("--all takes only OUT_DIR")
        runs = [(p, os.path.join(a.args[0], p)) for p in pipelines]
    else:
        if len(a.args) != 2:
            ap.error("expected PIPELINE OUT_DIR")
        want = a.args[0].strip("/")
        match = [p for p in pipelines if p == want or posixpath.basename(p) == want]
        if not match and os.path.isdir(os.path.join(repo, want)):
            match = [want]
        if len(match) != 1:
            ap.error("unknown pipeline %s (have: %s)" % (want, ", ".join(pipelines)))
        runs = [(match[0], a.args[1])]
    ok = True
    for pipeline, out in runs:
        try:
            plan = Plan(repo, data_root, pipeline)
        except LangError as e:
            print("error: %s" % e, file=sys.stderr)
            ok = False
            continue
        if not a.quiet:
            print("== %s  (params: %s)" % (pipeline, ", ".join("%s=%s" % kv for kv in sorted(plan.pipeline_params.items()))))
        ok = run_pipeline(plan, out, verbose=not a.quiet) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
